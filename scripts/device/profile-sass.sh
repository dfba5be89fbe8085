#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: profiles
# one GEMM shape with ncu, cuBLAS's kernel (bench/gemm_cublas.py) and a Kiln
# cubin (kiln-gemm-check), and exports each kernel's SASS with per-instruction
# executed counts and stall samples, so the two main loops can be compared
# instruction by instruction (what a K block costs in each).
#
#   PROFILE_SHAPE=4096x7168x16384 PROFILE_CUBIN=.device-q/kernels/X.cubin \
#     KILN_DEVICE_DIR=.device-q bash scripts/device/profile-sass.sh
#
# PROFILE_SKIP_CUBLAS=1 profiles the Kiln cubin only. Into $OUT:
# <side>.details.txt (launch, occupancy, throughput sections),
# <side>.sass.csv (ncu's source page: SASS, executed instructions, samples),
# kiln.cuobjdump.sass (the cubin's SASS as cuobjdump prints it).
set -uo pipefail
out=${OUT:-/tmp/profile-out}
mkdir -p "$out"
dev=${KILN_DEVICE_DIR:-.device}
shape=${PROFILE_SHAPE:-4096x7168x16384}
cubin=${PROFILE_CUBIN:?PROFILE_CUBIN names the Kiln cubin to profile}
export LD_LIBRARY_PATH=$PWD/$dev/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
sections=(--section LaunchStats --section Occupancy --section SpeedOfLight
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
  --section SchedulerStats --section WarpStateStats --section InstructionStats
  --section SourceCounters)

profile() { # side kernel-regex command...
  local side=$1 regex=$2
  shift 2
  echo "== ncu $side $shape"
  ncu --clock-control none "${sections[@]}" -k "regex:$regex" -s 2 -c 1 \
    --import-source no -f -o "$out/$side" "$@" >"$out/$side.ncu.log" 2>&1
  echo "ncu exit $? ($(tail -1 "$out/$side.ncu.log"))"
  ncu -i "$out/$side.ncu-rep" --page details >"$out/$side.details.txt" 2>&1
  ncu -i "$out/$side.ncu-rep" --page source --csv --print-source sass \
    >"$out/$side.sass.csv" 2>"$out/$side.sass.err" ||
    echo "source page export failed: $(head -3 "$out/$side.sass.err")"
  wc -l "$out/$side.sass.csv"
  rm -f "$out/$side.ncu-rep"
}

[[ ${PROFILE_SKIP_CUBLAS:-0} == 1 ]] || profile cublas 'nvjet|sm90|gemm' python3 bench/gemm_cublas.py --shapes "$shape" --runs 3 --warmup 1
profile kiln 'kiln_gemm_fp8' "$dev/bin/kiln-gemm-check" --shapes "$shape" --runs 3 --warmup 1 "$cubin"
cuobjdump -sass "$cubin" >"$out/kiln.cuobjdump.sass" 2>&1 || true
grep -E "Duration|SM Frequency|Registers Per|Compute \(SM\) Throughput|Executed Ipc A|Shared Memory Configuration Size|Dynamic Shared|Block Size|Grid Size|Cluster" \
  "$out"/*.details.txt
