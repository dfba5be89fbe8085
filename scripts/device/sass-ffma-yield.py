#!/usr/bin/env python3
"""Experiment (GPU machine, which has cuobjdump): rewrite the scheduling
control bits of the promotion FFMAs in a GEMM cubin.

The consumers' promotion is a run of 64 (128-wide tiles) independent FFMAs
after each wgmma wait. ptxas issues such a run back to back from one warp;
flipping the yield bit of every other FFMA lets the scheduler switch to the
other warpgroup's warp (which wants to issue its next wgmma) inside the run.
The idea is DeepGEMM's (its README, "FFMA SASS interleaving"); this is an
independent implementation written from the SASS control-code layout
documented by open-source Volta+ assemblers:

  bits 105-127 of the 128-bit instruction, i.e. bits 41-63 of its high
  64-bit word: stall 41-44, yield 45, write barrier 46-48, read barrier
  49-51, wait mask 52-57, operand reuse 58-61.

A warp that yields may lose its operand reuse cache, so a flipped
instruction also has its reuse bits cleared. Only scheduling changes: the
patched kernel must give bitwise the same output as the original
(kiln-gemm-check --hash-out with one --seed).

usage: sass-ffma-yield.py IN.cubin OUT.cubin [--min-run N] [--every K]
       sass-ffma-yield.py IN.cubin --report     (control bits of FFMA runs)
"""
import argparse
import collections
import re
import struct
import subprocess
import sys

YIELD = 1 << 45
REUSE = 0xF << 58

LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\* (0x[0-9a-f]{16}) \*/")
HIGH = re.compile(r"^\s*/\* (0x[0-9a-f]{16}) \*/\s*$")
FUNCTION = re.compile(r"Function : (\S+)")


def sass(cubin):
    """{function: [(offset, text, low, high)]} from cuobjdump -sass."""
    text = subprocess.run(["cuobjdump", "-sass", cubin], check=True,
                          capture_output=True, text=True).stdout
    functions, current, pending = {}, None, None
    for line in text.splitlines():
        m = FUNCTION.search(line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = LINE.search(line)
        if m and current is not None:
            pending = (int(m.group(1), 16), m.group(2).strip(), int(m.group(3), 16))
            continue
        m = HIGH.match(line)
        if m and pending is not None:
            current.append(pending + (int(m.group(1), 16),))
            pending = None
    return functions


def text_sections(data):
    """{section name: (file offset, size)} of an ELF64 file."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
               for i in range(shnum)]
    strtab = headers[shstrndx][4]
    sections = {}
    for h in headers:
        name_end = data.index(b"\0", strtab + h[0])
        sections[data[strtab + h[0]:name_end].decode()] = (h[4], h[5])
    return sections


def ffma_runs(instructions, min_run):
    """Runs of at least min_run consecutive FFMA instructions."""
    runs, run = [], []
    for ins in instructions:
        if re.match(r"(@!?U?P\w+\s+)?FFMA\b", ins[1]):
            run.append(ins)
        else:
            if len(run) >= min_run:
                runs.append(run)
            run = []
    if len(run) >= min_run:
        runs.append(run)
    return runs


def fields(high):
    return {"stall": (high >> 41) & 0xF, "yield": (high >> 45) & 1,
            "wbar": (high >> 46) & 7, "rbar": (high >> 49) & 7,
            "wait": (high >> 52) & 0x3F, "reuse": (high >> 58) & 0xF}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("cubin")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--min-run", type=int, default=16)
    parser.add_argument("--every", type=int, default=2,
                        help="flip the yield bit of every K-th FFMA of a run")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()

    data = bytearray(open(args.cubin, "rb").read())
    sections = text_sections(data)
    flipped = 0
    for function, instructions in sass(args.cubin).items():
        offset, size = sections[".text." + function]
        for at, _, low, high in instructions[:8]:
            if struct.unpack_from("<QQ", data, offset + at) != (low, high):
                sys.exit(f"{function}: cuobjdump's bytes at {at:#x} differ "
                         "from the file's")
        runs = ffma_runs(instructions, args.min_run)
        if args.report:
            counts = collections.Counter()
            for run in runs:
                for _, _, _, high in run:
                    f = fields(high)
                    counts[(f["stall"], f["yield"], f["reuse"] != 0)] += 1
            print(f"{function}: {len(instructions)} instructions, "
                  f"{len(runs)} FFMA runs of >= {args.min_run} "
                  f"({sum(map(len, runs))} FFMAs); (stall, yield, reuse): "
                  f"{dict(sorted(counts.items()))}")
            for run in runs[:2]:
                print("  run at %#x: yield bits %s" % (run[0][0], "".join(
                    str(fields(h)["yield"]) for *_, h in run)))
            continue
        for run in runs:
            for i, (at, _, low, high) in enumerate(run):
                if i % args.every != args.every - 1:
                    continue
                struct.pack_into("<QQ", data, offset + at, low,
                                 (high ^ YIELD) & ~REUSE)
                flipped += 1
    if args.out:
        open(args.out, "wb").write(data)
        print(f"{args.out}: {flipped} FFMA yield bits flipped")


if __name__ == "__main__":
    main()
