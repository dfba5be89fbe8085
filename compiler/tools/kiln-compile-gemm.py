#!/usr/bin/env python3
"""Compiles Kiln's FP8 GEMM kernels to PTX and cubins, ahead of time.

For each configuration (block_m, block_n, stages, consumers) it writes a
kiln.scaled_matmul carrying that #kiln.gemm_config, runs kiln-opt's kernel
pipeline (kiln-emit-gemm-kernels, then SCF/arith/CF/NVVM to LLVM, NVPTX
through gpu-module-to-binary), takes the PTX out of the gpu.binary, assembles
it with ptxas for sm_90a and rejects any kernel that spills. Per kernel it
leaves NAME.ptx, NAME.cubin and NAME.json (the launch manifest of
compiler/docs/gemm-abi.md) in the output directory.

Usage: kiln-compile-gemm.py --kiln-opt PATH --out DIR [--ptxas PATH]
           [--config 128,128,6,2 ...] [--ptx-only]
Without --config it builds the configurations kiln-select-gemm-config picks.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

DEFAULT_CONFIGS = [(64, 64, 8, 1), (128, 128, 6, 2)]
PIPELINE = [
    "--kiln-emit-gemm-kernels",
    "--convert-scf-to-cf",
    "--convert-arith-to-llvm",
    "--convert-index-to-llvm",
    "--convert-cf-to-llvm",
    "--convert-nvvm-to-llvm",
    "--reconcile-unrealized-casts",
    "--nvvm-attach-target=module=kiln_kernels chip=sm_90a features=+ptx80 O=3",
    "--gpu-module-to-binary=format=isa",
]


def matmul_source(config):
    bm, bn, stages, consumers = config
    return (
        "func.func @gemm(%a: tensor<?x128xf8E4M3FN>, %as: tensor<?x1xf32>,"
        " %b: tensor<128x128xf8E4M3FN>, %bs: tensor<1x1xf32>) -> tensor<?x128xbf16> {\n"
        f"  %y = kiln.scaled_matmul %a, %as, %b, %bs {{gemm_config = #kiln.gemm_config<"
        f"block_m = {bm}, block_n = {bn}, stages = {stages}, consumers = {consumers}>}}"
        " : (tensor<?x128xf8E4M3FN>, tensor<?x1xf32>, tensor<128x128xf8E4M3FN>,"
        " tensor<1x1xf32>) -> tensor<?x128xbf16>\n"
        "  return %y : tensor<?x128xbf16>\n}\n")


def unescape_mlir_string(text):
    """MLIR prints non-printable bytes as \\XX and escapes \\ and \"."""
    return re.sub(r'\\([0-9A-Fa-f]{2}|\\|")',
                  lambda m: m.group(1) if m.group(1) in ('\\', '"') else chr(int(m.group(1), 16)),
                  text)


def kernel_ptx(binary_ir):
    match = re.search(r'assembly = "((?:[^"\\]|\\.)*)"', binary_ir, re.S)
    if not match:
        raise SystemExit("kiln-compile-gemm: no PTX in the gpu.binary")
    return unescape_mlir_string(match.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kiln-opt", required=True)
    parser.add_argument("--ptxas", default=shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", action="append", default=[],
                        help="block_m,block_n,stages,consumers")
    parser.add_argument("--ptx-only", action="store_true", help="stop after PTX")
    args = parser.parse_args()
    configs = [tuple(int(v) for v in c.split(",")) for c in args.config] or DEFAULT_CONFIGS
    os.makedirs(args.out, exist_ok=True)
    failures = 0
    for config in configs:
        bm, bn, stages, consumers = config
        name = f"kiln_gemm_fp8_m{bm}n{bn}s{stages}c{consumers}"
        with tempfile.TemporaryDirectory() as scratch:
            source = os.path.join(scratch, "gemm.mlir")
            with open(source, "w") as f:
                f.write(matmul_source(config))
            run = subprocess.run([args.kiln_opt, source, *PIPELINE], capture_output=True, text=True)
            if run.returncode != 0:
                sys.stderr.write(run.stderr)
                raise SystemExit(f"kiln-compile-gemm: kiln-opt failed for {name}")
        ptx_path = os.path.join(args.out, name + ".ptx")
        with open(ptx_path, "w") as f:
            f.write(kernel_ptx(run.stdout))
        if args.ptx_only:
            print(f"{name}: {ptx_path}")
            continue
        cubin = os.path.join(args.out, name + ".cubin")
        asm = subprocess.run([args.ptxas, "-arch=sm_90a", "-v", ptx_path, "-o", cubin],
                             capture_output=True, text=True)
        report = asm.stdout + asm.stderr
        if asm.returncode != 0:
            sys.stderr.write(report)
            raise SystemExit(f"kiln-compile-gemm: ptxas failed for {name}")
        registers = re.search(r"Used (\d+) registers", report)
        spills = [int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
        # The rings, the mbarriers and 1 KB the kernel uses to align the ring.
        smem = stages * (bm + bn) * 128 + 16 * stages + 1024
        manifest = {"kernel": name, "block_m": bm, "block_n": bn, "stages": stages,
                    "consumer_warpgroups": consumers, "threads": 128 * (1 + consumers),
                    "smem_bytes": smem, "registers": int(registers.group(1)) if registers else None,
                    "spill_bytes": sum(spills)}
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(manifest, f, indent=1)
        status = "ok" if sum(spills) == 0 else "SPILLS"
        print(f"{name}: {manifest['registers']} registers, {sum(spills)} spill bytes, "
              f"{smem} B shared memory: {status}")
        failures += sum(spills) != 0
    if failures:
        raise SystemExit(f"kiln-compile-gemm: {failures} kernel(s) spill registers")


if __name__ == "__main__":
    main()
