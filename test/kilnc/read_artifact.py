#!/usr/bin/env python3
"""Prints a .kiln artifact's header and manifest summary, one fact a line,
for FileCheck; checks the container on the way (compiler/docs/artifact.md):
magic, version, blob offsets (256-aligned, inside the file), that every
kernel's cubin is an ELF image and its PTX targets sm_90a.

Usage: read_artifact.py FILE.kiln
"""
import json
import struct
import sys

ELF_MAGIC = b"\x7fELF"


def main():
    data = open(sys.argv[1], "rb").read()
    magic, version, reserved, length = struct.unpack_from("<8sIIQ", data, 0)
    print(f"magic {magic!r} version {version} reserved {reserved}")
    manifest = json.loads(data[24:24 + length])
    blobs = {}
    for blob in manifest["blobs"]:
        offset, size = blob["offset"], blob["size"]
        if offset % 256 or offset + size > len(data):
            sys.exit(f"blob {blob['name']} at {offset} (+{size}) is misplaced")
        blobs[blob["name"]] = data[offset:offset + size]
    print(f"producer {manifest['producer']} source {manifest['source']} target {manifest['target']['arch']}")
    model = manifest["model"]
    print(f"model {model['model_type']} {model['hash']} hidden {model['hidden_size']} "
          f"layers {model['num_hidden_layers']} vocab {model['vocab_size']}")
    print("options " + " ".join(f"{k}={v}" for k, v in sorted(manifest["options"].items())))
    for kernel in manifest["kernels"]:
        cubin = blobs[kernel["cubin"]]
        ptx = blobs.get(kernel.get("ptx", ""), b"")
        elf = "elf" if cubin.startswith(ELF_MAGIC) else "NOT ELF"
        target = "sm_90a" if b".target sm_90a" in ptx else "none"
        grouped = f" grouped {kernel['grouped']}" if "grouped" in kernel else ""
        grouped += f" store {kernel['store']}" if "store" in kernel else ""
        grouped += f" scale_a {kernel['scale_a']}" if "scale_a" in kernel else ""
        grouped += (f" griddepcontrol {kernel['griddepcontrol']}"
                    if "griddepcontrol" in kernel else "")
        grouped += f" a_box {kernel['a_box']}" if "a_box" in kernel else ""
        print(f"kernel {kernel['name']} split_k {kernel['split_k']}{grouped} "
              f"smem {kernel['shared_memory_bytes']} cubin {elf} ptx {target}")
    print(f"weights {len(manifest['weights'])}")
    for name, plan in sorted(manifest["plans"].items()):
        print(f"plan {name} max_tokens {plan['max_tokens']} max_sequences {plan['max_sequences']} "
              f"buffers {len(plan['buffers'])} steps {len(plan['steps'])}")


if __name__ == "__main__":
    main()
