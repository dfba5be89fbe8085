//===- kiln/cpu_model.h - FP32 reference forward pass of DeepSeek-V3 ------===//
//
// The CPU reference backend: the whole DeepSeek-V3 forward (MLA attention
// with YaRN RoPE, dense and MoE MLPs, the MTP module) in FP32 from
// dequantized weights, with a KV cache for incremental decoding. It is the
// oracle for every GPU kernel and matches Hugging Face transformers'
// `DeepseekV3ForCausalLM` (fp32, eager attention) to float rounding.
//
// The building blocks (RMSNorm, SiLU, RoPE tables, the router) are exposed so
// that tests can check each against an independent reference.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CPU_MODEL_H
#define KILN_CPU_MODEL_H

#include "kiln/config.h"
#include "kiln/weights.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace kiln {

//===----------------------------------------------------------------------===//
// Building blocks
//===----------------------------------------------------------------------===//

/// `out = x * rsqrt(mean(x^2) + eps) * weight` over `size` elements, in FP32
/// as HF's DeepseekV3RMSNorm computes it. `out` may alias `x`.
void rmsNorm(const float *x, const float *weight, int64_t size, float eps,
             float *out);

/// SiLU, `x * sigmoid(x)`: the activation of every DeepSeek-V3 MLP.
float silu(float x);

/// The rotary embedding of the `qk_rope_head_dim` query/key part.
struct RopeParameters {
  /// `qk_rope_head_dim / 2` rotation frequencies, YaRN-corrected when the
  /// config has `rope_scaling`.
  std::vector<float> invFreq;
  /// YaRN's factor on cos and sin (HF's `attention_scaling`); 1 without YaRN.
  float attentionFactor = 1.0f;
  /// Softmax scale of attention scores: `qk_head_dim^-0.5`, times `mscale^2`
  /// with `mscale = 0.1 * mscale_all_dim * ln(factor) + 1` under YaRN.
  float softmaxScale = 1.0f;
};

/// RoPE parameters as HF's `_compute_yarn_parameters` (or the default RoPE
/// without `rope_scaling`) and DeepseekV3Attention compute them. Throws
/// kiln::Error naming the field for an odd `qk_rope_head_dim` or a
/// non-positive `rope_theta` or YaRN field.
RopeParameters computeRopeParameters(const ModelConfig &config);

/// Rotates `x` (`2 * rope.invFreq.size()` values) in place for `position`,
/// pairing INTERLEAVED elements (x[2j], x[2j+1]) at frequency invFreq[j]
/// (DeepSeek's complex-pair layout); cos and sin carry attentionFactor. HF
/// de-interleaves and then rotates halves: the same rotation with the
/// dimensions permuted identically in q and k, so attention scores agree.
void applyRope(float *x, int64_t position, const RopeParameters &rope);

/// The experts one token is routed to and their combine weights.
struct RouterChoice {
  /// `num_experts_per_tok` expert indices, by descending selection score
  /// (ties: lower index first).
  std::vector<int64_t> experts;
  /// Combine weight of each expert in `experts`: the unbiased score,
  /// normalized over the chosen experts when `norm_topk_prob`, times
  /// `routed_scaling_factor`.
  std::vector<float> weights;
};

/// Routes one token from its `n_routed_experts` router logits (FP32
/// `x @ mlp.gate.weight^T`). `scoreCorrectionBias` (`e_score_correction_bias`)
/// is used by `topk_method` "noaux_tc" only and may be null otherwise.
/// noaux_tc: scores = sigmoid (or softmax) of the logits; selection scores =
/// scores + bias; a group's score is the sum of its top-2 selection scores;
/// the `topk_group` best groups are kept and the other experts masked with
/// -inf (HF masks with 0.0, which lets a masked expert beat a kept one whose
/// biased score is negative: a known HF bug); then the top
/// `num_experts_per_tok` experts by selection score. "group_limited_greedy"
/// (DeepSeek-V2) ranks groups by their best unbiased score; "greedy" has no
/// groups. `config` must have passed validateConfig (the model checks it
/// once at construction; this runs per token).
RouterChoice routeToken(const ModelConfig &config, const float *routerLogits,
                        const float *scoreCorrectionBias);

//===----------------------------------------------------------------------===//
// The model
//===----------------------------------------------------------------------===//

/// How attention uses kv_b_proj; both give the same logits to float rounding.
enum class MlaForm {
  /// Materializes each head's key [k_nope | k_pe] and value and caches them
  /// (heads * (qk_head_dim + v_head_dim) values per token and layer).
  Naive,
  /// Caches only the normalized latent and the rotated k_pe (kv_lora_rank +
  /// qk_rope_head_dim = 576 values per token and layer for DeepSeek-V3),
  /// folds kv_b_proj's key part into the query and its value part into the
  /// attention output: the decode form of the GPU kernels.
  Absorbed,
};

struct CpuModelOptions {
  MlaForm mlaForm = MlaForm::Absorbed;
  /// Quantizes the input of every linear whose weight is FP8 in a
  /// DeepSeek-V3 checkpoint (attention projections, dense/expert/shared MLP
  /// projections, and eh_proj when the checkpoint stores it with a
  /// `weight_scale_inv`) per 1x128 tile along K, and uses the dequantized
  /// values: the GPU's activation rounding. The router gate, embeddings,
  /// norms and output heads stay FP32. In the absorbed form kv_b_proj is
  /// applied as two einsums on dequantized weights without activation
  /// quantization, as DeepSeek's inference code does.
  bool emulateFp8Activations = false;
  /// With emulateFp8Activations: also rounds to BF16 where the CUDA backend
  /// stores BF16 (compiler/docs/artifact.md): the output of every FP8
  /// linear, kv_b_proj's dequantized weight (the backend relayouts it to
  /// BF16 at load), the normalized latent and the rotated k_pe it caches,
  /// and the attention output. What is left between this reference and the
  /// GPU is summation order, so it is the oracle that greedy tokens are
  /// compared against (kiln-backend-check); off, the FP8 recipe alone.
  bool emulateBf16Storage = false;
  /// With emulateFp8Activations: the latent KV cache in E4M3 with one scale
  /// per cached token, as the CUDA backend keeps it for an artifact compiled
  /// with `kilnc --kv-cache-dtype fp8`: each token's [latent, rotated k_pe]
  /// row rounds through E4M3 at scale max(amax, 1e-4) / 448 before
  /// attention reads it (absorbed form).
  bool emulateFp8KvCache = false;
  /// Worker threads for matmuls and attention; 0 means
  /// std::thread::hardware_concurrency().
  int numThreads = 0;
  /// Loads the MTP module (layer `num_hidden_layers`) when the config has one.
  bool loadMtp = true;
};

/// Values cached per token and layer by `form` for `config`.
int64_t kvCacheValuesPerToken(const ModelConfig &config, MlaForm form);

/// Logits and the final hidden states of a forward pass, row-major.
struct ForwardResult {
  std::vector<float> logits;       // tokens x vocab_size
  std::vector<float> hiddenStates; // tokens x hidden_size, before model.norm
};

/// Main-model and MTP logits of the same positions, row-major.
struct MtpForwardResult {
  std::vector<float> logits;    // tokens x vocab_size: next token
  std::vector<float> mtpLogits; // tokens x vocab_size: the token after it
};

namespace detail {
struct CpuSequenceState;
} // namespace detail

/// The KV caches of one sequence (the main model's layers and the MTP
/// module's). Many sequences decode over one CpuModel's weights, each with a
/// CpuSequence of its own: that is how an engine batches requests without a
/// copy of the weights per request. Made by CpuModel::newSequence() and
/// usable only with the model that made it.
class CpuSequence {
public:
  ~CpuSequence();
  CpuSequence(CpuSequence &&) noexcept;
  CpuSequence &operator=(CpuSequence &&) noexcept;

  /// Positions held by the main model's KV cache.
  int64_t cachedTokens() const;
  /// Positions held by the MTP module's KV cache.
  int64_t cachedMtpTokens() const;
  /// Empties both KV caches.
  void reset();

private:
  friend class CpuModel;
  explicit CpuSequence(std::unique_ptr<detail::CpuSequenceState> state);
  std::unique_ptr<detail::CpuSequenceState> state;
};

/// One sequence's part of CpuModel::forwardBatch.
struct CpuBatchEntry {
  CpuSequence *sequence = nullptr;
  std::vector<int32_t> tokens;
  /// As in CpuModel::forward: the sequence's cache is first cut to it.
  int64_t startPosition = 0;
  /// Return only the last token's logits, which is all decoding needs: the
  /// vocabulary projection of the other positions (the bulk of a prefill's
  /// work on small models) is skipped.
  bool lastTokenLogitsOnly = false;
};

/// DeepSeek-V3 in FP32 on the CPU. Weights are read once, at construction,
/// by their checkpoint names and kept as FP32, and shared by every sequence.
/// The model has one built-in sequence, used by the overloads without a
/// CpuSequence argument. Forward calls are serialized by a mutex inside the
/// model (each one uses the whole thread pool), so they may come from
/// several threads; a sequence must not be reset, moved or destroyed while a
/// forward uses it, and the accessors of the built-in sequence (cachedTokens,
/// reset) must not race with a forward on it.
class CpuModel {
public:
  /// Validates `config` and loads every weight it implies. Throws
  /// kiln::Error naming the config field or the tensor on bad input.
  CpuModel(const ModelConfig &config, const WeightSource &weights,
           const CpuModelOptions &options = {});
  ~CpuModel();
  CpuModel(CpuModel &&) noexcept;
  CpuModel &operator=(CpuModel &&) noexcept;

  const ModelConfig &config() const;
  const CpuModelOptions &options() const;
  bool hasMtp() const;

  /// Positions held by the built-in sequence's main KV cache.
  int64_t cachedTokens() const;
  /// Positions held by the built-in sequence's MTP KV cache.
  int64_t cachedMtpTokens() const;
  /// Empties both KV caches of the built-in sequence.
  void reset();

  /// A new, empty sequence over this model's weights.
  CpuSequence newSequence() const;

  /// Runs `tokens` at positions startPosition, startPosition + 1, ... and
  /// returns their logits (tokens x vocab_size). The cache is first cut to
  /// `startPosition` (which rolls back rejected speculative tokens), so
  /// `startPosition` must not exceed cachedTokens(). Prefill then one token at
  /// a time equals one forward over the whole sequence.
  std::vector<float> forward(const std::vector<int32_t> &tokens,
                             int64_t startPosition);

  /// forward() that also returns the final hidden states (the MTP input).
  ForwardResult forwardWithHiddenStates(const std::vector<int32_t> &tokens,
                                        int64_t startPosition);

  /// The MTP module over rows startPosition + i: row i combines the main
  /// model's final hidden state h_i (`hiddenStates`, tokens x hidden_size,
  /// before model.norm) with the embedding of the token that followed it,
  /// `nextTokens[i]`, as eh_proj([enorm(emb(t_{i+1})), hnorm(h_i)]), runs the
  /// MTP block with its own KV cache (cut to `startPosition` first, which must
  /// not exceed cachedMtpTokens()) and returns shared_head logits: row i
  /// predicts the token at position startPosition + i + 2.
  std::vector<float> forwardMtp(const std::vector<float> &hiddenStates,
                                const std::vector<int32_t> &nextTokens,
                                int64_t startPosition);

  /// forwardWithHiddenStates(tokens) then forwardMtp over the same positions,
  /// the next tokens being tokens[1..] and `followingToken` (the token after
  /// the last one, e.g. the one sampled from its logits). Checks that the MTP
  /// cache reaches `startPosition` before running anything.
  MtpForwardResult forwardWithMtp(const std::vector<int32_t> &tokens,
                                  int64_t startPosition,
                                  int32_t followingToken);

  /// The functions above on `sequence` instead of the built-in one. Throws
  /// kiln::Error if `sequence` was made by another model.
  std::vector<float> forward(CpuSequence &sequence,
                             const std::vector<int32_t> &tokens,
                             int64_t startPosition);
  ForwardResult forwardWithHiddenStates(CpuSequence &sequence,
                                        const std::vector<int32_t> &tokens,
                                        int64_t startPosition);
  std::vector<float> forwardMtp(CpuSequence &sequence,
                                const std::vector<float> &hiddenStates,
                                const std::vector<int32_t> &nextTokens,
                                int64_t startPosition);
  MtpForwardResult forwardWithMtp(CpuSequence &sequence,
                                  const std::vector<int32_t> &tokens,
                                  int64_t startPosition,
                                  int32_t followingToken);

  /// One forward over several sequences (continuous batching): the rows of
  /// all entries go through every matmul together, so each weight is read
  /// once per step instead of once per sequence, while attention runs per
  /// sequence against its own cache. Returns entry i's logits in result[i]
  /// (its tokens x vocab_size, or 1 x vocab_size with lastTokenLogitsOnly);
  /// they are bitwise identical to forward(*entry.sequence, ...) alone.
  /// Every entry is checked before anything runs (distinct sequences of this
  /// model, tokens and positions as for forward); kiln::Error names the
  /// entry. On any failure each sequence is left cut to its startPosition.
  std::vector<std::vector<float>>
  forwardBatch(const std::vector<CpuBatchEntry> &entries);

private:
  /// The state behind `sequence`; kiln::Error if it was moved from.
  static detail::CpuSequenceState &stateOf(CpuSequence &sequence);

  struct Impl;
  std::unique_ptr<Impl> impl;
};

} // namespace kiln

#endif // KILN_CPU_MODEL_H
