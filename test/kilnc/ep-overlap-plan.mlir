// kilnc --ep 2 --overlap-micro-batches 2: each prefill MoE layer's two
// micro-batches exchange their rows on stream 1 (ep_slots, moe_dispatch,
// ep_all_to_all, ep_group; ep_ungroup, ep_all_to_all, moe_combine) while the
// other micro-batch's router and expert GEMMs run on stream 0. A
// micro-batch's exchange has its own buffers: R.m/n rows sent, X.m/n rows
// received (2 ranks x 8 tokens x top-4 = 64 per micro-batch at chunk 16).
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --ep 2 --overlap-micro-batches 2 --emit=plan -q --max-batch 4 --prefill-chunk 16 -o %t.json
// RUN: FileCheck %s < %t.json
// RUN: %python %S/check_plan.py %t.json | FileCheck %s --check-prefix=ARENA
// The same steps at one rank (--ep-steps), which one GPU can run.
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --ep-steps --overlap-micro-batches 2 --emit=plan -q --max-batch 4 --prefill-chunk 16 -o %t.ep1.json
// RUN: FileCheck %s --check-prefix=EP1 < %t.ep1.json

// ARENA: decode: 82 steps, 112 buffers, {{.*}}: ok
// ARENA: prefill: 164 steps, 172 buffers, {{.*}}: ok

// Decode plans stay on one stream with whole-step exchanges.
// CHECK: "decode": {"max_tokens": 4,
// CHECK-NOT: "stream"
// CHECK: {"name": "l1.experts_in_recv_q", "dtype": "f8e4m3", "rows": "X", "cols": 256,
// CHECK: "prefill": {"max_tokens": 16, "max_sequences": 4, "arena_bytes": {{[0-9]+}}, "streams": 2, "events": 20,
// CHECK: {"name": "l1.experts_in.mb0_send_q", "dtype": "f8e4m3", "rows": "R.0/2", "cols": 256, "offset": {{[0-9]+}}, "bytes": 8192},
// CHECK: {"name": "l1.experts_in.mb0_recv_q", "dtype": "f8e4m3", "rows": "X.0/2", "cols": 256, "offset": {{[0-9]+}}, "bytes": 16384},
// CHECK: {"name": "l1.experts_in.mb0_q", "dtype": "f8e4m3", "rows": "X.0/2", "cols": 256,
// CHECK: {"name": "l1.experts_down.mb0", "dtype": "bf16", "rows": "X.0/2", "cols": 256,
// CHECK: {"name": "l1.experts_in.mb1_recv_q", "dtype": "f8e4m3", "rows": "X.1/2", "cols": 256,
// CHECK: {"name": "l1.routed.mb0_send_y", "dtype": "bf16", "rows": "X.0/2", "cols": 256,
// CHECK: {"name": "l1.routed.mb0_recv_y", "dtype": "bf16", "rows": "R.0/2", "cols": 256,

// The fork, then micro-batch 0's and 1's routers on stream 0.
// CHECK: {"op": "event_record", "stream": 0, "event": 0,
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 0,
// CHECK-NEXT: {"op": "rms_norm", "stream": 0, "inputs": [{"buffer":"hidden","micro_batch":[0,2]}]
// CHECK: {"op": "event_record", "stream": 0, "event": 1,
// CHECK-NEXT: {"op": "rms_norm", "stream": 0, "inputs": [{"buffer":"hidden","micro_batch":[1,2]}]
// CHECK: {"op": "event_record", "stream": 0, "event": 2,
// Micro-batch 0's dispatch side on stream 1.
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 1,
// CHECK-NEXT: {"op": "ep_slots", "stream": 1, "inputs": [{"buffer":"l1.route.mb0_ids"}], "outputs": [{"buffer":"l1.experts_in.mb0_slots"}]
// CHECK-NEXT: {"op": "moe_dispatch", "stream": 1, "inputs": [{"buffer":"l1.mlp_in.mb0_q"},{"buffer":"l1.mlp_in.mb0_s"},{"buffer":"l1.experts_in.mb0_slots"}], "outputs": [{"buffer":"l1.experts_in.mb0_send_q"},{"buffer":"l1.experts_in.mb0_send_s"},{"buffer":"l1.experts_in.mb0_send_offsets"},{"buffer":"l1.experts_in.mb0_rows"}], "weights": [], "attrs": {"groups":16}},
// CHECK-NEXT: {"op": "ep_all_to_all", "stream": 1, "inputs": [{"buffer":"l1.experts_in.mb0_send_q"},{"buffer":"l1.experts_in.mb0_send_s"},{"buffer":"l1.experts_in.mb0_send_offsets"}], "outputs": [{"buffer":"l1.experts_in.mb0_recv_q"},{"buffer":"l1.experts_in.mb0_recv_s"},{"buffer":"l1.experts_in.mb0_recv_counts"}], "weights": [], "attrs": {"direction":"dispatch"}},
// CHECK-NEXT: {"op": "ep_group", "stream": 1, {{.*}} "outputs": [{"buffer":"l1.experts_in.mb0_q"},{"buffer":"l1.experts_in.mb0_s"},{"buffer":"l1.experts_in.mb0_offsets"}]
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 3,
// Wavefront order: micro-batch 0's experts (waiting for its exchange only)
// are queued before micro-batch 1's exchange, which blocks the host on its
// counts while they run and then runs beside them.
// CHECK-NEXT: {"op": "event_wait", "stream": 0, "event": 3,
// CHECK-NEXT: {"op": "grouped_gemm", "stream": 0, "inputs": [{"buffer":"l1.experts_in.mb0_q"},{"buffer":"l1.experts_in.mb0_s"},{"buffer":"l1.experts_in.mb0_offsets"}], "outputs": [{"buffer":"l1.experts_gate.mb0"}]
// CHECK: {"op": "event_record", "stream": 0, "event": 4,
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 2,
// CHECK-NEXT: {"op": "ep_slots", "stream": 1, "inputs": [{"buffer":"l1.route.mb1_ids"}]
// CHECK-NEXT: {"op": "moe_dispatch", "stream": 1,
// CHECK-NEXT: {"op": "ep_all_to_all", "stream": 1, {{.*}} "attrs": {"direction":"dispatch"}},
// CHECK-NEXT: {"op": "ep_group", "stream": 1,
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 5,
// CHECK-NEXT: {"op": "event_wait", "stream": 0, "event": 5,
// CHECK-NEXT: {"op": "grouped_gemm", "stream": 0, "inputs": [{"buffer":"l1.experts_in.mb1_q"}
// Micro-batch 0's way back on stream 1, beside micro-batch 1's experts.
// CHECK: {"op": "event_record", "stream": 0, "event": 6,
// CHECK-NEXT: {"op": "event_wait", "stream": 1, "event": 4,
// CHECK-NEXT: {"op": "ep_ungroup", "stream": 1, "inputs": [{"buffer":"l1.experts_down.mb0"},{"buffer":"l1.experts_in.mb0_recv_counts"}], "outputs": [{"buffer":"l1.routed.mb0_send_y"}]
// CHECK-NEXT: {"op": "ep_all_to_all", "stream": 1, "inputs": [{"buffer":"l1.routed.mb0_send_y"},{"buffer":"l1.experts_in.mb0_recv_counts"},{"buffer":"l1.experts_in.mb0_send_offsets"}], "outputs": [{"buffer":"l1.routed.mb0_recv_y"}], "weights": [], "attrs": {"direction":"combine"}},
// CHECK-NEXT: {"op": "moe_combine", "stream": 1, "inputs": [{"buffer":"l1.routed.mb0_recv_y"},{"buffer":"l1.experts_in.mb0_rows"},{"buffer":"l1.route.mb0_weights"}], "outputs": [{"buffer":"l1.routed.mb0"}]
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 7,
// Micro-batch 0's residual is queued before micro-batch 1's way back.
// CHECK-NEXT: {"op": "event_wait", "stream": 0, "event": 7,
// CHECK-NEXT: {"op": "add", "stream": 0, "inputs": [{"buffer":"l1.routed.mb0"},{"buffer":"l1.shared_down.mb0"}]
// CHECK: {"op": "event_wait", "stream": 1, "event": 6,
// CHECK-NEXT: {"op": "ep_ungroup", "stream": 1, "inputs": [{"buffer":"l1.experts_down.mb1"}
// CHECK-NEXT: {"op": "ep_all_to_all", "stream": 1, {{.*}} "attrs": {"direction":"combine"}},
// CHECK-NEXT: {"op": "moe_combine", "stream": 1,
// CHECK-NEXT: {"op": "event_record", "stream": 1, "event": 8,

// EP1: "expert_parallel": {"world_size": 1, "slots_per_rank": 16,
// EP1: "prefill": {"max_tokens": 16, {{.*}} "streams": 2,
// EP1: {"name": "l1.experts_in.mb1_recv_q", "dtype": "f8e4m3", "rows": "X.1/2", "cols": 256, "offset": {{[0-9]+}}, "bytes": 8192},
// EP1: {"op": "ep_all_to_all", "stream": 1, {{.*}} "attrs": {"direction":"dispatch"}},
