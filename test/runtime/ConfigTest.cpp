//===- ConfigTest.cpp - DeepSeek-V3 config.json parsing -------------------===//

#include "kiln/config.h"
#include "kiln/error.h"

#include "TestSupport.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

using kiln::testing::errorOf;
using kiln::testing::expectMentions;

namespace fs = std::filesystem;

const char *const kSource = "/models/test/config.json";

/// A config as an ordered list of (key, raw JSON value), so tests can drop or
/// replace single fields without a JSON library.
using Fields = std::vector<std::pair<std::string, std::string>>;

Fields tinyFields() {
  return {
      {"model_type", "\"deepseek_v3\""},
      {"vocab_size", "129280"},
      {"hidden_size", "256"},
      {"intermediate_size", "448"},
      {"moe_intermediate_size", "192"},
      {"num_hidden_layers", "3"},
      {"first_k_dense_replace", "1"},
      {"num_attention_heads", "4"},
      {"q_lora_rank", "192"},
      {"kv_lora_rank", "160"},
      {"qk_nope_head_dim", "32"},
      {"qk_rope_head_dim", "16"},
      {"v_head_dim", "32"},
      {"n_routed_experts", "16"},
      {"n_shared_experts", "1"},
      {"num_experts_per_tok", "4"},
      {"n_group", "4"},
      {"topk_group", "2"},
      {"routed_scaling_factor", "2.5"},
      {"scoring_func", "\"sigmoid\""},
      {"topk_method", "\"noaux_tc\""},
      {"norm_topk_prob", "true"},
      {"num_nextn_predict_layers", "1"},
      {"max_position_embeddings", "2560"},
      {"rope_scaling",
       R"({"type": "yarn", "factor": 40, "original_max_position_embeddings": 64,
           "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
           "mscale_all_dim": 1.0})"},
      {"quantization_config",
       R"({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
           "weight_block_size": [128, 128]})"},
  };
}

std::string render(const Fields &fields) {
  std::string text = "{";
  for (size_t i = 0; i < fields.size(); ++i)
    text +=
        (i ? ",\n \"" : "\n \"") + fields[i].first + "\": " + fields[i].second;
  return text + "\n}\n";
}

Fields with(Fields fields, const std::string &key, const std::string &value) {
  for (auto &field : fields)
    if (field.first == key) {
      field.second = value;
      return fields;
    }
  fields.emplace_back(key, value);
  return fields;
}

Fields without(Fields fields, const std::string &key) {
  for (auto it = fields.begin(); it != fields.end(); ++it)
    if (it->first == key) {
      fields.erase(it);
      break;
    }
  return fields;
}

std::string parseError(const Fields &fields) {
  return errorOf([&] { kiln::parseConfig(render(fields), kSource); });
}

/// The config.json of the released DeepSeek-V3 (671B), as published.
const char *const kDeepSeekV3Release = R"({
  "architectures": ["DeepseekV3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "auto_map": {
    "AutoConfig": "configuration_deepseek.DeepseekV3Config",
    "AutoModel": "modeling_deepseek.DeepseekV3Model",
    "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"
  },
  "aux_loss_alpha": 0.001,
  "bos_token_id": 0,
  "eos_token_id": 1,
  "ep_size": 1,
  "first_k_dense_replace": 3,
  "hidden_act": "silu",
  "hidden_size": 7168,
  "initializer_range": 0.02,
  "intermediate_size": 18432,
  "kv_lora_rank": 512,
  "max_position_embeddings": 163840,
  "model_type": "deepseek_v3",
  "moe_intermediate_size": 2048,
  "moe_layer_freq": 1,
  "n_group": 8,
  "n_routed_experts": 256,
  "n_shared_experts": 1,
  "norm_topk_prob": true,
  "num_attention_heads": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 61,
  "num_key_value_heads": 128,
  "num_nextn_predict_layers": 1,
  "pretraining_tp": 1,
  "q_lora_rank": 1536,
  "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64,
  "quantization_config": {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128]
  },
  "rms_norm_eps": 1e-06,
  "rope_scaling": {
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 40,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 4096,
    "type": "yarn"
  },
  "rope_theta": 10000,
  "routed_scaling_factor": 2.5,
  "scoring_func": "sigmoid",
  "seq_aux": true,
  "tie_word_embeddings": false,
  "topk_group": 4,
  "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16",
  "transformers_version": "4.33.1",
  "use_cache": true,
  "v_head_dim": 128,
  "vocab_size": 129280
})";

TEST(ConfigTest, ParsesTheTinyExample) {
  kiln::ModelConfig c = kiln::loadConfig(KILN_SOURCE_DIR "/examples/tiny");
  EXPECT_EQ(c.vocabSize, 129280);
  EXPECT_EQ(c.hiddenSize, 256);
  EXPECT_EQ(c.intermediateSize, 448);
  EXPECT_EQ(c.moeIntermediateSize, 192);
  EXPECT_EQ(c.numHiddenLayers, 3);
  EXPECT_EQ(c.numAttentionHeads, 4);
  EXPECT_EQ(c.numKeyValueHeads, 4);
  EXPECT_EQ(c.maxPositionEmbeddings, 2560);
  EXPECT_EQ(c.qLoraRank, 192);
  EXPECT_EQ(c.kvLoraRank, 160);
  EXPECT_EQ(c.qkNopeHeadDim, 32);
  EXPECT_EQ(c.qkRopeHeadDim, 16);
  EXPECT_EQ(c.qkHeadDim(), 48);
  EXPECT_EQ(c.vHeadDim, 32);
  EXPECT_EQ(c.nRoutedExperts, 16);
  EXPECT_EQ(c.nSharedExperts, 1);
  EXPECT_EQ(c.numExpertsPerTok, 4);
  EXPECT_EQ(c.nGroup, 4);
  EXPECT_EQ(c.topkGroup, 2);
  EXPECT_EQ(c.firstKDenseReplace, 1);
  EXPECT_EQ(c.moeLayerFreq, 1);
  EXPECT_EQ(c.routedScalingFactor, 2.5);
  EXPECT_TRUE(c.normTopkProb);
  EXPECT_EQ(c.scoringFunc, "sigmoid");
  EXPECT_EQ(c.topkMethod, "noaux_tc");
  EXPECT_EQ(c.rmsNormEps, 1e-6);
  EXPECT_EQ(c.ropeTheta, 10000.0);
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_EQ(c.yarn->factor, 40.0);
  EXPECT_EQ(c.yarn->originalMaxPositionEmbeddings, 64);
  EXPECT_EQ(c.yarn->betaFast, 32.0);
  EXPECT_EQ(c.yarn->betaSlow, 1.0);
  EXPECT_EQ(c.yarn->mscale, 1.0);
  EXPECT_EQ(c.yarn->mscaleAllDim, 1.0);
  // transformers derives the YaRN factor from these two; keep them agreeing.
  EXPECT_EQ(c.maxPositionEmbeddings,
            c.yarn->factor * c.yarn->originalMaxPositionEmbeddings);
  EXPECT_EQ(c.numNextnPredictLayers, 1);
  EXPECT_EQ(c.numCheckpointLayers(), 4);
  EXPECT_FALSE(c.tieWordEmbeddings);
  EXPECT_EQ(c.bosTokenId, 0);
  EXPECT_EQ(c.eosTokenId, 1);
  ASSERT_TRUE(c.quantization.has_value());
  EXPECT_EQ(c.quantization->activationScheme, "dynamic");
  EXPECT_EQ(c.quantization->weightBlockN, 128);
  EXPECT_EQ(c.quantization->weightBlockK, 128);
  EXPECT_FALSE(c.isMoELayer(0));
  EXPECT_TRUE(c.isMoELayer(1));
  EXPECT_TRUE(c.isMoELayer(3)); // the MTP layer
}

TEST(ConfigTest, ParsesTheDeepSeekV3Release) {
  kiln::ModelConfig c = kiln::parseConfig(kDeepSeekV3Release, kSource);
  EXPECT_EQ(c.hiddenSize, 7168);
  EXPECT_EQ(c.numHiddenLayers, 61);
  EXPECT_EQ(c.numCheckpointLayers(), 62);
  EXPECT_EQ(c.qLoraRank, 1536);
  EXPECT_EQ(c.kvLoraRank, 512);
  EXPECT_EQ(c.qkHeadDim(), 192);
  EXPECT_EQ(c.nRoutedExperts, 256);
  EXPECT_EQ(c.nGroup, 8);
  EXPECT_EQ(c.topkGroup, 4);
  EXPECT_EQ(c.numExpertsPerTok, 8);
  EXPECT_EQ(c.firstKDenseReplace, 3);
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_EQ(c.yarn->factor, 40.0);
  EXPECT_EQ(c.yarn->originalMaxPositionEmbeddings, 4096);
  ASSERT_TRUE(c.quantization.has_value());
  EXPECT_FALSE(c.isMoELayer(2));
  EXPECT_TRUE(c.isMoELayer(3));
  EXPECT_TRUE(c.isMoELayer(61));
}

TEST(ConfigTest, ToJsonRoundTrips) {
  std::vector<kiln::ModelConfig> configs = {
      kiln::parseConfig(render(tinyFields()), kSource),
      kiln::parseConfig(kDeepSeekV3Release, kSource)};
  kiln::ModelConfig variant = configs[0];
  variant.qLoraRank = 0;
  variant.quantization.reset();
  variant.yarn.reset();
  variant.tieWordEmbeddings = true;
  variant.nSharedExperts = 0;
  variant.numNextnPredictLayers = 0;
  variant.rmsNormEps = 1.0 / 3.0; // needs all 17 digits
  variant.routedScalingFactor = 0.1;
  configs.push_back(variant);
  kiln::ModelConfig dense = configs[0];
  dense.nRoutedExperts = 0;
  configs.push_back(dense);

  for (const kiln::ModelConfig &config : configs) {
    std::string text = kiln::toJson(config);
    kiln::ModelConfig reparsed = kiln::parseConfig(text, "toJson output");
    EXPECT_TRUE(reparsed == config) << text;
    EXPECT_EQ(kiln::toJson(reparsed), text);
  }
  kiln::ModelConfig changed = configs[0];
  changed.yarn->betaSlow = 2.0;
  EXPECT_TRUE(changed != configs[0]);
}

TEST(ConfigTest, ToJsonWritesTheFieldsTransformersReads) {
  std::string text =
      kiln::toJson(kiln::parseConfig(render(tinyFields()), kSource));
  for (const char *field :
       {"\"model_type\": \"deepseek_v3\"", "\"DeepseekV3ForCausalLM\"",
        "\"hidden_act\": \"silu\"", "\"attention_bias\": false",
        "\"rope_scaling\": {", "\"type\": \"yarn\"",
        "\"quant_method\": \"fp8\"", "\"weight_block_size\": [",
        "\"torch_dtype\": \"bfloat16\"", "\"ep_size\": 1",
        "\"initializer_range\": 0.02", "\"use_cache\": true"})
    EXPECT_NE(text.find(field), std::string::npos) << field << "\n" << text;
}

TEST(ConfigTest, NullQLoraRankMeansDirectQueryProjection) {
  kiln::ModelConfig c = kiln::parseConfig(
      render(with(tinyFields(), "q_lora_rank", "null")), kSource);
  EXPECT_EQ(c.qLoraRank, 0);
  EXPECT_NE(kiln::toJson(c).find("\"q_lora_rank\": null"), std::string::npos);
}

TEST(ConfigTest, AcceptsBothRopeTypeSpellings) {
  kiln::ModelConfig c =
      kiln::parseConfig(render(with(tinyFields(), "rope_scaling",
                                    R"({"rope_type": "yarn", "factor": 4,
                      "original_max_position_embeddings": 640})")),
                        kSource);
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_EQ(c.yarn->factor, 4.0);
  // Unset fields take the YaRN defaults transformers uses.
  EXPECT_EQ(c.yarn->betaFast, 32.0);
  EXPECT_EQ(c.yarn->betaSlow, 1.0);
  EXPECT_EQ(c.yarn->mscale, 1.0);
  EXPECT_EQ(c.yarn->mscaleAllDim, 0.0);
  EXPECT_FALSE(kiln::parseConfig(
                   render(with(tinyFields(), "rope_scaling", "null")), kSource)
                   .yarn.has_value());
}

TEST(ConfigTest, IgnoresUnknownFields) {
  Fields fields = with(tinyFields(), "auto_map", R"({"AutoConfig": "x.Y"})");
  fields = with(fields, "seq_aux", "true");
  fields = with(fields, "some_future_field", "[1, {\"a\": null}]");
  EXPECT_TRUE(kiln::parseConfig(render(fields), kSource) ==
              kiln::parseConfig(render(tinyFields()), kSource));
}

TEST(ConfigTest, OptionalFieldsTakeTransformersDefaults) {
  Fields fields = tinyFields();
  for (const char *field :
       {"routed_scaling_factor", "scoring_func", "topk_method",
        "norm_topk_prob", "num_nextn_predict_layers", "max_position_embeddings",
        "rope_scaling", "quantization_config"})
    fields = without(fields, field);
  kiln::ModelConfig c = kiln::parseConfig(render(fields), kSource);
  EXPECT_EQ(c.numKeyValueHeads, c.numAttentionHeads);
  EXPECT_EQ(c.routedScalingFactor, 2.5);
  EXPECT_EQ(c.scoringFunc, "sigmoid");
  EXPECT_EQ(c.topkMethod, "noaux_tc");
  EXPECT_TRUE(c.normTopkProb);
  EXPECT_EQ(c.maxPositionEmbeddings, 4096);
  EXPECT_EQ(c.rmsNormEps, 1e-6);
  EXPECT_EQ(c.ropeTheta, 10000.0);
  EXPECT_EQ(c.numNextnPredictLayers, 0);
  EXPECT_FALSE(c.yarn.has_value());
  EXPECT_FALSE(c.quantization.has_value());
  EXPECT_FALSE(c.tieWordEmbeddings);
  EXPECT_EQ(c.bosTokenId, 0);
  EXPECT_EQ(c.eosTokenId, 1);
}

TEST(ConfigTest, DenseModelNeedsNoMoEFields) {
  Fields fields = with(tinyFields(), "n_routed_experts", "null");
  for (const char *field :
       {"moe_intermediate_size", "num_experts_per_tok", "n_group", "topk_group",
        "first_k_dense_replace", "n_shared_experts"})
    fields = without(fields, field);
  kiln::ModelConfig c = kiln::parseConfig(render(fields), kSource);
  EXPECT_EQ(c.nRoutedExperts, 0);
  EXPECT_FALSE(c.isMoELayer(2));
}

TEST(ConfigTest, RejectsInvalidJson) {
  for (const char *text :
       {"", "{", "{\"model_type\": deepseek_v3}", "{\"a\": 1,}", "\xff\xfe"}) {
    std::string message = errorOf([&] { kiln::parseConfig(text, kSource); });
    expectMentions(message, {kSource, "not valid JSON"});
  }
  expectMentions(errorOf([] { kiln::parseConfig("[1, 2]", kSource); }),
                 {kSource, "expected a JSON object"});
}

TEST(ConfigTest, RejectsUnknownModelType) {
  expectMentions(parseError(with(tinyFields(), "model_type", "\"llama\"")),
                 {kSource, "model_type", "llama", "deepseek_v3"});
  expectMentions(parseError(with(tinyFields(), "model_type", "7")),
                 {kSource, "model_type", "must be a string"});
}

TEST(ConfigTest, RejectsMissingRequiredFields) {
  for (const char *field :
       {"model_type", "vocab_size", "hidden_size", "intermediate_size",
        "num_hidden_layers", "num_attention_heads", "q_lora_rank",
        "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
        "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok",
        "n_group", "topk_group", "first_k_dense_replace", "n_shared_experts"}) {
    SCOPED_TRACE(field);
    expectMentions(parseError(without(tinyFields(), field)),
                   {kSource, "\"" + std::string(field) + "\"", "missing"});
  }
  expectMentions(
      parseError(with(tinyFields(), "rope_scaling", R"({"type": "yarn"})")),
      {kSource, "rope_scaling.factor", "missing"});
  expectMentions(
      parseError(with(tinyFields(), "rope_scaling",
                      R"({"type": "yarn", "factor": 40})")),
      {kSource, "rope_scaling.original_max_position_embeddings", "missing"});
  expectMentions(parseError(with(tinyFields(), "quantization_config",
                                 R"({"quant_method": "fp8"})")),
                 {kSource, "quantization_config.weight_block_size", "missing"});
}

TEST(ConfigTest, RejectsWrongTypes) {
  struct Case {
    const char *field;
    const char *value;
    const char *expected;
  };
  for (const Case &c : std::vector<Case>{
           {"hidden_size", "\"256\"", "must be an integer"},
           {"hidden_size", "256.5", "must be an integer"},
           {"vocab_size", "1e30", "must be an integer"},
           {"vocab_size", "18446744073709551615", "too large"},
           {"q_lora_rank", "true", "must be an integer"},
           {"n_group", "[4]", "must be an integer"},
           {"norm_topk_prob", "\"yes\"", "must be true or false"},
           {"tie_word_embeddings", "0", "must be true or false"},
           {"scoring_func", "1", "must be a string"},
           {"rms_norm_eps", "\"small\"", "must be a number"},
           {"routed_scaling_factor", "null", "must be a number"},
           {"rope_scaling", "5", "must be an object or null"},
           {"quantization_config", "\"fp8\"", "must be an object or null"},
           {"eos_token_id", "[1]", "must be an integer"},
       }) {
    SCOPED_TRACE(std::string(c.field) + " = " + c.value);
    expectMentions(parseError(with(tinyFields(), c.field, c.value)),
                   {kSource, "\"" + std::string(c.field) + "\"", c.expected});
  }
  expectMentions(parseError(with(tinyFields(), "rope_scaling",
                                 R"({"type": "yarn", "factor": "40",
                          "original_max_position_embeddings": 64})")),
                 {kSource, "rope_scaling.factor", "must be a number"});
  expectMentions(
      parseError(with(tinyFields(), "quantization_config",
                      R"({"quant_method": "fp8", "weight_block_size": 128})")),
      {kSource, "quantization_config.weight_block_size", "two integers"});
}

TEST(ConfigTest, RejectsInconsistentSizes) {
  struct Case {
    Fields fields;
    const char *field;
    const char *expected;
  };
  Fields base = tinyFields();
  for (const Case &c : std::vector<Case>{
           {with(base, "n_routed_experts", "18"), "n_group", "must divide"},
           {with(base, "topk_group", "5"), "topk_group", "between 1 and"},
           {with(base, "topk_group", "0"), "topk_group", "between 1 and"},
           {with(base, "num_experts_per_tok", "9"), "num_experts_per_tok",
            "topk_group * experts per group (2 * 4)"},
           {with(base, "num_experts_per_tok", "0"), "num_experts_per_tok",
            "between 1 and"},
           {with(base, "num_attention_heads", "0"), "num_attention_heads",
            "must be positive"},
           {with(base, "num_attention_heads", "-4"), "num_attention_heads",
            "must be positive"},
           {with(base, "hidden_size", "0"), "hidden_size", "must be positive"},
           {with(base, "vocab_size", "0"), "vocab_size", "must be positive"},
           {with(base, "num_hidden_layers", "-1"), "num_hidden_layers",
            "must be non-negative"},
           {with(base, "kv_lora_rank", "0"), "kv_lora_rank",
            "must be positive"},
           {with(base, "q_lora_rank", "-1"), "q_lora_rank", "non-negative"},
           {with(base, "qk_rope_head_dim", "15"), "qk_rope_head_dim",
            "must be even"},
           {with(base, "v_head_dim", "0"), "v_head_dim", "must be positive"},
           {with(base, "moe_intermediate_size", "0"), "moe_intermediate_size",
            "must be positive"},
           {with(base, "intermediate_size", "0"), "intermediate_size",
            "must be positive"},
           {with(base, "n_group", "0"), "n_group", "must be positive"},
           {with(with(base, "n_group", "16"), "topk_group", "4"), "n_group",
            "1 expert(s) per group; noaux_tc needs at least 2"},
           {with(base, "n_shared_experts", "-1"), "n_shared_experts",
            "non-negative"},
           {with(base, "first_k_dense_replace", "-1"), "first_k_dense_replace",
            "non-negative"},
           {with(base, "moe_layer_freq", "0"), "moe_layer_freq",
            "must be positive"},
           {with(base, "num_nextn_predict_layers", "-1"),
            "num_nextn_predict_layers", "non-negative"},
           {with(base, "eos_token_id", "129280"), "eos_token_id",
            "below vocab_size"},
           {with(base, "bos_token_id", "-1"), "bos_token_id",
            "below vocab_size"},
           {with(base, "rms_norm_eps", "0"), "rms_norm_eps",
            "must be positive"},
           {with(base, "rope_theta", "-10000"), "rope_theta",
            "must be positive"},
           {with(base, "routed_scaling_factor", "0"), "routed_scaling_factor",
            "must be positive"},
           {with(base, "scoring_func", "\"relu\""), "scoring_func",
            "expected \"sigmoid\" or \"softmax\""},
           {with(base, "scoring_func", "\"softmax\""), "scoring_func",
            "with topk_method \"noaux_tc\""},
           {with(base, "topk_method", "\"random\""), "topk_method",
            "expected \"noaux_tc\""},
           {with(base, "rope_scaling",
                 R"({"type": "yarn", "factor": 0.5,
                     "original_max_position_embeddings": 64})"),
            "rope_scaling.factor", "at least 1"},
           {with(base, "rope_scaling",
                 R"({"type": "yarn", "factor": 4, "beta_fast": 1,
                     "beta_slow": 32, "original_max_position_embeddings": 64})"),
            "rope_scaling.beta_fast", "must exceed beta_slow"},
       }) {
    SCOPED_TRACE(c.field);
    expectMentions(parseError(c.fields),
                   {kSource, "\"" + std::string(c.field) + "\"", c.expected});
  }
}

TEST(ConfigTest, RejectsUnsupportedQuantizationAndRopeScaling) {
  struct Case {
    const char *value;
    const char *field;
    const char *expected;
  };
  for (const Case &c : std::vector<Case>{
           {R"({"quant_method": "gptq", "weight_block_size": [128, 128]})",
            "quantization_config.quant_method", "expected \"fp8\""},
           {R"({"quant_method": "fp8", "fmt": "e5m2",
                "weight_block_size": [128, 128]})",
            "quantization_config.fmt", "only \"e4m3\""},
           {R"({"quant_method": "fp8", "weight_block_size": [64, 64]})",
            "quantization_config.weight_block_size",
            "[64, 64]; only [128, 128]"},
           {R"({"quant_method": "fp8", "activation_scheme": "static",
                "weight_block_size": [128, 128]})",
            "quantization_config.activation_scheme", "only \"dynamic\""},
       }) {
    SCOPED_TRACE(c.field);
    expectMentions(
        parseError(with(tinyFields(), "quantization_config", c.value)),
        {kSource, c.field, c.expected});
  }
  expectMentions(parseError(with(tinyFields(), "rope_scaling",
                                 R"({"type": "linear", "factor": 2})")),
                 {kSource, "rope_scaling.type", "\"linear\"", "yarn"});
}

TEST(ConfigTest, LoadConfigNamesTheFile) {
  kiln::testing::ScratchDir scratch;
  const fs::path &dir = scratch.path();
  expectMentions(errorOf([&] { kiln::loadConfig(dir); }),
                 {(dir / "config.json").string(), "cannot open"});

  std::ofstream(dir / "config.json")
      << render(without(tinyFields(), "n_group"));
  expectMentions(errorOf([&] { kiln::loadConfig(dir); }),
                 {(dir / "config.json").string(), "\"n_group\"", "missing"});

  std::ofstream(dir / "config.json") << render(tinyFields());
  EXPECT_EQ(kiln::loadConfig(dir).hiddenSize, 256);
}

} // namespace
