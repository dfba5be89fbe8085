// The kernel-level structure of an emitted GEMM kernel, before lowering.
// RUN: kiln-opt %s --kiln-emit-gemm-kernels | FileCheck %s

// CHECK: module attributes {gpu.container_module}
// CHECK: kiln.scaled_matmul {{.*}}kernel = @kiln_kernels::@kiln_gemm_fp8_m128n128s4c2
// CHECK: gpu.module @kiln_kernels
// The ring lives in dynamic shared memory, 1024-byte aligned for SWIZZLE_128B.
// CHECK: llvm.mlir.global external @kiln_gemm_fp8_m128n128s4c2_smem() {addr_space = 3 : i32, alignment = 1024 : i64}
// Tensor maps by value in the parameter space, 64-byte aligned for TMA.
// CHECK: llvm.func @kiln_gemm_fp8_m128n128s4c2(%{{.*}}: !llvm.ptr {llvm.align = 64 : i64, llvm.byval = !llvm.array<128 x i8>, nvvm.grid_constant}, %{{.*}}: !llvm.ptr {llvm.align = 64 : i64, llvm.byval = !llvm.array<128 x i8>, nvvm.grid_constant}, %{{.*}}: !llvm.ptr<1>, %{{.*}}: !llvm.ptr<1>, %{{.*}}: !llvm.ptr<1>, %{{.*}}: i32, %{{.*}}: i32, %{{.*}}: i32)
// CHECK-SAME: nvvm.kernel
// CHECK-SAME: nvvm.maxntid = array<i32: 384, 1, 1>
// CHECK-SAME: nvvm.minctasm = 1
// The ring starts at the first 1024-byte boundary of dynamic shared memory.
// CHECK: llvm.ptrtoint
// CHECK: arith.andi %{{.*}}, %{{.*}} : i32
// Barrier initialization by one thread, which first starts fetching the
// tensor maps; then a block-wide barrier.
// CHECK: nvvm.prefetch tensormap in_param_space, %{{.*}} : !llvm.ptr
// CHECK: nvvm.prefetch tensormap in_param_space, %{{.*}} : !llvm.ptr
// CHECK: nvvm.mbarrier.init
// CHECK: nvvm.mbarrier.init
// CHECK: nvvm.fence.mbarrier.init
// CHECK: nvvm.barrier0
// The producer warpgroup gives registers back and streams A and B with TMA.
// CHECK: nvvm.setmaxregister decrease 40
// CHECK: scf.for
// Tiles in bands of 8 tile rows (the last band may be shorter), M fastest
// inside a band.
// CHECK: %[[BAND_ROWS:.*]] = arith.minui
// CHECK: %[[M_IN_BAND:.*]] = arith.remui %{{.*}}, %[[BAND_ROWS]] : i32
// CHECK: arith.addi %{{.*}}, %[[M_IN_BAND]] : i32
// CHECK: arith.divui %{{.*}}, %[[BAND_ROWS]] : i32
// CHECK: nvvm.mbarrier.try_wait.parity
// A stage expects min(BLOCK_M, M) rows of A (the launcher's box) and the
// B tile.
// CHECK: %[[A_ROWS:.*]] = arith.minui %arg5, %{{.*}} : i32
// CHECK: %[[A_BYTES:.*]] = arith.muli %[[A_ROWS]], %{{.*}} : i32
// CHECK: %[[STAGE_BYTES:.*]] = arith.addi %[[A_BYTES]], %{{.*}} : i32
// CHECK: nvvm.mbarrier.arrive.expect_tx %{{.*}}, %[[STAGE_BYTES]] : !llvm.ptr<3>, i32
// CHECK: nvvm.cp.async.bulk.tensor.shared.cluster.global
// CHECK: nvvm.cp.async.bulk.tensor.shared.cluster.global
// Consumers take the registers and run four k32 FP8 wgmmas per 128-K block.
// CHECK: nvvm.setmaxregister increase 232
// CHECK: nvvm.mbarrier.try_wait.parity
// CHECK: nvvm.wgmma.fence.aligned
// CHECK-COUNT-4: nvvm.wgmma.mma_async {{.*}}, <m = 64, n = 128, k = 32>, D[<f32>, {{.*}}], A[<e4m3>, <one>, <row>], B[<e4m3>, <one>, <col>]
// CHECK: nvvm.wgmma.commit.group.sync.aligned
// K blocks go in pairs: the second block's group is issued before the first
// is waited for, so its MMAs overlap the first block's promotion.
// CHECK: nvvm.mbarrier.try_wait.parity
// CHECK-COUNT-4: nvvm.wgmma.mma_async
// CHECK: nvvm.wgmma.commit.group.sync.aligned
// CHECK: nvvm.wgmma.wait.group.sync.aligned 1
// CHECK: nvvm.mbarrier.arrive
// The promoted registers pass through a volatile asm fence after the wait.
// CHECK: llvm.inline_asm has_side_effects "", "=f,0"
// Promotion into the FP32 accumulator with the activation and weight scales.
// CHECK: llvm.intr.fma
// CHECK: nvvm.wgmma.wait.group.sync.aligned 0
// The BF16 epilogue: each warp converts column pairs into its slice of
// shared memory, syncs, reads 16-byte chunks back and stores the ones inside
// M x N whole, the others (ragged N) element by element.
// CHECK: arith.truncf %{{.*}} : vector<2xf32> to vector<2xbf16>
// CHECK: llvm.store %{{.*}}, %{{.*}} {alignment = 4 : i64} : vector<2xbf16>, !llvm.ptr<3>
// CHECK: nvvm.bar.warp.sync
// CHECK: llvm.load %{{.*}} {alignment = 16 : i64} : !llvm.ptr<3> -> vector<8xbf16>
// CHECK: llvm.store %{{.*}}, %{{.*}} {alignment = 16 : i64} : vector<8xbf16>, !llvm.ptr<1>
// CHECK: llvm.store %{{.*}}, %{{.*}} : bf16, !llvm.ptr<1>
// CHECK: nvvm.bar.warp.sync
func.func @gemm(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<?x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2>} : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<?x2112xbf16>
  return %0 : tensor<?x2112xbf16>
}
