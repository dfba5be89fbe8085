// Round trip of the FP8 quantize and matmul ops, in the custom and the generic
// form.
// RUN: kiln-opt %s | kiln-opt | FileCheck %s
// RUN: kiln-opt %s --mlir-print-op-generic | kiln-opt | FileCheck %s

// CHECK-LABEL: func.func @quantize_activations
func.func @quantize_activations(%x: tensor<64x7168xbf16>, %y: tensor<?x300xf32>)
    -> (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<?x300xf8E4M3FN>, tensor<?x3xf32>) {
  // CHECK: kiln.quantize %{{.*}} tile_1x128 : tensor<64x7168xbf16> -> tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>
  %q, %s = kiln.quantize %x tile_1x128 : tensor<64x7168xbf16> -> tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>
  // A ragged last tile: 300 columns need ceil(300/128) = 3 scales.
  // CHECK: kiln.quantize %{{.*}} tile_1x128 : tensor<?x300xf32> -> tensor<?x300xf8E4M3FN>, tensor<?x3xf32>
  %q2, %s2 = kiln.quantize %y tile_1x128 : tensor<?x300xf32> -> tensor<?x300xf8E4M3FN>, tensor<?x3xf32>
  return %q, %s, %q2, %s2 : tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<?x300xf8E4M3FN>, tensor<?x3xf32>
}

// CHECK-LABEL: func.func @quantize_weights
func.func @quantize_weights(%w: tensor<576x7168xbf16>, %e: tensor<8x4096x7168xf16>)
    -> (tensor<5x56xf32>, tensor<8x32x56xf32>) {
  // N = 576 is 4.5 blocks of 128: ceil-divided to 5.
  // CHECK: kiln.quantize %{{.*}} block_128x128 : tensor<576x7168xbf16> -> tensor<576x7168xf8E4M3FN>, tensor<5x56xf32>
  %q, %s = kiln.quantize %w block_128x128 : tensor<576x7168xbf16> -> tensor<576x7168xf8E4M3FN>, tensor<5x56xf32>
  // Leading dimensions (experts) are kept.
  // CHECK: kiln.quantize %{{.*}} block_128x128 : tensor<8x4096x7168xf16> -> tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>
  %eq, %es = kiln.quantize %e block_128x128 : tensor<8x4096x7168xf16> -> tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>
  return %s, %es : tensor<5x56xf32>, tensor<8x32x56xf32>
}

// CHECK-LABEL: func.func @scaled_matmul
func.func @scaled_matmul(%a: tensor<128x7168xf8E4M3FN>, %as: tensor<128x56xf32>,
                         %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>,
                         %c: tensor<?x512xf8E4M3FN>, %cs: tensor<?x4xf32>,
                         %d: tensor<32768x512xf8E4M3FN>, %ds: tensor<256x4xf32>)
    -> (tensor<128x2112xbf16>, tensor<?x32768xf32>) {
  // N = 2112 is not a multiple of 128: 17 row blocks of scales.
  // CHECK: kiln.scaled_matmul %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<128x2112xbf16>
  %0 = kiln.scaled_matmul %a, %as, %b, %bs
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<128x2112xbf16>
  // A dynamic M and an f32 result.
  // CHECK: kiln.scaled_matmul {{.*}} -> tensor<?x32768xf32>
  %1 = kiln.scaled_matmul %c, %cs, %d, %ds
      : (tensor<?x512xf8E4M3FN>, tensor<?x4xf32>, tensor<32768x512xf8E4M3FN>, tensor<256x4xf32>) -> tensor<?x32768xf32>
  return %0, %1 : tensor<128x2112xbf16>, tensor<?x32768xf32>
}

// CHECK-LABEL: func.func @grouped_contiguous
func.func @grouped_contiguous(%a: tensor<8192x7168xf8E4M3FN>, %as: tensor<8192x56xf32>,
                              %b: tensor<32x4096x7168xf8E4M3FN>, %bs: tensor<32x32x56xf32>,
                              %offsets: tensor<33xi32>) -> tensor<8192x4096xbf16> {
  // CHECK: kiln.grouped_scaled_matmul contiguous %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<8192x7168xf8E4M3FN>, tensor<8192x56xf32>, tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<33xi32>) -> tensor<8192x4096xbf16>
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %offsets
      : (tensor<8192x7168xf8E4M3FN>, tensor<8192x56xf32>, tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<33xi32>) -> tensor<8192x4096xbf16>
  return %0 : tensor<8192x4096xbf16>
}

// CHECK-LABEL: func.func @grouped_masked
func.func @grouped_masked(%a: tensor<32x256x2048xf8E4M3FN>, %as: tensor<32x256x16xf32>,
                          %b: tensor<32x7168x2048xf8E4M3FN>, %bs: tensor<32x56x16xf32>,
                          %counts: tensor<32xi32>) -> tensor<32x256x7168xbf16> {
  // CHECK: kiln.grouped_scaled_matmul masked %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<32x256x2048xf8E4M3FN>, tensor<32x256x16xf32>, tensor<32x7168x2048xf8E4M3FN>, tensor<32x56x16xf32>, tensor<32xi32>) -> tensor<32x256x7168xbf16>
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %counts
      : (tensor<32x256x2048xf8E4M3FN>, tensor<32x256x16xf32>, tensor<32x7168x2048xf8E4M3FN>, tensor<32x56x16xf32>, tensor<32xi32>) -> tensor<32x256x7168xbf16>
  return %0 : tensor<32x256x7168xbf16>
}

// CHECK-LABEL: func.func @dense
func.func @dense(%x: tensor<?x7168xbf16>, %gate: tensor<256x7168xbf16>, %norm: tensor<7168xbf16>,
                 %gate_up: tensor<?x4096xbf16>)
    -> (tensor<?x256xf32>, tensor<?x7168xbf16>, tensor<?x2048xbf16>) {
  // CHECK: kiln.matmul %{{.*}}, %{{.*}} : (tensor<?x7168xbf16>, tensor<256x7168xbf16>) -> tensor<?x256xf32>
  %logits = kiln.matmul %x, %gate : (tensor<?x7168xbf16>, tensor<256x7168xbf16>) -> tensor<?x256xf32>
  // CHECK: kiln.rms_norm %{{.*}}, %{{.*}} {epsilon = 9.99999997E-7 : f32} : (tensor<?x7168xbf16>, tensor<7168xbf16>) -> tensor<?x7168xbf16>
  %n = kiln.rms_norm %x, %norm {epsilon = 1.0e-6 : f32} : (tensor<?x7168xbf16>, tensor<7168xbf16>) -> tensor<?x7168xbf16>
  // CHECK: kiln.swiglu %{{.*}} : tensor<?x4096xbf16> -> tensor<?x2048xbf16>
  %h = kiln.swiglu %gate_up : tensor<?x4096xbf16> -> tensor<?x2048xbf16>
  return %logits, %n, %h : tensor<?x256xf32>, tensor<?x7168xbf16>, tensor<?x2048xbf16>
}
