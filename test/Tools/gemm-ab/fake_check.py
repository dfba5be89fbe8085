"""Stands in for kiln-gemm-check in gemm-ab.py's test: prints the result row
of one shape, with a time given by the cubin's name (fast: 100 us, slow:
150 us, wrong: a wrong result), and logs the call to $FAKE_LOG."""
import os
import sys

args = sys.argv[1:]
shape = args[args.index("--shapes") + 1]
cubin = args[-1]
name = os.path.basename(cubin).removesuffix(".cubin")
with open(os.environ["FAKE_LOG"], "a") as log:
    # With FAKE_LOG_RUNS the launch count too (the steady mode's test).
    runs = f" runs {args[args.index('--runs') + 1]}" if os.environ.get("FAKE_LOG_RUNS") else ""
    log.write(f"kiln {name} {shape}{runs}\n")
m, n, k = shape.split("x")
us = {"fast": "100.0", "slow": "150.0", "wrong": "100.0"}[name]
status = "WRONG" if name == "wrong" else "ok"
print(f"| {m} | {n} | {k} | {us} | 1.0 | 1 | - | 1.66e-03 | {status} |")
print(f"out hash {shape} {'0123456789abcdef' if name != 'wrong' else 'ffffffffffffffff'}")
sys.exit(1 if status != "ok" else 0)
