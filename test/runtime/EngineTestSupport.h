//===- EngineTestSupport.h - the tiny model for engine and C API tests ----===//

#ifndef KILN_TEST_RUNTIME_ENGINETESTSUPPORT_H
#define KILN_TEST_RUNTIME_ENGINETESTSUPPORT_H

#include "TestSupport.h"

#include "kiln/config.h"
#include "kiln/engine.h"
#include "kiln/tiny_checkpoint.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace kiln::testing {

inline const std::filesystem::path &sourceDir() {
  static const std::filesystem::path dir = KILN_SOURCE_DIR;
  return dir;
}

/// Tests over the tiny model of examples/tiny/config.json with the
/// DeepSeek-V3 tokenizer, written once per test suite into a directory of
/// the process (CTest runs each test in its own process, in parallel). The
/// MTP layer is left out: the engine does not use it, and writing it would
/// double every test process's set-up time.
class TinyModelTest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    scratch = std::make_unique<ScratchDir>();
    ModelConfig config = loadConfig(sourceDir() / "examples/tiny");
    config.numNextnPredictLayers = 0;
    writeTinyCheckpoint(config, modelDir(), /*seed=*/1, /*numShards=*/2);
    const std::filesystem::path tokenizer =
        sourceDir() / ".deps/deepseek-v3-tokenizer";
    for (const char *name : {"tokenizer.json", "tokenizer_config.json"})
      std::filesystem::copy_file(tokenizer / name, modelDir() / name);
  }

  static void TearDownTestSuite() {
    loaded.reset();
    scratch.reset();
  }

  static std::filesystem::path modelDir() { return scratch->path() / "tiny"; }

  /// The model, loaded on first use and shared by the suite's tests.
  static std::shared_ptr<Model> model() {
    if (!loaded) {
      ModelLoadOptions options;
      options.cpu.numThreads = 2;
      loaded = Model::load(modelDir(), options);
    }
    return loaded;
  }

  static inline std::unique_ptr<ScratchDir> scratch;
  static inline std::shared_ptr<Model> loaded;
};

/// A prompt of test/golden/tiny_model_golden.json and the greedy tokens HF
/// transformers continued it with on the tiny model. The MTP layer does not
/// change the main model's tensors (each has its own random stream), so
/// they hold for TinyModelTest's checkpoint too.
struct GoldenPrompt {
  std::vector<int32_t> tokens;
  std::vector<int32_t> greedy;
};

/// The golden prompts whose greedy tokens all have text: the engine never
/// samples ids past the tokenizer's vocabulary (the embedding is padded
/// beyond it), which HF's argmax may pick.
inline std::vector<GoldenPrompt> goldenPrompts(int32_t textVocab) {
  std::ifstream file(sourceDir() / "test/golden/tiny_model_golden.json");
  nlohmann::json golden = nlohmann::json::parse(file);
  std::vector<GoldenPrompt> prompts;
  for (const auto &prompt : golden["prompts"]) {
    GoldenPrompt entry{prompt["tokens"].get<std::vector<int32_t>>(),
                       prompt["greedy"].get<std::vector<int32_t>>()};
    bool allText = true;
    for (int32_t token : entry.greedy)
      allText &= token < textVocab;
    if (allText)
      prompts.push_back(std::move(entry));
  }
  return prompts;
}

/// Open file descriptors of this process.
inline int openFileCount() {
  int count = 0;
  for (const auto &entry :
       std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++count;
  }
  return count;
}

/// Memory mappings of this process whose file lies under `dir`.
inline int mappingsUnder(const std::filesystem::path &dir) {
  std::ifstream maps("/proc/self/maps");
  int count = 0;
  for (std::string line; std::getline(maps, line);)
    count += line.find(dir.string()) != std::string::npos;
  return count;
}

} // namespace kiln::testing

#endif // KILN_TEST_RUNTIME_ENGINETESTSUPPORT_H
