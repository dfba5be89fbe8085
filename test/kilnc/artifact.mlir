// The whole pipeline on the tiny config: a .kiln artifact with real sm_90a
// cubins (ptxas, no GPU needed), read back field by field.
// REQUIRES: ptxas
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --ptxas %ptxas -o %t.kiln 2>&1 | FileCheck %s --check-prefix=PROGRESS
// RUN: %python %S/read_artifact.py %t.kiln | FileCheck %s
// The same through $KILN_PTXAS.
// RUN: env KILN_PTXAS=%ptxas kilnc %kiln_src_root/examples/tiny/config.json -q -o %t.env.kiln
// RUN: cmp %t.kiln %t.env.kiln

// PROGRESS: kilnc: [1/6] reading {{.*}}examples/tiny/config.json
// PROGRESS-NEXT: kilnc: [2/6] building the model graph (3 layers, decode 8 tokens, prefill 256 tokens)
// PROGRESS-NEXT: kilnc: [3/6] selecting GEMM configurations
// PROGRESS-NEXT: kilnc: [4/6] lowering the step functions to launch plans
// PROGRESS-NEXT: kilnc: [5/6] compiling 4 GEMM kernels (PTX, ptxas {{.*}})
// PROGRESS-NEXT: kilnc: kiln_gemm_fp8_m64n64s8c1_tma: {{[0-9]+}} registers, 146688 B shared memory, {{[0-9]+}} B cubin
// PROGRESS-NEXT: kilnc: kiln_gemm_fp8_m64n64s8c1_contiguous: {{[0-9]+}} registers, 160012 B shared memory, {{[0-9]+}} B cubin
// PROGRESS-NEXT: kilnc: kiln_gemm_fp8_m128n128s4c2_tma: {{[0-9]+}} registers, 164928 B shared memory, {{[0-9]+}} B cubin
// PROGRESS-NEXT: kilnc: kiln_gemm_fp8_m128n64s8c2_contiguous: {{[0-9]+}} registers, 228492 B shared memory, {{[0-9]+}} B cubin
// PROGRESS-NEXT: kilnc: [6/6] writing {{.*}}.kiln
// PROGRESS-NEXT: kilnc: wrote {{.*}}.kiln: 4 kernels, 2 plans, 49 weights, {{[0-9]+}} bytes, in {{[0-9.]+}} s

// CHECK: magic b'KILNART\x00' version 12 reserved 0
// CHECK-NEXT: producer kilnc 0.1.0 source config.json target sm_90a
// CHECK-NEXT: model deepseek_v3 fnv1a64:{{[0-9a-f]+}} hidden 256 layers 3 vocab 129280
// CHECK-NEXT: options ep=1 kv_cache_dtype=bf16 kv_page_tokens=64 max_batch=8 max_seq_len=4096 overlap_micro_batches=1 prefill_chunk=256
// CHECK-NEXT: kernel kiln_gemm_fp8_m64n64s8c1_tma split_k 1 store tma scale_a tma griddepcontrol wait a_box min_m smem 146688 cubin elf ptx sm_90a
// CHECK-NEXT: kernel kiln_gemm_fp8_m64n64s8c1_contiguous split_k 1 grouped contiguous scale_a tma griddepcontrol wait a_box min_m smem 160012 cubin elf ptx sm_90a
// CHECK-NEXT: kernel kiln_gemm_fp8_m128n128s4c2_tma split_k 1 store tma griddepcontrol wait a_box min_m smem 164928 cubin elf ptx sm_90a
// CHECK-NEXT: kernel kiln_gemm_fp8_m128n64s8c2_contiguous split_k 1 grouped contiguous griddepcontrol wait a_box min_m smem 228492 cubin elf ptx sm_90a
// CHECK-NEXT: weights 49
// CHECK-NEXT: plan decode max_tokens 8 max_sequences 8 buffers 92 steps 72
// CHECK-NEXT: plan prefill max_tokens 256 max_sequences 8 buffers 92 steps 72
