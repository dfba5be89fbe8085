//===- SamplerTest.cpp - sampling and stop conditions ---------------------===//

#include "kiln/sampler.h"

#include "kiln/error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

using kiln::Sampler;
using kiln::SamplingParams;

std::vector<float> randomLogits(int64_t vocab, uint64_t seed) {
  kiln::Random random(seed);
  std::vector<float> logits(vocab);
  for (float &l : logits)
    l = static_cast<float>(6 * random.uniform() - 3);
  return logits;
}

std::vector<double> softmax(const std::vector<float> &logits,
                            double temperature) {
  double maxLogit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i)
    sum += p[i] = std::exp((logits[i] - maxLogit) / temperature);
  for (double &v : p)
    v /= sum;
  return p;
}

SamplingParams params(float temperature, int64_t topK = 0, float topP = 1,
                      uint64_t seed = 0) {
  SamplingParams p;
  p.temperature = temperature;
  p.topK = topK;
  p.topP = topP;
  p.seed = seed;
  return p;
}

/// Draw counts of `draws` samples.
std::vector<int64_t> histogram(Sampler &sampler,
                               const std::vector<float> &logits, int draws) {
  std::vector<int64_t> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i)
    ++counts[sampler.sample(logits)];
  return counts;
}

/// Pearson's chi-square of observed counts against expected probabilities
/// (cells with p = 0 must be empty).
double chiSquare(const std::vector<int64_t> &counts,
                 const std::vector<double> &p, int draws) {
  double chi2 = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    double expected = p[i] * draws;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi2;
}

TEST(SamplerRandom, MatchesXoshiro256StarStar) {
  // Reference values from an independent Python transcription of
  // splitmix64 seeding and xoshiro256**: the stream is part of the contract
  // (same seed, same tokens on every platform).
  kiln::Random zero(0);
  EXPECT_EQ(zero.next(), 0x99ec5f36cb75f2b4ull);
  EXPECT_EQ(zero.next(), 0xbf6e1f784956452aull);
  EXPECT_EQ(zero.next(), 0x1a5f849d4933e6e0ull);
  kiln::Random fortyTwo(42);
  EXPECT_EQ(fortyTwo.next(), 0x15780b2e0c2ec716ull);
  double sum = 0;
  for (int i = 0; i < 100000; ++i) {
    double u = fortyTwo.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.005); // sd of the mean: 0.0009
}

TEST(Sampler, GreedyPicksArgmax) {
  Sampler greedy(params(0));
  std::vector<float> logits = {0.5f, 3.0f, -1.0f, 2.9f};
  EXPECT_EQ(greedy.sample(logits), 1);
  logits[3] = 3.0f; // a tie goes to the lower id
  EXPECT_EQ(greedy.sample(logits), 1);
  logits[0] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(greedy.sample(logits), 1);
  for (uint64_t seed = 1; seed < 20; ++seed) {
    std::vector<float> random = randomLogits(1000, seed);
    EXPECT_EQ(greedy.sample(random),
              std::max_element(random.begin(), random.end()) - random.begin());
  }
  std::vector<double> p = greedy.probabilities(logits.data(), 4);
  EXPECT_EQ(p, (std::vector<double>{0, 1, 0, 0}));
}

TEST(Sampler, TopKOneEqualsGreedy) {
  Sampler topOne(params(1.0f, 1, 1.0f, 5));
  Sampler greedy(params(0));
  for (uint64_t seed = 1; seed < 50; ++seed) {
    std::vector<float> logits = randomLogits(500, seed);
    EXPECT_EQ(topOne.sample(logits), greedy.sample(logits));
  }
}

TEST(Sampler, SameSeedSameSequence) {
  std::vector<float> logits = randomLogits(50, 3);
  Sampler a(params(1.0f, 0, 1.0f, 1234)), b(params(1.0f, 0, 1.0f, 1234)),
      c(params(1.0f, 0, 1.0f, 1235));
  std::vector<int32_t> first, second, third;
  for (int i = 0; i < 200; ++i) {
    first.push_back(a.sample(logits));
    second.push_back(b.sample(logits));
    third.push_back(c.sample(logits));
  }
  EXPECT_EQ(first, second);
  EXPECT_NE(first, third);
}

TEST(Sampler, EmpiricalDistributionMatchesSoftmax) {
  // 8 tokens, 7 degrees of freedom: chi-square exceeds 24.3 with probability
  // 0.001 when the sampler draws from softmax(logits / T).
  const std::vector<float> logits = {1.0f, 0.0f,  -0.5f, 2.0f,
                                     0.3f, -2.0f, 1.5f,  0.7f};
  const int draws = 200000;
  for (float temperature : {1.0f, 0.5f, 2.0f}) {
    Sampler sampler(params(temperature, 0, 1.0f, 99));
    std::vector<double> expected = softmax(logits, temperature);
    std::vector<double> reported = sampler.probabilities(
        logits.data(), static_cast<int64_t>(logits.size()));
    for (size_t i = 0; i < logits.size(); ++i)
      EXPECT_NEAR(reported[i], expected[i], 1e-12);
    double chi2 = chiSquare(histogram(sampler, logits, draws), expected, draws);
    EXPECT_LT(chi2, 24.3) << "temperature " << temperature;
  }
}

TEST(Sampler, TopKKeepsTheKMostLikely) {
  const std::vector<float> logits = {1.0f, 0.0f,  -0.5f, 2.0f,
                                     0.3f, -2.0f, 1.5f,  0.7f};
  Sampler sampler(params(1.0f, 3, 1.0f, 7));
  // Tokens 3, 6 and 0, renormalized.
  std::vector<double> full = softmax(logits, 1.0);
  double kept = full[3] + full[6] + full[0];
  std::vector<double> expected(8, 0.0);
  for (int token : {3, 6, 0})
    expected[token] = full[token] / kept;
  std::vector<double> reported = sampler.probabilities(logits.data(), 8);
  for (int i = 0; i < 8; ++i)
    EXPECT_NEAR(reported[i], expected[i], 1e-12) << i;
  const int draws = 60000; // 2 degrees of freedom: 13.8 at p = 0.001
  EXPECT_LT(chiSquare(histogram(sampler, logits, draws), expected, draws),
            13.8);
}

TEST(Sampler, TopPExcludesTheTail) {
  // Probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.25f),
                                     std::log(0.125f), std::log(0.0625f),
                                     std::log(0.0625f)};
  auto keptTokens = [&](float topP) {
    Sampler sampler(params(1.0f, 0, topP, 1));
    std::vector<double> p = sampler.probabilities(logits.data(), 5);
    std::vector<int> kept;
    for (int i = 0; i < 5; ++i)
      if (p[i] > 0)
        kept.push_back(i);
    return kept;
  };
  // The smallest most-probable set whose mass reaches top_p.
  EXPECT_EQ(keptTokens(0.5f), (std::vector<int>{0}));
  EXPECT_EQ(keptTokens(0.6f), (std::vector<int>{0, 1}));
  EXPECT_EQ(keptTokens(0.8f), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(keptTokens(0.1f), (std::vector<int>{0})); // never empty
  EXPECT_EQ(keptTokens(1.0f), (std::vector<int>{0, 1, 2, 3, 4}));

  Sampler sampler(params(1.0f, 0, 0.8f, 11));
  const int draws = 40000;
  std::vector<int64_t> counts = histogram(sampler, logits, draws);
  EXPECT_EQ(counts[3], 0);
  EXPECT_EQ(counts[4], 0);
  // Kept: 0.5, 0.25, 0.125 renormalized; 2 dof: 13.8 at p = 0.001.
  std::vector<double> expected = {0.5 / 0.875, 0.25 / 0.875, 0.125 / 0.875, 0,
                                  0};
  EXPECT_LT(chiSquare(counts, expected, draws), 13.8);
}

TEST(Sampler, MaskedTokensAreNeverDrawn) {
  std::vector<float> logits(100, 0.0f);
  for (int i = 0; i < 100; i += 2)
    logits[i] = -std::numeric_limits<float>::infinity();
  Sampler sampler(params(1.0f, 0, 0.9f, 3));
  for (int i = 0; i < 2000; ++i)
    ASSERT_EQ(sampler.sample(logits) % 2, 1);
}

TEST(Sampler, RejectsBadInput) {
  EXPECT_THROW(Sampler(params(-1.0f)), kiln::Error);
  EXPECT_THROW(Sampler(params(std::nanf(""))), kiln::Error);
  EXPECT_THROW(Sampler(params(1.0f, -1)), kiln::Error);
  EXPECT_THROW(Sampler(params(1.0f, 0, 0.0f)), kiln::Error);
  EXPECT_THROW(Sampler(params(1.0f, 0, 1.5f)), kiln::Error);
  Sampler sampler(params(1.0f));
  EXPECT_THROW(sampler.sample({1.0f, std::nanf("")}), kiln::Error);
  EXPECT_THROW(sampler.sample({1.0f, std::numeric_limits<float>::infinity()}),
               kiln::Error);
  const float minusInf = -std::numeric_limits<float>::infinity();
  EXPECT_THROW(sampler.sample({minusInf, minusInf}), kiln::Error);
  EXPECT_THROW(sampler.sample(std::vector<float>{}), kiln::Error);
}

//===----------------------------------------------------------------------===//
// Stop conditions
//===----------------------------------------------------------------------===//

/// Feeds token texts one by one and returns the first stopping decision
/// and the index of the token that triggered it (-1 when none did).
std::pair<kiln::StopDecision, int>
feed(kiln::StopChecker &checker, const std::vector<std::string> &pieces,
     const std::vector<int32_t> &tokens = {}) {
  std::string text;
  for (size_t i = 0; i < pieces.size(); ++i) {
    text += pieces[i];
    kiln::StopDecision decision =
        checker.check(i < tokens.size() ? tokens[i] : 100, text);
    if (decision.reason != kiln::StopReason::None)
      return {decision, static_cast<int>(i)};
  }
  return {kiln::StopDecision{}, -1};
}

TEST(SamplerStop, EosTokenStops) {
  kiln::StopChecker checker({{1, 7}, {}});
  auto [decision, at] = feed(checker, {"a", "b", "", "c"}, {5, 6, 7, 8});
  EXPECT_EQ(decision.reason, kiln::StopReason::EosToken);
  EXPECT_EQ(at, 2);
  EXPECT_EQ(decision.textLength, 2u);
}

TEST(SamplerStop, StopStringAcrossTokenBoundaries) {
  kiln::StopChecker checker({{}, {"</stop>"}});
  auto [decision, at] =
      feed(checker, {"Hello", " wor", "ld<", "/s", "top", ">", "more"});
  EXPECT_EQ(decision.reason, kiln::StopReason::StopString);
  EXPECT_EQ(at, 5); // found when its last piece arrives
  EXPECT_EQ(decision.textLength, std::string("Hello world").size());
  EXPECT_EQ(decision.stopString, "</stop>");
}

TEST(SamplerStop, StopStringInsideOneTokenAndEarliestWins) {
  kiln::StopChecker checker({{}, {"END", "\n\n"}});
  auto [decision, at] = feed(checker, {"one", " two\n\nthree END four"});
  EXPECT_EQ(decision.reason, kiln::StopReason::StopString);
  EXPECT_EQ(at, 1);
  EXPECT_EQ(decision.textLength, 7u); // "one two"
  EXPECT_EQ(decision.stopString, "\n\n");

  checker.reset();
  auto [none, never] = feed(checker, {"E", "N", "d", "EN"});
  EXPECT_EQ(none.reason, kiln::StopReason::None);
  EXPECT_EQ(never, -1);
}

TEST(SamplerStop, SafeTextLengthHoldsBackAPossibleStopString) {
  kiln::StopChecker checker({{}, {"</s>", "STOP"}});
  EXPECT_EQ(checker.safeTextLength("Hello"), 5u);
  EXPECT_EQ(checker.safeTextLength("Hello </"), 6u); // "</" may become "</s>"
  EXPECT_EQ(checker.safeTextLength("Hello ST"), 6u); // "ST" may become "STOP"
  EXPECT_EQ(checker.safeTextLength("Hello S<"), 7u); // "S<" cannot
  EXPECT_EQ(checker.safeTextLength("Hi</s>x"), 2u);  // a full match
  EXPECT_THROW(kiln::StopChecker({{}, {""}}), kiln::Error);
}

} // namespace
