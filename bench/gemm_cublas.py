#!/usr/bin/env python3
"""The peer of kiln-gemm-check: cuBLAS FP8 block-scaled GEMM, timed and checked.

Runs torch._scaled_mm with DeepSeek-V3's scaling (A: one FP32 scale per 1x128
tile, B: one per 128x128 block) on the shapes kiln-gemm-check uses, on the same
GPU, the same way: fresh random E4M3 inputs (normal, sigma 112) and positive
scales per shape, a check of every element against the FP64 product of the
dequantized operands (so we know the peer computes the same function), then
the median of per-launch CUDA-event times over >= 50 launches rotating among
enough input sets to defeat the L2. Prints the same table and writes the same
JSON (bench/compare.py merges them).

Scale layouts as cuBLAS wants them through PyTorch (ScaledBlas.cpp,
is_blockwise_1x128_scaling / is_blockwise_128x128_scaling): scale_a is
(M, K/128) M-major, i.e. the transpose view of Kiln's [K/128][M]; scale_b is
(K/128, ceil(N/128)), the transpose view of the checkpoint's
[ceil(N/128)][K/128] weight_scale_inv. So both are Kiln's own buffers, viewed.

With --process-per-shape every shape runs in a process of its own (its own
warm-up, after the GPU idled through the process start), as
scripts/device/gemm.sh runs Kiln's shapes: in one process a shape that
follows a long M = 4096 loop runs at the clock that loop left (64 x 4096 x
7168: 31.6 us right after 4096 x 7168 x 16384, 25.0 us alone;
bench/results/widest-clustered-h100.md).

Usage: python3 bench/gemm_cublas.py [--shapes MxNxK,...] [--runs 50]
       [--warmup 10] [--seed N] [--json PATH] [--back-to-back]
       [--process-per-shape]
Exit status: 0 all supported shapes right, 1 a wrong result.
"""

import argparse
import datetime
import json
import math
import os
import random
import subprocess
import sys
import tempfile

import torch

TOLERANCE = 5e-3
SCALE_BASE_A = 1.0 / 128
SCALE_BASE_B = 1.0 / 1024


def default_shapes():
    """Keep in sync with kiln-gemm-check's defaultShapes()."""
    shapes = []
    for n, k in [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384),
                 (4096, 7168), (7168, 2048)]:
        for m in (64, 128, 4096):
            shapes.append((m, n, k))
    for m in (1, 7, 300, 1000):
        shapes.append((m, 2112, 7168))
    shapes.append((300, 129, 1024))
    return shapes


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        parts = item.split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise SystemExit(f"--shapes: {item!r} is not MxNxK")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def random_e4m3(rows, cols, generator):
    # Normal with sigma 112 (so +-448 is 4 sigma), saturated: PyTorch's cast
    # to float8_e4m3fn turns out-of-range values into NaN rather than clamp.
    x = torch.randn(rows, cols, generator=generator, device="cuda") * 112.0
    return x.clamp_(-448.0, 448.0).to(torch.float8_e4m3fn)


def random_scales(rows, cols, base, generator):
    u = torch.rand(rows, cols, generator=generator, device="cuda")
    return base * torch.exp2(2.0 * u - 1.0)


class OperandSet:
    """One set of inputs in Kiln's layouts, with the views cuBLAS takes."""

    def __init__(self, m, n, k, generator):
        blocks_k, blocks_n = k // 128, (n + 127) // 128
        self.a = random_e4m3(m, k, generator)                   # M x K
        self.b = random_e4m3(n, k, generator)                   # N x K
        self.scale_a_km = random_scales(blocks_k, m, SCALE_BASE_A, generator)
        self.scale_b_nk = random_scales(blocks_n, blocks_k, SCALE_BASE_B,
                                        generator)
        self.mat2 = self.b.t()                  # K x N, column-major
        self.scale_a = self.scale_a_km.t()      # (M, K/128), stride (1, M)
        self.scale_b = self.scale_b_nk.t()      # (K/128, N/128), stride (1, K/128)
        # The set's own output, as kiln-gemm-check's sets have: a fresh
        # result from the caching allocator is the same buffer every launch,
        # which stays dirty in L2 and is overwritten there, so a peer without
        # its own outputs never pays the write-back of its output to HBM
        # that a kernel writing a different buffer each time does (H100,
        # 128 x 32768 x 512: 0.7-2.8 MB against 7.8-10 MB of DRAM writes
        # per launch in ncu).
        self.out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")

    def bytes(self):
        return sum(t.numel() * t.element_size()
                   for t in (self.a, self.b, self.scale_a_km, self.scale_b_nk,
                             self.out))

    def run(self):
        return torch._scaled_mm(self.a, self.mat2, scale_a=self.scale_a,
                                scale_b=self.scale_b, out_dtype=torch.bfloat16,
                                use_fast_accum=False, out=self.out)

    def reference(self):
        """FP64 product of the dequantized operands."""
        m, k = self.a.shape
        n = self.b.shape[0]
        a = self.a.double() * self.scale_a_km.t().double().repeat_interleave(
            128, dim=1)
        scale_b = self.scale_b_nk.double().repeat_interleave(128, dim=0)[:n]
        b = self.b.double() * scale_b.repeat_interleave(128, dim=1)
        return a @ b.t()


def relative_error(out, reference):
    """‖out − reference‖ / ‖reference‖ with NaN/Inf counted as 0, and the
    number of NaN/Inf elements of `out`."""
    value = out.double()
    bad = (~torch.isfinite(value)).sum().item()
    error = torch.linalg.vector_norm(torch.nan_to_num(value) - reference)
    return (error / torch.linalg.vector_norm(reference)).item(), bad


def sets_wanted(l2_bytes, set_bytes):
    """Operand sets to rotate among so that a shape's inputs and outputs
    span 4x the L2 (2 to 64)."""
    return max(2, min(64, math.ceil(4 * l2_bytes / set_bytes)))


def model_bytes(m, n, k):
    """A + B + scales + out, each moved once (as kiln-gemm-check counts)."""
    blocks_k = k / 128
    return (m * k + n * k + 4 * (m * blocks_k + math.ceil(n / 128) * blocks_k)
            + 2 * m * n)


def measure_hbm_bandwidth():
    """Device-to-device copy of 2 GiB, bytes read + written, median of 10."""
    nbytes = 2 << 30
    source = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    target = torch.empty_like(source)
    for _ in range(2):
        target.copy_(source)
    times = []
    for _ in range(10):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    del source, target
    torch.cuda.empty_cache()
    return 2 * nbytes / sorted(times)[len(times) // 2] / 1e9


_warmed_up = False


def time_shape(sets, runs, warmup, clock_hz, spin_s=None, back_to_back=False):
    """Median, min and max µs of one `run()` of the sets, in turn.

    The GPU spins for `spin_s` (default: 5 ms + 100 µs per run) while Python
    enqueues the timed launches (tens of µs each), so that they run back to
    back and each event pair brackets one run's GPU time, not host overhead.
    With `back_to_back`, one event pair brackets each of 5 batches of `runs`
    launches instead (no events between launches, as in a CUDA graph): the
    median, min and max of the batches' per-launch averages, as
    kiln-gemm-check --back-to-back.
    """
    # The first timed loop of a process measures slow (kiln-gemm-check saw
    # up to 10%); as there, the first shape runs for about 20 ms of GPU time
    # untimed first.
    global _warmed_up
    if not _warmed_up:
        _warmed_up = True
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        sets[0].run()
        stop.record()
        stop.synchronize()
        once_ms = max(start.elapsed_time(stop), 0.001)
        for r in range(int(min(5000, 20.0 / once_ms))):
            sets[r % len(sets)].run()
        torch.cuda.synchronize()
    for w in range(warmup):
        sets[w % len(sets)].run()
    if spin_s is None:
        spin_s = 0.005 + 100e-6 * runs
    if back_to_back:
        per_launch = []
        for batch in range(5):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            torch.cuda._sleep(int(clock_hz * spin_s))
            start.record()
            for r in range(runs):
                sets[(warmup + batch * runs + r) % len(sets)].run()
            stop.record()
            torch.cuda.synchronize()
            per_launch.append(start.elapsed_time(stop) * 1e3 / runs)
        per_launch.sort()
        return per_launch[2], per_launch[0], per_launch[-1]
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    torch.cuda.synchronize()
    torch.cuda._sleep(int(clock_hz * spin_s))
    for r in range(runs):
        starts[r].record()
        sets[(warmup + r) % len(sets)].run()
        stops[r].record()
    torch.cuda.synchronize()
    us = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, stops))
    median = (us[runs // 2] if runs % 2
              else 0.5 * (us[runs // 2 - 1] + us[runs // 2]))
    return median, us[0], us[-1]


def run_shape(shape, args, generator, l2_bytes, clock_hz):
    m, n, k = shape
    row = {"m": m, "n": n, "k": k, "us": None, "min_us": None, "max_us": None,
           "tflops": None, "gbps": None, "hbm_fraction": None,
           "rel_error": None, "sets": 0, "status": "ERROR", "detail": ""}
    try:
        first = OperandSet(m, n, k, generator)
        first.out.fill_(float("nan"))  # poison: an unwritten element fails
        out = first.run()
        torch.cuda.synchronize()
    except (RuntimeError, ValueError) as error:
        row["status"] = "unsupported"
        row["detail"] = str(error).splitlines()[0]
        return row
    reference = first.reference()
    problems = []
    rel_error, bad = relative_error(out, reference)
    if bad:
        problems.append(f"{bad} elements NaN or Inf")
    row["rel_error"] = rel_error
    if not rel_error <= TOLERANCE:
        problems.append(f"relative error {rel_error:.3g} > {TOLERANCE:.0e}")
    del reference, out

    sets = [first]
    wanted = sets_wanted(l2_bytes, first.bytes())
    while len(sets) < wanted:
        sets.append(OperandSet(m, n, k, generator))
    row["sets"] = len(sets)
    median, low, high = time_shape(sets, args.runs, args.warmup, clock_hz,
                                   back_to_back=args.back_to_back)
    row.update(us=median, min_us=low, max_us=high,
               tflops=2.0 * m * n * k / (median * 1e6),
               gbps=model_bytes(m, n, k) / (median * 1e3))
    row["status"] = "WRONG" if problems else "ok"
    row["detail"] = "; ".join(problems)
    return row


def cell(value, pattern):
    return "-" if value is None else pattern % value


def print_table(title, rows, hbm_gbps):
    print(f"\n{title}\n")
    print("| M | N | K | µs | TFLOP/s | GB/s | % HBM | rel. error | result |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        hbm = (100 * row["gbps"] / hbm_gbps
               if row["gbps"] is not None and row["m"] <= 128 else None)
        print(f"| {row['m']} | {row['n']} | {row['k']} | "
              f"{cell(row['us'], '%.1f')} | {cell(row['tflops'], '%.1f')} | "
              f"{cell(row['gbps'], '%.0f')} | {cell(hbm, '%.0f')} | "
              f"{cell(row['rel_error'], '%.2e')} | {row['status']} |")


def run_each_in_own_process(args):
    """This script once per shape, its rows merged into one table and JSON."""
    merged = None
    status = 0
    seed = args.seed if args.seed is not None else random.getrandbits(63)
    with tempfile.TemporaryDirectory() as scratch:
        for index, (m, n, k) in enumerate(args.shapes):
            part = os.path.join(scratch, f"{index}.json")
            command = [sys.executable, os.path.abspath(__file__),
                       "--shapes", f"{m}x{n}x{k}", "--runs", str(args.runs),
                       "--warmup", str(args.warmup), "--seed", str(seed),
                       "--json", part]
            if args.back_to_back:
                command.append("--back-to-back")
            result = subprocess.run(command, capture_output=True, text=True)
            # The child's per-shape line (its table comes once, merged).
            for line in result.stdout.splitlines():
                if line.startswith(f"{m}x{n}x{k} "):
                    print(line, flush=True)
            if result.returncode != 0:
                status = 1
                sys.stdout.write(result.stdout[-2000:] + result.stderr[-2000:])
            if not os.path.exists(part):
                continue
            with open(part) as file:
                data = json.load(file)
            if merged is None:
                merged = dict(data, rows=[])
            merged["rows"] += data["rows"]
    if merged is None:
        print("gemm_cublas: no shape produced a result")
        return 1
    merged["process_per_shape"] = True
    print_table(f"cuBLAS (torch._scaled_mm, 1x128 x 128x128 FP32 scales) on "
                f"{merged['device']}, HBM copy {merged['hbm_gbps']:.0f} GB/s, "
                "one process per shape", merged["rows"], merged["hbm_gbps"])
    if args.json:
        with open(args.json, "w") as file:
            json.dump(merged, file, indent=2)
    return status


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shapes, default=default_shapes())
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--back-to-back", action="store_true",
                        help="time batches of --runs launches with no events "
                        "between them (as kiln-gemm-check --back-to-back)")
    parser.add_argument("--process-per-shape", action="store_true",
                        help="run each shape in a process of its own")
    args = parser.parse_args()
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    if args.process_per_shape:
        return run_each_in_own_process(args)

    properties = torch.cuda.get_device_properties(0)
    seed = args.seed if args.seed is not None else torch.seed() % (1 << 63)
    generator = torch.Generator(device="cuda").manual_seed(seed)
    # torch.cuda._sleep counts SM clock cycles; 2 GHz overestimates Hopper's
    # boost clock slightly, which only lengthens the wait.
    clock_hz = 2.0e9
    hbm_gbps = measure_hbm_bandwidth()
    print(f"gemm_cublas: {properties.name}, {properties.multi_processor_count}"
          f" SMs, {properties.L2_cache_size >> 20} MiB L2, torch "
          f"{torch.__version__}, CUDA {torch.version.cuda}")
    print(f"HBM copy bandwidth: {hbm_gbps:.0f} GB/s (device-to-device, read "
          f"+ write, median of 10)")
    print(f"seed {seed} (--seed to repeat)", flush=True)

    rows = []
    for shape in args.shapes:
        row = run_shape(shape, args, generator, properties.L2_cache_size,
                        clock_hz)
        rows.append(row)
        print(f"{'x'.join(map(str, shape)):<14} {row['status']:<5} rel. error "
              f"{cell(row['rel_error'], '%.2e')}, {cell(row['us'], '%.1f')} us "
              f"(min {cell(row['min_us'], '%.1f')}, max "
              f"{cell(row['max_us'], '%.1f')}, {row['sets']} sets)"
              + (f"\n    {row['detail']}" if row["detail"] else ""),
              flush=True)
        torch.cuda.empty_cache()

    print_table(f"cuBLAS (torch._scaled_mm, 1x128 x 128x128 FP32 scales) on "
                f"{properties.name}, HBM copy {hbm_gbps:.0f} GB/s", rows,
                hbm_gbps)
    for row in rows:
        if row["m"] <= 128 and row["gbps"] is not None:
            row["hbm_fraction"] = row["gbps"] / hbm_gbps
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"tool": "gemm_cublas", "label": "cuBLAS",
                       "device": properties.name,
                       "date": datetime.datetime.now(datetime.timezone.utc)
                       .strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "torch": torch.__version__, "hbm_gbps": hbm_gbps,
                       "seed": seed, "runs": args.runs,
                       "tolerance": TOLERANCE, "rows": rows}, file, indent=2)
    wrong = [row for row in rows if row["status"] in ("WRONG", "ERROR")]
    supported = [row for row in rows if row["status"] != "unsupported"]
    print(f"\ncuBLAS: {len(supported) - len(wrong)} of {len(supported)} "
          f"supported shapes right, {len(rows) - len(supported)} unsupported")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
