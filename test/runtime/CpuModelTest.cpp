//===- CpuModelTest.cpp - the FP32 DeepSeek-V3 reference forward ----------===//
//
// Tiny DeepSeek-V3 configs with random weights held in memory under their
// checkpoint names. The model is checked against an independent
// double-precision forward written here the way HF's modeling_deepseek_v3.py
// computes it (de-interleaved RoPE with rotate_half, materialized keys, HF's
// router with -inf masking), its two MLA forms and its KV cache against each
// other, and its building blocks against their formulas.
//
//===----------------------------------------------------------------------===//

#include "kiln/checkpoint.h"
#include "kiln/config.h"
#include "kiln/cpu_model.h"
#include "kiln/error.h"
#include "kiln/fp8.h"
#include "kiln/tiny_checkpoint.h"

#include "TestSupport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <string>
#include <vector>

namespace {

using kiln::CpuModel;
using kiln::CpuModelOptions;
using kiln::MlaForm;
using kiln::ModelConfig;

constexpr double kPi = 3.14159265358979323846;

//===----------------------------------------------------------------------===//
// Tiny configs and random weights
//===----------------------------------------------------------------------===//

/// splitmix64: the same numbers on every platform, unlike std distributions.
class TestRandom {
public:
  explicit TestRandom(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [-1, 1).
  double symmetric() {
    return static_cast<double>(next() >> 11) * 0x1.0p-52 - 1.0;
  }
  /// Approximately standard normal (sum of four uniforms, variance 1).
  double normal() {
    return (symmetric() + symmetric() + symmetric() + symmetric()) *
           std::sqrt(3.0 / 4.0);
  }

private:
  uint64_t state;
};

/// A small but complete DeepSeek-V3: 2 layers (dense, then MoE) and one MTP
/// layer, YaRN, q compression, shared experts, grouped noaux_tc routing.
ModelConfig tinyConfig() {
  ModelConfig c;
  c.vocabSize = 300;
  c.hiddenSize = 64;
  c.intermediateSize = 96;
  c.moeIntermediateSize = 32;
  c.numHiddenLayers = 2;
  c.numAttentionHeads = 4;
  c.numKeyValueHeads = 4;
  c.maxPositionEmbeddings = 256;
  c.qLoraRank = 48;
  c.kvLoraRank = 32;
  c.qkNopeHeadDim = 16;
  c.qkRopeHeadDim = 8;
  c.vHeadDim = 16;
  c.nRoutedExperts = 8;
  c.nSharedExperts = 1;
  c.numExpertsPerTok = 2;
  c.nGroup = 4;
  c.topkGroup = 2;
  c.firstKDenseReplace = 1;
  c.routedScalingFactor = 2.5;
  c.normTopkProb = true;
  c.scoringFunc = "sigmoid";
  c.topkMethod = "noaux_tc";
  c.rmsNormEps = 1e-6;
  c.ropeTheta = 10000.0;
  kiln::YarnScaling yarn;
  yarn.factor = 4.0;
  // max_position_embeddings = factor * original keeps older transformers
  // (which derive the factor from that ratio) in agreement.
  yarn.originalMaxPositionEmbeddings = 64;
  yarn.betaFast = 32;
  yarn.betaSlow = 1;
  yarn.mscale = 1.0;
  yarn.mscaleAllDim = 1.0;
  c.yarn = yarn;
  c.numNextnPredictLayers = 1;
  return c;
}

/// Random tensors in memory under their checkpoint names: every tensor the
/// checkpoint layout implies (kiln::expectedTensors), with the tiny
/// checkpoint generator's values before FP8/BF16 rounding (matrices of
/// variance 1/fan_in, norms near 1, positive correction biases), so
/// activations stay of order one through the layers.
class RandomWeights : public kiln::WeightSource {
public:
  RandomWeights(const ModelConfig &config, uint64_t seed) {
    for (const kiln::ExpectedTensor &tensor : kiln::expectedTensors(config))
      tensors[tensor.name] = {tensor.shape,
                              kiln::tinyTensorValues(tensor, seed)};
  }

  bool contains(const std::string &name) const override {
    return tensors.count(name) != 0;
  }

  std::vector<float>
  loadFloat(const std::string &name,
            const std::vector<int64_t> &shape) const override {
    auto it = tensors.find(name);
    if (it == tensors.end())
      throw kiln::Error("random weights: no tensor '" + name + "'");
    if (it->second.shape != shape)
      throw kiln::Error("random weights: tensor '" + name +
                        "' has another shape");
    return it->second.values;
  }

  std::vector<float> &values(const std::string &name) {
    return tensors.at(name).values;
  }
  const std::vector<float> &values(const std::string &name) const {
    return tensors.at(name).values;
  }
  void erase(const std::string &name) { tensors.erase(name); }

private:
  struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> values;
  };
  std::map<std::string, Tensor> tensors;
};

std::vector<int32_t> randomTokens(int64_t count, int64_t vocab, uint64_t seed) {
  TestRandom random(seed);
  std::vector<int32_t> tokens(count);
  for (int32_t &token : tokens)
    token = static_cast<int32_t>(random.next() % static_cast<uint64_t>(vocab));
  return tokens;
}

/// max |a - b| / max |b|: a relative error that ignores near-zero entries.
double relativeDifference(const std::vector<float> &a,
                          const std::vector<float> &b) {
  EXPECT_EQ(a.size(), b.size());
  double maxDiff = 0, maxRef = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    maxDiff = std::max(maxDiff, std::fabs(static_cast<double>(a[i]) - b[i]));
    maxRef = std::max(maxRef, std::fabs(static_cast<double>(b[i])));
  }
  return maxRef > 0 ? maxDiff / maxRef : maxDiff;
}

double relativeDifference(const std::vector<float> &a,
                          const std::vector<double> &b) {
  EXPECT_EQ(a.size(), b.size());
  double maxDiff = 0, maxRef = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    maxDiff = std::max(maxDiff, std::fabs(a[i] - b[i]));
    maxRef = std::max(maxRef, std::fabs(b[i]));
  }
  return maxRef > 0 ? maxDiff / maxRef : maxDiff;
}

std::vector<float> rows(const std::vector<float> &matrix, int64_t width,
                        int64_t begin, int64_t end) {
  return std::vector<float>(matrix.begin() + begin * width,
                            matrix.begin() + end * width);
}

CpuModelOptions withForm(MlaForm form) {
  CpuModelOptions options;
  options.mlaForm = form;
  return options;
}

//===----------------------------------------------------------------------===//
// Independent double-precision reference, HF's way
//===----------------------------------------------------------------------===//

struct ReferenceRope {
  std::vector<double> invFreq;
  double attentionFactor = 1, softmaxScale = 1;
};

/// HF _compute_yarn_parameters / the default RoPE, and DeepseekV3Attention's
/// softmax scale, straight from the formulas.
ReferenceRope referenceRope(const ModelConfig &c) {
  ReferenceRope rope;
  const int dim = static_cast<int>(c.qkRopeHeadDim);
  const double base = c.ropeTheta;
  rope.softmaxScale = 1.0 / std::sqrt(static_cast<double>(c.qkHeadDim()));
  if (!c.yarn) {
    for (int i = 0; i < dim; i += 2)
      rope.invFreq.push_back(1.0 /
                             std::pow(base, i / static_cast<double>(dim)));
    return rope;
  }
  const kiln::YarnScaling &y = *c.yarn;
  auto getMscale = [](double scale, double m) {
    return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
  };
  auto findCorrectionDim = [&](double rotations) {
    return (dim *
            std::log(y.originalMaxPositionEmbeddings / (rotations * 2 * kPi))) /
           (2 * std::log(base));
  };
  double low = std::max(std::floor(findCorrectionDim(y.betaFast)), 0.0);
  double high = std::min(std::ceil(findCorrectionDim(y.betaSlow)),
                         static_cast<double>(dim - 1));
  if (low == high)
    high += 0.001;
  for (int j = 0; j < dim / 2; ++j) {
    double posFreq = std::pow(base, 2.0 * j / dim);
    double mask = 1.0 - std::clamp((j - low) / (high - low), 0.0, 1.0);
    rope.invFreq.push_back(1.0 / (y.factor * posFreq) * (1 - mask) +
                           1.0 / posFreq * mask);
  }
  rope.attentionFactor =
      (y.mscale != 0 && y.mscaleAllDim != 0)
          ? getMscale(y.factor, y.mscale) / getMscale(y.factor, y.mscaleAllDim)
          : getMscale(y.factor, 1.0);
  if (y.mscaleAllDim != 0)
    rope.softmaxScale *= std::pow(getMscale(y.factor, y.mscaleAllDim), 2);
  return rope;
}

using Vec = std::vector<double>;

class ReferenceModel {
public:
  ReferenceModel(const ModelConfig &config, const RandomWeights &weights)
      : c(config), w(weights), rope(referenceRope(config)) {}

  struct Output {
    Vec logits, hidden; // hidden: before model.norm
  };

  Output forward(const std::vector<int32_t> &tokens) const {
    const int64_t n = static_cast<int64_t>(tokens.size());
    Vec h = embedding("model.embed_tokens.weight", tokens);
    for (int64_t layer = 0; layer < c.numHiddenLayers; ++layer)
      h = block(layer, h, n);
    Output out;
    out.hidden = h;
    out.logits = linear(norm(h, n, "model.norm.weight", c.rmsNormEps), n,
                        c.tieWordEmbeddings ? "model.embed_tokens.weight"
                                            : "lm_head.weight");
    return out;
  }

  Vec mtp(const Vec &hidden, const std::vector<int32_t> &nextTokens) const {
    const int64_t n = static_cast<int64_t>(nextTokens.size()),
                  size = c.hiddenSize;
    const std::string p = prefix(c.numHiddenLayers);
    Vec e = norm(embedding(p + "embed_tokens.weight", nextTokens), n,
                 p + "enorm.weight", c.rmsNormEps);
    Vec hn = norm(hidden, n, p + "hnorm.weight", c.rmsNormEps);
    Vec cat(n * 2 * size);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < size; ++d) {
        cat[i * 2 * size + d] = e[i * size + d];
        cat[i * 2 * size + size + d] = hn[i * size + d];
      }
    Vec x = block(c.numHiddenLayers, linear(cat, n, p + "eh_proj.weight"), n);
    return linear(norm(x, n, p + "shared_head.norm.weight", c.rmsNormEps), n,
                  p + "shared_head.head.weight");
  }

private:
  static std::string prefix(int64_t layer) {
    return "model.layers." + std::to_string(layer) + ".";
  }

  Vec get(const std::string &name) const {
    const std::vector<float> &values = w.values(name);
    return Vec(values.begin(), values.end());
  }

  Vec embedding(const std::string &name,
                const std::vector<int32_t> &tokens) const {
    Vec table = get(name), out;
    for (int32_t t : tokens)
      out.insert(out.end(), table.begin() + t * c.hiddenSize,
                 table.begin() + (t + 1) * c.hiddenSize);
    return out;
  }

  /// x (n x in) @ W^T with W read from the weights (out x in).
  Vec linear(const Vec &x, int64_t n, const std::string &name) const {
    Vec weight = get(name);
    const int64_t in = static_cast<int64_t>(x.size()) / n;
    const int64_t out = static_cast<int64_t>(weight.size()) / in;
    Vec y(n * out, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t o = 0; o < out; ++o)
        for (int64_t k = 0; k < in; ++k)
          y[i * out + o] += x[i * in + k] * weight[o * in + k];
    return y;
  }

  Vec norm(const Vec &x, int64_t n, const std::string &name, double eps) const {
    Vec weight = get(name), y(x.size());
    const int64_t size = static_cast<int64_t>(weight.size());
    for (int64_t i = 0; i < n; ++i) {
      double meanSquare = 0;
      for (int64_t d = 0; d < size; ++d)
        meanSquare += x[i * size + d] * x[i * size + d] / size;
      for (int64_t d = 0; d < size; ++d)
        y[i * size + d] =
            weight[d] * x[i * size + d] / std::sqrt(meanSquare + eps);
    }
    return y;
  }

  Vec mlp(const Vec &x, int64_t n, const std::string &p) const {
    Vec gate = linear(x, n, p + "gate_proj.weight");
    Vec up = linear(x, n, p + "up_proj.weight");
    for (size_t i = 0; i < gate.size(); ++i)
      gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
    return linear(gate, n, p + "down_proj.weight");
  }

  /// HF DeepseekV3MoE with the router masking dropped groups with -inf.
  Vec moe(const Vec &x, int64_t n, const std::string &p) const {
    const int64_t experts = c.nRoutedExperts, size = c.hiddenSize,
                  perGroup = experts / c.nGroup;
    Vec logits = linear(x, n, p + "mlp.gate.weight");
    Vec bias = get(p + "mlp.gate.e_score_correction_bias");
    Vec out(n * size, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      Vec scores(experts), choice(experts);
      for (int64_t e = 0; e < experts; ++e) {
        scores[e] = 1 / (1 + std::exp(-logits[i * experts + e]));
        choice[e] = scores[e] + bias[e];
      }
      std::vector<std::pair<double, int64_t>> groups;
      for (int64_t g = 0; g < c.nGroup; ++g) {
        Vec members(choice.begin() + g * perGroup,
                    choice.begin() + (g + 1) * perGroup);
        std::sort(members.rbegin(), members.rend());
        groups.push_back({-(members[0] + members[1]), g});
      }
      std::sort(groups.begin(), groups.end());
      Vec masked(experts, -INFINITY);
      for (int64_t k = 0; k < c.topkGroup; ++k)
        for (int64_t e = 0; e < perGroup; ++e) {
          int64_t expert = groups[k].second * perGroup + e;
          masked[expert] = choice[expert];
        }
      std::vector<std::pair<double, int64_t>> ranked;
      for (int64_t e = 0; e < experts; ++e)
        ranked.push_back({-masked[e], e});
      std::sort(ranked.begin(), ranked.end());
      double sum = 0;
      for (int64_t k = 0; k < c.numExpertsPerTok; ++k)
        sum += scores[ranked[k].second];
      Vec row(x.begin() + i * size, x.begin() + (i + 1) * size);
      for (int64_t k = 0; k < c.numExpertsPerTok; ++k) {
        int64_t e = ranked[k].second;
        double weight = scores[e] / (c.normTopkProb ? sum + 1e-20 : 1.0) *
                        c.routedScalingFactor;
        Vec y = mlp(row, 1, p + "mlp.experts." + std::to_string(e) + ".");
        for (int64_t d = 0; d < size; ++d)
          out[i * size + d] += weight * y[d];
      }
    }
    if (c.nSharedExperts > 0) {
      Vec shared = mlp(x, n, p + "mlp.shared_experts.");
      for (size_t i = 0; i < out.size(); ++i)
        out[i] += shared[i];
    }
    return out;
  }

  /// HF's apply_rotary_pos_emb_interleave: de-interleave, then
  /// x * cos + rotate_half(x) * sin with cos = cat(freqs, freqs).
  Vec rotate(const double *x, int64_t position) const {
    const int64_t dim = c.qkRopeHeadDim, half = dim / 2;
    Vec deinterleaved(dim), out(dim);
    for (int64_t j = 0; j < half; ++j) {
      deinterleaved[j] = x[2 * j];
      deinterleaved[half + j] = x[2 * j + 1];
    }
    for (int64_t i = 0; i < dim; ++i) {
      double angle = position * rope.invFreq[i % half];
      double rotatedHalf =
          i < half ? -deinterleaved[i + half] : deinterleaved[i - half];
      out[i] =
          (deinterleaved[i] * std::cos(angle) + rotatedHalf * std::sin(angle)) *
          rope.attentionFactor;
    }
    return out;
  }

  Vec attention(const Vec &x, int64_t n, const std::string &p) const {
    const int64_t heads = c.numAttentionHeads, nope = c.qkNopeHeadDim,
                  ropeDim = c.qkRopeHeadDim, qk = c.qkHeadDim(), v = c.vHeadDim,
                  kvLora = c.kvLoraRank;
    const std::string a = p + "self_attn.";
    Vec q = c.qLoraRank > 0 ? linear(norm(linear(x, n, a + "q_a_proj.weight"),
                                          n, a + "q_a_layernorm.weight", 1e-6),
                                     n, a + "q_b_proj.weight")
                            : linear(x, n, a + "q_proj.weight");
    Vec compressed = linear(x, n, a + "kv_a_proj_with_mqa.weight");
    Vec latent(n * kvLora), kRot;
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(compressed.begin() + i * (kvLora + ropeDim), kvLora,
                  latent.begin() + i * kvLora);
      Vec r = rotate(compressed.data() + i * (kvLora + ropeDim) + kvLora, i);
      kRot.insert(kRot.end(), r.begin(), r.end());
    }
    Vec kv = linear(norm(latent, n, a + "kv_a_layernorm.weight", 1e-6), n,
                    a + "kv_b_proj.weight");
    // Materialized per-head queries and keys [nope | rope] and values.
    Vec queries(n * heads * qk), keys(n * heads * qk), values(n * heads * v);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        const double *qh = q.data() + (i * heads + h) * qk;
        Vec qRot = rotate(qh + nope, i);
        double *query = queries.data() + (i * heads + h) * qk;
        double *key = keys.data() + (i * heads + h) * qk;
        const double *kvh = kv.data() + (i * heads + h) * (nope + v);
        for (int64_t d = 0; d < nope; ++d) {
          query[d] = qh[d];
          key[d] = kvh[d];
        }
        for (int64_t d = 0; d < ropeDim; ++d) {
          query[nope + d] = qRot[d];
          key[nope + d] = kRot[i * ropeDim + d];
        }
        for (int64_t d = 0; d < v; ++d)
          values[(i * heads + h) * v + d] = kvh[nope + d];
      }
    Vec attended(n * heads * v, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        Vec scores(i + 1);
        double maxScore = -INFINITY, sum = 0;
        for (int64_t t = 0; t <= i; ++t) {
          double s = 0;
          for (int64_t d = 0; d < qk; ++d)
            s += queries[(i * heads + h) * qk + d] *
                 keys[(t * heads + h) * qk + d];
          scores[t] = s * rope.softmaxScale;
          maxScore = std::max(maxScore, scores[t]);
        }
        for (double &s : scores)
          sum += (s = std::exp(s - maxScore));
        for (int64_t t = 0; t <= i; ++t)
          for (int64_t d = 0; d < v; ++d)
            attended[(i * heads + h) * v + d] +=
                scores[t] / sum * values[(t * heads + h) * v + d];
      }
    return linear(attended, n, a + "o_proj.weight");
  }

  Vec block(int64_t layer, const Vec &hidden, int64_t n) const {
    const std::string p = prefix(layer);
    Vec h = hidden;
    Vec a =
        attention(norm(h, n, p + "input_layernorm.weight", c.rmsNormEps), n, p);
    for (size_t i = 0; i < h.size(); ++i)
      h[i] += a[i];
    Vec x = norm(h, n, p + "post_attention_layernorm.weight", c.rmsNormEps);
    Vec m = c.isMoELayer(layer) ? moe(x, n, p) : mlp(x, n, p + "mlp.");
    for (size_t i = 0; i < h.size(); ++i)
      h[i] += m[i];
    return h;
  }

  const ModelConfig &c;
  const RandomWeights &w;
  ReferenceRope rope;
};

//===----------------------------------------------------------------------===//
// Building blocks
//===----------------------------------------------------------------------===//

TEST(CpuModel, RmsNormSpotCheck) {
  // x = [1, 2, 3, 4]: mean(x^2) = 7.5.
  const float x[4] = {1, 2, 3, 4}, weight[4] = {1, 0.5f, 2, -1};
  float out[4];
  kiln::rmsNorm(x, weight, 4, 0.0f, out);
  const double rms = std::sqrt(7.5);
  const double expected[4] = {1 / rms, 0.5 * 2 / rms, 2 * 3 / rms, -4 / rms};
  for (int i = 0; i < 4; ++i)
    EXPECT_NEAR(out[i], expected[i], 1e-6) << i;
  // eps enters under the root: with eps = 0.5, rms = sqrt(8).
  kiln::rmsNorm(x, weight, 4, 0.5f, out);
  EXPECT_NEAR(out[0], 1 / std::sqrt(8.0), 1e-6);
  // In place.
  float inPlace[4] = {1, 2, 3, 4};
  kiln::rmsNorm(inPlace, weight, 4, 0.0f, inPlace);
  EXPECT_NEAR(inPlace[3], -4 / rms, 1e-6);
}

TEST(CpuModel, SwiGluSpotCheck) {
  EXPECT_EQ(kiln::silu(0.0f), 0.0f);
  EXPECT_NEAR(kiln::silu(1.0f), 1 / (1 + std::exp(-1.0)), 1e-7);
  EXPECT_NEAR(kiln::silu(-2.0f), -2 / (1 + std::exp(2.0)), 1e-7);
  EXPECT_NEAR(kiln::silu(20.0f), 20.0f, 1e-5);
  EXPECT_EQ(kiln::silu(-200.0f), -0.0f); // exp overflows to inf: no NaN
  // SwiGLU as the MLP combines it: silu(gate) * up.
  const float gate = 0.75f, up = -1.5f;
  EXPECT_NEAR(kiln::silu(gate) * up, 0.75 / (1 + std::exp(-0.75)) * -1.5, 1e-6);
}

TEST(Rope, DefaultRopeWithoutScaling) {
  ModelConfig c = tinyConfig();
  c.yarn.reset();
  kiln::RopeParameters rope = kiln::computeRopeParameters(c);
  ASSERT_EQ(rope.invFreq.size(), 4u);
  for (int j = 0; j < 4; ++j)
    EXPECT_FLOAT_EQ(rope.invFreq[j], std::pow(10000.0, -2.0 * j / 8));
  EXPECT_EQ(rope.attentionFactor, 1.0f);
  EXPECT_FLOAT_EQ(rope.softmaxScale, 1 / std::sqrt(24.0));
}

TEST(Rope, YarnMatchesFormulasForDeepSeekV3) {
  // DeepSeek-V3's own rope_scaling.
  ModelConfig c = tinyConfig();
  c.qkNopeHeadDim = 128;
  c.qkRopeHeadDim = 64;
  c.yarn->factor = 40;
  c.yarn->originalMaxPositionEmbeddings = 4096;
  c.yarn->betaFast = 32;
  c.yarn->betaSlow = 1;
  c.yarn->mscale = 1.0;
  c.yarn->mscaleAllDim = 1.0;
  kiln::RopeParameters rope = kiln::computeRopeParameters(c);
  ReferenceRope expected = referenceRope(c);
  ASSERT_EQ(rope.invFreq.size(), 32u);
  for (int j = 0; j < 32; ++j)
    EXPECT_NEAR(rope.invFreq[j], expected.invFreq[j],
                1e-6 * expected.invFreq[j])
        << j;
  // Hand-derived anchors: the correction range is floor(10.47) = 10 to
  // ceil(22.5) = 23, so dims up to 10 extrapolate (plain RoPE) and dims from
  // 23 interpolate (frequency / factor).
  for (int j : {0, 5, 10})
    EXPECT_FLOAT_EQ(rope.invFreq[j], std::pow(10000.0, -2.0 * j / 64)) << j;
  for (int j : {23, 31})
    EXPECT_FLOAT_EQ(rope.invFreq[j], std::pow(10000.0, -2.0 * j / 64) / 40)
        << j;
  EXPECT_LT(rope.invFreq[16], std::pow(10000.0, -32.0 / 64));
  EXPECT_GT(rope.invFreq[16], std::pow(10000.0, -32.0 / 64) / 40);
  // mscale == mscale_all_dim: cos/sin unscaled.
  EXPECT_FLOAT_EQ(rope.attentionFactor, 1.0f);
  // 192^-0.5 * (0.1 ln 40 + 1)^2 = 0.135234...
  EXPECT_NEAR(rope.softmaxScale, expected.softmaxScale, 1e-7);
  EXPECT_NEAR(rope.softmaxScale, 0.135234, 1e-6);
}

TEST(Rope, YarnAttentionFactorAndSmallFactor) {
  ModelConfig c = tinyConfig();
  c.yarn->mscale = 0.707;
  c.yarn->mscaleAllDim = 1.0;
  kiln::RopeParameters rope = kiln::computeRopeParameters(c);
  const double m1 = 0.1 * 0.707 * std::log(4.0) + 1,
               m2 = 0.1 * std::log(4.0) + 1;
  EXPECT_NEAR(rope.attentionFactor, m1 / m2, 1e-7);
  EXPECT_NEAR(rope.softmaxScale, m2 * m2 / std::sqrt(24.0), 1e-7);
  for (size_t j = 0; j < rope.invFreq.size(); ++j)
    EXPECT_NEAR(rope.invFreq[j], referenceRope(c).invFreq[j], 1e-7);

  // Without mscale_all_dim: get_mscale(factor) scales cos/sin, not softmax.
  c.yarn->mscaleAllDim = 0;
  rope = kiln::computeRopeParameters(c);
  EXPECT_NEAR(rope.attentionFactor, m2, 1e-7);
  EXPECT_FLOAT_EQ(rope.softmaxScale, 1 / std::sqrt(24.0));

  // factor <= 1: get_mscale is 1 and YaRN leaves the frequencies alone.
  c.yarn->factor = 1.0;
  c.yarn->mscaleAllDim = 1.0;
  rope = kiln::computeRopeParameters(c);
  EXPECT_EQ(rope.attentionFactor, 1.0f);
  EXPECT_FLOAT_EQ(rope.softmaxScale, 1 / std::sqrt(24.0));
  for (int j = 0; j < 4; ++j)
    EXPECT_FLOAT_EQ(rope.invFreq[j], std::pow(10000.0, -2.0 * j / 8));
}

TEST(Rope, InterleavedPairsMatchHfRotateHalf) {
  ModelConfig c = tinyConfig();
  c.qkRopeHeadDim = 64;
  c.yarn->mscale = 0.8; // a non-unit attention factor scales both layouts
  kiln::RopeParameters rope = kiln::computeRopeParameters(c);
  const int dim = 64, half = 32;
  TestRandom random(7);
  for (int64_t position : {0, 1, 17, 255}) {
    std::vector<float> x(dim);
    for (float &v : x)
      v = static_cast<float>(random.symmetric());
    // HF: de-interleave, then x * cos + rotate_half(x) * sin.
    std::vector<float> hf(dim);
    for (int i = 0; i < dim; ++i) {
      int j = i % half;
      float angle = rope.invFreq[j] * static_cast<float>(position);
      float cosA = std::cos(angle) * rope.attentionFactor;
      float sinA = std::sin(angle) * rope.attentionFactor;
      float own = i < half ? x[2 * j] : x[2 * j + 1];
      float rotated = i < half ? -x[2 * j + 1] : x[2 * j];
      hf[i] = own * cosA + rotated * sinA;
    }
    std::vector<float> ours = x;
    kiln::applyRope(ours.data(), position, rope);
    // Ours keeps pair j at (2j, 2j+1); HF moves it to (j, j + half).
    for (int j = 0; j < half; ++j) {
      EXPECT_FLOAT_EQ(ours[2 * j], hf[j]) << position << " " << j;
      EXPECT_FLOAT_EQ(ours[2 * j + 1], hf[j + half]) << position << " " << j;
    }
  }
  // Scores depend on the relative position only (attention factor 1).
  c.yarn->mscale = 1.0;
  rope = kiln::computeRopeParameters(c);
  std::vector<float> q(dim), k(dim);
  for (int i = 0; i < dim; ++i) {
    q[i] = static_cast<float>(random.symmetric());
    k[i] = static_cast<float>(random.symmetric());
  }
  auto score = [&](int64_t qPos, int64_t kPos) {
    std::vector<float> qr = q, kr = k;
    kiln::applyRope(qr.data(), qPos, rope);
    kiln::applyRope(kr.data(), kPos, rope);
    double s = 0;
    for (int i = 0; i < dim; ++i)
      s += static_cast<double>(qr[i]) * kr[i];
    return s;
  };
  EXPECT_NEAR(score(9, 4), score(14, 9), 1e-5);
  EXPECT_NEAR(score(3, 3), score(40, 40), 1e-5);
}

TEST(Rope, RejectsBadFields) {
  ModelConfig c = tinyConfig();
  c.qkRopeHeadDim = 7;
  try {
    kiln::computeRopeParameters(c);
    FAIL() << "odd qk_rope_head_dim accepted";
  } catch (const kiln::Error &e) {
    EXPECT_NE(std::string(e.what()).find("qk_rope_head_dim"), std::string::npos)
        << e.what();
  }
  c = tinyConfig();
  c.yarn->originalMaxPositionEmbeddings = 0;
  EXPECT_THROW(kiln::computeRopeParameters(c), kiln::Error);
}

//===----------------------------------------------------------------------===//
// Router
//===----------------------------------------------------------------------===//

/// Brute force: the kept groups are the topk_group-subset with the largest
/// total group score (a group's score being its best pair), the experts the
/// k-subset of the kept ones with the largest total selection score.
kiln::RouterChoice bruteForceRoute(const ModelConfig &c,
                                   const std::vector<float> &logits,
                                   const std::vector<float> &bias) {
  const int64_t experts = c.nRoutedExperts;
  const bool grouped = c.topkMethod != "greedy";
  const int64_t groups = grouped ? c.nGroup : 1;
  const int64_t keep = grouped ? c.topkGroup : 1;
  const int64_t perGroup = experts / groups;
  std::vector<double> scores(experts), choice(experts);
  double expSum = 0;
  for (int64_t e = 0; e < experts; ++e)
    expSum += std::exp(static_cast<double>(logits[e]));
  for (int64_t e = 0; e < experts; ++e) {
    scores[e] = c.scoringFunc == "softmax"
                    ? std::exp(static_cast<double>(logits[e])) / expSum
                    : 1 / (1 + std::exp(-static_cast<double>(logits[e])));
    choice[e] = scores[e] + (c.topkMethod == "noaux_tc" ? bias[e] : 0.0);
  }
  std::vector<double> groupScore(groups, -INFINITY);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t i = 0; i < perGroup; ++i) {
      if (c.topkMethod != "noaux_tc") {
        groupScore[g] = std::max(groupScore[g], choice[g * perGroup + i]);
        continue;
      }
      for (int64_t j = i + 1; j < perGroup; ++j)
        groupScore[g] = std::max(groupScore[g], choice[g * perGroup + i] +
                                                    choice[g * perGroup + j]);
    }
  auto popcount = [](uint64_t m) {
    int n = 0;
    for (; m; m &= m - 1)
      ++n;
    return n;
  };
  uint64_t bestGroups = 0;
  double bestGroupTotal = -INFINITY;
  for (uint64_t mask = 0; mask < (1ull << groups); ++mask) {
    if (popcount(mask) != keep)
      continue;
    double total = 0;
    for (int64_t g = 0; g < groups; ++g)
      if (mask >> g & 1)
        total += groupScore[g];
    if (total > bestGroupTotal) {
      bestGroupTotal = total;
      bestGroups = mask;
    }
  }
  std::vector<int64_t> candidates;
  for (int64_t e = 0; e < experts; ++e)
    if (bestGroups >> (e / perGroup) & 1)
      candidates.push_back(e);
  uint64_t bestExperts = 0;
  double bestTotal = -INFINITY;
  for (uint64_t mask = 0; mask < (1ull << candidates.size()); ++mask) {
    if (popcount(mask) != c.numExpertsPerTok)
      continue;
    double total = 0;
    for (size_t i = 0; i < candidates.size(); ++i)
      if (mask >> i & 1)
        total += choice[candidates[i]];
    if (total > bestTotal) {
      bestTotal = total;
      bestExperts = mask;
    }
  }
  kiln::RouterChoice result;
  double sum = 0;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (bestExperts >> i & 1) {
      result.experts.push_back(candidates[i]);
      sum += scores[candidates[i]];
    }
  for (int64_t e : result.experts)
    result.weights.push_back(static_cast<float>(
        scores[e] / (c.normTopkProb ? sum : 1.0) * c.routedScalingFactor));
  return result;
}

void expectSameRouting(const ModelConfig &c, uint64_t seed, int tokens) {
  TestRandom random(seed);
  for (int t = 0; t < tokens; ++t) {
    std::vector<float> logits(c.nRoutedExperts), bias(c.nRoutedExperts);
    for (float &l : logits)
      l = static_cast<float>(2 * random.normal());
    for (float &b : bias)
      b = static_cast<float>(0.3 * random.symmetric());
    kiln::RouterChoice ours = kiln::routeToken(c, logits.data(), bias.data());
    kiln::RouterChoice expected = bruteForceRoute(c, logits, bias);
    ASSERT_EQ(ours.experts.size(), static_cast<size_t>(c.numExpertsPerTok));
    std::vector<std::pair<int64_t, float>> a, b;
    for (size_t k = 0; k < ours.experts.size(); ++k)
      a.push_back({ours.experts[k], ours.weights[k]});
    for (size_t k = 0; k < expected.experts.size(); ++k)
      b.push_back({expected.experts[k], expected.weights[k]});
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) {
      EXPECT_EQ(a[k].first, b[k].first) << c.topkMethod << " token " << t;
      EXPECT_NEAR(a[k].second, b[k].second, 1e-5) << "token " << t;
    }
  }
}

TEST(Router, NoauxTcMatchesBruteForce) {
  ModelConfig c = tinyConfig(); // 8 experts, 4 groups, keep 2, top 2
  expectSameRouting(c, 1, 300);
  c.nRoutedExperts = 16; // 4 per group, keep 2 groups, top 4
  c.numExpertsPerTok = 4;
  expectSameRouting(c, 2, 300);
  c.normTopkProb = false;
  c.routedScalingFactor = 1.0;
  expectSameRouting(c, 3, 100);
}

TEST(Router, OtherScoringAndMethodsMatchBruteForce) {
  ModelConfig c = tinyConfig();
  c.nRoutedExperts = 16;
  c.numExpertsPerTok = 4;
  c.scoringFunc = "softmax";
  expectSameRouting(c, 4, 100);
  c.topkMethod = "group_limited_greedy";
  expectSameRouting(c, 5, 100);
  c.topkMethod = "greedy";
  expectSameRouting(c, 6, 100);
}

TEST(Router, WeightsAreNormalizedAndScaled) {
  ModelConfig c = tinyConfig();
  std::vector<float> logits = {0.3f, -1, 2, 0.5f, -0.2f, 1.1f, 0, -3};
  std::vector<float> bias(8, 0.0f);
  kiln::RouterChoice choice = kiln::routeToken(c, logits.data(), bias.data());
  EXPECT_NEAR(choice.weights[0] + choice.weights[1], c.routedScalingFactor,
              1e-6);
  // The biased selection picks, the unbiased score weighs: a bias of 5 on
  // expert 7 (logit -3) wins its group {6, 7} and the expert, the other kept
  // group is {2, 3} (sigmoid(2) + sigmoid(0.5) beats the rest), and expert 2
  // comes second. The weights are sigmoid(-3) and sigmoid(2), normalized.
  bias[7] = 5;
  choice = kiln::routeToken(c, logits.data(), bias.data());
  EXPECT_EQ(choice.experts, (std::vector<int64_t>{7, 2}));
  const double s7 = 1 / (1 + std::exp(3.0)), s2 = 1 / (1 + std::exp(-2.0));
  EXPECT_NEAR(choice.weights[0], s7 / (s7 + s2) * 2.5, 1e-6);
  EXPECT_NEAR(choice.weights[1], s2 / (s7 + s2) * 2.5, 1e-6);
}

/// HF's get_topk_indices verbatim, including masked_fill(..., 0.0).
std::vector<int64_t> hfZeroMaskedTopk(const ModelConfig &c,
                                      const std::vector<double> &choice) {
  const int64_t experts = c.nRoutedExperts, perGroup = experts / c.nGroup;
  std::vector<std::pair<double, int64_t>> groups;
  for (int64_t g = 0; g < c.nGroup; ++g) {
    std::vector<double> members(choice.begin() + g * perGroup,
                                choice.begin() + (g + 1) * perGroup);
    std::sort(members.rbegin(), members.rend());
    groups.push_back({-(members[0] + members[1]), g});
  }
  std::sort(groups.begin(), groups.end());
  std::vector<double> masked(experts, 0.0);
  for (int64_t k = 0; k < c.topkGroup; ++k)
    for (int64_t e = 0; e < perGroup; ++e)
      masked[groups[k].second * perGroup + e] =
          choice[groups[k].second * perGroup + e];
  std::vector<std::pair<double, int64_t>> ranked;
  for (int64_t e = 0; e < experts; ++e)
    ranked.push_back({-masked[e], e});
  std::sort(ranked.begin(), ranked.end());
  std::vector<int64_t> top;
  for (int64_t k = 0; k < c.numExpertsPerTok; ++k)
    top.push_back(ranked[k].second);
  return top;
}

TEST(Router, DroppedGroupsAreMaskedWithNegativeInfinity) {
  // All logits 0, so every score is sigmoid(0) = 0.5; the biases set the
  // selection scores. Groups (2 experts each) score 0.3, -0.25, -0.65 and
  // -0.85: groups 0 and 1 are kept. Expert 0 is the clear first choice; the
  // second-best kept expert, 2, has a NEGATIVE selection score (-0.1).
  ModelConfig c = tinyConfig();
  const std::vector<double> choice = {0.5,  -0.2,  -0.1, -0.15,
                                      -0.3, -0.35, -0.4, -0.45};
  std::vector<float> logits(8, 0.0f), bias(8);
  for (int e = 0; e < 8; ++e)
    bias[e] = static_cast<float>(choice[e] - 0.5);
  kiln::RouterChoice ours = kiln::routeToken(c, logits.data(), bias.data());
  EXPECT_EQ(ours.experts, (std::vector<int64_t>{0, 2}));
  EXPECT_NEAR(ours.weights[0], 0.5 * 2.5, 1e-6);
  EXPECT_NEAR(ours.weights[1], 0.5 * 2.5, 1e-6);

  // HF fills dropped experts with 0.0, which beats -0.1: it picks expert 4
  // (the first of four tied zeros) from dropped group 2 — the group limit it
  // was meant to enforce is broken. DeepSeek's reference and Kiln use -inf.
  std::vector<int64_t> hf = hfZeroMaskedTopk(c, choice);
  EXPECT_EQ(hf, (std::vector<int64_t>{0, 4}));
  EXPECT_NE(hf, ours.experts);

  // With positive selection scores everywhere (the usual case, and how the
  // golden data is generated) the two maskings agree.
  std::vector<double> positive(choice);
  for (double &v : positive)
    v += 1.0;
  for (int e = 0; e < 8; ++e)
    bias[e] = static_cast<float>(positive[e] - 0.5);
  ours = kiln::routeToken(c, logits.data(), bias.data());
  EXPECT_EQ(ours.experts, hfZeroMaskedTopk(c, positive));
}

TEST(Router, RejectsInconsistentConfig) {
  auto expectFieldError = [](ModelConfig c, const std::string &field) {
    try {
      kiln::validateConfig(c, "router test");
      ADD_FAILURE() << "accepted bad " << field;
    } catch (const kiln::Error &e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos)
          << e.what();
    }
  };
  ModelConfig c = tinyConfig();
  c.nGroup = 3;
  expectFieldError(c, "n_group");
  c = tinyConfig();
  c.topkGroup = 5;
  expectFieldError(c, "topk_group");
  c = tinyConfig();
  c.topkGroup = 1;
  c.numExpertsPerTok = 3; // one kept group of 2 experts
  expectFieldError(c, "num_experts_per_tok");
  c = tinyConfig();
  c.scoringFunc = "tanh";
  expectFieldError(c, "scoring_func");
  c = tinyConfig();
  c.topkMethod = "random";
  expectFieldError(c, "topk_method");
}

//===----------------------------------------------------------------------===//
// The model against the double-precision reference
//===----------------------------------------------------------------------===//

TEST(CpuModel, MatchesDoublePrecisionReference) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 11);
  ReferenceModel reference(c, weights);
  std::vector<int32_t> tokens = randomTokens(10, c.vocabSize, 12);
  ReferenceModel::Output expected = reference.forward(tokens);
  for (MlaForm form : {MlaForm::Naive, MlaForm::Absorbed}) {
    CpuModel model(c, weights, withForm(form));
    kiln::ForwardResult result = model.forwardWithHiddenStates(tokens, 0);
    EXPECT_LT(relativeDifference(result.logits, expected.logits), 1e-5);
    EXPECT_LT(relativeDifference(result.hiddenStates, expected.hidden), 1e-5);
    // The MTP module on the main model's hidden states.
    std::vector<int32_t> next(tokens.begin() + 1, tokens.end());
    next.push_back(5);
    std::vector<float> mtp = model.forwardMtp(result.hiddenStates, next, 0);
    EXPECT_LT(relativeDifference(mtp, reference.mtp(expected.hidden, next)),
              1e-5);
  }
}

TEST(CpuModel, MatchesReferenceWithoutQLoraAndYarnAndWithTiedEmbeddings) {
  ModelConfig c = tinyConfig();
  c.qLoraRank = 0;
  c.yarn.reset();
  c.tieWordEmbeddings = true;
  c.numNextnPredictLayers = 0;
  RandomWeights weights(c, 13);
  std::vector<int32_t> tokens = randomTokens(7, c.vocabSize, 14);
  CpuModel model(c, weights, withForm(MlaForm::Naive));
  EXPECT_LT(
      relativeDifference(model.forward(tokens, 0),
                         ReferenceModel(c, weights).forward(tokens).logits),
      1e-5);
  EXPECT_FALSE(model.hasMtp());
}

//===----------------------------------------------------------------------===//
// MLA forms and the KV cache
//===----------------------------------------------------------------------===//

TEST(Mla, NaiveAndAbsorbedAgree) {
  for (int64_t qLoraRank : {48, 0}) {
    ModelConfig c = tinyConfig();
    c.qLoraRank = qLoraRank;
    RandomWeights weights(c, 21);
    std::vector<int32_t> tokens = randomTokens(12, c.vocabSize, 22);
    CpuModel naive(c, weights, withForm(MlaForm::Naive));
    CpuModel absorbed(c, weights, withForm(MlaForm::Absorbed));
    std::vector<float> a = naive.forward(tokens, 0);
    std::vector<float> b = absorbed.forward(tokens, 0);
    ASSERT_EQ(a.size(), static_cast<size_t>(12 * c.vocabSize));
    EXPECT_LT(relativeDifference(a, b), 1e-5) << "q_lora_rank " << qLoraRank;
  }
}

TEST(Mla, CacheValuesPerToken) {
  ModelConfig c = tinyConfig();
  EXPECT_EQ(kiln::kvCacheValuesPerToken(c, MlaForm::Absorbed), 32 + 8);
  EXPECT_EQ(kiln::kvCacheValuesPerToken(c, MlaForm::Naive), 4 * (24 + 16));
  // DeepSeek-V3: 512-d latent + 64-d rope key.
  c.kvLoraRank = 512;
  c.qkRopeHeadDim = 64;
  c.qkNopeHeadDim = 128;
  c.vHeadDim = 128;
  c.numAttentionHeads = 128;
  EXPECT_EQ(kiln::kvCacheValuesPerToken(c, MlaForm::Absorbed), 576);
  EXPECT_EQ(kiln::kvCacheValuesPerToken(c, MlaForm::Naive), 128 * 320);
}

TEST(CpuModel, IncrementalDecodeEqualsFullForward) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 31);
  std::vector<int32_t> tokens = randomTokens(12, c.vocabSize, 32);
  const int64_t vocab = c.vocabSize;
  for (MlaForm form : {MlaForm::Naive, MlaForm::Absorbed}) {
    CpuModel model(c, weights, withForm(form));
    std::vector<float> full = model.forward(tokens, 0);
    EXPECT_EQ(model.cachedTokens(), 12);
    model.reset();
    EXPECT_EQ(model.cachedTokens(), 0);

    // Prefill 5, then one token at a time.
    std::vector<float> incremental = model.forward(
        std::vector<int32_t>(tokens.begin(), tokens.begin() + 5), 0);
    for (int64_t i = 5; i < 12; ++i) {
      std::vector<float> step = model.forward({tokens[i]}, i);
      incremental.insert(incremental.end(), step.begin(), step.end());
    }
    // Today each row's arithmetic does not depend on the chunking, so this
    // is bitwise; the bound leaves room for blocked kernels.
    EXPECT_LT(relativeDifference(incremental, full), 1e-5);

    // Uneven chunks: 3, 4, 5.
    model.reset();
    std::vector<float> chunked;
    for (auto [begin, end] : {std::pair<int, int>{0, 3}, {3, 7}, {7, 12}}) {
      std::vector<float> part = model.forward(
          std::vector<int32_t>(tokens.begin() + begin, tokens.begin() + end),
          begin);
      chunked.insert(chunked.end(), part.begin(), part.end());
    }
    EXPECT_LT(relativeDifference(chunked, full), 1e-5);
    EXPECT_EQ(chunked.size(), static_cast<size_t>(12 * vocab));
  }
}

TEST(CpuModel, StartingBeforeTheCacheEndRollsBack) {
  // Speculative decoding rejects drafted tokens by re-running from an earlier
  // position: the cache must forget everything from there on.
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 41);
  std::vector<int32_t> tokens = randomTokens(9, c.vocabSize, 42);
  CpuModel model(c, weights);
  model.forward(tokens, 0);
  std::vector<int32_t> edited = tokens;
  edited[6] = (edited[6] + 1) % c.vocabSize;
  edited[7] = (edited[7] + 7) % c.vocabSize;
  std::vector<float> tail =
      model.forward(std::vector<int32_t>(edited.begin() + 6, edited.end()), 6);
  EXPECT_EQ(model.cachedTokens(), 9);
  CpuModel fresh(c, weights);
  std::vector<float> expected = fresh.forward(edited, 0);
  EXPECT_LT(relativeDifference(tail, rows(expected, c.vocabSize, 6, 9)), 1e-5);
}

TEST(CpuModel, ThreadCountDoesNotChangeResults) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 51);
  std::vector<int32_t> tokens = randomTokens(16, c.vocabSize, 52);
  CpuModelOptions one, three;
  one.numThreads = 1;
  three.numThreads = 3;
  std::vector<float> a = CpuModel(c, weights, one).forward(tokens, 0);
  std::vector<float> b = CpuModel(c, weights, three).forward(tokens, 0);
  EXPECT_EQ(a, b); // bitwise: every element has one fixed summation order
}

//===----------------------------------------------------------------------===//
// FP8 activation emulation
//===----------------------------------------------------------------------===//

/// Measured RMS relative error of the 1x128-tile E4M3 round trip on
/// Gaussian activations.
double measuredFp8RelativeNoise() {
  const int64_t rows = 64, cols = 256;
  TestRandom random(61);
  std::vector<float> x(rows * cols);
  for (float &v : x)
    v = static_cast<float>(random.normal());
  std::vector<uint8_t> codes(x.size());
  std::vector<float> scales(rows * kiln::scaleBlocks(cols));
  kiln::quantizeActivationTiles(x.data(), rows, cols, codes.data(),
                                scales.data());
  double error = 0, energy = 0;
  for (int64_t i = 0; i < rows * cols; ++i) {
    double back = kiln::decodeE4M3(codes[i]) *
                  scales[(i / cols) * kiln::scaleBlocks(cols) +
                         (i % cols) / kiln::kScaleBlock];
    error += (back - x[i]) * (back - x[i]);
    energy += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(error / energy);
}

double l2RelativeDifference(const std::vector<float> &a,
                            const std::vector<float> &b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (a[i] - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff / norm);
}

TEST(CpuModel, Fp8EmulationNoiseIsSmallAndAsPredicted) {
  // Dense layers only: a routing flip would move logits by O(1), which is
  // chaos, not FP8 noise.
  ModelConfig c = tinyConfig();
  c.hiddenSize = 128; // one full activation tile per hidden row
  c.firstKDenseReplace = 10;
  c.numHiddenLayers = 3;
  c.numNextnPredictLayers = 0;
  RandomWeights weights(c, 71);
  std::vector<int32_t> tokens = randomTokens(16, c.vocabSize, 72);
  CpuModelOptions fp8;
  fp8.emulateFp8Activations = true;
  std::vector<float> exact = CpuModel(c, weights).forward(tokens, 0);
  std::vector<float> rounded = CpuModel(c, weights, fp8).forward(tokens, 0);

  // Each layer quantizes 7 distinct inputs (q_a, q_b, kv_a, kv_b, o, the
  // shared gate/up input, down). Independent relative errors of RMS eps
  // feeding branches of unit gain add in quadrature.
  const double eps = measuredFp8RelativeNoise();
  EXPECT_GT(eps, 0.01); // E4M3 keeps 3 mantissa bits: 2^-4 at worst
  EXPECT_LT(eps, 0.04);
  const double predicted = eps * std::sqrt(7.0 * c.numHiddenLayers);
  const double observed = l2RelativeDifference(rounded, exact);
  std::printf("FP8 activation emulation: logits move by %.4f (relative L2); "
              "predicted %.4f from per-element noise %.4f\n",
              observed, predicted, eps);
  EXPECT_GT(observed, predicted / 10); // far above FP32 rounding (1e-6)
  EXPECT_LT(observed, predicted * 3);
}

TEST(CpuModel, Bf16StorageEmulationAddsBf16RoundingToTheFp8Recipe) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 73);
  std::vector<int32_t> tokens = randomTokens(16, c.vocabSize, 74);
  CpuModelOptions fp8;
  fp8.emulateFp8Activations = true;
  CpuModelOptions gpu = fp8;
  gpu.emulateBf16Storage = true;
  std::vector<float> exact = CpuModel(c, weights).forward(tokens, 0);
  std::vector<float> recipe = CpuModel(c, weights, fp8).forward(tokens, 0);
  std::vector<float> stored = CpuModel(c, weights, gpu).forward(tokens, 0);
  // BF16 rounding (2^-9 relative) moves values across FP8 rounding
  // boundaries, so the result is another draw of the same FP8 noise: not
  // the recipe's logits, but as far from FP32 as the recipe is.
  EXPECT_NE(stored, recipe);
  const double recipeNoise = l2RelativeDifference(recipe, exact);
  const double storedNoise = l2RelativeDifference(stored, exact);
  std::printf("FP8 recipe: %.4f from FP32; with BF16 storage: %.4f\n",
              recipeNoise, storedNoise);
  EXPECT_GT(storedNoise, recipeNoise / 3);
  EXPECT_LT(storedNoise, recipeNoise * 3);

  CpuModelOptions bf16Only;
  bf16Only.emulateBf16Storage = true;
  EXPECT_THROW(CpuModel(c, weights, bf16Only), kiln::Error);

  // An E4M3 latent cache: one more rounding of the same size.
  CpuModelOptions fp8Cache = gpu;
  fp8Cache.emulateFp8KvCache = true;
  std::vector<float> cached = CpuModel(c, weights, fp8Cache).forward(tokens, 0);
  EXPECT_NE(cached, stored);
  const double cachedNoise = l2RelativeDifference(cached, exact);
  std::printf("with an FP8 KV cache: %.4f from FP32\n", cachedNoise);
  EXPECT_GT(cachedNoise, recipeNoise / 3);
  EXPECT_LT(cachedNoise, recipeNoise * 3);
  CpuModelOptions cacheOnly;
  cacheOnly.emulateFp8KvCache = true;
  EXPECT_THROW(CpuModel(c, weights, cacheOnly), kiln::Error);
}

TEST(CpuModel, Fp8EmulationLeavesEmbeddingNormAndHeadAlone) {
  // Without layers the logits come from the embedding, model.norm and
  // lm_head only, none of which is FP8 in the checkpoint.
  ModelConfig c = tinyConfig();
  c.numHiddenLayers = 0;
  c.numNextnPredictLayers = 0;
  RandomWeights weights(c, 81);
  std::vector<int32_t> tokens = randomTokens(5, c.vocabSize, 82);
  CpuModelOptions fp8;
  fp8.emulateFp8Activations = true;
  EXPECT_EQ(CpuModel(c, weights).forward(tokens, 0),
            CpuModel(c, weights, fp8).forward(tokens, 0));
}

//===----------------------------------------------------------------------===//
// MTP
//===----------------------------------------------------------------------===//

TEST(CpuModel, MtpLogitsHaveTheRightShapeAndDependOnBothInputs) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 91);
  CpuModel model(c, weights);
  ASSERT_TRUE(model.hasMtp());
  std::vector<int32_t> tokens = randomTokens(6, c.vocabSize, 92);
  const int64_t vocab = c.vocabSize, hidden = c.hiddenSize;
  kiln::MtpForwardResult both = model.forwardWithMtp(tokens, 0, 17);
  EXPECT_EQ(both.logits.size(), static_cast<size_t>(6 * vocab));
  EXPECT_EQ(both.mtpLogits.size(), static_cast<size_t>(6 * vocab));
  EXPECT_EQ(model.cachedMtpTokens(), 6);
  EXPECT_EQ(both.logits, CpuModel(c, weights).forward(tokens, 0));

  kiln::ForwardResult main = model.forwardWithHiddenStates(tokens, 0);
  std::vector<int32_t> next(tokens.begin() + 1, tokens.end());
  next.push_back(17);
  std::vector<float> base = model.forwardMtp(main.hiddenStates, next, 0);
  EXPECT_EQ(base, both.mtpLogits);

  // Another token after the last position: only the last row changes.
  std::vector<int32_t> otherNext = next;
  otherNext.back() = 18;
  std::vector<float> otherToken =
      model.forwardMtp(main.hiddenStates, otherNext, 0);
  EXPECT_EQ(rows(otherToken, vocab, 0, 5), rows(base, vocab, 0, 5));
  EXPECT_GT(relativeDifference(rows(otherToken, vocab, 5, 6),
                               rows(base, vocab, 5, 6)),
            1e-3);

  // Another hidden state at the last position: again only the last row.
  std::vector<float> otherHidden = main.hiddenStates;
  for (int64_t d = 0; d < hidden; ++d)
    otherHidden[5 * hidden + d] *= -1;
  std::vector<float> changed = model.forwardMtp(otherHidden, next, 0);
  EXPECT_EQ(rows(changed, vocab, 0, 5), rows(base, vocab, 0, 5));
  EXPECT_GT(
      relativeDifference(rows(changed, vocab, 5, 6), rows(base, vocab, 5, 6)),
      1e-3);
}

TEST(CpuModel, MtpIncrementalEqualsFull) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 101);
  CpuModel model(c, weights, withForm(MlaForm::Naive));
  std::vector<int32_t> tokens = randomTokens(8, c.vocabSize, 102);
  kiln::MtpForwardResult full = model.forwardWithMtp(tokens, 0, 3);

  // Speculative-decoding order: prefill, then one position at a time.
  model.reset();
  kiln::MtpForwardResult first = model.forwardWithMtp(
      std::vector<int32_t>(tokens.begin(), tokens.begin() + 5), 0, tokens[5]);
  std::vector<float> mtp = first.mtpLogits;
  for (int64_t i = 5; i < 8; ++i) {
    int32_t following = i + 1 < 8 ? tokens[i + 1] : 3;
    kiln::MtpForwardResult step =
        model.forwardWithMtp({tokens[i]}, i, following);
    mtp.insert(mtp.end(), step.mtpLogits.begin(), step.mtpLogits.end());
  }
  EXPECT_LT(relativeDifference(mtp, full.mtpLogits), 1e-5);
}

//===----------------------------------------------------------------------===//
// Sequences sharing one model's weights, and batched forwards
//===----------------------------------------------------------------------===//

std::vector<int32_t> slice(const std::vector<int32_t> &tokens, size_t begin,
                           size_t end) {
  return std::vector<int32_t>(tokens.begin() + begin, tokens.begin() + end);
}

TEST(CpuSequence, InterleavedSequencesEqualEachAlone) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 151);
  const std::vector<int32_t> a = randomTokens(9, c.vocabSize, 152);
  const std::vector<int32_t> b = randomTokens(6, c.vocabSize, 153);
  for (MlaForm form : {MlaForm::Naive, MlaForm::Absorbed}) {
    // Each alone on a model of its own, in the chunks used below.
    CpuModel aloneA(c, weights, withForm(form)),
        aloneB(c, weights, withForm(form));
    std::vector<float> a0 = aloneA.forward(slice(a, 0, 4), 0);
    std::vector<float> b0 = aloneB.forward(slice(b, 0, 3), 0);
    std::vector<float> a1 = aloneA.forward(slice(a, 4, 9), 4);
    std::vector<float> b1 = aloneB.forward(slice(b, 3, 6), 3);

    // Both on one model, interleaved, with the built-in sequence busy too.
    CpuModel shared(c, weights, withForm(form));
    kiln::CpuSequence first = shared.newSequence(),
                      second = shared.newSequence();
    std::vector<float> builtIn = shared.forward(b, 0);
    EXPECT_EQ(shared.forward(first, slice(a, 0, 4), 0), a0);
    EXPECT_EQ(shared.forward(second, slice(b, 0, 3), 0), b0);
    EXPECT_EQ(shared.forward(first, slice(a, 4, 9), 4), a1);
    EXPECT_EQ(shared.forward(second, slice(b, 3, 6), 3), b1);
    EXPECT_EQ(first.cachedTokens(), 9);
    EXPECT_EQ(second.cachedTokens(), 6);
    EXPECT_EQ(shared.cachedTokens(), 6);

    // The built-in sequence kept its own cache: decoding on continues it.
    std::vector<float> next = shared.forward({a[0]}, 6);
    EXPECT_EQ(next, aloneB.forward({a[0]}, 6));

    first.reset();
    EXPECT_EQ(first.cachedTokens(), 0);
    EXPECT_EQ(second.cachedTokens(), 6);
    EXPECT_EQ(shared.forward(first, slice(a, 0, 4), 0), a0);
  }
}

TEST(CpuSequence, BatchedForwardIsBitwiseEachAlone) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 161);
  const int64_t vocab = c.vocabSize;
  const std::vector<int32_t> x = randomTokens(7, vocab, 162);
  const std::vector<int32_t> y = randomTokens(5, vocab, 163);
  const std::vector<int32_t> z = randomTokens(4, vocab, 164);
  for (MlaForm form : {MlaForm::Naive, MlaForm::Absorbed}) {
    CpuModelOptions options = withForm(form);
    options.emulateFp8Activations = form == MlaForm::Naive; // both paths
    CpuModel alone(c, weights, options);
    kiln::CpuSequence ax = alone.newSequence(), ay = alone.newSequence(),
                      az = alone.newSequence();
    // y and z already hold a prefix; x starts empty.
    alone.forward(ay, slice(y, 0, 4), 0);
    alone.forward(az, slice(z, 0, 1), 0);
    std::vector<float> xLogits = alone.forward(ax, x, 0);
    std::vector<float> yLogits = alone.forward(ay, slice(y, 4, 5), 4);
    std::vector<float> zLogits = alone.forward(az, slice(z, 1, 4), 1);

    CpuModel batched(c, weights, options);
    kiln::CpuSequence bx = batched.newSequence(), by = batched.newSequence(),
                      bz = batched.newSequence();
    batched.forwardBatch(
        {{&by, slice(y, 0, 4), 0, false}, {&bz, slice(z, 0, 1), 0, true}});
    // A prefill, a decode step and a chunk in one pass.
    std::vector<std::vector<float>> out =
        batched.forwardBatch({{&bx, x, 0, /*lastTokenLogitsOnly=*/true},
                              {&by, slice(y, 4, 5), 4, false},
                              {&bz, slice(z, 1, 4), 1, false}});
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0], rows(xLogits, vocab, 6, 7));
    EXPECT_EQ(out[1], yLogits);
    EXPECT_EQ(out[2], zLogits);
    EXPECT_EQ(bx.cachedTokens(), 7);
    EXPECT_EQ(by.cachedTokens(), 5);
    EXPECT_EQ(bz.cachedTokens(), 4);
    EXPECT_TRUE(batched.forwardBatch({}).empty());
  }
}

TEST(CpuSequence, MtpCachesArePerSequence) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 171);
  const std::vector<int32_t> a = randomTokens(6, c.vocabSize, 172);
  const std::vector<int32_t> b = randomTokens(5, c.vocabSize, 173);
  CpuModel alone(c, weights);
  kiln::MtpForwardResult aFull = alone.forwardWithMtp(a, 0, 7);
  alone.reset();
  kiln::MtpForwardResult bFirst = alone.forwardWithMtp(slice(b, 0, 3), 0, b[3]);
  kiln::MtpForwardResult bSecond = alone.forwardWithMtp(slice(b, 3, 5), 3, 9);

  CpuModel shared(c, weights);
  kiln::CpuSequence first = shared.newSequence(), second = shared.newSequence();
  kiln::MtpForwardResult interleavedB =
      shared.forwardWithMtp(second, slice(b, 0, 3), 0, b[3]);
  kiln::MtpForwardResult interleavedA = shared.forwardWithMtp(first, a, 0, 7);
  kiln::MtpForwardResult interleavedB2 =
      shared.forwardWithMtp(second, slice(b, 3, 5), 3, 9);
  EXPECT_EQ(interleavedA.mtpLogits, aFull.mtpLogits);
  EXPECT_EQ(interleavedB.mtpLogits, bFirst.mtpLogits);
  EXPECT_EQ(interleavedB2.mtpLogits, bSecond.mtpLogits);
  EXPECT_EQ(interleavedB2.logits, bSecond.logits);
  EXPECT_EQ(first.cachedMtpTokens(), 6);
  EXPECT_EQ(second.cachedMtpTokens(), 5);
  EXPECT_EQ(shared.cachedMtpTokens(), 0);
}

TEST(CpuSequence, BadBatchesAreRefusedBeforeAnyCacheMoves) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 181);
  CpuModel model(c, weights), other(c, weights);
  kiln::CpuSequence a = model.newSequence(), b = model.newSequence();
  kiln::CpuSequence foreign = other.newSequence();
  model.forward(a, {1, 2, 3}, 0);
  model.forward(b, {4, 5}, 0);

  std::string message =
      kiln::testing::errorOf([&] { model.forward(foreign, {1}, 0); });
  EXPECT_NE(message.find("another CpuModel"), std::string::npos) << message;
  message = kiln::testing::errorOf([&] {
    model.forwardBatch({{&a, {6}, 3, true}, {&a, {7}, 3, true}});
  });
  EXPECT_NE(message.find("same sequence"), std::string::npos) << message;
  message = kiln::testing::errorOf([&] {
    model.forwardBatch({{&a, {6}, 1, true}, {&b, {300}, 2, true}});
  });
  EXPECT_NE(message.find("batch entry 1"), std::string::npos) << message;
  message = kiln::testing::errorOf([&] {
    model.forwardBatch({{&a, {6}, 1, true}, {&b, {7}, 3, true}});
  });
  EXPECT_NE(message.find("start position 3"), std::string::npos) << message;
  message = kiln::testing::errorOf([&] {
    model.forwardBatch({{nullptr, {6}, 0, true}});
  });
  EXPECT_NE(message.find("batch entry 0 has no sequence"), std::string::npos)
      << message;
  // Entry 0 was valid, but nothing ran: its cache was not cut to 1.
  EXPECT_EQ(a.cachedTokens(), 3);
  EXPECT_EQ(b.cachedTokens(), 2);

  kiln::CpuSequence moved = std::move(a);
  EXPECT_EQ(moved.cachedTokens(), 3);
  message = kiln::testing::errorOf([&] { model.forward(a, {1}, 0); });
  EXPECT_NE(message.find("moved from"), std::string::npos) << message;
}

//===----------------------------------------------------------------------===//
// Errors
//===----------------------------------------------------------------------===//

std::string constructionError(const ModelConfig &c, const RandomWeights &w,
                              const CpuModelOptions &options = {}) {
  try {
    CpuModel model(c, w, options);
  } catch (const kiln::Error &e) {
    return e.what();
  }
  return "";
}

TEST(CpuModel, MissingWeightIsNamed) {
  ModelConfig c = tinyConfig();
  for (const std::string &name :
       {std::string("model.layers.1.mlp.experts.5.down_proj.weight"),
        std::string("model.layers.0.self_attn.kv_a_layernorm.weight"),
        std::string("model.layers.1.mlp.gate.e_score_correction_bias"),
        std::string("lm_head.weight"),
        std::string("model.layers.2.eh_proj.weight")}) {
    RandomWeights weights(c, 111);
    weights.erase(name);
    std::string message = constructionError(c, weights);
    EXPECT_NE(message.find("'" + name + "'"), std::string::npos)
        << "missing " << name << ": " << message;
  }
  // Without the MTP module its tensors are not needed.
  RandomWeights weights(c, 111);
  weights.erase("model.layers.2.eh_proj.weight");
  CpuModelOptions noMtp;
  noMtp.loadMtp = false;
  EXPECT_EQ(constructionError(c, weights, noMtp), "");
}

TEST(CpuModel, BadConfigNamesTheField) {
  RandomWeights weights(tinyConfig(), 121);
  auto expectField = [&](ModelConfig c, const std::string &field) {
    std::string message = constructionError(c, weights);
    EXPECT_NE(message.find("\"" + field + "\""), std::string::npos)
        << field << ": " << message;
  };
  ModelConfig c = tinyConfig();
  c.qkRopeHeadDim = 7;
  expectField(c, "qk_rope_head_dim");
  c = tinyConfig();
  c.kvLoraRank = 0;
  expectField(c, "kv_lora_rank");
  c = tinyConfig();
  c.nGroup = 3;
  expectField(c, "n_group");
  c = tinyConfig();
  c.moeIntermediateSize = 0;
  expectField(c, "moe_intermediate_size");
  c = tinyConfig();
  c.rmsNormEps = 0;
  expectField(c, "rms_norm_eps");
}

TEST(CpuModel, BadInputsThrowAndKeepTheCache) {
  ModelConfig c = tinyConfig();
  RandomWeights weights(c, 131);
  CpuModel model(c, weights);
  model.forward({1, 2, 3}, 0);
  EXPECT_THROW(model.forward({300}, 3), kiln::Error); // vocab is 300
  EXPECT_THROW(model.forward({-1}, 3), kiln::Error);
  EXPECT_THROW(model.forward({}, 3), kiln::Error);
  EXPECT_THROW(model.forward({4}, 5), kiln::Error); // past the cache end
  EXPECT_THROW(model.forward(std::vector<int32_t>(254, 1), 3),
               kiln::Error); // past max_position_embeddings = 256
  EXPECT_EQ(model.cachedTokens(), 3);
  EXPECT_THROW(model.forwardMtp(std::vector<float>(10), {1}, 0), kiln::Error);
  EXPECT_THROW(model.forwardMtp(std::vector<float>(64), {1}, 1),
               kiln::Error); // MTP cache is empty
}

//===----------------------------------------------------------------------===//
// Speed
//===----------------------------------------------------------------------===//

TEST(CpuModel, TinyModelAnswersAPromptQuickly) {
  // The shape of `kiln make-tiny` checkpoints: DeepSeek-V3's vocabulary with
  // a 256-wide, 3-layer body.
  ModelConfig c = tinyConfig();
  c.vocabSize = 129280;
  c.hiddenSize = 256;
  c.intermediateSize = 512;
  c.moeIntermediateSize = 128;
  c.numHiddenLayers = 3;
  c.numAttentionHeads = 4;
  c.qLoraRank = 128;
  c.kvLoraRank = 128;
  c.qkNopeHeadDim = 32;
  c.qkRopeHeadDim = 16;
  c.vHeadDim = 32;
  c.nRoutedExperts = 16;
  c.numExpertsPerTok = 4;
  c.numNextnPredictLayers = 0;
  c.maxPositionEmbeddings = 4096;
  RandomWeights weights(c, 141);
  CpuModel model(c, weights);
  std::vector<int32_t> prompt = randomTokens(16, c.vocabSize, 142);
  auto begin = std::chrono::steady_clock::now();
  std::vector<float> logits = model.forward(prompt, 0);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin)
          .count();
  auto decodeBegin = std::chrono::steady_clock::now();
  model.forward({prompt[3]}, 16);
  double decodeSeconds = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - decodeBegin)
                             .count();
  std::printf("tiny model (hidden 256, 3 layers, vocab 129280): 16-token "
              "prompt %.1f ms, one decode step %.1f ms\n",
              seconds * 1e3, decodeSeconds * 1e3);
  EXPECT_EQ(logits.size(), static_cast<size_t>(16 * c.vocabSize));
  for (float v : logits)
    ASSERT_TRUE(std::isfinite(v));
#ifdef NDEBUG
  EXPECT_LT(seconds, 1.0);
#endif
}

} // namespace
