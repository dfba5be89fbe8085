// Every verifier rule of moe_route, moe_dispatch and moe_combine.
// RUN: kiln-opt %s -split-input-file -verify-diagnostics

func.func @f(%l: tensor<256xf32>) {
  // expected-error @+1 {{'logits' must have rank 2 [T, E], got 'tensor<256xf32>'}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32} : (tensor<256xf32>) -> (tensor<8xi32>, tensor<8xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x?xf32>) {
  // expected-error @+1 {{'logits' needs a static expert dimension E}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32} : (tensor<?x?xf32>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x256xbf16>) {
  // expected-error @+1 {{operand #0 must be ranked tensor of 32-bit float values, but got 'tensor<?x256xbf16>'}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32} : (tensor<?x256xbf16>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x256xf32>) {
  // expected-error @+1 {{top_k = 0 must be in [1, 256] (E)}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 0, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32} : (tensor<?x256xf32>) -> (tensor<?x0xi32>, tensor<?x0xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x256xf32>) {
  // expected-error @+1 {{n_group = 3 must be positive and divide E = 256}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 3, topk_group = 2, routed_scaling_factor = 2.5 : f32} : (tensor<?x256xf32>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x256xf32>) {
  // expected-error @+1 {{topk_group = 9 must be in [1, 8] (n_group)}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 8, topk_group = 9, routed_scaling_factor = 2.5 : f32} : (tensor<?x256xf32>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x8xf32>, %b: tensor<8xf32>) {
  // expected-error @+1 {{groups of 1 expert cannot be scored by their top-2 sum; need at least 2 experts per group}}
  %i, %w = kiln.moe_route sigmoid %l bias %b {top_k = 2, n_group = 8, topk_group = 4, routed_scaling_factor = 1.0 : f32} : (tensor<?x8xf32>, tensor<8xf32>) -> (tensor<?x2xi32>, tensor<?x2xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x256xf32>) {
  // expected-error @+1 {{top_k = 80 exceeds the 32 experts in the topk_group = 1 kept groups}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 80, n_group = 8, topk_group = 1, routed_scaling_factor = 2.5 : f32} : (tensor<?x256xf32>) -> (tensor<?x80xi32>, tensor<?x80xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x256xf32>) {
  // expected-error @+1 {{routed_scaling_factor must be positive and finite, got -2.5}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = -2.5 : f32} : (tensor<?x256xf32>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<?x256xf32>, %b: tensor<128xf32>) {
  // expected-error @+1 {{'bias' must have shape [E] = 256, got 'tensor<128xf32>'}}
  %i, %w = kiln.moe_route sigmoid %l bias %b {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32} : (tensor<?x256xf32>, tensor<128xf32>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<16x256xf32>) {
  // expected-error @+1 {{'expert_ids' must have shape [T, top_k] = 16x8, got 'tensor<16x6xi32>'}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32} : (tensor<16x256xf32>) -> (tensor<16x6xi32>, tensor<16x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<16x256xf32>) {
  // expected-error @+1 {{'expert_weights' must have shape [T, top_k] = 16x8, got 'tensor<8x8xf32>'}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32} : (tensor<16x256xf32>) -> (tensor<16x8xi32>, tensor<8x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<16x256xf32>) {
  // expected-error @+1 {{requires attribute 'routed_scaling_factor'}}
  %i, %w = kiln.moe_route sigmoid %l {top_k = 8, n_group = 8, topk_group = 4} : (tensor<16x256xf32>) -> (tensor<16x8xi32>, tensor<16x8xf32>)
  return
}

// -----

//===----------------------------------------------------------------------===//
// moe_dispatch
//===----------------------------------------------------------------------===//

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<7168xf8E4M3FN>, %s: tensor<56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'tokens' must have rank 2 [T, H], got 'tensor<7168xf8E4M3FN>'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<7168xf8E4M3FN>, tensor<56xf32>, tensor<128x8xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32x64x56xf32>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{FP8 tokens need their 1x128 'token_scales' operand}}
  %t, %n, %src = kiln.moe_dispatch masked %q experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x8xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%x: tensor<128x7168xbf16>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{BF16 tokens take no 'token_scales'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %x scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xbf16>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<32x64x7168xbf16>, tensor<32x64x56xf32>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'expert_scales' result must be present exactly when 'token_scales' is}}
  %t, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'expert_tokens' element type 'bf16' must match the tokens' 'f8E4M3FN'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<32x64x7168xbf16>, tensor<32x64x56xf32>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x28xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'token_scales' must have shape [T, ceil(H/128)] = 128x56, got 'tensor<128x28xf32>'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x28xf32>, tensor<128x8xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32x64x56xf32>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<1024xi32>) {
  // expected-error @+1 {{'expert_ids' must have rank 2 [T, top_k], got 'tensor<1024xi32>'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<1024xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32x64x56xf32>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<64x8xi32>) {
  // expected-error @+1 {{'expert_ids' has 64 rows for 128 tokens}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<64x8xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32x64x56xf32>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 2, experts = 4, slots_per_rank = 2>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'expert_ids' has top_k = 8; expected 1 to 4 (experts)}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<2x64x7168xf8E4M3FN>, tensor<2x64x56xf32>, tensor<2xi32>, tensor<2x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'expert_tokens' must have rank 3 [S, C, H] in the masked layout, got 'tensor<2048x7168xf8E4M3FN>'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<2048x7168xf8E4M3FN>, tensor<2048x56xf32>, tensor<32xi32>, tensor<2048xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'expert_tokens' has 256 expert slots; the expert-parallel group has slots_per_rank = 32}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<256x64x7168xf8E4M3FN>, tensor<256x64x56xf32>, tensor<256xi32>, tensor<256x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'expert_tokens' must have shape [S, C, H] = 32x64x7168, got 'tensor<32x64x2048xf8E4M3FN>'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<32x64x2048xf8E4M3FN>, tensor<32x64x56xf32>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'source' must have shape [S, C] = 32x64, got 'tensor<32x128xi32>'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32x64x56xf32>, tensor<32xi32>, tensor<32x128xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'expert_scales' must have shape [S, C, ceil(H/128)] = 32x64x56, got 'tensor<32x56xf32>'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32x56xf32>, tensor<32xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>, %ids: tensor<128x8xi32>) {
  // expected-error @+1 {{'group_sizes' must have shape [S] (row counts) = 32, got 'tensor<33xi32>'}}
  %t, %ts, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<32x64x7168xf8E4M3FN>, tensor<32x64x56xf32>, tensor<33xi32>, tensor<32x64xi32>)
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%x: tensor<?x7168xbf16>, %ids: tensor<?x8xi32>) {
  // expected-error @+1 {{'group_sizes' must have shape [S+1] (row offsets) = 33, got 'tensor<32xi32>'}}
  %t, %n, %src = kiln.moe_dispatch contiguous %x experts %ids {parallel = #ep}
      : (tensor<?x7168xbf16>, tensor<?x8xi32>) -> (tensor<?x7168xbf16>, tensor<32xi32>, tensor<?xi32>)
  return
}

// -----

func.func @f(%x: tensor<?x7168xbf16>, %ids: tensor<?x8xi32>) {
  // expected-error @+1 {{requires attribute 'parallel'}}
  %t, %n, %src = kiln.moe_dispatch contiguous %x experts %ids
      : (tensor<?x7168xbf16>, tensor<?x8xi32>) -> (tensor<?x7168xbf16>, tensor<33xi32>, tensor<?xi32>)
  return
}

// -----

func.func @f(%x: tensor<?x7168xbf16>, %ids: tensor<?x8xi32>) {
  // expected-error @+1 {{attribute 'parallel' failed to satisfy constraint}}
  %t, %n, %src = kiln.moe_dispatch contiguous %x experts %ids {parallel = 8 : i64}
      : (tensor<?x7168xbf16>, tensor<?x8xi32>) -> (tensor<?x7168xbf16>, tensor<33xi32>, tensor<?xi32>)
  return
}

// -----

//===----------------------------------------------------------------------===//
// moe_combine
//===----------------------------------------------------------------------===//

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%o: tensor<32x64x7168xbf16>, %src: tensor<32x64xi32>, %w: tensor<128x8xf32>) {
  // expected-error @+1 {{'result' must have rank 2 [T, H], got 'tensor<128x8x7168xbf16>'}}
  %y = kiln.moe_combine masked %o source %src weights %w {parallel = #ep}
      : (tensor<32x64x7168xbf16>, tensor<32x64xi32>, tensor<128x8xf32>) -> tensor<128x8x7168xbf16>
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%o: tensor<32x64x7168xbf16>, %src: tensor<32x64xi32>, %w: tensor<64x8xf32>) {
  // expected-error @+1 {{'expert_weights' has 64 rows for 128 tokens}}
  %y = kiln.moe_combine masked %o source %src weights %w {parallel = #ep}
      : (tensor<32x64x7168xbf16>, tensor<32x64xi32>, tensor<64x8xf32>) -> tensor<128x7168xbf16>
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%o: tensor<32x64x7168xbf16>, %src: tensor<2048xi32>, %w: tensor<128x8xf32>) {
  // expected-error @+1 {{'expert_outputs' must have rank 2 [R, H] in the contiguous layout, got 'tensor<32x64x7168xbf16>'}}
  %y = kiln.moe_combine contiguous %o source %src weights %w {parallel = #ep}
      : (tensor<32x64x7168xbf16>, tensor<2048xi32>, tensor<128x8xf32>) -> tensor<128x7168xbf16>
  return
}

// -----

#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
func.func @f(%o: tensor<2048x7168xbf16>, %src: tensor<2048xi32>, %w: tensor<128x8xf32>) {
  // expected-error @+1 {{'expert_outputs' must have shape [R, H] = 2048x2048, got 'tensor<2048x7168xbf16>'}}
  %y = kiln.moe_combine contiguous %o source %src weights %w {parallel = #ep}
      : (tensor<2048x7168xbf16>, tensor<2048xi32>, tensor<128x8xf32>) -> tensor<128x2048xbf16>
  return
}
