#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root: expert
# parallelism with and without two-micro-batch overlap, one process per GPU.
#  1. The tiny model expert-parallel, without and with overlap, against the
#     same model on one GPU (kiln-ep-model-check: prefill and greedy decode).
#  2. At more than one rank, a decode of the 2-layer full-width model at
#     batch 1 and context 128, where a rank gets no routed rows in some
#     steps (a regression check: it hung until 59285df), 120 s at most.
#  3. Prefill of 4096 tokens of the 2-layer full-width model (DeepSeek-V3
#     width, one dense and one MoE layer, synthetic weights) without and with
#     overlap (kiln-bench-decode): median prefill time, logits equal bit for
#     bit across the cases, and the per-stream timeline with the streams'
#     overlap (rank r: $OUT/rank<r>/tl-<case>-prefill.json).
# EP_RANKS=N processes, one per GPU (default 1: the --ep-steps artifacts, and
# the plain ones beside them). Build here, compile and stage (N = 2 shown;
# at N = 1 use --ep-steps for the -ep1 artifacts):
#   C=examples/tiny/config.json; F="--max-batch 8 --prefill-chunk 32"
#   kilnc $C -o tiny.kiln $F
#   kilnc $C -o tiny-ep2.kiln $F --ep 2
#   kilnc $C -o tiny-ep2-ov.kiln $F --ep 2 --overlap-micro-batches 2
#   # v3-2.json: examples/deepseek-v3/config.json with num_hidden_layers 2,
#   # first_k_dense_replace 1
#   F="--max-batch 128 --prefill-chunk 4096 --max-seq-len 4608"
#   kilnc v3-2.json -o v3-2-ep2.kiln $F --ep 2
#   kilnc v3-2.json -o v3-2-ep2-ov.kiln $F --ep 2 --overlap-micro-batches 2
#   kilnc v3-2.json -o v3-2-ep2-packed.kiln $F --ep 2 --ep-gather-bytes 0
#   KILN_ARTIFACTS="tiny.kiln tiny-ep2.kiln ..." scripts/device/stage.sh
set -uo pipefail
# NVLink multicast stays off on the shared GPU hosts (device KINDS.md): a
# program that uses it can take the host's GPUs out of service.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=${OUT:-/tmp/ep-overlap-out}
mkdir -p "$out"
device_dir=${KILN_DEVICE_DIR:-.device}
export LD_LIBRARY_PATH=$PWD/$device_dir/lib:/usr/local/cuda/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=$device_dir/bin
art=$device_dir/artifacts
ranks=${EP_RANKS:-1}
port=${EP_PORT:-29531}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0

# Runs "$@" once per rank in the background (rank r's output in
# $out/<tag>-rank<r>.log), waits for all, prints the logs.
on_every_rank() {
  local tag=$1
  shift
  local pids=()
  for ((r = 0; r < ranks; ++r)); do
    mkdir -p "$out/rank$r"
    KILN_RANK=$r KILN_WORLD_SIZE=$ranks KILN_LOCAL_RANK=$r KILN_MASTER_PORT=$port \
      RANK_OUT=$out/rank$r "$@" >"$out/$tag-rank$r.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  port=$((port + 1))
  for ((r = 0; r < ranks; ++r)); do
    echo "-- $tag, rank $r"
    cat "$out/$tag-rank$r.log"
  done
}

tiny=$(mktemp -d)/tiny
"$bin/kiln" make-tiny --config examples/tiny/config.json --out "$tiny" --seed 1 \
  --shards 2 >/dev/null || exit 1
for artifact in tiny-ep$ranks.kiln tiny-ep$ranks-ov.kiln; do
  echo "== kiln-ep-model-check: $ranks rank(s), $artifact against tiny.kiln"
  on_every_rank "check-${artifact%.kiln}" "$bin/kiln-ep-model-check" --model "$tiny" \
    --reference "$art/tiny.kiln" --artifact "$art/$artifact" --sequences 4 \
    --prompt-tokens 6 --decode-steps 4
done

config=$(mktemp -d)/v3-2.json
python3 - "$config" <<'PY'
import json, sys
c = json.load(open("examples/deepseek-v3/config.json"))
c.update(num_hidden_layers=2, first_k_dense_replace=1)
json.dump(c, open(sys.argv[1], "w"))
PY
cases=()
((ranks == 1)) && cases+=(--case "$config,$art/v3-2.kiln" --case "$config,$art/v3-2-ov.kiln")
cases+=(--case "$config,$art/v3-2-ep$ranks.kiln" --case "$config,$art/v3-2-ep$ranks-ov.kiln")
if ((ranks > 1)); then
  # Batch 1 with 128-token prompts leaves a rank without routed rows in
  # some step: it hung both ranks at EP = 2 until 59285df (session 6).
  echo "== decode, batch 1, context 128, 12 steps, $ranks ranks (a rank with no routed rows)"
  on_every_rank decode-empty-rank timeout -k 5 120 "$bin/kiln-bench-decode" \
    --case "$config,$art/v3-2-ep$ranks.kiln" --batches 1 --steps 12 --context 128 --prefill 0
fi
if ((ranks > 1)) && [[ -f $art/v3-2-ep$ranks-packed.kiln ]]; then
  # Gathered exchanges (decode steps as CUDA Graphs) against packed ones
  # (counts read on the host): step times side by side, logits compared
  # between graphs and eager within each artifact.
  echo "== decode, gathered vs packed exchanges, $ranks ranks"
  on_every_rank decode-gathered timeout -k 5 200 "$bin/kiln-bench-decode" \
    --case "$config,$art/v3-2-ep$ranks.kiln" --case "$config,$art/v3-2-ep$ranks-packed.kiln" \
    --batches 1,4,16,32 --steps 8 --context 128 --prefill 0
fi
echo "== prefill 4096, 2-layer full width, $ranks rank(s): ${cases[*]}"
# shellcheck disable=SC2016 # RANK_OUT is set per rank by on_every_rank.
on_every_rank bench bash -c '"$0" "$@" --timeline "$RANK_OUT/tl"' "$bin/kiln-bench-decode" \
  "${cases[@]}" --batches 1 --steps 4 --context 16 --prefill 4096 \
  --prefill-runs "${EP_PREFILL_RUNS:-3}" --timeline-batches 1
exit $status
