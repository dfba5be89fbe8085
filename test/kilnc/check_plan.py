#!/usr/bin/env python3
"""Checks the launch plans that `kilnc --emit=plan` prints (artifact.md).

For every plan: each step reads only buffers that a step input or an
earlier step wrote; buffers are 256-byte aligned and inside the arena; and
no two buffers that are alive at the same time overlap in the arena (a
buffer lives from the step that first writes it to the step that last reads
it; the step inputs and the logits for the whole step). Prints one summary
line per plan, with how much the arena saves over one buffer each.

Usage: check_plan.py PLAN.json
"""
import json
import sys

INPUTS = {"tokens", "positions", "last_rows"}


def check(name, plan):
    buffers = {b["name"]: b for b in plan["buffers"]}
    steps = plan["steps"]
    end = len(steps)
    first, last = {}, {}
    for b in INPUTS & buffers.keys():
        first[b], last[b] = -1, end
    for index, step in enumerate(steps):
        for tensor in step["inputs"]:
            buffer = tensor["buffer"]
            if buffer not in first:
                sys.exit(f"{name}: step {index} ({step['op']}) reads {buffer} before any step writes it")
            last[buffer] = max(last[buffer], index)
        for tensor in step["outputs"]:
            buffer = tensor["buffer"]
            first.setdefault(buffer, index)
            last[buffer] = max(last.get(buffer, index), index)
    last["logits"] = end
    for b in buffers.values():
        if b["offset"] % 256:
            sys.exit(f"{name}: buffer {b['name']} at {b['offset']} is not 256-byte aligned")
        if b["offset"] + b["bytes"] > plan["arena_bytes"]:
            sys.exit(f"{name}: buffer {b['name']} runs past the arena")
        if b["name"] not in first:
            sys.exit(f"{name}: buffer {b['name']} is never written")
    names = sorted(buffers)
    shared = 0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = buffers[a], buffers[b]
            space = x["offset"] < y["offset"] + y["bytes"] and y["offset"] < x["offset"] + x["bytes"]
            time = first[a] <= last[b] and first[b] <= last[a]
            if space and time:
                sys.exit(f"{name}: buffers {a} and {b} overlap in the arena while both are alive")
            shared += space
    total = sum(b["bytes"] for b in buffers.values())
    print(f"{name}: {len(steps)} steps, {len(buffers)} buffers, {shared} pairs share space, "
          f"arena {plan['arena_bytes']} of {total} bytes: ok")


def main():
    with open(sys.argv[1]) as f:
        document = json.load(f)
    for name, plan in sorted(document["plans"].items()):
        check(name, plan)


if __name__ == "__main__":
    main()
