// --emit=kernels writes NAME.ptx, NAME.cubin and the launch manifest
// NAME.json (gemm-abi.md) per kernel; --no-cubin stops at PTX, without
// ptxas, so this part runs everywhere.
// RUN: rm -rf %t && kilnc %kiln_src_root/examples/tiny/config.json --emit=kernels --no-cubin -q -o %t
// RUN: FileCheck %s --check-prefix=PTX < %t/kiln_gemm_fp8_m64n64s8c1.ptx
// RUN: FileCheck %s --check-prefix=MANIFEST < %t/kiln_gemm_fp8_m128n128s4c2.json
// RUN: not ls %t/kiln_gemm_fp8_m64n64s8c1.cubin
// An artifact needs the cubins.
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --no-cubin -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=NOCUBIN

// PTX: .target sm_90a
// PTX: .entry kiln_gemm_fp8_m64n64s8c1(
// PTX: wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3

// MANIFEST: "abi_version": 1,
// MANIFEST: "block_m": 128,
// MANIFEST: "block_n": 128,
// MANIFEST: "consumer_warpgroups": 2,
// MANIFEST: "kernel": "kiln_gemm_fp8_m128n128s4c2",
// MANIFEST: "smem_bytes": 150592,
// MANIFEST: "split_k": 1,
// MANIFEST: "stages": 4,
// MANIFEST: "threads": 384

// NOCUBIN: kilnc: error: {{.*}}kernel "kiln_gemm_fp8_m64n64s8c1": has no cubin (--no-cubin: an artifact needs the cubins; use --emit=kernels or --emit=plan without ptxas)
