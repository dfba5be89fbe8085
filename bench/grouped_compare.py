#!/usr/bin/env python3
"""Merges kiln-gemm-check's grouped results with bench/grouped_cublas.py's.

One markdown row per problem: the Kiln kernel, its time and TFLOP/s, the
cuBLAS loop's time, the ratio (cuBLAS loop time / Kiln time: above 1, Kiln is
faster), and for problems with at most 16 rows per group the weight bandwidth
(bytes of the weights of the groups with rows, over the time) against the
H100's 3.35 TB/s.

Usage: grouped_compare.py --cublas CUBLAS.json KILN.json...
"""
import argparse
import json
import math
import os

HBM_GBPS = 3350.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cublas")
    parser.add_argument("kiln", nargs="*")
    args = parser.parse_args()
    peer = {}
    if args.cublas and os.path.exists(args.cublas):
        for row in json.load(open(args.cublas))["rows"]:
            peer[(row["layout"], row["groups"], row["rows"], row["n"], row["k"],
                  row["distribution"])] = row
    print("| problem | rows/group | kernel | Kiln µs | TFLOP/s | cuBLAS loop µs | "
          "TFLOP/s | cuBLAS / Kiln | weight GB/s (% of 3.35 TB/s) | result |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    ratios = []
    for path in args.kiln:
        result = json.load(open(path))
        kernel = result["manifest"]["kernel"]
        layout = result["manifest"].get("grouped", "?")
        for row in result["rows"]:
            key = (layout, row["groups"], row["rows"], row["n"], row["k"], row["distribution"])
            other = peer.get(key, {})
            us, them = row.get("us"), other.get("us")
            ratio = them / us if us and them else None
            if ratio:
                ratios.append(ratio)
            per_group = row["routed_rows"] / max(1, row["active_groups"])
            weight = (f"{row['weight_gbps']:.0f} ({100 * row['weight_gbps'] / HBM_GBPS:.0f}%)"
                      if per_group <= 16 and row.get("weight_gbps") else "-")
            note = row["status"]
            if other.get("detail"):
                note += "; cuBLAS: " + other["detail"]
            fmt = lambda v, p: "-" if v is None else p % v
            print(f"| {layout} {row['groups']}x{row['n']}x{row['k']} {row['distribution']}"
                  f" ({row['routed_rows']} rows) | {per_group:.0f} | {kernel} | "
                  f"{fmt(us, '%.1f')} | {fmt(row.get('tflops'), '%.0f')} | {fmt(them, '%.1f')} | "
                  f"{fmt(other.get('tflops'), '%.0f')} | {fmt(ratio, '%.2f')} | {weight} | {note} |")
    if ratios:
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\ncuBLAS loop / Kiln: geomean {geomean:.2f}, min {min(ratios):.2f}, "
              f"max {max(ratios):.2f} over {len(ratios)} problems; "
              f"{sum(r >= 1.2 for r in ratios)} at or above the 1.2 target")


if __name__ == "__main__":
    main()
