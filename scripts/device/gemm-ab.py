#!/usr/bin/env python3
"""A/B timing of GEMM kernels on the GPU machine (device tool).

Times every kernel on every shape, each (kernel, shape) in its own
kiln-gemm-check process (each gets the harness's warm-up), in PASSES passes
that alternate the kernel order, with one --seed for all, and prints a table
of median µs per pass, the checks' status and the output hash: kernels that
must agree bitwise (a SASS-patched build, a refactor) show equal hashes.

The kernel name `cublas` stands for the peer: bench/gemm_cublas.py
(torch._scaled_mm) on the shape in its own process, with the same warm-up,
launch count and seed, in the same alternating order, so that a Kiln/cuBLAS
ratio is taken from runs interleaved in time rather than from two blocks of
runs minutes apart (the GPU's clock under its power cap drifts between
them). With `cublas` among the kernels the table ends with each kernel's
ratio cuBLAS median / kernel median over the passes.

With --plan (scripts/device/gemm-plan.py's or kiln-compile-gemm.py's file
of "KERNEL MxNxK,..." lines) each plan shape is timed with its kernel from
--kernel-dir and with cuBLAS, the pair's order alternating from pass to
pass, and the table gives both medians, their ratio and the geometric mean
of the ratios (scripts/device/gemm.sh's paired table, GEMM_PAIRED_PASSES).

With --steady-ms MS each process of the paired table times enough
launches for about MS milliseconds of GPU work (steady_runs: the same count
for the kernel and the peer, from a roofline estimate of the shape's time)
instead of --runs. 50 launches (~5 ms at M = 4096) take whatever SM clock
level the power controller holds while they run: within a run Kiln's
M = 4096 times sit on flat levels and step between them at moments that
differ from run to run (`kiln-gemm-check --launch-times`; 101.5-109 µs at
4096 x 7168 x 2048, H100, session 21), so such a median moves by up to 10%
between processes. Hundreds of milliseconds measure the steady state under
the 700 W cap, as a serving GPU runs (bench/results/steady-state-power.md).

usage: gemm-ab.py --shapes MxNxK,... [--passes 2] [--runs 50] [--seed 7]
                  [--check PATH] KERNEL.cubin|cublas [...]
       gemm-ab.py --plan PLAN [--kernel-dir DIR] [--shapes MxNxK,...]
                  [--passes 3] [--runs 50 | --steady-ms MS] [--seed 7]
                  [--hbm-gbps 3350] [--json PATH]
       (both: [--peer COMMAND] instead of python3 bench/gemm_cublas.py)
"""
import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys

ROW = re.compile(r"^\| (\d+) \| (\d+) \| (\d+) \| ([0-9.]+|-) \|.*\| (\w+) \|$")
HASH = re.compile(r"^out hash (\S+) ([0-9a-f]{16})$")


PEER = "cublas"


# The peer's command (--peer replaces it; test/Tools/gemm-ab runs fakes).
PEER_COMMAND = [sys.executable, "bench/gemm_cublas.py"]


def run(check, cubin, shape, runs, seed):
    """(median µs, status, output hash) of one kernel, or of the peer, on
    `shape` in a process of its own."""
    args = ["--shapes", shape, "--runs", str(runs), "--seed", str(seed)]
    if cubin == PEER:
        command, digest = PEER_COMMAND + args, "-" * 16  # the peer hashes nothing
    else:
        command, digest = shlex.split(check) + args + ["--hash-out", cubin], "-"
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    us, status = None, f"exit {proc.returncode}"
    for line in proc.stdout.splitlines():
        m = ROW.match(line)
        if m:
            us = None if m.group(4) == "-" else float(m.group(4))
            status = m.group(5)
        m = HASH.match(line)
        if m:
            digest = m.group(2)
    if status != "ok":
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    return us, status, digest


def read_plan(path, kernel_dir, only):
    """[(shape, cubin)] in the plan's order, limited to `only` if given."""
    pairs = []
    with open(path) as file:
        for line in file:
            fields = line.split()
            if len(fields) != 2 or fields[0].startswith("#") or ":" in fields[1]:
                continue  # blank, a comment, or a grouped problem
            for shape in fields[1].split(","):
                if not only or shape in only:
                    pairs.append((shape, os.path.join(kernel_dir, fields[0] + ".cubin")))
    missing = set(only or ()) - {shape for shape, _ in pairs}
    if missing:
        sys.exit(f"gemm-ab.py: {path} has no kernel for {','.join(sorted(missing))}")
    return pairs


def median(us):
    return f"{statistics.median(us):.1f}" if us else "-"


# The HBM bandwidth the weight rates are a fraction of (default H100 SXM's
# 3.35 TB/s, as bench/compare.py; --hbm-gbps 4800 for an H200).
HBM_GBPS = 3350.0

# steady_runs' roofline: dense FP8 at a power-capped clock, HBM as streamed,
# the per-launch cost of an event pair; and its bounds (kiln-gemm-check takes
# at most 100000 runs, and every run costs the host an event pair).
STEADY_TFLOPS = 1100.0
STEADY_GBPS = 2800.0
STEADY_LAUNCH_US = 4.0
STEADY_MAX_RUNS = 20000


def steady_runs(shape, steady_ms, minimum):
    """Launches of a compute-bound `shape` for about `steady_ms` of GPU
    time, at least `minimum`: the same count for both sides of a pair.
    Memory-bound shapes (M <= 128 here) keep `minimum`: they stay below the
    power cap, and thousands of launches of a few µs would be paced by the
    peer's Python loop rather than by the GPU."""
    m, n, k = (int(x) for x in shape.split("x"))
    compute_us = 2.0 * m * n * k / (STEADY_TFLOPS * 1e6)
    memory_us = (m * k + n * k + 2 * m * n) / (STEADY_GBPS * 1e3)
    if compute_us <= memory_us:
        return minimum
    us = compute_us + STEADY_LAUNCH_US
    return max(minimum, min(STEADY_MAX_RUNS, round(steady_ms * 1000.0 / us)))


def tflops(m, n, k, us):
    return f"{2.0 * m * n * k / statistics.median(us) / 1e6:.0f}" if us else "-"


def weight_rate(m, n, k, us):
    """Weight bytes (N x K E4M3) over the median time, for memory-bound M."""
    if not us or m > 128:
        return "-"
    gbps = n * k / statistics.median(us) / 1e3
    return f"{gbps:.0f} ({100 * gbps / HBM_GBPS:.0f}%)"


def fmt(us):
    return " / ".join("-" if t is None else f"{t:.1f}" for t in us)


def ratio_of_medians(peer, mine):
    """cuBLAS median / kernel median over the passes that timed, or None."""
    peer = [t for t in peer if t is not None]
    mine = [t for t in mine if t is not None]
    return statistics.median(peer) / statistics.median(mine) if peer and mine else None


def paired(args):
    """Each plan shape's kernel against cuBLAS, interleaved in time."""
    only = args.shapes.split(",") if args.shapes else None
    pairs = read_plan(args.plan, args.kernel_dir, only)
    times = {}
    status = {}
    runs = {shape: steady_runs(shape, args.steady_ms, args.runs)
            if args.steady_ms else args.runs for shape, _ in pairs}
    for p in range(args.passes):
        for shape, cubin in pairs:
            sides = [cubin, PEER] if p % 2 == 0 else [PEER, cubin]
            for side in sides:
                us, result, _ = run(args.check, side, shape, runs[shape],
                                    args.seed)
                times.setdefault((side, shape), []).append(us)
                # The peer's "unsupported" (M < 16) leaves the ratio out;
                # anything else but "ok" fails the run.
                if result != "ok" and not (side == PEER and result == "unsupported"):
                    status[(side, shape)] = result
                print(f"pass {p} {os.path.basename(side)} {shape}: {us} µs "
                      f"{result}", flush=True)

    rows = []
    launches = (f"~{args.steady_ms:g} ms of launches per process (steady "
                f"state; {min(runs.values())}-{max(runs.values())} launches)"
                if args.steady_ms else f"{args.runs} launches each")
    print(f"\nPaired: each shape's kernel and cuBLAS in turn, {args.passes} "
          f"passes of {launches} (µs per pass; ratio = cuBLAS median / Kiln "
          "median)\n")
    print("| M | N | K | kernel | Kiln µs | cuBLAS µs | Kiln median | "
          "cuBLAS median | Kiln TFLOP/s | cuBLAS TFLOP/s | Kiln weight GB/s "
          "(M ≤ 128) | cuBLAS / Kiln | result |")
    print("| ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: "
          "| ---: | ---: | --- |")
    for shape, cubin in pairs:
        mine = [t for t in times[(cubin, shape)] if t is not None]
        peer = [t for t in times[(PEER, shape)] if t is not None]
        ratio = ratio_of_medians(peer, mine)
        bad = [f"{'cuBLAS' if side == PEER else 'Kiln'}: {r}"
               for (side, s), r in status.items() if s == shape]
        m, n, k = (int(x) for x in shape.split("x"))
        rows.append({"m": m, "n": n, "k": k,
                     "kernel": os.path.basename(cubin).removesuffix(".cubin"),
                     "kiln_us": times[(cubin, shape)],
                     "cublas_us": times[(PEER, shape)], "ratio": ratio,
                     "result": "; ".join(bad) or "ok"})
        print(f"| {m} | {n} | {k} | {rows[-1]['kernel']} | "
              f"{fmt(times[(cubin, shape)])} | {fmt(times[(PEER, shape)])} | "
              f"{median(mine)} | {median(peer)} | "
              f"{tflops(m, n, k, mine)} | {tflops(m, n, k, peer)} | "
              f"{weight_rate(m, n, k, mine)} | "
              f"{'-' if ratio is None else f'{ratio:.3f}'} | {rows[-1]['result']} |")
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    if ratios:
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"\npaired geomean cuBLAS / Kiln {geomean:.3f} over "
              f"{len(ratios)} shapes; minimum {min(ratios):.3f}; "
              f"{sum(r >= 1.0 for r in ratios)} of {len(ratios)} at or above 1.0")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"tool": "gemm-ab.py --plan", "passes": args.passes,
                       "runs": args.runs, "steady_ms": args.steady_ms,
                       "runs_per_shape": runs, "hbm_gbps": HBM_GBPS,
                       "rows": rows}, file, indent=1)
    return 0 if not status else 1


def main():
    global HBM_GBPS
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes")
    parser.add_argument("--plan")
    parser.add_argument("--json")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--steady-ms", type=float, default=None,
                        help="paired table: time ~MS ms of launches per "
                        "process (the steady state under the power cap) "
                        "instead of --runs")
    parser.add_argument("--hbm-gbps", type=float, default=HBM_GBPS,
                        help="the HBM bandwidth weight rates are a fraction "
                        "of (3350: H100 SXM; 4800: H200)")
    dev = os.environ.get("KILN_DEVICE_DIR", ".device")
    parser.add_argument("--check", default=f"{dev}/bin/kiln-gemm-check")
    parser.add_argument("--kernel-dir", default=f"{dev}/kernels")
    parser.add_argument("--peer", help="the command that times the peer "
                        "(default: python3 bench/gemm_cublas.py)")
    parser.add_argument("kernels", nargs="*")
    args = parser.parse_args()
    HBM_GBPS = args.hbm_gbps
    if args.steady_ms is not None and (args.steady_ms <= 0 or not args.plan):
        parser.error("--steady-ms takes a positive time and --plan")
    if args.peer:
        PEER_COMMAND[:] = shlex.split(args.peer)
    if args.plan:
        if args.kernels:
            parser.error("--plan takes its kernels from the plan")
        sys.exit(paired(args))
    if not args.shapes or not args.kernels:
        parser.error("--shapes and at least one kernel, or --plan")

    shapes = args.shapes.split(",")
    times = {}
    results = {}
    for p in range(args.passes):
        order = args.kernels if p % 2 == 0 else args.kernels[::-1]
        for shape in shapes:
            for cubin in order:
                us, status, digest = run(args.check, cubin, shape, args.runs,
                                         args.seed)
                times.setdefault((cubin, shape), []).append(us)
                results[(cubin, shape)] = (status, digest)
                print(f"pass {p} {os.path.basename(cubin)} {shape}: {us} µs "
                      f"{status} {digest}", flush=True)

    names = [os.path.basename(k).removesuffix(".cubin") for k in args.kernels]
    if len(set(names)) < len(names):
        # Variants of one kernel in different folders: name the folder too.
        names = [os.path.join(os.path.basename(os.path.dirname(k)), n)
                 for k, n in zip(args.kernels, names)]
    print("\n| shape | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for shape in shapes:
        cells = []
        for cubin in args.kernels:
            us = times[(cubin, shape)]
            status, digest = results[(cubin, shape)]
            cells.append(f"{fmt(us)} {'' if status == 'ok' else status} "
                         f"`{digest[:8]}`")
        print(f"| {shape} | " + " | ".join(cells) + " |")

    if PEER not in args.kernels:
        return
    print("\ncuBLAS median / kernel median over the passes:\n")
    print("| shape | " + " | ".join(n for n, k in zip(names, args.kernels)
                                     if k != PEER) + " |")
    print("| --- |" + " ---: |" * (len(names) - 1))
    for shape in shapes:
        ratios = [ratio_of_medians(times[(PEER, shape)], times[(cubin, shape)])
                  for cubin in args.kernels if cubin != PEER]
        print(f"| {shape} | " + " | ".join(
            "-" if r is None else f"{r:.3f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()
