//===- SamplingKernelTest.cpp - next-token sampling on the GPU ------------===//
//
// ModelKernels::sample against kiln::Sampler. The host-side checks and the
// draw the CPU sampler exposes for it need no GPU. On a GPU: fresh random
// rows of DeepSeek-V3's 129280 logits under every sampling mode (greedy,
// temperature, top-k, top-p, both), ties at the argmax and at the top-k and
// top-p thresholds, rows mostly -inf, a masked text vocabulary, and the rows
// the CPU rejects (NaN, +inf, all -inf), with the ids poisoned before the
// launch. Each row's u comes from a sampler seeded like the CPU one, so the
// kernel must choose the CPU's token: a mismatch could only come from u
// falling within double rounding (~1e-15) of a cumulative boundary, which
// fresh uniform draws do not hit. Skips where there is no sm_90 GPU.
//
//===----------------------------------------------------------------------===//

#include "model_kernels_checks.h"

#include "kiln/cuda/driver.h"
#include "kiln/cuda/model_kernels.h"
#include "kiln/error.h"
#include "kiln/sampler.h"

#include "ModelKernelsFixture.h"
#include "TestSupport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using kiln::testing::errorOf;
using kiln::testing::expectMentions;
using namespace kiln::cuda;

constexpr int64_t kVocab = 129280;
constexpr float kInf = std::numeric_limits<float>::infinity();

DeviceMatrix logitsMatrix(int64_t rows, int64_t cols, CUdeviceptr data) {
  DeviceMatrix m;
  m.data = data;
  m.rows = rows;
  m.cols = cols;
  m.stride = cols;
  m.type = ElementType::F32;
  return m;
}

SamplingRow row(float temperature, int64_t topK, float topP, double u,
                int64_t limit) {
  SamplingRow r;
  r.temperature = temperature;
  r.topK = topK;
  r.topP = topP;
  r.u = u;
  r.vocabLimit = limit;
  return r;
}

//===----------------------------------------------------------------------===//
// No GPU
//===----------------------------------------------------------------------===//

TEST(SamplingKernelChecks, RejectsBadRowsAndBuffers) {
  const DeviceMatrix logits = logitsMatrix(2, 1000, 0x10000);
  const std::vector<SamplingRow> good = {row(0, 0, 1, 0, 1000),
                                         row(0.7f, 50, 0.9f, 0.5, 900)};
  auto check = [&](const DeviceMatrix &m, const std::vector<SamplingRow> &rows,
                   CUdeviceptr buffer = 0x20000, size_t bytes = 1024,
                   CUdeviceptr tokens = 0x30000) {
    detail::checkSample(m, rows, buffer, bytes, tokens);
  };
  check(logits, good);
  check(logitsMatrix(0, 1000, 0), {}, 0, 0, 0); // nothing to sample

  auto withRow = [&](SamplingRow bad) {
    std::vector<SamplingRow> rows = good;
    rows[1] = bad;
    return rows;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    SamplingRow bad;
    const char *mention;
  } cases[] = {
      {row(-1, 0, 1, 0, 1000), "temperature must be >= 0"},
      {row(nan, 0, 1, 0, 1000), "temperature must be >= 0"},
      {row(1, -3, 1, 0, 1000), "topK must be >= 0"},
      {row(1, 0, 0, 0, 1000), "topP must be in (0, 1]"},
      {row(1, 0, 1.5f, 0, 1000), "topP must be in (0, 1]"},
      {row(1, 0, nan, 0, 1000), "topP must be in (0, 1]"},
      {row(1, 0, 1, 1.0, 1000), "u must be in [0, 1)"},
      {row(1, 0, 1, -0.25, 1000), "u must be in [0, 1)"},
      {row(1, 0, 1, 0, 0), "vocabulary limit 0 is outside [1, 1000]"},
      {row(1, 0, 1, 0, 1001), "vocabulary limit 1001 is outside [1, 1000]"},
  };
  for (const Case &c : cases)
    expectMentions(errorOf([&] { check(logits, withRow(c.bad)); }),
                   {"model kernel sample", "row 1: ", c.mention});

  expectMentions(errorOf([&] { check(logitsMatrix(3, 1000, 0x10000), good); }),
                 {"model kernel sample", "must have 2 rows"});
  DeviceMatrix bf16 = logits;
  bf16.type = ElementType::BF16;
  expectMentions(errorOf([&] { check(bf16, good); }), {"must be f32"});
  expectMentions(errorOf([&] { check(logits, good, 0); }),
                 {"the rows buffer is a null pointer"});
  expectMentions(errorOf([&] { check(logits, good, 0x20004); }),
                 {"the rows buffer must be 8-byte aligned"});
  expectMentions(errorOf([&] { check(logits, good, 0x20000, 63); }),
                 {"rows buffer of 63 bytes is below the 64"});
  expectMentions(errorOf([&] { check(logits, good, 0x20000, 64, 0); }),
                 {"tokens is a null pointer"});
}

/// The CPU walk of sample() with a given u over probabilities() (the kept
/// distribution): most probable first when something was cut, else id order.
int32_t walk(const std::vector<double> &probabilities, bool sorted, double u) {
  std::vector<int32_t> order;
  for (size_t i = 0; i < probabilities.size(); ++i)
    if (probabilities[i] > 0)
      order.push_back(static_cast<int32_t>(i));
  if (sorted)
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return probabilities[a] > probabilities[b];
    });
  double cumulative = 0;
  for (int32_t token : order) {
    cumulative += probabilities[token];
    if (u < cumulative)
      return token;
  }
  return order.back();
}

TEST(SamplingKernelChecks, NextUniformIsTheDrawOfSample) {
  std::mt19937 random(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(3000);
  for (kiln::SamplingParams params :
       {kiln::SamplingParams{0.8f, 0, 1.0f, 11},
        kiln::SamplingParams{1.0f, 40, 0.9f, 12}}) {
    kiln::Sampler sampler(params), drawer(params);
    for (int step = 0; step < 20; ++step) {
      for (float &l : logits)
        l = normal(random);
      int32_t token = sampler.sample(logits);
      double u = drawer.nextUniform();
      EXPECT_EQ(walk(drawer.probabilities(logits.data(), 3000),
                     params.topK > 0 || params.topP < 1, u),
                token)
          << "step " << step;
    }
  }
  kiln::Sampler greedy({0.0f, 0, 1.0f, 3});
  EXPECT_EQ(greedy.nextUniform(), 0.0);
}

//===----------------------------------------------------------------------===//
// On the GPU
//===----------------------------------------------------------------------===//

using kiln::testing::kPoisonI32;

class SamplingOnGpu : public kiln::testing::ModelKernelsGpuTest {
protected:
  std::mt19937 random{20261124};
};

/// One test row: its logits, CPU parameters and text-vocabulary limit.
struct Case {
  std::string name;
  std::vector<float> logits;
  kiln::SamplingParams params;
  int64_t limit = kVocab;
  /// The CPU sampler throws on it.
  bool rejected = false;
};

TEST_F(SamplingOnGpu, MatchesTheCpuSampler) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fresh = [&](float sigma) {
    std::vector<float> logits(kVocab);
    for (float &l : logits)
      l = sigma * normal(random);
    return logits;
  };
  // Logits on a coarse grid: many exact ties everywhere, at the argmax and
  // at every top-k and top-p threshold.
  auto coarse = [&](float sigma, float step) {
    std::vector<float> logits = fresh(sigma);
    for (float &l : logits)
      l = std::round(l / step) * step;
    return logits;
  };

  std::vector<Case> cases;
  auto add = [&](std::string name, std::vector<float> logits, float t,
                 int64_t k, float p, int64_t limit = kVocab,
                 bool rejected = false) {
    cases.push_back({std::move(name), std::move(logits),
                     kiln::SamplingParams{t, k, p, 0}, limit, rejected});
  };
  for (int repeat = 0; repeat < 6; ++repeat) {
    add("greedy", fresh(3), 0, 0, 1);
    add("greedy with top-k/top-p set", fresh(3), 0, 50, 0.5f);
    add("temperature 0.7", fresh(3), 0.7f, 0, 1);
    add("temperature 1.5, flat", fresh(1), 1.5f, 0, 1);
    add("top-k 50", fresh(3), 1, 50, 1);
    add("top-k 1", fresh(3), 0.9f, 1, 1);
    add("top-k past the finite count", fresh(2), 1, 200000, 1);
    add("top-p 0.9", fresh(3), 1, 0, 0.9f);
    add("top-p 0.5, sharp", fresh(8), 1, 0, 0.5f);
    add("top-p 0.999, flat", fresh(0.5f), 1, 0, 0.999f);
    add("top-k 200 + top-p 0.8", fresh(3), 0.8f, 200, 0.8f);
    add("ties: top-k 37 + top-p 0.95", coarse(3, 0.5f), 1, 37, 0.95f);
    add("ties: top-p 0.7", coarse(2, 0.25f), 0.6f, 0, 0.7f);
    add("ties: top-k 1000", coarse(2, 1.0f), 1.2f, 1000, 1);
    add("ties: temperature only", coarse(3, 1.0f), 1, 0, 1);
    add("ties: greedy", coarse(3, 1.0f), 0, 0, 1);

    // Mostly -inf: 100 finite logits, the walk in id order and top-k
    // above the finite count.
    std::vector<float> sparse(kVocab, -kInf);
    for (int i = 0; i < 100; ++i)
      sparse[random() % kVocab] = 2 * normal(random);
    add("mostly -inf", sparse, 1, 0, 1);
    add("mostly -inf, top-k 500 + top-p 0.9", sparse, 1, 500, 0.9f);
    add("mostly -inf, greedy", sparse, 0, 0, 1);

    // A text vocabulary below the logits: huge, NaN and +inf logits past it
    // are never sampled nor rejected.
    std::vector<float> masked = fresh(3);
    for (int64_t i = 128000; i < kVocab; i += 7)
      masked[i] = 50;
    masked[128001] = std::numeric_limits<float>::quiet_NaN();
    masked[129000] = kInf;
    add("masked text vocabulary", masked, 1, 0, 1, 128000);
    add("masked text vocabulary, greedy", masked, 0, 0, 1, 128000);
    add("masked text vocabulary, top-k 20", masked, 1, 20, 0.9f, 128000);
  }
  // -0 and +0 are equal values: the lower id wins the argmax.
  std::vector<float> zeros(kVocab, -1.0f);
  zeros[900] = -0.0f;
  zeros[300] = 0.0f;
  zeros[100] = -0.0f;
  add("argmax tie of -0 and +0", zeros, 0, 0, 1);
  add("top-k 2 over a -0/+0 tie", zeros, 1, 2, 1);
  std::vector<float> nanRow = fresh(3);
  nanRow[77777] = std::numeric_limits<float>::quiet_NaN();
  add("NaN", nanRow, 1, 0, 1, kVocab, true);
  add("NaN, greedy", nanRow, 0, 0, 1, kVocab, true);
  std::vector<float> infRow = fresh(3);
  infRow[5] = kInf;
  add("+inf", infRow, 1, 50, 0.9f, kVocab, true);
  add("all -inf", std::vector<float>(kVocab, -kInf), 1, 0, 1, kVocab, true);
  std::vector<float> maskedAway = fresh(1);
  std::fill(maskedAway.begin(), maskedAway.begin() + 1000, -kInf);
  add("all -inf below the limit", maskedAway, 0, 0, 1, 1000, true);

  const int64_t rows = static_cast<int64_t>(cases.size());
  std::vector<float> all(rows * kVocab);
  std::vector<SamplingRow> rowParams(rows);
  std::vector<int32_t> expected(rows);
  for (int64_t r = 0; r < rows; ++r) {
    Case &c = cases[r];
    c.params.seed = 1000 + r;
    std::copy(c.logits.begin(), c.logits.end(), all.begin() + r * kVocab);
    // The CPU: the engine's masking, then Sampler::sample.
    std::vector<float> masked = c.logits;
    std::fill(masked.begin() + c.limit, masked.end(), -kInf);
    kiln::Sampler cpu(c.params), drawer(c.params);
    if (c.rejected) {
      EXPECT_THROW(cpu.sample(masked), kiln::Error) << c.name;
      expected[r] = -1;
    } else {
      expected[r] = cpu.sample(masked);
    }
    rowParams[r] = row(c.params.temperature, c.params.topK, c.params.topP,
                       drawer.nextUniform(), c.limit);
  }

  CUdeviceptr logits = upload(all);
  CUdeviceptr rowsBuffer = alloc(rows * sizeof(SamplingRow), 0);
  CUdeviceptr tokens = alloc(rows * 4, kPoisonI32);
  kernels->sample(nullptr, logitsMatrix(rows, kVocab, logits), rowParams,
                  rowsBuffer, rows * sizeof(SamplingRow), tokens);
  KILN_CU("test", cuCtxSynchronize);
  std::vector<int32_t> got(rows);
  KILN_CU("test", cuMemcpyDtoH, got.data(), tokens, rows * 4);
  int mismatches = 0;
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(got[r], expected[r]) << "row " << r << " (" << cases[r].name
                                   << ", u " << rowParams[r].u << ")";
    mismatches += got[r] != expected[r];
  }
  std::printf("sample: %lld rows of %lld logits, %d differ from the CPU\n",
              static_cast<long long>(rows), static_cast<long long>(kVocab),
              mismatches);
}

// Timings of a decode step's sampling at batch 32 (printed, not asserted),
// beside what the CPU path costs: copying the logits back and sampling them.
TEST_F(SamplingOnGpu, Timings) {
  const int64_t rows = 32;
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> all(rows * kVocab);
  for (float &l : all)
    l = normal(random);
  CUdeviceptr logits = upload(all);
  CUdeviceptr rowsBuffer = alloc(rows * sizeof(SamplingRow), 0);
  CUdeviceptr tokens = alloc(rows * 4, kPoisonI32);
  CUevent start, stop;
  KILN_CU("test", cuEventCreate, &start, 0);
  KILN_CU("test", cuEventCreate, &stop, 0);
  struct Mode {
    const char *name;
    kiln::SamplingParams params;
  } modes[] = {{"greedy", {0, 0, 1, 1}},
               {"temperature 1", {1, 0, 1, 1}},
               {"top-k 50", {1, 50, 1, 1}},
               {"top-p 0.9", {1, 0, 0.9f, 1}},
               {"top-k 50 + top-p 0.9", {1, 50, 0.9f, 1}}};
  for (const Mode &mode : modes) {
    std::vector<SamplingRow> rowParams(
        rows, row(mode.params.temperature, mode.params.topK, mode.params.topP,
                  0.37, kVocab));
    auto launch = [&] {
      kernels->sample(nullptr, logitsMatrix(rows, kVocab, logits), rowParams,
                      rowsBuffer, rows * sizeof(SamplingRow), tokens);
    };
    launch();
    const int repeats = 10;
    KILN_CU("test", cuEventRecord, start, nullptr);
    for (int i = 0; i < repeats; ++i)
      launch();
    KILN_CU("test", cuEventRecord, stop, nullptr);
    KILN_CU("test", cuEventSynchronize, stop);
    float ms = 0;
    KILN_CU("test", cuEventElapsedTime, &ms, start, stop);

    // The CPU path: the logits to the host, then Sampler::sample per row.
    std::vector<float> host(rows * kVocab);
    auto begin = std::chrono::steady_clock::now();
    KILN_CU("test", cuMemcpyDtoH, host.data(), logits, host.size() * 4);
    auto copied = std::chrono::steady_clock::now();
    kiln::Sampler sampler(mode.params);
    for (int64_t r = 0; r < rows; ++r)
      sampler.sample(host.data() + r * kVocab, kVocab);
    auto sampled = std::chrono::steady_clock::now();
    using us = std::chrono::duration<double, std::micro>;
    std::printf("sample batch %lld, %-22s GPU %8.1f us | CPU path: copy "
                "%8.1f us + sample %9.1f us\n",
                static_cast<long long>(rows), mode.name, ms * 1e3 / repeats,
                us(copied - begin).count(), us(sampled - copied).count());
  }
  KILN_CU("test", cuEventDestroy, start);
  KILN_CU("test", cuEventDestroy, stop);
}

} // namespace
