"""Golden logits and greedy tokens of Hugging Face transformers'
DeepseekV3ForCausalLM for a tiny Kiln checkpoint.

Runs on the GPU machine, where transformers and safetensors are installed (no
GPU is needed). The checkpoint comes from `kiln make-tiny` (deterministic for a
config and a seed); its FP8 weights are dequantized with their 128x128
`weight_scale_inv` blocks into an FP32 copy with the same per-expert names,
which `from_pretrained` loads. The CPU reference backend must match these
logits to 1e-4 relative error and these greedy tokens exactly.

Usage: python3 make_model_golden.py CHECKPOINT_DIR OUT.json "GENERATOR COMMAND"
"""
import json
import math
import os
import sys
import tempfile
import zlib

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PROMPTS = [
    [0, 17, 42, 1000, 5, 99, 128000, 7],
    [0, 3, 65000, 129279, 12],
    [0, 4, 8, 15, 16, 23, 42, 108, 2000, 31337, 77, 1, 9, 100000],
]
GREEDY_TOKENS = 16
SAMPLED_VOCAB = 2048


def dequantize(checkpoint_dir):
    """All tensors of the checkpoint, FP8 weights dequantized to FP32."""
    index_path = os.path.join(checkpoint_dir, "model.safetensors.index.json")
    with open(index_path) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    tensors, digests = {}, {}
    for name in files:
        path = os.path.join(checkpoint_dir, name)
        with open(path, "rb") as f:
            digests[name] = zlib.crc32(f.read())
        tensors.update(load_file(path))
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        scale = tensors.get(name + "_scale_inv")
        value = tensor.to(torch.float32)
        if scale is not None:
            rows, cols = value.shape
            blocks = scale.to(torch.float32)
            blocks = blocks.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
            value = value * blocks
        out[name] = value.contiguous()
    return out, digests


def main():
    checkpoint_dir, out_path, generator = sys.argv[1], sys.argv[2], sys.argv[3]
    from transformers import AutoModelForCausalLM

    with open(os.path.join(checkpoint_dir, "config.json")) as f:
        config = json.load(f)
    weights, digests = dequantize(checkpoint_dir)
    with tempfile.TemporaryDirectory() as plain:
        plain_config = dict(config)
        plain_config.pop("quantization_config", None)
        plain_config["torch_dtype"] = "float32"
        with open(os.path.join(plain, "config.json"), "w") as f:
            json.dump(plain_config, f)
        save_file(weights, os.path.join(plain, "model.safetensors"))
        model, info = AutoModelForCausalLM.from_pretrained(
            plain, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
    model.eval()
    print("model:", type(model).__name__, "loading info:", {k: sorted(v)[:8] for k, v in info.items()})
    if info.get("missing_keys"):
        raise SystemExit(f"missing keys: {sorted(info['missing_keys'])[:20]}")

    vocab = config["vocab_size"]
    sampled = np.sort(np.random.default_rng(0).choice(vocab, SAMPLED_VOCAB, replace=False))
    records = []
    with torch.no_grad():
        for prompt in PROMPTS:
            logits = model(torch.tensor([prompt])).logits[0].to(torch.float64)
            rows = []
            for row in logits:
                rows.append({
                    "argmax": int(row.argmax()),
                    "max": float(row.max()),
                    "logsumexp": float(torch.logsumexp(row, 0)),
                    "norm": float(row.norm()),
                    "sampled": [float(row[i]) for i in sampled],
                })
            ids = list(prompt)
            for _ in range(GREEDY_TOKENS):
                step = model(torch.tensor([ids])).logits[0, -1]
                ids.append(int(step.argmax()))
            records.append({"tokens": prompt, "logits": rows, "greedy": ids[len(prompt):]})
            print("prompt", prompt, "greedy", ids[len(prompt):])

    import transformers
    golden = {
        "made_by": f"test/golden/make_model_golden.py, transformers {transformers.__version__}, "
                   f"torch {torch.__version__}, fp32, eager attention",
        "checkpoint": generator,
        "checkpoint_crc32": digests,
        "sampled_vocab": [int(i) for i in sampled],
        "prompts": records,
    }
    with open(out_path, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print("wrote", out_path, os.path.getsize(out_path), "bytes")


if __name__ == "__main__":
    main()
