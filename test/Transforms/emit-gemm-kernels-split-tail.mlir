// The split tail (gemm-abi.md "Split tail"): whole waves of whole tiles, then
// the last partial wave's tiles split along K into split_k slices that
// reduce through the workspace; whole tiles store as a plain kernel does.
// RUN: kiln-opt %s --kiln-emit-gemm-kernels | FileCheck %s

// CHECK: llvm.func @kiln_gemm_fp8_m128n128s4c2k8t(
// CHECK-SAME: %{{.*}}: i32, %{{.*}}: i32, %{{.*}}: i32, %[[WS:.*]]: !llvm.ptr<1>)
// CHECK-SAME: split_k = 8, split = tail
// CHECK: %[[GRID:.*]] = nvvm.read.ptx.sreg.nctaid.x : i32
// The producer's schedule: numFull = (tiles / grid) * grid whole tiles,
// then 8 units per tail tile; a unit past numFull is a slice of tile
// numFull + (unit - numFull) / 8, the others run all K blocks.
// CHECK: %[[WAVES:.*]] = arith.divui %{{.*}}, %[[GRID]] : i32
// CHECK: %[[FULL:.*]] = arith.muli %[[WAVES]], %[[GRID]] : i32
// CHECK: scf.for %[[UNIT:.*]] = %{{.*}} to %{{.*}} step %[[GRID]] iter_args
// CHECK-NEXT: %[[SPLIT:.*]] = arith.cmpi uge, %[[UNIT]], %[[FULL]] : i32
// CHECK: arith.divui %{{.*}}, %c8_i32 : i32
// CHECK: %[[TILE:.*]] = arith.select %[[SPLIT]], %{{.*}}, %[[UNIT]] : i32
// CHECK: %[[SLICE:.*]] = arith.select %[[SPLIT]], %{{.*}}, %c0{{.*}} : i32
// CHECK: %[[BEGIN:.*]] = arith.select %[[SPLIT]], %{{.*}}, %c0{{.*}} : i32
// CHECK: %[[END:.*]] = arith.select %[[SPLIT]], %{{.*}}, %{{.*}} : i32
// CHECK: scf.for %{{.*}} = %[[BEGIN]] to %[[END]] step
// The consumers: the same schedule; whole tiles store BF16 directly, slices
// store FP32 partials and the last warp to arrive on the tile's counters
// reduces them.
// CHECK: nvvm.setmaxregister increase 232
// CHECK: %[[CSPLIT:.*]] = arith.cmpi uge
// CHECK: scf.if %[[CSPLIT]] {
// CHECK: llvm.getelementptr %[[WS]][%{{.*}}] : (!llvm.ptr<1>, i64) -> !llvm.ptr<1>, f32
// CHECK: llvm.atomicrmw add
// CHECK: } else {
// CHECK: llvm.store %{{.*}} {alignment = 16 : i64} : vector<8xbf16>, !llvm.ptr<1>
func.func @tail(%a: tensor<4096x7168xf8E4M3FN>, %as: tensor<4096x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<4096x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split_k = 8, split = tail>} : (tensor<4096x7168xf8E4M3FN>, tensor<4096x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<4096x2112xbf16>
  return %0 : tensor<4096x2112xbf16>
}
