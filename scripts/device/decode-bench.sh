#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: decode
# steps of the CUDA backend with CUDA Graphs and eagerly (logits must agree
# bit for bit), and the per-op timeline, with synthetic weights. Stage first
# (KILN_DEVICE_DIR names the staged folder, default .device), with the
# artifacts and their configs in $dir/artifacts:
#   kilnc v3-2.json -o v3-2.kiln --max-batch 128 --prefill-chunk 4096 --max-seq-len 4608
#   (v3-2, v3-4: examples/deepseek-v3/config.json with 2 and 4 layers,
#   first_k_dense_replace 1; v3-dense: 2 layers, first_k_dense_replace 2;
#   tiny-dense: examples/tiny/config.json with first_k_dense_replace 3,
#   --max-batch 8 --prefill-chunk 32)
#   KILN_ARTIFACTS="..." scripts/device/stage.sh; cp BUILD/bin/kiln-bench-decode and the configs
# Logs into $OUT, the Chrome traces as $OUT/traces.tar.gz (few files come
# back from a device call).
set -uo pipefail
out=${OUT:-/tmp/decode-bench-out}
traces=$(mktemp -d)
mkdir -p "$out"
dir=${KILN_DEVICE_DIR:-.device}
export LD_LIBRARY_PATH=$PWD/$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bench=$dir/bin/kiln-bench-decode
a=$dir/artifacts
status=0
# The model kernels' device tests, when the test binary was staged.
if [[ -x $dir/bin/kiln-runtime-tests ]]; then
  "$dir/bin/kiln-runtime-tests" --gtest_filter='ModelKernels*:Timeline*' \
    >"$out/tests.log" 2>&1 || status=1
  grep -E "PASSED|FAILED|SKIPPED" "$out/tests.log" | head -20
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader

run() { # name, then kiln-bench-decode arguments
  local name=$1
  shift
  echo "== $name: kiln-bench-decode $*"
  "$bench" "$@" 2>&1 | tee "$out/$name.log"
  ((PIPESTATUS[0] == 0)) || status=1
}

# Tiny dense model: every plan capturable; batches that pad (3, 5) and
# prompts over several chunks.
run tiny-dense --case $a/tiny-dense.json,$a/tiny-dense.kiln --batches 1,2,3,5,8 \
  --context 40 --prefill 0 --steps 8 --timeline "$traces/tiny" --timeline-batches 5
# The same, with the timeline from the environment (written at exit).
KILN_TIMELINE=$traces/tiny-env-timeline.json run tiny-env --case \
  $a/tiny-dense.json,$a/tiny-dense.kiln --batches 2 --context 8 --prefill 0 --steps 2
# Full width, dense layers only.
run v3-dense --case $a/v3-dense.json,$a/v3-dense.kiln --batches 1,3,32 \
  --context 128 --prefill 0 --steps 16 --timeline "$traces/v3-dense" --timeline-batches 1
# Full width, 1 and 3 MoE layers: per MoE layer, and the timeline.
run v3-moe --case $a/v3-2.json,$a/v3-2.kiln --case $a/v3-4.json,$a/v3-4.kiln \
  --batches ${DECODE_BATCHES:-1,8,32,128} --context 128 --prefill 0 --steps 16 \
  --timeline "$traces/v3" --timeline-batches 1,32
tar -czf "$out/traces.tar.gz" -C "$traces" .
exit $status
