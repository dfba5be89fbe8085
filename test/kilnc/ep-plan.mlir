// Expert-parallel launch plans (artifact.md "Expert parallelism"): with
// --ep 2 every MoE layer maps its routed rows to global expert slots, groups
// them by destination rank, exchanges counts and rows (ep_all_to_all), runs
// the grouped GEMMs over this rank's 8 slots and sends the outputs back
// before the weighted combine; the shared expert stays local. The manifest
// records the placement every rank reads its slots from.
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --ep 2 --emit=plan -q -o %t.json
// RUN: FileCheck %s < %t.json
// RUN: %python %S/check_plan.py %t.json | FileCheck %s --check-prefix=ARENA
// An EPLB placement from observed loads: expert 3 is hot and gets replicas.
// RUN: echo '[1,1,1,40,1,1,1,1,1,1,1,1,1,1,1,1]' > %t.loads.json
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --ep 2 --ep-placement %t.loads.json --emit=plan -q -o %t.eplb.json
// RUN: FileCheck %s --check-prefix=EPLB < %t.eplb.json
// --ep-gather-bytes 0: decode exchanges packed too (counts read on the host).
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --ep 2 --ep-gather-bytes 0 --emit=plan -q -o %t.packed.json
// RUN: FileCheck %s --check-prefix=PACKED < %t.packed.json
// A budget of one bucket: 2 ranks x 1 token x top-4 x 256 = 2048 bytes.
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --ep 2 --ep-gather-bytes 4095 --emit=plan -q -o %t.one.json
// RUN: FileCheck %s --check-prefix=ONE < %t.one.json
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --ep 2 --ep-gather-bytes -1 -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=NEGATIVE
// --ep-steps writes the same steps at one rank (the exchange is a copy).
// RUN: kilnc %kiln_src_root/examples/tiny/config.json --ep-steps --emit=plan -q -o %t.ep1.json
// RUN: FileCheck %s --check-prefix=EP1 < %t.ep1.json
// Errors name the option.
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --ep 3 -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=DIVIDE
// RUN: echo '[1,2]' > %t.short.json
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --ep 2 --ep-placement %t.short.json -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=LOADS

// ARENA: decode: {{[0-9]+}} steps, {{[0-9]+}} buffers, {{[1-9][0-9]*}} pairs share space, arena {{[0-9]+}} of {{[0-9]+}} bytes: ok
// ARENA: prefill: {{[0-9]+}} steps, {{[0-9]+}} buffers, {{[1-9][0-9]*}} pairs share space, arena {{[0-9]+}} of {{[0-9]+}} bytes: ok

// CHECK: "expert_parallel": {"world_size": 2, "slots_per_rank": 8, "placement": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]},

// Exchanged rows (X) are every rank's routed rows at the plan's maxima:
// 2 ranks x 8 tokens x top-4 = 64 rows in decode. Decode exchanges are
// gathered (artifact.md "Gathered exchanges") up to 8 tokens (2 x 8 x 4 rows
// of 256 bytes = 16 KiB, within the default 2 MiB): every rank receives every
// rank's whole send buffer and send offsets [2][17], and the combine gets
// its rows back in 2 blocks (X rows), which moe_combine finds by the send
// offsets.
// CHECK: "decode": {"max_tokens": 8,
// CHECK: {"name": "l1.experts_in_send_offsets", "dtype": "i32", "rows": "17", "cols": 1,
// CHECK: {"name": "l1.experts_in_recv_q", "dtype": "f8e4m3", "rows": "X", "cols": 256, "offset": {{[0-9]+}}, "bytes": 16384},
// CHECK: {"name": "l1.experts_in_recv_counts", "dtype": "i32", "rows": "16", "cols": 1,
// CHECK: {"name": "l1.experts_in_recv_offsets", "dtype": "i32", "rows": "34", "cols": 1,
// CHECK: {"name": "l1.experts_in_offsets", "dtype": "i32", "rows": "9", "cols": 1,
// CHECK: {"name": "l1.routed_recv_y", "dtype": "bf16", "rows": "X", "cols": 256,

// CHECK: {"op": "moe_route", "inputs": [{"buffer":"l1.router"}]
// CHECK-NEXT: {"op": "quantize"
// CHECK-NEXT: {"op": "ep_slots", "inputs": [{"buffer":"l1.route_ids"}], "outputs": [{"buffer":"l1.experts_in_slots"}]
// CHECK-NEXT: {"op": "moe_dispatch", "inputs": [{"buffer":"l1.mlp_in_q"},{"buffer":"l1.mlp_in_s"},{"buffer":"l1.experts_in_slots"}], "outputs": [{"buffer":"l1.experts_in_send_q"},{"buffer":"l1.experts_in_send_s"},{"buffer":"l1.experts_in_send_offsets"},{"buffer":"l1.experts_in_rows"}], "weights": [], "attrs": {"groups":16}},
// CHECK-NEXT: {"op": "ep_all_to_all", "inputs": [{"buffer":"l1.experts_in_send_q"},{"buffer":"l1.experts_in_send_s"},{"buffer":"l1.experts_in_send_offsets"}], "outputs": [{"buffer":"l1.experts_in_recv_q"},{"buffer":"l1.experts_in_recv_s"},{"buffer":"l1.experts_in_recv_counts"},{"buffer":"l1.experts_in_recv_offsets"}], "weights": [], "attrs": {"direction":"dispatch","gather_tokens":8}},
// CHECK-NEXT: {"op": "ep_group", "inputs": [{"buffer":"l1.experts_in_recv_q"},{"buffer":"l1.experts_in_recv_s"},{"buffer":"l1.experts_in_recv_counts"},{"buffer":"l1.experts_in_recv_offsets"}], "outputs": [{"buffer":"l1.experts_in_q"},{"buffer":"l1.experts_in_s"},{"buffer":"l1.experts_in_offsets"}], "weights": [], "attrs": {"gather_tokens":8}},
// CHECK-NEXT: {"op": "grouped_gemm", "inputs": [{"buffer":"l1.experts_in_q"},{"buffer":"l1.experts_in_s"},{"buffer":"l1.experts_in_offsets"}], "outputs": [{"buffer":"l1.experts_gate"}]
// CHECK-NEXT: {"op": "grouped_gemm", {{.*}} "outputs": [{"buffer":"l1.experts_up"}]
// CHECK-NEXT: {"op": "swiglu"
// CHECK-NEXT: {"op": "grouped_gemm", {{.*}} "outputs": [{"buffer":"l1.experts_down"}]
// CHECK-NEXT: {"op": "ep_ungroup", "inputs": [{"buffer":"l1.experts_down"},{"buffer":"l1.experts_in_recv_counts"},{"buffer":"l1.experts_in_recv_offsets"}], "outputs": [{"buffer":"l1.routed_send_y"}], "weights": [], "attrs": {"gather_tokens":8}},
// CHECK-NEXT: {"op": "ep_all_to_all", "inputs": [{"buffer":"l1.routed_send_y"},{"buffer":"l1.experts_in_recv_counts"},{"buffer":"l1.experts_in_send_offsets"}], "outputs": [{"buffer":"l1.routed_recv_y"}], "weights": [], "attrs": {"direction":"combine","gather_tokens":8}},
// CHECK-NEXT: {"op": "moe_combine", "inputs": [{"buffer":"l1.routed_recv_y"},{"buffer":"l1.experts_in_rows"},{"buffer":"l1.route_weights"},{"buffer":"l1.experts_in_send_offsets"}], "outputs": [{"buffer":"l1.routed"}], "weights": [], "attrs": {"gather_tokens":8}},
// CHECK-NEXT: {"op": "gemm", "inputs": [{"buffer":"l1.mlp_in_q"},{"buffer":"l1.mlp_in_s"}], "outputs": [{"buffer":"l1.shared_gate"}]

// Packed (--ep-gather-bytes 0): the received counts only, rows back in R.
// Exchanged rows (X) are every rank's routed rows at the plan's maxima:
// 2 ranks x 8 tokens x top-4 = 64 rows in decode.
// PACKED: "decode": {"max_tokens": 8,
// PACKED: {"name": "l1.experts_in_send_offsets", "dtype": "i32", "rows": "17", "cols": 1,
// PACKED: {"name": "l1.experts_in_recv_q", "dtype": "f8e4m3", "rows": "X", "cols": 256, "offset": {{[0-9]+}}, "bytes": 16384},
// PACKED: {"name": "l1.experts_in_recv_counts", "dtype": "i32", "rows": "16", "cols": 1,
// PACKED: {"name": "l1.experts_in_offsets", "dtype": "i32", "rows": "9", "cols": 1,

// PACKED: {"op": "moe_route", "inputs": [{"buffer":"l1.router"}]
// PACKED-NEXT: {"op": "quantize"
// PACKED-NEXT: {"op": "ep_slots", "inputs": [{"buffer":"l1.route_ids"}], "outputs": [{"buffer":"l1.experts_in_slots"}]
// PACKED-NEXT: {"op": "moe_dispatch", "inputs": [{"buffer":"l1.mlp_in_q"},{"buffer":"l1.mlp_in_s"},{"buffer":"l1.experts_in_slots"}], "outputs": [{"buffer":"l1.experts_in_send_q"},{"buffer":"l1.experts_in_send_s"},{"buffer":"l1.experts_in_send_offsets"},{"buffer":"l1.experts_in_rows"}], "weights": [], "attrs": {"groups":16}},
// PACKED-NEXT: {"op": "ep_all_to_all", "inputs": [{"buffer":"l1.experts_in_send_q"},{"buffer":"l1.experts_in_send_s"},{"buffer":"l1.experts_in_send_offsets"}], "outputs": [{"buffer":"l1.experts_in_recv_q"},{"buffer":"l1.experts_in_recv_s"},{"buffer":"l1.experts_in_recv_counts"}], "weights": [], "attrs": {"direction":"dispatch"}},
// PACKED-NEXT: {"op": "ep_group", "inputs": [{"buffer":"l1.experts_in_recv_q"},{"buffer":"l1.experts_in_recv_s"},{"buffer":"l1.experts_in_recv_counts"}], "outputs": [{"buffer":"l1.experts_in_q"},{"buffer":"l1.experts_in_s"},{"buffer":"l1.experts_in_offsets"}]
// PACKED-NEXT: {"op": "grouped_gemm", "inputs": [{"buffer":"l1.experts_in_q"},{"buffer":"l1.experts_in_s"},{"buffer":"l1.experts_in_offsets"}], "outputs": [{"buffer":"l1.experts_gate"}], "weights": ["model.layers.1.mlp.experts.{e}.gate_proj.weight"]
// PACKED-NEXT: {"op": "grouped_gemm", {{.*}} "outputs": [{"buffer":"l1.experts_up"}]
// PACKED-NEXT: {"op": "swiglu", "inputs": [{"buffer":"l1.experts_gate"},{"buffer":"l1.experts_up"},{"buffer":"l1.experts_in_offsets"}]
// PACKED-NEXT: {"op": "grouped_gemm", {{.*}} "outputs": [{"buffer":"l1.experts_down"}]
// PACKED-NEXT: {"op": "ep_ungroup", "inputs": [{"buffer":"l1.experts_down"},{"buffer":"l1.experts_in_recv_counts"}], "outputs": [{"buffer":"l1.routed_send_y"}]
// PACKED-NEXT: {"op": "ep_all_to_all", "inputs": [{"buffer":"l1.routed_send_y"},{"buffer":"l1.experts_in_recv_counts"},{"buffer":"l1.experts_in_send_offsets"}], "outputs": [{"buffer":"l1.routed_recv_y"}], "weights": [], "attrs": {"direction":"combine"}},
// PACKED-NEXT: {"op": "moe_combine", "inputs": [{"buffer":"l1.routed_recv_y"},{"buffer":"l1.experts_in_rows"},{"buffer":"l1.route_weights"}]
// PACKED-NEXT: {"op": "gemm", "inputs": [{"buffer":"l1.mlp_in_q"},{"buffer":"l1.mlp_in_s"}], "outputs": [{"buffer":"l1.shared_gate"}]

// Prefill: 2 ranks x 256 tokens x top-4 exchanged rows.
// CHECK: "prefill": {"max_tokens": 256,
// CHECK: {"name": "l1.experts_in_recv_q", "dtype": "f8e4m3", "rows": "X", "cols": 256, "offset": {{[0-9]+}}, "bytes": 524288},
// Prefill plans never gather (they run eagerly; gathering would move the
// buckets' padding).
// CHECK-NOT: gather_tokens
// CHECK: "op": "matmul", "inputs": [{"buffer":"last_hidden"}]

// With loads: 9 slots per rank; expert 3 (load 40) takes the 2 spare slots.
// EPLB: "expert_parallel": {"world_size": 2, "slots_per_rank": 9, "placement": [3,3,9,10,11,12,13,14,15,3,0,1,2,4,5,6,7,8]},
// EPLB: "attrs": {"groups":18}

// EP1: "expert_parallel": {"world_size": 1, "slots_per_rank": 16,
// EP1: {"op": "ep_all_to_all", {{.*}} "attrs": {"direction":"dispatch"}},

// DIVIDE: kilnc: error: --ep 3 does not divide 16 routed experts
// LOADS: kilnc: error: --ep-placement {{.*}}short.json: expected a JSON array of 16 per-expert loads

// ONE: {"direction":"dispatch","gather_tokens":1}
// NEGATIVE: kilnc: error: --ep-gather-bytes must be at least 0, got -1
