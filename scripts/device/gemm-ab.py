#!/usr/bin/env python3
"""A/B timing of GEMM kernels on the GPU machine (device tool).

Times every kernel on every shape, each (kernel, shape) in its own
kiln-gemm-check process (each gets the harness's warm-up), in PASSES passes
that alternate the kernel order, with one --seed for all, and prints a table
of median µs per pass, the checks' status and the output hash: kernels that
must agree bitwise (a SASS-patched build, a refactor) show equal hashes.

usage: gemm-ab.py --shapes MxNxK,... [--passes 2] [--runs 50] [--seed 7]
                  [--check PATH] KERNEL.cubin [KERNEL.cubin ...]
"""
import argparse
import os
import re
import subprocess
import sys

ROW = re.compile(r"^\| (\d+) \| (\d+) \| (\d+) \| ([0-9.]+|-) \|.*\| (\w+) \|$")
HASH = re.compile(r"^out hash (\S+) ([0-9a-f]{16})$")


def run(check, cubin, shape, runs, seed):
    proc = subprocess.run(
        [check, "--seed", str(seed), "--hash-out", "--runs", str(runs),
         "--shapes", shape, cubin],
        capture_output=True, text=True, timeout=600)
    us, status, digest = None, f"exit {proc.returncode}", "-"
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    dev = os.environ.get("KILN_DEVICE_DIR", ".device")
    parser.add_argument("--check", default=f"{dev}/bin/kiln-gemm-check")
    parser.add_argument("kernels", nargs="+")
    args = parser.parse_args()

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
            text = " / ".join("-" if t is None else f"{t:.1f}" for t in us)
            cells.append(f"{text} {'' if status == 'ok' else status} "
                         f"`{digest[:8]}`")
        print(f"| {shape} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
