// The PTX of the emitted kernels, through the whole pipeline, and ptxas
// (sm_90a) on every kernel the heuristic can pick, rejecting spills.
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --out %t --config 128,128,4,2 --ptx-only
// RUN: FileCheck %s --input-file %t/kiln_gemm_fp8_m128n128s4c2.ptx
// RUN: FileCheck %s --check-prefix=CONSUMER --input-file %t/kiln_gemm_fp8_m128n128s4c2.ptx
// RUN: FileCheck %s --check-prefix=PRODUCER --input-file %t/kiln_gemm_fp8_m128n128s4c2.ptx
// RUN: FileCheck %s --check-prefix=EPILOGUE --input-file %t/kiln_gemm_fp8_m128n128s4c2.ptx
// CHECK: .target sm_90a
// CHECK: .extern .shared .align 1024 .b8 kiln_gemm_fp8_m128n128s4c2_smem[]
// CHECK: .entry kiln_gemm_fp8_m128n128s4c2(
// CHECK-NEXT: .param .align 64 .b8 kiln_gemm_fp8_m128n128s4c2_param_0[128]
// CHECK-NEXT: .param .align 64 .b8 kiln_gemm_fp8_m128n128s4c2_param_1[128]
// CHECK: .maxntid 384, 1, 1
// CHECK: prefetch.param.tensormap
// CHECK: prefetch.param.tensormap
// CHECK: mbarrier.init.shared.b64
// CHECK: fence.mbarrier_init
// Dependent launch: every thread waits for the previous grids before any
// global access (the first is the producer's TMA load, after the role
// split); the next kernel is released by the blocks' exit, not early.
// CHECK-NOT: cp.async.bulk.tensor
// CHECK: griddepcontrol.wait;
// CHECK-NOT: griddepcontrol.launch_dependents
// CHECK: setmaxnreg

// Consumer warpgroups: take registers, wait for a full stage, four k32 FP8
// wgmmas, wait for them, release the stage.
// CONSUMER: setmaxnreg.inc.sync.aligned.u32 232
// The warpgroup index comes from lane 0, so that ptxas keeps the wgmma
// descriptors derived from it in uniform registers.
// CONSUMER: shfl.sync.idx.b32 {{.*}}, 0, 31, -1;
// CONSUMER: mbarrier.try_wait.parity.shared.b64
// CONSUMER: wgmma.fence.sync.aligned
// CONSUMER-COUNT-4: wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3
// CONSUMER: wgmma.commit_group.sync.aligned
// CONSUMER: wgmma.wait_group.sync.aligned 0
// CONSUMER: mbarrier.arrive.shared.b64

// The producer warpgroup: give registers back, wait for a free stage, expect
// its bytes, two bulk tensor copies (A and B).
// PRODUCER: setmaxnreg.dec.sync.aligned.u32 40
// PRODUCER: mbarrier.try_wait.parity.shared.b64
// PRODUCER: mbarrier.arrive.expect_tx.shared.b64
// PRODUCER-COUNT-2: cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes

// Promotion with FMAs, BF16 conversion of column pairs staged in shared
// memory, 16-byte stores of whole chunks and 2-byte ones at ragged edges.
// EPILOGUE-DAG: fma.rn.f32
// EPILOGUE-DAG: cvt.rn.bf16x2.f32
// EPILOGUE-DAG: st.shared.b32
// EPILOGUE-DAG: bar.warp.sync
// EPILOGUE-DAG: ld.shared.v4.b32
// EPILOGUE-DAG: st.global.v4.b32
// EPILOGUE-DAG: st.global.b16

// Split-K (gemm-abi.md "Split-K"): the workspace parameter after K, 16-byte
// partial stores, the fenced arrival on a per-warp counter, and the last
// warp's sum of the 4 slots (8 quads each) before the BF16 stores.
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --out %t --config 64,64,8,1,4 --ptx-only
// RUN: FileCheck %s --check-prefix=SPLITK --input-file %t/kiln_gemm_fp8_m64n64s8c1k4.ptx
// SPLITK: .entry kiln_gemm_fp8_m64n64s8c1k4(
// SPLITK: .param .u32 kiln_gemm_fp8_m64n64s8c1k4_param_7,
// SPLITK-NEXT: .param .u64 .ptr .global .align 1 kiln_gemm_fp8_m64n64s8c1k4_param_8
// SPLITK-NEXT: )
// SPLITK: ld.volatile.global.b32
// SPLITK: wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3
// (The tag word is loaded before the K loop, above.) The partial is stored tagged,
// without a fence before the arrival; the last warp polls the 3 other
// slots (8 quads each, no load of its own), resets its counter and
// advances the tag.
// SPLITK-COUNT-8: st.volatile.global.v4.b32
// SPLITK-NEXT: bar.warp.sync -1;
// SPLITK-NOT: fence.acq_rel.gpu
// SPLITK: atom.global.add.u32
// SPLITK: shfl.sync.idx.b32
// SPLITK-COUNT-24: ld.volatile.global.v4.b32
// SPLITK-NOT: ld.volatile.global.v4.b32
// SPLITK: st.global.b32
// SPLITK: st.volatile.global.b32
// SPLITK: cvt.rn.bf16x2.f32
// SPLITK: st.shared.b32
// SPLITK: bar.warp.sync -1;
// SPLITK: ld.shared.v4.b32

// ptxas on every kernel the heuristic picks for kiln-gemm-check's shapes
// (and a dynamic M), no spills allowed.
// REQUIRES: ptxas
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/cubins | FileCheck %s --check-prefix=PTXAS
// PTXAS-DAG: kiln_gemm_fp8_m64n64s8c1k2: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// PTXAS-DAG: kiln_gemm_fp8_m64n64s8c1k4: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// PTXAS-DAG: kiln_gemm_fp8_m128n128s4c2k2: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// Every unsplit plain kernel stores with TMA.
// PTXAS-DAG: kiln_gemm_fp8_m64n64s8c1_tma: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// PTXAS-DAG: kiln_gemm_fp8_m64n128s8c1_tma: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// PTXAS-DAG: kiln_gemm_fp8_m128n128s4c2_tma: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// PTXAS-DAG: kiln_gemm_fp8_m128n192s4c2_tma: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// 4096 x 4096 x 7168 and 4096 x 7168 x 16384 take 128x256 tiles in 2-block
// clusters, stored plainly (the TMA staging and a 4-deep ring do not fit
// together).
// PTXAS-DAG: kiln_gemm_fp8_m128n256s4c2x2: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// The grouped kernels of the expert GEMMs the grouped benchmark runs.
// PTXAS-DAG: kiln_gemm_fp8_m64n128s8c1_contiguous: {{[0-9]+}} registers, 0 spill bytes, 225548 B shared memory: ok
// The prefill-sized grouped kernels store with TMA where a warpgroup's rows
// are all its group's: 128x192 tiles with their scales staged, which just
// fit (the group tables, the 4-deep ring, the whole BF16 tile, the scales).
// PTXAS-DAG: kiln_gemm_fp8_m128n192s4c2_contiguous_tma: {{[0-9]+}} registers, 0 spill bytes, 230604 B shared memory: ok
// PTXAS-DAG: kiln_gemm_fp8_m128n192s4c2_masked_tma: {{[0-9]+}} registers, 0 spill bytes, 230604 B shared memory: ok
// PTXAS-DAG: kiln_gemm_fp8_m64n64s8c1_masked: {{[0-9]+}} registers, 0 spill bytes, 160012 B shared memory: ok
// PTXAS-DAG: kiln_gemm_fp8_m64n128s8c1_masked: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// PTXAS-DAG: kiln_gemm_fp8_m128n64s8c2_masked: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// PTXAS-DAG: kiln_gemm_fp8_m128n128s4c2_masked_tma: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// The two-consumer split-K kernels of 65-128 rows (none of the default
// shapes takes them since 64x64 tiles need smaller splits there).
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/split2c --config 128,64,8,2,2 --config 128,64,8,2,4 | FileCheck %s --check-prefix=SPLIT2C
// SPLIT2C: kiln_gemm_fp8_m128n64s8c2k2: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// SPLIT2C: kiln_gemm_fp8_m128n64s8c2k4: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// Split-K grouped kernels (decode shapes with few tiles), and the contiguous
// configurations the plans pick at decode.
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/grouped --config 64,64,8,1,1,contiguous --config 64,64,8,1,2,contiguous --config 128,64,8,2,4,masked --config 128,64,8,2,1,contiguous | FileCheck %s --check-prefix=GROUPED
// GROUPED: kiln_gemm_fp8_m64n64s8c1_contiguous: {{[0-9]+}} registers, 0 spill bytes, 160012 B shared memory: ok
// GROUPED: kiln_gemm_fp8_m64n64s8c1k2_contiguous: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// GROUPED: kiln_gemm_fp8_m128n64s8c2k4_masked: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// GROUPED: kiln_gemm_fp8_m128n64s8c2_contiguous: {{[0-9]+}} registers, 0 spill bytes, {{.*}}: ok
// RUN: %python -c "import json; m = json.load(open('%t/grouped/kiln_gemm_fp8_m64n64s8c1k2_contiguous.json')); print(m['grouped'], m['split_k'], m['smem_bytes'])" | FileCheck %s --check-prefix=MANIFEST
// MANIFEST: contiguous 2 153740
// The SwiGLU epilogue (gemm-abi.md "SwiGLU epilogue") on the tiles the
// heuristic picks for the gate/up GEMM: two weight scales per K block, the
// one-consumer tile at 240 registers (spilled 60 bytes at 232).
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/swiglu --config 128,128,4,2,1,contiguous,swiglu --config 128,128,4,2,1,masked,swiglu --config 64,128,8,1,1,contiguous,swiglu --config 64,128,8,1,1,masked,swiglu | FileCheck %s --check-prefix=SWIGLU
// SWIGLU: kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu: {{[0-9]+}} registers, 0 spill bytes, 162892 B shared memory: ok
// SWIGLU: kiln_gemm_fp8_m128n128s4c2_masked_swiglu: {{[0-9]+}} registers, 0 spill bytes, 162892 B shared memory: ok
// SWIGLU: kiln_gemm_fp8_m64n128s8c1_contiguous_swiglu: 240 registers, 0 spill bytes, 225548 B shared memory: ok
// SWIGLU: kiln_gemm_fp8_m64n128s8c1_masked_swiglu: 240 registers, 0 spill bytes, 225548 B shared memory: ok
// RUN: %python -c "import json; m = json.load(open('%t/swiglu/kiln_gemm_fp8_m64n128s8c1_masked_swiglu.json')); print(m['grouped'], m['epilogue'], m['block_n'])" | FileCheck %s --check-prefix=SWIGLU-MANIFEST
// SWIGLU-MANIFEST: masked swiglu 128
// The epilogue computes silu(g) * u with ex2 and rcp before the m64n64
// staging: 32 pairs per thread, then 16-byte stores as usual.
// RUN: FileCheck %s --check-prefix=SWIGLU-PTX --input-file %t/swiglu/kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu.ptx
// SWIGLU-PTX: setmaxnreg.inc.sync.aligned.u32 232
// SWIGLU-PTX: wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3
// SWIGLU-PTX-COUNT-32: ex2.approx.ftz.f32
// SWIGLU-PTX: rcp.approx.ftz.f32
// SWIGLU-PTX: cvt.rn.bf16x2.f32
// SWIGLU-PTX: st.global.v4.b32
// The quantized SwiGLU epilogue (gemm-abi.md "Quantized SwiGLU epilogue"):
// no spills on the same tiles; the scales follow G; the pair's second tile
// reduces the row maxima over the quad (two shuffles per row), divides by
// the scales (IEEE division, the runtime quantizer's arithmetic), converts
// pairs to E4M3 with saturation and stores 2-byte codes: 8 per tile and
// row, 32 per thread.
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/swiglu-quantize --config 128,128,4,2,1,contiguous,swiglu_quantize --config 128,128,4,2,1,masked,swiglu_quantize --config 64,128,8,1,1,contiguous,swiglu_quantize --config 64,128,8,1,1,masked,swiglu_quantize | FileCheck %s --check-prefix=SWIGLU-Q
// SWIGLU-Q: kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize: {{[0-9]+}} registers, 0 spill bytes, 162892 B shared memory: ok
// SWIGLU-Q: kiln_gemm_fp8_m128n128s4c2_masked_swiglu_quantize: {{[0-9]+}} registers, 0 spill bytes, 162892 B shared memory: ok
// SWIGLU-Q: kiln_gemm_fp8_m64n128s8c1_contiguous_swiglu_quantize: 240 registers, 0 spill bytes, 225548 B shared memory: ok
// SWIGLU-Q: kiln_gemm_fp8_m64n128s8c1_masked_swiglu_quantize: 240 registers, 0 spill bytes, 225548 B shared memory: ok
// RUN: %python -c "import json; m = json.load(open('%t/swiglu-quantize/kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize.json')); print(m['grouped'], m['epilogue'])" | FileCheck %s --check-prefix=SWIGLU-Q-MANIFEST
// SWIGLU-Q-MANIFEST: contiguous swiglu_quantize
// RUN: FileCheck %s --check-prefix=SWIGLU-Q-PTX --input-file %t/swiglu-quantize/kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize.ptx
// SWIGLU-Q-PTX: .param .u32 kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize_param_9,
// SWIGLU-Q-PTX-NEXT: .param .u64 {{.*}}_param_10
// SWIGLU-Q-PTX: wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3
// SWIGLU-Q-PTX-COUNT-32: ex2.approx.ftz.f32
// SWIGLU-Q-PTX: shfl.sync.bfly.b32
// SWIGLU-Q-PTX: div.rn.f32
// SWIGLU-Q-PTX: cvt.rn.satfinite.e4m3x2.f32
// SWIGLU-Q-PTX-COUNT-32: st.global.b16
// Split tails (gemm-abi.md "Split tail") of 2 to 8 slices: no spills (the
// reduction of 8 partials of 64 registers included); the manifest says so.
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/tail --config 128,128,4,2,2,tail --config 128,128,4,2,4,tail --config 128,128,4,2,8,tail | FileCheck %s --check-prefix=TAIL
// TAIL: kiln_gemm_fp8_m128n128s4c2k2t: {{[0-9]+}} registers, 0 spill bytes, 150592 B shared memory: ok
// TAIL: kiln_gemm_fp8_m128n128s4c2k4t: {{[0-9]+}} registers, 0 spill bytes, 150592 B shared memory: ok
// TAIL: kiln_gemm_fp8_m128n128s4c2k8t: {{[0-9]+}} registers, 0 spill bytes, 150592 B shared memory: ok
// RUN: %python -c "import json; m = json.load(open('%t/tail/kiln_gemm_fp8_m128n128s4c2k8t.json')); print(m['split'], m['split_k'])" | FileCheck %s --check-prefix=TAIL-MANIFEST
// TAIL-MANIFEST: tail 8
// The TMA-store epilogue (gemm-abi.md "TMA store") on a 192-wide tile: the
// output's tensor map is the last parameter; one K block at a time (96 + 96
// accumulator registers leave no room for a second partial), five scale
// loads per block (two rows' activation scales, three 64-column chunks'
// weight scales); the warpgroup waits for its previous stores to have read
// the staging, writes its 64 rows as swizzled BF16 pairs, fences the async
// proxy and its leader stores three 64-column boxes with one bulk group.
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/tma --config 128,192,4,2,tma --config 64,64,8,1,tma --config 128,128,4,2,x2,tma | FileCheck %s --check-prefix=TMA
// TMA: kiln_gemm_fp8_m128n192s4c2_tma: {{[0-9]+}} registers, 0 spill bytes, 218304 B shared memory: ok
// TMA: kiln_gemm_fp8_m64n64s8c1_tma: {{[0-9]+}} registers, 0 spill bytes, 146688 B shared memory: ok
// TMA: kiln_gemm_fp8_m128n128s4c2x2_tma: {{[0-9]+}} registers, 0 spill bytes, 164928 B shared memory: ok
// RUN: %python -c "import json; m = json.load(open('%t/tma/kiln_gemm_fp8_m128n192s4c2_tma.json')); print(m['store'], m['block_n'], m['smem_bytes'])" | FileCheck %s --check-prefix=TMA-MANIFEST
// TMA-MANIFEST: tma 192 218304
// The 192-wide kernel also stages its scales (gemm-abi.md "Staged scales"):
// two more tensor maps, no global load at all; per K block the consumers
// read the three weight scales and rows r and r + 8 of the activation
// scales from the stage while the block's wgmmas run, and each warp
// releases the stage after its own reads.
// RUN: FileCheck %s --check-prefix=TMA-LOOP --implicit-check-not=st.global --implicit-check-not=ld.global --input-file %t/tma/kiln_gemm_fp8_m128n192s4c2_tma.ptx
// RUN: FileCheck %s --check-prefix=TMA-PTX --input-file %t/tma/kiln_gemm_fp8_m128n192s4c2_tma.ptx
// TMA-LOOP: .param .align 64 .b8 kiln_gemm_fp8_m128n192s4c2_tma_param_8[128]
// TMA-LOOP: .param .align 64 .b8 kiln_gemm_fp8_m128n192s4c2_tma_param_10[128]
// TMA-LOOP: ld.param.b32 [[M:%r[0-9]+]], [kiln_gemm_fp8_m128n192s4c2_tma_param_5];
// TMA-LOOP: setmaxnreg.inc.sync.aligned.u32 232
// TMA-LOOP: mbarrier.try_wait.parity
// TMA-LOOP-COUNT-4: wgmma.mma_async.sync.aligned.m64n192k32.f32.e4m3.e4m3
// TMA-LOOP: wgmma.commit_group.sync.aligned;
// TMA-LOOP-COUNT-5: ld.shared.b32
// TMA-LOOP: wgmma.wait_group.sync.aligned 0;
// TMA-LOOP-NEXT: bar.warp.sync -1;
// TMA-LOOP: mbarrier.arrive.shared.b64
// The producer: A and B, then the scales' 1-D boxes (activation, then the
// two weight-scale blocks the tile's three 64-column chunks lie in), all on
// the stage's full barrier, which expects min(128, M) * 128 + 192 * 128 +
// 4 * (128 + 4) + 2 * 16 bytes (A's box is min(BLOCK_M, M) rows,
// gemm-abi.md "Buffers"; LLVM hoists the sum).
// TMA-LOOP: setmaxnreg.dec.sync.aligned.u32 40
// TMA-LOOP: min.u32 [[ROWS:%r[0-9]+]], [[M]], 128;
// TMA-LOOP-NEXT: shl.b32 [[ABYTES:%r[0-9]+]], [[ROWS]], 7;
// TMA-LOOP-NEXT: add.s32 [[TX:%r[0-9]+]], [[ABYTES]], 25136;
// TMA-LOOP: mbarrier.arrive.expect_tx.shared.b64 %rd{{[0-9]+}}, [[FULL:\[%rd[0-9]+\+[0-9]+\]]], [[TX]];
// TMA-LOOP-COUNT-2: cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes {{.*}}, [[FULL]];
// TMA-LOOP-COUNT-3: cp.async.bulk.tensor.1d.shared::cluster.global.tile.mbarrier::complete_tx::bytes {{.*}}, [[FULL]];
// TMA-LOOP-NOT: cp.async.bulk.tensor.1d
// The epilogue (LLVM may place its block anywhere): stage the BF16 tile,
// then the leader's three 64-column box stores, predicated rather than
// branched around.
// TMA-PTX: cp.async.bulk.wait_group.read 0;
// TMA-PTX: bar.sync %r{{[0-9]+}}, 128;
// TMA-PTX-COUNT-48: st.shared.b32
// TMA-PTX: fence.proxy.async.shared::cta;
// TMA-PTX-NEXT: bar.sync %r{{[0-9]+}}, 128;
// TMA-PTX-COUNT-3: @%p{{[0-9]+}} cp.async.bulk.tensor.2d.global.shared::cta.bulk_group
// TMA-PTX: cp.async.bulk.commit_group;
// TMA-PTX: cp.async.bulk.wait_group 0;
// 64-wide tiles keep four K blocks in flight (32 accumulator registers and
// four partials of 32): sixteen wgmmas as four groups, then waits for at
// most 3, 2, 1 and 0 groups, each followed by its block's promotion; the
// blocks past the last whole chain of four run one at a time, each block's
// staged scales (one weight scale, rows r and r + 8) read from shared
// memory between its commit and its wait.
// RUN: FileCheck %s --check-prefix=CHAIN --input-file %t/tma/kiln_gemm_fp8_m64n64s8c1_tma.ptx
// CHAIN-COUNT-4: wgmma.commit_group.sync.aligned;
// CHAIN: wgmma.wait_group.sync.aligned 3;
// CHAIN: wgmma.wait_group.sync.aligned 2;
// CHAIN: wgmma.wait_group.sync.aligned 1;
// CHAIN: wgmma.wait_group.sync.aligned 0;
// CHAIN: wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3
// CHAIN: wgmma.commit_group.sync.aligned;
// CHAIN-COUNT-3: ld.shared.b32
// CHAIN: wgmma.wait_group.sync.aligned 0;
// CHAIN-NEXT: bar.warp.sync -1;
// The pipelined 128x128 kernel keeps loading its scales from global memory
// a pair of blocks ahead (GemmConfigAttr::getStagedScales): no 1-D TMA, no
// scale maps.
// RUN: FileCheck %s --check-prefix=UNSTAGED --implicit-check-not=cp.async.bulk.tensor.1d --implicit-check-not=_param_10 --input-file %t/tma/kiln_gemm_fp8_m128n128s4c2x2_tma.ptx
// UNSTAGED: .param .align 64 .b8 kiln_gemm_fp8_m128n128s4c2x2_tma_param_8[128]
// UNSTAGED: ld.global.b32
// PTXAS-NOT: SPILLS

// Grouped kernels with the TMA store: a warpgroup whose 64 rows are all the
// group's stores them through the output's tensor map (last parameter,
// predicated on the leader), one whose rows end past the group stores them
// with plain 16-byte stores (and 2-byte ones at ragged edges).
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/grouped-tma --config 128,128,4,2,1,contiguous,tma --config 128,128,4,2,1,masked,tma | FileCheck %s --check-prefix=GTMA
// GTMA: kiln_gemm_fp8_m128n128s4c2_contiguous_tma: {{[0-9]+}} registers, 0 spill bytes, 177228 B shared memory: ok
// GTMA: kiln_gemm_fp8_m128n128s4c2_masked_tma: {{[0-9]+}} registers, 0 spill bytes, 177228 B shared memory: ok
// RUN: %python -c "import json; m = json.load(open('%t/grouped-tma/kiln_gemm_fp8_m128n128s4c2_contiguous_tma.json')); print(m['grouped'], m['store'])" | FileCheck %s --check-prefix=GTMA-MANIFEST
// GTMA-MANIFEST: contiguous tma
// RUN: FileCheck %s --check-prefix=GTMA-PTX --input-file %t/grouped-tma/kiln_gemm_fp8_m128n128s4c2_contiguous_tma.ptx
// GTMA-PTX: .param .align 64 .b8 kiln_gemm_fp8_m128n128s4c2_contiguous_tma_param_10[128]
// GTMA-PTX-DAG: @%p{{[0-9]+}} cp.async.bulk.tensor.2d.global.shared::cta.bulk_group
// GTMA-PTX-DAG: st.global.v4.b32
// GTMA-PTX-DAG: st.global.b16
// A 256-wide tile (gemm-kernels.md "Session 10"): per K block the consumer
// issues the left 128 columns' four m64n128k32 wgmmas, waits, promotes them
// with the first weight scale, then the right half's from B's row 128 on
// (the stage's descriptor + 1024), into the same 64 registers (the half's
// first wgmma takes the previous partial as its ignored input, so ptxas
// cannot issue it before that partial is promoted: 260-420 spilled bytes
// otherwise); the stage is released after the second wait only. Staged
// scales: two weight-scale boxes per stage.
// RUN: %python %kiln_compile_gemm --kiln-opt %kiln_opt_path --ptxas %ptxas --out %t/widest --config 128,256,4,2 --config 128,256,3,2,tma | FileCheck %s --check-prefix=WIDEST
// WIDEST: kiln_gemm_fp8_m128n256s4c2: {{[0-9]+}} registers, 0 spill bytes, 220352 B shared memory: ok
// WIDEST: kiln_gemm_fp8_m128n256s3c2_tma: {{[0-9]+}} registers, 0 spill bytes, 217264 B shared memory: ok
// RUN: FileCheck %s --check-prefix=WIDEST-LOOP --implicit-check-not=ld.global --input-file %t/widest/kiln_gemm_fp8_m128n256s4c2.ptx
// WIDEST-LOOP: ld.param.b32 [[M:%r[0-9]+]], [kiln_gemm_fp8_m128n256s4c2_param_5];
// WIDEST-LOOP: setmaxnreg.inc.sync.aligned.u32 232
// WIDEST-LOOP: mbarrier.try_wait.parity
// WIDEST-LOOP-COUNT-4: wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {[[ACC:%r[0-9]+, %r[0-9]+]],
// WIDEST-LOOP: wgmma.commit_group.sync.aligned;
// WIDEST-LOOP-COUNT-4: ld.shared.b32
// WIDEST-LOOP: wgmma.wait_group.sync.aligned 0;
// WIDEST-LOOP-NOT: mbarrier.arrive
// WIDEST-LOOP-COUNT-4: wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {[[ACC]],
// WIDEST-LOOP: wgmma.commit_group.sync.aligned;
// WIDEST-LOOP-NEXT: wgmma.wait_group.sync.aligned 0;
// WIDEST-LOOP-NEXT: bar.warp.sync -1;
// WIDEST-LOOP: mbarrier.arrive.shared.b64
// The producer: one 256-row B box and the stage's expected bytes,
// min(128, M) * 128 + 256 * 128 + 4 * (128 + 4) + 2 * 16.
// WIDEST-LOOP: setmaxnreg.dec.sync.aligned.u32 40
// WIDEST-LOOP: min.u32 [[ROWS:%r[0-9]+]], [[M]], 128;
// WIDEST-LOOP-NEXT: shl.b32 [[ABYTES:%r[0-9]+]], [[ROWS]], 7;
// WIDEST-LOOP-NEXT: add.s32 [[TX:%r[0-9]+]], [[ABYTES]], 33328;
// WIDEST-LOOP: mbarrier.arrive.expect_tx.shared.b64 %rd{{[0-9]+}}, [[FULL:\[%rd[0-9]+\+[0-9]+\]]], [[TX]];
// WIDEST-LOOP-COUNT-2: cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes {{.*}}, [[FULL]];
// WIDEST-LOOP-COUNT-3: cp.async.bulk.tensor.1d.shared::cluster.global.tile.mbarrier::complete_tx::bytes {{.*}}, [[FULL]];
