#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: records the
# golden data of test/golden/ with Hugging Face transformers and tokenizers,
# which are installed there. Needs the `kiln` binary built here and carried in
# .device/bin/kiln (scripts/device/stage.sh), and the tokenizer files in
# .deps/ (carried too). Writes into $OUT; copy the files into test/golden/.
set -euo pipefail
kiln=${KILN:-.device/bin/kiln}
out=${OUT:-/tmp/golden-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

tiny=$(mktemp -d)
generator="kiln make-tiny --config examples/tiny/config.json --seed 1 --shards 2"
"$kiln" make-tiny --config examples/tiny/config.json --out "$tiny" --seed 1 --shards 2
python3 test/golden/make_model_golden.py "$tiny" "$out/tiny_model_golden.json" "$generator"
if [[ -f test/golden/make_tokenizer_golden.py ]]; then
  python3 test/golden/make_tokenizer_golden.py .deps/deepseek-v3-tokenizer \
    test/golden/tokenizer_strings.json "$out/tokenizer_golden.json"
fi
ls -la "$out"
