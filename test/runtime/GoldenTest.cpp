//===- GoldenTest.cpp - CPU reference against Hugging Face transformers ---===//
//
// The tiny checkpoint of `kiln make-tiny --config examples/tiny/config.json
// --seed 1 --shards 2` through the CPU backend must give the logits HF
// transformers' DeepseekV3ForCausalLM gave for it (test/golden/, recorded on
// the GPU machine by make_model_golden.py) to 1e-4 relative error, and the
// same 16 greedy tokens.
//
//===----------------------------------------------------------------------===//

#include "kiln/checkpoint.h"
#include "kiln/config.h"
#include "kiln/cpu_model.h"
#include "kiln/sampler.h"
#include "kiln/tiny_checkpoint.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

#include <unistd.h>

namespace fs = std::filesystem;

namespace {

const fs::path kSourceDir = KILN_SOURCE_DIR;

uint32_t crc32(const fs::path &path) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> entries{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int bit = 0; bit < 8; ++bit)
        c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      entries[i] = c;
    }
    return entries;
  }();
  std::ifstream file(path, std::ios::binary);
  std::vector<char> buffer(1 << 20);
  uint32_t crc = 0xFFFFFFFFu;
  while (file.read(buffer.data(), buffer.size()) || file.gcount()) {
    for (std::streamsize i = 0; i < file.gcount(); ++i)
      crc = table[(crc ^ static_cast<uint8_t>(buffer[i])) & 0xFF] ^ (crc >> 8);
  }
  return crc ^ 0xFFFFFFFFu;
}

class GoldenTest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    std::ifstream file(kSourceDir / "test/golden/tiny_model_golden.json");
    ASSERT_TRUE(file) << "test/golden/tiny_model_golden.json is missing";
    golden = std::make_unique<nlohmann::json>(nlohmann::json::parse(file));

    // One directory per process: CTest runs each test in its own process,
    // in parallel.
    dir = fs::temp_directory_path() /
          ("kiln-golden-tiny-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    kiln::ModelConfig config = kiln::loadConfig(kSourceDir / "examples/tiny");
    kiln::writeTinyCheckpoint(config, dir, /*seed=*/1, /*numShards=*/2);
    checkpoint = std::make_unique<kiln::Checkpoint>(dir);
  }

  static void TearDownTestSuite() {
    checkpoint.reset();
    fs::remove_all(dir);
  }

  /// Logits of every prompt position against the golden, and greedy tokens.
  void checkAgainstGolden(kiln::MlaForm form) {
    kiln::CpuModelOptions options;
    options.mlaForm = form;
    kiln::CpuModel model(checkpoint->config(), *checkpoint, options);
    const int64_t vocab = checkpoint->config().vocabSize;
    const std::vector<int64_t> sampled =
        (*golden)["sampled_vocab"].get<std::vector<int64_t>>();
    for (const auto &prompt : (*golden)["prompts"]) {
      std::vector<int32_t> tokens =
          prompt["tokens"].get<std::vector<int32_t>>();
      model.reset();
      std::vector<float> logits = model.forward(tokens, 0);
      ASSERT_EQ(logits.size(), tokens.size() * vocab);
      for (size_t position = 0; position < tokens.size(); ++position) {
        const auto &expected = prompt["logits"][position];
        const float *row = logits.data() + position * vocab;
        double difference = 0, reference = 0;
        for (size_t i = 0; i < sampled.size(); ++i) {
          double want = expected["sampled"][i].get<double>();
          difference += std::pow(row[sampled[i]] - want, 2);
          reference += want * want;
        }
        double relative = std::sqrt(difference / reference);
        EXPECT_LE(relative, 1e-4) << "prompt position " << position;
        EXPECT_EQ(kiln::argmax(row, vocab), expected["argmax"].get<int32_t>())
            << "position " << position;
        double norm = 0;
        for (int64_t i = 0; i < vocab; ++i)
          norm += double(row[i]) * row[i];
        EXPECT_NEAR(std::sqrt(norm), expected["norm"].get<double>(),
                    1e-4 * expected["norm"].get<double>())
            << "whole-row norm at position " << position;
      }

      // Greedy continuation through the KV cache.
      std::vector<int32_t> greedy;
      int64_t position = static_cast<int64_t>(tokens.size());
      const float *last = logits.data() + (tokens.size() - 1) * vocab;
      std::vector<float> step;
      for (size_t i = 0; i < prompt["greedy"].size(); ++i) {
        int32_t next = kiln::argmax(last, vocab);
        greedy.push_back(next);
        step = model.forward({next}, position++);
        last = step.data();
      }
      EXPECT_EQ(greedy, prompt["greedy"].get<std::vector<int32_t>>());
    }
  }

  static inline fs::path dir;
  static inline std::unique_ptr<nlohmann::json> golden;
  static inline std::unique_ptr<kiln::Checkpoint> checkpoint;
};

TEST_F(GoldenTest, CheckpointIsTheOneTheGoldenWasMadeFrom) {
  for (const auto &[file, crc] : (*golden)["checkpoint_crc32"].items())
    EXPECT_EQ(crc32(dir / file), crc.get<uint32_t>())
        << file << " differs from the checkpoint the golden was made from ("
        << (*golden)["checkpoint"].get<std::string>()
        << "): regenerate it with scripts/device/golden.sh";
}

TEST_F(GoldenTest, AbsorbedMlaMatchesTransformers) {
  checkAgainstGolden(kiln::MlaForm::Absorbed);
}

TEST_F(GoldenTest, NaiveMlaMatchesTransformers) {
  checkAgainstGolden(kiln::MlaForm::Naive);
}

} // namespace
