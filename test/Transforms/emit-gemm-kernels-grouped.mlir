// Grouped kernels (gemm-abi.md "Grouped kernels"): one launch for all
// groups, the group sizes read on the device into shared-memory tables.
// RUN: kiln-opt %s --split-input-file --kiln-emit-gemm-kernels | FileCheck %s

// CHECK-LABEL: func.func @contiguous
// CHECK: kiln.grouped_scaled_matmul contiguous {{.*}}kernel = @kiln_kernels::@kiln_gemm_fp8_m64n64s8c1_contiguous
// The offsets and G follow K, then the staged scales' two tensor maps
// (gemm-abi.md "Staged scales").
// CHECK: llvm.func @kiln_gemm_fp8_m64n64s8c1_contiguous({{.*}}%[[M:arg[0-9]+]]: i32, %[[N:arg[0-9]+]]: i32, %{{.*}}: i32, %[[GROUPS:arg[0-9]+]]: !llvm.ptr<1>, %[[G:arg[0-9]+]]: i32, %{{[a-z0-9]+}}: !llvm.ptr {llvm.align = 64 : i64, llvm.byval = !llvm.array<128 x i8>, nvvm.grid_constant}, %{{[a-z0-9]+}}: !llvm.ptr {llvm.align = 64 : i64, llvm.byval = !llvm.array<128 x i8>, nvvm.grid_constant})
// CHECK-SAME: kiln.gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = contiguous>
// At most 1024 groups; every thread reads one group's offsets, clamped
// into the rows of A, and counts its tiles into the tables.
// CHECK: %[[NG:.*]] = arith.minui %[[G]], %{{.*}} : i32
// CHECK: scf.for %[[GI:.*]] = %{{.*}} to %[[NG]] step
// CHECK: llvm.getelementptr %[[GROUPS]][%[[GI]]]
// CHECK: llvm.load %{{.*}} : !llvm.ptr<1> -> i32
// CHECK: llvm.load %{{.*}} : !llvm.ptr<1> -> i32
// CHECK: arith.maxsi
// CHECK: arith.minsi %{{.*}}, %[[M]] : i32
// CHECK-COUNT-3: llvm.store %{{.*}}, %{{.*}} : i32, !llvm.ptr<3>
// Warp 0 scans the tile counts, 32 groups at a time, between two barriers.
// CHECK: nvvm.barrier0
// CHECK: scf.for
// CHECK-COUNT-5: nvvm.shfl.sync up
// CHECK: nvvm.shfl.sync idx
// CHECK: nvvm.barrier0
// The producer finds a tile's group by binary search in the prefix sums
// and loads A at the group's first row + the tile's, B at group * N + the
// tile's column.
// CHECK: nvvm.setmaxregister decrease 40
// CHECK: scf.for %[[TILE:arg[0-9]+]] =
// CHECK: %[[S:.*]]:2 = scf.for {{.*}} iter_args(%{{.*}} = %{{.*}}, %{{.*}} = %[[NG]]) -> (i32, i32)
// CHECK: arith.cmpi ule, %{{.*}}, %[[TILE]] : i32
// CHECK: %[[TILES:.*]] = llvm.load {{.*}} : !llvm.ptr<3> -> i32
// CHECK: %[[GROW:.*]] = llvm.load {{.*}} : !llvm.ptr<3> -> i32
// CHECK: llvm.load {{.*}} : !llvm.ptr<3> -> i32
// CHECK: arith.subi %[[TILE]], %[[TILES]] : i32
// CHECK: %[[AROW:.*]] = arith.addi %[[GROW]], %{{.*}} : i32
// CHECK: %[[GN:.*]] = arith.muli %[[S]]#0, %[[N]] : i32
// CHECK: %[[BROW:.*]] = arith.addi %[[GN]], %{{.*}} : i32
// CHECK: nvvm.cp.async.bulk.tensor.shared.cluster.global {{.*}}box[%{{.*}}, %[[AROW]]]
// CHECK: nvvm.cp.async.bulk.tensor.shared.cluster.global {{.*}}box[%{{.*}}, %[[BROW]]]
// The consumers find the group with the whole warp (a load per lane and a
// ballot, twice), read a contiguous group's scales with the group's row
// count as stride, and store only the group's own rows, at its first row +
// theirs.
// CHECK: nvvm.setmaxregister increase 232
// CHECK: arith.cmpi ule
// CHECK: nvvm.vote.sync ballot
// CHECK: arith.cmpi ule
// CHECK: nvvm.vote.sync ballot
// CHECK: llvm.load {{.*}} : !llvm.ptr<3> -> i32
// CHECK: %[[CROW:.*]] = llvm.load {{.*}} : !llvm.ptr<3> -> i32
// CHECK: %[[CROWS:.*]] = llvm.load {{.*}} : !llvm.ptr<3> -> i32
// CHECK: arith.subi %[[CROWS]], %{{.*}} : i32
// CHECK: arith.muli %{{.*}}, %[[CROWS]] : i32
// CHECK: nvvm.wgmma.mma_async
// CHECK: arith.addi %[[CROW]], %{{.*}} : i32
// CHECK: arith.cmpi ult, %{{.*}}, %[[CROWS]] : i32
// CHECK: llvm.store %{{.*}}, %{{.*}} {alignment = 16 : i64} : vector<8xbf16>, !llvm.ptr<1>
func.func @contiguous(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %offsets: tensor<9xi32>) -> tensor<?x4096xbf16> {
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %offsets {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = contiguous>} : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<?x4096xbf16>
  return %0 : tensor<?x4096xbf16>
}

// -----

// Masked: group g's slab starts at row g * M (M = rows per slab), its count
// clamped into [0, M]; the scales' row stride is M. Split-K works as in a
// plain kernel, on the tiles of all groups (the workspace follows K, then
// the counts and G).
// CHECK-LABEL: func.func @masked
// CHECK: llvm.func @kiln_gemm_fp8_m128n64s8c2k2_masked({{.*}}%[[M:arg[0-9]+]]: i32, %{{.*}}: i32, %{{.*}}: i32, %{{.*}}: !llvm.ptr<1>, %{{.*}}: !llvm.ptr<1>, %{{.*}}: i32)
// CHECK: arith.minsi %{{.*}}, %[[M]] : i32
// CHECK: arith.muli %{{.*}}, %[[M]] : i32
// CHECK: nvvm.setmaxregister increase 232
// CHECK: arith.muli %{{.*}}, %[[M]] : i32
// CHECK: llvm.atomicrmw add
func.func @masked(%a: tensor<32x128x7168xf8E4M3FN>, %as: tensor<32x128x56xf32>, %b: tensor<32x4096x7168xf8E4M3FN>, %bs: tensor<32x32x56xf32>, %counts: tensor<32xi32>) -> tensor<32x128x4096xbf16> {
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %counts {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 8, consumers = 2, split_k = 2, grouped = masked>} : (tensor<32x128x7168xf8E4M3FN>, tensor<32x128x56xf32>, tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<32xi32>) -> tensor<32x128x4096xbf16>
  return %0 : tensor<32x128x4096xbf16>
}

// -----

// 128x192 tiles (session 11): a tile's second and third 64 columns take the
// weight-scale block of their column, clamped to the group's last block (a
// group's last tile sticks out of N = 4096 by 128 columns, which are never
// stored) and offset by the group's first block, in the producer (which
// stages them) and in the consumers alike.
// CHECK-LABEL: func.func @wide
// CHECK: llvm.func @kiln_gemm_fp8_m128n192s4c2_contiguous_tma(
// CHECK-SAME: block_n = 192, stages = 4, consumers = 2, grouped = contiguous, store = tma
// CHECK: nvvm.setmaxregister decrease
// CHECK: %[[GSR:[0-9]+]] = arith.muli %{{[0-9]+}}#0, %{{[0-9]+}} : i32
// CHECK: %[[LAST:[0-9]+]] = arith.subi %{{[0-9]+}}, %c1_i32{{.*}} : i32
// CHECK: %[[B1:[0-9]+]] = arith.minui %{{[0-9]+}}, %[[LAST]] : i32
// CHECK-NEXT: arith.addi %[[GSR]], %[[B1]] : i32
// CHECK: %[[B2:[0-9]+]] = arith.minui %{{[0-9]+}}, %[[LAST]] : i32
// CHECK-NEXT: arith.addi %[[GSR]], %[[B2]] : i32
// CHECK: nvvm.setmaxregister increase
// CHECK: arith.addi %{{[0-9]+}}, %c64_i32 : i32
// CHECK-NEXT: arith.divui
// CHECK-NEXT: %[[CB1:[0-9]+]] = arith.minui %{{[0-9]+}}, %[[CLAST:[0-9]+]] : i32
// CHECK-NEXT: arith.addi %[[CGSR:[0-9]+]], %[[CB1]] : i32
// CHECK: %[[CB2:[0-9]+]] = arith.minui %{{[0-9]+}}, %[[CLAST]] : i32
// CHECK-NEXT: arith.addi %[[CGSR]], %[[CB2]] : i32
func.func @wide(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %offsets: tensor<9xi32>) -> tensor<?x4096xbf16> {
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %offsets {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, grouped = contiguous, store = tma>} : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<?x4096xbf16>
  return %0 : tensor<?x4096xbf16>
}
