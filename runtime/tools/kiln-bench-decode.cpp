//===- kiln-bench-decode.cpp - CUDA backend steps at full model width -----===//
//
// Times the CUDA backend on artifacts compiled from full-width DeepSeek-V3
// configs with few layers, with synthetic weights generated on the GPU (no
// checkpoint): decode step latency at several batch sizes after a prompt of
// --context tokens per sequence, and prefill throughput of one --prefill
// token prompt. Given two cases that differ only in their number of MoE
// layers, it prints the per-layer decode latency (the difference, which
// cancels the embedding, the head and the step overhead) and, at batch 1,
// the fraction of the HBM roofline: the bytes one token reads in one MoE
// layer (attention and shared-expert weights, the 8 routed experts, the
// router, the latent KV cache) over the per-layer time.
//
// usage: kiln-bench-decode --case CONFIG.json,ARTIFACT.kiln [--case ...]
//          [--batches 1,8,32,128] [--context 256] [--prefill 4096]
//          [--steps 16] [--hbm-gbps 3350]
//
//===----------------------------------------------------------------------===//

#include "kiln/artifact.h"
#include "kiln/config.h"
#include "kiln/cuda/cuda_backend.h"
#include "kiln/error.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace kiln;
using Clock = std::chrono::steady_clock;

namespace {

struct Case {
  std::string configPath;
  std::string artifactPath;
  ModelConfig config;
  /// Median decode step (ms) per batch size, prefill tokens/s.
  std::map<int, double> stepMs;
  double prefillMs = 0;
};

std::vector<int> parseList(const std::string &text) {
  std::vector<int> out;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ','))
    out.push_back(std::stoi(item));
  return out;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double msSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start)
      .count();
}

int64_t moeLayers(const ModelConfig &c) {
  int64_t n = 0;
  for (int64_t l = 0; l < c.numHiddenLayers; ++l)
    n += c.isMoELayer(l);
  return n;
}

/// Bytes one decode token reads in one MoE layer at `context` cached tokens.
double moeLayerBytesPerToken(const ModelConfig &c, int64_t context) {
  const double h = c.hiddenSize, heads = c.numAttentionHeads;
  double attention = h * c.qLoraRank +
                     double(c.qLoraRank) * heads * c.qkHeadDim() +
                     h * (c.kvLoraRank + c.qkRopeHeadDim) +
                     2.0 * heads * (c.qkNopeHeadDim + c.vHeadDim) *
                         c.kvLoraRank + // kv_b in BF16
                     heads * c.vHeadDim * h;
  double expert = 3.0 * h * c.moeIntermediateSize;
  double experts = expert * (c.nSharedExperts + c.numExpertsPerTok);
  double router = 2.0 * c.nRoutedExperts * h;
  double cache = 2.0 * context * (c.kvLoraRank + c.qkRopeHeadDim);
  return attention + experts + router + cache;
}

void runCase(Case &bench, const std::vector<int> &batches, int context,
             int prefill, int steps) {
  std::ifstream file(bench.configPath);
  if (!file)
    throw Error(bench.configPath + ": cannot read");
  std::string json((std::istreambuf_iterator<char>(file)),
                   std::istreambuf_iterator<char>());
  bench.config = parseConfig(json, bench.configPath);
  auto start = Clock::now();
  Artifact artifact = readArtifact(bench.artifactPath);
  cuda::CudaBackend gpu(bench.config, std::move(artifact), bench.artifactPath,
                        /*seed=*/1);
  cuda::CudaBackendStats stats = gpu.stats();
  std::printf("%s: %lld layers (%lld MoE) on %s: %.1f GB of weights, %.1f GB "
              "KV cache, set up in %.1f s\n",
              bench.artifactPath.c_str(),
              static_cast<long long>(bench.config.numHiddenLayers),
              static_cast<long long>(moeLayers(bench.config)),
              gpu.deviceDescription().c_str(), stats.weightBytes / 1e9,
              stats.kvCacheBytes / 1e9, msSince(start) / 1e3);
  const int64_t vocab = bench.config.vocabSize;
  uint64_t state = 12345;
  auto token = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int32_t>((state >> 33) % vocab);
  };
  for (int batch : batches) {
    std::vector<std::unique_ptr<BackendSequence>> sequences;
    std::vector<BackendStepEntry> entries;
    for (int b = 0; b < batch; ++b) {
      sequences.push_back(gpu.newSequence());
      std::vector<int32_t> prompt(context);
      for (int32_t &t : prompt)
        t = token();
      entries.push_back({sequences.back().get(), prompt, 0});
    }
    gpu.step(entries);
    std::vector<double> times;
    for (int s = 0; s < steps + 2; ++s) {
      for (auto &e : entries) {
        e.startPosition += static_cast<int64_t>(e.tokens.size());
        e.tokens = {token()};
      }
      auto t0 = Clock::now();
      gpu.step(entries);
      if (s >= 2) // the first steps warm caches and allocators
        times.push_back(msSince(t0));
    }
    bench.stepMs[batch] = median(times);
    std::printf("  decode batch %3d: %.3f ms per step (median of %d)\n", batch,
                bench.stepMs[batch], steps);
  }
  if (prefill > 0) {
    auto sequence = gpu.newSequence();
    std::vector<int32_t> prompt(prefill);
    for (int32_t &t : prompt)
      t = token();
    gpu.step({{sequence.get(), prompt, 0}}); // warm-up
    auto again = gpu.newSequence();
    auto t0 = Clock::now();
    gpu.step({{again.get(), prompt, 0}});
    bench.prefillMs = msSince(t0);
    std::printf("  prefill %d tokens: %.1f ms, %.0f tokens/s\n", prefill,
                bench.prefillMs, prefill / (bench.prefillMs / 1e3));
  }
}

} // namespace

int main(int argc, char **argv) {
  std::vector<Case> cases;
  std::vector<int> batches = {1, 8, 32, 128};
  int context = 256, prefill = 4096, steps = 16;
  double hbmGbps = 3350;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::puts("usage: kiln-bench-decode --case CONFIG.json,ARTIFACT.kiln "
                  "[--case ...] [--batches 1,8,32,128] [--context 256] "
                  "[--prefill 4096] [--steps 16] [--hbm-gbps 3350]");
        return 0;
      }
      if (i + 1 >= argc)
        throw Error("option " + arg + " needs a value");
      std::string value = argv[++i];
      if (arg == "--case") {
        size_t comma = value.find(',');
        if (comma == std::string::npos)
          throw Error("--case: expected CONFIG.json,ARTIFACT.kiln");
        Case c;
        c.configPath = value.substr(0, comma);
        c.artifactPath = value.substr(comma + 1);
        cases.push_back(c);
      } else if (arg == "--batches") {
        batches = parseList(value);
      } else if (arg == "--context") {
        context = std::stoi(value);
      } else if (arg == "--prefill") {
        prefill = std::stoi(value);
      } else if (arg == "--steps") {
        steps = std::stoi(value);
      } else if (arg == "--hbm-gbps") {
        hbmGbps = std::stod(value);
      } else {
        throw Error("unknown option " + arg);
      }
    }
    if (cases.empty())
      throw Error("give at least one --case CONFIG.json,ARTIFACT.kiln");
    for (Case &c : cases)
      runCase(c, batches, context, prefill, steps);

    if (cases.size() >= 2) {
      const Case &small = cases.front(), &large = cases.back();
      int64_t layers = moeLayers(large.config) - moeLayers(small.config);
      if (layers <= 0)
        throw Error("the last case needs more MoE layers than the first");
      double bytes = moeLayerBytesPerToken(large.config, context);
      std::printf("\n| batch | step ms (%lld MoE) | step ms (%lld MoE) | "
                  "per MoE layer ms | tokens/s per layer-stack |\n| --- | "
                  "--- | --- | --- | --- |\n",
                  static_cast<long long>(moeLayers(small.config)),
                  static_cast<long long>(moeLayers(large.config)));
      for (int batch : batches) {
        double perLayer =
            (large.stepMs.at(batch) - small.stepMs.at(batch)) / layers;
        std::printf("| %d | %.3f | %.3f | %.3f | %.0f |\n", batch,
                    small.stepMs.at(batch), large.stepMs.at(batch), perLayer,
                    batch / (large.stepMs.at(batch) / 1e3));
        if (batch == 1)
          std::printf("batch 1: %.1f MB read per token per MoE layer "
                      "(context %d) in %.3f ms = %.0f GB/s, %.1f%% of %.0f "
                      "GB/s HBM\n",
                      bytes / 1e6, context, perLayer, bytes / perLayer / 1e6,
                      100.0 * bytes / perLayer / 1e6 / hbmGbps, hbmGbps);
      }
      if (prefill > 0 && large.prefillMs > 0 && small.prefillMs > 0) {
        double perLayer = (large.prefillMs - small.prefillMs) / layers;
        std::printf("prefill %d tokens: %.2f ms per MoE layer, %.0f tokens/s "
                    "per layer\n",
                    prefill, perLayer, prefill / (perLayer / 1e3));
      }
    }
    return 0;
  } catch (const std::exception &error) {
    std::fprintf(stderr, "kiln-bench-decode: error: %s\n", error.what());
    return 1;
  }
}
