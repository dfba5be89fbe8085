// RUN: kiln-opt %s --kiln-select-gemm-config | FileCheck %s

// Decode-sized M: one consumer warpgroup, 64-wide N tiles, an 8-stage ring.
// CHECK-LABEL: func.func @decode
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1>}
func.func @decode(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<64x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xbf16>
  return %0 : tensor<64x2112xbf16>
}

// Unknown or large M: two consumers, 128x128 tiles, as many stages as fit.
// CHECK-LABEL: func.func @prefill
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2>}
func.func @prefill(%a: tensor<?x1536xf8E4M3FN>, %as: tensor<?x12xf32>, %b: tensor<24576x1536xf8E4M3FN>, %bs: tensor<192x12xf32>) -> tensor<?x24576xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<?x1536xf8E4M3FN>, tensor<?x12xf32>, tensor<24576x1536xf8E4M3FN>, tensor<192x12xf32>) -> tensor<?x24576xbf16>
  return %0 : tensor<?x24576xbf16>
}

// A configuration already chosen (by hand or by a search) is kept.
// CHECK-LABEL: func.func @chosen
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 4, consumers = 2>
func.func @chosen(%a: tensor<4096x512xf8E4M3FN>, %as: tensor<4096x4xf32>, %b: tensor<32768x512xf8E4M3FN>, %bs: tensor<256x4xf32>) -> tensor<4096x32768xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 4, consumers = 2>} : (tensor<4096x512xf8E4M3FN>, tensor<4096x4xf32>, tensor<32768x512xf8E4M3FN>, tensor<256x4xf32>) -> tensor<4096x32768xbf16>
  return %0 : tensor<4096x32768xbf16>
}
