#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: checks,
# sanitizes and times Kiln's grouped FP8 GEMM kernels (gemm-abi.md "Grouped
# kernels") and times the peer, a loop of cuBLAS calls (bench/grouped_cublas.py),
# in one call. Needs scripts/device/stage.sh's output ($KILN_DEVICE_DIR, default
# .device) with the grouped kernels in kernels/, and the plan that
# kiln-compile-gemm.py --plan wrote (lines "KERNEL GxRxNxK:LAYOUT,...").
#
#  1. every staged grouped kernel on kiln-gemm-check's default grouped cases
#     (random groups: empty ones, a 1-row group, rows outside the groups,
#     ragged N and K; TMA-store kernels N = 136 for 129), checked only;
#  2. compute-sanitizer memcheck on one contiguous and one masked kernel, and
#     one of each that stores with TMA;
#  3. the plan's kernel for each benchmark problem: contiguous problems as a
#     balanced and (R > 256) a skewed split, masked ones with full slabs;
#  4. the same problems through the cuBLAS loop; bench/grouped_compare.py's
#     table last.
# Into $OUT: grouped.log, tables.md, results.tar.gz (JSON and logs).
#
# Environment: GROUPED_PLAN (default $KILN_DEVICE_DIR/grouped-plan.txt),
# GROUPED_RUNS (timed launches, 40), GROUPED_REFERENCE_GFLOP (FP64 reference
# budget per benchmark problem, 40), GROUPED_CUBLAS (0 skips the peer),
# GROUPED_CHECK (0 skips steps 1 and 2: a second timing pass in one call).
set -uo pipefail
out=${OUT:-/tmp/grouped-out}
mkdir -p "$out"
work=$(mktemp -d)
mkdir -p "$work/results"
export PYTHONUNBUFFERED=1
dev=${KILN_DEVICE_DIR:-.device}
export LD_LIBRARY_PATH=$PWD/$dev/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

main() {
  check=$dev/bin/kiln-gemm-check
  plan=${GROUPED_PLAN:-$dev/grouped-plan.txt}
  runs=${GROUPED_RUNS:-40}
  budget=${GROUPED_REFERENCE_GFLOP:-40}
  status=0
  failed=()
  echo "== grouped.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>&1 || true
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  shopt -s nullglob
  kernels=($dev/kernels/*_contiguous.cubin $dev/kernels/*_masked.cubin)
  if [[ ! -x $check ]] || ((${#kernels[@]} == 0)); then
    echo "grouped.sh: stage kiln-gemm-check and the grouped kernels first"
    return 2
  fi

  # With the TMA-store kernels (whose default cases have N = 136 for 129).
  tma_kernels=($dev/kernels/*_contiguous_tma.cubin $dev/kernels/*_masked_tma.cubin)
  ((${GROUPED_CHECK:-1})) || kernels=() tma_kernels=()
  for cubin in "${kernels[@]}" "${tma_kernels[@]}"; do
    name=$(basename "$cubin" .cubin)
    echo
    echo "== check $name"
    timeout -k 10 120 "$check" --no-time --json "$work/results/check-$name.json" "$cubin" 2>&1 |
      tee "$work/results/check-$name.log" | grep -vE '^\|'
    rc=${PIPESTATUS[0]}
    ((rc != 0)) && { status=1; failed+=("$name: check exit $rc"); }
  done

  layouts=(contiguous masked contiguous_tma masked_tma)
  ((${GROUPED_CHECK:-1})) || layouts=()
  for layout in "${layouts[@]}"; do
    cubin=$(ls $dev/kernels/*_$layout.cubin 2>/dev/null | head -n 1)
    [[ -n $cubin ]] || continue
    name=$(basename "$cubin" .cubin)
    case_arg=8:300:200x1024:random
    [[ $layout == masked* ]] && case_arg=8:64:200x1024:random
    echo
    echo "== compute-sanitizer memcheck $name ($case_arg)"
    timeout -k 10 120 "$sanitizer" --tool memcheck --error-exitcode 9 --report-api-errors no \
      "$check" --no-time --cases "$case_arg" "$cubin" >"$work/results/sanitizer-$name.log" 2>&1
    rc=$?
    tail -n 3 "$work/results/sanitizer-$name.log"
    ((rc != 0)) && { status=1; failed+=("$name: compute-sanitizer exit $rc"); }
  done

  all_cases=()
  jsons=()
  while read -r kernel problems; do
    [[ -z $kernel || $kernel == \#* || $problems != *:* ]] && continue
    cases=()
    for problem in ${problems//,/ }; do
      IFS=x read -r g r n k <<<"${problem%%:*}"
      layout=${problem##*:}
      if [[ $layout == masked ]]; then
        cases+=("$g:$r:${n}x$k:full")
        all_cases+=("masked:$g:$r:${n}x$k:full")
      else
        cases+=("$g:$r:${n}x$k:balanced")
        all_cases+=("contiguous:$g:$r:${n}x$k:balanced")
        if ((r > 256)); then
          cases+=("$g:$r:${n}x$k:skewed")
          all_cases+=("contiguous:$g:$r:${n}x$k:skewed")
        fi
      fi
    done
    list=$(IFS=,; echo "${cases[*]}")
    echo
    echo "== bench $kernel"
    timeout -k 10 200 "$check" --runs "$runs" --reference-gflop "$budget" --cases "$list" \
      --json "$work/results/kiln-$kernel.json" "$dev/kernels/$kernel.cubin" 2>&1 |
      tee "$work/results/kiln-$kernel.log" | grep -vE '^\|'
    rc=${PIPESTATUS[0]}
    ((rc != 0)) && { status=1; failed+=("$kernel: bench exit $rc"); }
    [[ -f $work/results/kiln-$kernel.json ]] && jsons+=("$work/results/kiln-$kernel.json")
  done <"$plan"

  cublas=$work/results/cublas-loop.json
  if [[ ${GROUPED_CUBLAS:-1} != 0 ]] && ((${#all_cases[@]})); then
    echo
    echo "== cuBLAS loop (bench/grouped_cublas.py)"
    list=$(IFS=,; echo "${all_cases[*]}")
    (cd bench && timeout -k 10 240 python3 grouped_cublas.py --runs "$runs" --cases "$list" \
      --json "$cublas") 2>&1 | tee "$work/results/cublas-loop.log"
    rc=${PIPESTATUS[0]}
    ((rc != 0)) && { status=1; failed+=("grouped_cublas.py exit $rc"); }
  fi

  python3 bench/grouped_compare.py --cublas "$cublas" "${jsons[@]}" | tee "$out/tables.md"
  tar -czf "$out/results.tar.gz" -C "$work" results
  echo
  if ((status == 0)); then
    echo "grouped.sh: all checks passed"
  else
    echo "grouped.sh: FAILED:"
    printf '  %s\n' "${failed[@]}"
  fi
  return $status
}

main 2>&1 | tee "$out/grouped.log"
exit "${PIPESTATUS[0]}"
