//===- config.cpp - DeepSeek-V3 model configuration -----------------------===//
//
// Reads Hugging Face DeepSeek-V3 `config.json`. Fields that fix tensor shapes
// are required, so that a truncated config never silently takes the 671B
// defaults; the others default as transformers' DeepseekV3Config does, so the
// CPU reference computes what HF computes for the same file.
//
//===----------------------------------------------------------------------===//

#include "kiln/config.h"

#include "kiln/error.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

namespace kiln {

namespace {

using Json = nlohmann::json;

constexpr const char *kModelType = "deepseek_v3";

/// Typed access to the fields of one JSON object, with errors that name the
/// source file and the field's full path (e.g. "rope_scaling.factor").
class FieldReader {
public:
  FieldReader(const Json &object, const std::string &source,
              std::string prefix = "")
      : object(object), source(source), prefix(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string &field,
                         const std::string &problem) const {
    throw Error(source + ": field \"" + prefix + field + "\" " + problem);
  }

  /// The field's value, or nullptr when the key is absent. A JSON null counts
  /// as present: HF writes `"q_lora_rank": null` on purpose.
  const Json *find(const std::string &field) const {
    auto it = object.find(field);
    return it == object.end() ? nullptr : &*it;
  }

  const Json &require(const std::string &field) const {
    const Json *value = find(field);
    if (!value)
      fail(field, "is missing; it is required");
    return *value;
  }

  int64_t toInt(const std::string &field, const Json &value) const {
    if (value.is_number_unsigned()) {
      if (value.get<uint64_t>() >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(field, "is too large for a 64-bit integer");
      return static_cast<int64_t>(value.get<uint64_t>());
    }
    if (!value.is_number_integer())
      fail(field, "must be an integer, got " + describe(value));
    return value.get<int64_t>();
  }

  double toDouble(const std::string &field, const Json &value) const {
    if (!value.is_number())
      fail(field, "must be a number, got " + describe(value));
    double result = value.get<double>();
    if (!std::isfinite(result))
      fail(field, "must be finite");
    return result;
  }

  int64_t requireInt(const std::string &field) const {
    return toInt(field, require(field));
  }
  int64_t optionalInt(const std::string &field, int64_t fallback) const {
    const Json *value = find(field);
    return value ? toInt(field, *value) : fallback;
  }
  double optionalDouble(const std::string &field, double fallback) const {
    const Json *value = find(field);
    return value ? toDouble(field, *value) : fallback;
  }
  double requireDouble(const std::string &field) const {
    return toDouble(field, require(field));
  }
  bool optionalBool(const std::string &field, bool fallback) const {
    const Json *value = find(field);
    if (!value)
      return fallback;
    if (!value->is_boolean())
      fail(field, "must be true or false, got " + describe(*value));
    return value->get<bool>();
  }
  std::string optionalString(const std::string &field,
                             const std::string &fallback) const {
    const Json *value = find(field);
    if (!value)
      return fallback;
    if (!value->is_string())
      fail(field, "must be a string, got " + describe(*value));
    return value->get<std::string>();
  }
  std::string requireString(const std::string &field) const {
    const Json &value = require(field);
    if (!value.is_string())
      fail(field, "must be a string, got " + describe(value));
    return value.get<std::string>();
  }

  static std::string describe(const Json &value) {
    std::string text = value.dump();
    if (text.size() > 40)
      text = text.substr(0, 37) + "...";
    return std::string(value.type_name()) + " " + text;
  }

private:
  const Json &object;
  const std::string &source;
  std::string prefix;
};

/// Throws unless `condition`; `field` is the field the message blames.
void check(bool condition, const FieldReader &reader, const std::string &field,
           const std::string &problem) {
  if (!condition)
    reader.fail(field, problem);
}

/// check() for a parsed config, in the words of FieldReader::fail.
void check(bool condition, const std::string &source, const std::string &field,
           const std::string &problem) {
  if (!condition)
    throw Error(source + ": field \"" + field + "\" " + problem);
}

std::string str(int64_t value) { return std::to_string(value); }

YarnScaling parseYarn(const Json &object, const std::string &source) {
  FieldReader reader(object, source, "rope_scaling.");
  YarnScaling yarn;
  yarn.factor = reader.requireDouble("factor");
  check(yarn.factor >= 1.0, reader, "factor",
        "must be at least 1, got " + std::to_string(yarn.factor));
  yarn.originalMaxPositionEmbeddings =
      reader.requireInt("original_max_position_embeddings");
  check(yarn.originalMaxPositionEmbeddings > 0, reader,
        "original_max_position_embeddings", "must be positive");
  yarn.betaFast = reader.optionalDouble("beta_fast", yarn.betaFast);
  yarn.betaSlow = reader.optionalDouble("beta_slow", yarn.betaSlow);
  check(yarn.betaFast > yarn.betaSlow && yarn.betaSlow > 0, reader, "beta_fast",
        "must exceed beta_slow, both positive");
  yarn.mscale = reader.optionalDouble("mscale", yarn.mscale);
  yarn.mscaleAllDim =
      reader.optionalDouble("mscale_all_dim", yarn.mscaleAllDim);
  return yarn;
}

std::optional<YarnScaling> parseRopeScaling(const FieldReader &top,
                                            const std::string &source) {
  const Json *value = top.find("rope_scaling");
  if (!value || value->is_null())
    return std::nullopt;
  if (!value->is_object())
    top.fail("rope_scaling",
             "must be an object or null, got " + FieldReader::describe(*value));
  FieldReader reader(*value, source, "rope_scaling.");
  // Older configs spell it "type", newer ones "rope_type"; transformers
  // accepts either.
  std::string typeField = reader.find("rope_type") ? "rope_type" : "type";
  std::string type = reader.requireString(typeField);
  if (type != "yarn")
    reader.fail(typeField,
                "is \"" + type + "\"; only \"yarn\" rope scaling is supported");
  return parseYarn(*value, source);
}

std::optional<Fp8Quantization> parseQuantization(const FieldReader &top,
                                                 const std::string &source) {
  const Json *value = top.find("quantization_config");
  if (!value || value->is_null())
    return std::nullopt;
  if (!value->is_object())
    top.fail("quantization_config",
             "must be an object or null, got " + FieldReader::describe(*value));
  FieldReader reader(*value, source, "quantization_config.");
  std::string method = reader.requireString("quant_method");
  if (method != "fp8")
    reader.fail("quant_method", "is \"" + method + "\"; expected \"fp8\"");
  std::string format = reader.optionalString("fmt", "e4m3");
  if (format != "e4m3")
    reader.fail("fmt", "is \"" + format +
                           "\"; only \"e4m3\" (float8_e4m3fn) is supported");

  Fp8Quantization quantization;
  quantization.activationScheme =
      reader.optionalString("activation_scheme", quantization.activationScheme);
  // Static activation scales would need per-tensor input scales that the
  // DeepSeek-V3 layout does not carry.
  if (quantization.activationScheme != "dynamic")
    reader.fail("activation_scheme",
                "is \"" + quantization.activationScheme +
                    "\"; only \"dynamic\" (1x128 tiles) is supported");

  const Json &blocks = reader.require("weight_block_size");
  if (!blocks.is_array() || blocks.size() != 2)
    reader.fail("weight_block_size", "must be a list of two integers, got " +
                                         FieldReader::describe(blocks));
  quantization.weightBlockN = reader.toInt("weight_block_size", blocks[0]);
  quantization.weightBlockK = reader.toInt("weight_block_size", blocks[1]);
  // The kernels and kiln::dequantizeWeightBlocks are built for 128x128.
  if (quantization.weightBlockN != 128 || quantization.weightBlockK != 128)
    reader.fail("weight_block_size", "is [" + str(quantization.weightBlockN) +
                                         ", " + str(quantization.weightBlockK) +
                                         "]; only [128, 128] is supported");
  return quantization;
}

/// Cross-field consistency. Each message blames the field a user would edit.
} // namespace

void validateConfig(const ModelConfig &c, const std::string &source) {
  auto positive = [&](const char *field, int64_t value) {
    check(value > 0, source, field, "must be positive, got " + str(value));
  };
  positive("vocab_size", c.vocabSize);
  positive("hidden_size", c.hiddenSize);
  // Zero decoder layers is computable (embedding, norm, head): tests use it.
  check(c.numHiddenLayers >= 0, source, "num_hidden_layers",
        "must be non-negative, got " + str(c.numHiddenLayers));
  positive("num_attention_heads", c.numAttentionHeads);
  positive("num_key_value_heads", c.numKeyValueHeads);
  positive("max_position_embeddings", c.maxPositionEmbeddings);
  positive("kv_lora_rank", c.kvLoraRank);
  positive("qk_nope_head_dim", c.qkNopeHeadDim);
  positive("qk_rope_head_dim", c.qkRopeHeadDim);
  positive("v_head_dim", c.vHeadDim);
  positive("moe_layer_freq", c.moeLayerFreq);
  check(c.qLoraRank >= 0, source, "q_lora_rank",
        "must be a non-negative integer or null, got " + str(c.qLoraRank));
  // RoPE rotates pairs of dimensions.
  check(c.qkRopeHeadDim % 2 == 0, source, "qk_rope_head_dim",
        "must be even, got " + str(c.qkRopeHeadDim));
  check(c.rmsNormEps > 0, source, "rms_norm_eps", "must be positive");
  check(c.ropeTheta > 0, source, "rope_theta", "must be positive");
  check(c.numNextnPredictLayers >= 0, source, "num_nextn_predict_layers",
        "must be non-negative, got " + str(c.numNextnPredictLayers));
  check(c.firstKDenseReplace >= 0, source, "first_k_dense_replace",
        "must be non-negative, got " + str(c.firstKDenseReplace));
  check(c.bosTokenId >= 0 && c.bosTokenId < c.vocabSize, source, "bos_token_id",
        "must be a token id below vocab_size (" + str(c.vocabSize) + ")");
  check(c.eosTokenId >= 0 && c.eosTokenId < c.vocabSize, source, "eos_token_id",
        "must be a token id below vocab_size (" + str(c.vocabSize) + ")");

  bool hasDenseLayer = false;
  for (int64_t layer = 0; layer < c.numCheckpointLayers(); ++layer)
    hasDenseLayer |= !c.isMoELayer(layer);
  if (hasDenseLayer)
    positive("intermediate_size", c.intermediateSize);

  check(c.nRoutedExperts >= 0, source, "n_routed_experts",
        "must be non-negative, got " + str(c.nRoutedExperts));
  if (c.nRoutedExperts == 0)
    return;
  positive("moe_intermediate_size", c.moeIntermediateSize);
  positive("n_group", c.nGroup);
  check(c.nSharedExperts >= 0, source, "n_shared_experts",
        "must be non-negative, got " + str(c.nSharedExperts));
  check(c.nRoutedExperts % c.nGroup == 0, source, "n_group",
        "(" + str(c.nGroup) + ") must divide n_routed_experts (" +
            str(c.nRoutedExperts) + ")");
  check(c.topkGroup >= 1 && c.topkGroup <= c.nGroup, source, "topk_group",
        "(" + str(c.topkGroup) + ") must be between 1 and n_group (" +
            str(c.nGroup) + ")");
  int64_t expertsPerGroup = c.nRoutedExperts / c.nGroup;
  check(c.numExpertsPerTok >= 1 &&
            c.numExpertsPerTok <= c.topkGroup * expertsPerGroup,
        source, "num_experts_per_tok",
        "(" + str(c.numExpertsPerTok) +
            ") must be between 1 and topk_group * experts per group (" +
            str(c.topkGroup) + " * " + str(expertsPerGroup) + ")");
  check(c.routedScalingFactor > 0, source, "routed_scaling_factor",
        "must be positive");
  check(c.scoringFunc == "sigmoid" || c.scoringFunc == "softmax", source,
        "scoring_func",
        "is \"" + c.scoringFunc + "\"; expected \"sigmoid\" or \"softmax\"");
  check(c.topkMethod == "noaux_tc" || c.topkMethod == "group_limited_greedy" ||
            c.topkMethod == "greedy",
        source, "topk_method",
        "is \"" + c.topkMethod +
            "\"; expected \"noaux_tc\", \"group_limited_greedy\" or "
            "\"greedy\"");
  if (c.topkMethod == "noaux_tc") {
    // Group scores are the sum of each group's top two biased scores.
    check(expertsPerGroup >= 2, source, "n_group",
          "leaves " + str(expertsPerGroup) +
              " expert(s) per group; noaux_tc needs at least 2");
    check(c.scoringFunc == "sigmoid", source, "scoring_func",
          "must be \"sigmoid\" with topk_method \"noaux_tc\"");
  }
}

bool YarnScaling::operator==(const YarnScaling &o) const {
  return factor == o.factor &&
         originalMaxPositionEmbeddings == o.originalMaxPositionEmbeddings &&
         betaFast == o.betaFast && betaSlow == o.betaSlow &&
         mscale == o.mscale && mscaleAllDim == o.mscaleAllDim;
}

bool Fp8Quantization::operator==(const Fp8Quantization &o) const {
  return activationScheme == o.activationScheme &&
         weightBlockN == o.weightBlockN && weightBlockK == o.weightBlockK;
}

bool ModelConfig::operator==(const ModelConfig &o) const {
  return vocabSize == o.vocabSize && hiddenSize == o.hiddenSize &&
         intermediateSize == o.intermediateSize &&
         moeIntermediateSize == o.moeIntermediateSize &&
         numHiddenLayers == o.numHiddenLayers &&
         numAttentionHeads == o.numAttentionHeads &&
         numKeyValueHeads == o.numKeyValueHeads &&
         maxPositionEmbeddings == o.maxPositionEmbeddings &&
         qLoraRank == o.qLoraRank && kvLoraRank == o.kvLoraRank &&
         qkNopeHeadDim == o.qkNopeHeadDim && qkRopeHeadDim == o.qkRopeHeadDim &&
         vHeadDim == o.vHeadDim && nRoutedExperts == o.nRoutedExperts &&
         nSharedExperts == o.nSharedExperts &&
         numExpertsPerTok == o.numExpertsPerTok && nGroup == o.nGroup &&
         topkGroup == o.topkGroup &&
         firstKDenseReplace == o.firstKDenseReplace &&
         moeLayerFreq == o.moeLayerFreq &&
         routedScalingFactor == o.routedScalingFactor &&
         normTopkProb == o.normTopkProb && scoringFunc == o.scoringFunc &&
         topkMethod == o.topkMethod && rmsNormEps == o.rmsNormEps &&
         ropeTheta == o.ropeTheta && yarn == o.yarn &&
         numNextnPredictLayers == o.numNextnPredictLayers &&
         tieWordEmbeddings == o.tieWordEmbeddings &&
         bosTokenId == o.bosTokenId && eosTokenId == o.eosTokenId &&
         quantization == o.quantization;
}

ModelConfig parseConfig(const std::string &text, const std::string &source) {
  Json root;
  try {
    root = Json::parse(text);
  } catch (const Json::exception &e) {
    throw Error(source + ": not valid JSON: " + e.what());
  }
  if (!root.is_object())
    throw Error(source + ": expected a JSON object, got " +
                FieldReader::describe(root));
  FieldReader reader(root, source);

  std::string modelType = reader.requireString("model_type");
  if (modelType != kModelType)
    reader.fail("model_type", "is \"" + modelType + "\"; expected \"" +
                                  std::string(kModelType) + "\"");

  ModelConfig c;
  c.vocabSize = reader.requireInt("vocab_size");
  c.hiddenSize = reader.requireInt("hidden_size");
  c.intermediateSize = reader.requireInt("intermediate_size");
  c.numHiddenLayers = reader.requireInt("num_hidden_layers");
  c.numAttentionHeads = reader.requireInt("num_attention_heads");
  c.numKeyValueHeads =
      reader.optionalInt("num_key_value_heads", c.numAttentionHeads);
  c.maxPositionEmbeddings = reader.optionalInt("max_position_embeddings", 4096);

  // Present but null means "no query compression" (DeepSeek-V2-Lite style).
  const Json &qLoraRank = reader.require("q_lora_rank");
  c.qLoraRank =
      qLoraRank.is_null() ? 0 : reader.toInt("q_lora_rank", qLoraRank);
  c.kvLoraRank = reader.requireInt("kv_lora_rank");
  c.qkNopeHeadDim = reader.requireInt("qk_nope_head_dim");
  c.qkRopeHeadDim = reader.requireInt("qk_rope_head_dim");
  c.vHeadDim = reader.requireInt("v_head_dim");

  // null routed experts means a dense model; then the MoE fields are optional.
  const Json &routed = reader.require("n_routed_experts");
  c.nRoutedExperts =
      routed.is_null() ? 0 : reader.toInt("n_routed_experts", routed);
  bool moe = c.nRoutedExperts > 0;
  auto moeInt = [&](const char *field, int64_t fallback) {
    return moe ? reader.requireInt(field) : reader.optionalInt(field, fallback);
  };
  c.moeIntermediateSize = moeInt("moe_intermediate_size", 0);
  c.numExpertsPerTok = moeInt("num_experts_per_tok", 0);
  c.nGroup = moeInt("n_group", 1);
  c.topkGroup = moeInt("topk_group", 1);
  c.firstKDenseReplace = moeInt("first_k_dense_replace", 0);
  const Json *shared = moe ? &reader.require("n_shared_experts")
                           : reader.find("n_shared_experts");
  if (shared && !shared->is_null())
    c.nSharedExperts = reader.toInt("n_shared_experts", *shared);
  c.moeLayerFreq = reader.optionalInt("moe_layer_freq", 1);
  c.routedScalingFactor = reader.optionalDouble("routed_scaling_factor", 2.5);
  c.normTopkProb = reader.optionalBool("norm_topk_prob", true);
  c.scoringFunc = reader.optionalString("scoring_func", "sigmoid");
  c.topkMethod = reader.optionalString("topk_method", "noaux_tc");

  c.rmsNormEps = reader.optionalDouble("rms_norm_eps", 1e-6);
  c.ropeTheta = reader.optionalDouble("rope_theta", 10000.0);
  c.yarn = parseRopeScaling(reader, source);
  c.numNextnPredictLayers = reader.optionalInt("num_nextn_predict_layers", 0);
  c.tieWordEmbeddings = reader.optionalBool("tie_word_embeddings", false);
  c.bosTokenId = reader.optionalInt("bos_token_id", 0);
  c.eosTokenId = reader.optionalInt("eos_token_id", 1);
  c.quantization = parseQuantization(reader, source);

  validateConfig(c, source);
  return c;
}

ModelConfig loadConfig(const std::filesystem::path &modelDir) {
  std::filesystem::path path = modelDir / "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(path.string() + ": cannot open the model configuration");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    throw Error(path.string() + ": read error");
  return parseConfig(text.str(), path.string());
}

std::string toJson(const ModelConfig &c) {
  Json root = Json::object();
  root["architectures"] = Json::array({"DeepseekV3ForCausalLM"});
  root["model_type"] = kModelType;
  root["vocab_size"] = c.vocabSize;
  root["hidden_size"] = c.hiddenSize;
  root["intermediate_size"] = c.intermediateSize;
  root["moe_intermediate_size"] = c.moeIntermediateSize;
  root["num_hidden_layers"] = c.numHiddenLayers;
  root["num_attention_heads"] = c.numAttentionHeads;
  root["num_key_value_heads"] = c.numKeyValueHeads;
  root["max_position_embeddings"] = c.maxPositionEmbeddings;
  root["q_lora_rank"] = c.qLoraRank > 0 ? Json(c.qLoraRank) : Json(nullptr);
  root["kv_lora_rank"] = c.kvLoraRank;
  root["qk_nope_head_dim"] = c.qkNopeHeadDim;
  root["qk_rope_head_dim"] = c.qkRopeHeadDim;
  root["v_head_dim"] = c.vHeadDim;
  root["n_routed_experts"] =
      c.nRoutedExperts > 0 ? Json(c.nRoutedExperts) : Json(nullptr);
  root["n_shared_experts"] = c.nSharedExperts;
  root["num_experts_per_tok"] = c.numExpertsPerTok;
  root["n_group"] = c.nGroup;
  root["topk_group"] = c.topkGroup;
  root["first_k_dense_replace"] = c.firstKDenseReplace;
  root["moe_layer_freq"] = c.moeLayerFreq;
  root["routed_scaling_factor"] = c.routedScalingFactor;
  root["norm_topk_prob"] = c.normTopkProb;
  root["scoring_func"] = c.scoringFunc;
  root["topk_method"] = c.topkMethod;
  root["rms_norm_eps"] = c.rmsNormEps;
  root["rope_theta"] = c.ropeTheta;
  if (c.yarn) {
    const YarnScaling &y = *c.yarn;
    root["rope_scaling"] = {
        {"type", "yarn"},
        {"factor", y.factor},
        {"original_max_position_embeddings", y.originalMaxPositionEmbeddings},
        {"beta_fast", y.betaFast},
        {"beta_slow", y.betaSlow},
        {"mscale", y.mscale},
        {"mscale_all_dim", y.mscaleAllDim}};
  } else {
    root["rope_scaling"] = nullptr;
  }
  root["num_nextn_predict_layers"] = c.numNextnPredictLayers;
  root["tie_word_embeddings"] = c.tieWordEmbeddings;
  root["bos_token_id"] = c.bosTokenId;
  root["eos_token_id"] = c.eosTokenId;
  if (c.quantization)
    root["quantization_config"] = {
        {"quant_method", "fp8"},
        {"fmt", "e4m3"},
        {"activation_scheme", c.quantization->activationScheme},
        {"weight_block_size",
         {c.quantization->weightBlockN, c.quantization->weightBlockK}}};
  // Fields transformers' DeepseekV3Config reads that Kiln fixes.
  root["hidden_act"] = "silu";
  root["attention_bias"] = false;
  root["attention_dropout"] = 0.0;
  root["initializer_range"] = 0.02;
  root["use_cache"] = true;
  root["ep_size"] = 1;
  root["pretraining_tp"] = 1;
  root["torch_dtype"] = "bfloat16";
  return root.dump(2) + "\n";
}

} // namespace kiln
