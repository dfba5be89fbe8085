// --emit=kernels with ptxas: cubins, and manifests with the register count
// and no spills (kilnc fails on any spill).
// REQUIRES: ptxas
// RUN: rm -rf %t && kilnc %kiln_src_root/examples/tiny/config.json --emit=kernels --ptxas %ptxas -q -o %t
// RUN: FileCheck %s < %t/kiln_gemm_fp8_m64n64s8c1_tma.json
// RUN: head -c 4 %t/kiln_gemm_fp8_m64n64s8c1_tma.cubin | od -c | FileCheck %s --check-prefix=ELF
// CHECK: "kernel": "kiln_gemm_fp8_m64n64s8c1_tma",
// CHECK: "registers": {{[0-9]+}},
// CHECK: "spill_bytes": 0,
// ELF: 177   E   L   F
