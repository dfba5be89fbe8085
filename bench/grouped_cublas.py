#!/usr/bin/env python3
"""The peer of Kiln's grouped GEMM: a loop of cuBLAS calls, one per group.

For each case, the operands in the layouts of Kiln's grouped kernels
(compiler/docs/gemm-abi.md "Grouped kernels"): the experts' weights stacked
as [G*N, K] E4M3 with scales [G*ceil(N/128)][K/128]; contiguous A [R, K]
with row offsets and grouped scales (group g's [K/128][count] at
K/128 * offsets[g]); masked A [G, maxRows, K] with scales
[G][K/128][maxRows]. The peer runs torch._scaled_mm (cuBLAS, 1x128 x 128x128
FP32 block scales, as bench/gemm_cublas.py) once per group with rows, on
views of those buffers (per-group scale views are made contiguous once,
outside the timing). cuBLAS refuses block-scaled GEMMs whose M is not a
multiple of 16 (M = 1 and 7 in bench/results/cublas-h100.json), so such a
group is run with its rows rounded up to 16 (reading the next rows of A),
and the row says "padded": the least a cuBLAS-based server would have to do.

Timing as gemm_cublas.py: the median over --runs of the whole loop between
two CUDA events, the launches enqueued while the GPU spins (so host launch
cost is not counted: the loop is timed as GPU work only, which flatters the
loop at decode), rotating among enough input sets that one pass is 4x the
L2. The first group of each case is checked against the FP64 product.

Cases: LAYOUT:G:R:NxK:DIST as kiln-gemm-check's --cases with the layout in
front: contiguous (R routed rows, DIST balanced or skewed) or masked (R rows
per group, DIST full). Group sizes follow kiln-gemm-check's formulas, so the
two tools time the same problem.

Usage: python3 bench/grouped_cublas.py --cases LIST [--runs 50] [--json PATH]
"""

import argparse
import datetime
import json
import math
import sys

import torch

from gemm_cublas import (SCALE_BASE_A, SCALE_BASE_B, TOLERANCE,
                         measure_hbm_bandwidth, random_e4m3, random_scales,
                         time_shape)


def group_counts(layout, groups, rows, dist):
    """kiln-gemm-check's drawGroups() for the deterministic distributions."""
    if layout == "masked":
        if dist != "full":
            raise SystemExit(f"masked cases take DIST full, got {dist}")
        return [rows] * groups
    weights = ([1.0 / (g + 1) for g in range(groups)] if dist == "skewed"
               else [1.0] * groups)
    if dist not in ("balanced", "skewed"):
        raise SystemExit(f"contiguous cases take DIST balanced or skewed, got {dist}")
    total = sum(weights)
    counts = [int(rows * w / total) for w in weights]
    counts[0] += rows - sum(counts)
    return counts


def parse_case(text):
    layout, g, r, nk, dist = text.split(":")
    n, k = (int(v) for v in nk.split("x"))
    return {"text": text, "layout": layout, "groups": int(g), "rows": int(r),
            "n": n, "k": k, "dist": dist}


class Problem:
    """One input set and the per-group calls of the cuBLAS loop."""

    def __init__(self, case, counts, generator):
        g, n, k = case["groups"], case["n"], case["k"]
        kb, nb = k // 128, (n + 127) // 128
        masked = case["layout"] == "masked"
        rows = case["rows"]
        total_rows = g * rows if masked else rows
        # 16 spare rows so that a group padded to a multiple of 16 stays
        # inside A.
        self.a = random_e4m3(total_rows + 16, k, generator)
        self.b = random_e4m3(g * n, k, generator)
        self.scale_a = random_scales(1, kb * (total_rows + 16), SCALE_BASE_A,
                                     generator)[0]
        self.scale_b = random_scales(g * nb, kb, SCALE_BASE_B, generator)
        self.calls = []
        self.padded = 0
        offset = 0
        for group, count in enumerate(counts):
            first = group * rows if masked else offset
            offset += count
            if count == 0:
                continue
            m = count if count % 16 == 0 else (count + 15) // 16 * 16
            self.padded += m != count
            a = self.a[first:first + m]
            if masked:
                # Slab g: [K/128][maxRows]; the group's first m columns.
                sa = self.scale_a[kb * first:kb * (first + rows)].view(kb, rows)[:, :m]
                if m > rows:
                    sa = self.scale_a[kb * first:kb * first + kb * m].view(kb, m)
            else:
                sa = self.scale_a[kb * first:kb * (first + m)].view(kb, m)
            scale_a = sa.contiguous().t()                 # (m, K/128), M-major
            mat2 = self.b[group * n:(group + 1) * n].t()  # K x N, column-major
            scale_b = self.scale_b[group * nb:(group + 1) * nb].t()
            # Each call's own output in each set (gemm_cublas.OperandSet says
            # why: the caching allocator would hand every launch the same).
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            self.calls.append((a, mat2, scale_a, scale_b, count, out))

    def bytes(self):
        return sum(t.numel() * t.element_size()
                   for t in (self.a, self.b, self.scale_a, self.scale_b,
                             *(call[5] for call in self.calls)))

    def run(self):
        return [torch._scaled_mm(a, mat2, scale_a=sa, scale_b=sb,
                                 out_dtype=torch.bfloat16, use_fast_accum=False,
                                 out=out)
                for a, mat2, sa, sb, _, out in self.calls]

    def check_first(self):
        """Relative error of the first call against FP64."""
        a, mat2, sa, sb, count, out = self.calls[0]
        out.fill_(float("nan"))  # poison: an unwritten element fails
        torch._scaled_mm(a, mat2, scale_a=sa, scale_b=sb,
                         out_dtype=torch.bfloat16, use_fast_accum=False, out=out)
        n = mat2.shape[1]
        deq_a = a.double() * sa.double().repeat_interleave(128, dim=1)
        scale_b = sb.t().double().repeat_interleave(128, dim=0)[:n]
        deq_b = mat2.t().double() * scale_b.repeat_interleave(128, dim=1)
        reference = (deq_a @ deq_b.t())[:count]
        value = out.double()[:count]
        error = torch.linalg.vector_norm(torch.nan_to_num(value) - reference)
        return (error / torch.linalg.vector_norm(reference)).item()


def run_case(case, args, generator, l2_bytes, clock_hz):
    counts = group_counts(case["layout"], case["groups"], case["rows"], case["dist"])
    n, k = case["n"], case["k"]
    routed = sum(counts)
    active = sum(1 for c in counts if c)
    kb = k / 128
    weight_bytes = active * (n * k + 4 * math.ceil(n / 128) * kb)
    row = dict(case=case["text"], layout=case["layout"], groups=case["groups"],
               rows=case["rows"], n=n, k=k, distribution=case["dist"],
               routed_rows=routed, active_groups=active, us=None, min_us=None,
               max_us=None, tflops=None, weight_gbps=None, rel_error=None,
               calls=active, padded_calls=0, sets=0, status="ERROR", detail="")
    try:
        first = Problem(case, counts, generator)
        first.run()
        torch.cuda.synchronize()
    except (RuntimeError, ValueError) as error:
        row["status"] = "unsupported"
        row["detail"] = str(error).splitlines()[0]
        return row
    row["padded_calls"] = first.padded
    rel = first.check_first()
    row["rel_error"] = rel
    sets = [first]
    wanted = max(2, min(64, math.ceil(4 * l2_bytes / first.bytes())))
    while len(sets) < wanted:
        sets.append(Problem(case, counts, generator))
    row["sets"] = len(sets)
    # Python enqueues a call in ~20-40 us: spin long enough for all of them.
    median, low, high = time_shape(sets, args.runs, args.warmup, clock_hz,
                                   spin_s=0.01 + 60e-6 * args.runs * active)
    row.update(us=median, min_us=low, max_us=high,
               tflops=2.0 * routed * n * k / (median * 1e6),
               weight_gbps=weight_bytes / (median * 1e3))
    problems = []
    if not rel <= TOLERANCE:
        problems.append(f"relative error {rel:.3g} > {TOLERANCE:.0e}")
    if first.padded:
        problems.append(f"padded: {first.padded} of {active} calls with M "
                        f"rounded up to a multiple of 16")
    row["status"] = "WRONG" if not rel <= TOLERANCE else "ok"
    row["detail"] = "; ".join(problems)
    del sets, first
    torch.cuda.empty_cache()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", required=True)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    properties = torch.cuda.get_device_properties(0)
    seed = args.seed if args.seed is not None else torch.seed() % (1 << 63)
    generator = torch.Generator(device="cuda").manual_seed(seed)
    hbm_gbps = measure_hbm_bandwidth()
    print(f"grouped_cublas: {properties.name}, torch {torch.__version__}, "
          f"HBM copy {hbm_gbps:.0f} GB/s, seed {seed}", flush=True)
    rows = []
    for text in args.cases.split(","):
        row = run_case(parse_case(text), args, generator,
                       properties.L2_cache_size, 2.0e9)
        rows.append(row)
        us = "-" if row["us"] is None else f"{row['us']:.1f}"
        print(f"{text:<34} {row['status']:<5} {us} us, {row['calls']} calls"
              + (f"  ({row['detail']})" if row["detail"] else ""), flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"tool": "grouped_cublas", "label": "cuBLAS loop",
                       "device": properties.name,
                       "date": datetime.datetime.now(datetime.timezone.utc)
                       .strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "torch": torch.__version__, "hbm_gbps": hbm_gbps,
                       "seed": seed, "runs": args.runs, "rows": rows}, file, indent=2)
    return 1 if any(r["status"] in ("WRONG", "ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
