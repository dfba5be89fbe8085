#!/usr/bin/env bash
# Copies what a device call needs and git does not track into .device/ (kept
# out of git by .git/info/exclude), to be named in the call's `carry`:
# the runtime binaries, built here (the GPU machine has no MLIR and no
# Debian packages; Debian-built binaries run there).
set -euo pipefail
cd "$(dirname "$0")/../.."
build_dir=${KILN_BUILD_DIR:-build}
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
mkdir -p .device/bin
cp "$build_dir/bin/kiln" .device/bin/
echo "stage: .device/bin: $(ls .device/bin | tr '\n' ' ')"

# The FP8 GEMM harness (scripts/device/gemm.sh), built where CUDA was found:
# the checker, the launcher tests, the reference cubin (nvcc, here) and the
# GEMM kernels the compiler wrote as <name>.cubin + <name>.json into
# $KILN_GEMM_KERNELS (default $build_dir/kernels); when that holds any, they
# replace .device/kernels.
if [[ -x $build_dir/bin/kiln-gemm-check ]]; then
  mkdir -p .device/reference .device/kernels
  cp "$build_dir/bin/kiln-gemm-check" .device/bin/
  if [[ -x $build_dir/bin/kiln-runtime-tests ]]; then
    cp "$build_dir/bin/kiln-runtime-tests" .device/bin/
    # The tests link the runtime library, shared when the build makes it so.
    for library in "$build_dir"/lib/libkiln_runtime.so*; do
      [[ -e $library ]] || continue
      mkdir -p .device/lib
      cp -P "$library" .device/lib/
    done
  fi
  cp "$build_dir/kernels/gemm_reference.cubin" "$build_dir/kernels/gemm_reference.json" .device/reference/
  kernels=()
  for cubin in "${KILN_GEMM_KERNELS:-$build_dir/kernels}"/*.cubin; do
    [[ -f $cubin && $(basename "$cubin") != gemm_reference.cubin ]] && kernels+=("$cubin")
  done
  if ((${#kernels[@]})); then
    rm -f .device/kernels/*.cubin .device/kernels/*.json
    for cubin in "${kernels[@]}"; do
      cp "$cubin" "${cubin%.cubin}.json" .device/kernels/
    done
  fi
  echo "stage: GEMM harness in .device/bin, .device/reference; .device/kernels: $(ls .device/kernels | tr '\n' ' ')"
fi
