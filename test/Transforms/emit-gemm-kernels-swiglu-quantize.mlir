// The quantized SwiGLU epilogue (gemm-abi.md "Quantized SwiGLU epilogue"):
// blocks take tiles in pairs (2p, 2p + 1) that share the intermediate's
// 1x128 scale blocks; the first of a pair leaves its BF16 values and row
// maxima in the thread's stash, the second reduces the maxima over both
// tiles and the quad and stores E4M3 codes and the scales (a parameter
// after G).
// RUN: kiln-opt %s --kiln-emit-gemm-kernels | FileCheck %s

// CHECK: llvm.func @kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize(
// CHECK-SAME: %{{.*}}: !llvm.ptr<1>, %{{.*}}: i32, %[[OUT_SCALES:.*]]: !llvm.ptr<1>)
// CHECK-SAME: epilogue = swiglu_quantize
// The pair loop of the producer: this block's pairs, two slots each, tile =
// 2 * pair + (slot & 1).
// CHECK: nvvm.setmaxregister decrease 40
// CHECK: scf.for %[[SLOT:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK: arith.andi %[[SLOT]], %{{.*}} : i32
// The same loop in the consumers.
// CHECK: nvvm.setmaxregister increase 232
// CHECK: scf.for %[[CSLOT:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK-NEXT: arith.shrui %[[CSLOT]]
// CHECK: %[[HALF:.*]] = arith.andi %[[CSLOT]], %{{.*}} : i32
// The epilogue: SwiGLU, BF16 rounding and the row maxima; then the first
// tile of the pair stashes 16 words of BF16 pairs and the 2 row maxima...
// CHECK: llvm.inline_asm "ex2.approx.ftz.f32 $0, $1;"
// CHECK: arith.truncf %{{.*}} : vector<2xf32> to vector<2xbf16>
// CHECK: llvm.intr.fabs
// CHECK: %[[FIRST:.*]] = arith.cmpi eq, %[[HALF]], %{{.*}} : i32
// CHECK: scf.if %[[FIRST]] {
// CHECK-COUNT-16: llvm.store %{{.*}}, %{{.*}} : i32, !llvm.ptr<3>
// CHECK-COUNT-2: llvm.store %{{.*}}, %{{.*}} : f32, !llvm.ptr<3>
// CHECK-NEXT: } else {
// ...the second loads them back, reduces each row's maximum over both tiles
// and the quad, and takes s = max(amax, 1e-4) / 448...
// CHECK-COUNT-16: llvm.load %{{.*}} : !llvm.ptr<3> -> i32
// CHECK: arith.maxnumf
// CHECK: nvvm.shfl.sync bfly %{{.*}}, %{{.*}}, %c1_i32, %c31_i32 : f32 -> f32
// CHECK: nvvm.shfl.sync bfly %{{.*}}, %{{.*}}, %c2_i32, %c31_i32 : f32 -> f32
// CHECK: %[[FLOOR:.*]] = arith.maxnumf %{{.*}}, %cst{{.*}} : f32
// CHECK: %[[SCALE:.*]] = arith.divf %[[FLOOR]], %cst{{.*}} : f32
// ...and stores, for rows inside the group, codes e4m3(h / s) (round to
// nearest, saturating) two columns per 2-byte store, eight per row and tile,
// and the scale from the quad's first lane.
// CHECK: scf.if
// CHECK: %[[Q0:.*]] = arith.divf %{{.*}}, %[[SCALE]] : f32
// CHECK: %[[Q1:.*]] = arith.divf %{{.*}}, %[[SCALE]] : f32
// CHECK: %[[CODES:.*]] = nvvm.convert.f32x2.to.f8x2 %[[Q1]], %[[Q0]] {rnd = #nvvm.fp_rnd_mode<rn>, sat = #nvvm.sat_mode<satfinite>} : i16(f8E4M3FN)
// CHECK: llvm.store %[[CODES]], %{{.*}} {alignment = 2 : i64} : i16, !llvm.ptr<1>
// CHECK-COUNT-15: nvvm.convert.f32x2.to.f8x2
// CHECK: scf.if
// CHECK: llvm.getelementptr %[[OUT_SCALES]][%{{.*}}] : (!llvm.ptr<1>, i32) -> !llvm.ptr<1>, f32
// CHECK: llvm.store %[[SCALE]], %{{.*}} : f32, !llvm.ptr<1>
func.func @swiglu_quantize(%a: tensor<256x7168xf8E4M3FN>, %as: tensor<256x56xf32>,
                           %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>,
                           %offsets: tensor<9xi32>) -> tensor<256x4096xbf16> {
  %y = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %offsets {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = swiglu_quantize>} : (tensor<256x7168xf8E4M3FN>, tensor<256x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<256x4096xbf16>
  return %y : tensor<256x4096xbf16>
}
