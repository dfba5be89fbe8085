// The DeepSeek-V3 front end on the tiny config: one function per step, the
// step inputs and weights as annotated arguments, the forward of
// runtime/lib/cpu_model.cpp in kiln ops. The IR round-trips through
// kiln-opt (which verifies it).
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --emit=kiln -q -o %t.mlir
// RUN: kiln-opt %t.mlir | FileCheck %s
// RUN: kiln-opt %t.mlir --mlir-print-op-generic | kiln-opt | FileCheck %s

// Op counts over both steps: 3 layers (1 dense, 2 MoE) each.
// RUN: grep -c "= kiln.embed " %t.mlir | FileCheck %s --check-prefix=TWO
// RUN: grep -c "= kiln.mla_attention " %t.mlir | FileCheck %s --check-prefix=SIX
// RUN: grep -c "kiln.grouped_scaled_matmul contiguous" %t.mlir | FileCheck %s --check-prefix=TWELVE
// RUN: grep -c "= kiln.moe_route " %t.mlir | FileCheck %s --check-prefix=FOUR
// RUN: grep -c "= kiln.moe_permute " %t.mlir | FileCheck %s --check-prefix=FOUR
// RUN: grep -c "= kiln.moe_unpermute " %t.mlir | FileCheck %s --check-prefix=FOUR
// Plain GEMMs per step: q_a, q_b, kv_a and o_proj in each of the 3 layers,
// gate, up and down of the dense MLP and of the 2 shared experts: 21.
// RUN: grep -c "= kiln.scaled_matmul " %t.mlir | FileCheck %s --check-prefix=GEMMS
// TWO: {{^}}2{{$}}
// FOUR: {{^}}4{{$}}
// SIX: {{^}}6{{$}}
// TWELVE: {{^}}12{{$}}
// GEMMS: {{^}}42{{$}}

// Decode: T = S = max_batch = 8.
// CHECK-LABEL: func.func @decode(
// CHECK-SAME: tensor<8xi32> {kiln.input = "tokens"}
// CHECK-SAME: tensor<8xi32> {kiln.input = "positions"}
// CHECK-SAME: tensor<8xi32> {kiln.input = "last_rows"}
// CHECK-SAME: tensor<129280x256xbf16> {kiln.weight = "model.embed_tokens.weight"}
// CHECK-SAME: tensor<192x256xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.q_a_proj.weight"}
// CHECK-SAME: tensor<2x2xf32> {kiln.weight = "model.layers.0.self_attn.q_a_proj.weight_scale_inv"}
// kv_b_proj is read in BF16 (the runtime converts it at load).
// CHECK-SAME: tensor<256x160xbf16> {kiln.weight = "model.layers.0.self_attn.kv_b_proj.weight"}
// Routed experts: one [E, N, K] argument per projection.
// CHECK-SAME: tensor<16x192x256xf8E4M3FN> {kiln.weight = "model.layers.1.mlp.experts.{e}.gate_proj.weight"}
// CHECK-SAME: tensor<16x2x2xf32> {kiln.weight = "model.layers.1.mlp.experts.{e}.gate_proj.weight_scale_inv"}
// CHECK-SAME: tensor<256xbf16> {kiln.weight = "model.norm.weight"}
// CHECK-SAME: {kiln.weight = "lm_head.weight"}) -> tensor<8x129280xf32>

// Layer 0: attention, then the dense MLP.
// CHECK: %[[H:.*]] = kiln.embed %arg0, %arg3 : (tensor<8xi32>, tensor<129280x256xbf16>) -> tensor<8x256xf32>
// CHECK: %[[N:.*]] = kiln.rms_norm %[[H]], %{{.*}} {epsilon = 9.99999997E-7 : f32}
// CHECK: %[[XQ:.*]], %[[XS:.*]] = kiln.quantize %[[N]] tile_1x128
// CHECK: %[[QA:.*]] = kiln.scaled_matmul %[[XQ]], %[[XS]], {{.*}}gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, store = tma>{{.*}} -> tensor<8x192xbf16>
// CHECK: kiln.rms_norm %[[QA]]
// CHECK: kiln.quantize
// CHECK: %[[Q:.*]] = kiln.scaled_matmul {{.*}} -> tensor<8x192xbf16>
// CHECK: %[[KV:.*]] = kiln.scaled_matmul %[[XQ]], %[[XS]], {{.*}} -> tensor<8x176xbf16>
// CHECK: %[[LATENT_IN:.*]] = tensor.extract_slice %[[KV]][0, 0] [8, 160] [1, 1]
// CHECK: %[[LATENT:.*]] = kiln.rms_norm %[[LATENT_IN]], {{.*}} -> tensor<8x160xbf16>
// CHECK: %[[KPE:.*]] = tensor.extract_slice %[[KV]][0, 160] [8, 16] [1, 1]
// CHECK: %[[ATTN:.*]] = kiln.mla_attention %[[Q]], %[[LATENT]], %[[KPE]], %arg1, %{{.*}} {attention_factor = 1.000000e+00 : f32, heads = 4 : i64, layer = 0 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, rope_inv_freq = array<f32: 1.000000e+00, {{.*}}>, softmax_scale = {{.*}} : f32, v_head_dim = 32 : i64}
// CHECK: kiln.quantize %[[ATTN]]
// CHECK: %[[O:.*]] = kiln.scaled_matmul {{.*}} -> tensor<8x256xbf16>
// CHECK: %[[H1:.*]] = kiln.add %[[H]], %[[O]] : (tensor<8x256xf32>, tensor<8x256xbf16>) -> tensor<8x256xf32>
// CHECK: kiln.rms_norm %[[H1]]
// CHECK: %[[MQ:.*]], %[[MS:.*]] = kiln.quantize
// CHECK: %[[G:.*]] = kiln.scaled_matmul %[[MQ]], %[[MS]], {{.*}} -> tensor<8x448xbf16>
// CHECK: %[[U:.*]] = kiln.scaled_matmul %[[MQ]], %[[MS]], {{.*}} -> tensor<8x448xbf16>
// CHECK: %[[ACT:.*]] = kiln.swiglu %[[G]], %[[U]]
// CHECK: kiln.quantize %[[ACT]]
// CHECK: %[[D:.*]] = kiln.scaled_matmul {{.*}} -> tensor<8x256xbf16>
// CHECK: %[[H2:.*]] = kiln.add %[[H1]], %[[D]]

// Layer 1: the MoE MLP. The router reads the FP32 norm; experts and the
// shared expert read it quantized.
// CHECK: kiln.mla_attention {{.*}}layer = 1 : i64
// CHECK: %[[H3:.*]] = kiln.add %[[H2]]
// CHECK: %[[M:.*]] = kiln.rms_norm %[[H3]]
// CHECK: %[[LOGITS:.*]] = kiln.matmul %[[M]], %{{.*}} : (tensor<8x256xf32>, tensor<16x256xbf16>) -> tensor<8x16xf32>
// CHECK: %[[IDS:.*]], %[[W:.*]] = kiln.moe_route sigmoid %[[LOGITS]] bias %{{.*}} {n_group = 4 : i64, routed_scaling_factor = 2.500000e+00 : f32, top_k = 4 : i64, topk_group = 2 : i64}
// CHECK: %[[TQ:.*]], %[[TS:.*]] = kiln.quantize %[[M]] tile_1x128
// CHECK: %[[RQ:.*]], %[[RS:.*]], %[[OFF:.*]], %[[ROWS:.*]] = kiln.moe_permute %[[TQ]] scales %[[TS]] experts %[[IDS]] : {{.*}} -> (tensor<32x256xf8E4M3FN>, tensor<32x2xf32>, tensor<17xi32>, tensor<8x4xi32>)
// Grouped GEMMs: ceil(32 rows / 16 experts) = 2 rows per expert, a decode-sized M.
// CHECK: %[[EG:.*]] = kiln.grouped_scaled_matmul contiguous %[[RQ]], %[[RS]], %{{.*}}, %{{.*}}, %[[OFF]] {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = contiguous>}
// CHECK: %[[EU:.*]] = kiln.grouped_scaled_matmul contiguous %[[RQ]], %[[RS]]
// CHECK: kiln.swiglu %[[EG]], %[[EU]]
// CHECK: %[[ED:.*]] = kiln.grouped_scaled_matmul contiguous {{.*}}, %[[OFF]] {{.*}} -> tensor<32x256xbf16>
// CHECK: %[[ROUTED:.*]] = kiln.moe_unpermute %[[ED]] rows %[[ROWS]] weights %[[W]]
// CHECK: kiln.scaled_matmul %[[TQ]], %[[TS]]
// CHECK: kiln.scaled_matmul %[[TQ]], %[[TS]]
// CHECK: %[[SD:.*]] = kiln.scaled_matmul {{.*}} -> tensor<8x256xbf16>
// CHECK: %[[MOE:.*]] = kiln.add %[[ROUTED]], %[[SD]]
// CHECK: kiln.add %[[H3]], %[[MOE]]

// The head: final norm, each sequence's last row, lm_head in FP32.
// CHECK: %[[F:.*]] = kiln.rms_norm %{{.*}}, %arg77 {{.*}} -> tensor<8x256xf32>
// CHECK-NEXT: %[[LAST:.*]] = kiln.select_rows %[[F]], %arg2 : (tensor<8x256xf32>, tensor<8xi32>) -> tensor<8x256xf32>
// CHECK: %[[OUT:.*]] = kiln.matmul %[[LAST]], %{{.*}} : (tensor<8x256xf32>, tensor<129280x256xbf16>) -> tensor<8x129280xf32>
// CHECK: return %[[OUT]]

// Prefill: T = prefill_chunk = 256 tokens of up to S = 8 sequences; its
// GEMMs get the large-M configuration.
// CHECK-LABEL: func.func @prefill(
// CHECK-SAME: tensor<256xi32> {kiln.input = "tokens"}
// CHECK-SAME: tensor<8xi32> {kiln.input = "last_rows"}
// CHECK-SAME: -> tensor<8x129280xf32>
// CHECK: kiln.scaled_matmul {{.*}}gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, store = tma>{{.*}} -> tensor<256x192xbf16>
// CHECK: kiln.moe_permute {{.*}} -> (tensor<1024x256xf8E4M3FN>, tensor<1024x2xf32>, tensor<17xi32>, tensor<256x4xi32>)
