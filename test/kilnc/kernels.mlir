// --emit=kernels writes NAME.ptx, NAME.cubin and the launch manifest
// NAME.json (gemm-abi.md) per kernel; --no-cubin stops at PTX, without
// ptxas, so this part runs everywhere.
// RUN: rm -rf %t && kilnc %kiln_src_root/examples/tiny/config.json --emit=kernels --no-cubin -q -o %t
// RUN: FileCheck %s --check-prefix=PTX < %t/kiln_gemm_fp8_m64n64s8c1_tma.ptx
// RUN: FileCheck %s --check-prefix=MANIFEST < %t/kiln_gemm_fp8_m128n128s4c2_tma.json
// RUN: not ls %t/kiln_gemm_fp8_m64n64s8c1_tma.cubin
// An artifact needs the cubins.
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --no-cubin -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=NOCUBIN

// PTX: .target sm_90a
// PTX: .entry kiln_gemm_fp8_m64n64s8c1_tma(
// PTX-DAG: wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3
// The tiny model's K <= 2048 GEMMs store their output with TMA (LLVM may
// place the epilogue's block before the main loop's).
// PTX-DAG: cp.async.bulk.tensor.2d.global.shared::cta.bulk_group

// MANIFEST: "abi_version": 1,
// MANIFEST: "block_m": 128,
// MANIFEST: "block_n": 128,
// MANIFEST: "consumer_warpgroups": 2,
// MANIFEST: "kernel": "kiln_gemm_fp8_m128n128s4c2_tma",
// MANIFEST: "smem_bytes": 164928,
// MANIFEST: "split_k": 1,
// MANIFEST: "stages": 4,
// MANIFEST: "store": "tma",
// MANIFEST: "threads": 384

// NOCUBIN: kilnc: error: {{.*}}kernel "kiln_gemm_fp8_m64n64s8c1_tma": has no cubin (--no-cubin: an artifact needs the cubins; use --emit=kernels or --emit=plan without ptxas)
