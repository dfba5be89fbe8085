// Every verifier rule of the quantize, matmul and dense ops.
// RUN: kiln-opt %s -split-input-file -verify-diagnostics

func.func @f(%x: tensor<64x256xbf16>) {
  // expected-error @+1 {{'values' must have shape of 'input' = 64x256, got 'tensor<64x128xf8E4M3FN>'}}
  %q, %s = kiln.quantize %x tile_1x128 : tensor<64x256xbf16> -> tensor<64x128xf8E4M3FN>, tensor<64x2xf32>
  return
}

// -----

func.func @f(%x: tensor<64x256xbf16>) {
  // expected-error @+1 {{result #0 must be ranked tensor of f8E4M3FN type values, but got 'tensor<64x256xf8E5M2>'}}
  %q, %s = kiln.quantize %x tile_1x128 : tensor<64x256xbf16> -> tensor<64x256xf8E5M2>, tensor<64x2xf32>
  return
}

// -----

func.func @f(%x: tensor<bf16>) {
  // expected-error @+1 {{tile_1x128 quantization needs a tensor of rank >= 1}}
  %q, %s = kiln.quantize %x tile_1x128 : tensor<bf16> -> tensor<f8E4M3FN>, tensor<f32>
  return
}

// -----

func.func @f(%x: tensor<?x300xbf16>) {
  // expected-error @+1 {{'scales' must have shape [..., ceil(K/128)] = ?x3, got 'tensor<?x2xf32>'}}
  %q, %s = kiln.quantize %x tile_1x128 : tensor<?x300xbf16> -> tensor<?x300xf8E4M3FN>, tensor<?x2xf32>
  return
}

// -----

func.func @f(%x: tensor<7168xbf16>) {
  // expected-error @+1 {{block_128x128 quantization needs a tensor of rank >= 2 ([..., N, K]), got 'tensor<7168xbf16>'}}
  %q, %s = kiln.quantize %x block_128x128 : tensor<7168xbf16> -> tensor<7168xf8E4M3FN>, tensor<56xf32>
  return
}

// -----

func.func @f(%w: tensor<576x7168xbf16>) {
  // expected-error @+1 {{'scales' must have shape [..., ceil(N/128), ceil(K/128)] = 5x56, got 'tensor<4x56xf32>'}}
  %q, %s = kiln.quantize %w block_128x128 : tensor<576x7168xbf16> -> tensor<576x7168xf8E4M3FN>, tensor<4x56xf32>
  return
}

// -----

func.func @f(%a: tensor<2x64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) {
  // expected-error @+1 {{'a' must have rank 2 [M, K], got 'tensor<2x64x7168xf8E4M3FN>'}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<2x64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xbf16>
  return
}

// -----

func.func @f(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<7168xf8E4M3FN>, %bs: tensor<17x56xf32>) {
  // expected-error @+1 {{'b' must have rank 2 [N, K], got 'tensor<7168xf8E4M3FN>'}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xbf16>
  return
}

// -----

func.func @f(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x1536xf8E4M3FN>, %bs: tensor<17x12xf32>) {
  // expected-error @+1 {{contraction dimensions differ: 'a' has K = 7168, 'b' has K = 1536}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x1536xf8E4M3FN>, tensor<17x12xf32>) -> tensor<64x2112xbf16>
  return
}

// -----

func.func @f(%a: tensor<64x7000xf8E4M3FN>, %as: tensor<64x55xf32>, %b: tensor<?x?xf8E4M3FN>, %bs: tensor<17x55xf32>) {
  // expected-error @+1 {{contraction dimension K = 7000 must be a multiple of 16}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7000xf8E4M3FN>, tensor<64x55xf32>, tensor<?x?xf8E4M3FN>, tensor<17x55xf32>) -> tensor<64x2112xbf16>
  return
}

// -----

func.func @f(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<56x64xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) {
  // expected-error @+1 {{'a_scales' must have shape [M, K/128] = 64x56, got 'tensor<56x64xf32>'}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<56x64xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xbf16>
  return
}

// -----

// N = 2112 needs ceil(2112/128) = 17 row blocks of scales, not 16.
func.func @f(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<16x56xf32>) {
  // expected-error @+1 {{'b_scales' must have shape [ceil(N/128), K/128] = 17x56, got 'tensor<16x56xf32>'}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<16x56xf32>) -> tensor<64x2112xbf16>
  return
}

// -----

func.func @f(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) {
  // expected-error @+1 {{'result' must have shape [M, N] = 64x2112, got 'tensor<64x2048xbf16>'}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2048xbf16>
  return
}

// -----

func.func @f(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) {
  // expected-error @+1 {{result #0 must be ranked tensor of bfloat16 type or 32-bit float values, but got 'tensor<64x2112xf16>'}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xf16>
  return
}

// -----

func.func @f(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>) {
  // expected-error @+1 {{expected ','}}
  %0 = kiln.scaled_matmul %a, %as, %b : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>) -> tensor<64x2112xbf16>
  return
}

// -----

func.func @f(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) {
  // expected-error @+1 {{number of operands and types do not match: got 4 operands and 3 types}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>) -> tensor<64x2112xbf16>
  return
}

// -----

//===----------------------------------------------------------------------===//
// grouped_scaled_matmul
//===----------------------------------------------------------------------===//

func.func @f(%a: tensor<8x128x7168xf8E4M3FN>, %as: tensor<8x128x56xf32>, %b: tensor<4096x7168xf8E4M3FN>, %bs: tensor<32x56xf32>, %n: tensor<8xi32>) {
  // expected-error @+1 {{'b' must have rank 3 [G, N, K], got 'tensor<4096x7168xf8E4M3FN>'}}
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<8x128x7168xf8E4M3FN>, tensor<8x128x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>, tensor<8xi32>) -> tensor<8x128x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<1024x7168xf8E4M3FN>, %as: tensor<1024x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %n: tensor<8xi32>) {
  // expected-error @+1 {{'a' must have rank 3 [G, C, K] in the masked layout, got 'tensor<1024x7168xf8E4M3FN>'}}
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<1024x7168xf8E4M3FN>, tensor<1024x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<8xi32>) -> tensor<1024x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<8x128x7168xf8E4M3FN>, %as: tensor<8x128x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %n: tensor<9xi32>) {
  // expected-error @+1 {{'a' must have rank 2 [T, K] in the contiguous layout, got 'tensor<8x128x7168xf8E4M3FN>'}}
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %n : (tensor<8x128x7168xf8E4M3FN>, tensor<8x128x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<8x128x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<8x128x2048xf8E4M3FN>, %as: tensor<8x128x16xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %n: tensor<8xi32>) {
  // expected-error @+1 {{contraction dimensions differ: 'a' has K = 2048, 'b' has K = 7168}}
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<8x128x2048xf8E4M3FN>, tensor<8x128x16xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<8xi32>) -> tensor<8x128x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<4x128x7168xf8E4M3FN>, %as: tensor<4x128x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %n: tensor<8xi32>) {
  // expected-error @+1 {{group counts differ: 'a' has 4 groups, 'b' has 8}}
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<4x128x7168xf8E4M3FN>, tensor<4x128x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<8xi32>) -> tensor<4x128x4096xbf16>
  return
}

// -----

// G + 1 offsets must not overflow.
func.func @f(%a: tensor<4x128xf8E4M3FN>, %as: tensor<4x1xf32>, %b: tensor<9223372036854775807x1x128xf8E4M3FN>, %bs: tensor<9223372036854775807x1x1xf32>, %g: tensor<5xi32>) {
  // expected-error @+1 {{'b' has 9223372036854775807 groups; at most 2^31 - 1 fit i32 group sizes}}
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %g : (tensor<4x128xf8E4M3FN>, tensor<4x1xf32>, tensor<9223372036854775807x1x128xf8E4M3FN>, tensor<9223372036854775807x1x1xf32>, tensor<5xi32>) -> tensor<4x1xbf16>
  return
}

// -----

func.func @f(%a: tensor<8x128x7168xf8E4M3FN>, %as: tensor<8x128x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<32x56xf32>, %n: tensor<8xi32>) {
  // expected-error @+1 {{'b_scales' must have shape [G, ceil(N/128), K/128] = 8x32x56, got 'tensor<32x56xf32>'}}
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<8x128x7168xf8E4M3FN>, tensor<8x128x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<32x56xf32>, tensor<8xi32>) -> tensor<8x128x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<8x128x7168xf8E4M3FN>, %as: tensor<8x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %n: tensor<8xi32>) {
  // expected-error @+1 {{'a_scales' must have shape [G, C, K/128] = 8x128x56, got 'tensor<8x56xf32>'}}
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<8x128x7168xf8E4M3FN>, tensor<8x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<8xi32>) -> tensor<8x128x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<8x128x7168xf8E4M3FN>, %as: tensor<8x128x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %n: tensor<9xi32>) {
  // expected-error @+1 {{'groups' must have shape [G] (row counts) = 8, got 'tensor<9xi32>'}}
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<8x128x7168xf8E4M3FN>, tensor<8x128x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<8x128x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<8x128x7168xf8E4M3FN>, %as: tensor<8x128x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %n: tensor<8xi32>) {
  // expected-error @+1 {{'result' must have shape [G, C, N] = 8x128x4096, got 'tensor<1024x4096xbf16>'}}
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<8x128x7168xf8E4M3FN>, tensor<8x128x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<8xi32>) -> tensor<1024x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x57xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'a_scales' must have shape [T, K/128] = ?x56, got 'tensor<?x57xf32>'}}
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %off : (tensor<?x7168xf8E4M3FN>, tensor<?x57xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<?x4096xbf16>
  return
}

// -----

// Contiguous groups are G+1 offsets, not G counts.
func.func @f(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %off: tensor<8xi32>) {
  // expected-error @+1 {{'groups' must have shape [G+1] (row offsets) = 9, got 'tensor<8xi32>'}}
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %off : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<8xi32>) -> tensor<?x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'result' must have shape [T, N] = ?x4096, got 'tensor<?x2048xbf16>'}}
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %off : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<?x2048xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %off: tensor<9xi64>) {
  // expected-error @+1 {{operand #4 must be ranked tensor of 32-bit signless integer values, but got 'tensor<9xi64>'}}
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %off : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi64>) -> tensor<?x4096xbf16>
  return
}

// -----

func.func @f(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %off: tensor<9xi32>) {
  // expected-error @+1 {{expected string or keyword containing one of the following enum values for attribute 'layout' [contiguous, masked]}}
  %0 = kiln.grouped_scaled_matmul sorted %a, %as, %b, %bs, %off : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<?x4096xbf16>
  return
}

// -----

//===----------------------------------------------------------------------===//
// matmul, rms_norm, swiglu
//===----------------------------------------------------------------------===//

func.func @f(%x: tensor<7168xbf16>, %w: tensor<256x7168xbf16>) {
  // expected-error @+1 {{'a' must have rank 2 [M, K], got 'tensor<7168xbf16>'}}
  %0 = kiln.matmul %x, %w : (tensor<7168xbf16>, tensor<256x7168xbf16>) -> tensor<256xf32>
  return
}

// -----

func.func @f(%x: tensor<?x7168xbf16>, %w: tensor<7168x256xbf16>) {
  // expected-error @+1 {{contraction dimensions differ: 'a' has K = 7168, 'b' has K = 256}}
  %0 = kiln.matmul %x, %w : (tensor<?x7168xbf16>, tensor<7168x256xbf16>) -> tensor<?x7168xf32>
  return
}

// -----

func.func @f(%x: tensor<?x7168xbf16>, %w: tensor<256x7168xbf16>) {
  // expected-error @+1 {{'result' must have shape [M, N] = ?x256, got 'tensor<?x7168xf32>'}}
  %0 = kiln.matmul %x, %w : (tensor<?x7168xbf16>, tensor<256x7168xbf16>) -> tensor<?x7168xf32>
  return
}

// -----

func.func @f(%x: tensor<bf16>, %w: tensor<7168xbf16>) {
  // expected-error @+1 {{'input' must have rank >= 1}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-6 : f32} : (tensor<bf16>, tensor<7168xbf16>) -> tensor<bf16>
  return
}

// -----

func.func @f(%x: tensor<?x7168xbf16>, %w: tensor<1536xbf16>) {
  // expected-error @+1 {{'weight' must have shape [H] (the last dimension of 'input') = 7168, got 'tensor<1536xbf16>'}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-6 : f32} : (tensor<?x7168xbf16>, tensor<1536xbf16>) -> tensor<?x7168xbf16>
  return
}

// -----

func.func @f(%x: tensor<?x7168xbf16>, %w: tensor<7168xbf16>) {
  // expected-error @+1 {{'result' must have shape of 'input' = ?x7168, got 'tensor<?x1536xbf16>'}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-6 : f32} : (tensor<?x7168xbf16>, tensor<7168xbf16>) -> tensor<?x1536xbf16>
  return
}

// -----

func.func @f(%x: tensor<?x7168xbf16>, %w: tensor<7168xbf16>) {
  // expected-error @+1 {{epsilon must be positive and finite, got 0}}
  %0 = kiln.rms_norm %x, %w {epsilon = 0.0 : f32} : (tensor<?x7168xbf16>, tensor<7168xbf16>) -> tensor<?x7168xbf16>
  return
}

// -----

func.func @f(%x: tensor<?x7168xbf16>, %w: tensor<7168xbf16>) {
  // expected-error @+1 {{requires attribute 'epsilon'}}
  %0 = kiln.rms_norm %x, %w : (tensor<?x7168xbf16>, tensor<7168xbf16>) -> tensor<?x7168xbf16>
  return
}

// -----

func.func @f(%x: tensor<f32>) {
  // expected-error @+1 {{'gate' must have rank >= 1}}
  %0 = kiln.swiglu %x : tensor<f32> -> tensor<f32>
  return
}

// -----

func.func @f(%x: tensor<?x4095xbf16>) {
  // expected-error @+1 {{the last dimension of the fused gate/up input (4095) must be even: gate and up halves}}
  %0 = kiln.swiglu %x : tensor<?x4095xbf16> -> tensor<?x2047xbf16>
  return
}

// -----

func.func @f(%x: tensor<?x4096xbf16>) {
  // expected-error @+1 {{'result' must have shape of 'gate' with the last dimension halved = ?x2048, got 'tensor<?x4096xbf16>'}}
  %0 = kiln.swiglu %x : tensor<?x4096xbf16> -> tensor<?x4096xbf16>
  return
}
