#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: checks and
# times every staged FP8 GEMM kernel and cuBLAS on the same shapes, in one
# call. Needs scripts/device/stage.sh's output carried in the call (.device):
#   .device/bin/kiln-gemm-check, .device/bin/kiln-runtime-tests
#   .device/reference/gemm_reference.{cubin,json}   (built here by nvcc)
#   .device/kernels/<name>.cubin + <name>.json      (the compiler's kernels)
# For the reference kernel and then each staged kernel: kiln-gemm-check on all
# shapes, then compute-sanitizer memcheck on two small ragged shapes. Then the
# launcher's GPU tests, bench/gemm_cublas.py and bench/compare.py, whose table
# is printed last. Into $OUT: gemm.log (everything), tables.md (the tables),
# results.tar.gz (JSON results and per-step logs).
#
# Environment:
#   GEMM_SHAPES       MxNxK,... for both sides (default: the tools' defaults)
#   GEMM_RUNS         timed launches per shape (50)
#   GEMM_REFERENCE    full | check | skip: time the reference kernel, only
#                     check it, or neither (default: full when no kernel is
#                     staged, else check; timing it costs ~20 s)
#   GEMM_CUBLAS_JSON  a carried gemm_cublas.py result to compare against
#                     instead of running cuBLAS again (~1 min)
#   GEMM_TIMEOUT      seconds per kiln-gemm-check run (300)
set -uo pipefail
out=${OUT:-/tmp/gemm-out}
mkdir -p "$out"
work=$(mktemp -d)
mkdir -p "$work/results"
export PYTHONUNBUFFERED=1
# The runtime library, where the build makes it shared (stage.sh copies it).
export LD_LIBRARY_PATH=$PWD/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

main() {
  check=.device/bin/kiln-gemm-check
  runs=${GEMM_RUNS:-50}
  timeout_s=${GEMM_TIMEOUT:-300}
  shape_args=()
  [[ -n ${GEMM_SHAPES:-} ]] && shape_args=(--shapes "$GEMM_SHAPES")
  status=0
  failed=()

  echo "== gemm.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv 2>&1 || true
  if [[ ! -x $check ]]; then
    echo "gemm.sh: $check is missing: run scripts/device/stage.sh here and carry .device"
    return 2
  fi
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)

  shopt -s nullglob
  kernels=(.device/kernels/*.cubin)
  mode=${GEMM_REFERENCE:-}
  [[ -z $mode ]] && { ((${#kernels[@]})) && mode=check || mode=full; }
  targets=()
  [[ $mode != skip ]] && targets+=(.device/reference/gemm_reference.cubin)
  targets+=("${kernels[@]}")

  jsons=()
  for cubin in "${targets[@]}"; do
    name=$(basename "$cubin" .cubin)
    echo
    echo "== kiln-gemm-check $name"
    time_args=()
    [[ $name == gemm_reference && $mode == check ]] && time_args=(--no-time)
    timeout -k 10 "$timeout_s" "$check" --runs "$runs" "${time_args[@]}" "${shape_args[@]}" \
      --json "$work/results/kiln-$name.json" "$cubin" 2>&1 | tee "$work/results/kiln-$name.log"
    rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
      status=1
      failed+=("$name: kiln-gemm-check exit $rc")
    fi
    [[ -f $work/results/kiln-$name.json && ${#time_args[@]} == 0 ]] && jsons+=("$work/results/kiln-$name.json")

    echo
    echo "== compute-sanitizer memcheck $name (7x2112x7168, 300x129x1024)"
    # API errors are kiln-gemm-check's to report (it checks every call, and
    # probes cuFuncGetParamInfo past the last parameter on purpose).
    timeout -k 10 "$timeout_s" "$sanitizer" --tool memcheck --error-exitcode 9 \
      --report-api-errors no \
      "$check" --no-time --shapes 7x2112x7168,300x129x1024 "$cubin" \
      >"$work/results/sanitizer-$name.log" 2>&1
    rc=$?
    tail -n 4 "$work/results/sanitizer-$name.log"
    if ((rc != 0)); then
      status=1
      failed+=("$name: compute-sanitizer exit $rc (results/sanitizer-$name.log)")
    fi
  done

  if [[ -x .device/bin/kiln-runtime-tests ]]; then
    echo
    echo "== launcher tests on the GPU"
    .device/bin/kiln-runtime-tests --gtest_filter='GemmLauncherOnGpu.*:GemmOperandChecks.*:CudaErrors.*' \
      --gtest_brief=1 2>&1 | tee "$work/results/launcher-tests.log"
    rc=${PIPESTATUS[0]}
    ((rc != 0)) && { status=1; failed+=("launcher tests exit $rc"); }
  fi

  cublas_json=$work/results/cublas.json
  if [[ -n ${GEMM_CUBLAS_JSON:-} ]]; then
    echo
    echo "== cuBLAS results from $GEMM_CUBLAS_JSON (not run again)"
    cp "$GEMM_CUBLAS_JSON" "$cublas_json"
  else
    echo
    echo "== cuBLAS (bench/gemm_cublas.py)"
    shape_py=()
    [[ -n ${GEMM_SHAPES:-} ]] && shape_py=(--shapes "$GEMM_SHAPES")
    python3 bench/gemm_cublas.py --runs "$runs" "${shape_py[@]}" --json "$cublas_json" 2>&1 |
      tee "$work/results/cublas.log"
    rc=${PIPESTATUS[0]}
    ((rc != 0)) && { status=1; failed+=("gemm_cublas.py exit $rc"); }
  fi

  {
    for log in "$work"/results/kiln-*.log "$work/results/cublas.log"; do
      [[ -f $log ]] || continue
      echo "## $(basename "$log" .log)"
      echo
      grep -E '^(\||.* on .*HBM copy)' "$log"
      echo
    done
  } >"$out/tables.md"

  if [[ -f $cublas_json ]] && ((${#jsons[@]})); then
    python3 bench/compare.py --cublas "$cublas_json" "${jsons[@]}" | tee "$work/results/compare.md"
    rc=${PIPESTATUS[0]}
    ((rc != 0)) && status=1
    {
      echo "## comparison"
      cat "$work/results/compare.md"
    } >>"$out/tables.md"
  fi

  tar -czf "$out/results.tar.gz" -C "$work" results
  echo
  if ((status == 0)); then
    echo "gemm.sh: all checks passed"
  else
    echo "gemm.sh: FAILED:"
    printf '  %s\n' "${failed[@]}"
  fi
  return $status
}

main 2>&1 | tee "$out/gemm.log"
exit "${PIPESTATUS[0]}"
