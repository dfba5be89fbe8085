#!/usr/bin/env bash
# Copies what a device call needs and git does not track into .device/ (kept
# out of git by .git/info/exclude), to be named in the call's `carry`:
# the runtime binaries, built here (the GPU machine has no MLIR and no
# Debian packages; Debian-built binaries run there). KILN_DEVICE_DIR names
# another repository-relative folder instead of .device (several people can
# stage at once; scripts/device/gemm.sh reads the same variable).
set -euo pipefail
cd "$(dirname "$0")/../.."
build_dir=${KILN_BUILD_DIR:-build}
device_dir=${KILN_DEVICE_DIR:-.device}
grep -qx "/$device_dir/" .git/info/exclude 2>/dev/null || echo "/$device_dir/" >> .git/info/exclude
mkdir -p $device_dir/bin
cp "$build_dir/bin/kiln" $device_dir/bin/
# The CUDA backend's check (scripts/device/backend.sh) and benchmark, the runtime library
# it links, and the kilnc artifacts named in $KILN_ARTIFACTS (space-separated).
for tool in kiln-backend-check kiln-bench-decode kiln-bench-mla kiln-ep-check kiln-ep-moe-check kiln-ep-model-check; do
  if [[ -x $build_dir/bin/$tool ]]; then
    cp "$build_dir/bin/$tool" $device_dir/bin/
  fi
done
for library in "$build_dir"/lib/libkiln_runtime.so* "$build_dir"/lib/libkiln_gemm_shim.so; do
  [[ -e $library ]] || continue
  mkdir -p $device_dir/lib
  cp -P "$library" $device_dir/lib/
done
# `kiln serve` links Debian's cpp-httplib, which the GPU machine (Ubuntu)
# lacks; ship it (its own dependencies, OpenSSL, zlib, Brotli, are there).
for library in /lib/x86_64-linux-gnu/libcpp-httplib.so.*; do
  [[ -e $library ]] || continue
  mkdir -p $device_dir/lib
  cp -L "$library" $device_dir/lib/
done
if [[ -n ${KILN_ARTIFACTS:-} ]]; then
  mkdir -p $device_dir/artifacts
  for artifact in $KILN_ARTIFACTS; do
    cp "$artifact" $device_dir/artifacts/
  done
  echo "stage: $device_dir/artifacts: $(ls $device_dir/artifacts | tr '\n' ' ')"
fi
echo "stage: $device_dir/bin: $(ls $device_dir/bin | tr '\n' ' ')"

# The FP8 GEMM harness (scripts/device/gemm.sh), built where CUDA was found:
# the checker, the launcher tests, the reference cubin (nvcc, here) and the
# GEMM kernels the compiler wrote as <name>.cubin + <name>.json into
# $KILN_GEMM_KERNELS (default $build_dir/kernels); when that holds any, they
# replace $device_dir/kernels.
if [[ -x $build_dir/bin/kiln-gemm-check ]]; then
  mkdir -p $device_dir/reference $device_dir/kernels
  cp "$build_dir/bin/kiln-gemm-check" $device_dir/bin/
  if [[ -x $build_dir/bin/kiln-runtime-tests ]]; then
    cp "$build_dir/bin/kiln-runtime-tests" $device_dir/bin/
    # (It links the runtime library, staged above.)
  fi
  cp "$build_dir/kernels/gemm_reference.cubin" "$build_dir/kernels/gemm_reference.json" $device_dir/reference/
  kernels=()
  for cubin in "${KILN_GEMM_KERNELS:-$build_dir/kernels}"/*.cubin; do
    [[ -f $cubin && -f ${cubin%.cubin}.json && $(basename "$cubin") != gemm_reference.cubin ]] && kernels+=("$cubin")
  done
  if ((${#kernels[@]})); then
    rm -f $device_dir/kernels/*.cubin $device_dir/kernels/*.json
    for cubin in "${kernels[@]}"; do
      cp "$cubin" "${cubin%.cubin}.json" $device_dir/kernels/
    done
  fi
  echo "stage: GEMM harness in $device_dir/bin, $device_dir/reference; $device_dir/kernels: $(ls $device_dir/kernels | tr '\n' ' ')"
fi
