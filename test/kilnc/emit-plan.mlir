// The launch plans of the tiny config (compiler/docs/artifact.md): buffers
// with symbolic rows, one step per op (norms and SwiGLUs fused with their
// quantization), the GEMM kernels by name, in-place residual adds, and an
// arena in which buffers with disjoint lifetimes share space.
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --emit=plan -q -o %t.json
// RUN: FileCheck %s < %t.json
// RUN: %python %S/check_plan.py %t.json | FileCheck %s --check-prefix=ARENA

// ARENA: decode: 72 steps, 92 buffers, {{[1-9][0-9]*}} pairs share space, arena {{[0-9]+}} of {{[0-9]+}} bytes: ok
// ARENA: prefill: 72 steps, 92 buffers, {{[1-9][0-9]*}} pairs share space, arena {{[0-9]+}} of {{[0-9]+}} bytes: ok

// Two kernels: the decode-sized and the large-M configuration.
// CHECK: "kernels": [
// CHECK-NEXT: {"name": "kiln_gemm_fp8_m64n64s8c1_tma", "block_m": 64, "block_n": 64, "stages": 8, "consumers": 1, "split_k": 1, "store": "tma", "scale_a": "tma", "griddepcontrol": "wait", "a_box": "min_m", "shared_memory_bytes": 146688},
// CHECK-NEXT: {"name": "kiln_gemm_fp8_m64n64s8c1_contiguous", "block_m": 64, "block_n": 64, "stages": 8, "consumers": 1, "split_k": 1, "grouped": "contiguous", "scale_a": "tma", "griddepcontrol": "wait", "a_box": "min_m", "shared_memory_bytes": 160012},
// CHECK-NEXT: {"name": "kiln_gemm_fp8_m128n128s4c2_tma", "block_m": 128, "block_n": 128, "stages": 4, "consumers": 2, "split_k": 1, "store": "tma", "griddepcontrol": "wait", "a_box": "min_m", "shared_memory_bytes": 164928},
// CHECK-NEXT: {"name": "kiln_gemm_fp8_m128n64s8c2_contiguous", "block_m": 128, "block_n": 64, "stages": 8, "consumers": 2, "split_k": 1, "grouped": "contiguous", "griddepcontrol": "wait", "a_box": "min_m", "shared_memory_bytes": 228492}
// CHECK-NEXT: ],

// Weights as the checkpoint stores them; kv_b_proj converted to BF16 at
// load; routed experts as one {e} pattern with the per-expert shape.
// CHECK: "weights": [
// CHECK-NEXT: {"name": "model.embed_tokens.weight", "dtype": "bf16", "shape": [129280,256], "transform": "none"},
// CHECK: {"name": "model.layers.0.self_attn.kv_b_proj.weight", "dtype": "f8e4m3", "shape": [256,160], "transform": "bf16"},
// CHECK: {"name": "model.layers.1.mlp.gate.e_score_correction_bias", "dtype": "f32", "shape": [16], "transform": "none"},
// CHECK: {"name": "model.layers.1.mlp.experts.{e}.gate_proj.weight", "dtype": "f8e4m3", "shape": [192,256], "transform": "none"},
// CHECK: {"name": "lm_head.weight", "dtype": "bf16", "shape": [129280,256], "transform": "none"}
// CHECK-NEXT: ],

// CHECK: "decode": {"max_tokens": 8, "max_sequences": 8, "arena_bytes": {{[0-9]+}},
// CHECK-NEXT: "buffers": [
// CHECK-NEXT: {"name": "tokens", "dtype": "i32", "rows": "T", "cols": 1, "offset": [[TOKENS:[0-9]+]], "bytes": 32},
// CHECK-NEXT: {"name": "positions", "dtype": "i32", "rows": "T", "cols": 1, "offset": {{[0-9]+}}, "bytes": 32},
// CHECK-NEXT: {"name": "last_rows", "dtype": "i32", "rows": "S", "cols": 1, "offset": {{[0-9]+}}, "bytes": 32},
// CHECK-NEXT: {"name": "hidden", "dtype": "f32", "rows": "T", "cols": 256, "offset": {{[0-9]+}}, "bytes": 8192},
// CHECK-NEXT: {"name": "l0.attn_in_q", "dtype": "f8e4m3", "rows": "T", "cols": 256, "offset": {{[0-9]+}}, "bytes": 2048},
// Scales: rows of their activation, K/128 columns (stored transposed).
// CHECK-NEXT: {"name": "l0.attn_in_s", "dtype": "f32", "rows": "T", "cols": 2, "offset": {{[0-9]+}}, "bytes": 64},
// Routed rows R = T * top_k = 32, offsets E1 = 17.
// CHECK: {"name": "l1.experts_in_q", "dtype": "f8e4m3", "rows": "R", "cols": 256, "offset": {{[0-9]+}}, "bytes": 8192},
// CHECK-NEXT: {"name": "l1.experts_in_s", "dtype": "f32", "rows": "R", "cols": 2, "offset": {{[0-9]+}}, "bytes": 256},
// CHECK-NEXT: {"name": "l1.experts_in_offsets", "dtype": "i32", "rows": "E1", "cols": 1, "offset": {{[0-9]+}}, "bytes": 68},
// CHECK-NEXT: {"name": "l1.experts_in_rows", "dtype": "i32", "rows": "T", "cols": 4, "offset": {{[0-9]+}}, "bytes": 128},
// CHECK: {"name": "logits", "dtype": "f32", "rows": "S", "cols": 129280, "offset": {{[0-9]+}}, "bytes": 4136960}
// CHECK-NEXT: ],

// CHECK-NEXT: "steps": [
// CHECK-NEXT: {"op": "embed", "inputs": [{"buffer":"tokens"}], "outputs": [{"buffer":"hidden"}], "weights": ["model.embed_tokens.weight"], "attrs": {}},
// CHECK-NEXT: {"op": "rms_norm", "inputs": [{"buffer":"hidden"}], "outputs": [{"buffer":"l0.attn_in_q"},{"buffer":"l0.attn_in_s"}], "weights": ["model.layers.0.input_layernorm.weight"], "attrs": {"eps":1e-06}},
// CHECK-NEXT: {"op": "gemm", "inputs": [{"buffer":"l0.attn_in_q"},{"buffer":"l0.attn_in_s"}], "outputs": [{"buffer":"l0.q_a"}], "weights": ["model.layers.0.self_attn.q_a_proj.weight"], "kernel": "kiln_gemm_fp8_m64n64s8c1_tma", "attrs": {}},
// CHECK-NEXT: {"op": "rms_norm", "inputs": [{"buffer":"l0.q_a"}], "outputs": [{"buffer":"l0.q_a_normed_q"},{"buffer":"l0.q_a_normed_s"}],
// CHECK-NEXT: {"op": "gemm", {{.*}} "outputs": [{"buffer":"l0.q"}], "weights": ["model.layers.0.self_attn.q_b_proj.weight"]
// CHECK-NEXT: {"op": "gemm", {{.*}} "outputs": [{"buffer":"l0.kv_a"}], "weights": ["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]
// The latent and the rope key are column slices of kv_a.
// CHECK-NEXT: {"op": "rms_norm", "inputs": [{"buffer":"l0.kv_a","col":0,"cols":160}], "outputs": [{"buffer":"l0.latent"}]
// CHECK-NEXT: {"op": "mla_attention", "inputs": [{"buffer":"l0.q"},{"buffer":"l0.latent"},{"buffer":"l0.kv_a","col":160,"cols":16}], "outputs": [{"buffer":"l0.attn"}], "weights": ["model.layers.0.self_attn.kv_b_proj.weight"], "attrs": {"attention_factor":1,"heads":4,"inv_freq":[1,0.21345374,0.035,{{.*}}],"kv_lora":160,"layer":0,"nope":32,"rope":16,"softmax_scale":0.27046755,"v":32}},
// CHECK-NEXT: {"op": "quantize", "inputs": [{"buffer":"l0.attn"}], "outputs": [{"buffer":"l0.attn_out_q"},{"buffer":"l0.attn_out_s"}], "weights": [], "attrs": {}},
// CHECK-NEXT: {"op": "gemm", {{.*}} "outputs": [{"buffer":"l0.o_proj"}]
// The residual stream is added in place.
// CHECK-NEXT: {"op": "add", "inputs": [{"buffer":"hidden"},{"buffer":"l0.o_proj"}], "outputs": [{"buffer":"hidden"}], "weights": [], "attrs": {}},
// CHECK-NEXT: {"op": "rms_norm", {{.*}} "outputs": [{"buffer":"l0.mlp_in_q"},{"buffer":"l0.mlp_in_s"}]
// CHECK-NEXT: {"op": "gemm", {{.*}} "outputs": [{"buffer":"l0.gate"}]
// CHECK-NEXT: {"op": "gemm", {{.*}} "outputs": [{"buffer":"l0.up"}]
// CHECK-NEXT: {"op": "swiglu", "inputs": [{"buffer":"l0.gate"},{"buffer":"l0.up"}], "outputs": [{"buffer":"l0.mlp_act_q"},{"buffer":"l0.mlp_act_s"}], "weights": [], "attrs": {}},
// CHECK-NEXT: {"op": "gemm", {{.*}} "outputs": [{"buffer":"l0.down"}]
// CHECK-NEXT: {"op": "add", "inputs": [{"buffer":"hidden"},{"buffer":"l0.down"}], "outputs": [{"buffer":"hidden"}]

// Layer 1's MoE: router in FP32 on the unquantized norm, then dispatch,
// grouped GEMMs over the expert offsets, a SwiGLU whose scales are grouped
// by the same offsets, combine, the shared expert, two adds.
// CHECK: {"op": "rms_norm", "inputs": [{"buffer":"hidden"}], "outputs": [{"buffer":"l1.mlp_norm"}], "weights": ["model.layers.1.post_attention_layernorm.weight"]
// CHECK-NEXT: {"op": "matmul", "inputs": [{"buffer":"l1.mlp_norm"}], "outputs": [{"buffer":"l1.router"}], "weights": ["model.layers.1.mlp.gate.weight"], "attrs": {}},
// CHECK-NEXT: {"op": "moe_route", "inputs": [{"buffer":"l1.router"}], "outputs": [{"buffer":"l1.route_ids"},{"buffer":"l1.route_weights"}], "weights": ["model.layers.1.mlp.gate.e_score_correction_bias"], "attrs": {"n_group":4,"norm_topk_prob":1,"routed_scaling_factor":2.5,"scoring":"sigmoid","top_k":4,"topk_group":2}},
// CHECK-NEXT: {"op": "quantize", "inputs": [{"buffer":"l1.mlp_norm"}], "outputs": [{"buffer":"l1.mlp_in_q"},{"buffer":"l1.mlp_in_s"}]
// CHECK-NEXT: {"op": "moe_dispatch", "inputs": [{"buffer":"l1.mlp_in_q"},{"buffer":"l1.mlp_in_s"},{"buffer":"l1.route_ids"}], "outputs": [{"buffer":"l1.experts_in_q"},{"buffer":"l1.experts_in_s"},{"buffer":"l1.experts_in_offsets"},{"buffer":"l1.experts_in_rows"}], "weights": [], "attrs": {}},
// CHECK-NEXT: {"op": "grouped_gemm", "inputs": [{"buffer":"l1.experts_in_q"},{"buffer":"l1.experts_in_s"},{"buffer":"l1.experts_in_offsets"}], "outputs": [{"buffer":"l1.experts_gate"}], "weights": ["model.layers.1.mlp.experts.{e}.gate_proj.weight"], "kernel": "kiln_gemm_fp8_m64n64s8c1_contiguous", "attrs": {}},
// CHECK-NEXT: {"op": "grouped_gemm", {{.*}} "outputs": [{"buffer":"l1.experts_up"}]
// CHECK-NEXT: {"op": "swiglu", "inputs": [{"buffer":"l1.experts_gate"},{"buffer":"l1.experts_up"},{"buffer":"l1.experts_in_offsets"}], "outputs": [{"buffer":"l1.experts_act_q"},{"buffer":"l1.experts_act_s"}]
// CHECK-NEXT: {"op": "grouped_gemm", "inputs": [{"buffer":"l1.experts_act_q"},{"buffer":"l1.experts_act_s"},{"buffer":"l1.experts_in_offsets"}], "outputs": [{"buffer":"l1.experts_down"}]
// CHECK-NEXT: {"op": "moe_combine", "inputs": [{"buffer":"l1.experts_down"},{"buffer":"l1.experts_in_rows"},{"buffer":"l1.route_weights"}], "outputs": [{"buffer":"l1.routed"}], "weights": [], "attrs": {}},
// CHECK-NEXT: {"op": "gemm", "inputs": [{"buffer":"l1.mlp_in_q"},{"buffer":"l1.mlp_in_s"}], "outputs": [{"buffer":"l1.shared_gate"}]
// CHECK-NEXT: {"op": "gemm", "inputs": [{"buffer":"l1.mlp_in_q"},{"buffer":"l1.mlp_in_s"}], "outputs": [{"buffer":"l1.shared_up"}]
// CHECK-NEXT: {"op": "swiglu", "inputs": [{"buffer":"l1.shared_gate"},{"buffer":"l1.shared_up"}], "outputs": [{"buffer":"l1.shared_act_q"},{"buffer":"l1.shared_act_s"}]
// CHECK-NEXT: {"op": "gemm", {{.*}} "outputs": [{"buffer":"l1.shared_down"}]
// CHECK-NEXT: {"op": "add", "inputs": [{"buffer":"l1.routed"},{"buffer":"l1.shared_down"}], "outputs": [{"buffer":"l1.routed"}]
// CHECK-NEXT: {"op": "add", "inputs": [{"buffer":"hidden"},{"buffer":"l1.routed"}], "outputs": [{"buffer":"hidden"}]

// The head.
// CHECK: {"op": "rms_norm", "inputs": [{"buffer":"hidden"}], "outputs": [{"buffer":"final_norm"}], "weights": ["model.norm.weight"], "attrs": {"eps":1e-06}},
// CHECK-NEXT: {"op": "select_rows", "inputs": [{"buffer":"final_norm"},{"buffer":"last_rows"}], "outputs": [{"buffer":"last_hidden"}], "weights": [], "attrs": {}},
// CHECK-NEXT: {"op": "matmul", "inputs": [{"buffer":"last_hidden"}], "outputs": [{"buffer":"logits"}], "weights": ["lm_head.weight"], "attrs": {}}
// CHECK-NEXT: ]
// CHECK-NEXT: },

// Prefill: the same ops over 256 tokens, with the large-M kernel for the
// plain GEMMs; the grouped ones see ceil(1024 / 16) = 64 rows per expert
// under uniform routing, plus one standard deviation of the multinomial
// counts, ceil(sqrt(64 * 15 / 16)) = 8: 72 rows, 128-row tiles.
// CHECK-NEXT: "prefill": {"max_tokens": 256, "max_sequences": 8, "arena_bytes": {{[0-9]+}},
// CHECK: {"name": "l1.experts_in_q", "dtype": "f8e4m3", "rows": "R", "cols": 256, "offset": {{[0-9]+}}, "bytes": 262144},
// CHECK: {"op": "gemm", {{.*}} "outputs": [{"buffer":"l0.q_a"}], {{.*}} "kernel": "kiln_gemm_fp8_m128n128s4c2_tma"
// CHECK: {"op": "grouped_gemm", {{.*}} "kernel": "kiln_gemm_fp8_m128n64s8c2_contiguous"
