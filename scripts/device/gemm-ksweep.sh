#!/usr/bin/env bash
# Runs on the GPU machine (device tool): where the time of small-M GEMMs goes.
# Times KERNEL on M x N x K for a sweep of K (fixed cost = the intercept,
# streaming rate = the slope of time over weight bytes), cuBLAS on the same
# shapes, and, with SWEEP_NCU=1, ncu's kernel-only duration and DRAM bytes
# for the first shape of each line. Lines of $SWEEP (";"-separated):
#   KERNEL M N K1/K2/...
# KERNEL names $dev/kernels/KERNEL.cubin (.json beside it).
set -uo pipefail
dev=${KILN_DEVICE_DIR:-.device}
out=${OUT:-/tmp/sweep-out}
mkdir -p "$out"
check=$dev/bin/kiln-gemm-check
IFS=';' read -ra lines <<<"${SWEEP:?set SWEEP}"
allshapes=()
for line in "${lines[@]}"; do
  read -r kernel m n ks <<<"$line"
  shapes=()
  for k in ${ks//\// }; do shapes+=("${m}x${n}x${k}"); done
  list=$(IFS=,; echo "${shapes[*]}")
  allshapes+=("${shapes[@]}")
  echo "== $kernel $list"
  $check --shapes "$list" --runs ${SWEEP_RUNS:-30} $dev/kernels/$kernel.cubin 2>&1 | grep -v '^$' | tail -n $(( ${#shapes[@]} + 4 ))
done
unique=$(printf '%s\n' "${allshapes[@]}" | sort -u | paste -sd,)
echo "== cuBLAS $unique"
python3 bench/gemm_cublas.py --shapes "$unique" --runs ${SWEEP_RUNS:-30} 2>&1 | tail -n 40
if [[ ${SWEEP_NCU:-0} == 1 ]]; then
  metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__cycles_active.avg,gpc__cycles_elapsed.max
  for line in "${lines[@]}"; do
    read -r kernel m n ks <<<"$line"
    shape="${m}x${n}x${ks%%/*}"
    echo "== ncu $kernel $shape"
    ncu --clock-control none --metrics $metrics -c 3 $check --shapes $shape --runs 3 --warmup 1 $dev/kernels/$kernel.cubin 2>&1 | grep -E "gpu__|dram__|sm__|gpc__|==PROF==" | head -20
    echo "== ncu cuBLAS $shape"
    ncu --clock-control none --metrics $metrics -k regex:'nvjet|gemm|sm90' -c 2 python3 bench/gemm_cublas.py --shapes $shape --runs 3 2>&1 | grep -E "gpu__|dram__|sm__|gpc__|==PROF==|  [a-z_0-9]+.*\(" | head -20
  done
fi
