// The hand-written graph to a .kiln artifact: no config, so no model hash;
// max_batch and prefill_chunk come from the graph's steps.
// REQUIRES: ptxas
// RUN: kilnc %kiln_src_root/examples/kilnc-graph/graph.mlir --ptxas %ptxas -q -o %t.kiln
// RUN: %python %S/../kilnc/read_artifact.py %t.kiln | FileCheck %s
// A step size that contradicts the graph is an error.
// RUN: not kilnc %kiln_src_root/examples/kilnc-graph/graph.mlir --max-batch 8 -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=SIZE

// CHECK: producer kilnc 0.1.0 source graph.mlir target sm_90a
// CHECK-NEXT: model  hidden 0 layers 0 vocab 0
// CHECK-NEXT: options ep=1 kv_cache_dtype=bf16 kv_page_tokens=64 max_batch=4 max_seq_len=4096 overlap_micro_batches=1 prefill_chunk=32
// CHECK-NEXT: kernel kiln_gemm_fp8_m64n64s8c1_tma split_k 1 store tma scale_a tma griddepcontrol wait a_box min_m smem 146688 cubin elf ptx sm_90a
// CHECK-NEXT: weights 15
// CHECK-NEXT: plan decode max_tokens 4 max_sequences 4 buffers 26 steps 20
// CHECK-NEXT: plan prefill max_tokens 32 max_sequences 4 buffers 26 steps 20
// SIZE: kilnc: error: --max-batch 8 disagrees with the graph: @decode is built for 4
