//===- kiln/config.h - DeepSeek-V3 model configuration --------------------===//
//
// The fields of a Hugging Face DeepSeek-V3 `config.json` that the forward pass
// needs, parsed and checked for consistency.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CONFIG_H
#define KILN_CONFIG_H

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace kiln {

/// `rope_scaling` of type "yarn".
struct YarnScaling {
  double factor = 1.0;
  int64_t originalMaxPositionEmbeddings = 0;
  double betaFast = 32.0;
  double betaSlow = 1.0;
  double mscale = 1.0;
  double mscaleAllDim = 0.0;

  bool operator==(const YarnScaling &other) const;
  bool operator!=(const YarnScaling &other) const { return !(*this == other); }
};

/// `quantization_config` of an FP8 checkpoint.
struct Fp8Quantization {
  std::string activationScheme = "dynamic"; // 1x128 tiles, scales on the fly
  int64_t weightBlockN = 128;
  int64_t weightBlockK = 128;

  bool operator==(const Fp8Quantization &other) const;
  bool operator!=(const Fp8Quantization &other) const {
    return !(*this == other);
  }
};

struct ModelConfig {
  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t intermediateSize = 0;    // dense MLP layers
  int64_t moeIntermediateSize = 0; // each routed and shared expert
  int64_t numHiddenLayers = 0;
  int64_t numAttentionHeads = 0;
  int64_t numKeyValueHeads = 0;
  int64_t maxPositionEmbeddings = 0;

  // MLA. qLoraRank == 0 means no query compression (q_proj directly).
  int64_t qLoraRank = 0;
  int64_t kvLoraRank = 0;
  int64_t qkNopeHeadDim = 0;
  int64_t qkRopeHeadDim = 0;
  int64_t vHeadDim = 0;

  // MoE.
  int64_t nRoutedExperts = 0;
  int64_t nSharedExperts = 0;
  int64_t numExpertsPerTok = 0;
  int64_t nGroup = 1;
  int64_t topkGroup = 1;
  int64_t firstKDenseReplace = 0;
  int64_t moeLayerFreq = 1;
  double routedScalingFactor = 1.0;
  bool normTopkProb = true;
  std::string scoringFunc = "sigmoid"; // "sigmoid" or "softmax"
  std::string topkMethod =
      "noaux_tc"; // "noaux_tc", "group_limited_greedy", "greedy"

  double rmsNormEps = 1e-6;
  double ropeTheta = 10000.0;
  std::optional<YarnScaling> yarn;
  int64_t numNextnPredictLayers =
      0; // MTP modules, at layer index numHiddenLayers
  bool tieWordEmbeddings = false;
  int64_t bosTokenId = 0;
  int64_t eosTokenId = 1;
  std::optional<Fp8Quantization> quantization; // absent: BF16 checkpoint

  int64_t qkHeadDim() const { return qkNopeHeadDim + qkRopeHeadDim; }
  /// Layer `layer` (0-based, MTP layers included) uses the MoE MLP.
  bool isMoELayer(int64_t layer) const {
    return nRoutedExperts > 0 && layer >= firstKDenseReplace &&
           layer % moeLayerFreq == 0;
  }
  /// Layers in the checkpoint: the decoder layers, then the MTP modules.
  int64_t numCheckpointLayers() const {
    return numHiddenLayers + numNextnPredictLayers;
  }

  /// Field-by-field equality (the round-trip property of toJson).
  bool operator==(const ModelConfig &other) const;
  bool operator!=(const ModelConfig &other) const { return !(*this == other); }
};

/// Parses `config.json` text; `source` names it in errors. Throws kiln::Error
/// naming the field for an unknown `model_type`, a missing or mistyped field,
/// or inconsistent sizes.
ModelConfig parseConfig(const std::string &json, const std::string &source);

/// Checks the relations between the fields that the forward pass relies on
/// (positive sizes, even RoPE dims, experts dividing into groups, top-k
/// within the kept groups, ...). parseConfig calls it; code that builds a
/// ModelConfig by hand calls it too. Throws kiln::Error naming `source` and
/// the field.
void validateConfig(const ModelConfig &config, const std::string &source);

/// Reads and parses `<modelDir>/config.json`.
ModelConfig loadConfig(const std::filesystem::path &modelDir);

/// Serializes to HF `config.json` text (the fields above), for the tiny
/// checkpoint generator; parseConfig(toJson(c)) == c.
std::string toJson(const ModelConfig &config);

} // namespace kiln

#endif // KILN_CONFIG_H
