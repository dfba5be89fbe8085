#!/usr/bin/env python3
"""Merges kiln-gemm-check and gemm_cublas.py results into one table.

Usage: python3 bench/compare.py --cublas cublas.json KILN.json [KILN.json ...]

For each shape: cuBLAS's time and TFLOP/s, then each Kiln kernel's, and its
speed-up over cuBLAS (cuBLAS time / Kiln time: above 1 means Kiln is faster).
The last rows give the geometric mean of the speed-ups over the shapes both
ran correctly, overall and for decode (M <= 128) and prefill (M > 128)
shapes. A shape that is wrong, failed or unsupported on either side shows its
status and stays out of the means. A second table gives, for M <= 128 (where
the weights are the traffic), the weight bandwidth each side reached: the
bytes of B and its block scales over the time, and their fraction of
--hbm-gbps (default 3350, H100 SXM's HBM3).
"""

import argparse
import json
import math
import sys


def load(path):
    with open(path) as file:
        results = json.load(file)
    rows = {(r["m"], r["n"], r["k"]): r for r in results["rows"]}
    return results, rows


def good(row):
    return row is not None and row["status"] == "ok" and row["us"]


def geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cublas", required=True,
                        help="JSON written by bench/gemm_cublas.py --json")
    parser.add_argument("kiln", nargs="+",
                        help="JSON written by kiln-gemm-check --json")
    parser.add_argument("--hbm-gbps", type=float, default=3350.0,
                        help="HBM bandwidth the weight bandwidth is a "
                        "fraction of (GB/s)")
    args = parser.parse_args()

    cublas, cublas_rows = load(args.cublas)
    kernels = [load(path) for path in args.kiln]
    # The shapes Kiln ran, in cuBLAS's order where it has them.
    kiln_shapes = [shape for _, rows in kernels for shape in rows]
    shapes = [shape for shape in cublas_rows if shape in kiln_shapes]
    shapes += [shape for shape in kiln_shapes if shape not in shapes]

    header = ["M", "N", "K", "cuBLAS µs", "cuBLAS TFLOP/s"]
    for results, _ in kernels:
        label = results["label"]
        header += [f"{label} µs", f"{label} TFLOP/s", f"{label} / cuBLAS"]
    devices = {cublas["device"]} | {results["device"] for results, _ in kernels}
    dates = sorted({cublas["date"][:10]}
                   | {results["date"][:10] for results, _ in kernels})
    print(f"\nFP8 block-scaled GEMM on {', '.join(sorted(devices))} "
          f"({', '.join(dates)}); speed-up = cuBLAS time / Kiln time")
    if len(devices) > 1:
        print("WARNING: the results come from different GPUs; the ratios "
              "compare nothing")
    print()
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join(["---:"] * len(header)) + " |")

    speedups = [{"all": [], "decode": [], "prefill": []} for _ in kernels]
    for shape in shapes:
        base = cublas_rows.get(shape)
        cells = [str(v) for v in shape]
        cells += ([fmt(base["us"], "%.1f"), fmt(base["tflops"], "%.0f")]
                  if good(base) else
                  ["-", base["status"] if base else "not run"])
        for index, (_, rows) in enumerate(kernels):
            row = rows.get(shape)
            if not good(row):
                cells += ["-", row["status"] if row else "not run", "-"]
                continue
            ratio = base["us"] / row["us"] if good(base) else None
            cells += [fmt(row["us"], "%.1f"), fmt(row["tflops"], "%.0f"),
                      fmt(ratio, "%.2f")]
            if ratio is not None:
                speedups[index]["all"].append(ratio)
                kind = "decode" if shape[0] <= 128 else "prefill"
                speedups[index][kind].append(ratio)
        print("| " + " | ".join(cells) + " |")

    for kind, title in [("all", "geometric mean"),
                        ("decode", "geomean, M <= 128"),
                        ("prefill", "geomean, M > 128")]:
        cells = [f"**{title}**", "", "", "", ""]
        for index in range(len(kernels)):
            values = speedups[index][kind]
            cells += ["", f"({len(values)} shapes)",
                      f"**{fmt(geomean(values), '%.2f')}**"]
        print("| " + " | ".join(cells) + " |")

    print_weight_bandwidth(shapes, cublas_rows, kernels, args.hbm_gbps)

    failures = 0
    for (results, rows), ratios in zip(kernels, speedups):
        wrong = [s for s, r in rows.items() if r["status"] != "ok"]
        failures += len(wrong)
        print(f"\n{results['label']}: geometric-mean speed-up over cuBLAS "
              f"{fmt(geomean(ratios['all']), '%.2f')} on "
              f"{len(ratios['all'])} shapes"
              + (f"; NOT RIGHT on {len(wrong)}: "
                 + ", ".join("x".join(map(str, s)) for s in wrong)
                 if wrong else ""))
    return 1 if failures else 0


def weight_bytes(n, k):
    """B (E4M3, N x K) and its FP32 128x128 block scales."""
    return n * k + 4 * math.ceil(n / 128) * math.ceil(k / 128)


def print_weight_bandwidth(shapes, cublas_rows, kernels, hbm_gbps):
    small = [shape for shape in shapes if shape[0] <= 128]
    if not small:
        return
    header = ["M", "N", "K", "weight MB", "cuBLAS GB/s"]
    for results, _ in kernels:
        header += [f"{results['label']} GB/s", f"of {hbm_gbps:.0f} GB/s"]
    print(f"\nWeight bandwidth at M <= 128 (weight bytes / time)\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join(["---:"] * len(header)) + " |")
    for shape in small:
        m, n, k = shape
        megabytes = weight_bytes(n, k) / 1e6
        base = cublas_rows.get(shape)
        cells = [str(m), str(n), str(k), "%.1f" % megabytes,
                 fmt(megabytes * 1e6 / (base["us"] * 1e3), "%.0f")
                 if good(base) else "-"]
        for _, rows in kernels:
            row = rows.get(shape)
            if not good(row):
                cells += ["-", "-"]
                continue
            gbps = megabytes * 1e6 / (row["us"] * 1e3)
            cells += ["%.0f" % gbps, "%.0f%%" % (100 * gbps / hbm_gbps)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
