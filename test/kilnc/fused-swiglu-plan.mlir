// The routed experts' SwiGLU fused into their gate/up grouped GEMM
// (artifact.md "Fused SwiGLU"): with moe_intermediate_size a multiple of
// 128, every plan runs one grouped_gemm whose kernel has the quantized
// SwiGLU epilogue over the gate and up weights, writing the down
// projection's E4M3 input and its grouped scales itself; no separate
// gate/up GEMMs, no swiglu and no quantize for the routed experts. The tiny
// model (I = 192) is not fused.
// RUN: sed 's/"moe_intermediate_size": 192/"moe_intermediate_size": 256/' %kiln_src_root/examples/tiny/config.json > %t.config.json
// RUN: kilnc %t.config.json --emit=plan -q -o %t.json
// RUN: FileCheck %s < %t.json
// RUN: %python %S/check_plan.py %t.json | FileCheck %s --check-prefix=ARENA
// RUN: kilnc %t.config.json --emit=plan -q --max-batch 4 --prefill-chunk 16 --overlap-micro-batches 2 -o %t.overlap.json
// RUN: FileCheck %s --check-prefix=OVERLAP < %t.overlap.json
// RUN: kilnc %t.config.json --emit=plan -q --ep 2 -o %t.ep.json
// RUN: FileCheck %s --check-prefix=EP < %t.ep.json
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --emit=plan -q | FileCheck %s --check-prefix=TINY

// ARENA: decode: {{.*}}: ok
// ARENA: prefill: {{.*}}: ok

// CHECK: "kernels": [
// CHECK: {"name": "kiln_gemm_fp8_m64n128s8c1_contiguous_swiglu_quantize", "block_m": 64, "block_n": 128, "stages": 8, "consumers": 1, "split_k": 1, "grouped": "contiguous", "epilogue": "swiglu_quantize",

// Decode fuses too (neutral in time there, and the backend then holds only
// the interleaved gate/up weights).
// CHECK: "decode": {
// CHECK: {"op": "moe_dispatch",
// CHECK-NEXT: {"op": "grouped_gemm", {{.*}} "outputs": [{"buffer":"l1.experts_act_q"},{"buffer":"l1.experts_act_s"}], "weights": ["model.layers.1.mlp.experts.{e}.gate_proj.weight","model.layers.1.mlp.experts.{e}.up_proj.weight"], "kernel": "kiln_gemm_fp8_m64n128s8c1_contiguous_swiglu_quantize"
// CHECK-NEXT: {"op": "grouped_gemm", "inputs": [{"buffer":"l1.experts_act_q"},{"buffer":"l1.experts_act_s"},{"buffer":"l1.experts_in_offsets"}]
// CHECK-NOT: "buffer":"l1.experts_gate"

// Prefill: one fused grouped_gemm into the E4M3 [R, I] codes and their
// grouped scales, then the down projection; no BF16 intermediate. Its
// groups are 64 + 8 rows (mean and spread of the routed counts): 128-row
// tiles.
// CHECK: "prefill": {
// CHECK-NOT: "name": "l1.experts_act_act"
// CHECK: {"name": "l1.experts_act_q", "dtype": "f8e4m3", "rows": "R", "cols": 256,
// CHECK: {"op": "moe_dispatch",
// CHECK-NEXT: {"op": "grouped_gemm", "inputs": [{"buffer":"l1.experts_in_q"},{"buffer":"l1.experts_in_s"},{"buffer":"l1.experts_in_offsets"}], "outputs": [{"buffer":"l1.experts_act_q"},{"buffer":"l1.experts_act_s"}], "weights": ["model.layers.1.mlp.experts.{e}.gate_proj.weight","model.layers.1.mlp.experts.{e}.up_proj.weight"], "kernel": "kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize", "attrs": {}},
// CHECK-NEXT: {"op": "grouped_gemm", "inputs": [{"buffer":"l1.experts_act_q"},{"buffer":"l1.experts_act_s"},{"buffer":"l1.experts_in_offsets"}], "outputs": [{"buffer":"l1.experts_down"}]
// CHECK-NOT: "buffer":"l1.experts_gate"
// CHECK-NOT: "buffer":"l1.experts_up"
// CHECK: {"op": "moe_dispatch",
// CHECK-NEXT: {"op": "grouped_gemm", {{.*}} "outputs": [{"buffer":"l2.experts_act_q"},{"buffer":"l2.experts_act_s"}], "weights": ["model.layers.2.mlp.experts.{e}.gate_proj.weight","model.layers.2.mlp.experts.{e}.up_proj.weight"], "kernel": "kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize"
// CHECK-NEXT: {"op": "grouped_gemm", "inputs": [{"buffer":"l2.experts_act_q"},{"buffer":"l2.experts_act_s"},{"buffer":"l2.experts_in_offsets"}]
// CHECK-NOT: "buffer":"l2.experts_gate"
// CHECK-NOT: "buffer":"l2.experts_up"

// Two micro-batches: each fuses its own experts stage.
// OVERLAP: "prefill": {
// OVERLAP: {"op": "grouped_gemm", "stream": 0, "inputs": [{"buffer":"l1.experts_in.mb0_q"},{"buffer":"l1.experts_in.mb0_s"},{"buffer":"l1.experts_in.mb0_offsets"}], "outputs": [{"buffer":"l1.experts_act.mb0_q"},{"buffer":"l1.experts_act.mb0_s"}], "weights": ["model.layers.1.mlp.experts.{e}.gate_proj.weight","model.layers.1.mlp.experts.{e}.up_proj.weight"], "kernel": "kiln_gemm_fp8_m64n128s8c1_contiguous_swiglu_quantize"
// OVERLAP-NEXT: {"op": "grouped_gemm", "stream": 0, "inputs": [{"buffer":"l1.experts_act.mb0_q"},{"buffer":"l1.experts_act.mb0_s"},{"buffer":"l1.experts_in.mb0_offsets"}]
// OVERLAP: {"op": "grouped_gemm", "stream": 0, {{.*}} "outputs": [{"buffer":"l1.experts_act.mb1_q"},{"buffer":"l1.experts_act.mb1_s"}], "weights": ["model.layers.1.mlp.experts.{e}.gate_proj.weight","model.layers.1.mlp.experts.{e}.up_proj.weight"]
// OVERLAP-NOT: "buffer":"l1.experts_gate

// Expert parallel: the fused GEMM reads the rank's slot-major rows.
// EP: "prefill": {
// EP: {"op": "ep_group",
// EP-NEXT: {"op": "grouped_gemm", {{.*}} "weights": ["model.layers.1.mlp.experts.{e}.gate_proj.weight","model.layers.1.mlp.experts.{e}.up_proj.weight"], "kernel": "kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize"
// EP-NEXT: {"op": "grouped_gemm",

// TINY-NOT: _swiglu
