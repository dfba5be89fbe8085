//===- kiln-backend-check.cpp - the CUDA backend against the CPU reference ===//
//
// Runs one model on the CUDA backend (a kilnc artifact) and on the CPU
// reference, and checks them against each other:
//
// Three CPU references: FP32 (the oracle of the model), the FP8 recipe
// (FP32 with the GPU's 1x128 activation quantization) and the GPU's numerics
// (the recipe plus BF16 wherever the CUDA backend stores BF16).
//
// Why the bounds are statistical: an FP8 quantizer turns a perturbation of
// relative size d into one of about sqrt(d * step) (the fraction ~d/step of
// values near a rounding boundary moves by a whole step, ~9%), so after the
// dozens of quantizations of a forward pass any difference, even FP32
// summation order, grows to the full FP8 noise. Two correct FP8
// implementations are two independent draws of that noise; the two CPU FP8
// references are such a pair, and measure it.
//
// 1. Teacher-forced logits (everyone fed the GPU-numerics reference's greedy
//    tokens), relative RMS error ||a - b|| / ||b|| per step: the GPU's
//    distance from the GPU-numerics reference must be distributed like the
//    recipe's (median and 90th percentile within --noise-factor), and the
//    GPU's distance from FP32 like the recipe's distance from FP32. A kernel
//    bug adds its error on top of the noise and fails; smaller bugs are the
//    per-kernel device tests' (test/runtime/ModelKernelsTest.cpp).
// 2. Greedy generation of --tokens tokens from several prompts on the GPU
//    and on the GPU-numerics reference: equal, or first different at a step
//    whose difference is within the measured FP8 noise (at most
//    --noise-factor times the two CPU draws' largest: the largest of two
//    exchangeable samples is either one's half the time) and where the
//    reference's margin between the two tokens is within 4 standard
//    deviations of the per-logit difference (such a pair is ordered by the
//    noise).
//    The same count for the recipe against the GPU-numerics reference shows
//    how soon two CPU FP8 runs part.
// 3. Continuous batching: all prompts in one batched prefill step and then
//    batched decode steps must give each sequence the logits it got alone,
//    up to FP8 noise: a step's kernels may differ with its size (MLA runs a
//    single short-context token on the scalar kernel, more on tensor cores;
//    KV splits follow the step's blocks), and any difference grows to FP8
//    noise. The per-step errors must be distributed like the two CPU draws'
//    (as in 1.), and no step may reach 1: a sequence mixed up with another
//    (wrong rows, pages or positions) gives unrelated logits, about sqrt(2)
//    relative, in every step it touches (the noise's heavy tail reached 0.8
//    in 256 steps).
// 4. Prefill chunking: the longest prompt is longer than the artifact's
//    prefill chunk when compiled with a small --prefill-chunk.
//
// Prints a table and one JSON line ("kiln-backend-check: {...}"); exits 1
// when a check fails, 2 on bad usage.
//
//===----------------------------------------------------------------------===//

#include "bench_util.h"

#include "kiln/artifact.h"
#include "kiln/backend.h"
#include "kiln/checkpoint.h"
#include "kiln/cuda/cuda_backend.h"
#include "kiln/error.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace kiln;

namespace {

struct Args {
  std::string model;
  std::string artifact;
  int tokens = 32;
  double noiseFactor = 1.5;
  /// Prompt lengths: a single token, short prompts and ones longer than a
  /// small prefill chunk; --prompt-lengths adds e.g. one that a large chunk
  /// holds whole (the decompressed MLA prefill path takes >= 256 tokens).
  std::vector<int> promptLengths{1, 7, 20, 45, 3, 12, 33, 64};
};

/// ||a - b|| / ||b||.
double rmsRelativeError(const float *a, const float *reference, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - reference[i]) * (double(a[i]) - reference[i]);
    scale += double(reference[i]) * reference[i];
  }
  return scale > 0 ? std::sqrt(diff / scale) : std::sqrt(diff);
}

/// The standard deviation of a - b over the row (its RMS).
double rmsDifference(const float *a, const float *b, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i)
    sum += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(sum / double(n));
}

/// How many leading tokens two runs share.
int commonPrefix(const std::vector<int32_t> &a, const std::vector<int32_t> &b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n])
    ++n;
  return static_cast<int>(n);
}

/// The q-quantile (nearest rank) of `values`; 0 when empty.
double quantile(std::vector<double> values, double q) {
  if (values.empty())
    return 0;
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(q * values.size()));
  return values[std::min(values.size() - 1, rank ? rank - 1 : 0)];
}

int32_t argmax(const float *row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

std::vector<std::vector<int32_t>> makePrompts(int64_t vocab,
                                              const std::vector<int> &lengths) {
  // Deterministic ids spread over the vocabulary.
  std::vector<std::vector<int32_t>> prompts;
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (int length : lengths) {
    std::vector<int32_t> prompt;
    for (int i = 0; i < length; ++i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      prompt.push_back(static_cast<int32_t>((state >> 33) % vocab));
    }
    prompts.push_back(prompt);
  }
  return prompts;
}

struct Run {
  std::vector<int32_t> tokens;
  /// Logits of every step (prompt, then each generated token).
  std::vector<std::vector<float>> logits;
};

/// Greedy generation on `backend`; with `forced`, feeds those tokens
/// instead of its own choices.
Run generate(Backend &backend, const std::vector<int32_t> &prompt, int count,
             const std::vector<int32_t> *forced = nullptr) {
  Run run;
  auto sequence = backend.newSequence();
  int64_t vocab = backend.config().vocabSize;
  std::vector<float> logits = backend.step({{sequence.get(), prompt, 0}});
  int64_t position = static_cast<int64_t>(prompt.size());
  for (int i = 0; i < count; ++i) {
    run.logits.push_back(logits);
    int32_t next = forced ? (*forced)[i] : argmax(logits.data(), vocab);
    run.tokens.push_back(next);
    if (i + 1 < count)
      logits = backend.step({{sequence.get(), {next}, position++}});
  }
  return run;
}

int usage(const char *message) {
  std::fprintf(stderr,
               "kiln-backend-check: %s\nusage: kiln-backend-check --model DIR "
               "--artifact FILE [--tokens N] [--noise-factor F]\n"
               "       [--prompt-lengths 1,7,20,45,3,12,33,64]\n",
               message);
  return 2;
}

} // namespace

int main(int argc, char **argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h")
      return usage("checks the CUDA backend against the CPU reference"), 0;
    if (i + 1 >= argc)
      return usage(("option " + arg + " needs a value").c_str());
    std::string value = argv[++i];
    if (arg == "--model")
      args.model = value;
    else if (arg == "--artifact")
      args.artifact = value;
    else if (arg == "--tokens")
      args.tokens = std::stoi(value);
    else if (arg == "--noise-factor")
      args.noiseFactor = std::stod(value);
    else if (arg == "--prompt-lengths") {
      try {
        args.promptLengths = kiln::bench::parseIntList(value);
      } catch (const std::exception &) {
        args.promptLengths.clear();
      }
      if (args.promptLengths.empty() ||
          *std::min_element(args.promptLengths.begin(),
                            args.promptLengths.end()) < 1)
        return usage(("--prompt-lengths: '" + value +
                      "' is not a list of positive lengths")
                         .c_str());
    } else
      return usage(("unknown option " + arg).c_str());
  }
  if (args.model.empty() || args.artifact.empty())
    return usage("--model and --artifact are required");

  try {
    Checkpoint checkpoint(args.model);
    const ModelConfig &config = checkpoint.config();
    const int64_t vocab = config.vocabSize;
    CpuModelOptions fp32;
    fp32.mlaForm = MlaForm::Absorbed;
    CpuModelOptions recipe = fp32;
    recipe.emulateFp8Activations = true;
    auto loadStart = std::chrono::steady_clock::now();
    Artifact artifact = readArtifact(args.artifact);
    CpuModelOptions gpuNumerics = recipe;
    gpuNumerics.emulateBf16Storage = true;
    // An FP8 KV cache is part of the GPU's numerics when compiled in.
    gpuNumerics.emulateFp8KvCache = artifact.options.kvCacheDtype == "fp8";
    CpuBackend reference(config, checkpoint, fp32);
    CpuBackend fp8Recipe(config, checkpoint, recipe);
    CpuBackend emulated(config, checkpoint, gpuNumerics);
    const int64_t prefillChunk = artifact.plan("prefill").maxTokens;
    cuda::CudaBackend gpu(checkpoint, std::move(artifact), args.artifact);
    double loadSeconds = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - loadStart)
                             .count();
    std::printf("model %s, artifact %s on %s, loaded in %.2f s, prefill "
                "chunk %lld, KV cache %s\n",
                args.model.c_str(), args.artifact.c_str(),
                gpu.deviceDescription().c_str(), loadSeconds,
                static_cast<long long>(prefillChunk),
                gpuNumerics.emulateFp8KvCache ? "fp8" : "bf16");

    auto prompts = makePrompts(vocab, args.promptLengths);
    bool ok = true;
    std::vector<double> batchedVsAlone;
    int batchedBitwise = 0;
    int tokensCompared = 0, tokensEqual = 0, unexplainedFlips = 0;
    // Per step: GPU vs GPU-numerics reference, recipe vs GPU-numerics
    // reference (two FP8 draws), GPU vs FP32, recipe vs FP32.
    std::vector<double> gpuVsEmulated, drawNoise, gpuVsFp32, recipeVsFp32;
    int recipeTokensEqual = 0;
    struct Flip {
      size_t prompt;
      int step;
      int32_t reference, gpu;
      double margin, sigma, relativeError;
    };
    std::vector<Flip> flips;
    std::vector<Run> gpuAlone;
    std::printf(
        "\nRelative RMS logit error per step, teacher-forced on the "
        "GPU-numerics reference's greedy tokens (median / max); greedy "
        "tokens equal to that reference's:\n\n| prompt | len | gpu greedy "
        "| recipe greedy | gpu vs emulated | recipe vs emulated | gpu vs "
        "fp32 | recipe vs fp32 |\n| --- | --- | --- | --- | --- | --- | --- "
        "| --- |\n");
    for (size_t p = 0; p < prompts.size(); ++p) {
      Run emuRun = generate(emulated, prompts[p], args.tokens);
      Run gpuRun = generate(gpu, prompts[p], args.tokens);
      Run recipeRun = generate(fp8Recipe, prompts[p], args.tokens);
      Run gpuForced = generate(gpu, prompts[p], args.tokens, &emuRun.tokens);
      Run cpuForced =
          generate(reference, prompts[p], args.tokens, &emuRun.tokens);
      Run recipeForced =
          generate(fp8Recipe, prompts[p], args.tokens, &emuRun.tokens);
      gpuAlone.push_back(gpuForced);
      std::vector<double> pGpuEmu, pDraw, pGpu32, pRecipe32;
      for (int i = 0; i < args.tokens; ++i) {
        const float *emu = emuRun.logits[i].data();
        pGpuEmu.push_back(
            rmsRelativeError(gpuForced.logits[i].data(), emu, vocab));
        pDraw.push_back(
            rmsRelativeError(recipeForced.logits[i].data(), emu, vocab));
        pGpu32.push_back(rmsRelativeError(gpuForced.logits[i].data(),
                                          cpuForced.logits[i].data(), vocab));
        pRecipe32.push_back(rmsRelativeError(
            recipeForced.logits[i].data(), cpuForced.logits[i].data(), vocab));
      }
      int equal = commonPrefix(gpuRun.tokens, emuRun.tokens);
      int recipeEqual = commonPrefix(recipeRun.tokens, emuRun.tokens);
      tokensCompared += args.tokens;
      tokensEqual += equal;
      recipeTokensEqual += recipeEqual;
      if (equal < args.tokens) {
        // Up to the flip both ran the same tokens, so the teacher-forced
        // logits of that step are the ones each chose from.
        const float *ref = emuRun.logits[equal].data();
        const float *got = gpuForced.logits[equal].data();
        flips.push_back({p, equal, emuRun.tokens[equal], gpuRun.tokens[equal],
                         ref[emuRun.tokens[equal]] - ref[gpuRun.tokens[equal]],
                         rmsDifference(got, ref, vocab), pGpuEmu[equal]});
      }
      std::printf("| %zu | %zu | %d/%d | %d/%d | %.3g / %.3g | %.3g / %.3g | "
                  "%.3g / %.3g | %.3g / %.3g |\n",
                  p, prompts[p].size(), equal, args.tokens, recipeEqual,
                  args.tokens, quantile(pGpuEmu, 0.5), quantile(pGpuEmu, 1),
                  quantile(pDraw, 0.5), quantile(pDraw, 1),
                  quantile(pGpu32, 0.5), quantile(pGpu32, 1),
                  quantile(pRecipe32, 0.5), quantile(pRecipe32, 1));
      auto append = [](std::vector<double> &to, const std::vector<double> &v) {
        to.insert(to.end(), v.begin(), v.end());
      };
      append(gpuVsEmulated, pGpuEmu);
      append(drawNoise, pDraw);
      append(gpuVsFp32, pGpu32);
      append(recipeVsFp32, pRecipe32);
    }
    // A flip is explained when that step's difference is one the FP8 noise
    // makes (within the noise factor of the largest of the two CPU draws'
    // over all steps) and it is large enough to swap the pair: the
    // reference's margin between the two tokens is within 4 standard
    // deviations of the per-logit difference at that step.
    const double largestNoise = args.noiseFactor * quantile(drawNoise, 1);
    for (const Flip &f : flips) {
      bool explained =
          f.relativeError <= largestNoise && f.margin <= 4 * f.sigma;
      if (!explained)
        ++unexplainedFlips;
      std::printf("  prompt %zu: token %d differs (reference %d, gpu %d): "
                  "step error %.3g (bound %.3g), the reference's "
                  "margin between them %.3g, 4 sigma of the per-logit "
                  "difference %.3g: %s\n",
                  f.prompt, f.step, f.reference, f.gpu, f.relativeError,
                  largestNoise, f.margin, 4 * f.sigma,
                  explained ? "within the noise" : "UNEXPLAINED");
    }

    // The bounds: the GPU's errors against the measured FP8 noise.
    auto within = [&](const std::vector<double> &gpuErrors,
                      const std::vector<double> &noise) {
      return quantile(gpuErrors, 0.5) <=
                 args.noiseFactor * quantile(noise, 0.5) &&
             quantile(gpuErrors, 0.9) <=
                 args.noiseFactor * quantile(noise, 0.9);
    };
    const bool emulatedOk = within(gpuVsEmulated, drawNoise);
    const bool fp32Ok = within(gpuVsFp32, recipeVsFp32);
    ok = emulatedOk && fp32Ok && unexplainedFlips == 0;
    auto summary = [](const std::vector<double> &v) {
      char text[96];
      std::snprintf(text, sizeof text, "%.3g / %.3g / %.3g", quantile(v, 0.5),
                    quantile(v, 0.9), quantile(v, 1));
      return std::string(text);
    };
    std::printf(
        "\nover all %zu steps (median / p90 / max), bound: %.2g x the noise's "
        "median and p90\n  gpu vs emulated:    %s   %s\n  recipe vs "
        "emulated: %s   (FP8 noise: two CPU draws)\n  gpu vs fp32:        "
        "%s   %s\n  recipe vs fp32:     %s   (FP8 noise against FP32)\n",
        gpuVsEmulated.size(), args.noiseFactor, summary(gpuVsEmulated).c_str(),
        emulatedOk ? "ok" : "FAILED", summary(drawNoise).c_str(),
        summary(gpuVsFp32).c_str(), fp32Ok ? "ok" : "FAILED",
        summary(recipeVsFp32).c_str());

    // Continuous batching: every prompt at once, then decode together with
    // the reference's tokens; each sequence must see its lone logits.
    {
      std::vector<std::unique_ptr<BackendSequence>> sequences;
      std::vector<BackendStepEntry> entries;
      for (size_t p = 0; p < prompts.size(); ++p) {
        sequences.push_back(gpu.newSequence());
        entries.push_back({sequences.back().get(), prompts[p], 0});
      }
      for (int i = 0; i < args.tokens; ++i) {
        std::vector<float> logits = gpu.step(entries);
        for (size_t p = 0; p < prompts.size(); ++p) {
          const float *alone = gpuAlone[p].logits[i].data();
          batchedVsAlone.push_back(
              rmsRelativeError(logits.data() + p * vocab, alone, vocab));
          batchedBitwise +=
              std::equal(alone, alone + vocab, logits.data() + p * vocab);
          int64_t position = entries[p].startPosition +
                             static_cast<int64_t>(entries[p].tokens.size());
          entries[p].tokens = {gpuAlone[p].tokens[i]};
          entries[p].startPosition = position;
        }
      }
    }
    const bool batchedOk =
        within(batchedVsAlone, drawNoise) && quantile(batchedVsAlone, 1) < 1;
    ok = ok && batchedOk;
    std::printf("  batched vs alone:   %s   %s (%d of %zu steps bitwise "
                "equal)\n",
                summary(batchedVsAlone).c_str(), batchedOk ? "ok" : "FAILED",
                batchedBitwise, batchedVsAlone.size());
    const double worstBatched = quantile(batchedVsAlone, 1);

    // Decode speed on this model (one sequence, steady state).
    double stepMs = 0;
    {
      auto sequence = gpu.newSequence();
      gpu.step({{sequence.get(), prompts[1], 0}});
      int64_t position = static_cast<int64_t>(prompts[1].size());
      const int steps = 32;
      auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < steps; ++i)
        gpu.step({{sequence.get(), {prompts[1][0]}, position++}});
      stepMs = std::chrono::duration<double, std::milli>(
                   std::chrono::steady_clock::now() - start)
                   .count() /
               steps;
    }

    std::printf(
        "\ngreedy tokens equal to the GPU-numerics reference: gpu "
        "%d of %d (unexplained flips: %d), CPU FP8 recipe %d of "
        "%d\nbatched vs alone: worst %.3g relative RMS\ndecode step, batch "
        "1: %.3f ms\n",
        tokensEqual, tokensCompared, unexplainedFlips, recipeTokensEqual,
        tokensCompared, worstBatched, stepMs);
    std::printf(
        "kiln-backend-check: {\"ok\": %s, \"tokens_equal\": %d, "
        "\"recipe_tokens_equal\": %d, \"tokens_compared\": %d, "
        "\"unexplained_flips\": %d, \"gpu_vs_emulated_median\": %.4g, "
        "\"gpu_vs_emulated_p90\": %.4g, \"fp8_draw_noise_median\": %.4g, "
        "\"fp8_draw_noise_p90\": %.4g, \"gpu_vs_fp32_median\": %.4g, "
        "\"gpu_vs_fp32_p90\": %.4g, \"recipe_vs_fp32_median\": %.4g, "
        "\"recipe_vs_fp32_p90\": %.4g, \"noise_factor\": %.2f, "
        "\"batched_rel_err\": %.4g, \"decode_step_ms\": %.4f}\n",
        ok ? "true" : "false", tokensEqual, recipeTokensEqual, tokensCompared,
        unexplainedFlips, quantile(gpuVsEmulated, 0.5),
        quantile(gpuVsEmulated, 0.9), quantile(drawNoise, 0.5),
        quantile(drawNoise, 0.9), quantile(gpuVsFp32, 0.5),
        quantile(gpuVsFp32, 0.9), quantile(recipeVsFp32, 0.5),
        quantile(recipeVsFp32, 0.9), args.noiseFactor, worstBatched, stepMs);
    return ok ? 0 : 1;
  } catch (const std::exception &error) {
    std::fprintf(stderr, "kiln-backend-check: error: %s\n", error.what());
    return 1;
  }
}
