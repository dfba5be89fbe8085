//===- CheckpointTest.cpp - safetensors, checkpoints, tiny checkpoints ----===//
//
// Suites: SafetensorsTest (the file format, on hand-made bytes),
// TinyCheckpointTest (the generator) and CheckpointTest (opening, validating
// and loading model directories). Error tests use a small-vocabulary variant
// of the tiny example so that they stay fast; one test loads the full tiny
// example.
//
//===----------------------------------------------------------------------===//

#include "kiln/checkpoint.h"
#include "kiln/config.h"
#include "kiln/error.h"
#include "kiln/fp8.h"
#include "kiln/safetensors.h"
#include "kiln/tiny_checkpoint.h"

#include "TestSupport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using kiln::testing::errorOf;
using kiln::testing::expectMentions;
using kiln::testing::ScratchDir;

namespace fs = std::filesystem;
using kiln::DType;

//===----------------------------------------------------------------------===//
// Helpers
//===----------------------------------------------------------------------===//

std::string openError(const fs::path &dir) {
  return errorOf([&] { kiln::Checkpoint checkpoint(dir); });
}

std::string readFile(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void writeFile(const fs::path &path, const std::string &bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string le64(uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i)
    bytes[i] = static_cast<char>(value >> (8 * i));
  return bytes;
}

/// A safetensors file from a header text and data bytes, written by hand so
/// that tests can break any part of it.
std::string safetensorsBytes(const std::string &header,
                             const std::string &data) {
  return le64(header.size()) + header + data;
}

uint64_t headerLength(const fs::path &file) {
  std::string bytes = readFile(file).substr(0, 8);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i)
    length = (length << 8) | static_cast<uint8_t>(bytes[i]);
  return length;
}

kiln::ModelConfig tinyConfig() {
  return kiln::loadConfig(KILN_SOURCE_DIR "/examples/tiny");
}

/// The tiny example with a 512-token vocabulary, 2 decoder layers and 8
/// experts: still every layer kind, ragged scale blocks and the MTP layer,
/// in about 4 MB.
kiln::ModelConfig microConfig() {
  kiln::ModelConfig config = tinyConfig();
  config.vocabSize = 512;
  config.numHiddenLayers = 2;
  config.nRoutedExperts = 8;
  return config;
}

constexpr uint64_t kSeed = 42;
const char *const kShard1 = "model-00001-of-00002.safetensors";
const char *const kShard2 = "model-00002-of-00002.safetensors";

/// A tensor of a checkpoint on disk, with the shard it lives in.
struct StoredTensor {
  std::string shard;
  kiln::TensorHeader header;
  std::vector<uint8_t> bytes;
};
using StoredTensors = std::vector<StoredTensor>;

/// Reads every tensor of every shard of `dir`, in file order.
StoredTensors readShards(const fs::path &dir) {
  std::vector<fs::path> files;
  for (const auto &entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".safetensors")
      files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  StoredTensors tensors;
  for (const fs::path &file : files) {
    kiln::SafetensorsFile shard(file);
    for (const kiln::TensorView &view : shard.tensors())
      tensors.push_back({file.filename().string(),
                         {view.name, view.dtype, view.shape},
                         {view.data, view.data + view.byteSize}});
  }
  return tensors;
}

/// Rewrites the shards of `dir` (and its index, if it has one) to hold
/// exactly `tensors`.
void writeShards(const fs::path &dir, const StoredTensors &tensors) {
  std::map<std::string, std::vector<const StoredTensor *>> byShard;
  for (const StoredTensor &tensor : tensors)
    byShard[tensor.shard].push_back(&tensor);
  std::string weightMap;
  for (const auto &[shard, members] : byShard) {
    std::vector<kiln::TensorHeader> headers;
    for (const StoredTensor *tensor : members) {
      headers.push_back(tensor->header);
      weightMap += (weightMap.empty() ? "\n    \"" : ",\n    \"") +
                   tensor->header.name + "\": \"" + shard + "\"";
    }
    kiln::SafetensorsWriter writer(dir / shard, headers);
    for (const StoredTensor *tensor : members)
      writer.write(tensor->header.name, tensor->bytes.data(),
                   tensor->bytes.size());
    writer.close();
  }
  if (fs::exists(dir / kiln::kIndexFileName))
    writeFile(dir / kiln::kIndexFileName,
              "{\n  \"metadata\": {},\n  \"weight_map\": {" + weightMap +
                  "\n  }\n}\n");
}

/// Applies `edit` to the tensors of the checkpoint in `dir`.
void editCheckpoint(const fs::path &dir,
                    const std::function<void(StoredTensors &)> &edit) {
  StoredTensors tensors = readShards(dir);
  edit(tensors);
  writeShards(dir, tensors);
}

StoredTensor &findTensor(StoredTensors &tensors, const std::string &name) {
  for (StoredTensor &tensor : tensors)
    if (tensor.header.name == name)
      return tensor;
  throw std::runtime_error("test checkpoint has no tensor " + name);
}

void eraseTensor(StoredTensors &tensors, const std::string &name) {
  findTensor(tensors, name); // must exist
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [&](const StoredTensor &tensor) {
                                 return tensor.header.name == name;
                               }),
                tensors.end());
}

std::vector<uint8_t> bf16Bytes(const std::vector<float> &values) {
  std::vector<uint8_t> bytes(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    uint16_t bits = kiln::encodeBF16(values[i]);
    std::memcpy(&bytes[2 * i], &bits, 2);
  }
  return bytes;
}

std::vector<uint8_t> f32Bytes(const std::vector<float> &values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

/// Checks `loaded` (FP8 weight dequantized with `scales`) against the values
/// the generator drew: each element within half an E4M3 step of its block.
/// Returns the number of elements out of bounds and reports the first.
size_t countFp8Mismatches(const std::string &name,
                          const std::vector<float> &loaded,
                          const std::vector<float> &drawn,
                          const std::vector<float> &scales, int64_t rows,
                          int64_t cols) {
  size_t mismatches = 0;
  int64_t colBlocks = kiln::scaleBlocks(cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float scale = scales[(r / 128) * colBlocks + c / 128];
      float value = drawn[r * cols + c];
      // Relative error 2^-4 for normal E4M3 numbers, absolute half of the
      // 2^-9 subnormal step below them, both in units of the block scale.
      double bound = std::max(std::fabs(value) / 16.0, scale / 1024.0) * 1.0001;
      if (std::fabs(loaded[r * cols + c] - value) > bound && mismatches++ == 0)
        ADD_FAILURE() << name << "[" << r << ", " << c
                      << "] = " << loaded[r * cols + c] << ", drawn " << value
                      << ", scale " << scale;
    }
  return mismatches;
}

/// Whether any memory mapping of this process is a file under `dir`.
bool mapsFileUnder(const fs::path &dir) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find(dir.string()) != std::string::npos)
      return true;
  return false;
}

//===----------------------------------------------------------------------===//
// SafetensorsTest
//===----------------------------------------------------------------------===//

TEST(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  ScratchDir dir;
  fs::path path = dir / "t.safetensors";
  std::vector<uint8_t> fp8 = {0x00, 0x38, 0x7E, 0xFE, 0x01, 0x08, 0x40, 0x41,
                              0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48};
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 1e-3f};
  std::vector<uint8_t> bf16 = bf16Bytes({0.5f, -7.0f});
  int32_t i32 = 7;
  {
    kiln::SafetensorsWriter writer(path,
                                   {{"w", DType::F8_E4M3, {3, 5}},
                                    {"b", DType::BF16, {2}},
                                    {"f", DType::F32, {2, 2}},
                                    {"i", DType::I32, {1}},
                                    {"empty", DType::F32, {0, 4}},
                                    {"scalar", DType::F32, {}}},
                                   {{"format", "pt"}});
    writer.write("w", fp8.data(), fp8.size());
    writer.write("b", bf16.data(), bf16.size());
    writer.write("f", f32.data(), 16);
    writer.write("i", &i32, 4);
    writer.write("empty", nullptr, 0);
    writer.write("scalar", f32.data(), 4);
    writer.close();
  }
  EXPECT_FALSE(fs::exists(path.string() + ".partial"));

  kiln::SafetensorsFile file(path);
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.fileSize(), fs::file_size(path));
  EXPECT_EQ(file.metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(file.tensors().size(), 6u);
  EXPECT_EQ(file.tensors()[0].name, "w"); // data order = declaration order
  EXPECT_EQ(file.tensors()[0].fileOffset % 8, 0u) << "header is padded";

  const kiln::TensorView &w = file.get("w");
  EXPECT_EQ(w.dtype, DType::F8_E4M3);
  EXPECT_EQ(w.shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(std::vector<uint8_t>(w.data, w.data + w.byteSize), fp8);
  EXPECT_EQ(*w.file, path);
  EXPECT_EQ(kiln::decodeFloat(file.get("b")),
            (std::vector<float>{0.5f, -7.0f}));
  EXPECT_EQ(kiln::decodeFloat(file.get("f")), f32);
  EXPECT_EQ(file.get("empty").byteSize, 0u);
  EXPECT_TRUE(kiln::decodeFloat(file.get("empty")).empty());
  EXPECT_EQ(file.get("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(kiln::decodeFloat(file.get("scalar")), std::vector<float>{1.5f});
  EXPECT_EQ(file.find("missing"), nullptr);
  expectMentions(errorOf([&] { file.get("missing"); }),
                 {path.string(), "\"missing\""});
  file.prefetch(w); // advice only; must not fail
}

TEST(SafetensorsTest, DTypeNamesRoundTrip) {
  for (const char *name :
       {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
        "I32", "U32", "F32", "F64", "I64", "U64"}) {
    std::optional<DType> dtype = kiln::parseDType(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_STREQ(kiln::dtypeName(*dtype), name);
  }
  EXPECT_EQ(kiln::dtypeSize(DType::F8_E4M3), 1u);
  EXPECT_EQ(kiln::dtypeSize(DType::BF16), 2u);
  EXPECT_EQ(kiln::dtypeSize(DType::F32), 4u);
  EXPECT_FALSE(kiln::parseDType("F4").has_value());
  EXPECT_FALSE(kiln::parseDType("f32").has_value());
  EXPECT_EQ(kiln::formatShape({7168, 2048}), "[7168, 2048]");
  EXPECT_EQ(kiln::formatShape({}), "[]");
}

TEST(SafetensorsTest, ListedDTypesWithoutFloatConversionAreRejectedOnUse) {
  ScratchDir dir;
  fs::path path = dir / "t.safetensors";
  writeFile(path,
            safetensorsBytes(
                R"({"i":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
                R"("q":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[8,10]}})",
                std::string(10, '\0')));
  kiln::SafetensorsFile file(path); // listing them is fine
  expectMentions(errorOf([&] { kiln::decodeFloat(file.get("i")); }),
                 {path.string(), "\"i\"", "I32", "only BF16 and F32"});
  expectMentions(errorOf([&] { kiln::decodeFloat(file.get("q")); }),
                 {path.string(), "\"q\"", "F8_E4M3", "block scales"});
}

TEST(SafetensorsTest, RejectsTruncatedFiles) {
  ScratchDir dir;
  std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]}})";
  std::string whole = safetensorsBytes(header, std::string(28, '\x3f'));
  fs::path path = dir / "cut.safetensors";
  writeFile(path, whole);
  kiln::SafetensorsFile intact(path); // the uncut file is valid

  uint64_t dataStart = 8 + header.size();
  for (uint64_t cut : {uint64_t{0}, uint64_t{3}, uint64_t{7}, uint64_t{8},
                       uint64_t{8 + 10}, dataStart - 1, dataStart,
                       dataStart + 1, dataStart + 16, whole.size() - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    writeFile(path, whole.substr(0, cut));
    expectMentions(errorOf([&] { kiln::SafetensorsFile file(path); }),
                   {path.string(), "truncated"});
  }
}

TEST(SafetensorsTest, RejectsCorruptHeaders) {
  ScratchDir dir;
  fs::path path = dir / "bad.safetensors";
  struct Case {
    std::string header;
    std::string data;
    std::vector<std::string> expected;
  };
  const std::string f32x2 = R"("dtype":"F32","shape":[2])";
  for (const Case &c : std::vector<Case>{
           {"{\"a\": {", "", {"not valid JSON"}},
           {"[1, 2]", "", {"expected a JSON object"}},
           {"{\"a\": \x01}", "", {"not valid JSON"}},
           {R"({"a":5})", "", {"\"a\"", "must be an object"}},
           {R"({"a":{"shape":[2],"data_offsets":[0,8]}})",
            std::string(8, 0),
            {"\"a\"", "\"dtype\" must be a string"}},
           {R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})",
            std::string(8, 0),
            {"\"a\"", "unknown dtype \"Q4\""}},
           {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
            std::string(8, 0),
            {"\"a\"", "non-negative"}},
           {R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})",
            std::string(8, 0),
            {"\"a\"", "non-negative"}},
           {R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})",
            std::string(8, 0),
            {"\"a\"", "\"shape\" must be a list"}},
           {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],)"
            R"("data_offsets":[0,8]}})",
            std::string(8, 0),
            {"\"a\"", "overflows"}},
           {"{\"a\":{" + f32x2 + "}}", "", {"\"a\"", "data_offsets"}},
           {"{\"a\":{" + f32x2 + ",\"data_offsets\":[8,0]}}",
            std::string(8, 0),
            {"\"a\"", "begin <= end"}},
           {"{\"a\":{" + f32x2 + ",\"data_offsets\":[0,-8]}}",
            std::string(8, 0),
            {"\"a\"", "non-negative"}},
           {"{\"a\":{" + f32x2 + ",\"data_offsets\":[0,8,9]}}",
            std::string(8, 0),
            {"\"a\"", "[begin, end]"}},
           {"{\"a\":{" + f32x2 + ",\"data_offsets\":[0,1000]}}",
            std::string(8, 0),
            {"\"a\"", "exceed", "8-byte data buffer"}},
           {"{\"a\":{" + f32x2 +
                ",\"data_offsets\":[18446744073709551615,18446744073709551615]}"
                "}",
            std::string(8, 0),
            {"\"a\"", "exceed"}},
           {"{\"a\":{" + f32x2 + ",\"data_offsets\":[0,12]}}",
            std::string(12, 0),
            {"\"a\"", "span 12 bytes", "needs 8"}},
           {"{\"a\":{" + f32x2 + ",\"data_offsets\":[0,8]},\"b\":{" + f32x2 +
                ",\"data_offsets\":[4,12]}}",
            std::string(12, 0),
            {"\"a\" and \"b\" overlap"}},
           {"{\"a\":{" + f32x2 + ",\"data_offsets\":[0,8]},\"b\":{" + f32x2 +
                ",\"data_offsets\":[12,20]}}",
            std::string(20, 0),
            {"bytes [8, 12)", "belong to no tensor"}},
           {"{\"a\":{" + f32x2 + ",\"data_offsets\":[0,8]}}",
            std::string(9, 0),
            {"1 bytes after the last tensor"}},
           {R"({"__metadata__":{"format":1}})",
            "",
            {"__metadata__", "\"format\" must be a string"}},
           {R"({"__metadata__":[1]})",
            "",
            {"__metadata__", "must be an object"}},
       }) {
    SCOPED_TRACE(c.header);
    writeFile(path, safetensorsBytes(c.header, c.data));
    std::vector<std::string> expected = c.expected;
    expected.push_back(path.string());
    expectMentions(errorOf([&] { kiln::SafetensorsFile file(path); }),
                   expected);
  }
}

TEST(SafetensorsTest, RejectsHeaderLengthsBeyondTheFile) {
  ScratchDir dir;
  fs::path path = dir / "bad.safetensors";
  for (uint64_t length : {uint64_t{1} << 63, uint64_t{3}, ~uint64_t{0}}) {
    writeFile(path, le64(length) + "{}");
    expectMentions(errorOf([&] { kiln::SafetensorsFile file(path); }),
                   {path.string(), "header length"});
  }
  // Inside the file but beyond the sanity limit.
  std::string big = le64(200ull << 20) + "{}";
  writeFile(path, big);
  fs::resize_file(path, (200ull << 20) + 8);
  expectMentions(errorOf([&] { kiln::SafetensorsFile file(path); }),
                 {path.string(), "100 MB limit"});
}

TEST(SafetensorsTest, RejectsMissingFilesAndDirectories) {
  ScratchDir dir;
  expectMentions(
      errorOf([&] { kiln::SafetensorsFile file(dir / "absent.safetensors"); }),
      {(dir / "absent.safetensors").string(), "cannot open"});
  expectMentions(errorOf([&] { kiln::SafetensorsFile file(dir.path()); }),
                 {dir.path().string()});
}

TEST(SafetensorsTest, AcceptsAnEmptyFile) {
  ScratchDir dir;
  fs::path path = dir / "empty.safetensors";
  writeFile(path, safetensorsBytes("{}      ", ""));
  kiln::SafetensorsFile file(path);
  EXPECT_TRUE(file.tensors().empty());
}

TEST(SafetensorsTest, WriterChecksOrderAndSizesAndCleansUp) {
  ScratchDir dir;
  fs::path path = dir / "w.safetensors";
  std::vector<uint8_t> bytes(64);
  {
    kiln::SafetensorsWriter writer(
        path, {{"a", DType::F32, {2}}, {"b", DType::BF16, {3}}});
    expectMentions(errorOf([&] { writer.write("b", bytes.data(), 6); }),
                   {path.string(), "\"b\" written out of order", "\"a\""});
    expectMentions(errorOf([&] { writer.write("a", bytes.data(), 4); }),
                   {path.string(), "\"a\"", "needs 8 bytes, got 4"});
    writer.write("a", bytes.data(), 8);
    expectMentions(errorOf([&] { writer.close(); }),
                   {path.string(), "1 of 2 tensors", "\"b\""});
    EXPECT_TRUE(fs::exists(path.string() + ".partial"));
  } // destroyed unfinished
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path.string() + ".partial"));

  expectMentions(errorOf([&] {
                   kiln::SafetensorsWriter writer(
                       path, {{"a", DType::F32, {2}}, {"a", DType::F32, {2}}});
                 }),
                 {path.string(), "duplicate tensor name \"a\""});
  expectMentions(
      errorOf([&] {
        kiln::SafetensorsWriter writer(path, {{"a", DType::F32, {-1}}});
      }),
      {path.string(), "\"a\"", "[-1]"});
  EXPECT_FALSE(fs::exists(path.string() + ".partial"));
}

//===----------------------------------------------------------------------===//
// TinyCheckpointTest
//===----------------------------------------------------------------------===//

TEST(TinyCheckpointTest, WritesTheHuggingFaceLayout) {
  ScratchDir dir;
  kiln::ModelConfig config = microConfig();
  kiln::writeTinyCheckpoint(config, dir.path(), kSeed, 3);
  for (int i = 1; i <= 3; ++i)
    EXPECT_TRUE(fs::exists(dir / kiln::shardFileName(i, 3)));
  EXPECT_EQ(kiln::shardFileName(1, 3), "model-00001-of-00003.safetensors");
  EXPECT_FALSE(fs::exists(dir / kiln::kSingleFileName));
  EXPECT_TRUE(kiln::loadConfig(dir.path()) == config);

  std::string index = readFile(dir / kiln::kIndexFileName);
  expectMentions(index, {"\"metadata\"", "\"total_size\"", "\"weight_map\""});
  uint64_t tensorBytes = 0, scales = 0;
  for (int i = 1; i <= 3; ++i) {
    kiln::SafetensorsFile shard(dir / kiln::shardFileName(i, 3));
    EXPECT_FALSE(shard.tensors().empty());
    EXPECT_EQ(shard.metadata().at("format"), "pt");
    for (const kiln::TensorView &view : shard.tensors()) {
      tensorBytes += view.byteSize;
      EXPECT_NE(index.find("\"" + view.name + "\": \"" +
                           kiln::shardFileName(i, 3) + "\""),
                std::string::npos)
          << view.name;
      // A weight's scales sit in the same shard.
      if (view.dtype == DType::F8_E4M3) {
        EXPECT_NE(shard.find(kiln::scaleInvName(view.name)), nullptr);
        ++scales;
      }
    }
  }
  EXPECT_NE(index.find("\"total_size\": " + std::to_string(tensorBytes)),
            std::string::npos);
  EXPECT_GT(scales, 0u);

  kiln::Checkpoint checkpoint(dir.path());
  EXPECT_EQ(checkpoint.shardPaths().size(), 3u);
  EXPECT_EQ(checkpoint.totalTensorBytes(), tensorBytes);
}

TEST(TinyCheckpointTest, IsDeterministic) {
  ScratchDir dir;
  kiln::ModelConfig config = microConfig();
  kiln::writeTinyCheckpoint(config, dir / "a", kSeed, 2);
  kiln::writeTinyCheckpoint(config, dir / "b", kSeed, 2);
  kiln::writeTinyCheckpoint(config, dir / "c", kSeed + 1, 2);
  for (const char *file :
       {kShard1, kShard2, kiln::kIndexFileName, kiln::kConfigFileName}) {
    SCOPED_TRACE(file);
    std::string a = readFile(dir / "a" / file);
    ASSERT_FALSE(a.empty());
    EXPECT_TRUE(a == readFile(dir / "b" / file)) << "same seed differs";
  }
  EXPECT_FALSE(readFile(dir / "a" / kShard1) == readFile(dir / "c" / kShard1))
      << "another seed gives the same weights";
}

TEST(TinyCheckpointTest, DrawsTheSameValuesOnEveryMachine) {
  // Golden bits: golden data from HF transformers is computed on these
  // weights, so the generator must never drift.
  kiln::ExpectedTensor embedding{
      "model.embed_tokens.weight", {4, 2}, kiln::TensorFormat::BF16};
  std::vector<float> values = kiln::tinyTensorValues(embedding, 1);
  std::vector<uint32_t> bits(values.size());
  std::memcpy(bits.data(), values.data(), values.size() * 4);
  // Multiples of 2^-16, as Irwin-Hall over 16-bit integers gives.
  EXPECT_EQ(bits, (std::vector<uint32_t>{0xBD3F6000, 0xBF2CC600, 0xBDFE6800,
                                         0x3F949800, 0xBFBB1680, 0x3FC6C700,
                                         0x3FF55C00, 0x3D353000}));
}

TEST(TinyCheckpointTest, DrawsValuesAtTheIntendedScale) {
  kiln::ModelConfig config = microConfig();
  auto moments = [](const std::vector<float> &values) {
    double sum = 0, squares = 0;
    for (float v : values)
      sum += v;
    double mean = sum / values.size();
    for (float v : values)
      squares += (v - mean) * (v - mean);
    return std::make_pair(mean, std::sqrt(squares / values.size()));
  };
  for (const kiln::ExpectedTensor &tensor : kiln::expectedTensors(config)) {
    SCOPED_TRACE(tensor.name);
    std::vector<float> values = kiln::tinyTensorValues(tensor, kSeed);
    auto [mean, stddev] = moments(values);
    const std::string &name = tensor.name;
    auto endsWith = [&](const std::string &suffix) {
      return name.size() >= suffix.size() &&
             name.compare(name.size() - suffix.size(), suffix.size(), suffix) ==
                 0;
    };
    if (endsWith("norm.weight")) {
      EXPECT_NEAR(mean, 1.0, 0.05);
      EXPECT_NEAR(stddev, 0.1, 0.03);
    } else if (endsWith("embed_tokens.weight")) {
      EXPECT_NEAR(mean, 0.0, 0.02);
      EXPECT_NEAR(stddev, 1.0, 0.02);
    } else if (endsWith("e_score_correction_bias")) {
      for (float v : values) {
        EXPECT_GE(v, 0.0f);
        EXPECT_LT(v, 0.05f);
      }
    } else {
      double expected = 1.0 / std::sqrt(double(tensor.shape[1]));
      EXPECT_NEAR(mean, 0.0, 0.1 * expected);
      EXPECT_NEAR(stddev, expected, 0.1 * expected);
    }
  }
}

TEST(TinyCheckpointTest, RejectsInvalidConfigsBeforeWriting) {
  ScratchDir dir;
  kiln::ModelConfig config = microConfig();
  config.nGroup = 3; // does not divide 8 experts
  expectMentions(
      errorOf([&] { kiln::writeTinyCheckpoint(config, dir / "m", kSeed); }),
      {"config.json", "n_group"});
  EXPECT_FALSE(fs::exists(dir / "m"));
  expectMentions(errorOf([&] {
                   kiln::writeTinyCheckpoint(microConfig(), dir / "m", kSeed,
                                             0);
                 }),
                 {"numShards"});
}

//===----------------------------------------------------------------------===//
// CheckpointTest
//===----------------------------------------------------------------------===//

TEST(CheckpointTest, LoadsEveryTensorOfTheTinyExample) {
  ScratchDir dir;
  kiln::ModelConfig config = tinyConfig();
  kiln::writeTinyCheckpoint(config, dir.path(), kSeed, 2);
  kiln::Checkpoint checkpoint(dir.path());
  EXPECT_TRUE(checkpoint.config() == config);
  EXPECT_EQ(checkpoint.directory(), dir.path());
  EXPECT_EQ(checkpoint.shardPaths(),
            (std::vector<fs::path>{dir / kShard1, dir / kShard2}));

  std::vector<kiln::ExpectedTensor> expected = kiln::expectedTensors(config);
  size_t quantized = 0;
  for (const kiln::ExpectedTensor &tensor : expected) {
    SCOPED_TRACE(tensor.name);
    ASSERT_TRUE(checkpoint.contains(tensor.name));
    std::vector<float> loaded = checkpoint.loadFloat(tensor.name, tensor.shape);
    std::vector<float> drawn = kiln::tinyTensorValues(tensor, kSeed);
    ASSERT_EQ(loaded.size(), drawn.size());
    const kiln::TensorView &raw = checkpoint.tensor(tensor.name);
    EXPECT_EQ(raw.shape, tensor.shape);
    switch (tensor.format) {
    case kiln::TensorFormat::Linear: {
      ASSERT_EQ(raw.dtype, DType::F8_E4M3);
      const kiln::TensorView *scale = checkpoint.scaleInv(tensor.name);
      ASSERT_NE(scale, nullptr);
      EXPECT_EQ(scale->dtype, DType::F32);
      EXPECT_EQ(scale->shape, kiln::scaleInvShape(tensor.shape));
      std::vector<float> scales = kiln::decodeFloat(*scale);
      EXPECT_EQ(countFp8Mismatches(tensor.name, loaded, drawn, scales,
                                   tensor.shape[0], tensor.shape[1]),
                0u);
      // scale_inv = amax / 448: every block uses the top E4M3 code.
      int64_t rows = tensor.shape[0], cols = tensor.shape[1];
      std::vector<bool> blockHasMax(scales.size(), false);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          if ((raw.data[r * cols + c] & 0x7F) == 0x7E)
            blockHasMax[(r / 128) * kiln::scaleBlocks(cols) + c / 128] = true;
      EXPECT_EQ(std::count(blockHasMax.begin(), blockHasMax.end(), false), 0);
      ++quantized;
      break;
    }
    case kiln::TensorFormat::BF16:
    case kiln::TensorFormat::LinearMaybeQuantized: {
      EXPECT_EQ(raw.dtype, DType::BF16);
      EXPECT_EQ(checkpoint.scaleInv(tensor.name), nullptr);
      size_t mismatches = 0;
      for (size_t i = 0; i < drawn.size(); ++i)
        mismatches += loaded[i] != kiln::decodeBF16(kiln::encodeBF16(drawn[i]));
      EXPECT_EQ(mismatches, 0u);
      break;
    }
    case kiln::TensorFormat::F32:
      EXPECT_EQ(raw.dtype, DType::F32);
      EXPECT_EQ(loaded, drawn);
      break;
    }
  }
  EXPECT_EQ(checkpoint.tensorNames().size(), expected.size() + quantized);
  EXPECT_FALSE(checkpoint.contains("model.layers.99.mlp.gate.weight"));

  // Ragged 128x128 blocks in the example: kv_lora_rank 160, moe 192.
  EXPECT_EQ(
      checkpoint.scaleInv("model.layers.0.self_attn.kv_b_proj.weight")->shape,
      (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(
      checkpoint.scaleInv("model.layers.1.mlp.experts.15.down_proj.weight")
          ->shape,
      (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(checkpoint.tensor("model.layers.3.eh_proj.weight").shape,
            (std::vector<int64_t>{256, 512}));
}

TEST(CheckpointTest, ExpectsTheDeepSeekV3Layout) {
  kiln::ModelConfig config = tinyConfig();
  std::map<std::string, kiln::ExpectedTensor> byName;
  for (const kiln::ExpectedTensor &tensor : kiln::expectedTensors(config))
    EXPECT_TRUE(byName.emplace(tensor.name, tensor).second) << tensor.name;
  auto shapeOf = [&](const std::string &name) {
    EXPECT_TRUE(byName.count(name)) << name;
    return byName.count(name) ? byName.at(name).shape : std::vector<int64_t>{};
  };
  using Shape = std::vector<int64_t>;
  EXPECT_EQ(shapeOf("model.embed_tokens.weight"), (Shape{129280, 256}));
  EXPECT_EQ(shapeOf("lm_head.weight"), (Shape{129280, 256}));
  EXPECT_EQ(shapeOf("model.layers.0.self_attn.q_a_proj.weight"),
            (Shape{192, 256}));
  EXPECT_EQ(shapeOf("model.layers.0.self_attn.q_b_proj.weight"),
            (Shape{4 * 48, 192}));
  EXPECT_EQ(shapeOf("model.layers.0.self_attn.kv_a_proj_with_mqa.weight"),
            (Shape{160 + 16, 256}));
  EXPECT_EQ(shapeOf("model.layers.0.self_attn.kv_b_proj.weight"),
            (Shape{4 * (32 + 32), 160}));
  EXPECT_EQ(shapeOf("model.layers.0.self_attn.o_proj.weight"),
            (Shape{256, 4 * 32}));
  EXPECT_EQ(shapeOf("model.layers.0.mlp.down_proj.weight"), (Shape{256, 448}));
  EXPECT_EQ(shapeOf("model.layers.2.mlp.gate.e_score_correction_bias"),
            (Shape{16}));
  EXPECT_EQ(shapeOf("model.layers.2.mlp.experts.15.up_proj.weight"),
            (Shape{192, 256}));
  EXPECT_EQ(shapeOf("model.layers.2.mlp.shared_experts.down_proj.weight"),
            (Shape{256, 192}));
  EXPECT_EQ(shapeOf("model.layers.3.eh_proj.weight"), (Shape{256, 512}));
  EXPECT_EQ(shapeOf("model.layers.3.embed_tokens.weight"),
            (Shape{129280, 256}));
  EXPECT_EQ(shapeOf("model.layers.3.shared_head.head.weight"),
            (Shape{129280, 256}));
  EXPECT_EQ(shapeOf("model.layers.3.mlp.experts.0.gate_proj.weight"),
            (Shape{192, 256}));
  EXPECT_FALSE(byName.count("model.layers.0.mlp.gate.weight"));
  EXPECT_FALSE(byName.count("model.layers.1.mlp.gate_proj.weight"));
  EXPECT_FALSE(byName.count("model.layers.4.input_layernorm.weight"));
  EXPECT_FALSE(byName.count("model.layers.2.enorm.weight"));

  // The release: 61 layers + MTP at 61, 256 experts; 1 dense + shared
  // experts per MoE layer.
  kiln::ModelConfig release = config;
  release.numHiddenLayers = 61;
  release.firstKDenseReplace = 3;
  release.nRoutedExperts = 256;
  size_t expertWeights = 0;
  for (const kiln::ExpectedTensor &tensor : kiln::expectedTensors(release))
    expertWeights += tensor.name.find(".mlp.experts.") != std::string::npos;
  EXPECT_EQ(expertWeights, size_t{59} * 256 * 3);
}

TEST(CheckpointTest, LoadsLayoutVariants) {
  struct Variant {
    const char *name;
    std::function<void(kiln::ModelConfig &)> change;
    int shards;
  };
  for (const Variant &variant : std::vector<Variant>{
           {"single file", [](kiln::ModelConfig &) {}, 1},
           {"unquantized", [](kiln::ModelConfig &c) { c.quantization.reset(); },
            2},
           {"no query compression",
            [](kiln::ModelConfig &c) { c.qLoraRank = 0; }, 2},
           {"tied embeddings, no MTP, no shared experts",
            [](kiln::ModelConfig &c) {
              c.tieWordEmbeddings = true;
              c.numNextnPredictLayers = 0;
              c.nSharedExperts = 0;
            },
            2},
           {"greedy routing (no correction bias), dense model mixed in",
            [](kiln::ModelConfig &c) {
              c.topkMethod = "greedy";
              c.moeLayerFreq = 2;
            },
            4},
       }) {
    SCOPED_TRACE(variant.name);
    ScratchDir dir;
    kiln::ModelConfig config = microConfig();
    variant.change(config);
    kiln::writeTinyCheckpoint(config, dir.path(), kSeed, variant.shards);
    kiln::Checkpoint checkpoint(dir.path());
    EXPECT_TRUE(checkpoint.config() == config);
    EXPECT_EQ(checkpoint.shardPaths().size(), size_t(variant.shards));
    std::vector<kiln::ExpectedTensor> expected = kiln::expectedTensors(config);
    size_t scales = 0;
    for (const kiln::ExpectedTensor &tensor : expected) {
      std::vector<float> loaded =
          checkpoint.loadFloat(tensor.name, tensor.shape);
      std::vector<float> drawn = kiln::tinyTensorValues(tensor, kSeed);
      if (checkpoint.tensor(tensor.name).dtype == DType::F8_E4M3) {
        ++scales;
        EXPECT_EQ(countFp8Mismatches(
                      tensor.name, loaded, drawn,
                      kiln::decodeFloat(*checkpoint.scaleInv(tensor.name)),
                      tensor.shape[0], tensor.shape[1]),
                  0u);
      } else if (tensor.format != kiln::TensorFormat::F32) {
        EXPECT_EQ(loaded[0], kiln::decodeBF16(kiln::encodeBF16(drawn[0])))
            << tensor.name;
      }
    }
    EXPECT_EQ(checkpoint.tensorNames().size(), expected.size() + scales);
    if (!config.quantization) {
      EXPECT_EQ(scales, 0u);
    }
    EXPECT_EQ(checkpoint.contains("lm_head.weight"), !config.tieWordEmbeddings);
    EXPECT_EQ(checkpoint.contains("model.layers.0.self_attn.q_proj.weight"),
              config.qLoraRank == 0);
    EXPECT_EQ(
        checkpoint.contains("model.layers.1.mlp.gate.e_score_correction_bias"),
        config.topkMethod == "noaux_tc");
  }
}

TEST(CheckpointTest, AcceptsAnFp8EhProj) {
  ScratchDir dir;
  kiln::ModelConfig config = microConfig();
  kiln::writeTinyCheckpoint(config, dir.path(), kSeed, 2);
  const std::string name = "model.layers.2.eh_proj.weight";
  kiln::ExpectedTensor spec{name, {256, 512}, kiln::TensorFormat::Linear};
  std::vector<float> drawn = kiln::tinyTensorValues(spec, kSeed);
  // Quantize as DeepSeek does: one amax / 448 scale per 128x128 block.
  std::vector<float> scales(2 * 4);
  std::vector<uint8_t> codes(drawn.size());
  for (int64_t block = 0; block < 8; ++block) {
    int64_t rb = block / 4, cb = block % 4;
    float amax = 0;
    for (int64_t r = rb * 128; r < rb * 128 + 128; ++r)
      for (int64_t c = cb * 128; c < cb * 128 + 128; ++c)
        amax = std::max(amax, std::fabs(drawn[r * 512 + c]));
    scales[block] = amax / 448;
    for (int64_t r = rb * 128; r < rb * 128 + 128; ++r)
      for (int64_t c = cb * 128; c < cb * 128 + 128; ++c)
        codes[r * 512 + c] =
            kiln::encodeE4M3(drawn[r * 512 + c] / scales[block]);
  }
  editCheckpoint(dir.path(), [&](StoredTensors &tensors) {
    StoredTensor &weight = findTensor(tensors, name);
    weight.header.dtype = DType::F8_E4M3;
    weight.bytes = codes;
    tensors.push_back({weight.shard,
                       {kiln::scaleInvName(name), DType::F32, {2, 4}},
                       f32Bytes(scales)});
  });
  kiln::Checkpoint checkpoint(dir.path());
  EXPECT_EQ(checkpoint.tensor(name).dtype, DType::F8_E4M3);
  EXPECT_EQ(countFp8Mismatches(name, checkpoint.loadFloat(name, {256, 512}),
                               drawn, scales, 256, 512),
            0u);
}

TEST(CheckpointTest, ReportsMissingShards) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 3);
  fs::remove(dir / "model-00001-of-00003.safetensors");
  fs::remove(dir / "model-00003-of-00003.safetensors");
  std::string message = openError(dir.path());
  expectMentions(message,
                 {dir.path().string(), "2 problems",
                  "missing shard file " +
                      (dir / "model-00001-of-00003.safetensors").string(),
                  "missing shard file " +
                      (dir / "model-00003-of-00003.safetensors").string(),
                  "tensors per model.safetensors.index.json"});
  EXPECT_EQ(message.find("model-00002-of-00003"), std::string::npos) << message;
}

TEST(CheckpointTest, ReportsTruncatedShards) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 2);
  fs::path shard = dir / kShard2;
  uint64_t size = fs::file_size(shard);
  uint64_t dataStart = 8 + headerLength(shard);
  // Shrinking cuts, from inside the data to inside the header length.
  for (uint64_t cut :
       {size - 1, (dataStart + size) / 2, dataStart + 1, dataStart,
        dataStart - 1, dataStart / 2, uint64_t{5}, uint64_t{0}}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    fs::resize_file(shard, cut);
    expectMentions(openError(dir.path()), {shard.string(), "truncated"});
  }
}

TEST(CheckpointTest, ReportsCorruptShardHeaders) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 2);
  fs::path shard = dir / kShard1;
  std::string bytes = readFile(shard);
  std::string corrupt = bytes;
  corrupt[8 + headerLength(shard) / 2] = '\x01'; // invalid anywhere in JSON
  writeFile(shard, corrupt);
  expectMentions(openError(dir.path()), {shard.string(), "not valid JSON"});

  // data_offsets beyond the file, patched in place (same header length).
  std::string header = bytes.substr(8, headerLength(shard));
  std::regex entry(R"re("([^"]+)":\{"data_offsets":\[(\d+),(\d+)\])re");
  std::smatch last;
  uint64_t lastEnd = 0;
  for (auto it = std::sregex_iterator(header.begin(), header.end(), entry);
       it != std::sregex_iterator(); ++it)
    if (std::stoull((*it)[3]) > lastEnd) {
      lastEnd = std::stoull((*it)[3]);
      last = *it;
    }
  ASSERT_FALSE(last.empty());
  std::string patched = header;
  patched.replace(last.position(3), last.length(3),
                  std::string(last.length(3), '9'));
  writeFile(shard,
            bytes.substr(0, 8) + patched + bytes.substr(8 + header.size()));
  expectMentions(openError(dir.path()),
                 {shard.string(), "\"" + last[1].str() + "\"", "exceed"});
}

TEST(CheckpointTest, ReportsWrongDTypeAndShape) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 2);
  editCheckpoint(dir.path(), [](StoredTensors &tensors) {
    StoredTensor &norm =
        findTensor(tensors, "model.layers.0.input_layernorm.weight");
    norm.header.dtype = DType::F32;
    norm.bytes.resize(norm.bytes.size() * 2);
    StoredTensor &proj =
        findTensor(tensors, "model.layers.1.self_attn.o_proj.weight");
    proj.header.shape = {128, 256};
  });
  expectMentions(openError(dir.path()),
                 {dir.path().string(), "does not match config.json",
                  "2 problems",
                  "tensor model.layers.0.input_layernorm.weight in "
                  "model-00001-of-00002.safetensors is F32 [256], expected "
                  "BF16 [256]",
                  "tensor model.layers.1.self_attn.o_proj.weight",
                  "is F8_E4M3 [128, 256], expected F8_E4M3 [256, 128]"});
}

TEST(CheckpointTest, ReportsMissingAndUnexpectedTensors) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 2);
  editCheckpoint(dir.path(), [](StoredTensors &tensors) {
    eraseTensor(tensors, "model.layers.1.mlp.gate.e_score_correction_bias");
    tensors.push_back(
        {kShard1,
         {"model.layers.0.self_attn.rotary_emb.inv_freq", DType::F32, {8}},
         std::vector<uint8_t>(32)});
  });
  expectMentions(openError(dir.path()),
                 {dir.path().string(), "2 problems",
                  "missing tensor "
                  "model.layers.1.mlp.gate.e_score_correction_bias "
                  "(expected F32 [8])",
                  "unexpected tensor "
                  "model.layers.0.self_attn.rotary_emb.inv_freq (F32 [8]) in " +
                      std::string(kShard1)});
}

TEST(CheckpointTest, ReportsEveryProblemInOneError) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 2);
  const std::string experts = "model.layers.1.mlp.experts.3.up_proj.weight";
  editCheckpoint(dir.path(), [&](StoredTensors &tensors) {
    eraseTensor(tensors, experts);
    eraseTensor(tensors, kiln::scaleInvName(experts));
    eraseTensor(tensors, "model.layers.0.self_attn.kv_b_proj.weight_scale_inv");
    tensors.push_back({kShard2,
                       {"model.layers.0.mlp.bogus.weight", DType::BF16, {4}},
                       std::vector<uint8_t>(8)});
    StoredTensor &norm = findTensor(tensors, "model.norm.weight");
    norm.header.dtype = DType::F32;
    norm.bytes.resize(norm.bytes.size() * 2);
    StoredTensor &query =
        findTensor(tensors, "model.layers.2.self_attn.q_a_proj.weight");
    query.header.shape = {256, 192}; // transposed; its scales stay [2, 2]
  });
  std::string message = openError(dir.path());
  expectMentions(
      message, {dir.path().string(), "(5 problems)",
                "missing tensor " + experts + " (expected F8_E4M3 [192, 256])",
                "missing tensor "
                "model.layers.0.self_attn.kv_b_proj.weight_scale_inv "
                "(expected F32 [2, 2])",
                "unexpected tensor model.layers.0.mlp.bogus.weight",
                "tensor model.norm.weight in", "is F32 [256], expected BF16",
                "tensor model.layers.2.self_attn.q_a_proj.weight in",
                "is F8_E4M3 [256, 192], expected F8_E4M3 [192, 256]"});
  EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 5) << message;
}

TEST(CheckpointTest, ReportsAConfigThatDoesNotMatchTheWeights) {
  ScratchDir dir;
  kiln::ModelConfig config = microConfig();
  kiln::writeTinyCheckpoint(config, dir.path(), kSeed, 2);
  config.hiddenSize = 128; // every tensor touching hidden mismatches
  writeFile(dir / kiln::kConfigFileName, kiln::toJson(config));
  expectMentions(openError(dir.path()),
                 {"does not match config.json",
                  "tensor model.embed_tokens.weight in " +
                      std::string(kShard1) +
                      " is BF16 [512, 256], expected BF16 [512, 128]",
                  "... and "});
}

TEST(CheckpointTest, ReportsBadConfigs) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 2);
  fs::path configPath = dir / kiln::kConfigFileName;
  std::string good = readFile(configPath);

  writeFile(configPath, "{\"model_type\": ");
  expectMentions(openError(dir.path()),
                 {configPath.string(), "not valid JSON"});

  std::string other = good;
  other.replace(other.find("\"deepseek_v3\""), 13, "\"qwen2\"");
  writeFile(configPath, other);
  expectMentions(openError(dir.path()),
                 {configPath.string(), "model_type", "qwen2"});

  std::string missing = good;
  missing.replace(missing.find("\"kv_lora_rank\""), 14, "\"kv_rank_typo\"");
  writeFile(configPath, missing);
  expectMentions(openError(dir.path()),
                 {configPath.string(), "\"kv_lora_rank\"", "missing"});

  fs::remove(configPath);
  expectMentions(openError(dir.path()), {configPath.string(), "cannot open"});
}

TEST(CheckpointTest, ReportsIndexProblems) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 2);
  fs::path indexPath = dir / kiln::kIndexFileName;
  std::string good = readFile(indexPath);

  writeFile(indexPath, good.substr(0, good.size() / 2));
  expectMentions(openError(dir.path()), {indexPath.string(), "not valid JSON"});

  writeFile(indexPath, "{\"metadata\": {}}");
  expectMentions(openError(dir.path()), {indexPath.string(), "weight_map"});

  // Not the last entry, so that erasing its line keeps the JSON valid.
  const std::string embed = "\"model.embed_tokens.weight\": \"";
  std::string escaping = good;
  size_t at = escaping.find(embed) + embed.size();
  escaping.replace(at, escaping.find('"', at) - at, "../model.safetensors");
  writeFile(indexPath, escaping);
  expectMentions(openError(dir.path()),
                 {indexPath.string(), "model.embed_tokens.weight",
                  "\"../model.safetensors\"", "a file name in the model"});

  // The index places a tensor in the shard that does not hold it.
  std::string misplaced = good;
  at = misplaced.find(embed) + embed.size();
  std::string actual = misplaced.substr(at, misplaced.find('"', at) - at);
  std::string wrong = actual == kShard1 ? kShard2 : kShard1;
  misplaced.replace(at, actual.size(), wrong);
  writeFile(indexPath, misplaced);
  expectMentions(
      openError(dir.path()),
      {dir.path().string(),
       "tensor model.embed_tokens.weight is in " + actual +
           " but model.safetensors.index.json places it in " + wrong,
       "tensor model.embed_tokens.weight: model.safetensors.index.json "
       "places it in " +
           wrong + ", which does not contain it"});

  // A shard holding a tensor the index does not list.
  std::string unlisted = good;
  at = unlisted.find(embed);
  unlisted.erase(at, unlisted.find('\n', at) + 1 - at);
  writeFile(indexPath, unlisted);
  expectMentions(openError(dir.path()),
                 {"tensor model.embed_tokens.weight in",
                  "is not listed in "
                  "model.safetensors.index.json",
                  "missing tensor model.embed_tokens.weight"});
}

TEST(CheckpointTest, ReportsADirectoryWithoutWeights) {
  ScratchDir dir;
  writeFile(dir / kiln::kConfigFileName, kiln::toJson(microConfig()));
  expectMentions(openError(dir.path()),
                 {dir.path().string(), "no weights",
                  "model.safetensors.index.json", "model.safetensors"});
}

TEST(CheckpointTest, LoadFloatChecksNamesAndShapes) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 1);
  kiln::Checkpoint checkpoint(dir.path());
  expectMentions(errorOf([&] { checkpoint.loadFloat("model.nope", {1}); }),
                 {dir.path().string(), "no tensor \"model.nope\""});
  expectMentions(
      errorOf([&] { checkpoint.loadFloat("model.norm.weight", {128}); }),
      {(dir / kiln::kSingleFileName).string(), "\"model.norm.weight\"",
       "is BF16 [256], but [128] was requested"});
  expectMentions(errorOf([&] { checkpoint.scaleInv("model.nope"); }),
                 {"model.nope"});
  std::vector<float> bias = checkpoint.loadFloat(
      "model.layers.1.mlp.gate.e_score_correction_bias", {8});
  EXPECT_EQ(bias.size(), 8u);
}

TEST(CheckpointTest, LeavesNothingMappedAfterAFailure) {
  ScratchDir dir;
  kiln::writeTinyCheckpoint(microConfig(), dir.path(), kSeed, 2);
  {
    kiln::Checkpoint checkpoint(dir.path());
    EXPECT_TRUE(mapsFileUnder(dir.path())) << "the probe must see mappings";
  }
  EXPECT_FALSE(mapsFileUnder(dir.path()));
  // Fails after mapping every shard: a tensor is missing.
  editCheckpoint(dir.path(), [](StoredTensors &tensors) {
    eraseTensor(tensors, "lm_head.weight");
  });
  expectMentions(openError(dir.path()), {"missing tensor lm_head.weight"});
  EXPECT_FALSE(mapsFileUnder(dir.path()));
  // Fails while mapping: the second shard is truncated.
  fs::resize_file(dir / kShard2, 100);
  openError(dir.path());
  EXPECT_FALSE(mapsFileUnder(dir.path()));
}

} // namespace
