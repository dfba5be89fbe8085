// examples/kilnc-graph/graph.mlir, a hand-written model graph, compiles to
// launch plans and (with ptxas) to an artifact, like a config's graph.
// RUN: kiln-opt %kiln_src_root/examples/kilnc-graph/graph.mlir > /dev/null
// RUN: kilnc %kiln_src_root/examples/kilnc-graph/graph.mlir --emit=plan -q -o %t.json
// RUN: FileCheck %s < %t.json
// RUN: %python %S/../kilnc/check_plan.py %t.json | FileCheck %s --check-prefix=ARENA

// CHECK: "kernels": [
// CHECK-NEXT: {"name": "kiln_gemm_fp8_m64n64s8c1_tma",
// CHECK-NEXT: ],
// CHECK: {"name": "model.layers.0.self_attn.kv_b_proj.weight", "dtype": "f8e4m3", "shape": [256,160], "transform": "bf16"},
// CHECK: "decode": {"max_tokens": 4, "max_sequences": 4,
// Buffers take the names of the ops' locations.
// CHECK: {"name": "x_q", "dtype": "f8e4m3", "rows": "T", "cols": 256,
// CHECK: {"op": "rms_norm", "inputs": [{"buffer":"hidden"}], "outputs": [{"buffer":"x_q"},{"buffer":"x_s"}], "weights": ["model.layers.0.input_layernorm.weight"], "attrs": {"eps":1e-06}},
// CHECK: {"op": "mla_attention", "inputs": [{"buffer":"q"},{"buffer":"latent"},{"buffer":"kv_a","col":160,"cols":16}]
// CHECK: {"op": "matmul", "inputs": [{"buffer":"last_hidden"}], "outputs": [{"buffer":"logits"}], "weights": ["lm_head.weight"], "attrs": {}}
// CHECK: "prefill": {"max_tokens": 32, "max_sequences": 4,

// ARENA: decode: 20 steps, 26 buffers, {{.*}}: ok
// ARENA: prefill: 20 steps, 26 buffers, {{.*}}: ok
