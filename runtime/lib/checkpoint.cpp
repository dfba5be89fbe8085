//===- checkpoint.cpp - DeepSeek-V3 checkpoints on disk -------------------===//

#include "kiln/checkpoint.h"

#include "kiln/error.h"
#include "kiln/fp8.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace kiln {

namespace {

using Json = nlohmann::json;

/// Problems listed in one error before the rest are summarized: a config for
/// the wrong model can mismatch tens of thousands of tensors.
constexpr size_t kMaxListedProblems = 64;

std::string joinProblems(const std::string &headline,
                         const std::vector<std::string> &problems) {
  std::string message = headline + " (" + std::to_string(problems.size()) +
                        (problems.size() == 1 ? " problem):" : " problems):");
  for (size_t i = 0; i < problems.size() && i < kMaxListedProblems; ++i)
    message += "\n  " + problems[i];
  if (problems.size() > kMaxListedProblems)
    message += "\n  ... and " +
               std::to_string(problems.size() - kMaxListedProblems) + " more";
  return message;
}

std::string describe(DType dtype, const std::vector<int64_t> &shape) {
  return std::string(dtypeName(dtype)) + " " + formatShape(shape);
}

/// Reads model.safetensors.index.json into tensor name -> shard file name.
std::map<std::string, std::string>
readWeightMap(const std::filesystem::path &indexPath) {
  const std::string where = indexPath.string() + ": ";
  std::ifstream in(indexPath, std::ios::binary);
  if (!in)
    throw Error(where + "cannot open the shard index");
  std::ostringstream text;
  text << in.rdbuf();
  Json index;
  try {
    index = Json::parse(text.str());
  } catch (const Json::exception &e) {
    throw Error(where + "not valid JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") ||
      !index["weight_map"].is_object())
    throw Error(where + "expected an object with a \"weight_map\" object");
  std::map<std::string, std::string> weightMap;
  for (const auto &[name, shard] : index["weight_map"].items()) {
    if (!shard.is_string())
      throw Error(where + "weight_map entry \"" + name +
                  "\" must be a file name string");
    std::string file = shard.get<std::string>();
    // Shards live in the model directory itself; a path must not reach
    // outside it.
    if (file.empty() || file == "." || file == ".." ||
        file.find('/') != std::string::npos)
      throw Error(where + "weight_map entry \"" + name + "\" names shard \"" +
                  file + "\"; expected a file name in the model directory");
    weightMap.emplace(name, std::move(file));
  }
  if (weightMap.empty())
    throw Error(where + "\"weight_map\" lists no tensors");
  return weightMap;
}

std::vector<DType> allowedDTypes(TensorFormat format, bool quantized) {
  switch (format) {
  case TensorFormat::BF16:
    return {DType::BF16};
  case TensorFormat::F32:
    return {DType::F32};
  case TensorFormat::Linear:
    return {quantized ? DType::F8_E4M3 : DType::BF16};
  case TensorFormat::LinearMaybeQuantized:
    if (quantized)
      return {DType::BF16, DType::F8_E4M3};
    return {DType::BF16};
  }
  return {};
}

std::string dtypeList(const std::vector<DType> &dtypes) {
  std::string text;
  for (size_t i = 0; i < dtypes.size(); ++i)
    text += (i ? " or " : "") + std::string(dtypeName(dtypes[i]));
  return text;
}

} // namespace

std::string scaleInvName(const std::string &weightName) {
  return weightName + "_scale_inv";
}

std::vector<int64_t> scaleInvShape(const std::vector<int64_t> &weightShape) {
  std::vector<int64_t> shape;
  for (int64_t dim : weightShape)
    shape.push_back(scaleBlocks(dim));
  return shape;
}

std::vector<ExpectedTensor> expectedTensors(const ModelConfig &c) {
  std::vector<ExpectedTensor> tensors;
  auto add = [&](std::string name, std::vector<int64_t> shape,
                 TensorFormat format) {
    tensors.push_back({std::move(name), std::move(shape), format});
  };
  const int64_t hidden = c.hiddenSize;
  const int64_t heads = c.numAttentionHeads;
  const auto linear = TensorFormat::Linear;
  const auto bf16 = TensorFormat::BF16;

  add("model.embed_tokens.weight", {c.vocabSize, hidden}, bf16);
  for (int64_t layer = 0; layer < c.numCheckpointLayers(); ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    if (layer >= c.numHiddenLayers) {
      // MTP module: combines the next token's embedding with the last hidden
      // state, then runs a full decoder block and its own output head.
      add(p + "embed_tokens.weight", {c.vocabSize, hidden}, bf16);
      add(p + "enorm.weight", {hidden}, bf16);
      add(p + "hnorm.weight", {hidden}, bf16);
      add(p + "eh_proj.weight", {hidden, 2 * hidden},
          TensorFormat::LinearMaybeQuantized);
    }
    add(p + "input_layernorm.weight", {hidden}, bf16);
    if (c.qLoraRank > 0) {
      add(p + "self_attn.q_a_proj.weight", {c.qLoraRank, hidden}, linear);
      add(p + "self_attn.q_a_layernorm.weight", {c.qLoraRank}, bf16);
      add(p + "self_attn.q_b_proj.weight", {heads * c.qkHeadDim(), c.qLoraRank},
          linear);
    } else {
      add(p + "self_attn.q_proj.weight", {heads * c.qkHeadDim(), hidden},
          linear);
    }
    add(p + "self_attn.kv_a_proj_with_mqa.weight",
        {c.kvLoraRank + c.qkRopeHeadDim, hidden}, linear);
    add(p + "self_attn.kv_a_layernorm.weight", {c.kvLoraRank}, bf16);
    add(p + "self_attn.kv_b_proj.weight",
        {heads * (c.qkNopeHeadDim + c.vHeadDim), c.kvLoraRank}, linear);
    add(p + "self_attn.o_proj.weight", {hidden, heads * c.vHeadDim}, linear);
    add(p + "post_attention_layernorm.weight", {hidden}, bf16);

    auto addMlp = [&](const std::string &prefix, int64_t intermediate) {
      add(prefix + "gate_proj.weight", {intermediate, hidden}, linear);
      add(prefix + "up_proj.weight", {intermediate, hidden}, linear);
      add(prefix + "down_proj.weight", {hidden, intermediate}, linear);
    };
    if (c.isMoELayer(layer)) {
      add(p + "mlp.gate.weight", {c.nRoutedExperts, hidden}, bf16);
      if (c.topkMethod == "noaux_tc")
        add(p + "mlp.gate.e_score_correction_bias", {c.nRoutedExperts},
            TensorFormat::F32);
      for (int64_t e = 0; e < c.nRoutedExperts; ++e)
        addMlp(p + "mlp.experts." + std::to_string(e) + ".",
               c.moeIntermediateSize);
      if (c.nSharedExperts > 0)
        addMlp(p + "mlp.shared_experts.",
               c.moeIntermediateSize * c.nSharedExperts);
    } else {
      addMlp(p + "mlp.", c.intermediateSize);
    }
    if (layer >= c.numHiddenLayers) {
      add(p + "shared_head.norm.weight", {hidden}, bf16);
      add(p + "shared_head.head.weight", {c.vocabSize, hidden}, bf16);
    }
  }
  add("model.norm.weight", {hidden}, bf16);
  if (!c.tieWordEmbeddings)
    add("lm_head.weight", {c.vocabSize, hidden}, bf16);
  return tensors;
}

Checkpoint::Checkpoint(const std::filesystem::path &dir) : modelDir(dir) {
  modelConfig = loadConfig(modelDir);
  const std::string where = modelDir.string() + ": ";

  // Tensor name -> shard file name, from the index or the single file.
  std::map<std::string, std::string> weightMap;
  std::filesystem::path indexPath = modelDir / kIndexFileName;
  // error_code overloads: an unreadable directory is reported as missing
  // files below, never as a std::filesystem exception.
  std::error_code ignored;
  bool indexed = std::filesystem::exists(indexPath, ignored);
  std::set<std::string> shardNames;
  if (indexed) {
    weightMap = readWeightMap(indexPath);
    for (const auto &[name, shard] : weightMap)
      shardNames.insert(shard);
  } else {
    if (!std::filesystem::exists(modelDir / kSingleFileName, ignored))
      throw Error(where + "no weights: expected " + kIndexFileName +
                  " with its shards, or " + kSingleFileName);
    shardNames.insert(kSingleFileName);
  }

  // All missing shards at once, so one download fix covers them.
  std::vector<std::string> missingShards;
  for (const std::string &shard : shardNames) {
    std::filesystem::path path = modelDir / shard;
    if (!std::filesystem::is_regular_file(path, ignored)) {
      size_t count = 0;
      for (const auto &entry : weightMap)
        count += entry.second == shard;
      missingShards.push_back("missing shard file " + path.string() +
                              " (holds " + std::to_string(count) +
                              " tensors per " + kIndexFileName + ")");
    }
  }
  if (!missingShards.empty())
    throw Error(
        joinProblems(where + "cannot open the checkpoint", missingShards));

  std::vector<std::string> problems;
  std::map<std::string, const TensorView *> available;
  for (const std::string &shardName : shardNames) {
    shards.push_back(std::make_unique<SafetensorsFile>(modelDir / shardName));
    const SafetensorsFile &shard = *shards.back();
    for (const TensorView &view : shard.tensors()) {
      if (!indexed) {
        available.emplace(view.name, &view);
        continue;
      }
      auto listed = weightMap.find(view.name);
      if (listed == weightMap.end())
        problems.push_back("tensor " + view.name + " in " + shardName +
                           " is not listed in " + kIndexFileName);
      else if (listed->second == shardName)
        available.emplace(view.name, &view);
      else
        problems.push_back("tensor " + view.name + " is in " + shardName +
                           " but " + kIndexFileName + " places it in " +
                           listed->second);
    }
  }
  for (const auto &[name, shardName] : weightMap)
    if (!available.count(name))
      problems.push_back("tensor " + name + ": " + kIndexFileName +
                         " places it in " + shardName +
                         ", which does not contain it");

  // Compare with what the config implies; every tensor that matches an
  // expectation is consumed, and the rest are unexpected.
  const bool quantized = modelConfig.quantization.has_value();
  std::set<std::string> consumed;
  auto checkTensor =
      [&](const std::string &name, const std::vector<int64_t> &shape,
          const std::vector<DType> &dtypes) -> const TensorView * {
    auto it = available.find(name);
    if (it == available.end()) {
      if (!weightMap.count(name)) // else reported above
        problems.push_back("missing tensor " + name + " (expected " +
                           dtypeList(dtypes) + " " + formatShape(shape) + ")");
      return nullptr;
    }
    consumed.insert(name);
    const TensorView &view = *it->second;
    bool dtypeOk =
        std::find(dtypes.begin(), dtypes.end(), view.dtype) != dtypes.end();
    if (!dtypeOk || view.shape != shape) {
      problems.push_back("tensor " + name + " in " +
                         view.file->filename().string() + " is " +
                         describe(view.dtype, view.shape) + ", expected " +
                         dtypeList(dtypes) + " " + formatShape(shape));
      return nullptr;
    }
    return &view;
  };
  for (const ExpectedTensor &expected : expectedTensors(modelConfig)) {
    std::string scaleName = scaleInvName(expected.name);
    const TensorView *view =
        checkTensor(expected.name, expected.shape,
                    allowedDTypes(expected.format, quantized));
    if (view && view->dtype == DType::F8_E4M3)
      checkTensor(scaleName, scaleInvShape(expected.shape), {DType::F32});
    else if (!view && available.count(expected.name))
      // The weight is already reported; its scales are not a second problem.
      consumed.insert(scaleName);
  }
  for (const auto &[name, view] : available)
    if (!consumed.count(name))
      problems.push_back("unexpected tensor " + name + " (" +
                         describe(view->dtype, view->shape) + ") in " +
                         view->file->filename().string());
  if (!problems.empty())
    throw Error(joinProblems(
        where + "checkpoint does not match " + kConfigFileName, problems));
  byName.insert(available.begin(), available.end());
}

Checkpoint::~Checkpoint() = default;

std::vector<std::filesystem::path> Checkpoint::shardPaths() const {
  std::vector<std::filesystem::path> paths;
  for (const auto &shard : shards)
    paths.push_back(shard->path());
  return paths;
}

std::vector<std::string> Checkpoint::tensorNames() const {
  std::vector<std::string> names;
  for (const auto &entry : byName)
    names.push_back(entry.first);
  std::sort(names.begin(), names.end());
  return names;
}

uint64_t Checkpoint::totalTensorBytes() const {
  uint64_t total = 0;
  for (const auto &entry : byName)
    total += entry.second->byteSize;
  return total;
}

bool Checkpoint::contains(const std::string &name) const {
  return byName.count(name) != 0;
}

const TensorView &Checkpoint::tensor(const std::string &name) const {
  auto it = byName.find(name);
  if (it == byName.end())
    throw Error(modelDir.string() + ": the checkpoint has no tensor \"" + name +
                "\"");
  return *it->second;
}

const TensorView *Checkpoint::scaleInv(const std::string &name) const {
  if (tensor(name).dtype != DType::F8_E4M3)
    return nullptr;
  return &tensor(scaleInvName(name));
}

std::vector<float>
Checkpoint::loadFloat(const std::string &name,
                      const std::vector<int64_t> &shape) const {
  const TensorView &view = tensor(name);
  if (view.shape != shape)
    throw Error(view.file->string() + ": tensor \"" + name + "\" is " +
                describe(view.dtype, view.shape) + ", but " +
                formatShape(shape) + " was requested");
  if (view.dtype != DType::F8_E4M3)
    return decodeFloat(view);
  // Validation guaranteed a 2-D weight with matching F32 scales.
  std::vector<float> scales = decodeFloat(*scaleInv(name));
  std::vector<float> values(static_cast<size_t>(numElements(shape)));
  dequantizeWeightBlocks(view.data, scales.data(), shape[0], shape[1],
                         values.data());
  return values;
}

} // namespace kiln
