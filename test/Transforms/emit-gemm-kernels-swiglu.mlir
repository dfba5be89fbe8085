// The SwiGLU epilogue (gemm-abi.md "SwiGLU epilogue"): a grouped kernel over
// gate/up weights interleaved in blocks of 64 rows promotes the left half
// of each 128-wide tile with the gate's weight-scale block and the right
// half with the up's, then stores silu(gate) * up, N / 2 columns.
// RUN: kiln-opt %s --kiln-emit-gemm-kernels | FileCheck %s

// CHECK-LABEL: func.func @swiglu
// CHECK: kiln.grouped_scaled_matmul contiguous {{.*}}kernel = @kiln_kernels::@kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu
// CHECK: llvm.func @kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu(
// CHECK-SAME: kiln.gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = swiglu>
// CHECK: nvvm.setmaxregister increase 232
// Tile t's gate scale block is t / 2 = nOff / 256 of the group's, its up
// block N / 256 further (two weight-scale loads per K block).
// CHECK: arith.divui %{{.*}}, %c256_i32 : i32
// Four scales per K block, carried one iteration (two blocks) ahead, and
// the partial of the block in flight across iterations: 3 + 2 * 4 loop
// results (gemm-kernels.md "Version 9", pipelined main loop).
// CHECK: %{{.*}}:11 = scf.for {{.*}} -> (i32, !llvm.struct<({{(f32, )+}}f32)>, !llvm.struct<({{(f32, )+}}f32)>, f32, f32, f32, f32, f32, f32, f32, f32)
// The epilogue pairs register i (gate) with register i + 32 (up): silu(g) * u
// with ex2 and rcp, into an m64n64 fragment.
// CHECK: %[[ACC:.*]] = scf.if
// CHECK: %[[G:.*]] = llvm.extractvalue %[[ACC]][0]
// CHECK: %[[U:.*]] = llvm.extractvalue %[[ACC]][32]
// CHECK: %[[X:.*]] = arith.mulf %[[G]], %{{.*}} : f32
// CHECK: %[[E:.*]] = llvm.inline_asm "ex2.approx.ftz.f32 $0, $1;", "=f,f" %[[X]]
// CHECK: %[[D:.*]] = arith.addf %[[E]], %{{.*}} : f32
// CHECK: %[[R:.*]] = llvm.inline_asm "rcp.approx.ftz.f32 $0, $1;", "=f,f" %[[D]]
// CHECK: %[[S:.*]] = arith.mulf %[[G]], %[[R]] : f32
// CHECK: %[[H:.*]] = arith.mulf %[[S]], %[[U]] : f32
// CHECK: llvm.insertvalue %[[H]], %{{.*}}[0] : !llvm.struct<({{(f32, )+}}f32)>
// CHECK-COUNT-31: llvm.inline_asm "ex2.approx.ftz.f32 $0, $1;"
// CHECK: llvm.insertvalue %{{.*}}, %{{.*}}[31] : !llvm.struct<({{(f32, )+}}f32)>
// CHECK-NOT: ex2.approx
func.func @swiglu(%a: tensor<256x7168xf8E4M3FN>, %as: tensor<256x56xf32>,
                  %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>,
                  %offsets: tensor<9xi32>) -> tensor<256x4096xbf16> {
  %y = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %offsets {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = swiglu>} : (tensor<256x7168xf8E4M3FN>, tensor<256x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<256x4096xbf16>
  return %y : tensor<256x4096xbf16>
}
