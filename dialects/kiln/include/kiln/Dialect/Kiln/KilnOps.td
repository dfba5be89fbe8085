//===- KilnOps.td - kiln operations -------------------------*- tablegen -*-===//

#ifndef KILN_DIALECT_KILN_KILNOPS_TD
#define KILN_DIALECT_KILN_KILNOPS_TD

include "kiln/Dialect/Kiln/KilnDialect.td"
include "kiln/Dialect/Kiln/KilnAttrs.td"
include "mlir/IR/CommonAttrConstraints.td"
include "mlir/IR/CommonTypeConstraints.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

//===----------------------------------------------------------------------===//
// Type constraints
//===----------------------------------------------------------------------===//

def Kiln_FP8Tensor : RankedTensorOf<[F8E4M3FN]>;
def Kiln_ScaleTensor : RankedTensorOf<[F32]>;
def Kiln_IndexTensor : RankedTensorOf<[I32]>;
def Kiln_FloatTensor : RankedTensorOf<[BF16, F16, F32]>;
// GEMM outputs and MoE activations kept in high precision.
def Kiln_AccTensor : RankedTensorOf<[BF16, F32]>;
// MoE tokens move either quantized (FP8 with scales) or in BF16.
def Kiln_TokenTensor : RankedTensorOf<[F8E4M3FN, BF16]>;

//===----------------------------------------------------------------------===//
// FP8 quantization and matmuls
//===----------------------------------------------------------------------===//

def Kiln_QuantizeOp : Kiln_Op<"quantize", [Pure]> {
  let summary = "quantize to f8E4M3FN with one f32 scale per tile or block";
  let description = [{
    Splits `input` into tiles and stores each as E4M3 values plus one `f32`
    scale, with `input ≈ values * scales` (scales broadcast over their tile):

    * `tile_1x128`: activations. One scale per 1×128 tile along the last
      dimension; `scales` has the shape of `input` with the last dimension
      ceil-divided by 128. The scale of a tile is `max(amax, 1e-4) / 448`.
    * `block_128x128`: weights. One scale per 128×128 block of the last two
      dimensions (leading dimensions, such as experts, are kept); both are
      ceil-divided, and partial blocks are padded with zeros.

    ```mlir
    %q, %s = kiln.quantize %x tile_1x128
        : tensor<?x7168xbf16> -> tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input,
                       Kiln_ScaleGranularity:$granularity);
  let results = (outs Kiln_FP8Tensor:$values, Kiln_ScaleTensor:$scales);
  let assemblyFormat = [{
    $input $granularity attr-dict `:` type($input) `->` type($values) `,` type($scales)
  }];
  let hasVerifier = 1;
}

def Kiln_ScaledMatmulOp : Kiln_Op<"scaled_matmul", [Pure]> {
  let summary = "FP8 × FP8 matmul with 1×128 activation and 128×128 weight scales";
  let description = [{
    `result[m, n] = Σ_k a[m, k] * a_scales[m, k/128] * b[n, k] * b_scales[n/128, k/128]`,
    accumulated in FP32 and rounded once to the result type.

    * `a`: `M×K` E4M3, K-major; `a_scales`: `M×(K/128)` (per 1×128 tile).
    * `b`: `N×K` E4M3, K-major (the checkpoint's `[out, in]` layout);
      `b_scales`: `ceil(N/128)×(K/128)` (per 128×128 block).
    * `K` is a multiple of 16 (TMA row alignment); a partial last 128-block
      of K is zero-padded, its scales ceil-divided like N's. `N` need not be
      a multiple of 128 either (DeepSeek-V3 has 576, 2112).
    * The result is `M×N` in `bf16` or `f32`.

    ```mlir
    %y = kiln.scaled_matmul %a, %as, %w, %ws
        : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>,
           tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xbf16>
    ```
  }];
  let arguments = (ins Kiln_FP8Tensor:$a, Kiln_ScaleTensor:$a_scales,
                       Kiln_FP8Tensor:$b, Kiln_ScaleTensor:$b_scales);
  let results = (outs Kiln_AccTensor:$result);
  let assemblyFormat = [{
    $a `,` $a_scales `,` $b `,` $b_scales attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_GroupedScaledMatmulOp : Kiln_Op<"grouped_scaled_matmul", [Pure]> {
  let summary = "one FP8 scaled matmul per expert group (the MoE grouped GEMM)";
  let description = [{
    Multiplies each group of token rows by its own `N×K` weight, with the
    scaling of `kiln.scaled_matmul`. `b` is `G×N×K` (one weight per group)
    and `b_scales` is `G×ceil(N/128)×(K/128)`. Two layouts:

    * `contiguous` (prefill): `a` is `T×K`, the rows of all groups sorted by
      group; `groups` is `(G+1)` `i32` offsets, group `g` owning rows
      `[groups[g], groups[g+1])`. `a_scales` is `T×(K/128)`; the result is
      `T×N`. Rows outside every group are left unspecified.
    * `masked` (decode, fixed shapes): `a` is `G×C×K`, one slab of capacity
      `C` per group; `groups` is `G` `i32` row counts, only the first
      `groups[g]` rows of slab `g` being valid. `a_scales` is
      `G×C×(K/128)`; the result is `G×C×N`, rows past the count unspecified.

    ```mlir
    %y = kiln.grouped_scaled_matmul masked %a, %as, %w, %ws, %counts
        : (tensor<32x128x7168xf8E4M3FN>, tensor<32x128x56xf32>,
           tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<32xi32>)
        -> tensor<32x128x4096xbf16>
    ```
  }];
  let arguments = (ins Kiln_GroupLayout:$layout,
                       Kiln_FP8Tensor:$a, Kiln_ScaleTensor:$a_scales,
                       Kiln_FP8Tensor:$b, Kiln_ScaleTensor:$b_scales,
                       Kiln_IndexTensor:$groups);
  let results = (outs Kiln_AccTensor:$result);
  let assemblyFormat = [{
    $layout $a `,` $a_scales `,` $b `,` $b_scales `,` $groups attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// High-precision ops of a transformer block
//===----------------------------------------------------------------------===//

def Kiln_MatmulOp : Kiln_Op<"matmul", [Pure]> {
  let summary = "high-precision matmul against an N×K weight (router gate, output head)";
  let description = [{
    `result[m, n] = Σ_k a[m, k] * b[n, k]` with FP32 accumulation. For the
    parts of the model the FP8 recipe keeps in BF16/FP32: the MoE router
    gate (whose logits are FP32) and the output head.

    ```mlir
    %logits = kiln.matmul %x, %gate
        : (tensor<?x7168xbf16>, tensor<256x7168xbf16>) -> tensor<?x256xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$a, Kiln_FloatTensor:$b);
  let results = (outs Kiln_AccTensor:$result);
  let assemblyFormat = [{
    $a `,` $b attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_RMSNormOp : Kiln_Op<"rms_norm", [Pure]> {
  let summary = "RMSNorm over the last dimension";
  let description = [{
    `result = input / sqrt(mean(input², last dim) + epsilon) * weight`,
    computed in FP32. `weight` has the size of the last dimension.

    ```mlir
    %y = kiln.rms_norm %x, %w {epsilon = 1.0e-06 : f32}
        : (tensor<?x7168xbf16>, tensor<7168xbf16>) -> tensor<?x7168xbf16>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_FloatTensor:$weight,
                       F32Attr:$epsilon);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_SwiGLUOp : Kiln_Op<"swiglu", [Pure]> {
  let summary = "SwiGLU: silu(gate) * up";
  let description = [{
    `result = silu(gate) * up`, computed in FP32 and rounded to the result
    type. Two forms:

    * two operands: `gate` and `up` are the outputs of the gate and up
      projections, of one shape, which is the result's;
    * one operand: the last dimension of `gate` holds a fused gate/up
      projection, the gate in its first half and up in its second; the
      result has the last dimension halved.

    ```mlir
    %h = kiln.swiglu %g, %u : tensor<?x2048xbf16>, tensor<?x2048xbf16> -> tensor<?x2048xbf16>
    %h = kiln.swiglu %gate_up : tensor<?x4096xbf16> -> tensor<?x2048xbf16>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$gate,
                       Optional<Kiln_FloatTensor>:$up);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $gate (`,` $up^)? attr-dict `:` type($gate) (`,` type($up)^)? `->` type($result)
  }];
  let hasVerifier = 1;
}

def Kiln_AddOp : Kiln_Op<"add", [Pure]> {
  let summary = "elementwise sum of two tensors of one shape (the residual add)";
  let description = [{
    `result = lhs + rhs`, computed in FP32 and rounded to the result type.
    The operands may differ in precision: the residual stream is FP32 and
    the projections that feed it produce BF16.

    ```mlir
    %h = kiln.add %hidden, %attn
        : (tensor<8x7168xf32>, tensor<8x7168xbf16>) -> tensor<8x7168xf32>
    ```
  }];
  let arguments = (ins Kiln_AccTensor:$lhs, Kiln_AccTensor:$rhs);
  let results = (outs Kiln_AccTensor:$result);
  let assemblyFormat = [{
    $lhs `,` $rhs attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_EmbedOp : Kiln_Op<"embed", [Pure]> {
  let summary = "gather the embedding rows of a sequence of tokens";
  let description = [{
    `result[t] = table[tokens[t]]`, converted to the result type. `tokens`
    is `[T]` i32, `table` is the `[V, H]` embedding (BF16 in DeepSeek-V3),
    the result `[T, H]`.

    ```mlir
    %h = kiln.embed %tokens, %table
        : (tensor<8xi32>, tensor<129280x7168xbf16>) -> tensor<8x7168xf32>
    ```
  }];
  let arguments = (ins Kiln_IndexTensor:$tokens, Kiln_FloatTensor:$table);
  let results = (outs Kiln_AccTensor:$result);
  let assemblyFormat = [{
    $tokens `,` $table attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_SelectRowsOp : Kiln_Op<"select_rows", [Pure]> {
  let summary = "gather rows of a matrix by index (each sequence's last token)";
  let description = [{
    `result[s] = input[rows[s]]`: `input` is `[T, C]`, `rows` is `[S]` i32
    row indices, the result is `[S, C]` of the input's element type. A model
    step uses it to keep only the rows whose logits are wanted.

    ```mlir
    %last = kiln.select_rows %h, %last_rows
        : (tensor<256x7168xf32>, tensor<8xi32>) -> tensor<8x7168xf32>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$input, Kiln_IndexTensor:$rows);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $rows attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

def Kiln_MLAAttentionOp : Kiln_Op<"mla_attention"> {
  let summary = "multi-head latent attention over a layer's KV cache (absorbed)";
  let description = [{
    DeepSeek-V3's MLA for the `T` tokens of a step, each at `positions[t]`
    of its sequence:

    1. RoPE (interleaved pairs, frequencies `rope_inv_freq`, cos and sin
       times `attention_factor`) on the last `qk_rope_head_dim` values of
       every head of `q` and on `k_pe`;
    2. `[latent, k_pe]` (`kv_lora_rank + qk_rope_head_dim` values) is stored
       at each token's position in layer `layer`'s KV cache;
    3. causal attention over the sequence's cache in the absorbed form:
       the key half of `kv_b` (per head, `qk_nope_head_dim` rows) folded
       into the query, scores times `softmax_scale`, softmax, then the value
       half (`v_head_dim` rows per head) applied to the attended latent.

    Shapes: `q` `[T, heads * (nope + rope)]`, `latent` `[T, kv_lora_rank]`
    (normalized), `k_pe` `[T, rope]`, `positions` `[T]` i32, `kv_b` (the
    checkpoint's kv_b_proj, `[heads * (nope + v), kv_lora_rank]`), result
    `[T, heads * v]`.

    The op reads and writes the KV cache, so it has no memory-effect trait:
    it is never removed, merged or reordered with another attention.

    ```mlir
    %o = kiln.mla_attention %q, %latent, %k_pe, %positions, %kv_b
        {layer = 0 : i64, heads = 128 : i64, qk_nope_head_dim = 128 : i64,
         qk_rope_head_dim = 64 : i64, v_head_dim = 128 : i64,
         softmax_scale = 0.1147 : f32, attention_factor = 1.0 : f32,
         rope_inv_freq = array<f32: ...>}
        : (tensor<8x24576xbf16>, tensor<8x512xbf16>, tensor<8x64xbf16>,
           tensor<8xi32>, tensor<32768x512xbf16>) -> tensor<8x16384xbf16>
    ```
  }];
  let arguments = (ins Kiln_FloatTensor:$q, Kiln_FloatTensor:$latent,
                       Kiln_FloatTensor:$k_pe, Kiln_IndexTensor:$positions,
                       Kiln_FloatTensor:$kv_b,
                       I64Attr:$layer, I64Attr:$heads,
                       I64Attr:$qk_nope_head_dim, I64Attr:$qk_rope_head_dim,
                       I64Attr:$v_head_dim, F32Attr:$softmax_scale,
                       F32Attr:$attention_factor,
                       DenseF32ArrayAttr:$rope_inv_freq);
  let results = (outs Kiln_FloatTensor:$result);
  let assemblyFormat = [{
    $q `,` $latent `,` $k_pe `,` $positions `,` $kv_b attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Mixture of experts
//===----------------------------------------------------------------------===//

def Kiln_MoERouteOp : Kiln_Op<"moe_route", [Pure]> {
  let summary = "group-limited top-k expert selection (DeepSeek-V3 noaux_tc)";
  let description = [{
    Turns FP32 router logits `T×E` into `top_k` expert ids and weights per
    token:

    1. scores = `scoring(logits)` (`sigmoid` for DeepSeek-V3);
    2. selection scores = scores + `bias` when the correction bias is given
       (auxiliary-loss-free balancing), else scores;
    3. the `E` experts form `n_group` equal groups; a group's score is the sum
       of its two best selection scores (its best one without a bias); the
       `topk_group` best groups are kept, the others masked with -inf;
    4. the `top_k` experts with the best selection scores are chosen;
    5. their weights are the unbiased scores, divided by their sum when
       `norm_topk_prob`, times `routed_scaling_factor`.

    ```mlir
    %ids, %weights = kiln.moe_route sigmoid %logits bias %bias
        {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32}
        : (tensor<?x256xf32>, tensor<256xf32>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
    ```
  }];
  let arguments = (ins Kiln_RouterScoring:$scoring,
                       RankedTensorOf<[F32]>:$logits,
                       Optional<RankedTensorOf<[F32]>>:$bias,
                       I64Attr:$top_k, I64Attr:$n_group, I64Attr:$topk_group,
                       F32Attr:$routed_scaling_factor,
                       DefaultValuedAttr<BoolAttr, "true">:$norm_topk_prob);
  let results = (outs Kiln_IndexTensor:$expert_ids,
                      RankedTensorOf<[F32]>:$expert_weights);
  let assemblyFormat = [{
    $scoring $logits `` custom<KeywordOperand>($bias, "\"bias\"") attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_MoEDispatchOp : Kiln_Op<"moe_dispatch"> {
  let summary = "send each token to the ranks and slots of its chosen experts";
  let description = [{
    Every rank of the expert-parallel group `parallel` runs this op on its own
    `T` tokens (`T×H`, FP8 with `T×ceil(H/128)` scales, or BF16 without) and
    their `T×top_k` logical expert ids. Each (token, choice) pair is copied to
    one physical slot that holds the chosen expert, on whichever rank owns the
    slot; this rank receives the rows of its `S = slots_per_rank` slots:

    * `masked`: `expert_tokens` is `S×C×H` (and `expert_scales` `S×C×ceil(H/128)`),
      `C` rows of capacity per slot; `group_sizes` is `S` row counts;
      `source` is `S×C`.
    * `contiguous`: `expert_tokens` is `R×H` with the rows of slot `s` at
      `[group_sizes[s], group_sizes[s+1])`; `group_sizes` is `S+1` offsets;
      `source` is `R`.

    `source` names the origin of every received row as
    `(src_rank * T + token) * top_k + choice`, or -1 for an empty row; it is
    what `kiln.moe_combine` needs to send results back. The outputs feed
    `kiln.grouped_scaled_matmul` of the same layout directly.

    Dispatch is a collective: every rank of the group must run it.

    ```mlir
    %xq, %xs, %n, %src = kiln.moe_dispatch masked %q scales %s experts %ids
        {parallel = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>}
        : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>)
        -> (tensor<32x1024x7168xf8E4M3FN>, tensor<32x1024x56xf32>, tensor<32xi32>, tensor<32x1024xi32>)
    ```
  }];
  let arguments = (ins Kiln_GroupLayout:$layout,
                       Kiln_TokenTensor:$tokens,
                       Optional<Kiln_ScaleTensor>:$token_scales,
                       Kiln_IndexTensor:$expert_ids,
                       Kiln_ExpertParallelAttr:$parallel);
  let results = (outs Kiln_TokenTensor:$expert_tokens,
                      Optional<Kiln_ScaleTensor>:$expert_scales,
                      Kiln_IndexTensor:$group_sizes,
                      Kiln_IndexTensor:$source);
  let assemblyFormat = [{
    $layout $tokens `` custom<KeywordOperand>($token_scales, "\"scales\"")
    `experts` $expert_ids attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_MoECombineOp : Kiln_Op<"moe_combine"> {
  let summary = "send expert outputs back and reduce them with the routing weights";
  let description = [{
    The inverse of `kiln.moe_dispatch` with the same `layout` and `parallel`:
    every received row of `expert_outputs` (`S×C×H` masked, `R×H`
    contiguous) goes back to the rank and token that `source` names, and each
    token's rows are summed with its `T×top_k` `expert_weights`:
    `result[t] = Σ_j expert_weights[t, j] * row(t, j)`, in FP32.
    Empty rows (`source` = -1) are ignored.

    ```mlir
    %y = kiln.moe_combine masked %out source %src weights %weights
        {parallel = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>}
        : (tensor<32x1024x7168xbf16>, tensor<32x1024xi32>, tensor<128x8xf32>)
        -> tensor<128x7168xbf16>
    ```
  }];
  let arguments = (ins Kiln_GroupLayout:$layout,
                       Kiln_AccTensor:$expert_outputs,
                       Kiln_IndexTensor:$source,
                       RankedTensorOf<[F32]>:$expert_weights,
                       Kiln_ExpertParallelAttr:$parallel);
  let results = (outs Kiln_AccTensor:$result);
  let assemblyFormat = [{
    $layout $expert_outputs `source` $source `weights` $expert_weights attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_MoEPermuteOp : Kiln_Op<"moe_permute", [Pure]> {
  let summary = "group a GPU's token rows by expert (the single-GPU dispatch)";
  let description = [{
    Copies each (token, choice) pair of `T` tokens (`T×H`, FP8 with
    `T×ceil(H/128)` scales, or BF16 without) and their `T×top_k` expert ids
    into `expert_tokens` (`R×H`, `R = T * top_k`), sorted by expert and in
    token order within an expert: expert `e` owns rows
    `[offsets[e], offsets[e+1])` (`E+1` offsets). `rows[t, j]` is the row
    that token `t`'s `j`-th choice went to, which `kiln.moe_unpermute`
    reads to bring the results back.

    This is `kiln.moe_dispatch` in the contiguous layout when every expert
    lives on this GPU; unlike the collective it is an ordinary pure op.

    ```mlir
    %xq, %xs, %offsets, %rows = kiln.moe_permute %q scales %s experts %ids
        : (tensor<8x7168xf8E4M3FN>, tensor<8x56xf32>, tensor<8x8xi32>)
        -> (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<257xi32>, tensor<8x8xi32>)
    ```
  }];
  let arguments = (ins Kiln_TokenTensor:$tokens,
                       Optional<Kiln_ScaleTensor>:$token_scales,
                       Kiln_IndexTensor:$expert_ids);
  let results = (outs Kiln_TokenTensor:$expert_tokens,
                      Optional<Kiln_ScaleTensor>:$expert_scales,
                      Kiln_IndexTensor:$offsets,
                      Kiln_IndexTensor:$rows);
  let assemblyFormat = [{
    $tokens `` custom<KeywordOperand>($token_scales, "\"scales\"")
    `experts` $expert_ids attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def Kiln_MoEUnpermuteOp : Kiln_Op<"moe_unpermute", [Pure]> {
  let summary = "sum each token's expert outputs with its routing weights (the single-GPU combine)";
  let description = [{
    The inverse of `kiln.moe_permute`: `result[t] = Σ_j weights[t, j] *
    expert_outputs[rows[t, j]]`, in FP32. `expert_outputs` is `R×H`,
    `rows` and `weights` are `T×top_k`, the result `T×H`.

    ```mlir
    %y = kiln.moe_unpermute %down rows %rows weights %weights
        : (tensor<64x7168xbf16>, tensor<8x8xi32>, tensor<8x8xf32>) -> tensor<8x7168xf32>
    ```
  }];
  let arguments = (ins Kiln_AccTensor:$expert_outputs,
                       Kiln_IndexTensor:$rows,
                       RankedTensorOf<[F32]>:$weights);
  let results = (outs Kiln_AccTensor:$result);
  let assemblyFormat = [{
    $expert_outputs `rows` $rows `weights` $weights attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Computation/communication overlap
//===----------------------------------------------------------------------===//

def Kiln_OverlapOp : Kiln_Op<"overlap", [RecursiveMemoryEffects]> {
  let summary = "run one stage pipeline over several micro-batches, interleaved";
  let description = [{
    The body is the program of one micro-batch, written as a sequence of
    `kiln.stage` ops, each marked `compute` or `communication`. The operands
    are the inputs of every micro-batch in turn: with `B` body arguments and
    `n` micro-batches there are `n * B` operands, and the results are the
    yielded values of every micro-batch in turn.

    The stages of different micro-batches are independent, so a schedule may
    run the communication stages of one micro-batch (MoE dispatch and combine)
    beside the compute stages of another (attention, expert GEMMs). Nothing
    but stages may appear in the body, and each stage receives what it needs
    from earlier stages through its operands: the stage graph is the whole
    dependence structure.

    ```mlir
    %y0, %y1 = kiln.overlap %x0, %x1
        : (tensor<64x7168xbf16>, tensor<64x7168xbf16>) -> (tensor<64x7168xbf16>, tensor<64x7168xbf16>) {
    ^bb0(%x: tensor<64x7168xbf16>):
      %a = kiln.stage "attention" compute %x : (tensor<64x7168xbf16>) -> tensor<64x7168xbf16> { ... }
      ...
      kiln.yield %out : tensor<64x7168xbf16>
    }
    ```
  }];
  let arguments = (ins Variadic<AnyType>:$inputs);
  let results = (outs Variadic<AnyType>:$results);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = [{
    $inputs attr-dict `:` functional-type($inputs, $results) $body
  }];
  let hasVerifier = 1;
  let hasRegionVerifier = 1;
  let extraClassDeclaration = [{
    /// Micro-batches this op runs: operands per body argument.
    unsigned getNumMicroBatches();
  }];
}

def Kiln_StageOp : Kiln_Op<"stage", [RecursiveMemoryEffects, HasParent<"OverlapOp">]> {
  let summary = "one named compute or communication stage of an overlap region";
  let description = [{
    A unit of scheduling inside `kiln.overlap`. Its body receives the stage's
    operands as block arguments and yields its results. The body may use
    values defined outside the enclosing `kiln.overlap` (weights) but nothing
    else of the overlap body: data from earlier stages comes in as operands.

    A `communication` stage contains the MoE dispatch or combine it runs (and
    whatever light work goes with it); a `compute` stage contains none.
    Stage names are unique within their overlap.

    ```mlir
    %t, %ts, %n, %src = kiln.stage "dispatch" communication %q, %s, %ids
        : (...) -> (...) {
    ^bb0(%q0: ..., %s0: ..., %ids0: ...):
      %0:4 = kiln.moe_dispatch masked %q0 scales %s0 experts %ids0 {...} : ...
      kiln.yield %0#0, %0#1, %0#2, %0#3 : ...
    }
    ```
  }];
  let arguments = (ins StrAttr:$name, Kiln_StageKind:$kind,
                       Variadic<AnyType>:$inputs);
  let results = (outs Variadic<AnyType>:$results);
  let regions = (region SizedRegion<1>:$body);
  let assemblyFormat = [{
    $name $kind $inputs attr-dict `:` functional-type($inputs, $results) $body
  }];
  let hasRegionVerifier = 1;
}

def Kiln_YieldOp : Kiln_Op<"yield", [
    Pure, Terminator, ParentOneOf<["OverlapOp", "StageOp"]>]> {
  let summary = "yield the results of a stage or of one micro-batch";
  let arguments = (ins Variadic<AnyType>:$values);
  let assemblyFormat = [{
    attr-dict ($values^ `:` type($values))?
  }];
}

#endif // KILN_DIALECT_KILN_KILNOPS_TD
