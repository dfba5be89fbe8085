// With --max-batch above 64, kilnc also writes `decode_small`: the same
// decode step for at most 64 tokens, whose GEMMs get the kernels chosen for
// M <= 64 (64x64 tiles) instead of the 64x128 ones chosen for M = 128; the
// runtime runs a step on the smallest decode plan it fits.
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --max-batch 128 --emit=plan -q -o %t.json
// RUN: FileCheck %s < %t.json
// RUN: %python %S/check_plan.py %t.json | FileCheck %s --check-prefix=ARENA
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --max-batch 64 --emit=plan -q -o %t64.json
// RUN: FileCheck %s --check-prefix=NOSMALL < %t64.json

// ARENA: decode: 72 steps, 92 buffers, {{.*}}: ok
// ARENA: decode_small: 72 steps, 92 buffers, {{.*}}: ok
// ARENA: prefill: 72 steps, 92 buffers, {{.*}}: ok

// CHECK: "decode": {"max_tokens": 128, "max_sequences": 128,
// CHECK: "op": "gemm", {{.*}}"kernel": "kiln_gemm_fp8_m64n128s8c1_tma"
// CHECK: "decode_small": {"max_tokens": 64, "max_sequences": 64,
// CHECK: "op": "gemm", {{.*}}"kernel": "kiln_gemm_fp8_m64n64s8c1_tma"
// CHECK: "prefill": {"max_tokens": 256, "max_sequences": 128,

// NOSMALL-NOT: "decode_small"
