#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: checks,
# sanitizes and times the grouped GEMM kernels with the fused SwiGLU epilogue
# (gemm-abi.md "SwiGLU epilogue") at DeepSeek-V3's gate/up shape (N x K =
# 4096 x 7168, I = 2048) against the unfused path (the plain grouped kernel
# into [R, 2I], then the runtime's swiglu kernel), in one call. Needs
# kiln-gemm-check and these kernels in $KILN_DEVICE_DIR/kernels (from
# kiln-compile-gemm.py --config ...,swiglu and the plain ones):
#   kiln_gemm_fp8_m{128n128s4c2,64n128s8c1}_{contiguous,masked}[_swiglu]
# and, where staged, the same with _swiglu_quantize (steps 4-6).
#
#  1. small ragged cases (empty groups, a 1-row group, rows outside the
#     groups, N = 256 and 512), checked only, on every SwiGLU kernel;
#  2. compute-sanitizer memcheck on one contiguous and one masked kernel;
#  3. the benchmark problems, checked (FP64 reference budget
#     SWIGLU_REFERENCE_GFLOP per problem, 40) and timed fused vs unfused;
#  4. the quantized kernels on the small cases, bitwise against quantize of
#     the BF16 kernel's output; 5. memcheck on two of them; 6. the
#     benchmark problems, quantized kernel vs BF16 kernel + quantize
#     (SWIGLU_QUANTIZED_ONLY=1 runs only these).
# Into $OUT: swiglu.log and the JSON of every run.
set -uo pipefail
out=${OUT:-/tmp/swiglu-out}
mkdir -p "$out"
dev=${KILN_DEVICE_DIR:-.device}
check=$dev/bin/kiln-gemm-check
kernels=$dev/kernels
runs=${SWIGLU_RUNS:-30}
budget=${SWIGLU_REFERENCE_GFLOP:-40}
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
status=0

run() {
  echo
  echo "== $*"
  "$@"
  local rc=$?
  ((rc != 0)) && { status=1; echo "== FAILED (exit $rc): $*"; }
}

main() {
  echo "== swiglu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 || true
  local small_contiguous=8:300:512x1024:random,5:9:4096x7168:random,16:1000:256x1024:skewed
  local small_masked=8:64:512x1024:random,3:130:256x1024:random,4:1:4096x7168:full
  local timed=(--runs "$runs" --warmup 5 --reference-gflop "$budget")
  if [[ ${SWIGLU_QUANTIZED_ONLY:-0} != 1 ]]; then
  for tile in m128n128s4c2 m64n128s8c1; do
    run timeout -k 5 60 "$check" --no-time --cases $small_contiguous \
      --json "$out/check-${tile}_contiguous.json" \
      "$kernels/kiln_gemm_fp8_${tile}_contiguous_swiglu.cubin"
    run timeout -k 5 60 "$check" --no-time --cases $small_masked \
      --json "$out/check-${tile}_masked.json" \
      "$kernels/kiln_gemm_fp8_${tile}_masked_swiglu.cubin"
  done
  echo
  echo "== compute-sanitizer memcheck"
  run timeout -k 5 90 "$sanitizer" --tool memcheck --error-exitcode 9 --report-api-errors no \
    "$check" --no-time --cases 8:300:512x1024:random \
    "$kernels/kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu.cubin"
  run timeout -k 5 90 "$sanitizer" --tool memcheck --error-exitcode 9 --report-api-errors no \
    "$check" --no-time --cases 8:64:512x1024:random \
    "$kernels/kiln_gemm_fp8_m64n128s8c1_masked_swiglu.cubin"

  # The heuristic's tiles for these problems (kiln-compile-gemm.py --plan):
  # decode-sized contiguous and masked-64 get 64x128, the rest 128x128.
  bench() {
    local tile=$1 layout=$2 cases=$3 name=kiln_gemm_fp8_$1_$2
    run timeout -k 5 120 "$check" "${timed[@]}" --cases "$cases" \
      --unfused "$kernels/$name.cubin" --json "$out/bench-${tile}_$layout.json" \
      "$kernels/${name}_swiglu.cubin"
  }
  bench m64n128s8c1 contiguous 8:8:4096x7168:balanced,32:256:4096x7168:balanced,32:256:4096x7168:random
  bench m128n128s4c2 contiguous 8:8192:4096x7168:balanced,8:8192:4096x7168:skewed,32:8192:4096x7168:random
  bench m64n128s8c1 masked 32:64:4096x7168:random
  bench m128n128s4c2 masked 8:256:4096x7168:random
  fi

  # The quantized SwiGLU epilogue (gemm-abi.md "Quantized SwiGLU epilogue"),
  # where staged: codes and scales bitwise against the runtime's quantize of
  # the BF16 SwiGLU kernel's output, whose FP64 check is the one above; then
  # timed against that kernel + quantize (the path it replaces).
  quantized() {
    local tile=$1 layout=$2
    local q=$kernels/kiln_gemm_fp8_${tile}_${layout}_swiglu_quantize.cubin
    local bf16=$kernels/kiln_gemm_fp8_${tile}_${layout}_swiglu.cubin
    [[ -f $q ]] || return 1
    shift 2
    run timeout -k 5 120 "$check" --unfused "$bf16" "$@" "$q"
    return 0
  }
  for tile in m128n128s4c2 m64n128s8c1; do
    quantized $tile contiguous --no-time --cases $small_contiguous \
      --json "$out/check-${tile}_contiguous_quantize.json" || continue
    quantized $tile masked --no-time --cases $small_masked \
      --json "$out/check-${tile}_masked_quantize.json"
  done
  if [[ -f $kernels/kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize.cubin ]]; then
    echo
    echo "== compute-sanitizer memcheck (quantized)"
    run timeout -k 5 120 "$sanitizer" --tool memcheck --error-exitcode 9 --report-api-errors no \
      "$check" --no-time --cases 8:300:512x1024:random \
      --unfused "$kernels/kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu.cubin" \
      "$kernels/kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize.cubin"
    run timeout -k 5 120 "$sanitizer" --tool memcheck --error-exitcode 9 --report-api-errors no \
      "$check" --no-time --cases 8:64:512x1024:random \
      --unfused "$kernels/kiln_gemm_fp8_m64n128s8c1_masked_swiglu.cubin" \
      "$kernels/kiln_gemm_fp8_m64n128s8c1_masked_swiglu_quantize.cubin"
    quantized m64n128s8c1 contiguous "${timed[@]}" \
      --cases 8:8:4096x7168:balanced,32:256:4096x7168:balanced \
      --json "$out/bench-m64n128s8c1_contiguous_quantize.json"
    quantized m128n128s4c2 contiguous "${timed[@]}" \
      --cases 8:8192:4096x7168:balanced,8:8192:4096x7168:skewed,32:8192:4096x7168:random \
      --json "$out/bench-m128n128s4c2_contiguous_quantize.json"
    quantized m64n128s8c1 masked "${timed[@]}" --cases 32:64:4096x7168:random \
      --json "$out/bench-m64n128s8c1_masked_quantize.json"
    quantized m128n128s4c2 masked "${timed[@]}" --cases 8:256:4096x7168:random \
      --json "$out/bench-m128n128s4c2_masked_quantize.json"
  fi
  echo
  echo "== swiglu.sh status $status"
  return $status
}

main 2>&1 | tee "$out/swiglu.log"
exit "${PIPESTATUS[0]}"
