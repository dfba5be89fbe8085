// The plain kernels' tile order: bands of tile rows, M fastest inside a
// band; 8 tile rows for 128-wide tiles, 16 for the 192- and 256-wide tiles
// of the M = 4096 picks (a wave then spans half of a 4096-wide product's
// columns instead of all of B; gemm-kernels.md "Session 22").
// RUN: kiln-opt %s --split-input-file --kiln-emit-gemm-kernels | FileCheck %s

// CHECK-LABEL: func.func @narrow
// CHECK: llvm.func @kiln_gemm_fp8_m128n128s4c2(
// CHECK: %[[BAND:.*]] = arith.minui %{{.*}}, %c8_i32 : i32
// CHECK-NEXT: arith.remui %{{.*}}, %[[BAND]] : i32
func.func @narrow(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<4096x7168xf8E4M3FN>, %bs: tensor<32x56xf32>) -> tensor<?x4096xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2>} : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>) -> tensor<?x4096xbf16>
  return %0 : tensor<?x4096xbf16>
}

// -----

// CHECK-LABEL: func.func @wide
// CHECK: llvm.func @kiln_gemm_fp8_m128n192s4c2(
// CHECK: %[[BAND:.*]] = arith.minui %{{.*}}, %c16_i32 : i32
// CHECK-NEXT: arith.remui %{{.*}}, %[[BAND]] : i32
func.func @wide(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<4096x7168xf8E4M3FN>, %bs: tensor<32x56xf32>) -> tensor<?x4096xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2>} : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>) -> tensor<?x4096xbf16>
  return %0 : tensor<?x4096xbf16>
}

// -----

// A 2-block cluster's unit is two tile rows: 8 unit rows are 16 tile rows.
// CHECK-LABEL: func.func @widest
// CHECK: llvm.func @kiln_gemm_fp8_m128n256s4c2x2(
// CHECK: %[[BAND:.*]] = arith.minui %{{.*}}, %c8_i32 : i32
// CHECK-NEXT: arith.remui %{{.*}}, %[[BAND]] : i32
func.func @widest(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<4096x7168xf8E4M3FN>, %bs: tensor<32x56xf32>) -> tensor<?x4096xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 256, stages = 4, consumers = 2, cluster_m = 2>} : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>) -> tensor<?x4096xbf16>
  return %0 : tensor<?x4096xbf16>
}
