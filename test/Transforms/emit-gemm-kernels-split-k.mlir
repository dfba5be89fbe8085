// Split-K (gemm-abi.md "Split-K"): work units of (tile, K slice), FP32
// partials in a workspace, tagged with the record's use parity; the last
// warp to arrive sums them.
// RUN: kiln-opt %s --kiln-emit-gemm-kernels | FileCheck %s

// CHECK: kiln.scaled_matmul {{.*}}kernel = @kiln_kernels::@kiln_gemm_fp8_m64n64s8c1k4
// The workspace follows K.
// CHECK: llvm.func @kiln_gemm_fp8_m64n64s8c1k4({{.*}}: i32, %{{.*}}: i32, %{{.*}}: i32, %{{.*}}: !llvm.ptr<1>)
// CHECK-SAME: kiln.gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 4>
// The producer walks (tile, slice) units, tiles x 4 of them, loading the
// slice's K blocks only: [s * numKB / 4, (s + 1) * numKB / 4).
// CHECK: nvvm.setmaxregister decrease 40
// CHECK: arith.divui %{{.*}}, %{{.*}} : i32
// CHECK: arith.remui
// CHECK: scf.for
// CHECK: nvvm.cp.async.bulk.tensor.shared.cluster.global
// The consumers walk the same units. A slice may be empty (numKB < 4):
// the scales loaded ahead are clamped to its first block, not to
// kbEnd - 1, so every index stays inside the scales.
// CHECK: nvvm.setmaxregister increase 232
// CHECK: scf.for
// CHECK: %[[LASTRAW:.*]] = arith.subi %{{.*}}, %c1_i32{{.*}} : i32
// CHECK: arith.maxsi %[[LASTRAW]], %{{.*}} : i32
// CHECK-COUNT-4: nvvm.wgmma.mma_async
// Partial: 8 quads of 16 bytes per thread, each word's lowest bit the
// tag bit, then a warp barrier and one atomic arrival per warp (no fence),
// broadcast to the warp.
// CHECK: arith.ori %{{.*}}, %[[TAGBIT:.*]] : i32
// CHECK-COUNT-8: llvm.store volatile %{{.*}}, %{{.*}} {alignment = 16 : i64} : vector<4xi32>, !llvm.ptr<1>
// CHECK-NOT: llvm.fence
// CHECK: nvvm.bar.warp.sync
// CHECK: llvm.atomicrmw add %{{.*}}, %{{.*}} syncscope("device") monotonic : !llvm.ptr<1>, i32
// CHECK: nvvm.shfl.sync idx
// The last warp polls the other 3 slots until every word carries the tag
// bit, resets its counter, advances the tag word, sums the 4 slices in
// order (its own from registers) and stores BF16.
// CHECK: scf.if
// CHECK: scf.while
// CHECK-COUNT-3: llvm.load volatile %{{.*}} {alignment = 16 : i64} : !llvm.ptr<1> -> vector<4xi32>
// CHECK: scf.condition
// CHECK: llvm.store %{{.*}}, %{{.*}} : i32, !llvm.ptr<1>
// CHECK: llvm.store volatile %{{.*}}, %{{.*}} : i32, !llvm.ptr<1>
// CHECK: arith.truncf %{{.*}} : vector<2xf32> to vector<2xbf16>
// CHECK: llvm.store %{{.*}}, %{{.*}} {alignment = 16 : i64} : vector<8xbf16>, !llvm.ptr<1>
func.func @gemm(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<64x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 4>} : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xbf16>
  return %0 : tensor<64x2112xbf16>
}

// The pipelined loop of 128-wide tiles (two consumers) issues a unit's first
// block before its loop: an empty slice skips it all and contributes a zero
// partial.
// CHECK: llvm.func @kiln_gemm_fp8_m128n128s4c2k2(
// CHECK: nvvm.setmaxregister increase 232
// CHECK: %[[HAS:.*]] = arith.cmpi ne, %{{.*}}, %c0_i32{{.*}} : i32
// CHECK: scf.if %[[HAS]] -> (!llvm.struct<(
// CHECK: nvvm.wgmma.mma_async
func.func @pipelined_split(%a: tensor<300x7168xf8E4M3FN>, %as: tensor<300x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<300x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split_k = 2>} : (tensor<300x7168xf8E4M3FN>, tensor<300x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<300x2112xbf16>
  return %0 : tensor<300x2112xbf16>
}
