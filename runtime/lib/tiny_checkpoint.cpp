//===- tiny_checkpoint.cpp - random checkpoints for tests -----------------===//

#include "kiln/tiny_checkpoint.h"

#include "kiln/error.h"
#include "kiln/fnv1a.h"
#include "kiln/fp8.h"
#include "kiln/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <thread>

namespace kiln {

namespace {

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and defined bit for bit.
class SplitMix64 {
public:
  explicit SplitMix64(uint64_t seed) : state(seed) {}
  uint64_t next() {
    state += 0x9E3779B97F4A7C15ull;
    return mix(state);
  }
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }
  /// Standard normal, approximately: the Irwin-Hall sum of 12 uniform
  /// 16-bit integers, centred and scaled (mean 0, variance 1 - 2^-32, tails
  /// cut at 6 sigma). Integer sums and one exact scaling make it
  /// bit-identical on every machine, which Box-Muller through libm's
  /// log/sin/cos (CPU-dispatched in glibc) is not.
  double normal() {
    int64_t sum = 0;
    for (int i = 0; i < 3; ++i) {
      uint64_t bits = next();
      for (int lane = 0; lane < 4; ++lane)
        sum += static_cast<int64_t>((bits >> (16 * lane)) & 0xFFFF);
    }
    // 12 * 32767.5 is the mean; the difference is an integer.
    return static_cast<double>(sum - 393210) * 0x1p-16;
  }

private:
  uint64_t state;
};

bool endsWith(const std::string &text, const std::string &suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// The dtype a tensor is written with.
DType storedDType(const ExpectedTensor &tensor, bool quantized) {
  switch (tensor.format) {
  case TensorFormat::BF16:
  case TensorFormat::LinearMaybeQuantized: // real FP8 exports keep it BF16
    return DType::BF16;
  case TensorFormat::F32:
    return DType::F32;
  case TensorFormat::Linear:
    return quantized ? DType::F8_E4M3 : DType::BF16;
  }
  return DType::BF16;
}

/// A weight with, for FP8, its scales: written next to each other so that a
/// shard never separates them.
struct Unit {
  ExpectedTensor tensor;
  DType dtype;
  uint64_t bytes; // weight + scales
};

std::vector<uint8_t> encode(const ExpectedTensor &tensor, DType dtype,
                            const std::vector<float> &values,
                            std::vector<float> &scales) {
  std::vector<uint8_t> bytes;
  if (dtype == DType::F32) {
    bytes.resize(values.size() * sizeof(float));
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else if (dtype == DType::BF16) {
    bytes.resize(values.size() * 2);
    for (size_t i = 0; i < values.size(); ++i) {
      uint16_t bits = encodeBF16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &bits, sizeof(bits));
    }
  } else {
    // One scale per 128x128 block, scale_inv = amax / 448, as DeepSeek's
    // own weight quantization does.
    const int64_t rows = tensor.shape[0], cols = tensor.shape[1];
    const int64_t rowBlocks = scaleBlocks(rows), colBlocks = scaleBlocks(cols);
    bytes.resize(values.size());
    scales.assign(static_cast<size_t>(rowBlocks * colBlocks), 0.0f);
    for (int64_t rb = 0; rb < rowBlocks; ++rb) {
      for (int64_t cb = 0; cb < colBlocks; ++cb) {
        int64_t rowEnd = std::min(rows, (rb + 1) * kScaleBlock);
        int64_t colEnd = std::min(cols, (cb + 1) * kScaleBlock);
        float amax = 0.0f;
        for (int64_t r = rb * kScaleBlock; r < rowEnd; ++r)
          for (int64_t c = cb * kScaleBlock; c < colEnd; ++c)
            amax = std::max(amax, std::fabs(values[r * cols + c]));
        float scale = amax > 0.0f ? amax / kE4M3Max : 1.0f;
        scales[rb * colBlocks + cb] = scale;
        for (int64_t r = rb * kScaleBlock; r < rowEnd; ++r)
          for (int64_t c = cb * kScaleBlock; c < colEnd; ++c)
            bytes[r * cols + c] = encodeE4M3(values[r * cols + c] / scale);
      }
    }
  }
  return bytes;
}

void writeTextFile(const std::filesystem::path &path, const std::string &text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out)
    throw Error(path.string() + ": cannot write");
}

/// Assigns units to `count` shards: contiguous runs of about equal bytes,
/// none empty.
std::vector<int> assignShards(const std::vector<Unit> &units, int count) {
  uint64_t total = 0;
  for (const Unit &unit : units)
    total += unit.bytes;
  std::vector<int> shardOf(units.size());
  uint64_t before = 0;
  int previous = -1;
  const int64_t n = static_cast<int64_t>(units.size());
  const uint64_t shardTarget =
      std::max<uint64_t>(1, (total + count - 1) / count);
  for (int64_t i = 0; i < n; ++i) {
    // Integer arithmetic only: the split must not depend on the platform's
    // floating point.
    int64_t wanted = std::min<int64_t>(
        count - 1, static_cast<int64_t>(before / shardTarget));
    // Leave at least one unit for each later shard; never skip a shard.
    wanted = std::max<int64_t>(wanted, count - (n - i));
    wanted = std::clamp<int64_t>(wanted, std::max(previous, 0), previous + 1);
    shardOf[i] = previous = static_cast<int>(wanted);
    before += units[i].bytes;
  }
  return shardOf;
}

/// Writes one shard: each weight followed by its scales.
void writeShard(const std::filesystem::path &path,
                const std::vector<const Unit *> &units, uint64_t seed) {
  std::vector<TensorHeader> headers;
  for (const Unit *unit : units) {
    headers.push_back({unit->tensor.name, unit->dtype, unit->tensor.shape});
    if (unit->dtype == DType::F8_E4M3)
      headers.push_back({scaleInvName(unit->tensor.name), DType::F32,
                         scaleInvShape(unit->tensor.shape)});
  }
  // HF's safetensors writer records the framework the same way.
  SafetensorsWriter writer(path, headers, {{"format", "pt"}});
  for (const Unit *unit : units) {
    std::vector<float> scales;
    std::vector<uint8_t> bytes =
        encode(unit->tensor, unit->dtype, tinyTensorValues(unit->tensor, seed),
               scales);
    writer.write(unit->tensor.name, bytes.data(), bytes.size());
    if (unit->dtype == DType::F8_E4M3)
      writer.write(scaleInvName(unit->tensor.name), scales.data(),
                   scales.size() * sizeof(float));
  }
  writer.close();
}

} // namespace

std::string shardFileName(int index, int count) {
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", index,
                count);
  return name;
}

std::vector<float> tinyTensorValues(const ExpectedTensor &tensor,
                                    uint64_t seed) {
  SplitMix64 random(SplitMix64::mix(seed) ^
                    fnv1a64(tensor.name.data(), tensor.name.size()));
  std::vector<float> values(static_cast<size_t>(numElements(tensor.shape)));
  const std::string &name = tensor.name;
  if (endsWith(name, "norm.weight")) {
    for (float &v : values)
      v = static_cast<float>(1.0 + 0.1 * random.normal());
  } else if (endsWith(name, "embed_tokens.weight")) {
    for (float &v : values)
      v = static_cast<float>(random.normal());
  } else if (endsWith(name, "e_score_correction_bias")) {
    for (float &v : values)
      v = static_cast<float>(0.05 * random.uniform());
  } else {
    // std::sqrt is exactly rounded (IEEE 754), unlike log/sin/cos.
    double stddev = 1.0 / std::sqrt(static_cast<double>(tensor.shape.back()));
    for (float &v : values)
      v = static_cast<float>(stddev * random.normal());
  }
  return values;
}

void writeTinyCheckpoint(const ModelConfig &config,
                         const std::filesystem::path &dir, uint64_t seed,
                         int numShards) {
  // Round-trip through the parser so that an inconsistent config fails here,
  // not when the checkpoint is loaded.
  const std::string configText = toJson(config);
  parseConfig(configText, (dir / kConfigFileName).string());
  if (numShards < 1)
    throw Error("writeTinyCheckpoint: numShards must be at least 1, got " +
                std::to_string(numShards));

  const bool quantized = config.quantization.has_value();
  std::vector<Unit> units;
  for (ExpectedTensor &tensor : expectedTensors(config)) {
    DType dtype = storedDType(tensor, quantized);
    uint64_t bytes = dtypeSize(dtype) * numElements(tensor.shape);
    if (dtype == DType::F8_E4M3)
      bytes += sizeof(float) * numElements(scaleInvShape(tensor.shape));
    units.push_back({std::move(tensor), dtype, bytes});
  }
  if (static_cast<size_t>(numShards) > units.size())
    throw Error("writeTinyCheckpoint: " + std::to_string(numShards) +
                " shards for only " + std::to_string(units.size()) +
                " tensors");

  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error)
    throw Error(dir.string() + ": cannot create directory: " + error.message());
  // A previous checkpoint of the other layout would shadow this one (the
  // loader prefers the index).
  std::filesystem::remove(
      dir / (numShards == 1 ? kIndexFileName : kSingleFileName), error);
  writeTextFile(dir / kConfigFileName, configText);

  std::vector<int> shardOf = assignShards(units, numShards);
  std::vector<std::string> fileNames;
  for (int shard = 0; shard < numShards; ++shard)
    fileNames.push_back(numShards == 1 ? kSingleFileName
                                       : shardFileName(shard + 1, numShards));
  nlohmann::json weightMap = nlohmann::json::object();
  uint64_t totalSize = 0;
  for (size_t i = 0; i < units.size(); ++i) {
    const std::string &fileName = fileNames[shardOf[i]];
    weightMap[units[i].tensor.name] = fileName;
    if (units[i].dtype == DType::F8_E4M3)
      weightMap[scaleInvName(units[i].tensor.name)] = fileName;
    totalSize += units[i].bytes;
  }

  // Shards are independent (each tensor has its own random stream), so they
  // are written in parallel; the bytes do not depend on the thread count.
  std::atomic<int> nextShard{0};
  std::vector<std::exception_ptr> failures(numShards);
  auto worker = [&] {
    for (int shard; (shard = nextShard++) < numShards;) {
      try {
        std::vector<const Unit *> members;
        for (size_t i = 0; i < units.size(); ++i)
          if (shardOf[i] == shard)
            members.push_back(&units[i]);
        writeShard(dir / fileNames[shard], members, seed);
      } catch (...) {
        failures[shard] = std::current_exception();
      }
    }
  };
  int threadCount = static_cast<int>(std::min<unsigned>(
      std::max(1u, std::thread::hardware_concurrency()), numShards));
  std::vector<std::thread> threads;
  for (int t = 1; t < threadCount; ++t)
    threads.emplace_back(worker);
  worker();
  for (std::thread &thread : threads)
    thread.join();
  for (const std::exception_ptr &failure : failures)
    if (failure)
      std::rethrow_exception(failure);

  if (numShards > 1) {
    nlohmann::json index = {{"metadata", {{"total_size", totalSize}}},
                            {"weight_map", weightMap}};
    writeTextFile(dir / kIndexFileName, index.dump(2) + "\n");
  }
}

} // namespace kiln
