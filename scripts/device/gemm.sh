#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: checks and
# times every staged FP8 GEMM kernel and cuBLAS on the same shapes, in one
# call. Needs scripts/device/stage.sh's output carried in the call (.device,
# or $KILN_DEVICE_DIR as stage.sh had it):
#   .device/bin/kiln-gemm-check, .device/bin/kiln-runtime-tests
#   .device/reference/gemm_reference.{cubin,json}   (built here by nvcc)
#   .device/kernels/<name>.cubin + <name>.json      (the compiler's kernels)
# For the reference kernel and then each staged kernel: kiln-gemm-check on all
# shapes, then compute-sanitizer memcheck on small ragged shapes. Then the
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
#   GEMM_CUBLAS_ONE_PROCESS  1: time every cuBLAS shape in one process (the
#                     default gives each shape its own, as Kiln's)
#   GEMM_CUBLAS_JSON  a carried gemm_cublas.py result to compare against
#                     instead of running cuBLAS again (~1 min)
#   GEMM_TIMEOUT      seconds per kiln-gemm-check run (300)
#   GEMM_PLAN         a file of lines "KERNEL MxNxK,...": instead of every
#                     kernel on every shape, each line's kernel on its shapes
#                     (what kiln-select-gemm-config picks per shape, written by
#                     scripts/device/gemm-plan.py); the rows are merged into
#                     one result, "kiln-selected", compared with cuBLAS
#   GEMM_SANITIZE     0 skips compute-sanitizer (default 1)
#   GEMM_PAIRED_PASSES  with GEMM_PLAN: after the comparison, time each plan
#                     shape's kernel and cuBLAS again in turn, each in its
#                     own process, this many passes with the pair's order
#                     alternating (scripts/device/gemm-ab.py --plan): the
#                     paired table, whose ratio is not skewed by what ran
#                     before either side (the clock under the power cap
#                     drifts); per-launch events whatever GEMM_TIMING
#                     says; 0 or unset: not run
#   GEMM_PAIRED_SHAPES  MxNxK,... of the plan for the paired table (default:
#                     all of them)
#   GEMM_TIMING       events (default): an event pair around every launch;
#                     back-to-back: around batches of launches with nothing
#                     between them, as in a CUDA graph (both tools'
#                     --back-to-back)
set -uo pipefail
out=${OUT:-/tmp/gemm-out}
mkdir -p "$out"
work=$(mktemp -d)
mkdir -p "$work/results"
export PYTHONUNBUFFERED=1
# The runtime library, where the build makes it shared (stage.sh copies it).
dev=${KILN_DEVICE_DIR:-.device}
export LD_LIBRARY_PATH=$PWD/$dev/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

main() {
  check=$dev/bin/kiln-gemm-check
  runs=${GEMM_RUNS:-50}
  timing_args=()
  case ${GEMM_TIMING:-events} in
    events) ;;
    back-to-back) timing_args=(--back-to-back) ;;
    *) echo "gemm.sh: GEMM_TIMING must be events or back-to-back, not '$GEMM_TIMING'" >&2; exit 2 ;;
  esac
  timeout_s=${GEMM_TIMEOUT:-300}
  status=0
  failed=()

  echo "== gemm.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv 2>&1 || true
  if [[ ! -x $check ]]; then
    echo "gemm.sh: $check is missing: run scripts/device/stage.sh here and carry $dev"
    return 2
  fi
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)

  shopt -s nullglob
  # Grouped kernels run grouped cases: scripts/device/grouped.sh.
  kernels=()
  for cubin in $dev/kernels/*.cubin; do
    [[ $cubin == *_contiguous.cubin || $cubin == *_masked.cubin ]] || kernels+=("$cubin")
  done
  mode=${GEMM_REFERENCE:-}
  [[ -z $mode ]] && { ((${#kernels[@]})) && mode=check || mode=full; }
  targets=()
  [[ $mode != skip ]] && targets+=($dev/reference/gemm_reference.cubin)
  targets+=("${kernels[@]}")

  jsons=()
  # One "cubin shapes" item per kiln-gemm-check run: every target on every
  # shape, or the plan's lines.
  runs_list=()
  if [[ -n ${GEMM_PLAN:-} ]]; then
    while read -r kernel plan_shapes; do
      [[ -z $kernel || $kernel == \#* ]] && continue
      # Grouped problems (GxRxNxK:LAYOUT) are scripts/device/grouped.sh's.
      [[ $plan_shapes == *:* ]] && continue
      # One process per shape: each then gets the harness's warm-up and
      # none runs right after another shape's long loop (a 7168 x 16384
      # loop before 4096 x 4096 x 7168 measured it 10% slow, min 199 /
      # median 225 / max 242 us).
      IFS=',' read -ra one_shapes <<<"$plan_shapes"
      for shape in "${one_shapes[@]}"; do
        runs_list+=("$dev/kernels/$kernel.cubin $shape")
      done
    done <"$GEMM_PLAN"
  else
    for cubin in "${targets[@]}"; do runs_list+=("$cubin ${GEMM_SHAPES:-}"); done
  fi
  sanitized=()
  for item in "${runs_list[@]}"; do
    read -r cubin item_shapes <<<"$item"
    shape_args=()
    [[ -n $item_shapes ]] && shape_args=(--shapes "$item_shapes")
    name=$(basename "$cubin" .cubin)
    [[ -n ${GEMM_PLAN:-} ]] && name=$name-${item_shapes%%,*}
    echo
    echo "== kiln-gemm-check $name"
    time_args=("${timing_args[@]}")
    timed=1
    [[ $name == gemm_reference && $mode == check ]] && { time_args=(--no-time); timed=0; }
    timeout -k 10 "$timeout_s" "$check" --runs "$runs" "${time_args[@]}" "${shape_args[@]}" \
      --json "$work/results/kiln-$name.json" "$cubin" 2>&1 | tee "$work/results/kiln-$name.log"
    rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
      status=1
      failed+=("$name: kiln-gemm-check exit $rc")
    fi
    [[ -f $work/results/kiln-$name.json && $timed == 1 ]] && jsons+=("$work/results/kiln-$name.json")

    [[ ${GEMM_SANITIZE:-1} == 0 || " ${sanitized[*]} " == *" $cubin "* ]] && continue
    sanitized+=("$cubin")
    echo
    # Ragged shapes, and one K block (1x8x128: split-K kernels get empty
    # slices); TMA-store kernels need N % 8 == 0 (they refuse 129 with a
    # message), so theirs has a partial last tile of 200 columns.
    ragged=7x2112x7168,300x129x1024,1x8x128
    [[ $cubin == *_tma.cubin ]] && ragged=7x2112x7168,300x200x1024,1x8x128
    echo "== compute-sanitizer memcheck $name ($ragged)"
    # API errors are kiln-gemm-check's to report (it checks every call, and
    # probes cuFuncGetParamInfo past the last parameter on purpose).
    timeout -k 10 "$timeout_s" "$sanitizer" --tool memcheck --error-exitcode 9 \
      --report-api-errors no \
      "$check" --no-time --shapes "$ragged" "$cubin" \
      >"$work/results/sanitizer-$name.log" 2>&1
    rc=$?
    tail -n 4 "$work/results/sanitizer-$name.log"
    if ((rc != 0)); then
      status=1
      failed+=("$name: compute-sanitizer exit $rc (results/sanitizer-$name.log)")
    fi
  done

  if [[ -x $dev/bin/kiln-runtime-tests ]]; then
    echo
    echo "== launcher tests on the GPU"
    $dev/bin/kiln-runtime-tests --gtest_filter='GemmLauncherOnGpu.*:GemmOperandChecks.*:CudaErrors.*' \
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
    # Each shape in its own process, as Kiln's above (GEMM_CUBLAS_ONE_PROCESS=1:
    # all in one, as before session 16; a shape right after a long M = 4096
    # loop then runs at the clock that loop left).
    [[ ${GEMM_CUBLAS_ONE_PROCESS:-0} == 1 ]] || shape_py+=(--process-per-shape)
    python3 bench/gemm_cublas.py --runs "$runs" "${shape_py[@]}" "${timing_args[@]}" --json "$cublas_json" 2>&1 |
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

  if [[ -n ${GEMM_PLAN:-} ]] && ((${#jsons[@]})); then
    # One result of the plan's rows, in the plan's order.
    python3 - "$work/results/kiln-selected.json" "${jsons[@]}" <<'PY'
import json, sys
merged = None
for path in sys.argv[2:]:
    part = json.load(open(path))
    for row in part["rows"]:
        row["kernel"] = part["manifest"]["kernel"]
    if merged is None:
        merged = dict(part, label="kiln-selected", rows=[])
    merged["rows"] += part["rows"]
json.dump(merged, open(sys.argv[1], "w"), indent=2)
PY
    jsons=("$work/results/kiln-selected.json")
  fi

  if [[ -f $cublas_json ]] && ((${#jsons[@]})); then
    python3 bench/compare.py --cublas "$cublas_json" "${jsons[@]}" | tee "$work/results/compare.md"
    rc=${PIPESTATUS[0]}
    ((rc != 0)) && status=1
    {
      echo "## comparison"
      cat "$work/results/compare.md"
    } >>"$out/tables.md"
  fi

  if [[ -n ${GEMM_PLAN:-} ]] && ((${GEMM_PAIRED_PASSES:-0} > 0)); then
    echo
    echo "== paired timing (scripts/device/gemm-ab.py --plan, ${GEMM_PAIRED_PASSES} passes)"
    paired_shapes=()
    [[ -n ${GEMM_PAIRED_SHAPES:-} ]] && paired_shapes=(--shapes "$GEMM_PAIRED_SHAPES")
    python3 scripts/device/gemm-ab.py --check "$check" --plan "$GEMM_PLAN" \
      --kernel-dir "$dev/kernels" --passes "$GEMM_PAIRED_PASSES" --runs "$runs" \
      "${paired_shapes[@]}" --json "$work/results/paired.json" \
      >"$work/results/paired.log" 2>&1
    rc=$?
    ((rc != 0)) && { status=1; failed+=("gemm-ab.py --plan exit $rc (results/paired.log)"); }
    grep -v '^pass ' "$work/results/paired.log" | tee "$work/results/paired.md"
    {
      echo
      echo "## paired"
      cat "$work/results/paired.md"
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
