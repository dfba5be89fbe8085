#!/usr/bin/env python3
"""Kiln's GEMM kernels and cuBLAS, launch by launch in one process.

The paired table (scripts/device/gemm-ab.py --plan) times each side in a
process of its own, in turn. At M = 4096 a 50-launch median is then the SM
clock level the power controller held during that process's ~30 ms, and
the level steps within and between runs (kiln-gemm-check --launch-times;
bench/results/steady-state-power.md). Here each plan shape's Kiln kernel
(through build/lib/libkiln_gemm_shim.so, bench/kiln_gemm_shim.cpp) and
cuBLAS (torch._scaled_mm with DeepSeek-V3's block scales, as
bench/gemm_cublas.py) alternate launch by launch on one stream, so that
both sides run under the same clock levels; which side goes first in a
pair alternates too. Each launch reads the next operand set in one
rotation shared by both sides (enough sets for 4x the L2), so no launch
finds its inputs in L2 from the other side's launch.

The table gives each pass's medians, the ratio of the medians over the
passes (as the paired table) and the median of the per-pair ratios (launch
r of cuBLAS over launch r of Kiln, which ran next to each other).

Before timing, each shape is checked: both sides' outputs of the first set,
poisoned with NaN before the launch, against the FP64 product of the
dequantized operands (relative error <= 5e-3).

Usage: python3 bench/gemm_interleaved.py --plan PLAN --kernel-dir DIR
       [--shapes MxNxK,...] [--passes 3] [--runs 50] [--warmup 10]
       [--seed 7] [--shim build/lib/libkiln_gemm_shim.so] [--json PATH]
Exit status: 0 every shape right on both sides, 1 otherwise.
"""

import argparse
import ctypes
import importlib.util
import itertools
import json
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gemm_cublas  # noqa: E402  (OperandSet, the check, the tolerance)


def _plan_reader():
    """scripts/device/gemm-ab.py's read_plan: [(shape, cubin)] of a plan's
    plain GEMM lines."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "scripts", "device", "gemm-ab.py")
    spec = importlib.util.spec_from_file_location("gemm_ab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_plan


read_plan = _plan_reader()


class KilnKernel:
    """One Kiln GEMM cubin, launched through the C shim."""

    def __init__(self, shim, cubin):
        self.shim = shim
        self.handle = ctypes.c_void_p()
        manifest = cubin.removesuffix(".cubin") + ".json"
        self._check(shim.kiln_shim_open(cubin.encode(), manifest.encode(),
                                        ctypes.byref(self.handle)), cubin)
        self.name = os.path.basename(cubin).removesuffix(".cubin")

    def _check(self, status, what):
        if status != 0:
            raise RuntimeError(f"{what}: {self.shim.kiln_shim_error().decode()}")

    def prepare(self, operands, out):
        m, k = operands.a.shape
        n = operands.b.shape[0]
        index = ctypes.c_int()
        self._check(self.shim.kiln_shim_prepare(
            self.handle, operands.a.data_ptr(), operands.b.data_ptr(),
            operands.scale_a_km.data_ptr(), operands.scale_b_nk.data_ptr(),
            out.data_ptr(), m, n, k, ctypes.byref(index)),
            f"{self.name} {m}x{n}x{k}")
        return index.value

    def launch(self, index, stream):
        self._check(self.shim.kiln_shim_launch(self.handle, index, stream),
                    self.name)

    def operand_set(self, m, n, k, generator):
        """A gemm_cublas.OperandSet with Kiln's own output (`kiln_out`) and
        its prepared launch (`kiln_index`) on the same inputs."""
        operands = gemm_cublas.OperandSet(m, n, k, generator)
        operands.kiln_out = torch.empty_like(operands.out)
        operands.kiln_index = self.prepare(operands, operands.kiln_out)
        return operands

    def close(self):
        self.shim.kiln_shim_close(self.handle)


def load_shim(path):
    shim = ctypes.CDLL(path)
    shim.kiln_shim_error.restype = ctypes.c_char_p
    shim.kiln_shim_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p,
                                    ctypes.POINTER(ctypes.c_void_p)]
    shim.kiln_shim_prepare.argtypes = [ctypes.c_void_p] + [ctypes.c_uint64] * 5 \
        + [ctypes.c_int] * 3 + [ctypes.POINTER(ctypes.c_int)]
    shim.kiln_shim_launch.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                      ctypes.c_uint64]
    shim.kiln_shim_close.argtypes = [ctypes.c_void_p]
    return shim


def check(first, kiln):
    """Both sides' outputs of the first set, poisoned first: [problems]."""
    first.out.fill_(float("nan"))
    first.kiln_out.fill_(float("nan"))
    kiln.launch(first.kiln_index, torch.cuda.current_stream().cuda_stream)
    first.run()
    torch.cuda.synchronize()
    reference = first.reference()
    problems = []
    for side, out in (("Kiln", first.kiln_out), ("cuBLAS", first.out)):
        rel, bad = gemm_cublas.relative_error(out, reference)
        if bad or not rel <= gemm_cublas.TOLERANCE:
            problems.append(f"{side}: relative error {rel:.3g}, {bad} NaN/Inf")
    return problems


def time_interleaved(sets, kiln, runs, warmup, clock_hz):
    """Per-launch µs of each side, launches alternating between them."""
    rotation = itertools.count()
    stream = torch.cuda.current_stream().cuda_stream

    def launch(side):
        s = sets[next(rotation) % len(sets)]
        if side == "kiln":
            kiln.launch(s.kiln_index, stream)
        else:
            s.run()

    for _ in range(warmup):
        launch("kiln")
        launch("cublas")
    events = {side: [(torch.cuda.Event(enable_timing=True),
                      torch.cuda.Event(enable_timing=True))
                     for _ in range(runs)] for side in ("kiln", "cublas")}
    torch.cuda.synchronize()
    # The GPU spins while Python enqueues every timed launch (tens of µs
    # each), so the launches run back to back.
    torch.cuda._sleep(int(clock_hz * (0.005 + 200e-6 * runs)))
    for r in range(runs):
        for side in (("kiln", "cublas") if r % 2 == 0 else ("cublas", "kiln")):
            start, stop = events[side][r]
            start.record()
            launch(side)
            stop.record()
    torch.cuda.synchronize()
    return {side: [start.elapsed_time(stop) * 1e3 for start, stop in pairs]
            for side, pairs in events.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", required=True)
    dev = os.environ.get("KILN_DEVICE_DIR", ".device")
    parser.add_argument("--kernel-dir", default=f"{dev}/kernels")
    parser.add_argument("--shapes")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shim", default="build/lib/libkiln_gemm_shim.so")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.passes < 1 or args.runs < 1:
        parser.error("--passes and --runs must be positive")

    pairs = read_plan(args.plan, args.kernel_dir,
                      args.shapes.split(",") if args.shapes else None)
    shim = load_shim(args.shim)
    # A first allocation makes the runtime's primary context current on this
    # thread, where the shim loads the kernels.
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    props = torch.cuda.get_device_properties(0)
    # torch.cuda._sleep counts SM cycles; 2 GHz is above Hopper's boost
    # clock, which only lengthens the spin (as bench/gemm_cublas.py).
    clock_hz = 2.0e9
    l2_bytes = props.L2_cache_size
    generator = torch.Generator(device="cuda")
    print(f"gemm_interleaved: {props.name}; {args.passes} passes of "
          f"{args.runs} launches per side, alternating\n", flush=True)

    kernels = {}
    times = {}
    pair_ratios = {}
    problems = {}
    for p in range(args.passes):
        for shape, cubin in pairs:
            m, n, k = (int(x) for x in shape.split("x"))
            if cubin not in kernels:
                kernels[cubin] = KilnKernel(shim, cubin)
            kiln = kernels[cubin]
            generator.manual_seed(args.seed + 1000 * p)
            first = kiln.operand_set(m, n, k, generator)
            if p == 0:
                problems[shape] = check(first, kiln)
            set_bytes = first.bytes() + first.kiln_out.numel() * 2
            wanted = gemm_cublas.sets_wanted(l2_bytes, set_bytes)
            sets = [first]
            while len(sets) < wanted:
                sets.append(kiln.operand_set(m, n, k, generator))
            us = time_interleaved(sets, kiln, args.runs, args.warmup, clock_hz)
            for side, values in us.items():
                times.setdefault((side, shape), []).append(
                    statistics.median(values))
            # Launch r of each side ran next to the other's: their ratio
            # saw one clock level.
            pair_ratios.setdefault(shape, []).extend(
                c / k for c, k in zip(us["cublas"], us["kiln"]))
            print(f"pass {p} {shape} {kiln.name}: Kiln "
                  f"{statistics.median(us['kiln']):.1f} µs, cuBLAS "
                  f"{statistics.median(us['cublas']):.1f} µs", flush=True)
            del sets, first
            torch.cuda.empty_cache()

    print("\nµs: each pass's median; cuBLAS / Kiln: the ratio of the medians "
          "over the passes, and the median over all passes of the ratio of "
          "the two launches of a pair\n")
    print("| M | N | K | kernel | Kiln µs | cuBLAS µs | Kiln TFLOP/s | "
          "cuBLAS / Kiln | per pair | result |")
    print("| ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | --- |")
    rows = []
    for shape, cubin in pairs:
        m, n, k = (int(x) for x in shape.split("x"))
        mine, peer = times[("kiln", shape)], times[("cublas", shape)]
        ratio = statistics.median(peer) / statistics.median(mine)
        pair = statistics.median(pair_ratios[shape])
        result = "; ".join(problems[shape]) or "ok"
        rows.append({"m": m, "n": n, "k": k, "kernel": kernels[cubin].name,
                     "kiln_us": mine, "cublas_us": peer, "ratio": ratio,
                     "pair_ratio": pair, "result": result})
        print(f"| {m} | {n} | {k} | {kernels[cubin].name} | "
              f"{' / '.join(f'{t:.1f}' for t in mine)} | "
              f"{' / '.join(f'{t:.1f}' for t in peer)} | "
              f"{2.0 * m * n * k / statistics.median(mine) / 1e6:.0f} | "
              f"{ratio:.3f} | {pair:.3f} | {result} |")
    for key, what in (("ratio", "of medians"), ("pair_ratio", "per pair")):
        ratios = [r[key] for r in rows]
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"interleaved geomean cuBLAS / Kiln ({what}) {geomean:.3f} over "
              f"{len(ratios)} shapes; minimum {min(ratios):.3f}; "
              f"{sum(r >= 1.0 for r in ratios)} of {len(ratios)} at or above "
              "1.0")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"tool": "bench/gemm_interleaved.py", "device": props.name,
                       "passes": args.passes, "runs": args.runs,
                       "seed": args.seed, "rows": rows}, file, indent=1)
    for kernel in kernels.values():
        kernel.close()
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
