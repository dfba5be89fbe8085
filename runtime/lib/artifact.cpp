//===- artifact.cpp - the compiled model artifact (.kiln) -----------------===//
//
// The container and manifest of compiler/docs/artifact.md. Reading never
// trusts the file: every length and offset is checked against the bytes
// actually present before it is used, every manifest field is type-checked
// with its full path in the message, and the result is validated as a whole
// before it is returned, so a caller never sees a half-read artifact.
//
//===----------------------------------------------------------------------===//

#include "kiln/artifact.h"
#include "kiln/expert_placement.h"

#include "kiln/error.h"
#include "kiln/fnv1a.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <system_error>

#include <unistd.h>

namespace kiln {

namespace {

using Json = nlohmann::json;

constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'A', 'R', 'T', '\0'};
constexpr size_t kHeaderBytes = 24;
constexpr uint64_t kBlobAlignment = 256;
constexpr uint64_t kBufferAlignment = 256;
constexpr const char *kFormatName = "kiln-artifact";

const std::set<std::string> kKnownOps = {
    "embed",         "rms_norm",     "quantize",      "gemm",
    "matmul",        "add",          "mla_attention", "swiglu",
    "moe_route",     "moe_dispatch", "grouped_gemm",  "moe_combine",
    "select_rows",   "event_record", "event_wait",    "ep_slots",
    "ep_all_to_all", "ep_group",     "ep_ungroup"};
/// Steps of an expert-parallel MoE layer (artifact.md "Expert parallelism").
const std::set<std::string> kExpertParallelOps = {"ep_slots", "ep_all_to_all",
                                                  "ep_group", "ep_ungroup"};
const std::set<std::string> kEventOps = {"event_record", "event_wait"};
const std::set<std::string> kKernelOps = {"gemm", "grouped_gemm"};
const std::set<std::string> kBufferDtypes = {"f32", "bf16", "f8e4m3", "i32"};
const std::set<std::string> kWeightDtypes = {"f8e4m3", "bf16", "f32"};
const std::set<std::string> kWeightTransforms = {"none", "bf16", "f32"};
const std::set<std::string> kSymbolicRows = {"T", "R", "S", "E1", "X"};
const std::set<std::string> kKvCacheDtypes = {"bf16", "fp8"};

std::string quote(const std::string &text) { return "\"" + text + "\""; }

std::string joined(const std::set<std::string> &names) {
  std::string out;
  for (const std::string &name : names)
    out += (out.empty() ? "" : ", ") + name;
  return out;
}

uint64_t alignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

uint32_t readU32(const std::string &bytes, size_t at) {
  uint32_t value = 0;
  for (int i = 3; i >= 0; --i)
    value = value << 8 | static_cast<unsigned char>(bytes[at + i]);
  return value;
}

uint64_t readU64(const std::string &bytes, size_t at) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i)
    value = value << 8 | static_cast<unsigned char>(bytes[at + i]);
  return value;
}

void appendLittleEndian(std::string &out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i)
    out.push_back(static_cast<char>(value >> (8 * i) & 0xff));
}

size_t elementBytes(const std::string &dtype) {
  if (dtype == "f32" || dtype == "i32")
    return 4;
  if (dtype == "bf16")
    return 2;
  return 1; // f8e4m3
}

/// A decimal row count: digits only, positive, fits int64.
bool parseDecimalRows(const std::string &text, int64_t &rows) {
  if (text.empty() || text.size() > 18 ||
      !std::all_of(text.begin(), text.end(),
                   [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  rows = std::stoll(text);
  return rows > 0;
}

} // namespace

int64_t microBatchBegin(int64_t rows, int64_t part, int64_t parts) {
  return rows * part / parts;
}

int64_t microBatchRows(int64_t rows, int64_t part, int64_t parts) {
  return microBatchBegin(rows, part + 1, parts) -
         microBatchBegin(rows, part, parts);
}

bool parseRowSymbol(const std::string &rows, RowSymbol &symbol) {
  symbol = RowSymbol();
  if (kSymbolicRows.count(rows)) {
    symbol.base = rows;
    return true;
  }
  if (parseDecimalRows(rows, symbol.count))
    return true;
  // "T.p/n", "R.p/n" or "X.p/n".
  size_t dot = rows.find('.'), slash = rows.find('/');
  if (dot != 1 || slash == std::string::npos || slash < dot + 2)
    return false;
  std::string base = rows.substr(0, 1);
  int64_t part = 0, parts = 0;
  std::string partText = rows.substr(dot + 1, slash - dot - 1);
  bool digits = std::all_of(partText.begin(), partText.end(),
                            [](char c) { return c >= '0' && c <= '9'; });
  if ((base != "T" && base != "R" && base != "X") || !digits ||
      partText.size() > 9 || !parseDecimalRows(rows.substr(slash + 1), parts))
    return false;
  part = std::stoll(partText);
  if (parts < 2 || part >= parts)
    return false;
  symbol.base = base;
  symbol.part = part;
  symbol.parts = parts;
  return true;
}

std::string microBatchRowSymbol(const std::string &base, int64_t part,
                                int64_t parts) {
  return base + "." + std::to_string(part) + "/" + std::to_string(parts);
}

namespace {

std::string formatNumber(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}

//===----------------------------------------------------------------------===//
// Reading the manifest
//===----------------------------------------------------------------------===//

/// Typed access to one JSON object of the manifest; errors name the origin
/// and the field's full path (e.g. "plans.decode.buffers[3].cols").
class Fields {
public:
  Fields(const Json &object, const std::string &origin, std::string path)
      : node(object), origin(origin), path(std::move(path)) {
    if (!node.is_object())
      throw Error(
          origin + ": manifest " +
          (this->path.empty() ? "" : "field " + quote(this->path) + " ") +
          "must be an object, got " + kind(node));
  }

  [[noreturn]] void fail(const std::string &field,
                         const std::string &problem) const {
    throw Error(origin + ": manifest field " + quote(fieldPath(field)) + " " +
                problem);
  }

  std::string fieldPath(const std::string &field) const {
    return path.empty() ? field : path + "." + field;
  }

  const Json *find(const std::string &field) const {
    auto it = node.find(field);
    return it == node.end() ? nullptr : &*it;
  }

  const Json &require(const std::string &field) const {
    const Json *value = find(field);
    if (!value)
      fail(field, "is missing");
    return *value;
  }

  std::string string(const std::string &field) const {
    const Json &value = require(field);
    if (!value.is_string())
      fail(field, "must be a string, got " + kind(value));
    return value.get<std::string>();
  }

  std::string optionalString(const std::string &field,
                             const std::string &fallback) const {
    return find(field) ? string(field) : fallback;
  }

  int64_t integer(const std::string &field) const {
    return toInteger(field, require(field));
  }

  int64_t optionalInteger(const std::string &field, int64_t fallback) const {
    return find(field) ? integer(field) : fallback;
  }

  int intField(const std::string &field) const {
    int64_t value = integer(field);
    if (value < std::numeric_limits<int>::min() ||
        value > std::numeric_limits<int>::max())
      fail(field, "is out of range: " + std::to_string(value));
    return static_cast<int>(value);
  }

  uint64_t unsignedInteger(const std::string &field) const {
    const Json &value = require(field);
    if (value.is_number_unsigned())
      return value.get<uint64_t>();
    if (value.is_number_integer())
      fail(field, "must not be negative, got " + value.dump());
    fail(field, "must be an integer, got " + kind(value));
  }

  int64_t toInteger(const std::string &field, const Json &value) const {
    if (value.is_number_unsigned()) {
      if (value.get<uint64_t>() >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(field, "is too large: " + value.dump());
      return static_cast<int64_t>(value.get<uint64_t>());
    }
    if (!value.is_number_integer())
      fail(field, "must be an integer, got " + kind(value));
    return value.get<int64_t>();
  }

  const Json &array(const std::string &field) const {
    const Json &value = require(field);
    if (!value.is_array())
      fail(field, "must be an array, got " + kind(value));
    return value;
  }

  /// An optional array; absent reads as empty.
  const Json &optionalArray(const std::string &field) const {
    static const Json empty = Json::array();
    return find(field) ? array(field) : empty;
  }

  Fields object(const std::string &field) const {
    return Fields(require(field), origin, fieldPath(field));
  }

  Fields element(const std::string &field, size_t index) const {
    return Fields(require(field)[index], origin,
                  fieldPath(field) + "[" + std::to_string(index) + "]");
  }

  const Json &json() const { return node; }

  static std::string kind(const Json &value) {
    switch (value.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "a boolean";
    case Json::value_t::string:
      return "a string";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::object:
      return "an object";
    case Json::value_t::number_float:
      return "a non-integer number " + value.dump();
    default:
      return "a number";
    }
  }

private:
  const Json &node;
  const std::string &origin;
  std::string path;
};

PlanTensor readTensor(const Fields &fields) {
  PlanTensor tensor;
  tensor.buffer = fields.string("buffer");
  tensor.col = fields.optionalInteger("col", 0);
  tensor.cols = fields.optionalInteger("cols", 0);
  const Json &part = fields.optionalArray("micro_batch");
  if (!part.empty()) {
    if (part.size() != 2 || !part[0].is_number_integer() ||
        !part[1].is_number_integer())
      fields.fail("micro_batch", "must be [part, parts], got " + part.dump());
    tensor.part = part[0].get<int64_t>();
    tensor.parts = part[1].get<int64_t>();
  }
  return tensor;
}

PlanAttrs readAttrs(const Fields &fields) {
  PlanAttrs attrs;
  for (auto it = fields.json().begin(); it != fields.json().end(); ++it) {
    const std::string &name = it.key();
    const Json &value = it.value();
    if (value.is_boolean()) {
      // A flag such as `norm_topk_prob`, written by hand as true/false.
      attrs.numbers[name] = value.get<bool>() ? 1.0 : 0.0;
    } else if (value.is_number()) {
      attrs.numbers[name] = value.get<double>();
    } else if (value.is_string()) {
      attrs.strings[name] = value.get<std::string>();
    } else if (value.is_array()) {
      std::vector<double> &list = attrs.lists[name];
      for (const Json &item : value) {
        if (!item.is_number())
          fields.fail(name, "must be a list of numbers, but holds " +
                                Fields::kind(item));
        list.push_back(item.get<double>());
      }
    } else {
      fields.fail(name, "must be a number, a string or a list of numbers, "
                        "got " +
                            Fields::kind(value));
    }
  }
  return attrs;
}

PlanStep readStep(const Fields &fields) {
  PlanStep step;
  step.op = fields.string("op");
  step.stream = fields.optionalInteger("stream", 0);
  step.event = fields.optionalInteger("event", -1);
  for (const char *role : {"inputs", "outputs"}) {
    std::vector<PlanTensor> &tensors =
        std::string(role) == "inputs" ? step.inputs : step.outputs;
    size_t count = fields.array(role).size();
    for (size_t i = 0; i < count; ++i)
      tensors.push_back(readTensor(fields.element(role, i)));
  }
  const Json &weights = fields.optionalArray("weights");
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!weights[i].is_string())
      fields.fail("weights[" + std::to_string(i) + "]",
                  "must be a string, got " + Fields::kind(weights[i]));
    step.weights.push_back(weights[i].get<std::string>());
  }
  step.kernel = fields.optionalString("kernel", "");
  if (fields.find("attrs"))
    step.attrs = readAttrs(fields.object("attrs"));
  return step;
}

LaunchPlan readPlan(const Fields &fields) {
  LaunchPlan plan;
  plan.maxTokens = fields.integer("max_tokens");
  plan.maxSequences = fields.integer("max_sequences");
  plan.arenaBytes = fields.unsignedInteger("arena_bytes");
  plan.streams = fields.optionalInteger("streams", 1);
  plan.events = fields.optionalInteger("events", 0);
  size_t buffers = fields.array("buffers").size();
  for (size_t i = 0; i < buffers; ++i) {
    Fields b = fields.element("buffers", i);
    PlanBuffer buffer;
    buffer.name = b.string("name");
    buffer.dtype = b.string("dtype");
    const Json &rows = b.require("rows");
    // "rows" is a symbol or a decimal count; accept a JSON integer for the
    // latter too, as a hand-written plan would have it.
    if (rows.is_number_integer())
      buffer.rows = std::to_string(b.integer("rows"));
    else
      buffer.rows = b.string("rows");
    buffer.cols = b.integer("cols");
    buffer.offset = b.unsignedInteger("offset");
    buffer.bytes = b.unsignedInteger("bytes");
    plan.buffers.push_back(std::move(buffer));
  }
  size_t steps = fields.array("steps").size();
  for (size_t i = 0; i < steps; ++i)
    plan.steps.push_back(readStep(fields.element("steps", i)));
  return plan;
}

/// A blob of the container: where its bytes lie in the file.
struct BlobRange {
  uint64_t offset = 0;
  uint64_t size = 0;
};

/// The kernel blob named `field` of kernel `k`, copied out of the file.
std::string blobBytes(const Fields &k, const std::string &field,
                      const std::map<std::string, BlobRange> &blobs,
                      const std::string &bytes) {
  std::string name = k.string(field);
  auto it = blobs.find(name);
  if (it == blobs.end())
    k.fail(field, "names the blob " + quote(name) +
                      ", which is not in the \"blobs\" table");
  return bytes.substr(it->second.offset, it->second.size);
}

Artifact readManifest(const Json &manifest, const std::string &bytes,
                      uint64_t manifestEnd, uint32_t headerVersion,
                      const std::string &origin) {
  Fields root(manifest, origin, "");
  std::string format = root.string("format");
  if (format != kFormatName)
    root.fail("format",
              "is " + quote(format) + ", expected " + quote(kFormatName));
  int64_t version = root.integer("format_version");
  if (version != headerVersion)
    root.fail("format_version", "is " + std::to_string(version) +
                                    " but the container header says " +
                                    std::to_string(headerVersion));

  Artifact artifact;
  artifact.producer = root.string("producer");
  artifact.source = root.string("source");
  artifact.targetArch = root.object("target").string("arch");

  Fields model = root.object("model");
  artifact.modelType = model.string("model_type");
  artifact.modelHash = model.string("hash");
  artifact.hiddenSize = model.integer("hidden_size");
  artifact.numHiddenLayers = model.integer("num_hidden_layers");
  artifact.vocabSize = model.integer("vocab_size");

  Fields options = root.object("options");
  artifact.options.maxBatch = options.integer("max_batch");
  artifact.options.maxSeqLen = options.integer("max_seq_len");
  artifact.options.prefillChunk = options.integer("prefill_chunk");
  artifact.options.kvCacheDtype = options.string("kv_cache_dtype");
  artifact.options.kvPageTokens = options.integer("kv_page_tokens");
  artifact.options.expertParallel = options.integer("ep");
  artifact.options.overlapMicroBatches =
      options.optionalInteger("overlap_micro_batches", 1);
  if (root.find("expert_parallel")) {
    Fields ep = root.object("expert_parallel");
    artifact.expertParallel.worldSize = ep.integer("world_size");
    artifact.expertParallel.slotsPerRank = ep.integer("slots_per_rank");
    const Json &placement = ep.array("placement");
    for (size_t i = 0; i < placement.size(); ++i)
      artifact.expertParallel.placement.push_back(static_cast<int>(
          ep.toInteger("placement[" + std::to_string(i) + "]", placement[i])));
  }

  // Blobs: after the manifest, aligned, inside the file.
  std::map<std::string, BlobRange> blobs;
  size_t blobCount = root.array("blobs").size();
  for (size_t i = 0; i < blobCount; ++i) {
    Fields b = root.element("blobs", i);
    std::string name = b.string("name");
    BlobRange range{b.unsignedInteger("offset"), b.unsignedInteger("size")};
    std::string what = "blob " + quote(name) + " (offset " +
                       std::to_string(range.offset) + ", " +
                       std::to_string(range.size) + " bytes)";
    if (range.offset % kBlobAlignment)
      throw Error(origin + ": " + what + " is not at a multiple of " +
                  std::to_string(kBlobAlignment));
    if (range.offset < manifestEnd)
      throw Error(origin + ": " + what + " overlaps the header or manifest (" +
                  std::to_string(manifestEnd) + " bytes)");
    if (range.offset > bytes.size() || range.size > bytes.size() - range.offset)
      throw Error(origin + ": " + what + " runs past the end of the file (" +
                  std::to_string(bytes.size()) +
                  " bytes): the file is truncated or corrupt");
    if (!blobs.emplace(name, range).second)
      throw Error(origin + ": blob " + quote(name) +
                  " appears twice in the \"blobs\" table");
  }

  size_t kernelCount = root.array("kernels").size();
  for (size_t i = 0; i < kernelCount; ++i) {
    Fields k = root.element("kernels", i);
    ArtifactKernel kernel;
    kernel.name = k.string("name");
    kernel.blockM = k.intField("block_m");
    kernel.blockN = k.intField("block_n");
    kernel.stages = k.intField("stages");
    kernel.consumers = k.intField("consumers");
    kernel.sharedMemoryBytes = k.intField("shared_memory_bytes");
    kernel.splitK = k.intField("split_k");
    kernel.clusterM = static_cast<int>(k.optionalInteger("cluster_m", 1));
    kernel.grouped = k.optionalString("grouped", "");
    kernel.epilogue = k.optionalString("epilogue", "");
    kernel.store = k.optionalString("store", "");
    kernel.split = k.optionalString("split", "");
    kernel.scaleA = k.optionalString("scale_a", "");
    kernel.griddepcontrol = k.optionalString("griddepcontrol", "");
    kernel.aBox = k.optionalString("a_box", "");
    kernel.cubin = blobBytes(k, "cubin", blobs, bytes);
    if (!k.optionalString("ptx", "").empty())
      kernel.ptx = blobBytes(k, "ptx", blobs, bytes);
    artifact.kernels.push_back(std::move(kernel));
  }

  size_t weightCount = root.array("weights").size();
  for (size_t i = 0; i < weightCount; ++i) {
    Fields w = root.element("weights", i);
    ArtifactWeight weight;
    weight.name = w.string("name");
    weight.dtype = w.string("dtype");
    const Json &shape = w.array("shape");
    for (size_t d = 0; d < shape.size(); ++d)
      weight.shape.push_back(
          w.toInteger("shape[" + std::to_string(d) + "]", shape[d]));
    weight.transform = w.string("transform");
    artifact.weights.push_back(std::move(weight));
  }

  Fields plans = root.object("plans");
  for (auto it = plans.json().begin(); it != plans.json().end(); ++it)
    artifact.plans[it.key()] = readPlan(plans.object(it.key()));
  return artifact;
}

/// Best effort, for the version message: the producer named by a manifest
/// of another format version, whose layout this build cannot know.
std::string producerOf(const std::string &bytes) {
  if (bytes.size() < kHeaderBytes)
    return "";
  uint64_t length = readU64(bytes, 16);
  if (length > bytes.size() - kHeaderBytes)
    return "";
  Json manifest = Json::parse(bytes.begin() + kHeaderBytes,
                              bytes.begin() + kHeaderBytes + length, nullptr,
                              /*allow_exceptions=*/false);
  if (manifest.is_object()) {
    auto it = manifest.find("producer");
    if (it != manifest.end() && it->is_string())
      return it->get<std::string>();
  }
  return "";
}

//===----------------------------------------------------------------------===//
// Writing the manifest
//===----------------------------------------------------------------------===//

Json tensorJson(const PlanTensor &tensor) {
  Json out = {{"buffer", tensor.buffer}};
  if (tensor.col != 0 || tensor.cols != 0) {
    out["col"] = tensor.col;
    out["cols"] = tensor.cols;
  }
  if (tensor.parts)
    out["micro_batch"] = {tensor.part, tensor.parts};
  return out;
}

Json planJson(const LaunchPlan &plan) {
  Json buffers = Json::array();
  for (const PlanBuffer &b : plan.buffers)
    buffers.push_back({{"name", b.name},
                       {"dtype", b.dtype},
                       {"rows", b.rows},
                       {"cols", b.cols},
                       {"offset", b.offset},
                       {"bytes", b.bytes}});
  Json steps = Json::array();
  for (const PlanStep &step : plan.steps) {
    Json inputs = Json::array(), outputs = Json::array();
    for (const PlanTensor &t : step.inputs)
      inputs.push_back(tensorJson(t));
    for (const PlanTensor &t : step.outputs)
      outputs.push_back(tensorJson(t));
    Json attrs = Json::object();
    for (const auto &[name, value] : step.attrs.numbers)
      attrs[name] = value;
    for (const auto &[name, value] : step.attrs.strings)
      attrs[name] = value;
    for (const auto &[name, value] : step.attrs.lists)
      attrs[name] = value;
    Json out = {{"op", step.op},
                {"inputs", inputs},
                {"outputs", outputs},
                {"weights", step.weights},
                {"attrs", attrs}};
    if (!step.kernel.empty())
      out["kernel"] = step.kernel;
    if (step.stream != 0)
      out["stream"] = step.stream;
    if (step.event >= 0)
      out["event"] = step.event;
    steps.push_back(std::move(out));
  }
  Json out = {{"max_tokens", plan.maxTokens},
              {"max_sequences", plan.maxSequences},
              {"arena_bytes", plan.arenaBytes},
              {"buffers", buffers},
              {"steps", steps}};
  if (plan.streams != 1 || plan.events != 0) {
    out["streams"] = plan.streams;
    out["events"] = plan.events;
  }
  return out;
}

/// A blob to write: its name and bytes.
struct BlobOut {
  std::string name;
  const std::string *data;
};

Json manifestJson(const Artifact &a, const std::vector<BlobOut> &blobs,
                  const std::vector<uint64_t> &offsets) {
  Json blobTable = Json::array();
  for (size_t i = 0; i < blobs.size(); ++i)
    blobTable.push_back({{"name", blobs[i].name},
                         {"offset", offsets[i]},
                         {"size", blobs[i].data->size()}});
  Json kernels = Json::array();
  for (const ArtifactKernel &k : a.kernels) {
    Json kernel = {{"name", k.name},
                   {"block_m", k.blockM},
                   {"block_n", k.blockN},
                   {"stages", k.stages},
                   {"consumers", k.consumers},
                   {"shared_memory_bytes", k.sharedMemoryBytes},
                   {"split_k", k.splitK},
                   {"cubin", k.name + ".cubin"}};
    if (!k.grouped.empty())
      kernel["grouped"] = k.grouped;
    if (k.clusterM != 1)
      kernel["cluster_m"] = k.clusterM;
    if (!k.epilogue.empty())
      kernel["epilogue"] = k.epilogue;
    if (!k.store.empty())
      kernel["store"] = k.store;
    if (!k.split.empty())
      kernel["split"] = k.split;
    if (!k.scaleA.empty())
      kernel["scale_a"] = k.scaleA;
    if (!k.griddepcontrol.empty())
      kernel["griddepcontrol"] = k.griddepcontrol;
    if (!k.aBox.empty())
      kernel["a_box"] = k.aBox;
    if (!k.ptx.empty())
      kernel["ptx"] = k.name + ".ptx";
    kernels.push_back(std::move(kernel));
  }
  Json weights = Json::array();
  for (const ArtifactWeight &w : a.weights)
    weights.push_back({{"name", w.name},
                       {"dtype", w.dtype},
                       {"shape", w.shape},
                       {"transform", w.transform}});
  Json plans = Json::object();
  for (const auto &[name, plan] : a.plans)
    plans[name] = planJson(plan);
  Json manifest = {{"format", kFormatName},
                   {"format_version", kArtifactFormatVersion},
                   {"producer", a.producer},
                   {"source", a.source},
                   {"target", {{"arch", a.targetArch}}},
                   {"model",
                    {{"model_type", a.modelType},
                     {"hash", a.modelHash},
                     {"hidden_size", a.hiddenSize},
                     {"num_hidden_layers", a.numHiddenLayers},
                     {"vocab_size", a.vocabSize}}},
                   {"options",
                    {{"max_batch", a.options.maxBatch},
                     {"max_seq_len", a.options.maxSeqLen},
                     {"prefill_chunk", a.options.prefillChunk},
                     {"kv_cache_dtype", a.options.kvCacheDtype},
                     {"kv_page_tokens", a.options.kvPageTokens},
                     {"ep", a.options.expertParallel},
                     {"overlap_micro_batches", a.options.overlapMicroBatches}}},
                   {"blobs", blobTable},
                   {"kernels", kernels},
                   {"weights", weights},
                   {"plans", plans}};
  if (a.expertParallel.enabled())
    manifest["expert_parallel"] = {
        {"world_size", a.expertParallel.worldSize},
        {"slots_per_rank", a.expertParallel.slotsPerRank},
        {"placement", a.expertParallel.placement}};
  return manifest;
}

//===----------------------------------------------------------------------===//
// Validation
//===----------------------------------------------------------------------===//

/// The operands artifact.md "Expert parallelism" gives each ep_* op: their
/// count, and the rows of the count and offset tables (W·S counts, W·S + 1
/// dispatch offsets, S + 1 local offsets) and of the exchanged rows (X).
template <typename Fail>
void validateExpertParallelStep(const Artifact &artifact,
                                const LaunchPlan &plan, const PlanStep &step,
                                const Fail &failStep) {
  const ArtifactExpertParallel &ep = artifact.expertParallel;
  if (!ep.enabled())
    failStep("needs the manifest's \"expert_parallel\" placement, which "
             "this artifact lacks");
  const std::string slots = std::to_string(ep.worldSize * ep.slotsPerRank);
  const std::string sendOffsets =
      std::to_string(ep.worldSize * ep.slotsPerRank + 1);
  const std::string localOffsets = std::to_string(ep.slotsPerRank + 1);
  std::vector<std::string> inputs, outputs; // expected rows; "" = any
  // A gathered exchange (artifact.md "Gathered exchanges") adds every
  // rank's send offsets, W · (W·S + 1), and gets its outputs back in X rows.
  auto gatherAttr = step.attrs.numbers.find("gather_tokens");
  const bool gathered =
      gatherAttr != step.attrs.numbers.end() && gatherAttr->second > 0;
  if (gatherAttr != step.attrs.numbers.end() &&
      (gatherAttr->second < 1 ||
       gatherAttr->second != static_cast<int64_t>(gatherAttr->second)))
    failStep("attribute \"gather_tokens\" must be a positive integer");
  const std::string gatheredOffsets =
      std::to_string(ep.worldSize * (ep.worldSize * ep.slotsPerRank + 1));
  if (step.op == "ep_slots") {
    inputs = {""};
    outputs = {""};
  } else if (step.op == "ep_all_to_all") {
    auto direction = step.attrs.strings.find("direction");
    if (direction == step.attrs.strings.end() ||
        (direction->second != "dispatch" && direction->second != "combine"))
      failStep("attribute \"direction\" must be \"dispatch\" or "
               "\"combine\"");
    if (direction->second == "dispatch") {
      inputs = {"R", "R", sendOffsets};
      outputs = {"X", "X", slots};
      if (gathered)
        outputs.push_back(gatheredOffsets);
    } else {
      inputs = {"X", slots, sendOffsets};
      outputs = {gathered ? "X" : "R"};
    }
  } else if (step.op == "ep_group") {
    inputs = {"X", "X", slots};
    outputs = {"X", "X", localOffsets};
    if (gathered)
      inputs.push_back(gatheredOffsets);
  } else { // ep_ungroup
    inputs = {"X", slots};
    outputs = {"X"};
    if (gathered)
      inputs.push_back(gatheredOffsets);
  }
  // A micro-batch's exchange (kilnc --overlap-micro-batches) has R.m/n and
  // X.m/n where a whole step's has R and X: the first such buffer's part
  // for all of them.
  std::string part;
  for (const auto *tensors : {&step.inputs, &step.outputs})
    for (const PlanTensor &tensor : *tensors) {
      const PlanBuffer *b = plan.findBuffer(tensor.buffer);
      RowSymbol symbol;
      if (part.empty() && b && parseRowSymbol(b->rows, symbol) &&
          symbol.parts && (symbol.base == "R" || symbol.base == "X"))
        part = b->rows.substr(1);
    }
  auto check = [&](const std::vector<PlanTensor> &tensors,
                   std::vector<std::string> rows, const char *role) {
    if (tensors.size() != rows.size())
      failStep("has " + std::to_string(tensors.size()) + " " + role + "s; " +
               step.op + " takes " + std::to_string(rows.size()));
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i] == "R" || rows[i] == "X")
        rows[i] += part;
      const PlanBuffer *b = plan.findBuffer(tensors[i].buffer);
      if (!rows[i].empty() && b->rows != rows[i])
        failStep(std::string(role) + " " + std::to_string(i) + " (buffer " +
                 quote(b->name) + ") has rows " + quote(b->rows) +
                 ", expected " + quote(rows[i]) + " (world_size " +
                 std::to_string(ep.worldSize) + ", slots_per_rank " +
                 std::to_string(ep.slotsPerRank) + ")");
    }
  };
  check(step.inputs, inputs, "input");
  check(step.outputs, outputs, "output");
}

void validatePlan(const Artifact &artifact, const std::string &planName,
                  const LaunchPlan &plan, const std::string &origin) {
  std::string where = origin + ": plan " + quote(planName);
  auto fail = [&](const std::string &problem) {
    throw Error(where + ": " + problem);
  };
  if (plan.maxTokens <= 0)
    fail("max_tokens must be positive, got " + std::to_string(plan.maxTokens));
  if (plan.maxSequences <= 0)
    fail("max_sequences must be positive, got " +
         std::to_string(plan.maxSequences));

  std::set<std::string> names;
  for (const PlanBuffer &b : plan.buffers) {
    std::string buffer = "buffer " + quote(b.name) + ": ";
    if (b.name.empty())
      fail("a buffer has an empty name");
    if (!names.insert(b.name).second)
      fail(buffer + "declared twice");
    if (!kBufferDtypes.count(b.dtype))
      fail(buffer + "dtype " + quote(b.dtype) + " is not one of " +
           joined(kBufferDtypes));
    RowSymbol symbol;
    if (!parseRowSymbol(b.rows, symbol))
      fail(buffer + "rows " + quote(b.rows) +
           " is not T, R, S, E1, X, a micro-batch part of T, R or X "
           "(\"T.0/2\") "
           "or a positive decimal count");
    int64_t rows = symbol.count;
    if (b.cols <= 0)
      fail(buffer + "cols must be positive, got " + std::to_string(b.cols));
    if (b.offset % kBufferAlignment)
      fail(buffer + "offset " + std::to_string(b.offset) +
           " is not a multiple of " + std::to_string(kBufferAlignment));
    if (b.offset > plan.arenaBytes || b.bytes > plan.arenaBytes - b.offset)
      fail(buffer + "bytes [" + std::to_string(b.offset) + ", " +
           std::to_string(b.offset) + " + " + std::to_string(b.bytes) +
           ") do not fit the arena of " + std::to_string(plan.arenaBytes) +
           " bytes");
    // Where the row count is known from the plan alone, the buffer must hold
    // it (R and E1 depend on the model's top_k and expert count).
    if (symbol.base == "T")
      rows = symbol.parts
                 ? microBatchRows(plan.maxTokens, symbol.part, symbol.parts)
                 : plan.maxTokens;
    else if (symbol.base == "S")
      rows = plan.maxSequences;
    if (rows > 0) {
      long double needed = static_cast<long double>(rows) * b.cols *
                           static_cast<long double>(elementBytes(b.dtype));
      if (needed > static_cast<long double>(b.bytes))
        fail(buffer + std::to_string(rows) + " x " + std::to_string(b.cols) +
             " " + b.dtype + " needs " +
             std::to_string(static_cast<unsigned long long>(needed)) +
             " bytes, but it has " + std::to_string(b.bytes));
    }
  }

  if (plan.streams < 1)
    fail("streams must be at least 1, got " + std::to_string(plan.streams));
  if (plan.events < 0)
    fail("events must not be negative, got " + std::to_string(plan.events));
  // Streams and events (artifact.md "Streams and micro-batches"): the step
  // that recorded each event, and each stream's steps so far.
  std::vector<int64_t> recordedBy(plan.events, -1);
  std::vector<int64_t> stepsOn(plan.streams, 0);
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    const PlanStep &step = plan.steps[i];
    std::string stepWhere = where + ", step " + std::to_string(i) + " (" +
                            (step.op.empty() ? "no op" : step.op) + "): ";
    auto failStep = [&](const std::string &problem) {
      throw Error(stepWhere + problem);
    };
    if (!kKnownOps.count(step.op))
      failStep("unknown op " + quote(step.op) +
               " (known: " + joined(kKnownOps) + ")");
    if (step.stream < 0 || step.stream >= plan.streams)
      failStep("runs on stream " + std::to_string(step.stream) +
               ", but the plan has " + std::to_string(plan.streams) +
               " stream" + (plan.streams == 1 ? "" : "s") + " (0 to " +
               std::to_string(plan.streams - 1) + ")");
    if (kEventOps.count(step.op)) {
      if (step.event < 0 || step.event >= plan.events)
        failStep("event " + std::to_string(step.event) +
                 " is not one of the plan's " + std::to_string(plan.events) +
                 " events");
      if (!step.inputs.empty() || !step.outputs.empty() ||
          !step.weights.empty())
        failStep("an event step has no inputs, outputs or weights");
      int64_t &recorder = recordedBy[step.event];
      if (step.op == "event_record") {
        if (recorder >= 0)
          failStep("records event " + std::to_string(step.event) +
                   ", already recorded by step " + std::to_string(recorder) +
                   " (each event is recorded once)");
        recorder = static_cast<int64_t>(i);
      } else if (recorder < 0) {
        failStep("waits for event " + std::to_string(step.event) +
                 ", which no earlier step records (a dangling wait)");
      } else if (plan.steps[recorder].stream == step.stream) {
        failStep("waits on stream " + std::to_string(step.stream) +
                 " for event " + std::to_string(step.event) +
                 ", recorded on the same stream by step " +
                 std::to_string(recorder));
      }
    } else if (step.event >= 0) {
      failStep("names event " + std::to_string(step.event) +
               ", but only event_record and event_wait take one");
    }
    // A stream other than 0 starts after work on stream 0 (the step inputs
    // are written there): its first step is a wait.
    if (stepsOn[step.stream]++ == 0 && step.stream != 0 &&
        step.op != "event_wait")
      failStep("is the first step on stream " + std::to_string(step.stream) +
               " but not an event_wait: the stream would not wait for the "
               "step's inputs");
    for (const char *role : {"input", "output"}) {
      const std::vector<PlanTensor> &tensors =
          std::string(role) == "input" ? step.inputs : step.outputs;
      for (size_t t = 0; t < tensors.size(); ++t) {
        const PlanTensor &tensor = tensors[t];
        std::string what = std::string(role) + " " + std::to_string(t) + " ";
        const PlanBuffer *buffer = plan.findBuffer(tensor.buffer);
        if (!buffer)
          failStep(what + "names an unknown buffer " + quote(tensor.buffer));
        if (tensor.parts != 0 &&
            (tensor.parts < 2 || tensor.part < 0 ||
             tensor.part >= tensor.parts || buffer->rows != "T"))
          failStep(what + "micro-batch [" + std::to_string(tensor.part) + ", " +
                   std::to_string(tensor.parts) +
                   "] must be part p of n >= 2 parts (0 <= p < n) of a "
                   "buffer of T rows; buffer " +
                   quote(buffer->name) + " has rows " + quote(buffer->rows));
        if (tensor.cols == 0 && tensor.col == 0)
          continue;
        if (tensor.col < 0 || tensor.cols <= 0 ||
            tensor.col > buffer->cols - tensor.cols)
          failStep(what + "slice [" + std::to_string(tensor.col) + ", " +
                   std::to_string(tensor.col) + " + " +
                   std::to_string(tensor.cols) + ") is not inside buffer " +
                   quote(buffer->name) + "'s " + std::to_string(buffer->cols) +
                   " columns");
      }
    }
    if (kExpertParallelOps.count(step.op))
      validateExpertParallelStep(artifact, plan, step, failStep);
    else if (step.op == "moe_dispatch" && step.attrs.numbers.count("groups") &&
             (step.attrs.numbers.at("groups") < 1 ||
              step.attrs.numbers.at("groups") > 1024))
      failStep("groups must be 1 to 1024");
    else if (step.op == "moe_combine" &&
             step.attrs.numbers.count("gather_tokens") &&
             step.inputs.size() != 4)
      failStep("combines a gathered exchange, which takes 4 inputs (rows, "
               "their positions, weights, the send offsets); it has " +
               std::to_string(step.inputs.size()));
    for (const std::string &weight : step.weights)
      if (std::none_of(
              artifact.weights.begin(), artifact.weights.end(),
              [&](const ArtifactWeight &w) { return w.name == weight; }))
        failStep("unknown weight " + quote(weight) +
                 " (not in the artifact's \"weights\")");
    if (kKernelOps.count(step.op)) {
      if (step.kernel.empty())
        failStep("names no kernel; " + step.op + " needs one");
      const ArtifactKernel *kernel = artifact.findKernel(step.kernel);
      if (!kernel)
        failStep("unknown kernel " + quote(step.kernel));
      // grouped_gemm launches a contiguous grouped kernel once; gemm a
      // plain one.
      std::string wanted = step.op == "grouped_gemm" ? "contiguous" : "";
      if (kernel->grouped != wanted)
        failStep("kernel " + quote(step.kernel) + " is " +
                 (kernel->grouped.empty() ? std::string("not grouped")
                                          : "grouped " + kernel->grouped) +
                 "; " + step.op + " needs " +
                 (wanted.empty() ? std::string("a plain kernel")
                                 : "a contiguous grouped kernel"));
      // A SwiGLU kernel reads the experts' gate and up weights (interleaved
      // at load) and writes I columns; every other kernel one weight.
      size_t weights = kernel->epilogue.empty() ? 1 : 2;
      if (step.weights.size() != weights)
        failStep("kernel " + quote(step.kernel) + " reads " +
                 std::to_string(weights) + " weight" +
                 (weights == 1 ? "" : "s (the experts' gate and up)") +
                 ", the step names " + std::to_string(step.weights.size()));
      // The quantized SwiGLU kernel writes codes and scales; the others one
      // output.
      size_t outputs = kernel->epilogue == "swiglu_quantize" ? 2 : 1;
      if (step.outputs.size() != outputs)
        failStep("kernel " + quote(step.kernel) + " writes " +
                 std::to_string(outputs) + " output" +
                 (outputs == 1 ? "" : "s (E4M3 codes and their scales)") +
                 ", the step names " + std::to_string(step.outputs.size()));
    } else if (!step.kernel.empty()) {
      failStep("names kernel " + quote(step.kernel) + ", but only " +
               joined(kKernelOps) + " run compiled kernels");
    }
    for (const auto &[name, value] : step.attrs.numbers)
      if (!std::isfinite(value))
        failStep("attribute " + quote(name) + " is not finite");
    for (const auto &[name, values] : step.attrs.lists)
      for (double value : values)
        if (!std::isfinite(value))
          failStep("attribute " + quote(name) + " holds a non-finite value");
  }
  // Every stream's last step is a record that a later step of stream 0
  // waits for: the plan's end (the logits, the next step's inputs, a CUDA
  // Graph's capture) follows all of its work.
  for (int64_t stream = 1; stream < plan.streams; ++stream) {
    int64_t last = -1;
    for (size_t i = 0; i < plan.steps.size(); ++i)
      if (plan.steps[i].stream == stream)
        last = static_cast<int64_t>(i);
    if (last < 0)
      continue;
    const PlanStep &step = plan.steps[last];
    bool joined = step.op == "event_record" &&
                  std::any_of(plan.steps.begin() + last + 1, plan.steps.end(),
                              [&](const PlanStep &s) {
                                return s.op == "event_wait" &&
                                       s.event == step.event && s.stream == 0;
                              });
    if (!joined)
      fail("step " + std::to_string(last) + " (" + step.op +
           ") is the last on stream " + std::to_string(stream) +
           " but is not an event_record that a later step of stream 0 "
           "waits for: the stream is never joined");
  }
}

} // namespace

//===----------------------------------------------------------------------===//
// Public API
//===----------------------------------------------------------------------===//

std::string modelHash(const ModelConfig &config) {
  std::string json = toJson(config);
  uint64_t hash = fnv1a64(json.data(), json.size());
  char text[32];
  std::snprintf(text, sizeof text, "fnv1a64:%016" PRIx64, hash);
  return text;
}

double PlanAttrs::number(const std::string &op, const std::string &name) const {
  auto it = numbers.find(name);
  if (it != numbers.end())
    return it->second;
  if (strings.count(name) || lists.count(name))
    throw Error(op + ": attribute " + quote(name) + " must be a number, not " +
                (strings.count(name) ? "a string" : "a list"));
  throw Error(op + ": attribute " + quote(name) + " is missing");
}

int64_t PlanAttrs::integer(const std::string &op,
                           const std::string &name) const {
  double value = number(op, name);
  // 2^63 is exactly representable; anything at or beyond it is not an int64.
  if (value != std::floor(value) || value < -9.2233720368547758e18 ||
      value >= 9.2233720368547758e18)
    throw Error(op + ": attribute " + quote(name) +
                " must be an integer, got " + formatNumber(value));
  return static_cast<int64_t>(value);
}

const std::vector<double> &PlanAttrs::list(const std::string &op,
                                           const std::string &name) const {
  auto it = lists.find(name);
  if (it != lists.end())
    return it->second;
  if (numbers.count(name) || strings.count(name))
    throw Error(op + ": attribute " + quote(name) +
                " must be a list of numbers, not " +
                (numbers.count(name) ? "a number" : "a string"));
  throw Error(op + ": attribute " + quote(name) + " is missing");
}

const PlanBuffer *LaunchPlan::findBuffer(const std::string &name) const {
  for (const PlanBuffer &buffer : buffers)
    if (buffer.name == name)
      return &buffer;
  return nullptr;
}

const ArtifactKernel *Artifact::findKernel(const std::string &name) const {
  for (const ArtifactKernel &kernel : kernels)
    if (kernel.name == name)
      return &kernel;
  return nullptr;
}

const std::string &Artifact::stepPlanName(int64_t tokens,
                                          int64_t sequences) const {
  static const std::string kDecodePlans[] = {"decode_small", "decode"};
  static const std::string kPrefill = "prefill";
  for (const std::string &name : kDecodePlans) {
    auto it = plans.find(name);
    if (it != plans.end() && tokens <= it->second.maxTokens &&
        sequences <= it->second.maxSequences)
      return name;
  }
  return kPrefill;
}

const LaunchPlan &Artifact::plan(const std::string &name) const {
  auto it = plans.find(name);
  if (it != plans.end())
    return it->second;
  std::string have;
  for (const auto &entry : plans)
    have += (have.empty() ? "" : ", ") + entry.first;
  throw Error("the artifact has no plan " + quote(name) +
              " (it has: " + (have.empty() ? "none" : have) + ")");
}

void validateArtifact(const Artifact &artifact, const std::string &origin) {
  auto fail = [&](const std::string &problem) {
    throw Error(origin + ": " + problem);
  };
  if (artifact.targetArch.empty())
    fail("the target architecture is empty");
  const std::string &hash = artifact.modelHash;
  if (!hash.empty() &&
      (hash.size() != 24 || hash.compare(0, 8, "fnv1a64:") != 0 ||
       !std::all_of(hash.begin() + 8, hash.end(), [](char c) {
         return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
       })))
    fail("model hash " + quote(hash) +
         " is not \"fnv1a64:\" and 16 lower-case hex digits");

  const ArtifactOptions &o = artifact.options;
  for (auto [name, value] :
       {std::pair<const char *, int64_t>{"max_batch", o.maxBatch},
        {"max_seq_len", o.maxSeqLen},
        {"prefill_chunk", o.prefillChunk},
        {"kv_page_tokens", o.kvPageTokens},
        {"ep", o.expertParallel},
        {"overlap_micro_batches", o.overlapMicroBatches}})
    if (value <= 0)
      fail(std::string("option ") + name + " must be positive, got " +
           std::to_string(value));
  if (!kKvCacheDtypes.count(o.kvCacheDtype))
    fail("option kv_cache_dtype " + quote(o.kvCacheDtype) + " is not one of " +
         joined(kKvCacheDtypes));

  std::set<std::string> kernelNames;
  for (const ArtifactKernel &k : artifact.kernels) {
    std::string kernel = "kernel " + quote(k.name) + ": ";
    if (k.name.empty())
      fail("a kernel has an empty name");
    if (!kernelNames.insert(k.name).second)
      fail(kernel + "declared twice");
    if (k.blockM <= 0 || k.blockN <= 0 || k.stages <= 0 || k.consumers <= 0)
      fail(kernel + "block_m, block_n, stages and consumers must be positive");
    if (k.splitK < 1)
      fail(kernel + "split_k must be at least 1, got " +
           std::to_string(k.splitK));
    if (!k.split.empty() &&
        (k.split != "tail" || k.splitK < 2 || !k.grouped.empty() ||
         !k.store.empty() || !k.epilogue.empty()))
      fail(kernel + "split " + quote(k.split) +
           " is not \"tail\" of a plain split-K kernel without a store or "
           "epilogue");
    if (!k.scaleA.empty() && (k.scaleA != "tma" || k.splitK != 1))
      fail(kernel + "scale_a " + quote(k.scaleA) +
           " is not \"tma\" of a kernel with split_k 1");
    if (!k.griddepcontrol.empty() && k.griddepcontrol != "wait")
      fail(kernel + "griddepcontrol " + quote(k.griddepcontrol) +
           " is not \"wait\"");
    if (!k.aBox.empty() && k.aBox != "min_m")
      fail(kernel + "a_box " + quote(k.aBox) + " is not \"min_m\"");
    if (k.clusterM != 1 && k.clusterM != 2)
      fail(kernel + "cluster_m must be 1 or 2, got " +
           std::to_string(k.clusterM));
    if (k.sharedMemoryBytes < 0)
      fail(kernel + "shared_memory_bytes must not be negative");
    if (!k.grouped.empty() && k.grouped != "contiguous" &&
        k.grouped != "masked")
      fail(kernel + "grouped must be \"contiguous\" or \"masked\", got " +
           quote(k.grouped));
    if (!k.epilogue.empty() &&
        ((k.epilogue != "swiglu" && k.epilogue != "swiglu_quantize") ||
         k.grouped.empty() || k.blockN != 128 || k.splitK != 1))
      fail(kernel + "epilogue " + quote(k.epilogue) +
           " is not \"swiglu\" or \"swiglu_quantize\" of a grouped kernel "
           "with block_n 128 and split_k 1");
    if (!k.store.empty() &&
        (k.store != "tma" || !k.epilogue.empty() || k.splitK != 1 ||
         k.blockN % 64 != 0 || (!k.grouped.empty() && k.blockN < 128)))
      fail(kernel + "store " + quote(k.store) +
           " is not \"tma\" of a kernel without epilogue, with split_k 1 "
           "and block_n a multiple of 64 (at least 128 if grouped)");
    if (k.cubin.empty())
      fail(kernel + "has no cubin");
  }

  std::set<std::string> weightNames;
  for (const ArtifactWeight &w : artifact.weights) {
    std::string weight = "weight " + quote(w.name) + ": ";
    if (w.name.empty())
      fail("a weight has an empty name");
    if (!weightNames.insert(w.name).second)
      fail(weight + "declared twice");
    if (!kWeightDtypes.count(w.dtype))
      fail(weight + "dtype " + quote(w.dtype) + " is not one of " +
           joined(kWeightDtypes));
    if (!kWeightTransforms.count(w.transform))
      fail(weight + "transform " + quote(w.transform) + " is not one of " +
           joined(kWeightTransforms));
    if (w.shape.empty() || std::any_of(w.shape.begin(), w.shape.end(),
                                       [](int64_t d) { return d <= 0; }))
      fail(weight + "shape must have positive dimensions");
  }

  const ArtifactExpertParallel &ep = artifact.expertParallel;
  if (ep.enabled()) {
    if (ep.worldSize != o.expertParallel)
      fail("expert_parallel.world_size " + std::to_string(ep.worldSize) +
           " is not option ep " + std::to_string(o.expertParallel));
    if (ep.slotsPerRank < 1 || static_cast<int64_t>(ep.placement.size()) !=
                                   ep.worldSize * ep.slotsPerRank)
      fail("expert_parallel: " + std::to_string(ep.placement.size()) +
           " placement entries for world_size " + std::to_string(ep.worldSize) +
           " x slots_per_rank " + std::to_string(ep.slotsPerRank));
    try {
      ExpertPlacement::fromSlots(
          ep.placement, static_cast<int>(ep.worldSize),
          *std::max_element(ep.placement.begin(), ep.placement.end()) + 1);
    } catch (const Error &e) {
      fail(std::string("expert_parallel: ") + e.what());
    }
  } else if (o.expertParallel != 1) {
    fail("option ep is " + std::to_string(o.expertParallel) +
         " but the manifest has no \"expert_parallel\" placement");
  }

  for (const auto &[name, plan] : artifact.plans)
    validatePlan(artifact, name, plan, origin);
}

Artifact parseArtifact(const std::string &bytes, const std::string &origin) {
  // The magic first, on what there is of it: a short file of another kind
  // is "not an artifact", not "a truncated artifact".
  if (std::memcmp(bytes.data(), kMagic,
                  std::min(bytes.size(), sizeof kMagic)) != 0)
    throw Error(origin + ": not a Kiln artifact (bad magic; expected "
                         "\"KILNART\\0\" at offset 0)");
  if (bytes.size() < kHeaderBytes)
    throw Error(origin + ": truncated at offset " +
                std::to_string(bytes.size()) +
                ": a Kiln artifact starts with " +
                std::to_string(kHeaderBytes) + " header bytes");
  uint32_t version = readU32(bytes, 8);
  if (version < kOldestArtifactFormatVersion ||
      version > kArtifactFormatVersion) {
    std::string producer = producerOf(bytes);
    throw Error(origin + ": artifact format version " +
                std::to_string(version) + " written by " +
                (producer.empty() ? "an unknown producer" : producer) +
                ", while this build reads versions " +
                std::to_string(kOldestArtifactFormatVersion) + " to " +
                std::to_string(kArtifactFormatVersion) +
                "; recompile it with this release's kilnc");
  }
  if (uint32_t reserved = readU32(bytes, 12))
    throw Error(origin + ": reserved header field at offset 12 is " +
                std::to_string(reserved) + ", expected 0: corrupt header");
  uint64_t length = readU64(bytes, 16);
  if (length > bytes.size() - kHeaderBytes)
    throw Error(origin + ": truncated at offset " +
                std::to_string(bytes.size()) + ": the header announces a " +
                std::to_string(length) + "-byte manifest from offset " +
                std::to_string(kHeaderBytes));

  Json manifest;
  try {
    manifest = Json::parse(bytes.begin() + kHeaderBytes,
                           bytes.begin() + kHeaderBytes + length);
  } catch (const Json::exception &error) {
    throw Error(origin + ": the manifest is not valid JSON: " + error.what());
  }
  Artifact artifact;
  try {
    artifact =
        readManifest(manifest, bytes, kHeaderBytes + length, version, origin);
    artifact.formatVersion = version;
  } catch (const Json::exception &error) {
    // Every access is type-checked first; this is a last line of defence.
    throw Error(origin + ": malformed manifest: " + error.what());
  }
  validateArtifact(artifact, origin);
  return artifact;
}

Artifact readArtifact(const std::filesystem::path &path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error))
    throw Error(path.string() + ": cannot read the artifact: " +
                (error ? error.message() : "not a regular file"));
  std::ifstream file(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(file)),
                    std::istreambuf_iterator<char>());
  if (!file && !file.eof())
    throw Error(path.string() +
                ": cannot read the artifact: " + std::strerror(errno));
  return parseArtifact(bytes, path.string());
}

std::string serializeArtifact(const Artifact &artifact) {
  validateArtifact(artifact, "artifact to write");
  std::vector<BlobOut> blobs;
  for (const ArtifactKernel &k : artifact.kernels) {
    blobs.push_back({k.name + ".cubin", &k.cubin});
    if (!k.ptx.empty())
      blobs.push_back({k.name + ".ptx", &k.ptx});
  }

  // The blob offsets are in the manifest, whose length decides where the
  // blobs start: lay them out from a start offset until the manifest fits
  // before it (the manifest grows with the offsets' digits, so this settles
  // within a few rounds).
  std::vector<uint64_t> offsets(blobs.size());
  std::string text;
  uint64_t start = 0;
  for (;;) {
    uint64_t at = start;
    for (size_t i = 0; i < blobs.size(); ++i) {
      offsets[i] = at;
      at = alignUp(at + blobs[i].data->size(), kBlobAlignment);
    }
    try {
      text = manifestJson(artifact, blobs, offsets).dump(1);
    } catch (const Json::exception &error) {
      throw Error("artifact to write: cannot encode the manifest: " +
                  std::string(error.what()));
    }
    uint64_t needed = alignUp(kHeaderBytes + text.size(), kBlobAlignment);
    if (blobs.empty() || needed == start)
      break;
    start = std::max(start, needed);
  }

  std::string out(kMagic, sizeof kMagic);
  appendLittleEndian(out, kArtifactFormatVersion, 4);
  appendLittleEndian(out, 0, 4);
  appendLittleEndian(out, text.size(), 8);
  out += text;
  for (size_t i = 0; i < blobs.size(); ++i) {
    out.resize(offsets[i], '\0');
    out += *blobs[i].data;
  }
  return out;
}

void writeArtifact(const Artifact &artifact,
                   const std::filesystem::path &path) {
  std::string bytes = serializeArtifact(artifact);
  std::filesystem::path temporary = path;
  temporary += ".tmp." + std::to_string(::getpid());
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    if (!file)
      throw Error(path.string() + ": cannot write the artifact (creating " +
                  temporary.string() + "): " + std::strerror(errno));
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    file.flush();
    if (!file) {
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      throw Error(path.string() +
                  ": cannot write the artifact: " + std::strerror(errno));
    }
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw Error(path.string() +
                ": cannot move the artifact into place: " + error.message());
  }
}

void checkArtifactMatchesModel(const Artifact &artifact,
                               const ModelConfig &config,
                               const std::string &artifactOrigin,
                               const std::string &configOrigin) {
  // A hand-written graph without a config records no hash: nothing to check.
  if (artifact.modelHash.empty())
    return;
  std::vector<std::string> mismatches;
  auto compare = [&](const char *field, const std::string &inArtifact,
                     const std::string &inConfig) {
    if (inArtifact != inConfig)
      mismatches.push_back(std::string(field) + " is " + inArtifact +
                           " in the artifact but " + inConfig +
                           " in the config");
  };
  compare("model_type", artifact.modelType, "deepseek_v3");
  compare("hidden_size", std::to_string(artifact.hiddenSize),
          std::to_string(config.hiddenSize));
  compare("num_hidden_layers", std::to_string(artifact.numHiddenLayers),
          std::to_string(config.numHiddenLayers));
  compare("vocab_size", std::to_string(artifact.vocabSize),
          std::to_string(config.vocabSize));
  std::string hash = modelHash(config);
  if (artifact.modelHash != hash)
    mismatches.push_back("model hash is " + artifact.modelHash +
                         " in the artifact but " + hash + " for the config" +
                         (mismatches.empty()
                              ? " (some other field of config.json differs)"
                              : ""));
  if (mismatches.empty())
    return;
  std::string message = artifactOrigin +
                        " was compiled for another model "
                        "than " +
                        configOrigin + ": ";
  for (size_t i = 0; i < mismatches.size(); ++i)
    message += (i ? "; " : "") + mismatches[i];
  throw Error(message + ". Recompile the artifact with kilnc for this config");
}

std::string describeArtifact(const Artifact &a) {
  std::ostringstream out;
  out << "Kiln artifact, format " << a.formatVersion << ", written by "
      << (a.producer.empty() ? "(unknown)" : a.producer) << " from "
      << (a.source.empty() ? "(unknown)" : a.source) << "\n";
  out << "target: " << a.targetArch << "\n";
  out << "model: " << (a.modelType.empty() ? "(none)" : a.modelType) << ", "
      << (a.modelHash.empty() ? "no hash (graph without a config)"
                              : a.modelHash)
      << ", hidden_size " << a.hiddenSize << ", " << a.numHiddenLayers
      << " layers, vocab_size " << a.vocabSize << "\n";
  const ArtifactOptions &o = a.options;
  out << "options: max_batch " << o.maxBatch << ", max_seq_len " << o.maxSeqLen
      << ", prefill_chunk " << o.prefillChunk << ", kv cache " << o.kvCacheDtype
      << " in pages of " << o.kvPageTokens << " tokens, ep " << o.expertParallel
      << ", overlap_micro_batches " << o.overlapMicroBatches << "\n";

  out << "kernels (" << a.kernels.size() << "):\n";
  for (const ArtifactKernel &k : a.kernels)
    out << "  " << k.name << ": block " << k.blockM << "x" << k.blockN << ", "
        << k.stages << " stages, " << k.consumers
        << " consumer warpgroups, split_k " << k.splitK
        << (k.clusterM > 1 ? ", cluster_m " + std::to_string(k.clusterM) : "")
        << (k.grouped.empty() ? "" : ", grouped " + k.grouped)
        << (k.epilogue.empty() ? "" : ", epilogue " + k.epilogue)
        << (k.store.empty() ? "" : ", store " + k.store) << ", "
        << k.sharedMemoryBytes << " B shared memory; cubin " << k.cubin.size()
        << " B"
        << (k.ptx.empty() ? ", no PTX"
                          : ", PTX " + std::to_string(k.ptx.size()) + " B")
        << "\n";

  out << "weights (" << a.weights.size() << "):\n";
  for (const ArtifactWeight &w : a.weights) {
    out << "  " << w.name << ": " << w.dtype << " [";
    for (size_t d = 0; d < w.shape.size(); ++d)
      out << (d ? ", " : "") << w.shape[d];
    out << "]";
    if (w.transform != "none")
      out << " -> " << w.transform << " at load";
    out << "\n";
  }

  auto tensorText = [](const PlanTensor &t) {
    std::string text = t.buffer;
    if (t.parts)
      text += "{micro-batch " + std::to_string(t.part) + "/" +
              std::to_string(t.parts) + "}";
    if (t.col == 0 && t.cols == 0)
      return text;
    return text + "[:, " + std::to_string(t.col) + ":" +
           std::to_string(t.col + t.cols) + "]";
  };
  for (const auto &[name, plan] : a.plans) {
    out << "plan " << name << ": max_tokens " << plan.maxTokens
        << ", max_sequences " << plan.maxSequences << ", arena "
        << plan.arenaBytes << " B, " << plan.buffers.size() << " buffers, "
        << plan.steps.size() << " steps";
    if (plan.streams > 1)
      out << ", " << plan.streams << " streams, " << plan.events << " events";
    out << "\n";
    out << "  buffers:\n";
    for (const PlanBuffer &b : plan.buffers)
      out << "    " << b.name << ": " << b.dtype << " [" << b.rows << ", "
          << b.cols << "] at " << b.offset << ", " << b.bytes << " B\n";
    out << "  steps:\n";
    for (size_t i = 0; i < plan.steps.size(); ++i) {
      const PlanStep &step = plan.steps[i];
      out << "    " << i << " " << step.op << " ";
      if (plan.streams > 1)
        out << "[stream " << step.stream << "] ";
      if (step.event >= 0)
        out << "event " << step.event;
      for (size_t t = 0; t < step.inputs.size(); ++t)
        out << (t ? ", " : "") << tensorText(step.inputs[t]);
      out << " -> ";
      for (size_t t = 0; t < step.outputs.size(); ++t)
        out << (t ? ", " : "") << tensorText(step.outputs[t]);
      if (!step.kernel.empty())
        out << "; kernel " << step.kernel;
      for (size_t w = 0; w < step.weights.size(); ++w)
        out << (w ? ", " : "; weights ") << step.weights[w];
      std::vector<std::string> attrs;
      for (const auto &[key, value] : step.attrs.numbers)
        attrs.push_back(key + "=" + formatNumber(value));
      for (const auto &[key, value] : step.attrs.strings)
        attrs.push_back(key + "=" + quote(value));
      for (const auto &[key, values] : step.attrs.lists) {
        std::string text = key + "=[";
        for (size_t v = 0; v < values.size() && v < 4; ++v)
          text += (v ? ", " : "") + formatNumber(values[v]);
        if (values.size() > 4)
          text += ", ... (" + std::to_string(values.size()) + " values)";
        attrs.push_back(text + "]");
      }
      std::sort(attrs.begin(), attrs.end());
      if (!attrs.empty()) {
        out << "; {";
        for (size_t t = 0; t < attrs.size(); ++t)
          out << (t ? ", " : "") << attrs[t];
        out << "}";
      }
      out << "\n";
    }
  }
  return out.str();
}

} // namespace kiln
