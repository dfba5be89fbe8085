//===- cpu_model.cpp - FP32 reference forward pass of DeepSeek-V3 ---------===//
//
// Follows HF transformers' modeling_deepseek_v3.py operation by operation, in
// FP32. Every output element is computed by one thread in a fixed summation
// order, so results do not depend on the number of threads.
//
//===----------------------------------------------------------------------===//

#include "kiln/cpu_model.h"

#include "kiln/error.h"
#include "kiln/fp8.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <utility>

namespace kiln {

namespace {

constexpr double kPi = 3.14159265358979323846;

/// HF builds q_a_layernorm and kv_a_layernorm as DeepseekV3RMSNorm(size),
/// i.e. with the default eps, not config.rms_norm_eps (DeepSeek's own
/// inference code does the same).
constexpr float kLatentNormEps = 1e-6f;

/// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;

//===----------------------------------------------------------------------===//
// Config validation
//===----------------------------------------------------------------------===//

/// Errors in the words of validateConfig.
[[noreturn]] void configError(const std::string &field,
                              const std::string &what) {
  throw Error("model config: field \"" + field + "\" " + what);
}

void requireNonNegative(int64_t value, const char *field) {
  if (value < 0)
    configError(field, "must not be negative, got " + std::to_string(value));
}

//===----------------------------------------------------------------------===//
// Thread pool
//===----------------------------------------------------------------------===//

/// A fixed set of workers; the calling thread works too. run() hands out
/// chunk indices from an atomic counter and returns when all are done.
class ThreadPool {
public:
  explicit ThreadPool(int numThreads) {
    for (int i = 1; i < numThreads; ++i)
      workers.emplace_back([this] { workerLoop(); });
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    wake.notify_all();
    for (std::thread &worker : workers)
      worker.join();
  }

  int size() const { return static_cast<int>(workers.size()) + 1; }

  /// Calls `body(begin, end)` over a partition of [0, count) in parallel
  /// when count * workPerItem multiply-adds are worth it.
  void parallelFor(int64_t count, int64_t workPerItem,
                   const std::function<void(int64_t, int64_t)> &body) {
    if (count <= 0)
      return;
    if (workers.empty() || count == 1 ||
        count * workPerItem < kMinParallelWork) {
      body(0, count);
      return;
    }
    // A few chunks per thread balance uneven rows (causal attention).
    int64_t chunks = std::min<int64_t>(count, 4 * size());
    run(chunks, [&](int64_t chunk) {
      body(chunk * count / chunks, (chunk + 1) * count / chunks);
    });
  }

private:
  void run(int64_t numChunks, const std::function<void(int64_t)> &body) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      task = &body;
      taskChunks = numChunks;
      nextChunk.store(0);
      busyWorkers = static_cast<int>(workers.size());
      ++generation;
    }
    wake.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mutex);
    done.wait(lock, [&] { return busyWorkers == 0; });
    task = nullptr;
    if (error) {
      std::exception_ptr failure = std::exchange(error, nullptr);
      std::rethrow_exception(failure);
    }
  }

  void drain() {
    for (;;) {
      int64_t chunk = nextChunk.fetch_add(1);
      if (chunk >= taskChunks)
        return;
      try {
        (*task)(chunk);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error)
          error = std::current_exception();
      }
    }
  }

  void workerLoop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        wake.wait(lock, [&] { return stopping || generation != seen; });
        if (stopping)
          return;
        seen = generation;
      }
      drain();
      std::lock_guard<std::mutex> lock(mutex);
      if (--busyWorkers == 0)
        done.notify_one();
    }
  }

  std::vector<std::thread> workers;
  std::mutex mutex;
  std::condition_variable wake, done;
  const std::function<void(int64_t)> *task = nullptr;
  int64_t taskChunks = 0;
  std::atomic<int64_t> nextChunk{0};
  int busyWorkers = 0;
  uint64_t generation = 0;
  bool stopping = false;
  std::exception_ptr error;
};

//===----------------------------------------------------------------------===//
// Kernels
//===----------------------------------------------------------------------===//

/// Eight independent accumulators let the compiler use SIMD without
/// -ffast-math; the summation order is fixed by the code, not the target.
float dot(const float *a, const float *b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j)
      acc[j] += a[k + j] * b[k + j];
  float tail = 0;
  for (; k < n; ++k)
    tail += a[k] * b[k];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
         ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

/// y += alpha * x.
void axpy(float alpha, const float *x, float *y, int64_t n) {
  for (int64_t k = 0; k < n; ++k)
    y[k] += alpha * x[k];
}

/// Softmax over x[0..n) in place, as torch computes it: exp(x - max) / sum.
void softmaxInPlace(float *x, int64_t n) {
  float maxValue = *std::max_element(x, x + n);
  float sum = 0;
  for (int64_t t = 0; t < n; ++t) {
    x[t] = std::exp(x[t] - maxValue);
    sum += x[t];
  }
  for (int64_t t = 0; t < n; ++t)
    x[t] /= sum;
}

/// Rounds x to the nearest BF16 in place (CpuModelOptions::emulateBf16Storage).
void roundToBf16(float *x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    x[i] = decodeBF16(encodeBF16(x[i]));
}

/// What an E4M3 latent cache gives back of each token's [latent, k_pe] row:
/// one scale max(amax, 1e-4) / 448 per row (CpuModelOptions::
/// emulateFp8KvCache).
void roundCacheRowsToE4M3(float *latent, float *ropeKey, int64_t rows,
                          int64_t kvLora, int64_t ropeDim) {
  for (int64_t r = 0; r < rows; ++r) {
    float *parts[2] = {latent + r * kvLora, ropeKey + r * ropeDim};
    const int64_t widths[2] = {kvLora, ropeDim};
    float amax = 0;
    for (int i = 0; i < 2; ++i)
      for (int64_t c = 0; c < widths[i]; ++c)
        amax = std::max(amax, std::fabs(parts[i][c]));
    const float scale = std::max(amax, kMinAmax) / kE4M3Max;
    for (int i = 0; i < 2; ++i)
      for (int64_t c = 0; c < widths[i]; ++c)
        parts[i][c] = decodeE4M3(encodeE4M3(parts[i][c] / scale)) * scale;
  }
}

/// x quantized per 1x128 tile along each row and dequantized again: what an
/// FP8 GEMM sees of its activation input.
std::vector<float> fp8RoundTrip(const float *x, int64_t rows, int64_t cols) {
  int64_t blocks = scaleBlocks(cols);
  std::vector<uint8_t> codes(rows * cols);
  std::vector<float> scales(rows * blocks);
  quantizeActivationTiles(x, rows, cols, codes.data(), scales.data());
  std::vector<float> rounded(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      rounded[r * cols + c] = decodeE4M3(codes[r * cols + c]) *
                              scales[r * blocks + c / kScaleBlock];
  return rounded;
}

struct RopeRow {
  std::vector<float> cos, sin;
};

/// cos and sin of one position, as HF's DeepseekV3RotaryEmbedding computes
/// them: angle = float(position) * inv_freq in FP32, times the YaRN factor.
RopeRow ropeRow(int64_t position, const RopeParameters &rope) {
  RopeRow row;
  size_t half = rope.invFreq.size();
  row.cos.resize(half);
  row.sin.resize(half);
  float positionF = static_cast<float>(position);
  for (size_t j = 0; j < half; ++j) {
    float angle = rope.invFreq[j] * positionF;
    row.cos[j] = std::cos(angle) * rope.attentionFactor;
    row.sin[j] = std::sin(angle) * rope.attentionFactor;
  }
  return row;
}

void rotateInterleaved(float *x, const RopeRow &row) {
  for (size_t j = 0; j < row.cos.size(); ++j) {
    float x0 = x[2 * j], x1 = x[2 * j + 1];
    x[2 * j] = x0 * row.cos[j] - x1 * row.sin[j];
    x[2 * j + 1] = x1 * row.cos[j] + x0 * row.sin[j];
  }
}

//===----------------------------------------------------------------------===//
// Weights
//===----------------------------------------------------------------------===//

struct Linear {
  std::vector<float> weight; // outFeatures x inFeatures, row-major
  int64_t outFeatures = 0;
  int64_t inFeatures = 0;
  /// The checkpoint stores the weight in FP8, so the GPU quantizes the input.
  bool fp8 = false;
};

struct Mlp {
  Linear gate, up, down;
};

struct Attention {
  Linear qA, qB; // q_lora_rank > 0
  std::vector<float> qANorm;
  Linear q; // q_lora_rank == 0
  Linear kvA, kvB, o;
  std::vector<float> kvANorm;
};

struct MoE {
  std::vector<float> gate; // n_routed_experts x hidden, FP32 router
  std::vector<float> scoreCorrectionBias;
  std::vector<Mlp> experts;
  bool hasShared = false;
  Mlp shared;
};

struct Block {
  std::vector<float> inputNorm, postAttentionNorm;
  Attention attention;
  bool isMoE = false;
  Mlp mlp;
  MoE moe;
};

/// One layer's KV cache. Naive: `first` holds keys (heads x qk_head_dim per
/// token) and `second` values (heads x v_head_dim). Absorbed: `first` holds
/// normalized latents (kv_lora_rank) and `second` rotated rope keys
/// (qk_rope_head_dim).
struct LayerCache {
  std::vector<float> first, second;
  int64_t firstPerToken = 0, secondPerToken = 0;
  int64_t length = 0;

  void truncate(int64_t tokens) {
    length = std::min(length, tokens);
    first.resize(length * firstPerToken);
    second.resize(length * secondPerToken);
  }
  void grow(int64_t tokens) {
    length = tokens;
    first.resize(length * firstPerToken);
    second.resize(length * secondPerToken);
  }
};

struct MtpModule {
  std::vector<float> embed, enorm, hnorm, norm;
  Linear ehProj, head;
  Block block;
};

/// The rows of a batched forward that belong to one sequence: rows
/// [rowOffset, rowOffset + rows) at positions start, start + 1, ...
struct Span {
  int64_t rowOffset = 0;
  int64_t rows = 0;
  int64_t start = 0;
};

std::string shapeString(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

/// Reads tensors by checkpoint name and checks what comes back.
class WeightReader {
public:
  explicit WeightReader(const WeightSource &source) : source(source) {}

  std::vector<float> load(const std::string &name,
                          const std::vector<int64_t> &shape) const {
    if (!source.contains(name))
      throw Error("CPU model: the checkpoint has no tensor '" + name +
                  "' (expected shape " + shapeString(shape) + ")");
    std::vector<float> values = source.loadFloat(name, shape);
    int64_t expected = std::accumulate(shape.begin(), shape.end(), int64_t{1},
                                       std::multiplies<int64_t>());
    if (static_cast<int64_t>(values.size()) != expected)
      throw Error("CPU model: tensor '" + name + "' came back with " +
                  std::to_string(values.size()) + " values, expected shape " +
                  shapeString(shape));
    return values;
  }

  Linear linear(const std::string &name, int64_t outFeatures,
                int64_t inFeatures, bool fp8) const {
    Linear linear;
    linear.weight = load(name, {outFeatures, inFeatures});
    linear.outFeatures = outFeatures;
    linear.inFeatures = inFeatures;
    linear.fp8 = fp8;
    return linear;
  }

  bool contains(const std::string &name) const { return source.contains(name); }

private:
  const WeightSource &source;
};

std::string layerPrefix(int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".";
}

Mlp loadMlp(const WeightReader &reader, const std::string &prefix,
            int64_t hidden, int64_t intermediate) {
  Mlp mlp;
  mlp.gate = reader.linear(prefix + "gate_proj.weight", intermediate, hidden,
                           /*fp8=*/true);
  mlp.up = reader.linear(prefix + "up_proj.weight", intermediate, hidden,
                         /*fp8=*/true);
  mlp.down = reader.linear(prefix + "down_proj.weight", hidden, intermediate,
                           /*fp8=*/true);
  return mlp;
}

Block loadBlock(const WeightReader &reader, const ModelConfig &c,
                int64_t layer) {
  const std::string prefix = layerPrefix(layer);
  const std::string attn = prefix + "self_attn.";
  const int64_t hidden = c.hiddenSize, heads = c.numAttentionHeads;
  Block block;
  block.inputNorm = reader.load(prefix + "input_layernorm.weight", {hidden});
  block.postAttentionNorm =
      reader.load(prefix + "post_attention_layernorm.weight", {hidden});

  Attention &a = block.attention;
  if (c.qLoraRank > 0) {
    a.qA = reader.linear(attn + "q_a_proj.weight", c.qLoraRank, hidden, true);
    a.qANorm = reader.load(attn + "q_a_layernorm.weight", {c.qLoraRank});
    a.qB = reader.linear(attn + "q_b_proj.weight", heads * c.qkHeadDim(),
                         c.qLoraRank, true);
  } else {
    a.q = reader.linear(attn + "q_proj.weight", heads * c.qkHeadDim(), hidden,
                        true);
  }
  a.kvA = reader.linear(attn + "kv_a_proj_with_mqa.weight",
                        c.kvLoraRank + c.qkRopeHeadDim, hidden, true);
  a.kvANorm = reader.load(attn + "kv_a_layernorm.weight", {c.kvLoraRank});
  a.kvB =
      reader.linear(attn + "kv_b_proj.weight",
                    heads * (c.qkNopeHeadDim + c.vHeadDim), c.kvLoraRank, true);
  a.o = reader.linear(attn + "o_proj.weight", hidden, heads * c.vHeadDim, true);

  block.isMoE = c.isMoELayer(layer);
  if (!block.isMoE) {
    block.mlp = loadMlp(reader, prefix + "mlp.", hidden, c.intermediateSize);
    return block;
  }
  MoE &moe = block.moe;
  moe.gate =
      reader.load(prefix + "mlp.gate.weight", {c.nRoutedExperts, hidden});
  if (c.topkMethod == "noaux_tc")
    moe.scoreCorrectionBias = reader.load(
        prefix + "mlp.gate.e_score_correction_bias", {c.nRoutedExperts});
  moe.experts.reserve(c.nRoutedExperts);
  for (int64_t e = 0; e < c.nRoutedExperts; ++e)
    moe.experts.push_back(
        loadMlp(reader, prefix + "mlp.experts." + std::to_string(e) + ".",
                hidden, c.moeIntermediateSize));
  moe.hasShared = c.nSharedExperts > 0;
  if (moe.hasShared)
    moe.shared = loadMlp(reader, prefix + "mlp.shared_experts.", hidden,
                         c.moeIntermediateSize * c.nSharedExperts);
  return block;
}

LayerCache makeCache(const ModelConfig &c, MlaForm form) {
  LayerCache cache;
  if (form == MlaForm::Naive) {
    cache.firstPerToken = c.numAttentionHeads * c.qkHeadDim();
    cache.secondPerToken = c.numAttentionHeads * c.vHeadDim;
  } else {
    cache.firstPerToken = c.kvLoraRank;
    cache.secondPerToken = c.qkRopeHeadDim;
  }
  return cache;
}

/// Distinguishes models, so that a sequence is never run on a model whose
/// cache shapes it does not have.
std::atomic<uint64_t> nextModelId{1};

} // namespace

namespace detail {

struct CpuSequenceState {
  uint64_t modelId = 0;
  std::vector<LayerCache> caches; // one per decoder layer
  int64_t cached = 0;
  LayerCache mtpCache;

  CpuSequenceState(uint64_t modelId, const ModelConfig &config, MlaForm form)
      : modelId(modelId), caches(static_cast<size_t>(config.numHiddenLayers),
                                 makeCache(config, form)),
        mtpCache(makeCache(config, form)) {}

  void truncate(int64_t tokens) {
    for (LayerCache &cache : caches)
      cache.truncate(tokens);
    cached = std::min(cached, tokens);
  }
};

} // namespace detail

using detail::CpuSequenceState;

//===----------------------------------------------------------------------===//
// Building blocks
//===----------------------------------------------------------------------===//

void rmsNorm(const float *x, const float *weight, int64_t size, float eps,
             float *out) {
  double sumSquares = 0;
  for (int64_t i = 0; i < size; ++i)
    sumSquares += static_cast<double>(x[i]) * x[i];
  float variance = static_cast<float>(sumSquares / static_cast<double>(size));
  float inverseRms = 1.0f / std::sqrt(variance + eps);
  for (int64_t i = 0; i < size; ++i)
    out[i] = weight[i] * (x[i] * inverseRms);
}

float silu(float x) { return x / (1.0f + std::exp(-x)); }

RopeParameters computeRopeParameters(const ModelConfig &config) {
  const int64_t dim = config.qkRopeHeadDim;
  if (dim <= 0 || dim % 2 != 0)
    configError("qk_rope_head_dim",
                "must be positive and even (RoPE rotates pairs), got " +
                    std::to_string(dim));
  requireNonNegative(config.qkNopeHeadDim, "qk_nope_head_dim");
  if (!(config.ropeTheta > 1))
    configError("rope_theta", "must be greater than 1");
  const double theta = config.ropeTheta;
  const int64_t half = dim / 2;

  RopeParameters rope;
  rope.invFreq.resize(half);
  double softmaxScale =
      1.0 / std::sqrt(static_cast<double>(config.qkHeadDim()));
  auto positionFrequency = [&](int64_t j) {
    return std::pow(theta, static_cast<double>(2 * j) / dim);
  };
  if (!config.yarn) {
    for (int64_t j = 0; j < half; ++j)
      rope.invFreq[j] = static_cast<float>(1.0 / positionFrequency(j));
    rope.softmaxScale = static_cast<float>(softmaxScale);
    return rope;
  }

  const YarnScaling &yarn = *config.yarn;
  if (!(yarn.factor > 0))
    configError("rope_scaling.factor", "must be positive");
  if (yarn.originalMaxPositionEmbeddings <= 0)
    configError("rope_scaling.original_max_position_embeddings",
                "must be positive, got " +
                    std::to_string(yarn.originalMaxPositionEmbeddings));
  if (!(yarn.betaFast > 0))
    configError("rope_scaling.beta_fast", "must be positive (a turn count)");
  if (!(yarn.betaSlow > 0))
    configError("rope_scaling.beta_slow", "must be positive (a turn count)");
  // transformers 5 takes `factor` as given; some 4.x releases derived it as
  // max_position_embeddings / original_max_position_embeddings instead.
  // DeepSeek-V3's config (163840 / 4096 = 40) makes the two agree.
  const double factor = yarn.factor;
  const double originalMax =
      static_cast<double>(yarn.originalMaxPositionEmbeddings);

  // The dimension at which a frequency makes `rotations` turns over the
  // original context; YaRN interpolates below beta_slow turns, extrapolates
  // above beta_fast and ramps linearly in between.
  auto correctionDim = [&](double rotations) {
    return dim * std::log(originalMax / (rotations * 2 * kPi)) /
           (2 * std::log(theta));
  };
  double low = std::max(std::floor(correctionDim(yarn.betaFast)), 0.0);
  double high = std::min(std::ceil(correctionDim(yarn.betaSlow)),
                         static_cast<double>(dim - 1));
  if (low == high)
    high += 0.001; // HF's guard against a zero-width ramp
  for (int64_t j = 0; j < half; ++j) {
    double extrapolation = 1.0 / positionFrequency(j);
    double interpolation = 1.0 / (factor * positionFrequency(j));
    double ramp = std::clamp((j - low) / (high - low), 0.0, 1.0);
    double extrapolationWeight = 1.0 - ramp;
    rope.invFreq[j] =
        static_cast<float>(interpolation * (1.0 - extrapolationWeight) +
                           extrapolation * extrapolationWeight);
  }

  auto getMscale = [](double scale, double mscale) {
    return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
  };
  // HF: ratio when both mscale and mscale_all_dim are given (nonzero), else
  // get_mscale(factor) with mscale 1.
  double attentionFactor = (yarn.mscale != 0 && yarn.mscaleAllDim != 0)
                               ? getMscale(factor, yarn.mscale) /
                                     getMscale(factor, yarn.mscaleAllDim)
                               : getMscale(factor, 1.0);
  rope.attentionFactor = static_cast<float>(attentionFactor);
  if (yarn.mscaleAllDim != 0) {
    double mscale = getMscale(factor, yarn.mscaleAllDim);
    softmaxScale *= mscale * mscale;
  }
  rope.softmaxScale = static_cast<float>(softmaxScale);
  return rope;
}

void applyRope(float *x, int64_t position, const RopeParameters &rope) {
  rotateInterleaved(x, ropeRow(position, rope));
}

RouterChoice routeToken(const ModelConfig &config, const float *routerLogits,
                        const float *scoreCorrectionBias) {
  const int64_t numExperts = config.nRoutedExperts;
  const bool biased = config.topkMethod == "noaux_tc";
  if (biased && !scoreCorrectionBias)
    throw Error("router: topk_method \"noaux_tc\" needs "
                "e_score_correction_bias");

  std::vector<float> scores(numExperts);
  if (config.scoringFunc == "softmax") {
    std::copy(routerLogits, routerLogits + numExperts, scores.begin());
    softmaxInPlace(scores.data(), numExperts);
  } else {
    for (int64_t e = 0; e < numExperts; ++e)
      scores[e] = 1.0f / (1.0f + std::exp(-routerLogits[e]));
  }
  std::vector<float> selection(numExperts);
  for (int64_t e = 0; e < numExperts; ++e) {
    selection[e] = biased ? scores[e] + scoreCorrectionBias[e] : scores[e];
    if (std::isnan(selection[e]))
      throw Error("router: score of expert " + std::to_string(e) + " is NaN");
  }
  // Descending score, lower index first among equals: deterministic ties.
  auto byScore = [](const std::vector<float> &score) {
    return [&score](int64_t a, int64_t b) {
      return score[a] != score[b] ? score[a] > score[b] : a < b;
    };
  };

  // Experts outside the kept groups are masked with -inf, i.e. never chosen.
  std::vector<int64_t> candidates;
  if (config.topkMethod == "greedy" || config.nGroup == 1) {
    candidates.resize(numExperts);
    std::iota(candidates.begin(), candidates.end(), 0);
  } else {
    const int64_t perGroup = numExperts / config.nGroup;
    std::vector<float> groupScores(config.nGroup);
    for (int64_t g = 0; g < config.nGroup; ++g) {
      const float *group = selection.data() + g * perGroup;
      float best = -std::numeric_limits<float>::infinity(), second = best;
      for (int64_t i = 0; i < perGroup; ++i) {
        if (group[i] > best) {
          second = best;
          best = group[i];
        } else if (group[i] > second) {
          second = group[i];
        }
      }
      groupScores[g] = biased ? best + second : best;
    }
    std::vector<int64_t> groups(config.nGroup);
    std::iota(groups.begin(), groups.end(), 0);
    std::partial_sort(groups.begin(), groups.begin() + config.topkGroup,
                      groups.end(), byScore(groupScores));
    groups.resize(config.topkGroup);
    std::sort(groups.begin(), groups.end());
    for (int64_t g : groups)
      for (int64_t i = 0; i < perGroup; ++i)
        candidates.push_back(g * perGroup + i);
  }

  const int64_t topK = config.numExpertsPerTok;
  std::partial_sort(candidates.begin(), candidates.begin() + topK,
                    candidates.end(), byScore(selection));
  RouterChoice choice;
  choice.experts.assign(candidates.begin(), candidates.begin() + topK);
  float sum = 0;
  for (int64_t e : choice.experts) {
    choice.weights.push_back(scores[e]);
    sum += scores[e];
  }
  for (float &weight : choice.weights) {
    if (config.normTopkProb)
      weight /= sum + 1e-20f;
    weight *= static_cast<float>(config.routedScalingFactor);
  }
  return choice;
}

int64_t kvCacheValuesPerToken(const ModelConfig &config, MlaForm form) {
  return form == MlaForm::Naive
             ? config.numAttentionHeads * (config.qkHeadDim() + config.vHeadDim)
             : config.kvLoraRank + config.qkRopeHeadDim;
}

//===----------------------------------------------------------------------===//
// CpuModel
//===----------------------------------------------------------------------===//

struct CpuModel::Impl {
  ModelConfig config;
  CpuModelOptions options;
  RopeParameters rope;
  ThreadPool pool;

  std::vector<float> embed;
  std::vector<Block> layers;
  std::vector<float> finalNorm;
  std::vector<float> lmHead; // empty when tied to the embedding
  std::unique_ptr<MtpModule> mtp;

  const uint64_t id = nextModelId.fetch_add(1);
  /// The sequence of the CpuModel functions without a CpuSequence.
  CpuSequenceState builtIn;
  /// One forward at a time: each uses the whole pool.
  std::mutex forwardMutex;

  Impl(const ModelConfig &c, const WeightSource &source,
       const CpuModelOptions &o)
      : config(c), options(o), rope(computeRopeParameters(c)),
        pool(o.numThreads > 0
                 ? o.numThreads
                 : std::max(1u, std::thread::hardware_concurrency())),
        builtIn(id, c, o.mlaForm) {
    const WeightReader reader(source);
    const int64_t hidden = c.hiddenSize, vocab = c.vocabSize;
    embed = reader.load("model.embed_tokens.weight", {vocab, hidden});
    for (int64_t layer = 0; layer < c.numHiddenLayers; ++layer)
      layers.push_back(loadBlock(reader, c, layer));
    for (Block &block : layers)
      roundStoredWeights(block);
    finalNorm = reader.load("model.norm.weight", {hidden});
    if (!c.tieWordEmbeddings)
      lmHead = reader.load("lm_head.weight", {vocab, hidden});
    if (o.loadMtp && c.numNextnPredictLayers > 0)
      mtp = loadMtp(reader);
  }

  /// The first MTP module (layer num_hidden_layers); DeepSeek-V3 has one.
  std::unique_ptr<MtpModule> loadMtp(const WeightReader &reader) const {
    const int64_t layer = config.numHiddenLayers;
    const int64_t hidden = config.hiddenSize, vocab = config.vocabSize;
    const std::string prefix = layerPrefix(layer);
    auto module = std::make_unique<MtpModule>();
    module->embed =
        reader.load(prefix + "embed_tokens.weight", {vocab, hidden});
    module->enorm = reader.load(prefix + "enorm.weight", {hidden});
    module->hnorm = reader.load(prefix + "hnorm.weight", {hidden});
    // DeepSeek-V3 ships eh_proj in FP8, some derived checkpoints in BF16:
    // the checkpoint's scale tensor says which the GPU runs.
    const std::string ehProj = prefix + "eh_proj.weight";
    module->ehProj = reader.linear(ehProj, hidden, 2 * hidden,
                                   reader.contains(ehProj + "_scale_inv"));
    module->block = loadBlock(reader, config, layer);
    roundStoredWeights(module->block);
    module->norm = reader.load(prefix + "shared_head.norm.weight", {hidden});
    module->head = reader.linear(prefix + "shared_head.head.weight", vocab,
                                 hidden, /*fp8=*/false);
    return module;
  }

  /// kv_b_proj as the CUDA backend holds it: dequantized to BF16 at load.
  void roundStoredWeights(Block &block) const {
    if (options.emulateBf16Storage)
      roundToBf16(block.attention.kvB.weight.data(),
                  static_cast<int64_t>(block.attention.kvB.weight.size()));
  }

  //===--- Linear algebra -------------------------------------------------===//

  /// y (rows x outFeatures) = x (rows x inFeatures) @ w^T, parallel over
  /// output features, x in row blocks that stay in L1/L2.
  void matmul(const float *x, int64_t rows, const float *w, int64_t outFeatures,
              int64_t inFeatures, float *y) {
    const int64_t rowBlock = std::max<int64_t>(
        1, (32 << 10) / (4 * std::max<int64_t>(1, inFeatures)));
    pool.parallelFor(outFeatures, rows * inFeatures,
                     [&](int64_t begin, int64_t end) {
                       for (int64_t r0 = 0; r0 < rows; r0 += rowBlock) {
                         int64_t r1 = std::min(rows, r0 + rowBlock);
                         for (int64_t n = begin; n < end; ++n) {
                           const float *wRow = w + n * inFeatures;
                           for (int64_t r = r0; r < r1; ++r)
                             y[r * outFeatures + n] =
                                 dot(x + r * inFeatures, wRow, inFeatures);
                         }
                       }
                     });
  }

  void linear(const Linear &l, const float *x, int64_t rows, float *y) {
    if (options.emulateFp8Activations && l.fp8) {
      std::vector<float> rounded = fp8RoundTrip(x, rows, l.inFeatures);
      matmul(rounded.data(), rows, l.weight.data(), l.outFeatures, l.inFeatures,
             y);
      if (options.emulateBf16Storage)
        roundToBf16(y, rows * l.outFeatures);
      return;
    }
    matmul(x, rows, l.weight.data(), l.outFeatures, l.inFeatures, y);
  }

  /// down(silu(gate(x)) * up(x)).
  void mlp(const Mlp &m, const float *x, int64_t rows, float *out) {
    const int64_t intermediate = m.gate.outFeatures;
    std::vector<float> gate(rows * intermediate), up(rows * intermediate);
    linear(m.gate, x, rows, gate.data());
    linear(m.up, x, rows, up.data());
    for (size_t i = 0; i < gate.size(); ++i)
      gate[i] = silu(gate[i]) * up[i];
    linear(m.down, gate.data(), rows, out);
  }

  /// Routed experts weighted by the router plus the shared experts, summed
  /// like HF: experts in index order, then the shared MLP.
  void moe(const MoE &m, const float *x, int64_t rows, float *out) {
    const int64_t hidden = config.hiddenSize,
                  numExperts = config.nRoutedExperts;
    std::vector<float> logits(rows * numExperts);
    matmul(x, rows, m.gate.data(), numExperts, hidden, logits.data());

    std::vector<std::vector<std::pair<int64_t, float>>> routed(numExperts);
    const float *bias =
        m.scoreCorrectionBias.empty() ? nullptr : m.scoreCorrectionBias.data();
    for (int64_t r = 0; r < rows; ++r) {
      RouterChoice choice =
          routeToken(config, logits.data() + r * numExperts, bias);
      for (size_t k = 0; k < choice.experts.size(); ++k)
        routed[choice.experts[k]].emplace_back(r, choice.weights[k]);
    }

    std::fill(out, out + rows * hidden, 0.0f);
    std::vector<float> expertIn, expertOut;
    for (int64_t e = 0; e < numExperts; ++e) {
      const auto &tokens = routed[e];
      if (tokens.empty())
        continue;
      const int64_t count = static_cast<int64_t>(tokens.size());
      expertIn.resize(count * hidden);
      expertOut.resize(count * hidden);
      for (int64_t i = 0; i < count; ++i)
        std::copy_n(x + tokens[i].first * hidden, hidden,
                    expertIn.data() + i * hidden);
      mlp(m.experts[e], expertIn.data(), count, expertOut.data());
      for (int64_t i = 0; i < count; ++i) {
        float *row = out + tokens[i].first * hidden;
        for (int64_t d = 0; d < hidden; ++d)
          row[d] += expertOut[i * hidden + d] * tokens[i].second;
      }
    }
    if (m.hasShared) {
      std::vector<float> shared(rows * hidden);
      mlp(m.shared, x, rows, shared.data());
      for (int64_t i = 0; i < rows * hidden; ++i)
        out[i] += shared[i];
    }
  }

  //===--- Attention ------------------------------------------------------===//

  /// Attention over the rows of several sequences: the projections run on
  /// all rows at once, the attention itself per sequence against its cache
  /// (`caches[i]` for `spans[i]`).
  void attention(const Attention &a, const std::vector<LayerCache *> &caches,
                 const std::vector<Span> &spans, const float *x, int64_t rows,
                 float *out) {
    const ModelConfig &c = config;
    const int64_t heads = c.numAttentionHeads, nope = c.qkNopeHeadDim,
                  ropeDim = c.qkRopeHeadDim, qkDim = c.qkHeadDim(),
                  vDim = c.vHeadDim, kvLora = c.kvLoraRank;

    std::vector<float> q(rows * heads * qkDim);
    if (c.qLoraRank > 0) {
      std::vector<float> compressed(rows * c.qLoraRank);
      linear(a.qA, x, rows, compressed.data());
      for (int64_t r = 0; r < rows; ++r) {
        float *row = compressed.data() + r * c.qLoraRank;
        rmsNorm(row, a.qANorm.data(), c.qLoraRank, kLatentNormEps, row);
      }
      linear(a.qB, compressed.data(), rows, q.data());
    } else {
      linear(a.q, x, rows, q.data());
    }

    // kv_a_proj_with_mqa gives [latent | k_pe]; k_pe is shared by all heads.
    std::vector<float> kv(rows * (kvLora + ropeDim));
    linear(a.kvA, x, rows, kv.data());
    std::vector<float> latent(rows * kvLora), ropeKey(rows * ropeDim);
    for (int64_t r = 0; r < rows; ++r) {
      const float *row = kv.data() + r * (kvLora + ropeDim);
      rmsNorm(row, a.kvANorm.data(), kvLora, kLatentNormEps,
              latent.data() + r * kvLora);
      std::copy_n(row + kvLora, ropeDim, ropeKey.data() + r * ropeDim);
    }
    if (options.emulateBf16Storage)
      roundToBf16(latent.data(), rows * kvLora);
    for (const Span &span : spans)
      for (int64_t i = 0; i < span.rows; ++i) {
        const int64_t r = span.rowOffset + i;
        RopeRow rotation = ropeRow(span.start + i, rope);
        rotateInterleaved(ropeKey.data() + r * ropeDim, rotation);
        for (int64_t h = 0; h < heads; ++h)
          rotateInterleaved(q.data() + (r * heads + h) * qkDim + nope,
                            rotation);
      }
    if (options.emulateFp8KvCache)
      roundCacheRowsToE4M3(latent.data(), ropeKey.data(), rows, kvLora,
                           ropeDim);
    else if (options.emulateBf16Storage)
      roundToBf16(ropeKey.data(), rows * ropeDim);

    std::vector<float> attended(rows * heads * vDim);
    for (size_t s = 0; s < spans.size(); ++s) {
      const Span &span = spans[s];
      const int64_t r = span.rowOffset;
      const float *spanQ = q.data() + r * heads * qkDim;
      const float *spanLatent = latent.data() + r * kvLora;
      const float *spanRopeKey = ropeKey.data() + r * ropeDim;
      float *spanAttended = attended.data() + r * heads * vDim;
      if (options.mlaForm == MlaForm::Naive)
        naiveAttention(a, *caches[s], spanQ, spanLatent, spanRopeKey, span.rows,
                       span.start, spanAttended);
      else
        absorbedAttention(a, *caches[s], spanQ, spanLatent, spanRopeKey,
                          span.rows, span.start, spanAttended);
    }
    if (options.emulateBf16Storage)
      roundToBf16(attended.data(), rows * heads * vDim);
    linear(a.o, attended.data(), rows, out);
  }

  /// HF's form: kv_b_proj gives every head its k_nope and v; keys are
  /// [k_nope | k_pe] and are cached with the values.
  void naiveAttention(const Attention &a, LayerCache &cache, const float *q,
                      const float *latent, const float *ropeKey, int64_t rows,
                      int64_t start, float *attended) {
    const ModelConfig &c = config;
    const int64_t heads = c.numAttentionHeads, nope = c.qkNopeHeadDim,
                  ropeDim = c.qkRopeHeadDim, qkDim = c.qkHeadDim(),
                  vDim = c.vHeadDim;
    std::vector<float> kvb(rows * heads * (nope + vDim));
    linear(a.kvB, latent, rows, kvb.data());
    cache.grow(start + rows);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < heads; ++h) {
        const float *source = kvb.data() + (r * heads + h) * (nope + vDim);
        float *key = cache.first.data() + ((start + r) * heads + h) * qkDim;
        std::copy_n(source, nope, key);
        std::copy_n(ropeKey + r * ropeDim, ropeDim, key + nope);
        std::copy_n(source + nope, vDim,
                    cache.second.data() + ((start + r) * heads + h) * vDim);
      }

    const float *keys = cache.first.data(), *values = cache.second.data();
    const int64_t total = start + rows;
    pool.parallelFor(
        rows * heads, total * (qkDim + vDim), [&](int64_t begin, int64_t end) {
          std::vector<float> scores(total);
          for (int64_t task = begin; task < end; ++task) {
            const int64_t r = task / heads, h = task % heads;
            const int64_t visible = start + r + 1; // causal
            const float *query = q + (r * heads + h) * qkDim;
            for (int64_t t = 0; t < visible; ++t)
              scores[t] = dot(query, keys + (t * heads + h) * qkDim, qkDim) *
                          rope.softmaxScale;
            softmaxInPlace(scores.data(), visible);
            float *output = attended + (r * heads + h) * vDim;
            std::fill(output, output + vDim, 0.0f);
            for (int64_t t = 0; t < visible; ++t)
              axpy(scores[t], values + (t * heads + h) * vDim, output, vDim);
          }
        });
  }

  /// The decode form: score = (q_nope W_uk) . latent + q_pe . k_pe, and the
  /// output is W_uv (sum_t p_t latent_t); only latent and k_pe are cached.
  void absorbedAttention(const Attention &a, LayerCache &cache, const float *q,
                         const float *latent, const float *ropeKey,
                         int64_t rows, int64_t start, float *attended) {
    const ModelConfig &c = config;
    const int64_t heads = c.numAttentionHeads, nope = c.qkNopeHeadDim,
                  ropeDim = c.qkRopeHeadDim, qkDim = c.qkHeadDim(),
                  vDim = c.vHeadDim, kvLora = c.kvLoraRank;
    cache.grow(start + rows);
    std::copy_n(latent, rows * kvLora, cache.first.data() + start * kvLora);
    std::copy_n(ropeKey, rows * ropeDim, cache.second.data() + start * ropeDim);

    const float *latents = cache.first.data(), *ropeKeys = cache.second.data();
    const float *kvB =
        a.kvB.weight.data(); // per head: nope rows W_uk, vDim rows W_uv
    const int64_t total = start + rows;
    pool.parallelFor(
        rows * heads, total * (kvLora + ropeDim) + (nope + vDim) * kvLora,
        [&](int64_t begin, int64_t end) {
          std::vector<float> scores(total), queryLatent(kvLora),
              outputLatent(kvLora);
          for (int64_t task = begin; task < end; ++task) {
            const int64_t r = task / heads, h = task % heads;
            const int64_t visible = start + r + 1; // causal
            const float *queryNope = q + (r * heads + h) * qkDim;
            const float *queryRope = queryNope + nope;
            const float *headWeights = kvB + h * (nope + vDim) * kvLora;

            std::fill(queryLatent.begin(), queryLatent.end(), 0.0f);
            for (int64_t d = 0; d < nope; ++d)
              axpy(queryNope[d], headWeights + d * kvLora, queryLatent.data(),
                   kvLora);
            for (int64_t t = 0; t < visible; ++t)
              scores[t] =
                  (dot(queryLatent.data(), latents + t * kvLora, kvLora) +
                   dot(queryRope, ropeKeys + t * ropeDim, ropeDim)) *
                  rope.softmaxScale;
            softmaxInPlace(scores.data(), visible);

            std::fill(outputLatent.begin(), outputLatent.end(), 0.0f);
            for (int64_t t = 0; t < visible; ++t)
              axpy(scores[t], latents + t * kvLora, outputLatent.data(),
                   kvLora);
            float *output = attended + (r * heads + h) * vDim;
            for (int64_t e = 0; e < vDim; ++e)
              output[e] = dot(headWeights + (nope + e) * kvLora,
                              outputLatent.data(), kvLora);
          }
        });
  }

  //===--- Blocks and heads -----------------------------------------------===//

  /// One decoder layer on `hidden` (rows x hidden_size) in place; the rows
  /// of `spans[i]` attend through `caches[i]`.
  void runBlock(const Block &block, const std::vector<LayerCache *> &caches,
                const std::vector<Span> &spans, float *hidden, int64_t rows) {
    const int64_t size = config.hiddenSize;
    const float eps = static_cast<float>(config.rmsNormEps);
    std::vector<float> normed(rows * size), delta(rows * size);
    for (int64_t r = 0; r < rows; ++r)
      rmsNorm(hidden + r * size, block.inputNorm.data(), size, eps,
              normed.data() + r * size);
    attention(block.attention, caches, spans, normed.data(), rows,
              delta.data());
    for (int64_t i = 0; i < rows * size; ++i)
      hidden[i] += delta[i];
    for (int64_t r = 0; r < rows; ++r)
      rmsNorm(hidden + r * size, block.postAttentionNorm.data(), size, eps,
              normed.data() + r * size);
    if (block.isMoE)
      moe(block.moe, normed.data(), rows, delta.data());
    else
      mlp(block.mlp, normed.data(), rows, delta.data());
    for (int64_t i = 0; i < rows * size; ++i)
      hidden[i] += delta[i];
  }

  /// norm then head: logits (rows x vocab_size).
  std::vector<float> logitsOf(const float *hidden, int64_t rows,
                              const std::vector<float> &norm,
                              const float *head) {
    const int64_t size = config.hiddenSize;
    std::vector<float> normed(rows * size);
    for (int64_t r = 0; r < rows; ++r)
      rmsNorm(hidden + r * size, norm.data(), size,
              static_cast<float>(config.rmsNormEps), normed.data() + r * size);
    std::vector<float> logits(rows * config.vocabSize);
    matmul(normed.data(), rows, head, config.vocabSize, size, logits.data());
    return logits;
  }

  void checkTokens(const std::vector<int32_t> &tokens, const char *what) const {
    if (tokens.empty())
      throw Error(std::string("CPU model: ") + what + " is empty");
    for (size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] < 0 || tokens[i] >= config.vocabSize)
        throw Error(std::string("CPU model: ") + what + "[" +
                    std::to_string(i) + "] = " + std::to_string(tokens[i]) +
                    " is outside the vocabulary [0, " +
                    std::to_string(config.vocabSize) + ")");
  }

  void checkPositions(int64_t start, int64_t count, int64_t cachedLength,
                      const char *cacheName) const {
    if (start < 0 || start > cachedLength)
      throw Error("CPU model: start position " + std::to_string(start) +
                  " is outside the " + cacheName + " KV cache, which holds " +
                  std::to_string(cachedLength) + " positions");
    if (config.maxPositionEmbeddings > 0 &&
        start + count > config.maxPositionEmbeddings)
      throw Error("CPU model: positions up to " +
                  std::to_string(start + count - 1) +
                  " exceed max_position_embeddings = " +
                  std::to_string(config.maxPositionEmbeddings));
  }

  /// One sequence's tokens in a main-model pass.
  struct SequenceRun {
    CpuSequenceState *state = nullptr;
    const std::vector<int32_t> *tokens = nullptr;
    int64_t start = 0;
  };

  void checkOwner(const CpuSequenceState *state,
                  const std::string &what) const {
    if (!state)
      throw Error("CPU model: " + what + " has no sequence");
    if (state->modelId != id)
      throw Error("CPU model: " + what +
                  " was made by another CpuModel (its caches have that "
                  "model's shapes)");
  }

  /// The main model over several sequences' tokens in one pass: the rows of
  /// every run, one after the other, go through each decoder layer together;
  /// each run attends through its own caches. Returns the final hidden
  /// states (rows x hidden_size, before model.norm). Everything is checked
  /// before any cache moves; on a failure every cache is cut to its start.
  /// `names[i]` names run i in errors.
  std::vector<float> runMain(const std::vector<SequenceRun> &runs,
                             const std::vector<std::string> &names,
                             std::vector<Span> &spans) {
    spans.clear();
    int64_t total = 0;
    for (size_t i = 0; i < runs.size(); ++i) {
      const SequenceRun &run = runs[i];
      checkOwner(run.state, names[i].empty() ? "the sequence" : names[i]);
      checkTokens(*run.tokens,
                  (names[i].empty() ? "tokens" : names[i] + ".tokens").c_str());
      const int64_t rows = static_cast<int64_t>(run.tokens->size());
      checkPositions(run.start, rows, run.state->cached, "main");
      for (size_t j = 0; j < i; ++j)
        if (runs[j].state == run.state)
          throw Error("CPU model: " + names[j] + " and " + names[i] +
                      " use the same sequence");
      spans.push_back({total, rows, run.start});
      total += rows;
    }
    for (const SequenceRun &run : runs)
      run.state->truncate(run.start);

    const int64_t size = config.hiddenSize;
    std::vector<float> hidden(total * size);
    for (size_t i = 0; i < runs.size(); ++i)
      for (int64_t r = 0; r < spans[i].rows; ++r)
        std::copy_n(embed.data() + (*runs[i].tokens)[r] * size, size,
                    hidden.data() + (spans[i].rowOffset + r) * size);
    std::vector<LayerCache *> caches(runs.size());
    try {
      for (size_t layer = 0; layer < layers.size(); ++layer) {
        for (size_t i = 0; i < runs.size(); ++i)
          caches[i] = &runs[i].state->caches[layer];
        runBlock(layers[layer], caches, spans, hidden.data(), total);
      }
    } catch (...) {
      for (const SequenceRun &run : runs) // no half-appended positions
        run.state->truncate(run.start);
      throw;
    }
    for (size_t i = 0; i < runs.size(); ++i)
      runs[i].state->cached = runs[i].start + spans[i].rows;
    return hidden;
  }

  const float *outputHead() const {
    return lmHead.empty() ? embed.data() : lmHead.data();
  }

  ForwardResult forward(CpuSequenceState &state,
                        const std::vector<int32_t> &tokens, int64_t start) {
    std::vector<Span> spans;
    ForwardResult result;
    result.hiddenStates = runMain({{&state, &tokens, start}}, {""}, spans);
    result.logits =
        logitsOf(result.hiddenStates.data(),
                 static_cast<int64_t>(tokens.size()), finalNorm, outputHead());
    return result;
  }

  std::vector<std::vector<float>>
  forwardBatch(const std::vector<CpuBatchEntry> &entries) {
    std::vector<SequenceRun> runs;
    std::vector<std::string> names;
    for (size_t i = 0; i < entries.size(); ++i) {
      const CpuBatchEntry &entry = entries[i];
      runs.push_back({entry.sequence ? entry.sequence->state.get() : nullptr,
                      &entry.tokens, entry.startPosition});
      names.push_back("batch entry " + std::to_string(i));
    }
    std::vector<Span> spans;
    std::vector<float> hidden = runMain(runs, names, spans);

    // The rows whose logits are wanted, gathered so that the output head is
    // read once for the whole batch.
    const int64_t size = config.hiddenSize, vocab = config.vocabSize;
    std::vector<float> wanted;
    std::vector<int64_t> wantedRows;
    for (size_t i = 0; i < entries.size(); ++i) {
      const Span &span = spans[i];
      const int64_t first = entries[i].lastTokenLogitsOnly
                                ? span.rowOffset + span.rows - 1
                                : span.rowOffset;
      const int64_t end = span.rowOffset + span.rows;
      wanted.insert(wanted.end(), hidden.begin() + first * size,
                    hidden.begin() + end * size);
      wantedRows.push_back(end - first);
    }
    std::vector<float> logits =
        logitsOf(wanted.data(), static_cast<int64_t>(wanted.size()) / size,
                 finalNorm, outputHead());
    std::vector<std::vector<float>> result;
    int64_t row = 0;
    for (int64_t count : wantedRows) {
      result.emplace_back(logits.begin() + row * vocab,
                          logits.begin() + (row + count) * vocab);
      row += count;
    }
    return result;
  }

  void requireMtp() const {
    if (!mtp)
      throw Error("CPU model: no MTP module (num_nextn_predict_layers is 0 "
                  "or CpuModelOptions::loadMtp is off)");
  }

  std::vector<float> forwardMtp(CpuSequenceState &state,
                                const std::vector<float> &hiddenStates,
                                const std::vector<int32_t> &nextTokens,
                                int64_t start) {
    requireMtp();
    checkOwner(&state, "the sequence");
    checkTokens(nextTokens, "nextTokens");
    const int64_t rows = static_cast<int64_t>(nextTokens.size());
    const int64_t size = config.hiddenSize;
    if (static_cast<int64_t>(hiddenStates.size()) != rows * size)
      throw Error("CPU model: MTP hidden states hold " +
                  std::to_string(hiddenStates.size()) + " values, expected " +
                  std::to_string(rows) + " x hidden_size " +
                  std::to_string(size));
    LayerCache &cache = state.mtpCache;
    checkPositions(start, rows, cache.length, "MTP");
    cache.truncate(start);

    // eh_proj input: [enorm(embedding of t_{i+1}) | hnorm(h_i)].
    const float eps = static_cast<float>(config.rmsNormEps);
    std::vector<float> combined(rows * 2 * size), hidden(rows * size);
    for (int64_t r = 0; r < rows; ++r) {
      float *row = combined.data() + r * 2 * size;
      rmsNorm(mtp->embed.data() + nextTokens[r] * size, mtp->enorm.data(), size,
              eps, row);
      rmsNorm(hiddenStates.data() + r * size, mtp->hnorm.data(), size, eps,
              row + size);
    }
    linear(mtp->ehProj, combined.data(), rows, hidden.data());
    try {
      runBlock(mtp->block, {&cache}, {{0, rows, start}}, hidden.data(), rows);
    } catch (...) {
      cache.truncate(start);
      throw;
    }
    return logitsOf(hidden.data(), rows, mtp->norm, mtp->head.weight.data());
  }

  MtpForwardResult forwardWithMtp(CpuSequenceState &state,
                                  const std::vector<int32_t> &tokens,
                                  int64_t start, int32_t followingToken) {
    requireMtp();
    checkOwner(&state, "the sequence");
    // Fail before the main cache moves if the MTP cache cannot follow.
    if (start > state.mtpCache.length)
      throw Error("CPU model: start position " + std::to_string(start) +
                  " is outside the MTP KV cache, which holds " +
                  std::to_string(state.mtpCache.length) + " positions");
    ForwardResult main = forward(state, tokens, start);
    std::vector<int32_t> nextTokens(tokens.begin() + 1, tokens.end());
    nextTokens.push_back(followingToken);
    MtpForwardResult result;
    result.mtpLogits = forwardMtp(state, main.hiddenStates, nextTokens, start);
    result.logits = std::move(main.logits);
    return result;
  }
};

//===----------------------------------------------------------------------===//
// CpuSequence
//===----------------------------------------------------------------------===//

CpuSequence::CpuSequence(std::unique_ptr<CpuSequenceState> state)
    : state(std::move(state)) {}
CpuSequence::~CpuSequence() = default;
CpuSequence::CpuSequence(CpuSequence &&) noexcept = default;
CpuSequence &CpuSequence::operator=(CpuSequence &&) noexcept = default;

int64_t CpuSequence::cachedTokens() const { return state ? state->cached : 0; }
int64_t CpuSequence::cachedMtpTokens() const {
  return state ? state->mtpCache.length : 0;
}

void CpuSequence::reset() {
  if (!state)
    return;
  state->truncate(0);
  state->mtpCache.truncate(0);
}

//===----------------------------------------------------------------------===//
// CpuModel
//===----------------------------------------------------------------------===//

CpuModel::CpuModel(const ModelConfig &config, const WeightSource &weights,
                   const CpuModelOptions &options) {
  validateConfig(config, "model config");
  computeRopeParameters(config); // checks the RoPE fields
  if (options.numThreads < 0)
    throw Error("CpuModelOptions::numThreads must not be negative, got " +
                std::to_string(options.numThreads));
  if ((options.emulateBf16Storage || options.emulateFp8KvCache) &&
      !options.emulateFp8Activations)
    throw Error("CpuModelOptions::emulateBf16Storage and emulateFp8KvCache "
                "need emulateFp8Activations (they emulate the CUDA backend's "
                "FP8 recipe)");
  impl = std::make_unique<Impl>(config, weights, options);
}

CpuModel::~CpuModel() = default;
CpuModel::CpuModel(CpuModel &&) noexcept = default;
CpuModel &CpuModel::operator=(CpuModel &&) noexcept = default;

const ModelConfig &CpuModel::config() const { return impl->config; }
const CpuModelOptions &CpuModel::options() const { return impl->options; }
bool CpuModel::hasMtp() const { return impl->mtp != nullptr; }
int64_t CpuModel::cachedTokens() const { return impl->builtIn.cached; }
int64_t CpuModel::cachedMtpTokens() const {
  return impl->builtIn.mtpCache.length;
}

void CpuModel::reset() {
  impl->builtIn.truncate(0);
  impl->builtIn.mtpCache.truncate(0);
}

CpuSequenceState &CpuModel::stateOf(CpuSequence &sequence) {
  if (!sequence.state)
    throw Error("CPU model: the sequence was moved from");
  return *sequence.state;
}

CpuSequence CpuModel::newSequence() const {
  return CpuSequence(std::make_unique<CpuSequenceState>(impl->id, impl->config,
                                                        impl->options.mlaForm));
}

std::vector<float> CpuModel::forward(const std::vector<int32_t> &tokens,
                                     int64_t startPosition) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forward(impl->builtIn, tokens, startPosition).logits;
}

ForwardResult
CpuModel::forwardWithHiddenStates(const std::vector<int32_t> &tokens,
                                  int64_t startPosition) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forward(impl->builtIn, tokens, startPosition);
}

std::vector<float> CpuModel::forwardMtp(const std::vector<float> &hiddenStates,
                                        const std::vector<int32_t> &nextTokens,
                                        int64_t startPosition) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forwardMtp(impl->builtIn, hiddenStates, nextTokens,
                          startPosition);
}

MtpForwardResult CpuModel::forwardWithMtp(const std::vector<int32_t> &tokens,
                                          int64_t startPosition,
                                          int32_t followingToken) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forwardWithMtp(impl->builtIn, tokens, startPosition,
                              followingToken);
}

std::vector<float> CpuModel::forward(CpuSequence &sequence,
                                     const std::vector<int32_t> &tokens,
                                     int64_t startPosition) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forward(stateOf(sequence), tokens, startPosition).logits;
}

ForwardResult
CpuModel::forwardWithHiddenStates(CpuSequence &sequence,
                                  const std::vector<int32_t> &tokens,
                                  int64_t startPosition) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forward(stateOf(sequence), tokens, startPosition);
}

std::vector<float> CpuModel::forwardMtp(CpuSequence &sequence,
                                        const std::vector<float> &hiddenStates,
                                        const std::vector<int32_t> &nextTokens,
                                        int64_t startPosition) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forwardMtp(stateOf(sequence), hiddenStates, nextTokens,
                          startPosition);
}

MtpForwardResult CpuModel::forwardWithMtp(CpuSequence &sequence,
                                          const std::vector<int32_t> &tokens,
                                          int64_t startPosition,
                                          int32_t followingToken) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forwardWithMtp(stateOf(sequence), tokens, startPosition,
                              followingToken);
}

std::vector<std::vector<float>>
CpuModel::forwardBatch(const std::vector<CpuBatchEntry> &entries) {
  std::lock_guard<std::mutex> lock(impl->forwardMutex);
  return impl->forwardBatch(entries);
}

} // namespace kiln
