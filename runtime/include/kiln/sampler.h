//===- kiln/sampler.h - next-token sampling and stop conditions -----------===//
//
// Turns a row of logits into a token (greedy, temperature, top-k, top-p) with
// a seeded PRNG of its own, so that a seed gives the same tokens on every
// platform and standard library, and decides when generation stops (EOS
// tokens, stop strings that may span token boundaries).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_SAMPLER_H
#define KILN_SAMPLER_H

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

struct SamplingParams {
  /// 0 picks the argmax (greedy); otherwise logits are divided by it.
  float temperature = 1.0f;
  /// Keep only the k most probable tokens; 0 keeps all.
  int64_t topK = 0;
  /// Keep the smallest set of most probable tokens whose probability reaches
  /// topP (after top-k); 1 keeps all. In (0, 1].
  float topP = 1.0f;
  uint64_t seed = 0;
};

/// A small, portable PRNG (xoshiro256**, seeded through splitmix64).
class Random {
public:
  explicit Random(uint64_t seed);
  uint64_t next();
  /// Uniform in [0, 1), 53 random bits.
  double uniform();

private:
  uint64_t state[4];
};

class Sampler {
public:
  /// Throws kiln::Error for a negative or NaN temperature, a negative topK or
  /// a topP outside (0, 1].
  explicit Sampler(const SamplingParams &params);

  const SamplingParams &params() const { return samplingParams; }

  /// Picks a token from `vocabSize` logits; advances the PRNG unless greedy.
  /// Ties go to the lower token id. Throws kiln::Error for NaN or +inf
  /// logits, or when every logit is -inf.
  int32_t sample(const float *logits, int64_t vocabSize);
  int32_t sample(const std::vector<float> &logits);

  /// The uniform sample() compares the cumulative probability with, drawn
  /// and the PRNG advanced exactly as sample() does on valid logits: for
  /// sampling the same distribution elsewhere (the CUDA backend's kernel).
  /// Greedy samplers draw nothing and return 0.
  double nextUniform();

  /// The distribution sample() draws from: softmax(logits / temperature)
  /// restricted to the top-k and top-p set and renormalized (one-hot at the
  /// argmax when greedy). For tests and log-probabilities.
  std::vector<double> probabilities(const float *logits,
                                    int64_t vocabSize) const;

private:
  /// (token, probability) of the kept tokens, most probable first.
  std::vector<std::pair<int32_t, double>>
  keptDistribution(const float *logits, int64_t vocabSize) const;

  SamplingParams samplingParams;
  Random random;
};

/// Index of the largest logit, the lower id among equals.
int32_t argmax(const float *logits, int64_t vocabSize);

struct StopConditions {
  std::vector<int32_t> eosTokenIds;
  /// Generation stops once the decoded text contains one of these.
  std::vector<std::string> stopStrings;
};

enum class StopReason { None, EosToken, StopString };

struct StopDecision {
  StopReason reason = StopReason::None;
  /// For StopString: where the stop string starts in the decoded text, i.e.
  /// how much of the text to return to the user.
  size_t textLength = 0;
  /// For StopString: which one matched.
  std::string stopString;
};

/// Checks stop conditions after each generated token. Stop strings are found
/// wherever they start in the text generated so far, so one split over
/// several tokens is caught when its last piece arrives.
class StopChecker {
public:
  /// Throws kiln::Error for an empty stop string.
  explicit StopChecker(StopConditions conditions);

  /// `token` is the token just generated and `decodedText` the decoding of
  /// all generated tokens so far, it included. An EOS token wins over a stop
  /// string; among stop strings the earliest in the text wins.
  StopDecision check(int32_t token, const std::string &decodedText);

  /// How much of `decodedText` can be streamed to the user now: all of it but
  /// the longest tail that could still grow into a stop string.
  size_t safeTextLength(const std::string &decodedText) const;

  /// Forgets the text seen, for a new generation.
  void reset() { scannedLength = 0; }

private:
  StopConditions conditions;
  size_t longestStopString = 0;
  /// Text before this offset has been searched; a match must end after it.
  size_t scannedLength = 0;
};

} // namespace kiln

#endif // KILN_SAMPLER_H
