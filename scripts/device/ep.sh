#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: the
# expert-parallel exchange across one process per GPU (kiln-ep-check: the
# variable all-to-all checked byte for byte, then its bandwidth), and the
# one-rank NCCL device test. Build here, stage (scripts/device/stage.sh copies
# kiln-ep-check and the test binary) and carry the stage folder.
#   EP_RANKS=N   processes (default: every GPU);  EP_MB=M  MiB per peer pair
#   EP_MOE_EXPERTS=E  routed experts of kiln-ep-moe-check (default 64)
set -uo pipefail
# NVLink multicast stays off on the shared GPU hosts (device KINDS.md): a
# program that uses it can take the host's GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
device_dir=${KILN_DEVICE_DIR:-.device}
export LD_LIBRARY_PATH=$PWD/$device_dir/lib:/usr/local/cuda/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=$device_dir/bin
gpus=$(nvidia-smi -L | wc -l)
ranks=${EP_RANKS:-$gpus}
echo "== kiln-ep-check: $ranks rank(s) on $gpus GPU(s)"
pids=()
for ((r = 0; r < ranks; ++r)); do
  KILN_RANK=$r KILN_WORLD_SIZE=$ranks KILN_LOCAL_RANK=$r KILN_MASTER_PORT=${EP_PORT:-29517} \
    "$bin/kiln-ep-check" --mb "${EP_MB:-64}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
# One MoE layer expert-parallel vs one rank, bit for bit (kiln-ep-moe-check),
# with the contiguous grouped GEMM kernels of the first staged artifact.
moe_artifact=$(ls "$device_dir"/artifacts/*.kiln 2>/dev/null | head -1)
if [[ -x $bin/kiln-ep-moe-check && -n $moe_artifact ]]; then
  echo "== kiln-ep-moe-check: $ranks rank(s), $moe_artifact"
  pids=()
  for ((r = 0; r < ranks; ++r)); do
    KILN_RANK=$r KILN_WORLD_SIZE=$ranks KILN_LOCAL_RANK=$r KILN_MASTER_PORT=$((${EP_PORT:-29517} + 1)) \
      "$bin/kiln-ep-moe-check" "$moe_artifact" --experts "${EP_MOE_EXPERTS:-64}" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
fi
if [[ -x $bin/kiln-runtime-tests ]]; then
  echo "== NCCL at one rank"
  "$bin/kiln-runtime-tests" --gtest_filter='NcclTest.*:Distributed*:Rendezvous*:ExpertPlacement*' 2>&1 | tail -4 || status=1
fi
exit $status
