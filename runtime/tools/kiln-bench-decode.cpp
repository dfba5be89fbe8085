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
// Decode steps run twice per batch size, as CUDA Graphs and eagerly, from
// the same prompts and tokens: both timings are printed and every step's
// logits must agree bit for bit (exit status 2 otherwise). With --timeline
// PREFIX, a few more eager steps per batch size run with the backend's
// per-op timeline: PREFIX-<case>-b<batch>.json (Chrome trace) and, for the
// last MoE layer (the last layer when there is none), a table per op kind:
// measured GPU and host time next to the time the op's bytes (weights, the
// routed experts the batch is expected to touch, the KV cache it reads)
// take at --hbm-gbps. (At batch 8 and more a step's logits read-back and
// output head outweigh one layer, so the per-layer difference of two
// whole steps is noise there; the timeline's layer table is not.)
//
// The prefill runs --prefill-runs times (median); with --timeline, once
// more with the timeline (PREFIX-<case>-prefill.json and the time the
// plan's streams overlapped). Cases with equally many MoE layers (e.g. one
// artifact compiled with --overlap-micro-batches 2 and one without) are
// compared instead: prefill time and whether the prefill logits are equal
// bit for bit (same synthetic weights: seed 1).
//
// usage: kiln-bench-decode --case CONFIG.json,ARTIFACT.kiln [--case ...]
//          [--batches 1,8,32,128] [--context 256] [--prefill 4096]
//          [--steps 16] [--hbm-gbps 3350] [--timeline PREFIX]
//          [--timeline-batches 1,32] [--prefill-runs 5]
//
//===----------------------------------------------------------------------===//

#include "bench_util.h"
#include "kiln/artifact.h"
#include "kiln/config.h"
#include "kiln/cuda/cuda_backend.h"
#include "kiln/cuda/timeline.h"
#include "kiln/error.h"
#include "kiln/fnv1a.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
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
  /// Median decode step (ms) per batch size, with graphs and eagerly.
  std::map<int, double> stepMs;
  std::map<int, double> eagerMs;
  double prefillMs = 0;
  /// The prefill's logits (one row), and the weights the artifact reads (the
  /// synthetic weights follow their order).
  std::vector<float> prefillLogits;
  std::vector<std::string> weightNames;
  /// Whether every decode step's logits agreed between graphs and eager.
  bool graphsMatch = true;
};

struct Options {
  std::vector<int> batches = {1, 8, 32, 128};
  int context = 256, prefill = 4096, steps = 16, prefillRuns = 5;
  double hbmGbps = 3350;
  std::string timelinePrefix;
  std::vector<int> timelineBatches = {1, 32};
};

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

/// FNV-1a over the bits of a step's logits.
uint64_t hashBits(const std::vector<float> &values) {
  uint64_t h = 1469598103934665603ull;
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    h = (h ^ bits) * 1099511628211ull;
  }
  return h;
}

/// Bytes a tensor of the artifact's weight table occupies on the GPU.
double weightBytes(const ArtifactWeight &w) {
  double n = 1;
  for (int64_t d : w.shape)
    n *= double(d);
  if (w.transform == "bf16" || (w.transform == "none" && w.dtype == "bf16"))
    return 2 * n;
  if (w.transform == "f32" || w.dtype == "f32")
    return 4 * n;
  double blocks = w.shape.size() == 2 ? std::ceil(w.shape[0] / 128.0) *
                                            std::ceil(w.shape[1] / 128.0)
                                      : 0;
  return n + 4 * blocks;
}

/// The layer a weight name belongs to: N of "model.layers.N.", -1 before
/// the layers (the embedding), `layers` after them (final norm, head).
int64_t weightLayer(const std::string &name, int64_t layers) {
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) == 0)
    return std::stoll(name.substr(prefix.size()));
  return name.find("embed") != std::string::npos ? -1 : layers;
}

/// Per op kind of one layer of the decode plan: the measured times (from a
/// timeline of eager runs) and the bytes the op must read per step at
/// `batch` tokens and `context` cached positions each.
void printLayerBreakdown(const ModelConfig &config, const Artifact &artifact,
                         const cuda::Timeline &timeline, int batch,
                         int64_t context, double hbmGbps) {
  int64_t layer = config.numHiddenLayers - 1;
  // The plan the backend runs a decode step of `batch` tokens with.
  const LaunchPlan &plan = artifact.plan(artifact.stepPlanName(batch, batch));
  std::map<std::string, const ArtifactWeight *> specs;
  for (const ArtifactWeight &w : artifact.weights)
    specs[w.name] = &w;
  // Steps inherit the layer of the last step before them that reads a
  // weight (adds, SwiGLU, dispatch and combine read none).
  std::vector<int64_t> stepLayer(plan.steps.size(), -1);
  int64_t current = -1;
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    if (!plan.steps[i].weights.empty())
      current = weightLayer(plan.steps[i].weights[0], config.numHiddenLayers);
    stepLayer[i] = current;
  }
  // Routed experts a batch touches: E (1 - (1 - k/E)^B) expected.
  const double experts = double(config.nRoutedExperts);
  const double touched =
      experts > 0
          ? experts *
                (1 - std::pow(1 - config.numExpertsPerTok / experts, batch))
          : 0;
  struct Row {
    int64_t steps = 0;
    double gpuUs = 0, hostUs = 0, bytes = 0;
  };
  std::map<std::string, Row> rows;
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    if (stepLayer[i] != layer)
      continue;
    const PlanStep &step = plan.steps[i];
    Row &r = rows[step.op];
    ++r.steps;
    for (const std::string &name : step.weights) {
      auto it = specs.find(name);
      if (it == specs.end())
        continue;
      double b = weightBytes(*it->second);
      r.bytes += name.find("{e}") != std::string::npos ? b * touched : b;
    }
    if (step.op == "mla_attention")
      r.bytes += 2.0 * batch * context *
                 double(config.kvLoraRank + config.qkRopeHeadDim);
  }
  const double runs = std::max<int64_t>(1, timeline.runs);
  for (const cuda::TimelineEvent &e : timeline.events) {
    if (stepLayer.at(e.step) != layer)
      continue;
    Row &r = rows[e.op];
    (e.row == cuda::TimelineRow::Gpu ? r.gpuUs : r.hostUs) +=
        e.durationUs / runs;
  }
  std::printf("\nbatch %d, layer %lld (%s), context %lld: GPU time per op "
              "kind (eager, launches gated) vs bytes read at %.0f GB/s\n",
              batch, static_cast<long long>(layer),
              config.isMoELayer(layer) ? "MoE" : "dense",
              static_cast<long long>(context), hbmGbps);
  std::printf("| op | steps | GPU us | host us | MB read | at %.0f GB/s us | "
              "GPU / predicted |\n| --- | --- | --- | --- | --- | --- | --- "
              "|\n",
              hbmGbps);
  std::vector<std::pair<std::string, Row>> sorted(rows.begin(), rows.end());
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto &a, const auto &b) {
                     return a.second.gpuUs > b.second.gpuUs;
                   });
  Row total;
  auto print = [&](const std::string &op, const Row &r) {
    double predicted = r.bytes / (hbmGbps * 1e3);
    char ratio[32] = "-";
    if (predicted > 0.05)
      std::snprintf(ratio, sizeof ratio, "%.1fx", r.gpuUs / predicted);
    std::printf("| %s | %lld | %.1f | %.1f | %.2f | %.1f | %s |\n", op.c_str(),
                static_cast<long long>(r.steps), r.gpuUs, r.hostUs,
                r.bytes / 1e6, predicted, ratio);
  };
  for (const auto &[op, r] : sorted) {
    print(op, r);
    total.steps += r.steps;
    total.gpuUs += r.gpuUs;
    total.hostUs += r.hostUs;
    total.bytes += r.bytes;
  }
  print("layer total", total);
}

/// Decode steps of `batch` sequences after `context`-token prompts, all
/// drawn from `seed`: step times (ms, after 2 warm-up steps) and a hash of
/// each step's logits.
struct DecodeRun {
  std::vector<double> times;
  std::vector<uint64_t> hashes;
  std::vector<float> lastLogits;
};
DecodeRun runDecode(cuda::CudaBackend &gpu, int64_t vocab, int batch,
                    int context, int steps, uint64_t seed,
                    const std::function<void()> &afterPrompt = {}) {
  uint64_t state = seed;
  auto token = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int32_t>((state >> 33) % vocab);
  };
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
  if (afterPrompt)
    afterPrompt();
  DecodeRun run;
  for (int s = 0; s < steps + 2; ++s) {
    for (auto &e : entries) {
      e.startPosition += static_cast<int64_t>(e.tokens.size());
      e.tokens = {token()};
    }
    auto t0 = Clock::now();
    std::vector<float> logits = gpu.step(entries);
    // The first steps warm caches and allocators (and capture the graph).
    if (s >= 2)
      run.times.push_back(msSince(t0));
    run.hashes.push_back(hashBits(logits));
    if (s == steps + 1)
      run.lastLogits = std::move(logits);
  }
  return run;
}

void runCase(Case &bench, int index, const Options &options) {
  const int context = options.context, steps = options.steps;
  std::ifstream file(bench.configPath);
  if (!file)
    throw Error(bench.configPath + ": cannot read");
  std::string json((std::istreambuf_iterator<char>(file)),
                   std::istreambuf_iterator<char>());
  bench.config = parseConfig(json, bench.configPath);
  auto start = Clock::now();
  Artifact artifact = readArtifact(bench.artifactPath);
  cuda::CudaBackend gpu(bench.config, artifact, bench.artifactPath,
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
  const int prefill = options.prefill;
  for (int batch : options.batches) {
    const uint64_t seed = 12345 + batch;
    gpu.setCudaGraphs(true);
    DecodeRun graphs = runDecode(gpu, vocab, batch, context, steps, seed);
    std::string status = gpu.cudaGraphStatus();
    gpu.setCudaGraphs(false);
    DecodeRun eager = runDecode(gpu, vocab, batch, context, steps, seed);
    bench.stepMs[batch] = median(graphs.times);
    bench.eagerMs[batch] = median(eager.times);
    int differ = 0;
    for (size_t s = 0; s < graphs.hashes.size(); ++s)
      differ += graphs.hashes[s] != eager.hashes[s];
    double worst = 0;
    for (size_t i = 0; i < graphs.lastLogits.size(); ++i)
      worst = std::max(
          worst, double(std::fabs(graphs.lastLogits[i] - eager.lastLogits[i])));
    bench.graphsMatch = bench.graphsMatch && differ == 0;
    if (differ > 0) {
      // Which run is the odd one: repeat both.
      auto compare = [](const DecodeRun &a, const DecodeRun &b) {
        int n = 0;
        for (size_t s = 0; s < a.hashes.size(); ++s)
          n += a.hashes[s] != b.hashes[s];
        return n;
      };
      DecodeRun eager2 = runDecode(gpu, vocab, batch, context, steps, seed);
      gpu.setCudaGraphs(true);
      DecodeRun graphs2 = runDecode(gpu, vocab, batch, context, steps, seed);
      gpu.setCudaGraphs(false);
      std::printf("  batch %d repeated: eager vs eager %d, graphs vs graphs "
                  "%d, graphs vs eager (repeats) %d steps differ\n",
                  batch, compare(eager, eager2), compare(graphs, graphs2),
                  compare(graphs2, eager2));
    }
    // A hash over every step's logits: two runs that must compute the same
    // bits (KILN_DEPENDENT_LAUNCH=0 against 1, two builds) print the same.
    uint64_t allSteps = kiln::fnv1a64(graphs.hashes.data(),
                                      graphs.hashes.size() * sizeof(uint64_t));
    std::printf("  decode batch %3d: %.3f ms per step with graphs, %.3f ms "
                "eager (medians of %d); logits %s (%d of %zu steps differ, "
                "last step max |diff| %g), hash %016llx\n    graphs: %s\n",
                batch, bench.stepMs[batch], bench.eagerMs[batch], steps,
                differ == 0 ? "bitwise equal" : "DIFFER", differ,
                graphs.hashes.size(), worst,
                static_cast<unsigned long long>(allSteps), status.c_str());
    if (!options.timelinePrefix.empty() &&
        std::count(options.timelineBatches.begin(),
                   options.timelineBatches.end(), batch)) {
      const int timed = 4;
      runDecode(gpu, vocab, batch, context, timed - 2, seed, [&] {
        gpu.takeTimeline(); // the prompt's run is not a decode step
        gpu.setTimeline(true);
      });
      gpu.setTimeline(false);
      cuda::Timeline timeline = gpu.takeTimeline();
      std::string path = options.timelinePrefix + "-" + std::to_string(index) +
                         "-b" + std::to_string(batch) + ".json";
      cuda::writeChromeTrace(timeline, path);
      std::printf("\n%s: %lld eager decode runs at batch %d, whole model, "
                  "per run:\n%s",
                  path.c_str(), static_cast<long long>(timeline.runs), batch,
                  cuda::formatOpBreakdown(timeline).c_str());
      printLayerBreakdown(bench.config, artifact, timeline, batch,
                          context + timed / 2, options.hbmGbps);
      std::printf("\n");
    }
  }
  gpu.setCudaGraphs(true);
  uint64_t state = 12345;
  auto token = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int32_t>((state >> 33) % vocab);
  };
  for (const ArtifactWeight &w : artifact.weights)
    bench.weightNames.push_back(w.name);
  if (prefill > 0) {
    std::vector<int32_t> prompt(prefill);
    for (int32_t &t : prompt)
      t = token();
    {
      auto sequence = gpu.newSequence();
      gpu.step({{sequence.get(), prompt, 0}}); // warm-up
    }
    std::vector<double> times;
    for (int run = 0; run < options.prefillRuns; ++run) {
      auto again = gpu.newSequence();
      auto t0 = Clock::now();
      bench.prefillLogits = gpu.step({{again.get(), prompt, 0}});
      times.push_back(msSince(t0));
    }
    bench.prefillMs = median(times);
    std::printf("  prefill %d tokens: %.1f ms (median of %d), %.0f tokens/s\n",
                prefill, bench.prefillMs, options.prefillRuns,
                prefill / (bench.prefillMs / 1e3));
    if (!options.timelinePrefix.empty()) {
      gpu.takeTimeline();
      gpu.setTimeline(true);
      {
        auto timed = gpu.newSequence();
        gpu.step({{timed.get(), prompt, 0}});
      }
      gpu.setTimeline(false);
      cuda::Timeline timeline = gpu.takeTimeline();
      std::string path = options.timelinePrefix + "-" + std::to_string(index) +
                         "-prefill.json";
      cuda::writeChromeTrace(timeline, path);
      std::printf("\n%s: prefill of %d tokens, per run:\n%s%s\n\n",
                  path.c_str(), prefill,
                  cuda::formatOpBreakdown(timeline).c_str(),
                  cuda::formatStreamOverlap(timeline).c_str());
    }
  }
}

} // namespace

int main(int argc, char **argv) {
  std::vector<Case> cases;
  Options options;
  std::vector<int> &batches = options.batches;
  int &context = options.context, &prefill = options.prefill;
  double &hbmGbps = options.hbmGbps;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::puts("usage: kiln-bench-decode --case CONFIG.json,ARTIFACT.kiln "
                  "[--case ...] [--batches 1,8,32,128] [--context 256] "
                  "[--prefill 4096] [--steps 16] [--hbm-gbps 3350] "
                  "[--timeline PREFIX] [--timeline-batches 1,32]");
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
        batches = kiln::bench::parseIntList(value);
      } else if (arg == "--context") {
        context = std::stoi(value);
      } else if (arg == "--prefill") {
        prefill = std::stoi(value);
      } else if (arg == "--prefill-runs") {
        options.prefillRuns = std::max(1, std::stoi(value));
      } else if (arg == "--steps") {
        options.steps = std::stoi(value);
      } else if (arg == "--timeline") {
        options.timelinePrefix = value;
      } else if (arg == "--timeline-batches") {
        options.timelineBatches = kiln::bench::parseIntList(value);
      } else if (arg == "--hbm-gbps") {
        hbmGbps = std::stod(value);
      } else {
        throw Error("unknown option " + arg);
      }
    }
    if (cases.empty())
      throw Error("give at least one --case CONFIG.json,ARTIFACT.kiln");
    for (size_t i = 0; i < cases.size(); ++i)
      runCase(cases[i], static_cast<int>(i), options);

    const bool sameModel =
        cases.size() >= 2 &&
        std::all_of(cases.begin(), cases.end(), [&](const Case &c) {
          return moeLayers(c.config) == moeLayers(cases.front().config);
        });
    if (sameModel && prefill > 0) {
      const Case &base = cases.front();
      std::printf("\n| case | prefill ms | tokens/s | logits vs case 0 |\n"
                  "| --- | --- | --- | --- |\n");
      for (const Case &c : cases) {
        int differ = 0;
        double worst = 0;
        for (size_t i = 0;
             i < c.prefillLogits.size() && i < base.prefillLogits.size(); ++i) {
          float a = c.prefillLogits[i], b = base.prefillLogits[i];
          differ += std::memcmp(&a, &b, sizeof a) != 0;
          worst = std::max(worst, double(std::fabs(a - b)));
        }
        std::printf(
            "| %s | %.2f | %.0f | %s |\n", c.artifactPath.c_str(), c.prefillMs,
            prefill / (c.prefillMs / 1e3),
            c.weightNames != base.weightNames ? "other weights (not comparable)"
            : differ == 0                     ? "bitwise equal"
                          : (std::to_string(differ) + " of " +
                             std::to_string(c.prefillLogits.size()) +
                             " differ, max |diff| " + std::to_string(worst))
                                .c_str());
      }
    } else if (cases.size() >= 2) {
      const Case &small = cases.front(), &large = cases.back();
      int64_t layers = moeLayers(large.config) - moeLayers(small.config);
      bool sameDepth = true;
      for (const Case &c : cases)
        sameDepth = sameDepth && moeLayers(c.config) == moeLayers(small.config);
      if (sameDepth) {
        // Artifacts of one model side by side (A/B of compiler options).
        std::printf("\n| batch |");
        for (size_t i = 0; i < cases.size(); ++i)
          std::printf(" case %zu ms (graphs / eager) |", i);
        std::printf("\n| --- |");
        for (size_t i = 0; i < cases.size(); ++i)
          std::printf(" --- |");
        std::printf("\n");
        for (int batch : batches) {
          std::printf("| %d |", batch);
          for (const Case &c : cases)
            std::printf(" %.3f / %.3f |", c.stepMs.at(batch),
                        c.eagerMs.at(batch));
          std::printf("\n");
        }
      } else {
        if (layers <= 0)
          throw Error("the last case needs more MoE layers than the first (or "
                      "every case the same number, for a side-by-side table)");
        double bytes = moeLayerBytesPerToken(large.config, context);
        std::printf("\n| batch | step ms (%lld MoE) | step ms (%lld MoE) | "
                    "per MoE layer ms | tokens/s per layer-stack | eager: "
                    "per MoE layer ms |\n| --- | --- | --- | --- | --- | --- "
                    "|\n",
                    static_cast<long long>(moeLayers(small.config)),
                    static_cast<long long>(moeLayers(large.config)));
        for (int batch : batches) {
          double perLayer =
              (large.stepMs.at(batch) - small.stepMs.at(batch)) / layers;
          double eagerPerLayer =
              (large.eagerMs.at(batch) - small.eagerMs.at(batch)) / layers;
          std::printf("| %d | %.3f | %.3f | %.3f | %.0f | %.3f |\n", batch,
                      small.stepMs.at(batch), large.stepMs.at(batch), perLayer,
                      batch / (large.stepMs.at(batch) / 1e3), eagerPerLayer);
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
    }
    for (const Case &c : cases)
      if (!c.graphsMatch) {
        std::fprintf(stderr,
                     "kiln-bench-decode: %s: graph replay and eager "
                     "logits differ\n",
                     c.artifactPath.c_str());
        return 2;
      }
    return 0;
  } catch (const std::exception &error) {
    std::fprintf(stderr, "kiln-bench-decode: error: %s\n", error.what());
    return 1;
  }
}
