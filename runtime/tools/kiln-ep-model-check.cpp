//===- kiln-ep-model-check.cpp - a model expert-parallel vs one GPU -------===//
//
// One process per GPU (ranks from the environment: kiln/distributed.h;
// scripts/device/ep-model.sh starts them). Every rank loads the same
// checkpoint twice on its GPU: through an expert-parallel artifact (kilnc
// --ep N, or --ep-steps at one rank), which holds only this rank's experts
// and exchanges routed rows with the other ranks in every MoE layer, and
// through a single-GPU artifact of the same model (all experts here). Each
// rank prefills its own prompts (random tokens from a per-rank seed, so the
// ranks route different rows to each other) and decodes greedily a few
// steps, feeding both backends the expert-parallel run's tokens. Every
// step's logits are compared: the two runs differ only in the order of
// reductions where rows of another rank share a GEMM tile or group, so the
// logits agree to float rounding and the greedy tokens match.
//
// Prints per rank and step the max relative error (max |ep - ref| / max
// |ref| over the step's rows) and whether the argmax tokens agree; one JSON
// line on rank 0. Exit status 1 when a token differs or an error exceeds
// --tolerance, or on any error.
//
//===----------------------------------------------------------------------===//

#include "kiln/artifact.h"
#include "kiln/backend.h"
#include "kiln/checkpoint.h"
#include "kiln/cuda/cuda_backend.h"
#include "kiln/distributed.h"
#include "kiln/error.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

using namespace kiln;
using namespace kiln::cuda;

namespace {

struct Args {
  std::string model, reference, artifact;
  int sequences = 4, promptTokens = 6, decodeSteps = 4;
  double tolerance = 1e-2;
};

/// The argmax of each row of `logits` (rows of `vocab`).
std::vector<int32_t> greedy(const std::vector<float> &logits, int64_t vocab) {
  std::vector<int32_t> tokens;
  for (size_t r = 0; r * vocab < logits.size(); ++r)
    tokens.push_back(static_cast<int32_t>(
        std::max_element(logits.begin() + r * vocab,
                         logits.begin() + (r + 1) * vocab) -
        (logits.begin() + r * vocab)));
  return tokens;
}

} // namespace

int main(int argc, char **argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        throw Error(arg + " needs a value");
      return argv[++i];
    };
    try {
      if (arg == "--model")
        args.model = value();
      else if (arg == "--reference")
        args.reference = value();
      else if (arg == "--artifact")
        args.artifact = value();
      else if (arg == "--sequences")
        args.sequences = std::stoi(value());
      else if (arg == "--prompt-tokens")
        args.promptTokens = std::stoi(value());
      else if (arg == "--decode-steps")
        args.decodeSteps = std::stoi(value());
      else if (arg == "--tolerance")
        args.tolerance = std::stod(value());
      else
        throw Error("unknown argument " + arg);
    } catch (const std::exception &e) {
      std::fprintf(
          stderr,
          "kiln-ep-model-check: %s\nusage: kiln-ep-model-check --model DIR "
          "--reference ONE_GPU.kiln --artifact EP.kiln [--sequences 4] "
          "[--prompt-tokens 6] [--decode-steps 4] [--tolerance 1e-2]\n"
          "ranks come from KILN_RANK/KILN_WORLD_SIZE, mpirun or "
          "RANK/WORLD_SIZE (kiln/distributed.h)\n",
          e.what());
      return 2;
    }
  }
  if (args.model.empty() || args.reference.empty() || args.artifact.empty()) {
    std::fprintf(stderr, "kiln-ep-model-check: --model, --reference and "
                         "--artifact are required\n");
    return 2;
  }
  try {
    const DistributedEnvironment env = readDistributedEnvironment();
    Checkpoint checkpoint(args.model);
    CudaBackendOptions options;
    options.device = env.localRank;
    CudaBackend ep(checkpoint, readArtifact(args.artifact), args.artifact,
                   options);
    CudaBackend reference(checkpoint, readArtifact(args.reference),
                          args.reference, options);
    const int64_t vocab = checkpoint.config().vocabSize;

    // Per-rank prompts: a splitmix64 stream from the rank.
    uint64_t state = 0x9E3779B97F4A7C15ull * (env.rank + 1);
    auto next = [&] {
      uint64_t z = (state += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    std::vector<std::unique_ptr<BackendSequence>> epSeqs, refSeqs;
    std::vector<BackendStepEntry> epStep, refStep;
    for (int s = 0; s < args.sequences; ++s) {
      epSeqs.push_back(ep.newSequence());
      refSeqs.push_back(reference.newSequence());
      std::vector<int32_t> prompt;
      for (int t = 0; t < args.promptTokens; ++t)
        prompt.push_back(static_cast<int32_t>(2 + next() % (vocab - 2)));
      epStep.push_back({epSeqs.back().get(), prompt, 0});
      refStep.push_back({refSeqs.back().get(), prompt, 0});
    }

    double worst = 0;
    int mismatchedTokens = 0;
    std::string steps;
    for (int step = 0; step <= args.decodeSteps; ++step) {
      const std::vector<float> a = ep.step(epStep);
      const std::vector<float> b = reference.step(refStep);
      double maxDiff = 0, maxRef = 0;
      bool finite = true;
      for (size_t i = 0; i < b.size(); ++i) {
        finite = finite && std::isfinite(a[i]) && std::isfinite(b[i]);
        maxDiff = std::max(maxDiff, double(std::fabs(a[i] - b[i])));
        maxRef = std::max(maxRef, double(std::fabs(b[i])));
      }
      const double relative =
          finite ? maxDiff / std::max(maxRef, 1e-30) : INFINITY;
      const std::vector<int32_t> tokensEp = greedy(a, vocab),
                                 tokensRef = greedy(b, vocab);
      int differ = 0;
      for (size_t s = 0; s < tokensEp.size(); ++s)
        differ += tokensEp[s] != tokensRef[s];
      worst = std::max(worst, relative);
      mismatchedTokens += differ;
      std::printf("rank %d/%d %s %d: %zu rows, max rel err %.3g (max |diff| "
                  "%.3g, max |ref| %.3g), greedy tokens %s\n",
                  env.rank, env.worldSize, step ? "decode" : "prefill", step,
                  tokensEp.size(), relative, maxDiff, maxRef,
                  differ ? "DIFFER" : "match");
      char entry[160];
      std::snprintf(entry, sizeof entry,
                    "%s{\"step\": %d, \"max_rel_err\": %.3g, "
                    "\"tokens_match\": %s}",
                    steps.empty() ? "" : ", ", step, relative,
                    differ ? "false" : "true");
      steps += entry;
      // Both continue from the expert-parallel run's tokens.
      for (size_t s = 0; s < epStep.size(); ++s) {
        epStep[s].startPosition +=
            static_cast<int64_t>(epStep[s].tokens.size());
        refStep[s].startPosition = epStep[s].startPosition;
        epStep[s].tokens = refStep[s].tokens = {tokensEp[s]};
      }
    }
    const bool ok = mismatchedTokens == 0 && worst <= args.tolerance;
    const CudaBackendStats stats = ep.stats(), refStats = reference.stats();
    // All of the rank's weights (its experts and the replicated rest)
    // against the one-GPU model's.
    std::printf("rank %d/%d (%s, GPU %d): weights %.2f MB here, %.2f MB on "
                "one GPU; %s\n",
                env.rank, env.worldSize, env.source.c_str(), env.localRank,
                stats.weightBytes / 1e6, refStats.weightBytes / 1e6,
                ok ? "ok" : "MISMATCH");
    if (env.rank == 0)
      std::printf("kiln-ep-model-check: {\"ranks\": %d, \"sequences\": %d, "
                  "\"prompt_tokens\": %d, \"decode_steps\": %d, "
                  "\"max_rel_err\": %.3g, \"token_mismatches\": %d, "
                  "\"ok\": %s, \"rank0\": [%s]}\n",
                  env.worldSize, args.sequences, args.promptTokens,
                  args.decodeSteps, worst, mismatchedTokens,
                  ok ? "true" : "false", steps.c_str());
    return ok ? 0 : 1;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "kiln-ep-model-check: error: %s\n", e.what());
    return 1;
  }
}
