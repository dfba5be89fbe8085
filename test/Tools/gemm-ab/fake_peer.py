"""Stands in for bench/gemm_cublas.py in gemm-ab.py's test: 120 us on every
shape, "unsupported" below 16 rows (as cuBLAS), the call logged to
$FAKE_LOG."""
import os
import sys

args = sys.argv[1:]
shape = args[args.index("--shapes") + 1]
with open(os.environ["FAKE_LOG"], "a") as log:
    # With FAKE_LOG_RUNS the launch count too (the steady mode's test).
    runs = f" runs {args[args.index('--runs') + 1]}" if os.environ.get("FAKE_LOG_RUNS") else ""
    log.write(f"peer {shape}{runs}\n")
m, n, k = shape.split("x")
if int(m) < 16:
    print(f"| {m} | {n} | {k} | - | unsupported | - | - | - | unsupported |")
else:
    print(f"| {m} | {n} | {k} | 120.0 | 1.0 | 1 | - | 1.66e-03 | ok |")
