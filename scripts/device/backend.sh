#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: checks the
# CUDA backend against the CPU reference on the tiny model, in one call.
# Build here, then stage (scripts/device/stage.sh puts kiln,
# kiln-backend-check, the runtime library and .device/artifacts/*.kiln into
# .device/) and carry [".device", ".deps"]:
#   build/bin/kilnc examples/tiny/config.json -o build/tiny.kiln --max-batch 8 --prefill-chunk 32
#   KILN_ARTIFACTS=build/tiny.kiln scripts/device/stage.sh
# Steps: a tiny checkpoint (kiln make-tiny, the golden tests' seed), the
# tokenizer beside it; kiln-backend-check (greedy tokens against the CPU
# reference with the GPU's numerics, logit errors bounded by the measured FP8
# noise, batching, chunked prefill); `kiln generate` on both
# backends; compute-sanitizer memcheck over a short GPU generation. Logs into
# $OUT. BACKEND_ARTIFACT and BACKEND_CONFIG name another artifact and config.
set -uo pipefail
out=${OUT:-/tmp/backend-out}
mkdir -p "$out"
device_dir=${KILN_DEVICE_DIR:-.device}
export LD_LIBRARY_PATH=$PWD/$device_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=$device_dir/bin
artifact=${BACKEND_ARTIFACT:-$device_dir/artifacts/tiny.kiln}
# The model's config.json (BACKEND_CONFIG: another tiny-sized one, e.g. with
# moe_intermediate_size 256 so that the plans fuse the experts' SwiGLU).
config=${BACKEND_CONFIG:-examples/tiny/config.json}
status=0

tiny=$(mktemp -d)/tiny
"$bin/kiln" make-tiny --config "$config" --out "$tiny" --seed 1 \
  --shards 2 --tokenizer .deps/deepseek-v3-tokenizer >/dev/null || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== kiln-backend-check"
"$bin/kiln-backend-check" --model "$tiny" --artifact "$artifact" --tokens 32 \
  2>&1 | tee "$out/backend-check.log"
((PIPESTATUS[0] == 0)) || status=1

echo "== kiln generate, cuda vs cpu"
prompt="The quick brown fox"
"$bin/kiln" generate --model "$tiny" --backend cuda --artifact "$artifact" \
  --prompt "$prompt" --max-tokens 32 >"$out/generate-cuda.txt" 2>"$out/generate-cuda.err"
"$bin/kiln" generate --model "$tiny" --backend cpu \
  --prompt "$prompt" --max-tokens 32 >"$out/generate-cpu.txt" 2>"$out/generate-cpu.err"
cat "$out/generate-cuda.err" "$out/generate-cpu.err"
if cmp -s "$out/generate-cuda.txt" "$out/generate-cpu.txt"; then
  echo "generate: identical text on both backends"
else
  echo "generate: texts differ (see kiln-backend-check for whether FP8 noise explains it)"
  diff "$out/generate-cuda.txt" "$out/generate-cpu.txt" | head -5
fi

if [[ ${BACKEND_SANITIZER:-1} == 1 ]] && command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck, kiln generate --backend cuda"
  # --report-api-errors no: the GEMM launcher probes kernel parameters with
  # cuFuncGetParamInfo until it fails, on purpose (gemm_launcher.cpp).
  compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 3 "$bin/kiln" generate \
    --model "$tiny" --backend cuda --artifact "$artifact" --prompt "$prompt" \
    --max-tokens 4 >"$out/sanitizer.log" 2>&1
  rc=$?
  tail -3 "$out/sanitizer.log"
  ((rc == 0)) || status=1
fi
exit $status
