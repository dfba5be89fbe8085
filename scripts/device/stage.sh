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
