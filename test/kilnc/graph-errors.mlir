// A hand-written graph that breaks the graph conventions or uses an op in a
// form no plan step implements: each error names the op or argument and its
// location.
// RUN: split-file %s %t
// RUN: not kilnc %t/unannotated.mlir --emit=plan -q 2>&1 | FileCheck %s --check-prefix=UNANNOTATED
// RUN: not kilnc %t/no-tokens.mlir --emit=plan -q 2>&1 | FileCheck %s --check-prefix=NO-TOKENS
// RUN: not kilnc %t/scales.mlir --emit=plan -q 2>&1 | FileCheck %s --check-prefix=SCALES
// RUN: not kilnc %t/masked.mlir --emit=plan -q 2>&1 | FileCheck %s --check-prefix=MASKED
// RUN: not kilnc %t/stored.mlir --emit=plan -q 2>&1 | FileCheck %s --check-prefix=STORED
// RUN: not kilnc %t/logits.mlir --emit=plan -q 2>&1 | FileCheck %s --check-prefix=LOGITS

// UNANNOTATED: unannotated.mlir:1:67: error: argument #1 of @decode ('tensor<100x64xbf16>') is neither a step input ('kiln.input') nor a weight ('kiln.weight')
// NO-TOKENS: no-tokens.mlir:1:1: error: step function @decode has no 'tokens' input (i32 [T], {kiln.input = "tokens"})
// SCALES: scales.mlir:6:8: error: 'kiln.scaled_matmul' op 'b_scales' must be the weight argument 'w.weight_scale_inv'
// MASKED: masked.mlir:7:8: error: 'kiln.grouped_scaled_matmul' op cannot be lowered to a launch plan: plans run grouped GEMMs in the contiguous layout
// STORED: stored.mlir:6:8: error: 'kiln.scaled_matmul' op weight 'w.weight' is stored as bf16 but read as f8e4m3; only conversions to bf16 or f32 happen at load
// LOGITS: logits.mlir:5:3: error: 'func.return' op the logits must be f32 [S, vocab] (one row per sequence); got 'tensor<4x64xf32>' with rows T

//--- unannotated.mlir
func.func @decode(%tokens: tensor<4xi32> {kiln.input = "tokens"}, %w: tensor<100x64xbf16>) -> tensor<4x64xf32> {
  %0 = kiln.embed %tokens, %w : (tensor<4xi32>, tensor<100x64xbf16>) -> tensor<4x64xf32>
  return %0 : tensor<4x64xf32>
}

//--- no-tokens.mlir
func.func @decode(%w: tensor<100x64xbf16> {kiln.weight = "embed"}) -> tensor<4x64xf32> {
  %0 = arith.constant dense<0.0> : tensor<4x64xf32>
  return %0 : tensor<4x64xf32>
}

//--- scales.mlir
func.func @decode(%tokens: tensor<4xi32> {kiln.input = "tokens"}, %table: tensor<100x128xbf16> {kiln.weight = "embed"},
                  %w: tensor<64x128xf8E4M3FN> {kiln.weight = "w.weight"},
                  %ws: tensor<1x1xf32> {kiln.weight = "w.scales"}) -> tensor<4x64xbf16> {
  %h = kiln.embed %tokens, %table : (tensor<4xi32>, tensor<100x128xbf16>) -> tensor<4x128xf32>
  %x, %s = kiln.quantize %h tile_1x128 : tensor<4x128xf32> -> tensor<4x128xf8E4M3FN>, tensor<4x1xf32>
  %0 = kiln.scaled_matmul %x, %s, %w, %ws : (tensor<4x128xf8E4M3FN>, tensor<4x1xf32>, tensor<64x128xf8E4M3FN>, tensor<1x1xf32>) -> tensor<4x64xbf16>
  return %0 : tensor<4x64xbf16>
}

//--- masked.mlir
func.func @decode(%tokens: tensor<4xi32> {kiln.input = "tokens"},
                  %x: tensor<2x4x128xf8E4M3FN> {kiln.weight = "x"},
                  %xs: tensor<2x4x1xf32> {kiln.weight = "xs"},
                  %w: tensor<2x64x128xf8E4M3FN> {kiln.weight = "e.{e}.weight"},
                  %ws: tensor<2x1x1xf32> {kiln.weight = "e.{e}.weight_scale_inv"},
                  %n: tensor<2xi32> {kiln.weight = "n"}) -> tensor<2x4x64xbf16> {
  %0 = kiln.grouped_scaled_matmul masked %x, %xs, %w, %ws, %n : (tensor<2x4x128xf8E4M3FN>, tensor<2x4x1xf32>, tensor<2x64x128xf8E4M3FN>, tensor<2x1x1xf32>, tensor<2xi32>) -> tensor<2x4x64xbf16>
  return %0 : tensor<2x4x64xbf16>
}

//--- stored.mlir
func.func @decode(%tokens: tensor<4xi32> {kiln.input = "tokens"}, %table: tensor<100x128xbf16> {kiln.weight = "embed"},
                  %w: tensor<64x128xf8E4M3FN> {kiln.weight = "w.weight", kiln.stored_dtype = "bf16"},
                  %ws: tensor<1x1xf32> {kiln.weight = "w.weight_scale_inv"}) -> tensor<4x64xbf16> {
  %h = kiln.embed %tokens, %table : (tensor<4xi32>, tensor<100x128xbf16>) -> tensor<4x128xf32>
  %x, %s = kiln.quantize %h tile_1x128 : tensor<4x128xf32> -> tensor<4x128xf8E4M3FN>, tensor<4x1xf32>
  %0 = kiln.scaled_matmul %x, %s, %w, %ws : (tensor<4x128xf8E4M3FN>, tensor<4x1xf32>, tensor<64x128xf8E4M3FN>, tensor<1x1xf32>) -> tensor<4x64xbf16>
  return %0 : tensor<4x64xbf16>
}

//--- logits.mlir
func.func @decode(%tokens: tensor<4xi32> {kiln.input = "tokens"}, %table: tensor<100x64xbf16> {kiln.weight = "embed"},
                  %head: tensor<64x64xbf16> {kiln.weight = "head"}) -> tensor<4x64xf32> {
  %h = kiln.embed %tokens, %table : (tensor<4xi32>, tensor<100x64xbf16>) -> tensor<4x64xf32>
  %0 = kiln.matmul %h, %head : (tensor<4x64xf32>, tensor<64x64xbf16>) -> tensor<4x64xf32>
  return %0 : tensor<4x64xf32>
}
