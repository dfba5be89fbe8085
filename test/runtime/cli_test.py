"""End-to-end tests of the `kiln` command line on the tiny checkpoint.

Usage: python3 cli_test.py KILN_BINARY SOURCE_DIR
Checks the JSON of `logits` against the Hugging Face golden, the tokenizer
round trip, generation, and that bad input exits 1 with a `kiln: error:`.
"""
import json
import math
import os
import struct
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


def kiln_artifact(manifest, blobs):
    """The .kiln container of compiler/docs/artifact.md: header, manifest,
    then each (name, bytes) blob at a multiple of 256."""
    while True:
        text = json.dumps(manifest).encode()
        at = (24 + len(text) + 255) // 256 * 256
        table = []
        for name, data in blobs:
            table.append({"name": name, "offset": at, "size": len(data)})
            at = (at + len(data) + 255) // 256 * 256
        if manifest.get("blobs") == table:
            break
        manifest["blobs"] = table  # offsets change the manifest's length
    out = b"KILNART\0" + struct.pack("<IIQ", manifest["format_version"], 0, len(text)) + text
    for entry, (_, data) in zip(table, blobs):
        out = out.ljust(entry["offset"], b"\0") + data
    return out


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

    # `inspect` summarizes a valid artifact; a bad one is a one-line error
    # naming the file.
    buffer = lambda name, dtype, cols, offset, size: {
        "name": name, "dtype": dtype, "rows": "T", "cols": cols, "offset": offset, "bytes": size}
    plan = {"max_tokens": 2, "max_sequences": 1, "arena_bytes": 1024,
            "buffers": [buffer("x_q", "f8e4m3", 128, 0, 256), buffer("x_s", "f32", 1, 256, 256),
                        buffer("y", "bf16", 128, 512, 512)],
            "steps": [{"op": "gemm", "inputs": [{"buffer": "x_q"}, {"buffer": "x_s"}],
                       "outputs": [{"buffer": "y", "col": 0, "cols": 64}], "weights": ["w"],
                       "kernel": "kiln_gemm_m64n64s4c1", "attrs": {}}]}
    manifest = {
        "format": "kiln-artifact", "format_version": 2, "producer": "cli_test.py",
        "source": "graph.mlir", "target": {"arch": "sm_90a"},
        "model": {"model_type": "", "hash": "", "hidden_size": 0, "num_hidden_layers": 0,
                  "vocab_size": 0},
        "options": {"max_batch": 2, "max_seq_len": 64, "prefill_chunk": 2,
                    "kv_cache_dtype": "bf16", "kv_page_tokens": 64, "ep": 1},
        "kernels": [{"name": "kiln_gemm_m64n64s4c1", "block_m": 64, "block_n": 64, "stages": 4,
                     "consumers": 1, "shared_memory_bytes": 0, "split_k": 1,
                     "cubin": "k.cubin"}],
        "weights": [{"name": "w", "dtype": "f8e4m3", "shape": [128, 128], "transform": "none"}],
        "plans": {"decode": plan}}
    good = kiln_artifact(manifest, [("k.cubin", b"\x7fELF\0\0cubin")])
    artifact = os.path.join(scratch, "graph.kiln")
    open(artifact, "wb").write(good)
    out = run("inspect", artifact)
    for part in ["cli_test.py", "kiln_gemm_m64n64s4c1", "cubin 11 B", "plan decode", "y[:, 0:64]"]:
        check(part in out.stdout, f"inspect: {part!r} not in {out.stdout!r}")
    bad_plan = json.loads(json.dumps(manifest))
    bad_plan["plans"]["decode"]["steps"][0]["op"] = "conv2d"
    for name, contents, problem in [
        ("magic.kiln", b"PK\3\4" + good[4:], "bad magic"),
        ("cut.kiln", good[:-3], "past the end"),
        ("op.kiln", kiln_artifact(bad_plan, [("k.cubin", b"\x7fELF")]), "unknown op"),
    ]:
        path = os.path.join(scratch, name)
        open(path, "wb").write(contents)
        out = run("inspect", path, expect=1)
        check(out.stderr.startswith(f"kiln: error: {path}: ") and problem in out.stderr
              and out.stderr.count("\n") == 1, f"inspect {name}: stderr {out.stderr!r}")

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
        ("inspect",),
        ("inspect", os.path.join(scratch, "missing.kiln")),
        ("tokenize", "--model", model, "--text", "x", "--colour", "red"),
    ]:
        out = run(*args, expect=1)
        check(out.stderr.startswith("kiln: error: "), f"kiln {' '.join(args)}: stderr {out.stderr!r}")

print(f"kiln-cli: {0 if failures else 1} passed, {len(failures)} failed")
for failure in failures:
    print("FAIL:", failure)
sys.exit(1 if failures else 0)
