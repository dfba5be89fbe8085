// One DeepSeek-V3 MoE layer (the part of a decoder layer after attention) in
// the kiln dialect, at the real shapes of the 671B model:
//   hidden size 7168; 256 routed experts with intermediate size 2048, top-8,
//   8 groups of which 4 are kept, sigmoid scores with a correction bias,
//   routed scaling factor 2.5; one shared expert; SwiGLU; FP8 E4M3 weights in
//   128x128 blocks, activations quantized per 1x128 tile.
//
// Expert parallelism over 8 ranks: each rank holds 32 of the 256 experts and
// runs this function on its own 128 tokens (a decode step). Dispatch uses the
// masked layout (fixed shapes, for CUDA graphs) with a capacity of 1024 rows
// per expert slot: every one of the 8 x 128 tokens of the group may pick the
// same expert, so nothing is ever dropped.
//
// The gate and up projections of every expert are stored fused ([4096, 7168]:
// gate rows first, then up rows), as kiln.swiglu expects.
//
// Compile it (parse, verify, print):  kiln-opt examples/deepseek-v3/moe_layer.mlir

#ep8 = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>

func.func @moe_layer(
    // Residual stream after attention, this rank's tokens.
    %hidden: tensor<128x7168xbf16>,
    // model.layers.{i}.post_attention_layernorm.weight
    %norm_w: tensor<7168xbf16>,
    // mlp.gate.weight and mlp.gate.e_score_correction_bias
    %gate_w: tensor<256x7168xbf16>, %bias: tensor<256xf32>,
    // mlp.experts.{e}.{gate,up}_proj of this rank's 32 experts, fused; scales
    %w13: tensor<32x4096x7168xf8E4M3FN>, %w13_s: tensor<32x32x56xf32>,
    // mlp.experts.{e}.down_proj
    %w2: tensor<32x7168x2048xf8E4M3FN>, %w2_s: tensor<32x56x16xf32>,
    // mlp.shared_experts.{gate,up}_proj fused, and down_proj
    %sw13: tensor<4096x7168xf8E4M3FN>, %sw13_s: tensor<32x56xf32>,
    %sw2: tensor<7168x2048xf8E4M3FN>, %sw2_s: tensor<56x16xf32>)
    -> tensor<128x7168xbf16> {
  %h = kiln.rms_norm %hidden, %norm_w {epsilon = 1.0e-6 : f32}
      : (tensor<128x7168xbf16>, tensor<7168xbf16>) -> tensor<128x7168xbf16>

  // Router: FP32 logits from the BF16 gate, group-limited top-8.
  %logits = kiln.matmul %h, %gate_w
      : (tensor<128x7168xbf16>, tensor<256x7168xbf16>) -> tensor<128x256xf32>
  %ids, %weights = kiln.moe_route sigmoid %logits bias %bias
      {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32}
      : (tensor<128x256xf32>, tensor<256xf32>) -> (tensor<128x8xi32>, tensor<128x8xf32>)

  // Tokens travel in FP8 with their 1x128 scales.
  %hq, %hs = kiln.quantize %h tile_1x128
      : tensor<128x7168xbf16> -> tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>
  %xq, %xs, %counts, %src = kiln.moe_dispatch masked %hq scales %hs experts %ids {parallel = #ep8}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>)
      -> (tensor<32x1024x7168xf8E4M3FN>, tensor<32x1024x56xf32>, tensor<32xi32>, tensor<32x1024xi32>)

  // Routed experts: grouped gate/up GEMM, SwiGLU, requantize, grouped down GEMM.
  %gu = kiln.grouped_scaled_matmul masked %xq, %xs, %w13, %w13_s, %counts
      : (tensor<32x1024x7168xf8E4M3FN>, tensor<32x1024x56xf32>,
         tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<32xi32>)
      -> tensor<32x1024x4096xbf16>
  %act = kiln.swiglu %gu : tensor<32x1024x4096xbf16> -> tensor<32x1024x2048xbf16>
  %aq, %as = kiln.quantize %act tile_1x128
      : tensor<32x1024x2048xbf16> -> tensor<32x1024x2048xf8E4M3FN>, tensor<32x1024x16xf32>
  %down = kiln.grouped_scaled_matmul masked %aq, %as, %w2, %w2_s, %counts
      : (tensor<32x1024x2048xf8E4M3FN>, tensor<32x1024x16xf32>,
         tensor<32x7168x2048xf8E4M3FN>, tensor<32x56x16xf32>, tensor<32xi32>)
      -> tensor<32x1024x7168xbf16>
  %routed = kiln.moe_combine masked %down source %src weights %weights {parallel = #ep8}
      : (tensor<32x1024x7168xbf16>, tensor<32x1024xi32>, tensor<128x8xf32>) -> tensor<128x7168xbf16>

  // Shared expert on the same quantized tokens.
  %sgu = kiln.scaled_matmul %hq, %hs, %sw13, %sw13_s
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>)
      -> tensor<128x4096xbf16>
  %sact = kiln.swiglu %sgu : tensor<128x4096xbf16> -> tensor<128x2048xbf16>
  %sq, %ss = kiln.quantize %sact tile_1x128
      : tensor<128x2048xbf16> -> tensor<128x2048xf8E4M3FN>, tensor<128x16xf32>
  %shared = kiln.scaled_matmul %sq, %ss, %sw2, %sw2_s
      : (tensor<128x2048xf8E4M3FN>, tensor<128x16xf32>, tensor<7168x2048xf8E4M3FN>, tensor<56x16xf32>)
      -> tensor<128x7168xbf16>

  %moe = arith.addf %routed, %shared : tensor<128x7168xbf16>
  %out = arith.addf %hidden, %moe : tensor<128x7168xbf16>
  return %out : tensor<128x7168xbf16>
}

// The same layer for two micro-batches of 64 tokens, written so that one
// micro-batch's dispatch and combine can run beside the other's compute.
func.func @moe_layer_overlapped(
    %hidden0: tensor<64x7168xbf16>, %hidden1: tensor<64x7168xbf16>,
    %norm_w: tensor<7168xbf16>,
    %gate_w: tensor<256x7168xbf16>, %bias: tensor<256xf32>,
    %w13: tensor<32x4096x7168xf8E4M3FN>, %w13_s: tensor<32x32x56xf32>,
    %w2: tensor<32x7168x2048xf8E4M3FN>, %w2_s: tensor<32x56x16xf32>,
    %sw13: tensor<4096x7168xf8E4M3FN>, %sw13_s: tensor<32x56xf32>,
    %sw2: tensor<7168x2048xf8E4M3FN>, %sw2_s: tensor<56x16xf32>)
    -> (tensor<64x7168xbf16>, tensor<64x7168xbf16>) {
  %out0, %out1 = kiln.overlap %hidden0, %hidden1
      : (tensor<64x7168xbf16>, tensor<64x7168xbf16>) -> (tensor<64x7168xbf16>, tensor<64x7168xbf16>) {
  ^bb0(%hidden: tensor<64x7168xbf16>):
    %hq, %hs, %ids, %weights = kiln.stage "route" compute %hidden
        : (tensor<64x7168xbf16>)
        -> (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x8xi32>, tensor<64x8xf32>) {
    ^bb0(%x: tensor<64x7168xbf16>):
      %h = kiln.rms_norm %x, %norm_w {epsilon = 1.0e-6 : f32}
          : (tensor<64x7168xbf16>, tensor<7168xbf16>) -> tensor<64x7168xbf16>
      %logits = kiln.matmul %h, %gate_w
          : (tensor<64x7168xbf16>, tensor<256x7168xbf16>) -> tensor<64x256xf32>
      %i, %w = kiln.moe_route sigmoid %logits bias %bias
          {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32}
          : (tensor<64x256xf32>, tensor<256xf32>) -> (tensor<64x8xi32>, tensor<64x8xf32>)
      %q, %s = kiln.quantize %h tile_1x128
          : tensor<64x7168xbf16> -> tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>
      kiln.yield %q, %s, %i, %w
          : tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x8xi32>, tensor<64x8xf32>
    }
    %xq, %xs, %counts, %src = kiln.stage "dispatch" communication %hq, %hs, %ids
        : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x8xi32>)
        -> (tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32xi32>, tensor<32x512xi32>) {
    ^bb0(%q: tensor<64x7168xf8E4M3FN>, %s: tensor<64x56xf32>, %i: tensor<64x8xi32>):
      %t, %ts, %n, %sr = kiln.moe_dispatch masked %q scales %s experts %i {parallel = #ep8}
          : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x8xi32>)
          -> (tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32xi32>, tensor<32x512xi32>)
      kiln.yield %t, %ts, %n, %sr
          : tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32xi32>, tensor<32x512xi32>
    }
    %down = kiln.stage "experts" compute %xq, %xs, %counts
        : (tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>, tensor<32xi32>) -> tensor<32x512x7168xbf16> {
    ^bb0(%x: tensor<32x512x7168xf8E4M3FN>, %s: tensor<32x512x56xf32>, %n: tensor<32xi32>):
      %gu = kiln.grouped_scaled_matmul masked %x, %s, %w13, %w13_s, %n
          : (tensor<32x512x7168xf8E4M3FN>, tensor<32x512x56xf32>,
             tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<32xi32>)
          -> tensor<32x512x4096xbf16>
      %act = kiln.swiglu %gu : tensor<32x512x4096xbf16> -> tensor<32x512x2048xbf16>
      %aq, %as = kiln.quantize %act tile_1x128
          : tensor<32x512x2048xbf16> -> tensor<32x512x2048xf8E4M3FN>, tensor<32x512x16xf32>
      %d = kiln.grouped_scaled_matmul masked %aq, %as, %w2, %w2_s, %n
          : (tensor<32x512x2048xf8E4M3FN>, tensor<32x512x16xf32>,
             tensor<32x7168x2048xf8E4M3FN>, tensor<32x56x16xf32>, tensor<32xi32>)
          -> tensor<32x512x7168xbf16>
      kiln.yield %d : tensor<32x512x7168xbf16>
    }
    %routed = kiln.stage "combine" communication %down, %src, %weights
        : (tensor<32x512x7168xbf16>, tensor<32x512xi32>, tensor<64x8xf32>) -> tensor<64x7168xbf16> {
    ^bb0(%d: tensor<32x512x7168xbf16>, %sr: tensor<32x512xi32>, %w: tensor<64x8xf32>):
      %r = kiln.moe_combine masked %d source %sr weights %w {parallel = #ep8}
          : (tensor<32x512x7168xbf16>, tensor<32x512xi32>, tensor<64x8xf32>) -> tensor<64x7168xbf16>
      kiln.yield %r : tensor<64x7168xbf16>
    }
    // The shared expert and the residual add run after the combine here; a
    // scheduler may move the shared expert beside the dispatch instead.
    %out = kiln.stage "shared_expert" compute %hidden, %hq, %hs, %routed
        : (tensor<64x7168xbf16>, tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<64x7168xbf16>)
        -> tensor<64x7168xbf16> {
    ^bb0(%x: tensor<64x7168xbf16>, %q: tensor<64x7168xf8E4M3FN>, %s: tensor<64x56xf32>,
         %r: tensor<64x7168xbf16>):
      %sgu = kiln.scaled_matmul %q, %s, %sw13, %sw13_s
          : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>)
          -> tensor<64x4096xbf16>
      %sact = kiln.swiglu %sgu : tensor<64x4096xbf16> -> tensor<64x2048xbf16>
      %sq, %ss = kiln.quantize %sact tile_1x128
          : tensor<64x2048xbf16> -> tensor<64x2048xf8E4M3FN>, tensor<64x16xf32>
      %shared = kiln.scaled_matmul %sq, %ss, %sw2, %sw2_s
          : (tensor<64x2048xf8E4M3FN>, tensor<64x16xf32>, tensor<7168x2048xf8E4M3FN>, tensor<56x16xf32>)
          -> tensor<64x7168xbf16>
      %moe = arith.addf %r, %shared : tensor<64x7168xbf16>
      %o = arith.addf %x, %moe : tensor<64x7168xbf16>
      kiln.yield %o : tensor<64x7168xbf16>
    }
    kiln.yield %out : tensor<64x7168xbf16>
  }
  return %out0, %out1 : tensor<64x7168xbf16>, tensor<64x7168xbf16>
}
