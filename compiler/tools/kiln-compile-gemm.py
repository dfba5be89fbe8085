#!/usr/bin/env python3
"""Compiles Kiln's FP8 GEMM kernels to PTX and cubins, ahead of time.

For each configuration (block_m, block_n, stages, consumers[, split_k[,
grouped]][, xCLUSTER_M][, swiglu|swiglu_quantize][, tma]) it writes a kiln.scaled_matmul (kiln.grouped_scaled_matmul for a
grouped one) carrying that #kiln.gemm_config, runs kiln-opt's kernel
pipeline (kiln-emit-gemm-kernels, then SCF/arith/CF/NVVM to LLVM, NVPTX
through gpu-module-to-binary), takes the PTX out of the gpu.binary, assembles
it with ptxas for sm_90a and rejects any kernel that spills. Per kernel it
leaves NAME.ptx, NAME.cubin and NAME.json (the launch manifest of
compiler/docs/gemm-abi.md) in the output directory.

Usage: kiln-compile-gemm.py --kiln-opt PATH --out DIR [--ptxas PATH]
           [--config 128,128,6,2[,split_k[,contiguous|masked]][,tail][,x2][,swiglu|swiglu_quantize][,tma] ...]
           [--shapes MxNxK,...] [--grouped-shapes GxRxNxK:LAYOUT,...]
           [--plan FILE] [--ptx-only]
Without --config it builds the configurations kiln-select-gemm-config picks
for --shapes and --grouped-shapes (default: the DeepSeek-V3 shapes
kiln-gemm-check runs, a dynamic M, and the grouped benchmark's expert
GEMMs: G groups, R routed rows in all for contiguous, R rows per group for
masked); --plan writes which kernel it picked for each shape, one line
"KERNEL SHAPE,..." per kernel (scripts/device/gemm.sh's GEMM_PLAN,
scripts/device/grouped.sh's GROUPED_PLAN).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# kiln-gemm-check's default shapes (runtime/tools/kiln-gemm-check.cpp).
DEFAULT_SHAPES = ([(m, n, k) for n, k in [(2112, 7168), (24576, 1536), (32768, 512),
                                           (7168, 16384), (4096, 7168), (7168, 2048)]
                   for m in (64, 128, 4096)]
                  + [(m, 2112, 7168) for m in (1, 7, 300, 1000)] + [(300, 129, 1024)])
# The grouped benchmark (bench/grouped_cublas.py, scripts/device/grouped.sh):
# DeepSeek-V3's expert projections (gate/up 4096x7168 as one, down 7168x2048)
# for 4-32 groups: 8192 routed rows (contiguous), 64-256 rows per group
# (masked), and decode: 8 groups of 1 row, 32 of 8.
DEFAULT_GROUPED = ([(g, r, n, k, layout) for n, k in [(4096, 7168), (7168, 2048)]
                    for g in (4, 8, 16, 32)
                    for r, layout in [(8192, "contiguous"), (64, "masked"), (128, "masked"),
                                      (256, "masked")]]
                   + [(g, r, n, k, "contiguous") for n, k in [(4096, 7168), (7168, 2048)]
                      for g, r in [(8, 8), (32, 256)]])
LAYOUTS = ("contiguous", "masked")
# Fused epilogues (#kiln.gemm_config's `epilogue`): SwiGLU over interleaved
# gate/up tiles (grouped, block_n = 128; gemm-abi.md "SwiGLU epilogue").
SPLITS = ("tail",)
EPILOGUES = ("swiglu", "swiglu_quantize")
# Output stores (#kiln.gemm_config's `store`): TMA from a swizzled staging in
# shared memory (plain kernels; gemm-abi.md "TMA store").
STORES = ("tma",)

# kiln-opt's kiln-gemm-to-ptx: kiln-emit-gemm-kernels, SCF/arith/index/CF/NVVM
# to LLVM, nvvm-attach-target (sm_90a, +ptx80, O3), gpu-module-to-binary
# format=isa; defined once in compiler/lib/Kernels/GemmKernelCompiler.cpp,
# which kilnc runs in process.
PIPELINE = ["--kiln-gemm-to-ptx"]


def config_attr(config):
    bm, bn, stages, consumers, split_k, grouped, cluster_m, epilogue, store, tail = config
    # split_k = 1 and cluster_m = 1 are the attribute's defaults, which it
    # does not print.
    split = f", split_k = {split_k}" if split_k != 1 else ""
    split += ", split = tail" if tail else ""
    cluster = f", cluster_m = {cluster_m}" if cluster_m != 1 else ""
    group = f", grouped = {grouped}" if grouped else ""
    fused = f", epilogue = {epilogue}" if epilogue else ""
    stored = f", store = {store}" if store else ""
    return (f"#kiln.gemm_config<block_m = {bm}, block_n = {bn}, stages = {stages}, "
            f"consumers = {consumers}{split}{cluster}{group}{fused}{stored}>")


def kernel_name(config):
    bm, bn, stages, consumers, split_k, grouped, cluster_m, epilogue, store, tail = config
    return (f"kiln_gemm_fp8_m{bm}n{bn}s{stages}c{consumers}"
            + (f"k{split_k}" if split_k != 1 else "")
            + ("t" if tail else "")
            + (f"x{cluster_m}" if cluster_m != 1 else "")
            + (f"_{grouped}" if grouped else "")
            + (f"_{epilogue}" if epilogue else "")
            + (f"_{store}" if store else ""))


def grouped_types(g, r, n, k, layout):
    """Operand and result types of a kiln.grouped_scaled_matmul."""
    kb, nb = (k + 127) // 128, (n + 127) // 128
    rows = f"{r}" if layout == "contiguous" else f"{g}x{r}"
    count = g + 1 if layout == "contiguous" else g
    return ([f"tensor<{rows}x{k}xf8E4M3FN>", f"tensor<{rows}x{kb}xf32>",
             f"tensor<{g}x{n}x{k}xf8E4M3FN>", f"tensor<{g}x{nb}x{kb}xf32>", f"tensor<{count}xi32>"],
            f"tensor<{rows}x{n}xbf16>")


def grouped_func(name, shape, config=None):
    g, r, n, k, layout = shape
    operands, result = grouped_types(g, r, n, k, layout)
    attr = f" {{gemm_config = {config_attr(config)}}}" if config else ""
    args = ", ".join(f"%x{i}: {t}" for i, t in enumerate(operands))
    return (f"func.func @{name}({args}) -> {result} {{\n"
            f"  %y = kiln.grouped_scaled_matmul {layout} %x0, %x1, %x2, %x3, %x4{attr}"
            f" : ({', '.join(operands)}) -> {result}\n"
            f"  return %y : {result}\n}}\n")


def matmul_source(config):
    if config[5]:
        return grouped_func("gemm", (4, 256, 256, 256, config[5]), config)
    return (
        "func.func @gemm(%a: tensor<?x128xf8E4M3FN>, %as: tensor<?x1xf32>,"
        " %b: tensor<128x128xf8E4M3FN>, %bs: tensor<1x1xf32>) -> tensor<?x128xbf16> {\n"
        f"  %y = kiln.scaled_matmul %a, %as, %b, %bs {{gemm_config = {config_attr(config)}}}"
        " : (tensor<?x128xf8E4M3FN>, tensor<?x1xf32>, tensor<128x128xf8E4M3FN>,"
        " tensor<1x1xf32>) -> tensor<?x128xbf16>\n"
        "  return %y : tensor<?x128xbf16>\n}\n")


def selected_configs(kiln_opt, shapes, grouped_shapes=()):
    """The configuration kiln-select-gemm-config picks for each shape (None:
    a dynamic M), then for each grouped shape (G, R, N, K, layout)."""
    funcs = []
    for index, shape in enumerate(shapes):
        m, n, k = shape if shape else ("?", 4096, 7168)
        kb, nb = k // 128, (n + 127) // 128
        types = (f"tensor<{m}x{k}xf8E4M3FN>, tensor<{m}x{kb}xf32>, "
                 f"tensor<{n}x{k}xf8E4M3FN>, tensor<{nb}x{kb}xf32>")
        funcs.append(
            f"func.func @s{index}(%a: tensor<{m}x{k}xf8E4M3FN>, %as: tensor<{m}x{kb}xf32>,"
            f" %b: tensor<{n}x{k}xf8E4M3FN>, %bs: tensor<{nb}x{kb}xf32>) -> tensor<{m}x{n}xbf16> {{\n"
            f"  %y = kiln.scaled_matmul %a, %as, %b, %bs : ({types}) -> tensor<{m}x{n}xbf16>\n"
            f"  return %y : tensor<{m}x{n}xbf16>\n}}\n")
    for index, shape in enumerate(grouped_shapes):
        funcs.append(grouped_func(f"g{index}", shape))
    run = subprocess.run([kiln_opt, "-", "--kiln-select-gemm-config"], input="".join(funcs),
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.stderr.write(run.stderr)
        raise SystemExit("kiln-compile-gemm: kiln-select-gemm-config failed")
    picked = re.findall(r"gemm_config<block_m = (\d+), block_n = (\d+), stages = (\d+), "
                        r"consumers = (\d+)(?:, split_k = (\d+))?(, split = tail)?(?:, cluster_m = (\d+))?"
                        r"(?:, grouped = (\w+))?(?:, epilogue = (\w+))?(?:, store = (\w+))?>",
                        run.stdout)
    if len(picked) != len(shapes) + len(grouped_shapes):
        raise SystemExit("kiln-compile-gemm: kiln-select-gemm-config left a matmul unconfigured")
    return [tuple(int(v or 1) for v in config[:5]) + (config[7] or None, int(config[6] or 1),
                                                       config[8] or None, config[9] or None,
                                                       bool(config[5]))
            for config in picked]


def parse_config(text):
    """block_m,block_n,stages,consumers[,split_k[,layout]][,tail][,xCLUSTER_M][,EPILOGUE][,STORE]"""
    fields = text.split(",")
    store = fields.pop() if fields[-1] in STORES else None
    epilogue = fields.pop() if fields[-1] in EPILOGUES else None
    cluster_m = int(fields.pop()[1:]) if fields[-1].startswith("x") else 1
    tail = fields[-1] in SPLITS and bool(fields.pop())
    grouped = fields.pop() if fields[-1] in LAYOUTS else None
    if len(fields) not in (4, 5):
        raise SystemExit(f"kiln-compile-gemm: --config needs 4 or 5 integers and an optional "
                         f"layout, got {text}")
    values = [int(v) for v in fields] + [1] * (5 - len(fields))
    return tuple(values) + (grouped, cluster_m, epilogue, store, tail)


def parse_grouped_shape(text):
    dims, layout = text.split(":")
    g, r, n, k = (int(v) for v in dims.split("x"))
    if layout not in LAYOUTS:
        raise SystemExit(f"kiln-compile-gemm: unknown layout in {text}")
    return (g, r, n, k, layout)


def grouped_shape_text(shape):
    g, r, n, k, layout = shape
    return f"{g}x{r}x{n}x{k}:{layout}"


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
                        help="block_m,block_n,stages,consumers[,split_k[,contiguous|masked]][,x2]"
                        "[,swiglu|swiglu_quantize][,tma]")
    parser.add_argument("--shapes", help="MxNxK,...: build what the heuristic picks for these")
    parser.add_argument("--grouped-shapes",
                        help="GxRxNxK:LAYOUT,...: the same for grouped GEMMs")
    parser.add_argument("--plan", help="write the kernel picked per shape here")
    parser.add_argument("--ptx-only", action="store_true", help="stop after PTX")
    args = parser.parse_args()
    configs = [parse_config(c) for c in args.config]
    if not configs:
        if args.shapes or args.grouped_shapes:
            shapes = ([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
                      if args.shapes else [])
            grouped = ([parse_grouped_shape(s) for s in args.grouped_shapes.split(",")]
                       if args.grouped_shapes else [])
        else:
            shapes, grouped = DEFAULT_SHAPES + [None], DEFAULT_GROUPED
        picked = selected_configs(args.kiln_opt, shapes, grouped)
        texts = (["x".join(map(str, s)) if s else None for s in shapes]
                 + [grouped_shape_text(s) for s in grouped])
        plan = {}
        for text, config in zip(texts, picked):
            if text:
                plan.setdefault(kernel_name(config), []).append(text)
        if args.plan:
            # The plan may go beside the kernels, in --out, not made yet.
            os.makedirs(os.path.dirname(os.path.abspath(args.plan)), exist_ok=True)
            with open(args.plan, "w") as f:
                for name, names in plan.items():
                    f.write(f"{name} {','.join(names)}\n")
        configs = list(dict.fromkeys(picked))
    os.makedirs(args.out, exist_ok=True)
    failures = 0
    for config in configs:
        bm, bn, stages, consumers, split_k, grouped, cluster_m, fused, store, tail = config
        name = kernel_name(config)
        with tempfile.TemporaryDirectory() as scratch:
            source = os.path.join(scratch, "gemm.mlir")
            with open(source, "w") as f:
                f.write(matmul_source(config))
            run = subprocess.run([args.kiln_opt, source, *PIPELINE], capture_output=True, text=True)
            if run.returncode != 0:
                sys.stderr.write(run.stderr)
                raise SystemExit(f"kiln-compile-gemm: kiln-opt failed for {name}")
        ptx_path = os.path.join(args.out, name + ".ptx")
        ptx = kernel_ptx(run.stdout)
        with open(ptx_path, "w") as f:
            f.write(ptx)
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
        # The rings, the epilogue's staging (16 rows per consumer warp, at
        # most 64 columns, rows padded by 16 bytes; with the TMA store the
        # whole BF16 tile), the mbarriers, a grouped kernel's group tables
        # (three int32 arrays of 1025) and 1 KB the kernel uses to align the
        # ring: GemmConfigAttr::getSharedMemoryBytes.
        tables = 3 * 4 * 1025 if grouped else 0
        epilogue = bm * bn * 2 if store else bm * (min(bn, 64) * 2 + 16)
        smem = stages * (bm + bn) * 128 + epilogue + 16 * stages + tables + 1024
        # Staged scales (GemmConfigAttr::getStagedScales decides): each
        # stage's activation-scale box of bm + 4 FP32 values and three
        # 128-byte weight-scale slots, 128-byte aligned. The kernel says
        # whether it has them: its 1-D TMA loads are theirs alone.
        staged_scales = "cp.async.bulk.tensor.1d." in ptx
        if staged_scales:
            smem += stages * (((bm + 4) * 4 + 127) // 128 * 128 + 3 * 128) + 128
        manifest = {"kernel": name, "block_m": bm, "block_n": bn, "stages": stages,
                    "consumer_warpgroups": consumers, "split_k": split_k,
                    "threads": 128 * (1 + consumers),
                    "smem_bytes": smem, "registers": int(registers.group(1)) if registers else None,
                    "spill_bytes": sum(spills)}
        if grouped:
            manifest["grouped"] = grouped
        if cluster_m != 1:
            manifest["cluster_m"] = cluster_m
        if fused:
            manifest["epilogue"] = fused
        if store:
            manifest["store"] = store
        if tail:
            manifest["split"] = "tail"
        if staged_scales:
            manifest["scale_a"] = "tma"
        # Every emitted kernel waits on its grid dependencies before it
        # touches global memory (gemm-abi.md "Dependent launch").
        manifest["griddepcontrol"] = "wait"
        # Its stages count min(block_m, M) rows of A, the box the launcher
        # then builds (gemm-abi.md "The clamped A box").
        manifest["a_box"] = "min_m"
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(manifest, f, indent=1)
        # ptxas falls back to waiting for every wgmma where it cannot prove
        # an accumulator untouched while in flight (it says so in a
        # warning): the pipelined main loops would then silently serialize.
        serialized = re.search(r"wgmma[^\n]*serializ", report, re.IGNORECASE)
        status = "ok"
        if sum(spills):
            status = "SPILLS"
        elif serialized:
            status = "WGMMA SERIALIZED"
            sys.stderr.write(report)
        print(f"{name}: {manifest['registers']} registers, {sum(spills)} spill bytes, "
              f"{smem} B shared memory: {status}")
        failures += status != "ok"
    if failures:
        raise SystemExit(f"kiln-compile-gemm: {failures} kernel(s) spill registers or serialize wgmma")


if __name__ == "__main__":
    main()
