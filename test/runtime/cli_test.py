"""End-to-end tests of the `kiln` command line on the tiny checkpoint.

Usage: python3 cli_test.py KILN_BINARY SOURCE_DIR
Checks the JSON of `logits` against the Hugging Face golden, the tokenizer
round trip, generation, and that bad input exits 1 with a `kiln: error:`.
"""
import json
import math
import os
import subprocess
import sys
import tempfile

kiln, source = sys.argv[1], sys.argv[2]
failures = []


def run(*args, expect=0):
    result = subprocess.run([kiln, *args], capture_output=True, text=True, timeout=300)
    if result.returncode != expect:
        failures.append(f"kiln {' '.join(args)}: exit {result.returncode}, expected {expect}\n{result.stderr}")
    return result


def check(condition, message):
    if not condition:
        failures.append(message)


with tempfile.TemporaryDirectory() as scratch:
    model = os.path.join(scratch, "tiny")
    run("make-tiny", "--config", f"{source}/examples/tiny/config.json", "--out", model,
        "--seed", "1", "--shards", "2", "--tokenizer", f"{source}/.deps/deepseek-v3-tokenizer")

    # `logits` for a prefix of a golden prompt equals the golden's first rows.
    golden = json.load(open(f"{source}/test/golden/tiny_model_golden.json"))
    prompt = golden["prompts"][0]
    prefix = prompt["tokens"][:3]
    out = run("logits", "--model", model, "--tokens", ",".join(map(str, prefix)))
    rows = json.loads(out.stdout)["logits"] if out.returncode == 0 else []
    check(len(rows) == 3, f"logits: {len(rows)} rows for 3 tokens")
    for position, row in enumerate(rows):
        check(len(row) == 129280, f"logits row {position}: {len(row)} values")
        want = prompt["logits"][position]["sampled"]
        got = [row[i] for i in golden["sampled_vocab"]]
        error = math.sqrt(sum((g - w) ** 2 for g, w in zip(got, want)) / sum(w * w for w in want))
        check(error <= 1e-4, f"logits row {position}: relative error {error:.2e} against the golden")

    # Tokenizer round trip through the command line.
    text = "Kiln 🔥 compiles 混合专家 models\n\tfast!"
    ids = json.loads(run("tokenize", "--model", model, "--text", text).stdout)["ids"]
    with_bos = json.loads(run("tokenize", "--model", model, "--text", text, "--bos").stdout)["ids"]
    check(with_bos == [0] + ids, f"--bos: {with_bos[:3]}... vs {ids[:3]}...")
    back = run("detokenize", "--model", model, "--ids", ",".join(map(str, ids))).stdout
    check(back == text + "\n", f"detokenize(tokenize(text)) = {back!r}")

    # Generation streams text and reports its speed.
    out = run("generate", "--model", model, "--prompt", "Hello", "--max-tokens", "8")
    check("8 generated" in out.stderr or "stopped" in out.stderr, f"generate: {out.stderr}")
    out = run("generate", "--model", model, "--prompt", "Hi", "--chat", "--max-tokens", "4",
              "--temperature", "0.7", "--seed", "5")
    check(out.returncode == 0, "generate --chat")

    # Bad input: exit 1 with a message, never a crash.
    for args in [
        ("logits", "--model", model, "--tokens", "1,x"),
        ("logits", "--model", model, "--tokens", "1,999999"),
        ("logits", "--model", os.path.join(scratch, "missing"), "--tokens", "1"),
        ("logits", "--model", model),
        ("generate", "--model", model, "--prompt", "x", "--backend", "tpu"),
        ("generate", "--model", model, "--prompt", "x", "--max-tokens", "-1"),
        ("generate", "--model", model, "--prompt", "x", "--top-p", "0"),
        ("tokenize", "--model", model, "--text"),
        ("frobnicate",),
        ("tokenize", "--model", model, "--text", "x", "--colour", "red"),
    ]:
        out = run(*args, expect=1)
        check(out.stderr.startswith("kiln: error: "), f"kiln {' '.join(args)}: stderr {out.stderr!r}")

print(f"kiln-cli: {0 if failures else 1} passed, {len(failures)} failed")
for failure in failures:
    print("FAIL:", failure)
sys.exit(1 if failures else 0)
