// RUN: kiln-opt %s --kiln-select-gemm-config | FileCheck %s

// Decode-sized M: one consumer warpgroup, 64-wide N tiles, an 8-stage ring.
// 33 tiles on 132 SMs: split-K in 4 slices of 14 K blocks fills every SM.
// CHECK-LABEL: func.func @decode
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 4>}
func.func @decode(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<64x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xbf16>
  return %0 : tensor<64x2112xbf16>
}

// 384 tiles already fill the SMs: no split (split_k = 1 is not printed).
// CHECK-LABEL: func.func @decode_wide
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1>}
func.func @decode_wide(%a: tensor<64x1536xf8E4M3FN>, %as: tensor<64x12xf32>, %b: tensor<24576x1536xf8E4M3FN>, %bs: tensor<192x12xf32>) -> tensor<64x24576xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x1536xf8E4M3FN>, tensor<64x12xf32>, tensor<24576x1536xf8E4M3FN>, tensor<192x12xf32>) -> tensor<64x24576xbf16>
  return %0 : tensor<64x24576xbf16>
}

// M <= 128: two consumers on 128x64 tiles (the weights are read once); 64
// tiles, so two slices of 28 K blocks.
// CHECK-LABEL: func.func @small
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 8, consumers = 2, split_k = 2>}
func.func @small(%a: tensor<128x7168xf8E4M3FN>, %as: tensor<128x56xf32>, %b: tensor<4096x7168xf8E4M3FN>, %bs: tensor<32x56xf32>) -> tensor<128x4096xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>) -> tensor<128x4096xbf16>
  return %0 : tensor<128x4096xbf16>
}

// Slices of fewer than 4 K blocks are not worth their reduction.
// CHECK-LABEL: func.func @short_k
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1>}
func.func @short_k(%a: tensor<64x512xf8E4M3FN>, %as: tensor<64x4xf32>, %b: tensor<2112x512xf8E4M3FN>, %bs: tensor<17x4xf32>) -> tensor<64x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x512xf8E4M3FN>, tensor<64x4xf32>, tensor<2112x512xf8E4M3FN>, tensor<17x4xf32>) -> tensor<64x2112xbf16>
  return %0 : tensor<64x2112xbf16>
}

// Unknown or large M: two consumers, 128x128 tiles, as many stages as fit.
// CHECK-LABEL: func.func @prefill
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2>}
func.func @prefill(%a: tensor<?x1536xf8E4M3FN>, %as: tensor<?x12xf32>, %b: tensor<24576x1536xf8E4M3FN>, %bs: tensor<192x12xf32>) -> tensor<?x24576xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<?x1536xf8E4M3FN>, tensor<?x12xf32>, tensor<24576x1536xf8E4M3FN>, tensor<192x12xf32>) -> tensor<?x24576xbf16>
  return %0 : tensor<?x24576xbf16>
}

// A configuration already chosen (by hand or by a search) is kept, split_k
// included.
// CHECK-LABEL: func.func @chosen
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 4, consumers = 2, split_k = 3>
func.func @chosen(%a: tensor<4096x512xf8E4M3FN>, %as: tensor<4096x4xf32>, %b: tensor<32768x512xf8E4M3FN>, %bs: tensor<256x4xf32>) -> tensor<4096x32768xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 4, consumers = 2, split_k = 3>} : (tensor<4096x512xf8E4M3FN>, tensor<4096x4xf32>, tensor<32768x512xf8E4M3FN>, tensor<256x4xf32>) -> tensor<4096x32768xbf16>
  return %0 : tensor<4096x32768xbf16>
}
