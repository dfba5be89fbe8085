// A model graph written by hand: the first (dense) layer of the tiny
// DeepSeek-V3 model (examples/tiny/config.json) and its output head, for a
// decode step of 4 sequences and a prefill step of 32 tokens. kilnc compiles
// it like the graphs its config front end builds (see README.md):
//
//   kilnc graph.mlir -o graph.kiln
//
// Conventions (compiler/include/kiln/FrontEnd/GraphConventions.h): one
// function per step, static shapes at the step's maxima; step inputs and
// weights are arguments marked `kiln.input` and `kiln.weight` (an FP8
// weight's block scales are the argument named `<weight>_scale_inv`); the
// result is the logits. A `loc("name")` names an op's buffers in the plan.

// The decode step: 4 tokens of up to 4 sequences.
func.func @decode(
    %tokens: tensor<4xi32> {kiln.input = "tokens"},
    %positions: tensor<4xi32> {kiln.input = "positions"},
    %last_rows: tensor<4xi32> {kiln.input = "last_rows"},
    %embed: tensor<129280x256xbf16> {kiln.weight = "model.embed_tokens.weight"},
    %attn_norm: tensor<256xbf16> {kiln.weight = "model.layers.0.input_layernorm.weight"},
    %q_a: tensor<192x256xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.q_a_proj.weight"},
    %q_a_s: tensor<2x2xf32> {kiln.weight = "model.layers.0.self_attn.q_a_proj.weight_scale_inv"},
    %q_a_norm: tensor<192xbf16> {kiln.weight = "model.layers.0.self_attn.q_a_layernorm.weight"},
    %q_b: tensor<192x192xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.q_b_proj.weight"},
    %q_b_s: tensor<2x2xf32> {kiln.weight = "model.layers.0.self_attn.q_b_proj.weight_scale_inv"},
    %kv_a: tensor<176x256xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"},
    %kv_a_s: tensor<2x2xf32> {kiln.weight = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"},
    %kv_a_norm: tensor<160xbf16> {kiln.weight = "model.layers.0.self_attn.kv_a_layernorm.weight"},
    // Stored in FP8; the attention reads it in BF16 (converted at load).
    %kv_b: tensor<256x160xbf16> {kiln.weight = "model.layers.0.self_attn.kv_b_proj.weight", kiln.stored_dtype = "f8e4m3"},
    %o: tensor<256x128xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.o_proj.weight"},
    %o_s: tensor<2x1xf32> {kiln.weight = "model.layers.0.self_attn.o_proj.weight_scale_inv"},
    %mlp_norm: tensor<256xbf16> {kiln.weight = "model.layers.0.post_attention_layernorm.weight"},
    %gate: tensor<448x256xf8E4M3FN> {kiln.weight = "model.layers.0.mlp.gate_proj.weight"},
    %gate_s: tensor<4x2xf32> {kiln.weight = "model.layers.0.mlp.gate_proj.weight_scale_inv"},
    %up: tensor<448x256xf8E4M3FN> {kiln.weight = "model.layers.0.mlp.up_proj.weight"},
    %up_s: tensor<4x2xf32> {kiln.weight = "model.layers.0.mlp.up_proj.weight_scale_inv"},
    %down: tensor<256x448xf8E4M3FN> {kiln.weight = "model.layers.0.mlp.down_proj.weight"},
    %down_s: tensor<2x4xf32> {kiln.weight = "model.layers.0.mlp.down_proj.weight_scale_inv"},
    %final_norm: tensor<256xbf16> {kiln.weight = "model.norm.weight"},
    %lm_head: tensor<129280x256xbf16> {kiln.weight = "lm_head.weight"})
    -> tensor<4x129280xf32> {
  %h0 = kiln.embed %tokens, %embed : (tensor<4xi32>, tensor<129280x256xbf16>) -> tensor<4x256xf32> loc("hidden")

  // Attention: RMSNorm, quantized for the FP8 projections (one plan step).
  %x = kiln.rms_norm %h0, %attn_norm {epsilon = 1.0e-6 : f32} : (tensor<4x256xf32>, tensor<256xbf16>) -> tensor<4x256xf32>
  %xq, %xs = kiln.quantize %x tile_1x128 : tensor<4x256xf32> -> tensor<4x256xf8E4M3FN>, tensor<4x2xf32> loc("x")
  %qa = kiln.scaled_matmul %xq, %xs, %q_a, %q_a_s : (tensor<4x256xf8E4M3FN>, tensor<4x2xf32>, tensor<192x256xf8E4M3FN>, tensor<2x2xf32>) -> tensor<4x192xbf16> loc("q_a")
  %qn = kiln.rms_norm %qa, %q_a_norm {epsilon = 1.0e-6 : f32} : (tensor<4x192xbf16>, tensor<192xbf16>) -> tensor<4x192xf32>
  %qnq, %qns = kiln.quantize %qn tile_1x128 : tensor<4x192xf32> -> tensor<4x192xf8E4M3FN>, tensor<4x2xf32> loc("q_a_normed")
  %q = kiln.scaled_matmul %qnq, %qns, %q_b, %q_b_s : (tensor<4x192xf8E4M3FN>, tensor<4x2xf32>, tensor<192x192xf8E4M3FN>, tensor<2x2xf32>) -> tensor<4x192xbf16> loc("q")
  %kv = kiln.scaled_matmul %xq, %xs, %kv_a, %kv_a_s : (tensor<4x256xf8E4M3FN>, tensor<4x2xf32>, tensor<176x256xf8E4M3FN>, tensor<2x2xf32>) -> tensor<4x176xbf16> loc("kv_a")
  // The 160-wide latent and the 16-wide rope key are column slices of kv_a.
  %latent_in = tensor.extract_slice %kv[0, 0] [4, 160] [1, 1] : tensor<4x176xbf16> to tensor<4x160xbf16>
  %latent = kiln.rms_norm %latent_in, %kv_a_norm {epsilon = 1.0e-6 : f32} : (tensor<4x160xbf16>, tensor<160xbf16>) -> tensor<4x160xbf16> loc("latent")
  %k_pe = tensor.extract_slice %kv[0, 160] [4, 16] [1, 1] : tensor<4x176xbf16> to tensor<4x16xbf16>
  %attn = kiln.mla_attention %q, %latent, %k_pe, %positions, %kv_b
      {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64,
       v_head_dim = 32 : i64, softmax_scale = 0.270467550 : f32, attention_factor = 1.0 : f32,
       rope_inv_freq = array<f32: 1.0, 0.213453740, 0.035, 7.90569407E-4, 2.5E-4, 7.90569392E-5, 2.5E-5, 7.90569447E-6>}
      : (tensor<4x192xbf16>, tensor<4x160xbf16>, tensor<4x16xbf16>, tensor<4xi32>, tensor<256x160xbf16>) -> tensor<4x128xbf16> loc("attn")
  %aq, %as = kiln.quantize %attn tile_1x128 : tensor<4x128xbf16> -> tensor<4x128xf8E4M3FN>, tensor<4x1xf32> loc("attn_out")
  %ao = kiln.scaled_matmul %aq, %as, %o, %o_s : (tensor<4x128xf8E4M3FN>, tensor<4x1xf32>, tensor<256x128xf8E4M3FN>, tensor<2x1xf32>) -> tensor<4x256xbf16> loc("o_proj")
  %h1 = kiln.add %h0, %ao : (tensor<4x256xf32>, tensor<4x256xbf16>) -> tensor<4x256xf32>

  // Dense MLP: gate and up, SwiGLU quantized for down (one plan step).
  %m = kiln.rms_norm %h1, %mlp_norm {epsilon = 1.0e-6 : f32} : (tensor<4x256xf32>, tensor<256xbf16>) -> tensor<4x256xf32>
  %mq, %ms = kiln.quantize %m tile_1x128 : tensor<4x256xf32> -> tensor<4x256xf8E4M3FN>, tensor<4x2xf32> loc("mlp_in")
  %g = kiln.scaled_matmul %mq, %ms, %gate, %gate_s : (tensor<4x256xf8E4M3FN>, tensor<4x2xf32>, tensor<448x256xf8E4M3FN>, tensor<4x2xf32>) -> tensor<4x448xbf16> loc("gate")
  %u = kiln.scaled_matmul %mq, %ms, %up, %up_s : (tensor<4x256xf8E4M3FN>, tensor<4x2xf32>, tensor<448x256xf8E4M3FN>, tensor<4x2xf32>) -> tensor<4x448xbf16> loc("up")
  %act = kiln.swiglu %g, %u : tensor<4x448xbf16>, tensor<4x448xbf16> -> tensor<4x448xf32>
  %actq, %acts = kiln.quantize %act tile_1x128 : tensor<4x448xf32> -> tensor<4x448xf8E4M3FN>, tensor<4x4xf32> loc("act")
  %d = kiln.scaled_matmul %actq, %acts, %down, %down_s : (tensor<4x448xf8E4M3FN>, tensor<4x4xf32>, tensor<256x448xf8E4M3FN>, tensor<2x4xf32>) -> tensor<4x256xbf16> loc("down")
  %h2 = kiln.add %h1, %d : (tensor<4x256xf32>, tensor<4x256xbf16>) -> tensor<4x256xf32>

  // Head: final norm, each sequence's last row, logits in FP32.
  %n = kiln.rms_norm %h2, %final_norm {epsilon = 1.0e-6 : f32} : (tensor<4x256xf32>, tensor<256xbf16>) -> tensor<4x256xf32> loc("final_norm")
  %last = kiln.select_rows %n, %last_rows : (tensor<4x256xf32>, tensor<4xi32>) -> tensor<4x256xf32> loc("last_hidden")
  %logits = kiln.matmul %last, %lm_head : (tensor<4x256xf32>, tensor<129280x256xbf16>) -> tensor<4x129280xf32>
  return %logits : tensor<4x129280xf32>
}

// The prefill step: 32 tokens of up to 4 sequences.
func.func @prefill(
    %tokens: tensor<32xi32> {kiln.input = "tokens"},
    %positions: tensor<32xi32> {kiln.input = "positions"},
    %last_rows: tensor<4xi32> {kiln.input = "last_rows"},
    %embed: tensor<129280x256xbf16> {kiln.weight = "model.embed_tokens.weight"},
    %attn_norm: tensor<256xbf16> {kiln.weight = "model.layers.0.input_layernorm.weight"},
    %q_a: tensor<192x256xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.q_a_proj.weight"},
    %q_a_s: tensor<2x2xf32> {kiln.weight = "model.layers.0.self_attn.q_a_proj.weight_scale_inv"},
    %q_a_norm: tensor<192xbf16> {kiln.weight = "model.layers.0.self_attn.q_a_layernorm.weight"},
    %q_b: tensor<192x192xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.q_b_proj.weight"},
    %q_b_s: tensor<2x2xf32> {kiln.weight = "model.layers.0.self_attn.q_b_proj.weight_scale_inv"},
    %kv_a: tensor<176x256xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"},
    %kv_a_s: tensor<2x2xf32> {kiln.weight = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"},
    %kv_a_norm: tensor<160xbf16> {kiln.weight = "model.layers.0.self_attn.kv_a_layernorm.weight"},
    // Stored in FP8; the attention reads it in BF16 (converted at load).
    %kv_b: tensor<256x160xbf16> {kiln.weight = "model.layers.0.self_attn.kv_b_proj.weight", kiln.stored_dtype = "f8e4m3"},
    %o: tensor<256x128xf8E4M3FN> {kiln.weight = "model.layers.0.self_attn.o_proj.weight"},
    %o_s: tensor<2x1xf32> {kiln.weight = "model.layers.0.self_attn.o_proj.weight_scale_inv"},
    %mlp_norm: tensor<256xbf16> {kiln.weight = "model.layers.0.post_attention_layernorm.weight"},
    %gate: tensor<448x256xf8E4M3FN> {kiln.weight = "model.layers.0.mlp.gate_proj.weight"},
    %gate_s: tensor<4x2xf32> {kiln.weight = "model.layers.0.mlp.gate_proj.weight_scale_inv"},
    %up: tensor<448x256xf8E4M3FN> {kiln.weight = "model.layers.0.mlp.up_proj.weight"},
    %up_s: tensor<4x2xf32> {kiln.weight = "model.layers.0.mlp.up_proj.weight_scale_inv"},
    %down: tensor<256x448xf8E4M3FN> {kiln.weight = "model.layers.0.mlp.down_proj.weight"},
    %down_s: tensor<2x4xf32> {kiln.weight = "model.layers.0.mlp.down_proj.weight_scale_inv"},
    %final_norm: tensor<256xbf16> {kiln.weight = "model.norm.weight"},
    %lm_head: tensor<129280x256xbf16> {kiln.weight = "lm_head.weight"})
    -> tensor<4x129280xf32> {
  %h0 = kiln.embed %tokens, %embed : (tensor<32xi32>, tensor<129280x256xbf16>) -> tensor<32x256xf32> loc("hidden")

  // Attention: RMSNorm, quantized for the FP8 projections (one plan step).
  %x = kiln.rms_norm %h0, %attn_norm {epsilon = 1.0e-6 : f32} : (tensor<32x256xf32>, tensor<256xbf16>) -> tensor<32x256xf32>
  %xq, %xs = kiln.quantize %x tile_1x128 : tensor<32x256xf32> -> tensor<32x256xf8E4M3FN>, tensor<32x2xf32> loc("x")
  %qa = kiln.scaled_matmul %xq, %xs, %q_a, %q_a_s : (tensor<32x256xf8E4M3FN>, tensor<32x2xf32>, tensor<192x256xf8E4M3FN>, tensor<2x2xf32>) -> tensor<32x192xbf16> loc("q_a")
  %qn = kiln.rms_norm %qa, %q_a_norm {epsilon = 1.0e-6 : f32} : (tensor<32x192xbf16>, tensor<192xbf16>) -> tensor<32x192xf32>
  %qnq, %qns = kiln.quantize %qn tile_1x128 : tensor<32x192xf32> -> tensor<32x192xf8E4M3FN>, tensor<32x2xf32> loc("q_a_normed")
  %q = kiln.scaled_matmul %qnq, %qns, %q_b, %q_b_s : (tensor<32x192xf8E4M3FN>, tensor<32x2xf32>, tensor<192x192xf8E4M3FN>, tensor<2x2xf32>) -> tensor<32x192xbf16> loc("q")
  %kv = kiln.scaled_matmul %xq, %xs, %kv_a, %kv_a_s : (tensor<32x256xf8E4M3FN>, tensor<32x2xf32>, tensor<176x256xf8E4M3FN>, tensor<2x2xf32>) -> tensor<32x176xbf16> loc("kv_a")
  // The 160-wide latent and the 16-wide rope key are column slices of kv_a.
  %latent_in = tensor.extract_slice %kv[0, 0] [32, 160] [1, 1] : tensor<32x176xbf16> to tensor<32x160xbf16>
  %latent = kiln.rms_norm %latent_in, %kv_a_norm {epsilon = 1.0e-6 : f32} : (tensor<32x160xbf16>, tensor<160xbf16>) -> tensor<32x160xbf16> loc("latent")
  %k_pe = tensor.extract_slice %kv[0, 160] [32, 16] [1, 1] : tensor<32x176xbf16> to tensor<32x16xbf16>
  %attn = kiln.mla_attention %q, %latent, %k_pe, %positions, %kv_b
      {layer = 0 : i64, heads = 4 : i64, qk_nope_head_dim = 32 : i64, qk_rope_head_dim = 16 : i64,
       v_head_dim = 32 : i64, softmax_scale = 0.270467550 : f32, attention_factor = 1.0 : f32,
       rope_inv_freq = array<f32: 1.0, 0.213453740, 0.035, 7.90569407E-4, 2.5E-4, 7.90569392E-5, 2.5E-5, 7.90569447E-6>}
      : (tensor<32x192xbf16>, tensor<32x160xbf16>, tensor<32x16xbf16>, tensor<32xi32>, tensor<256x160xbf16>) -> tensor<32x128xbf16> loc("attn")
  %aq, %as = kiln.quantize %attn tile_1x128 : tensor<32x128xbf16> -> tensor<32x128xf8E4M3FN>, tensor<32x1xf32> loc("attn_out")
  %ao = kiln.scaled_matmul %aq, %as, %o, %o_s : (tensor<32x128xf8E4M3FN>, tensor<32x1xf32>, tensor<256x128xf8E4M3FN>, tensor<2x1xf32>) -> tensor<32x256xbf16> loc("o_proj")
  %h1 = kiln.add %h0, %ao : (tensor<32x256xf32>, tensor<32x256xbf16>) -> tensor<32x256xf32>

  // Dense MLP: gate and up, SwiGLU quantized for down (one plan step).
  %m = kiln.rms_norm %h1, %mlp_norm {epsilon = 1.0e-6 : f32} : (tensor<32x256xf32>, tensor<256xbf16>) -> tensor<32x256xf32>
  %mq, %ms = kiln.quantize %m tile_1x128 : tensor<32x256xf32> -> tensor<32x256xf8E4M3FN>, tensor<32x2xf32> loc("mlp_in")
  %g = kiln.scaled_matmul %mq, %ms, %gate, %gate_s : (tensor<32x256xf8E4M3FN>, tensor<32x2xf32>, tensor<448x256xf8E4M3FN>, tensor<4x2xf32>) -> tensor<32x448xbf16> loc("gate")
  %u = kiln.scaled_matmul %mq, %ms, %up, %up_s : (tensor<32x256xf8E4M3FN>, tensor<32x2xf32>, tensor<448x256xf8E4M3FN>, tensor<4x2xf32>) -> tensor<32x448xbf16> loc("up")
  %act = kiln.swiglu %g, %u : tensor<32x448xbf16>, tensor<32x448xbf16> -> tensor<32x448xf32>
  %actq, %acts = kiln.quantize %act tile_1x128 : tensor<32x448xf32> -> tensor<32x448xf8E4M3FN>, tensor<32x4xf32> loc("act")
  %d = kiln.scaled_matmul %actq, %acts, %down, %down_s : (tensor<32x448xf8E4M3FN>, tensor<32x4xf32>, tensor<256x448xf8E4M3FN>, tensor<2x4xf32>) -> tensor<32x256xbf16> loc("down")
  %h2 = kiln.add %h1, %d : (tensor<32x256xf32>, tensor<32x256xbf16>) -> tensor<32x256xf32>

  // Head: final norm, each sequence's last row, logits in FP32.
  %n = kiln.rms_norm %h2, %final_norm {epsilon = 1.0e-6 : f32} : (tensor<32x256xf32>, tensor<256xbf16>) -> tensor<32x256xf32> loc("final_norm")
  %last = kiln.select_rows %n, %last_rows : (tensor<32x256xf32>, tensor<4xi32>) -> tensor<4x256xf32> loc("last_hidden")
  %logits = kiln.matmul %last, %lm_head : (tensor<4x256xf32>, tensor<129280x256xbf16>) -> tensor<4x129280xf32>
  return %logits : tensor<4x129280xf32>
}
