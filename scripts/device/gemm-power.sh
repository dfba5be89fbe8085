#!/usr/bin/env bash
# The SM clock and board power while a GEMM runs long enough to reach its
# steady state (device tool): is a large-M kernel bound by power, and does
# its peer (cuBLAS) run at a higher clock on the same shape?
#
#   KILN_DEVICE_DIR=.device-x POWER_SHAPE=4096x7168x16384 POWER_RUNS=4000 \
#     bash scripts/device/gemm-power.sh KERNEL.cubin [KERNEL.cubin ...]
#
# For each kernel (and cuBLAS through bench/gemm_cublas.py, unless
# POWER_CUBLAS=0) prints the median µs of POWER_RUNS launches and, over the
# nvidia-smi samples taken while the timed loop ran (every 100 ms; samples
# below half the peak power, setup and checks, dropped), the median SM clock
# (MHz), board power (W) and the throttle reasons seen (0x4: software power
# cap).
set -euo pipefail
cd "$(dirname "$0")/../.."
device_dir=${KILN_DEVICE_DIR:-.device}
shape=${POWER_SHAPE:-4096x7168x16384}
runs=${POWER_RUNS:-4000}
export LD_LIBRARY_PATH=$PWD/$device_dir/lib:${LD_LIBRARY_PATH:-}
samples=$(mktemp)
trap 'rm -f "$samples"' EXIT

summarize() {
  python3 - "$samples" "$1" "$2" <<'EOF'
import statistics, sys
rows = [l.split(", ") for l in open(sys.argv[1]) if l.strip()]
watts = lambda r: float(r[2].split()[0])
# Only the samples of the timed loop: the process also sets up, checks
# against the FP64 reference and (cuBLAS) quantizes, with the GPU mostly
# idle; the loop draws over half the peak power.
peak = max(map(watts, rows))
rows = [r for r in rows if watts(r) > 0.5 * peak] or rows
clock = statistics.median(float(r[1].split()[0]) for r in rows)
power = statistics.median(float(r[2].split()[0]) for r in rows)
reasons = sorted({r[3].strip() for r in rows})
print(f"| {sys.argv[2]} | {sys.argv[3]} | {clock:.0f} | {power:.0f} | {' '.join(reasons)} |")
EOF
}

sample() {
  : > "$samples"
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active \
    --format=csv,noheader -lms 100 >> "$samples" &
  echo $!
}

echo "| kernel ($shape, $runs runs) | µs | SM MHz | W | throttle reasons |"
echo "| --- | ---: | ---: | ---: | --- |"
for cubin in "$@"; do
  pid=$(sample)
  us=$("$device_dir/bin/kiln-gemm-check" --runs "$runs" --shapes "$shape" "$cubin" |
    awk -F'|' '/^\| [0-9]/ {gsub(/ /, "", $5); print $5}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  summarize "$(basename "$cubin" .cubin)" "$us"
done
if [[ ${POWER_CUBLAS:-1} != 0 ]]; then
  pid=$(sample)
  us=$(python3 bench/gemm_cublas.py --runs "$runs" --shapes "$shape" |
    awk -F'|' '/^\| [0-9]/ {gsub(/ /, "", $5); print $5}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  summarize cuBLAS "$us"
fi
