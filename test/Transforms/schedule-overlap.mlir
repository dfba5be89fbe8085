// The two-stream schedule of a two-micro-batch MoE layer: route (compute),
// dispatch (communication), experts (compute), combine (communication).
// RUN: kiln-opt %s --kiln-schedule-overlap | FileCheck %s
// RUN: kiln-opt %s --kiln-schedule-overlap | kiln-opt | FileCheck %s

// Entries in wavefront order (stage s of micro-batch m in step s + m,
// compute before communication within a step), so the host queues a
// micro-batch's experts before the other's dispatch, which may block it on
// the exchange's counts. A stage waits only for producers on the other
// stream: combine reads the experts' output and route's weights (stream 0),
// and dispatch's sources on its own stream (no event).
// CHECK-LABEL: func.func @two_micro_batches
// CHECK: kiln.overlap
// CHECK-SAME: kiln.schedule = [
// CHECK-SAME: {micro_batch = 0 : i64, stage = "route", stream = 0 : i64, waits = array<i64>},
// CHECK-SAME: {micro_batch = 1 : i64, stage = "route", stream = 0 : i64, waits = array<i64>},
// CHECK-SAME: {micro_batch = 0 : i64, stage = "dispatch", stream = 1 : i64, waits = array<i64: 0>},
// CHECK-SAME: {micro_batch = 0 : i64, stage = "experts", stream = 0 : i64, waits = array<i64: 2>},
// CHECK-SAME: {micro_batch = 1 : i64, stage = "dispatch", stream = 1 : i64, waits = array<i64: 1>},
// CHECK-SAME: {micro_batch = 1 : i64, stage = "experts", stream = 0 : i64, waits = array<i64: 4>},
// CHECK-SAME: {micro_batch = 0 : i64, stage = "combine", stream = 1 : i64, waits = array<i64: 0, 3>},
// CHECK-SAME: {micro_batch = 1 : i64, stage = "combine", stream = 1 : i64, waits = array<i64: 1, 5>}]
// CHECK-SAME: kiln.streams = ["compute", "communication"]
#ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>

func.func @two_micro_batches(%x0: tensor<64x7168xbf16>, %x1: tensor<64x7168xbf16>,
                             %norm: tensor<7168xbf16>, %gate: tensor<256x7168xbf16>,
                             %bias: tensor<256xf32>,
                             %w13: tensor<32x4096x7168xf8E4M3FN>, %w13s: tensor<32x32x56xf32>,
                             %w2: tensor<32x7168x2048xf8E4M3FN>, %w2s: tensor<32x56x16xf32>)
    -> (tensor<64x7168xbf16>, tensor<64x7168xbf16>) {
    %y0, %y1 = kiln.overlap %x0, %x1
      : (tensor<64x7168xbf16>, tensor<64x7168xbf16>) -> (tensor<64x7168xbf16>, tensor<64x7168xbf16>) {
  ^bb0(%x: tensor<64x7168xbf16>):
    %q, %s, %ids, %weights = kiln.stage "route" compute %x
        : (tensor<64x7168xbf16>) -> (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x8xi32>, tensor<64x8xf32>) {
    ^bb0(%in: tensor<64x7168xbf16>):
      // Weights defined outside the overlap may be used directly.
      %h = kiln.rms_norm %in, %norm {epsilon = 1.0e-6 : f32} : (tensor<64x7168xbf16>, tensor<7168xbf16>) -> tensor<64x7168xbf16>
      %logits = kiln.matmul %h, %gate : (tensor<64x7168xbf16>, tensor<256x7168xbf16>) -> tensor<64x256xf32>
      %i, %w = kiln.moe_route sigmoid %logits bias %bias {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32}
          : (tensor<64x256xf32>, tensor<256xf32>) -> (tensor<64x8xi32>, tensor<64x8xf32>)
      %hq, %hs = kiln.quantize %h tile_1x128 : tensor<64x7168xbf16> -> tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>
      kiln.yield %hq, %hs, %i, %w : tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x8xi32>, tensor<64x8xf32>
    }
    %t, %ts, %n, %src = kiln.stage "dispatch" communication %q, %s, %ids
        : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x8xi32>)
        -> (tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32xi32>, tensor<32x512xi32>) {
    ^bb0(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %i: tensor<64x8xi32>):
      %r:4 = kiln.moe_dispatch masked %a scales %as experts %i {parallel = #ep}
          : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x8xi32>)
          -> (tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32xi32>, tensor<32x512xi32>)
      kiln.yield %r#0, %r#1, %r#2, %r#3 : tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32xi32>, tensor<32x512xi32>
    }
    %o = kiln.stage "experts" compute %t, %ts, %n
        : (tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32xi32>) -> tensor<32x512x7168xbf16> {
    ^bb0(%a: tensor<32x512x7168xf8E4M3FN>, %as: tensor<32x512x56xf32>, %c: tensor<32xi32>):
      %gu = kiln.grouped_scaled_matmul masked %a, %as, %w13, %w13s, %c
          : (tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<32xi32>) -> tensor<32x512x4096xbf16>
      %act = kiln.swiglu %gu : tensor<32x512x4096xbf16> -> tensor<32x512x2048xbf16>
      %aq, %aqs = kiln.quantize %act tile_1x128 : tensor<32x512x2048xbf16> -> tensor<32x512x2048xf8E4M3FN>, tensor<32x512x16xf32>
      %d = kiln.grouped_scaled_matmul masked %aq, %aqs, %w2, %w2s, %c
          : (tensor<32x512x2048xf8E4M3FN>, tensor<32x512x16xf32>, tensor<32x7168x2048xf8E4M3FN>, tensor<32x56x16xf32>, tensor<32xi32>) -> tensor<32x512x7168xbf16>
      kiln.yield %d : tensor<32x512x7168xbf16>
    }
    %y = kiln.stage "combine" communication %o, %src, %weights
        : (tensor<32x512x7168xbf16>, tensor<32x512xi32>, tensor<64x8xf32>) -> tensor<64x7168xbf16> {
    ^bb0(%e: tensor<32x512x7168xbf16>, %sr: tensor<32x512xi32>, %w: tensor<64x8xf32>):
      %c = kiln.moe_combine masked %e source %sr weights %w {parallel = #ep}
          : (tensor<32x512x7168xbf16>, tensor<32x512xi32>, tensor<64x8xf32>) -> tensor<64x7168xbf16>
      kiln.yield %c : tensor<64x7168xbf16>
    }
    kiln.yield %y : tensor<64x7168xbf16>
  }
  return %y0, %y1 : tensor<64x7168xbf16>, tensor<64x7168xbf16>
}
