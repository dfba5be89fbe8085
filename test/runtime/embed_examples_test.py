"""The installed package from an outside project's point of view.

Usage: python3 embed_examples_test.py BUILD_DIR SOURCE_DIR KILN_BINARY CMAKE
           GENERATOR MAKE_PROGRAM C_COMPILER CXX_COMPILER
           C_FLAGS CXX_FLAGS LINKER_FLAGS

Installs the runtime component of BUILD_DIR into a temporary prefix,
configures and builds examples/embed-c and examples/embed-cpp against it with
find_package(Kiln) (warnings as errors), and runs both on the tiny model: their
greedy text must be what `kiln generate` prints for the same prompts.
"""
import json
import os
import subprocess
import sys
import tempfile

build, source, kiln, cmake, generator, make_program, cc, cxx = sys.argv[1:9]
# The build's own flags (e.g. -fsanitize=thread) apply to the examples too.
build_flags = {"C": sys.argv[9], "CXX": sys.argv[10]}
linker_flags = sys.argv[11]
failures = []


def run(*args, **kwargs):
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=300, **kwargs)
    if result.returncode != 0:
        failures.append(f"{' '.join(args)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def check(condition, message):
    if not condition:
        failures.append(message)


with tempfile.TemporaryDirectory() as scratch:
    prefix = os.path.join(scratch, "prefix")
    run(cmake, "--install", build, "--prefix", prefix, "--component", "kiln-runtime")
    for path in ["include/kiln/kiln.h", "include/kiln/kiln.hpp", "include/kiln/engine.h"]:
        check(os.path.isfile(os.path.join(prefix, path)), f"not installed: {path}")
    package = [os.path.join(root, name) for root, _, names in os.walk(prefix) for name in names
               if name.startswith("KilnConfig")]
    check(len(package) == 2, f"KilnConfig.cmake and KilnConfigVersion.cmake, found {package}")

    binaries = {}
    for example, language in [("embed-c", "C"), ("embed-cpp", "CXX")]:
        example_build = os.path.join(scratch, example)
        strict = f"{build_flags[language]} -Wall -Wextra -Werror" + (
            " -pedantic" if language == "C" else "")
        configured = run(cmake, "-S", os.path.join(source, "examples", example), "-B", example_build,
                         "-G", generator, f"-DCMAKE_MAKE_PROGRAM={make_program}",
                         f"-DCMAKE_C_COMPILER={cc}", f"-DCMAKE_CXX_COMPILER={cxx}",
                         f"-DCMAKE_{language}_FLAGS={strict}", "-DCMAKE_BUILD_TYPE=Release",
                         f"-DCMAKE_EXE_LINKER_FLAGS={linker_flags}",
                         f"-DCMAKE_PREFIX_PATH={prefix}")
        if configured.returncode == 0:
            run(cmake, "--build", example_build)
        binaries[example] = os.path.join(example_build, example)

    # The tiny model without its MTP layer, which generation does not use.
    config = json.load(open(os.path.join(source, "examples/tiny/config.json")))
    config["num_nextn_predict_layers"] = 0
    config_path = os.path.join(scratch, "config.json")
    json.dump(config, open(config_path, "w"))
    model = os.path.join(scratch, "tiny")
    run(kiln, "make-tiny", "--config", config_path, "--out", model, "--seed", "1",
        "--tokenizer", os.path.join(source, ".deps/deepseek-v3-tokenizer"))

    def generate(prompt):
        return run(kiln, "generate", "--model", model, "--prompt", prompt, "--max-tokens", "10").stdout

    if not failures:
        out = run(binaries["embed-c"], model, "Hello", "10")
        check(out.stdout == generate("Hello"), f"embed-c printed {out.stdout!r}")
        check("finished: length" in out.stderr or "finished: eos" in out.stderr,
              f"embed-c summary: {out.stderr!r}")
        out = run(binaries["embed-cpp"], model, "Hello", "The quick brown fox", "10")
        expected = generate("Hello") + generate("The quick brown fox")
        check(out.stdout == expected, f"embed-cpp printed {out.stdout!r}, expected {expected!r}")
        check("2 requests" in out.stderr and "at most 2 at once" in out.stderr,
              f"embed-cpp did not batch its requests: {out.stderr!r}")

print(f"kiln-embed-examples: {0 if failures else 1} passed, {len(failures)} failed")
for failure in failures:
    print("FAIL:", failure)
sys.exit(1 if failures else 0)
