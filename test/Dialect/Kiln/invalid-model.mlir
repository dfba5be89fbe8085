// Every verifier rule of embed, add, select_rows, the two-operand swiglu,
// mla_attention, moe_permute and moe_unpermute.
// RUN: kiln-opt %s -split-input-file -verify-diagnostics

func.func @f(%t: tensor<8x1xi32>, %table: tensor<100x64xbf16>) {
  // expected-error @+1 {{'tokens' must have rank 1 [T], got 'tensor<8x1xi32>'}}
  %0 = kiln.embed %t, %table : (tensor<8x1xi32>, tensor<100x64xbf16>) -> tensor<8x64xf32>
  return
}

// -----

func.func @f(%t: tensor<8xi32>, %table: tensor<100xbf16>) {
  // expected-error @+1 {{'table' must have rank 2 [V, H], got 'tensor<100xbf16>'}}
  %0 = kiln.embed %t, %table : (tensor<8xi32>, tensor<100xbf16>) -> tensor<8x64xf32>
  return
}

// -----

func.func @f(%t: tensor<8xi32>, %table: tensor<100x64xbf16>) {
  // expected-error @+1 {{'result' must have shape [T, H] = 8x64, got 'tensor<8x32xf32>'}}
  %0 = kiln.embed %t, %table : (tensor<8xi32>, tensor<100x64xbf16>) -> tensor<8x32xf32>
  return
}

// -----

func.func @f(%a: tensor<8x64xf32>, %b: tensor<8x32xbf16>) {
  // expected-error @+1 {{'rhs' must have shape of 'lhs' = 8x64, got 'tensor<8x32xbf16>'}}
  %0 = kiln.add %a, %b : (tensor<8x64xf32>, tensor<8x32xbf16>) -> tensor<8x64xf32>
  return
}

// -----

func.func @f(%a: tensor<8x64xf32>, %b: tensor<8x64xbf16>) {
  // expected-error @+1 {{'result' must have shape of 'lhs' = 8x64, got 'tensor<4x64xf32>'}}
  %0 = kiln.add %a, %b : (tensor<8x64xf32>, tensor<8x64xbf16>) -> tensor<4x64xf32>
  return
}

// -----

func.func @f(%x: tensor<8xf32>, %rows: tensor<2xi32>) {
  // expected-error @+1 {{'input' must have rank 2 [T, C], got 'tensor<8xf32>'}}
  %0 = kiln.select_rows %x, %rows : (tensor<8xf32>, tensor<2xi32>) -> tensor<2x1xf32>
  return
}

// -----

func.func @f(%x: tensor<8x64xf32>, %rows: tensor<2x1xi32>) {
  // expected-error @+1 {{'rows' must have rank 1 [S], got 'tensor<2x1xi32>'}}
  %0 = kiln.select_rows %x, %rows : (tensor<8x64xf32>, tensor<2x1xi32>) -> tensor<2x64xf32>
  return
}

// -----

func.func @f(%x: tensor<8x64xf32>, %rows: tensor<2xi32>) {
  // expected-error @+1 {{result element type 'bf16' must match the input's 'f32'}}
  %0 = kiln.select_rows %x, %rows : (tensor<8x64xf32>, tensor<2xi32>) -> tensor<2x64xbf16>
  return
}

// -----

func.func @f(%x: tensor<8x64xf32>, %rows: tensor<2xi32>) {
  // expected-error @+1 {{'result' must have shape [S, C] = 2x64, got 'tensor<8x64xf32>'}}
  %0 = kiln.select_rows %x, %rows : (tensor<8x64xf32>, tensor<2xi32>) -> tensor<8x64xf32>
  return
}

// -----

func.func @f(%g: tensor<8x64xbf16>, %u: tensor<8x32xbf16>) {
  // expected-error @+1 {{'up' must have shape of 'gate' = 8x64, got 'tensor<8x32xbf16>'}}
  %0 = kiln.swiglu %g, %u : tensor<8x64xbf16>, tensor<8x32xbf16> -> tensor<8x64xbf16>
  return
}

// -----

func.func @f(%g: tensor<8x64xbf16>, %u: tensor<8x64xbf16>) {
  // expected-error @+1 {{'result' must have shape of 'gate' = 8x64, got 'tensor<8x32xbf16>'}}
  %0 = kiln.swiglu %g, %u : tensor<8x64xbf16>, tensor<8x64xbf16> -> tensor<8x32xbf16>
  return
}

// -----

// The tiny model's attention shapes: 4 heads, nope 32, rope 16, v 32, latent 160.
func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<8xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{layer = -1 must not be negative}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = -1 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<8xi32>, tensor<256x160xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<8xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{needs heads >= 1, qk_nope_head_dim >= 0 and v_head_dim >= 1, got 0, 32, 32}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 0 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<8xi32>, tensor<256x160xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x188xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x15xbf16>, %p: tensor<8xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{qk_rope_head_dim = 15 must be positive and even (RoPE rotates pairs)}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 15 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x188xbf16>, tensor<8x160xbf16>, tensor<8x15xbf16>, tensor<8xi32>, tensor<256x160xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<8xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{'rope_inv_freq' has 4 frequencies; expected qk_rope_head_dim / 2 = 8}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<8xi32>, tensor<256x160xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<8xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{softmax_scale and attention_factor must be positive and finite, got 0}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.0 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<8xi32>, tensor<256x160xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<8x1xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{'positions' must have rank 1 [T], got 'tensor<8x1xi32>'}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<8x1xi32>, tensor<256x160xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<8xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{'q' must have shape [T, heads * (nope + rope)] = 8x144, got 'tensor<8x192xbf16>'}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 3 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<8xi32>, tensor<256x160xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<8xi32>, %w: tensor<256x128xbf16>) {
  // expected-error @+1 {{'kv_b' must have shape [heads * (nope + v), kv_lora_rank] = 256x160, got 'tensor<256x128xbf16>'}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<8xi32>, tensor<256x128xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<4xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{'positions' must have shape [T] = 8, got 'tensor<4xi32>'}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<4xi32>, tensor<256x160xbf16>) -> tensor<8x128xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x192xbf16>, %l: tensor<8x160xbf16>, %k: tensor<8x16xbf16>, %p: tensor<8xi32>, %w: tensor<256x160xbf16>) {
  // expected-error @+1 {{'result' must have shape [T, heads * v] = 8x128, got 'tensor<8x192xbf16>'}}
  %0 = kiln.mla_attention %q, %l, %k, %p, %w {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64, v_head_dim = 32 : i64, softmax_scale = 0.1 : f32, attention_factor = 1.0 : f32, rope_inv_freq = array<f32: 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0>} : (tensor<8x192xbf16>, tensor<8x160xbf16>, tensor<8x16xbf16>, tensor<8xi32>, tensor<256x160xbf16>) -> tensor<8x192xbf16>
  return
}

// -----

func.func @f(%q: tensor<8x256xf8E4M3FN>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{FP8 tokens need their 1x128 'token_scales' operand}}
  %0:3 = kiln.moe_permute %q experts %ids : (tensor<8x256xf8E4M3FN>, tensor<8x4xi32>) -> (tensor<32x256xf8E4M3FN>, tensor<17xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%x: tensor<8x256xbf16>, %s: tensor<8x2xf32>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{BF16 tokens take no 'token_scales'}}
  %0:4 = kiln.moe_permute %x scales %s experts %ids : (tensor<8x256xbf16>, tensor<8x2xf32>, tensor<8x4xi32>) -> (tensor<32x256xbf16>, tensor<32x2xf32>, tensor<17xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%q: tensor<8x256xf8E4M3FN>, %s: tensor<8x2xf32>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{'expert_scales' result must be present exactly when 'token_scales' is}}
  %0:3 = kiln.moe_permute %q scales %s experts %ids : (tensor<8x256xf8E4M3FN>, tensor<8x2xf32>, tensor<8x4xi32>) -> (tensor<32x256xf8E4M3FN>, tensor<17xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%q: tensor<8x256xf8E4M3FN>, %s: tensor<8x2xf32>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{'expert_tokens' element type 'bf16' must match the tokens' 'f8E4M3FN'}}
  %0:4 = kiln.moe_permute %q scales %s experts %ids : (tensor<8x256xf8E4M3FN>, tensor<8x2xf32>, tensor<8x4xi32>) -> (tensor<32x256xbf16>, tensor<32x2xf32>, tensor<17xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%q: tensor<8x256xf8E4M3FN>, %s: tensor<8x1xf32>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{'token_scales' must have shape [T, ceil(H/128)] = 8x2, got 'tensor<8x1xf32>'}}
  %0:4 = kiln.moe_permute %q scales %s experts %ids : (tensor<8x256xf8E4M3FN>, tensor<8x1xf32>, tensor<8x4xi32>) -> (tensor<32x256xf8E4M3FN>, tensor<32x2xf32>, tensor<17xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%x: tensor<8x256xbf16>, %ids: tensor<4x4xi32>) {
  // expected-error @+1 {{'expert_ids' must have shape [T, top_k] = 8x4, got 'tensor<4x4xi32>'}}
  %0:3 = kiln.moe_permute %x experts %ids : (tensor<8x256xbf16>, tensor<4x4xi32>) -> (tensor<32x256xbf16>, tensor<17xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%x: tensor<8x256xbf16>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{'expert_tokens' must have shape [T * top_k, H] = 32x256, got 'tensor<8x256xbf16>'}}
  %0:3 = kiln.moe_permute %x experts %ids : (tensor<8x256xbf16>, tensor<8x4xi32>) -> (tensor<8x256xbf16>, tensor<17xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%q: tensor<8x256xf8E4M3FN>, %s: tensor<8x2xf32>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{'expert_scales' must have shape [T * top_k, ceil(H/128)] = 32x2, got 'tensor<8x2xf32>'}}
  %0:4 = kiln.moe_permute %q scales %s experts %ids : (tensor<8x256xf8E4M3FN>, tensor<8x2xf32>, tensor<8x4xi32>) -> (tensor<32x256xf8E4M3FN>, tensor<8x2xf32>, tensor<17xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%x: tensor<8x256xbf16>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{'offsets' has 1 entries; expected E+1 for E >= 1 experts}}
  %0:3 = kiln.moe_permute %x experts %ids : (tensor<8x256xbf16>, tensor<8x4xi32>) -> (tensor<32x256xbf16>, tensor<1xi32>, tensor<8x4xi32>)
  return
}

// -----

func.func @f(%x: tensor<8x256xbf16>, %ids: tensor<8x4xi32>) {
  // expected-error @+1 {{'rows' must have shape of 'expert_ids' = 8x4, got 'tensor<32xi32>'}}
  %0:3 = kiln.moe_permute %x experts %ids : (tensor<8x256xbf16>, tensor<8x4xi32>) -> (tensor<32x256xbf16>, tensor<17xi32>, tensor<32xi32>)
  return
}

// -----

func.func @f(%y: tensor<32x256xbf16>, %rows: tensor<8x4xi32>, %w: tensor<8x2xf32>) {
  // expected-error @+1 {{'weights' must have shape of 'rows' = 8x4, got 'tensor<8x2xf32>'}}
  %0 = kiln.moe_unpermute %y rows %rows weights %w : (tensor<32x256xbf16>, tensor<8x4xi32>, tensor<8x2xf32>) -> tensor<8x256xf32>
  return
}

// -----

func.func @f(%y: tensor<16x256xbf16>, %rows: tensor<8x4xi32>, %w: tensor<8x4xf32>) {
  // expected-error @+1 {{'expert_outputs' has 16 rows; expected T * top_k = 32}}
  %0 = kiln.moe_unpermute %y rows %rows weights %w : (tensor<16x256xbf16>, tensor<8x4xi32>, tensor<8x4xf32>) -> tensor<8x256xf32>
  return
}

// -----

func.func @f(%y: tensor<32x256xbf16>, %rows: tensor<8x4xi32>, %w: tensor<8x4xf32>) {
  // expected-error @+1 {{'result' must have shape [T, H] = 8x256, got 'tensor<8x128xf32>'}}
  %0 = kiln.moe_unpermute %y rows %rows weights %w : (tensor<32x256xbf16>, tensor<8x4xi32>, tensor<8x4xf32>) -> tensor<8x128xf32>
  return
}

// -----

func.func @f(%y: tensor<32x256xbf16>, %rows: tensor<8xi32>, %w: tensor<8x4xf32>) {
  // expected-error @+1 {{'rows' must have rank 2 [T, top_k], got 'tensor<8xi32>'}}
  %0 = kiln.moe_unpermute %y rows %rows weights %w : (tensor<32x256xbf16>, tensor<8xi32>, tensor<8x4xf32>) -> tensor<8x256xf32>
  return
}
