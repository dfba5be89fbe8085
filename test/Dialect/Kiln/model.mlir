// Round trip of the ops a whole model step needs besides the matmuls and MoE
// routing: embedding, residual add, two-operand SwiGLU, MLA attention, the
// single-GPU permute/unpermute and the last-row selection.
// RUN: kiln-opt %s | kiln-opt | FileCheck %s
// RUN: kiln-opt %s --mlir-print-op-generic | kiln-opt | FileCheck %s

// CHECK-LABEL: func.func @embed_add_select
func.func @embed_add_select(%tokens: tensor<8xi32>, %table: tensor<129280x7168xbf16>,
                            %delta: tensor<8x7168xbf16>, %last: tensor<2xi32>)
    -> tensor<2x7168xf32> {
  // CHECK: kiln.embed %{{.*}}, %{{.*}} : (tensor<8xi32>, tensor<129280x7168xbf16>) -> tensor<8x7168xf32>
  %h = kiln.embed %tokens, %table : (tensor<8xi32>, tensor<129280x7168xbf16>) -> tensor<8x7168xf32>
  // Mixed precision: the FP32 residual stream plus a BF16 projection.
  // CHECK: kiln.add %{{.*}}, %{{.*}} : (tensor<8x7168xf32>, tensor<8x7168xbf16>) -> tensor<8x7168xf32>
  %r = kiln.add %h, %delta : (tensor<8x7168xf32>, tensor<8x7168xbf16>) -> tensor<8x7168xf32>
  // CHECK: kiln.select_rows %{{.*}}, %{{.*}} : (tensor<8x7168xf32>, tensor<2xi32>) -> tensor<2x7168xf32>
  %s = kiln.select_rows %r, %last : (tensor<8x7168xf32>, tensor<2xi32>) -> tensor<2x7168xf32>
  return %s : tensor<2x7168xf32>
}

// CHECK-LABEL: func.func @swiglu_forms
func.func @swiglu_forms(%g: tensor<?x2048xbf16>, %u: tensor<?x2048xbf16>, %gu: tensor<?x4096xbf16>)
    -> (tensor<?x2048xf32>, tensor<?x2048xbf16>) {
  // CHECK: kiln.swiglu %{{.*}}, %{{.*}} : tensor<?x2048xbf16>, tensor<?x2048xbf16> -> tensor<?x2048xf32>
  %a = kiln.swiglu %g, %u : tensor<?x2048xbf16>, tensor<?x2048xbf16> -> tensor<?x2048xf32>
  // CHECK: kiln.swiglu %{{.*}} : tensor<?x4096xbf16> -> tensor<?x2048xbf16>
  %b = kiln.swiglu %gu : tensor<?x4096xbf16> -> tensor<?x2048xbf16>
  return %a, %b : tensor<?x2048xf32>, tensor<?x2048xbf16>
}

// DeepSeek-V3's attention at decode: 128 heads, nope 128, rope 64, v 128,
// latent 512.
// CHECK-LABEL: func.func @attention
func.func @attention(%q: tensor<8x24576xbf16>, %latent: tensor<8x512xbf16>, %k_pe: tensor<8x64xbf16>,
                     %positions: tensor<8xi32>, %kv_b: tensor<32768x512xbf16>) -> tensor<8x16384xbf16> {
  // CHECK: kiln.mla_attention %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {attention_factor = 1.000000e+00 : f32, heads = 128 : i64, layer = 3 : i64, qk_nope_head_dim = 128 : i64, qk_rope_head_dim = 64 : i64, rope_inv_freq = array<f32: 1.000000e+00, 5.000000e-01
  // CHECK-SAME: softmax_scale = 1.250000e-01 : f32, v_head_dim = 128 : i64}
  // CHECK-SAME: -> tensor<8x16384xbf16>
  %o = kiln.mla_attention %q, %latent, %k_pe, %positions, %kv_b
      {layer = 3 : i64, heads = 128 : i64, qk_nope_head_dim = 128 : i64,
       qk_rope_head_dim = 64 : i64, v_head_dim = 128 : i64,
       softmax_scale = 0.125 : f32, attention_factor = 1.0 : f32,
       rope_inv_freq = array<f32: 1.0, 0.5, 0.25, 0.125, 1.0, 0.5, 0.25, 0.125,
                                  1.0, 0.5, 0.25, 0.125, 1.0, 0.5, 0.25, 0.125,
                                  1.0, 0.5, 0.25, 0.125, 1.0, 0.5, 0.25, 0.125,
                                  1.0, 0.5, 0.25, 0.125, 1.0, 0.5, 0.25, 0.125>}
      : (tensor<8x24576xbf16>, tensor<8x512xbf16>, tensor<8x64xbf16>, tensor<8xi32>, tensor<32768x512xbf16>)
      -> tensor<8x16384xbf16>
  return %o : tensor<8x16384xbf16>
}

// All 256 experts on one GPU: 8 tokens x top-8 = 64 routed rows.
// CHECK-LABEL: func.func @permute_unpermute
func.func @permute_unpermute(%q: tensor<8x7168xf8E4M3FN>, %s: tensor<8x56xf32>, %ids: tensor<8x8xi32>,
                             %w: tensor<8x8xf32>, %y: tensor<64x7168xbf16>, %x: tensor<8x7168xbf16>)
    -> (tensor<8x7168xf32>, tensor<64x7168xbf16>) {
  // CHECK: kiln.moe_permute %{{.*}} scales %{{.*}} experts %{{.*}} : (tensor<8x7168xf8E4M3FN>, tensor<8x56xf32>, tensor<8x8xi32>) -> (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<257xi32>, tensor<8x8xi32>)
  %xq, %xs, %offsets, %rows = kiln.moe_permute %q scales %s experts %ids
      : (tensor<8x7168xf8E4M3FN>, tensor<8x56xf32>, tensor<8x8xi32>)
      -> (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<257xi32>, tensor<8x8xi32>)
  // BF16 tokens travel without scales.
  // CHECK: kiln.moe_permute %{{.*}} experts %{{.*}} : (tensor<8x7168xbf16>, tensor<8x8xi32>) -> (tensor<64x7168xbf16>, tensor<257xi32>, tensor<8x8xi32>)
  %xb, %offsets2, %rows2 = kiln.moe_permute %x experts %ids
      : (tensor<8x7168xbf16>, tensor<8x8xi32>) -> (tensor<64x7168xbf16>, tensor<257xi32>, tensor<8x8xi32>)
  // CHECK: kiln.moe_unpermute %{{.*}} rows %{{.*}} weights %{{.*}} : (tensor<64x7168xbf16>, tensor<8x8xi32>, tensor<8x8xf32>) -> tensor<8x7168xf32>
  %out = kiln.moe_unpermute %y rows %rows weights %w
      : (tensor<64x7168xbf16>, tensor<8x8xi32>, tensor<8x8xf32>) -> tensor<8x7168xf32>
  return %out, %xb : tensor<8x7168xf32>, tensor<64x7168xbf16>
}

// K need not be a multiple of 128: the last block of K is partial (the tiny
// model's q_lora_rank is 192).
// CHECK-LABEL: func.func @partial_k
func.func @partial_k(%a: tensor<8x192xf8E4M3FN>, %as: tensor<8x2xf32>, %b: tensor<192x192xf8E4M3FN>,
                     %bs: tensor<2x2xf32>) -> tensor<8x192xbf16> {
  // CHECK: kiln.scaled_matmul {{.*}} -> tensor<8x192xbf16>
  %y = kiln.scaled_matmul %a, %as, %b, %bs
      : (tensor<8x192xf8E4M3FN>, tensor<8x2xf32>, tensor<192x192xf8E4M3FN>, tensor<2x2xf32>) -> tensor<8x192xbf16>
  return %y : tensor<8x192xbf16>
}
