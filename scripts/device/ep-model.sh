#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: the tiny
# model expert-parallel (one process per GPU) against the same model on one
# GPU, prefill and greedy decode (kiln-ep-model-check). Build here, compile
# the two artifacts and stage them with the binaries, carry the stage folder:
#   kilnc examples/tiny/config.json -o tiny.kiln --max-batch 8 --prefill-chunk 32
#   kilnc examples/tiny/config.json -o tiny-ep1.kiln --max-batch 8 --prefill-chunk 32 --ep-steps
#   kilnc examples/tiny/config.json -o tiny-ep2.kiln --max-batch 8 --prefill-chunk 32 --ep 2
#   KILN_ARTIFACTS="tiny.kiln tiny-ep1.kiln tiny-ep2.kiln" scripts/device/stage.sh
#   EP_RANKS=N   processes, one per GPU (default 1); runs artifacts/tiny-epN.kiln
set -uo pipefail
# NVLink multicast stays off on the shared GPU hosts (device KINDS.md): a
# program that uses it can take the host's GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=${OUT:-/tmp/ep-model-out}
mkdir -p "$out"
device_dir=${KILN_DEVICE_DIR:-.device}
export LD_LIBRARY_PATH=$PWD/$device_dir/lib:/usr/local/cuda/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=$device_dir/bin
ranks=${EP_RANKS:-1}
reference=$device_dir/artifacts/tiny.kiln
artifact=$device_dir/artifacts/tiny-ep$ranks.kiln
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

tiny=$(mktemp -d)/tiny
"$bin/kiln" make-tiny --config examples/tiny/config.json --out "$tiny" --seed 1 \
  --shards 2 >/dev/null || exit 1

echo "== kiln-ep-model-check: $ranks rank(s), $artifact against $reference"
pids=()
for ((r = 0; r < ranks; ++r)); do
  KILN_RANK=$r KILN_WORLD_SIZE=$ranks KILN_LOCAL_RANK=$r KILN_MASTER_PORT=${EP_PORT:-29527} \
    "$bin/kiln-ep-model-check" --model "$tiny" --reference "$reference" \
    --artifact "$artifact" --sequences "${EP_SEQUENCES:-4}" \
    --prompt-tokens "${EP_PROMPT_TOKENS:-6}" --decode-steps "${EP_DECODE_STEPS:-4}" \
    >"$out/rank$r.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
cat "$out"/rank*.log

# A wrong world size must fail with a message naming both sizes.
if ((ranks == 1)) && [[ -f $device_dir/artifacts/tiny-ep2.kiln ]]; then
  echo "== world size 1 against an --ep 2 artifact (must fail)"
  if KILN_RANK=0 KILN_WORLD_SIZE=1 "$bin/kiln-ep-model-check" --model "$tiny" \
    --reference "$reference" --artifact "$device_dir/artifacts/tiny-ep2.kiln" \
    --decode-steps 0 2>&1 | tee "$out/wrong-world.log"; then
    status=1
  fi
fi
exit $status
