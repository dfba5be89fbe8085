//===- main.cpp - the `kiln` command line ---------------------------------===//
//
// kiln generate | serve | logits | tokenize | detokenize | make-tiny |
// inspect: text generation, an OpenAI-compatible HTTP server (serve.cpp), the
// validation hooks over a Hugging Face style model directory
// (config.json, safetensors shards, tokenizer.json, tokenizer_config.json),
// and a summary of a compiled artifact (.kiln).
// Every error is reported as "kiln: error: ..." with exit code 1.
//
//===----------------------------------------------------------------------===//

#include "serve.h"

#include "kiln/artifact.h"
#include "kiln/backend.h"
#include "kiln/checkpoint.h"
#include "kiln/config.h"
#include "kiln/cpu_model.h"
#include "kiln/engine.h"
#include "kiln/error.h"
#include "kiln/sampler.h"
#include "kiln/tiny_checkpoint.h"
#include "kiln/tokenizer.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace kiln;

namespace {

constexpr const char *kUsage = R"(usage: kiln <command> [options]

Commands:
  generate    --model DIR --prompt TEXT [--max-tokens N] [--chat] [--system TEXT]
              [--temperature T] [--top-k K] [--top-p P] [--seed S] [--stop TEXT]
              [--backend auto|cuda|cpu] [--artifact FILE] [--device N]
              [--mla naive|absorbed] [--fp8-activations [--bf16-storage]]
              [--threads N]
              Streams the continuation of TEXT (with --chat: the assistant's
              answer to TEXT as a user message). Greedy unless --temperature > 0.
  serve       --model DIR [--host 127.0.0.1] [--port 8080] [--max-batch N]
              [--kv-budget-tokens N] [--max-body-bytes N] [--threads N]
              [--backend auto|cuda|cpu] [--artifact FILE] [--device N]
              [--mla naive|absorbed] [--fp8-activations [--bf16-storage]]
              Serves the model over HTTP until SIGINT/SIGTERM, OpenAI style:
              POST /v1/completions, /v1/chat/completions (JSON or SSE with
              "stream": true), GET /v1/models, /health, /metrics (Prometheus).
              Concurrent requests share continuous batching (--max-batch
              sequences, 8 by default); request bodies up to 1 MiB by default.
  logits      --model DIR --tokens 0,17,42 [--backend auto|cuda|cpu]
              [--artifact FILE] [--device N] [--mla naive|absorbed]
              [--fp8-activations [--bf16-storage]] [--threads N]
              Prints {"logits": [[...], ...]}: one row of vocabulary logits per
              input position.
  tokenize    --model DIR --text TEXT [--bos]
              Prints {"ids": [...]}; --bos prepends the BOS token.
  detokenize  --model DIR --ids 1,2,3
              Prints the decoded text.
  make-tiny   --config FILE --out DIR [--seed N] [--shards N] [--tokenizer DIR]
              Writes a random checkpoint in the DeepSeek-V3 format for the
              config (FP8 128x128 blocks, per-expert tensors, MTP layer,
              sharded with an index), plus the tokenizer files from DIR.
  inspect     FILE.kiln
              Checks a compiled artifact (kilnc's output) and prints a
              summary: target, model, options, kernels, weights, and each
              launch plan's buffers and steps.

A model directory holds config.json, model.safetensors.index.json and its
shards (or model.safetensors), tokenizer.json and tokenizer_config.json.
Backends: cuda runs a kilnc artifact (--artifact FILE, by default
DIR/model.kiln; compile one with `kilnc DIR/config.json -o DIR/model.kiln`)
on an sm_90a GPU; cpu is the FP32 reference. auto (the default) takes cuda
when a GPU and an artifact are present, cpu otherwise. On cpu,
--fp8-activations rounds every FP8 linear's input per 1x128 tile as the GPU
does, and --bf16-storage also rounds to BF16 what the CUDA backend stores in
BF16 (its numerics, up to summation order).
)";

/// Options of one command: `--name value` pairs and bare `--flag`s.
class Options {
public:
  Options(int argc, char **argv, int first,
          const std::vector<std::string> &valued,
          const std::vector<std::string> &flags) {
    for (int i = first; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0)
        throw Error("unexpected argument '" + arg + "'");
      std::string name = arg.substr(2);
      if (std::find(flags.begin(), flags.end(), name) != flags.end()) {
        present[name].push_back("");
        continue;
      }
      if (std::find(valued.begin(), valued.end(), name) == valued.end())
        throw Error("unknown option '" + arg + "' (see kiln --help)");
      if (i + 1 >= argc)
        throw Error("option '" + arg + "' needs a value");
      present[name].push_back(argv[++i]);
    }
  }

  bool has(const std::string &name) const { return present.count(name); }

  std::string get(const std::string &name) const {
    auto it = present.find(name);
    if (it == present.end())
      throw Error("missing required option --" + name);
    return it->second.back();
  }

  std::string get(const std::string &name, const std::string &fallback) const {
    return has(name) ? get(name) : fallback;
  }

  std::vector<std::string> all(const std::string &name) const {
    auto it = present.find(name);
    return it == present.end() ? std::vector<std::string>{} : it->second;
  }

  template <typename T> T number(const std::string &name, T fallback) const {
    if (!has(name))
      return fallback;
    std::string text = get(name);
    T value{};
    auto [end, error] =
        std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size())
      throw Error("option --" + name + ": '" + text + "' is not a number");
    return value;
  }

private:
  std::map<std::string, std::vector<std::string>> present;
};

std::vector<int32_t> parseIds(const std::string &text,
                              const std::string &option) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = std::min(text.find(',', start), text.size());
    int32_t id = 0;
    auto [end, error] =
        std::from_chars(text.data() + start, text.data() + comma, id);
    if (error != std::errc() || end != text.data() + comma || id < 0)
      throw Error("option --" + option + ": '" +
                  text.substr(start, comma - start) +
                  "' is not a token id (expected e.g. 0,17,42)");
    ids.push_back(id);
    start = comma + 1;
  }
  return ids;
}

CpuModelOptions modelOptions(const Options &options) {
  CpuModelOptions result;
  std::string mla = options.get("mla", "absorbed");
  if (mla == "naive")
    result.mlaForm = MlaForm::Naive;
  else if (mla != "absorbed")
    throw Error("--mla: expected naive or absorbed, got '" + mla + "'");
  result.emulateFp8Activations = options.has("fp8-activations");
  result.emulateBf16Storage = options.has("bf16-storage");
  result.numThreads = options.number<int>("threads", 0);
  result.loadMtp = false;
  return result;
}

/// The artifact to run on the GPU, or empty for the CPU reference
/// (--backend, --artifact; see kUsage).
fs::path chooseArtifact(const Options &options, const fs::path &modelDir) {
  std::string backend = options.get("backend", "auto");
  if (backend != "auto" && backend != "cuda" && backend != "cpu")
    throw Error("--backend: unknown backend '" + backend +
                "' (expected auto, cuda or cpu)");
  if (backend == "cpu") {
    if (options.has("artifact"))
      throw Error("--artifact needs the cuda backend, not --backend cpu");
    return {};
  }
  fs::path artifact = options.has("artifact")
                          ? fs::path(options.get("artifact"))
                          : modelDir / "model.kiln";
  bool haveArtifact = fs::exists(artifact);
  if (backend == "cuda") {
    if (!haveArtifact)
      throw Error("--backend cuda: no artifact at " + artifact.string() +
                  " (compile one with `kilnc " +
                  (modelDir / "config.json").string() + " -o " +
                  artifact.string() + "`, or pass --artifact FILE)");
    return artifact;
  }
  // auto: the GPU when there is one and something compiled to run on it.
  std::string whyNoGpu;
  if (!haveArtifact) {
    if (options.has("artifact"))
      throw Error("--artifact: " + artifact.string() + " does not exist");
    return {};
  }
  if (gpuCount(&whyNoGpu) == 0) {
    std::fprintf(stderr, "kiln: no GPU (%s); running %s on the CPU reference\n",
                 whyNoGpu.c_str(), modelDir.c_str());
    return {};
  }
  return artifact;
}

/// `modelDir` on its backend (CPU reference or CUDA), loaded with a line on
/// stderr.
std::shared_ptr<Model> loadBackend(const Options &options,
                                   const fs::path &modelDir) {
  auto start = std::chrono::steady_clock::now();
  ModelLoadOptions load;
  load.cpu = modelOptions(options);
  load.artifact = chooseArtifact(options, modelDir);
  load.device = options.number<int>("device", 0);
  // Model::load also reads the tokenizer, which generate needs anyway.
  std::shared_ptr<Model> model = Model::load(modelDir, load);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  std::fprintf(stderr, "kiln: loaded %s on the %s backend in %.2f s\n",
               modelDir.c_str(), load.artifact.empty() ? "cpu" : "cuda",
               seconds);
  return model;
}

void appendFloat(std::string &out, float value) {
  if (!std::isfinite(value)) {
    // JSON has no NaN or infinity; a non-finite logit is a bug to surface.
    throw Error("non-finite logit " + std::to_string(value));
  }
  char buffer[32];
  auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, end);
}

int runLogits(const Options &options) {
  std::vector<int32_t> tokens = parseIds(options.get("tokens"), "tokens");
  fs::path dir = options.get("model");
  // Check the ids against the config before loading any weights.
  int64_t vocab = loadConfig(dir).vocabSize;
  for (int32_t id : tokens)
    if (id >= vocab)
      throw Error("--tokens: id " + std::to_string(id) +
                  " is outside the vocabulary (" + std::to_string(vocab) +
                  " tokens)");
  std::shared_ptr<Model> model = loadBackend(options, dir);
  Backend *backend = &model->backend();
  // One step per position: the backend returns the last token's logits.
  std::unique_ptr<BackendSequence> sequence = backend->newSequence();
  std::vector<float> logits;
  logits.reserve(tokens.size() * vocab);
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<float> row =
        backend->step({{sequence.get(), {tokens[i]}, static_cast<int64_t>(i)}});
    logits.insert(logits.end(), row.begin(), row.end());
  }
  std::string out = "{\"logits\": [";
  out.reserve(tokens.size() * vocab * 12);
  for (size_t row = 0; row < tokens.size(); ++row) {
    out += row ? ", [" : "[";
    for (int64_t i = 0; i < vocab; ++i) {
      if (i)
        out += ", ";
      appendFloat(out, logits[row * vocab + i]);
    }
    out += "]";
  }
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

int runGenerate(const Options &options) {
  fs::path dir = options.get("model");
  Tokenizer tokenizer = Tokenizer::load(dir);
  SamplingParams sampling;
  sampling.temperature = options.number<float>("temperature", 0.0f);
  sampling.topK = options.number<int64_t>("top-k", 0);
  sampling.topP = options.number<float>("top-p", 1.0f);
  sampling.seed = options.number<uint64_t>("seed", 0);
  Sampler sampler(sampling);
  int64_t maxTokens = options.number<int64_t>("max-tokens", 64);
  if (maxTokens < 0)
    throw Error("--max-tokens must not be negative");

  std::vector<int32_t> prompt;
  if (options.has("chat")) {
    std::vector<ChatMessage> messages;
    if (options.has("system"))
      messages.push_back({"system", options.get("system")});
    messages.push_back({"user", options.get("prompt")});
    prompt = tokenizer.encode(tokenizer.applyChatTemplate(messages, true),
                              /*addBos=*/false);
  } else {
    prompt =
        tokenizer.encode(options.get("prompt"), tokenizer.addBosByDefault());
  }
  std::shared_ptr<Model> model = loadBackend(options, dir);
  Backend *backend = &model->backend();
  std::unique_ptr<BackendSequence> sequence = backend->newSequence();
  int64_t vocab = backend->config().vocabSize;
  // The embedding table is padded past the tokenizer's vocabulary; ids in
  // the padding have no text and are never sampled.
  int64_t textVocab = std::min<int64_t>(vocab, tokenizer.vocabSize());

  StopChecker stops({{tokenizer.eosId()}, options.all("stop")});
  StreamDecoder stream(tokenizer, /*skipSpecial=*/true);
  std::string text;
  size_t printed = 0;
  auto start = std::chrono::steady_clock::now();
  std::vector<float> logits = backend->step({{sequence.get(), prompt, 0}});
  int64_t position = static_cast<int64_t>(prompt.size());
  int64_t generated = 0;
  StopDecision stop;
  while (generated < maxTokens) {
    float *last = logits.data();
    std::fill(last + textVocab, last + vocab,
              -std::numeric_limits<float>::infinity());
    int32_t token = sampler.sample(last, vocab);
    ++generated;
    text += stream.push(token);
    stop = stops.check(token, text);
    if (stop.reason != StopReason::None)
      break;
    size_t safe = stops.safeTextLength(text);
    if (safe > printed) {
      std::fwrite(text.data() + printed, 1, safe - printed, stdout);
      std::fflush(stdout);
      printed = safe;
    }
    logits = backend->step({{sequence.get(), {token}, position++}});
  }
  if (stop.reason == StopReason::None)
    text += stream.finish();
  size_t end =
      stop.reason == StopReason::StopString ? stop.textLength : text.size();
  if (end > printed)
    std::fwrite(text.data() + printed, 1, end - printed, stdout);
  std::fputc('\n', stdout);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  std::fprintf(stderr,
               "kiln: %zu prompt tokens, %lld generated in %.2f s (%.1f "
               "tokens/s)%s\n",
               prompt.size(), static_cast<long long>(generated), seconds,
               generated / seconds,
               stop.reason == StopReason::EosToken ? ", stopped at EOS"
               : stop.reason == StopReason::StopString
                   ? ", stopped at a stop string"
                   : "");
  return 0;
}

void printIds(const std::vector<int32_t> &ids) {
  std::string out = "{\"ids\": [";
  for (size_t i = 0; i < ids.size(); ++i)
    out += (i ? ", " : "") + std::to_string(ids[i]);
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
}

int runTokenize(const Options &options) {
  Tokenizer tokenizer = Tokenizer::load(options.get("model"));
  printIds(tokenizer.encode(options.get("text"), options.has("bos")));
  return 0;
}

int runDetokenize(const Options &options) {
  Tokenizer tokenizer = Tokenizer::load(options.get("model"));
  std::string text = tokenizer.decode(parseIds(options.get("ids"), "ids"));
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
  return 0;
}

int runMakeTiny(const Options &options) {
  fs::path configPath = options.get("config");
  std::ifstream file(configPath);
  if (!file)
    throw Error(configPath.string() + ": cannot read the config");
  std::string json((std::istreambuf_iterator<char>(file)),
                   std::istreambuf_iterator<char>());
  ModelConfig config = parseConfig(json, configPath.string());
  fs::path out = options.get("out");
  int shards = options.number<int>("shards", 2);
  writeTinyCheckpoint(config, out, options.number<uint64_t>("seed", 1), shards);
  if (options.has("tokenizer")) {
    fs::path from = options.get("tokenizer");
    for (const char *name : {"tokenizer.json", "tokenizer_config.json"}) {
      std::error_code error;
      fs::copy_file(from / name, out / name,
                    fs::copy_options::overwrite_existing, error);
      if (error)
        throw Error((from / name).string() +
                    ": cannot copy: " + error.message());
    }
  }
  std::fprintf(stderr, "kiln: wrote a tiny DeepSeek-V3 checkpoint to %s\n",
               out.c_str());
  return 0;
}

int runInspect(int argc, char **argv) {
  if (argc != 3 || std::strncmp(argv[2], "--", 2) == 0)
    throw Error("usage: kiln inspect FILE.kiln");
  std::string summary = describeArtifact(readArtifact(argv[2]));
  std::fwrite(summary.data(), 1, summary.size(), stdout);
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") ||
      !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 1 : 0;
  }
  std::string command = argv[1];
  const std::vector<std::string> modelFlags = {"fp8-activations",
                                               "bf16-storage"};
  const std::vector<std::string> modelOptionNames = {
      "model", "backend", "artifact", "device", "mla", "threads"};
  try {
    if (command == "generate") {
      std::vector<std::string> valued = modelOptionNames;
      valued.insert(valued.end(),
                    {"prompt", "max-tokens", "system", "temperature", "top-k",
                     "top-p", "seed", "stop"});
      std::vector<std::string> flags = modelFlags;
      flags.push_back("chat");
      return runGenerate(Options(argc, argv, 2, valued, flags));
    }
    if (command == "serve") {
      std::vector<std::string> valued = modelOptionNames;
      valued.insert(valued.end(), {"host", "port", "max-batch",
                                   "kv-budget-tokens", "max-body-bytes"});
      Options options(argc, argv, 2, valued, modelFlags);
      ServeOptions serve;
      serve.modelDir = options.get("model");
      serve.host = options.get("host", serve.host);
      serve.port = options.number<int>("port", serve.port);
      serve.maxBatch = options.number<int64_t>("max-batch", serve.maxBatch);
      serve.kvBudgetTokens =
          options.number<int64_t>("kv-budget-tokens", serve.kvBudgetTokens);
      serve.maxBodyBytes =
          options.number<size_t>("max-body-bytes", serve.maxBodyBytes);
      serve.cpu = modelOptions(options);
      serve.artifact = chooseArtifact(options, serve.modelDir).string();
      serve.device = options.number<int>("device", 0);
      return runServe(serve);
    }
    if (command == "logits") {
      std::vector<std::string> valued = modelOptionNames;
      valued.push_back("tokens");
      return runLogits(Options(argc, argv, 2, valued, modelFlags));
    }
    if (command == "tokenize")
      return runTokenize(Options(argc, argv, 2, {"model", "text"}, {"bos"}));
    if (command == "detokenize")
      return runDetokenize(Options(argc, argv, 2, {"model", "ids"}, {}));
    if (command == "make-tiny")
      return runMakeTiny(Options(
          argc, argv, 2, {"config", "out", "seed", "shards", "tokenizer"}, {}));
    if (command == "inspect")
      return runInspect(argc, argv);
    throw Error("unknown command '" + command + "' (see kiln --help)");
  } catch (const std::exception &error) {
    std::fprintf(stderr, "kiln: error: %s\n", error.what());
    return 1;
  }
}
