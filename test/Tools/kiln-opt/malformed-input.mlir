// Malformed input is rejected with a located diagnostic and exit code 1: never
// a crash. Parse errors, one per split.
// RUN: kiln-opt %s -split-input-file -verify-diagnostics

// expected-error @+1 {{custom op 'kiln.frobnicate' is unknown}}
%0 = kiln.frobnicate : () -> ()

// -----

func.func @f(%x: tensor<64x256xbf16>) {
  // expected-error @+1 {{'kiln.quantize' op requires a single operand}}
  %q:2 = "kiln.quantize"(%x, %x) <{granularity = 0 : i32}> : (tensor<64x256xbf16>, tensor<64x256xbf16>) -> (tensor<64x256xf8E4M3FN>, tensor<64x2xf32>)
  return
}

// -----

func.func @f(%x: tensor<64x256xbf16>) {
  // expected-error @+1 {{'kiln.quantize' op expected 2 results}}
  %q = "kiln.quantize"(%x) <{granularity = 0 : i32}> : (tensor<64x256xbf16>) -> tensor<64x256xf8E4M3FN>
  return
}

// -----

func.func @f(%x: tensor<64x256xbf16>) {
  // expected-error @+1 {{invalid properties {granularity = 7 : i32} for op kiln.quantize}}
  %q:2 = "kiln.quantize"(%x) <{granularity = 7 : i32}> : (tensor<64x256xbf16>) -> (tensor<64x256xf8E4M3FN>, tensor<64x2xf32>)
  return
}

// -----

func.func @f(%a: tensor<64x128xf8E4M3FN>, %s: tensor<64x1xf32>) {
  // expected-error @+1 {{'kiln.scaled_matmul' op expected 4 operands, but found 2}}
  %0 = "kiln.scaled_matmul"(%a, %s) : (tensor<64x128xf8E4M3FN>, tensor<64x1xf32>) -> tensor<64x64xbf16>
  return
}

// -----

func.func @f(%a: tensor<64x128xf8E4M3FN>, %s: tensor<64x1xf32>) {
  // expected-error @+1 {{'kiln.grouped_scaled_matmul' op expected 5 operands, but found 4}}
  %0 = "kiln.grouped_scaled_matmul"(%a, %s, %a, %s) <{layout = 0 : i32}> : (tensor<64x128xf8E4M3FN>, tensor<64x1xf32>, tensor<64x128xf8E4M3FN>, tensor<64x1xf32>) -> tensor<64x64xbf16>
  return
}

// -----

func.func @f(%a: tensor<4x128xbf16>) {
  // expected-error @+1 {{'kiln.matmul' op expected 2 operands, but found 1}}
  %0 = "kiln.matmul"(%a) : (tensor<4x128xbf16>) -> tensor<4x4xf32>
  return
}

// -----

func.func @f(%a: tensor<4x128xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op expected 2 operands, but found 1}}
  %0 = "kiln.rms_norm"(%a) <{epsilon = 1.0e-6 : f32}> : (tensor<4x128xbf16>) -> tensor<4x128xbf16>
  return
}

// -----

func.func @f(%a: tensor<4x128xbf16>) {
  // expected-error @+1 {{'kiln.swiglu' op requires one result}}
  %0:2 = "kiln.swiglu"(%a) : (tensor<4x128xbf16>) -> (tensor<4x64xbf16>, tensor<4x64xbf16>)
  return
}

// -----

func.func @f(%l: tensor<4x256xf32>) {
  // A keyword without its operand.
  // expected-error @+1 {{expected SSA operand}}
  %i, %w = kiln.moe_route sigmoid %l bias {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32} : (tensor<4x256xf32>) -> (tensor<4x8xi32>, tensor<4x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<4x256xf32>) {
  // expected-error @+1 {{'kiln.moe_route' op expected 2 results}}
  %i = "kiln.moe_route"(%l) <{scoring = 0 : i32, top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32}> : (tensor<4x256xf32>) -> tensor<4x8xi32>
  return
}

// -----

func.func @f(%x: tensor<4x128xbf16>) {
  // expected-error @+1 {{expected 'experts'}}
  %t, %n, %s = kiln.moe_dispatch contiguous %x {parallel = #kiln.expert_parallel<world_size = 1, experts = 2, slots_per_rank = 2>} : (tensor<4x128xbf16>) -> (tensor<4x128xbf16>, tensor<3xi32>, tensor<4xi32>)
  return
}

// -----

func.func @f(%x: tensor<4x128xbf16>, %s: tensor<4xi32>) {
  // expected-error @+1 {{expected 'weights'}}
  %y = kiln.moe_combine contiguous %x source %s : (tensor<4x128xbf16>, tensor<4xi32>) -> tensor<4x128xbf16>
  return
}

// -----

func.func @f(%x: tensor<4x128xbf16>) {
  // expected-error @+1 {{expected '{' to begin a region}}
  kiln.overlap %x, %x : (tensor<4x128xbf16>, tensor<4x128xbf16>) -> ()
  return
}

// -----

func.func @f() {
  // expected-error @+1 {{expected attribute value}}
  %a = kiln.stage compute : () -> () {
    kiln.yield
  }
  return
}

// -----

// A shape that does not fit in 64 bits.
// expected-error @+1 {{invalid dimension}}
func.func private @g(tensor<99999999999999999999x128xbf16>)
