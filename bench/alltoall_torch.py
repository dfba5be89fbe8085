"""Peer for kiln-ep-check's bandwidth: torch.distributed all_to_all_single
(NCCL) over equal blocks, one process per GPU, medians of 20 after 5 warm-up
calls; prints GB/s leaving each GPU (the blocks for the other ranks).

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=2 bench/alltoall_torch.py --mb 16,256
"""
import argparse
import os
import statistics

import torch
import torch.distributed as dist


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", default="16,256", help="MiB per peer pair, comma-separated")
    args = parser.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    for mb in (float(x) for x in args.mb.split(",")):
        block = int(mb * (1 << 20))
        send = torch.randint(0, 255, (block * world,), dtype=torch.uint8, device="cuda")
        recv = torch.empty_like(send)
        times = []
        for i in range(25):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dist.all_to_all_single(recv, send)
            stop.record()
            stop.synchronize()
            if i >= 5:
                times.append(start.elapsed_time(stop))
        ms = statistics.median(times)
        gbps = block * (world - 1) / (ms * 1e-3) / 1e9
        print(f"torch all_to_all_single rank {rank}/{world}: {mb:.1f} MiB per peer: "
              f"{ms:.3f} ms, {gbps:.1f} GB/s out per GPU", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
