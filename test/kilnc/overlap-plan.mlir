// kilnc --overlap-micro-batches 2: the prefill plan's MoE layers split the
// chunk into two micro-batches (row views "micro_batch": [m, 2] of the T-row
// buffers) whose dispatch and combine run on stream 1 while the other
// micro-batch's router and expert GEMMs run on stream 0, ordered by events
// (compiler/docs/artifact.md "Streams and micro-batches"). Decode plans stay
// on one stream.
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --emit=plan -q --max-batch 4 --prefill-chunk 16 --overlap-micro-batches 2 -o %t.json
// RUN: FileCheck %s < %t.json
// RUN: %python %S/check_plan.py %t.json | FileCheck %s --check-prefix=ARENA
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --emit=kiln -q --max-batch 4 --prefill-chunk 16 --overlap-micro-batches 2 | FileCheck %s --check-prefix=IR
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --emit=plan -q --prefill-chunk 15 --overlap-micro-batches 2 2>&1 | FileCheck %s --check-prefix=ODD

// ARENA: decode: 72 steps, 92 buffers, {{.*}}: ok
// ARENA: prefill: 144 steps, 136 buffers, {{.*}}: ok

// The schedule is visible in the IR (kiln-schedule-overlap).
// IR: func.func @prefill
// IR: kiln.overlap
// IR: kiln.stage "dispatch" communication
// IR: kiln.stage "combine" communication
// IR: kiln.schedule = [{micro_batch = 0 : i64, stage = "route", stream = 0 : i64, waits = array<i64>}, {micro_batch = 1 : i64, stage = "route", stream = 0 : i64, waits = array<i64>}, {micro_batch = 0 : i64, stage = "dispatch", stream = 1 : i64, waits = array<i64: 0>}, {micro_batch = 0 : i64, stage = "experts", stream = 0 : i64, waits = array<i64: 2>}
// IR: tensor.concat dim(0)

// ODD: error: step 'prefill' of 15 tokens cannot be split into 2 equal micro-batches

// CHECK: "decode": {"max_tokens": 4, "max_sequences": 4, "arena_bytes": {{[0-9]+}},
// CHECK-NOT: "stream"
// CHECK: "prefill": {"max_tokens": 16, "max_sequences": 4, "arena_bytes": {{[0-9]+}}, "streams": 2, "events": 20,
// Layer 1's attention runs on stream 0; then the fork into stream 1.
// CHECK: {"op": "add", "stream": 0, "inputs": [{"buffer":"hidden"},{"buffer":"l1.o_proj"}], "outputs": [{"buffer":"hidden"}]
// CHECK-NEXT: {"op": "event_record", "stream": 0, "event": 0,
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 0,
// Steps in the schedule's wavefront order. Both routers first (micro-batch
// 0's reads rows 0..T/2 of the residual stream).
// CHECK-NEXT: {"op": "rms_norm", "stream": 0, "inputs": [{"buffer":"hidden","micro_batch":[0,2]}], "outputs": [{"buffer":"l1.mlp_norm.mb0"}]
// CHECK: {"op": "quantize", "stream": 0, "inputs": [{"buffer":"l1.mlp_norm.mb0"}]
// CHECK-NEXT: {"op": "event_record", "stream": 0, "event": 1,
// CHECK-NEXT: {"op": "rms_norm", "stream": 0, "inputs": [{"buffer":"hidden","micro_batch":[1,2]}], "outputs": [{"buffer":"l1.mlp_norm.mb1"}]
// CHECK: {"op": "event_record", "stream": 0, "event": 2,
// Dispatch of micro-batch 0 on stream 1 waits for its router only.
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 1,
// CHECK-NEXT: {"op": "moe_dispatch", "stream": 1, "inputs": [{"buffer":"l1.mlp_in.mb0_q"},{"buffer":"l1.mlp_in.mb0_s"},{"buffer":"l1.route.mb0_ids"}]
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 3,
// Micro-batch 0's experts (waiting for its dispatch) are queued before
// micro-batch 1's dispatch, which runs beside them.
// CHECK-NEXT: {"op": "event_wait", "stream": 0, "event": 3,
// CHECK-NEXT: {"op": "grouped_gemm", "stream": 0, "inputs": [{"buffer":"l1.experts_in.mb0_q"}
// CHECK: {"op": "gemm", "stream": 0, "inputs": [{"buffer":"l1.shared_act.mb0_q"}
// CHECK-NEXT: {"op": "event_record", "stream": 0, "event": 4,
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 2,
// CHECK-NEXT: {"op": "moe_dispatch", "stream": 1, "inputs": [{"buffer":"l1.mlp_in.mb1_q"}
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 5,
// CHECK-NEXT: {"op": "event_wait", "stream": 0, "event": 5,
// CHECK-NEXT: {"op": "grouped_gemm", "stream": 0, "inputs": [{"buffer":"l1.experts_in.mb1_q"}
// Micro-batch 0's combine (stream 1) runs beside micro-batch 1's experts.
// CHECK: {"op": "event_record", "stream": 0, "event": 6,
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 4,
// CHECK-NEXT: {"op": "moe_combine", "stream": 1, "inputs": [{"buffer":"l1.experts_down.mb0"},{"buffer":"l1.experts_in.mb0_rows"},{"buffer":"l1.route.mb0_weights"}], "outputs": [{"buffer":"l1.routed.mb0"}]
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 7,
// The residual adds write each micro-batch's rows of one T-row buffer (the
// tensor.concat); micro-batch 0's is queued before micro-batch 1's combine.
// CHECK-NEXT: {"op": "event_wait", "stream": 0, "event": 7,
// CHECK-NEXT: {"op": "add", "stream": 0, "inputs": [{"buffer":"l1.routed.mb0"},{"buffer":"l1.shared_down.mb0"}], "outputs": [{"buffer":"l1.routed.mb0"}]
// CHECK-NEXT: {"op": "add", "stream": 0, "inputs": [{"buffer":"hidden","micro_batch":[0,2]},{"buffer":"l1.routed.mb0"}], "outputs": [{"buffer":"l1.mlp_residual","micro_batch":[0,2]}]
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 6,
// CHECK-NEXT: {"op": "moe_combine", "stream": 1,
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 8,
// CHECK-NEXT: {"op": "event_wait", "stream": 0, "event": 8,
// CHECK: {"op": "add", "stream": 0, "inputs": [{"buffer":"hidden","micro_batch":[1,2]},{"buffer":"l1.routed.mb1"}], "outputs": [{"buffer":"l1.mlp_residual","micro_batch":[1,2]}]
// Then stream 1 joins stream 0.
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 9,
// CHECK-NEXT: {"op": "event_wait", "stream": 0, "event": 9,
// CHECK-NEXT: {"op": "rms_norm", "stream": 0, "inputs": [{"buffer":"l1.mlp_residual"}], "outputs": [{"buffer":"l2.attn_in_q"},{"buffer":"l2.attn_in_s"}]
