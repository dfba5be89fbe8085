//===- sampler.cpp - next-token sampling and stop conditions --------------===//

#include "kiln/sampler.h"

#include "kiln/error.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kiln {

//===----------------------------------------------------------------------===//
// Random
//===----------------------------------------------------------------------===//

namespace {
uint64_t splitMix64(uint64_t &x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t rotateLeft(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
} // namespace

Random::Random(uint64_t seed) {
  // splitmix64 spreads any seed, 0 included, over a nonzero xoshiro state.
  for (uint64_t &word : state)
    word = splitMix64(seed);
}

uint64_t Random::next() {
  uint64_t result = rotateLeft(state[1] * 5, 7) * 9;
  uint64_t t = state[1] << 17;
  state[2] ^= state[0];
  state[3] ^= state[1];
  state[1] ^= state[2];
  state[0] ^= state[3];
  state[2] ^= t;
  state[3] = rotateLeft(state[3], 45);
  return result;
}

double Random::uniform() {
  return static_cast<double>(next() >> 11) * 0x1.0p-53;
}

//===----------------------------------------------------------------------===//
// Sampler
//===----------------------------------------------------------------------===//

namespace {
void checkLogits(const float *logits, int64_t vocabSize) {
  if (vocabSize <= 0)
    throw Error("sampler: empty logits");
  bool anyFinite = false;
  for (int64_t i = 0; i < vocabSize; ++i) {
    if (std::isnan(logits[i]) || logits[i] == INFINITY)
      throw Error("sampler: logit of token " + std::to_string(i) + " is " +
                  (std::isnan(logits[i]) ? "NaN" : "+inf"));
    anyFinite |= logits[i] != -INFINITY;
  }
  if (!anyFinite)
    throw Error("sampler: every logit is -inf");
}
} // namespace

int32_t argmax(const float *logits, int64_t vocabSize) {
  checkLogits(logits, vocabSize);
  return static_cast<int32_t>(std::max_element(logits, logits + vocabSize) -
                              logits);
}

Sampler::Sampler(const SamplingParams &params)
    : samplingParams(params), random(params.seed) {
  if (!(params.temperature >= 0))
    throw Error("sampler: temperature must be >= 0, got " +
                std::to_string(params.temperature));
  if (params.topK < 0)
    throw Error("sampler: topK must be >= 0, got " +
                std::to_string(params.topK));
  if (!(params.topP > 0 && params.topP <= 1))
    throw Error("sampler: topP must be in (0, 1], got " +
                std::to_string(params.topP));
}

std::vector<std::pair<int32_t, double>>
Sampler::keptDistribution(const float *logits, int64_t vocabSize) const {
  if (samplingParams.temperature == 0)
    return {{argmax(logits, vocabSize), 1.0}};
  checkLogits(logits, vocabSize);

  std::vector<std::pair<int32_t, double>> kept;
  kept.reserve(vocabSize);
  for (int64_t i = 0; i < vocabSize; ++i)
    if (logits[i] != -INFINITY)
      kept.emplace_back(static_cast<int32_t>(i), logits[i]);
  // Most probable first, lower id first among equals.
  auto moreLikely = [](const std::pair<int32_t, double> &a,
                       const std::pair<int32_t, double> &b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  };
  const int64_t topK = samplingParams.topK;
  if (topK > 0 && topK < static_cast<int64_t>(kept.size())) {
    std::partial_sort(kept.begin(), kept.begin() + topK, kept.end(),
                      moreLikely);
    kept.resize(topK);
  } else if (samplingParams.topP < 1) {
    std::sort(kept.begin(), kept.end(), moreLikely);
  }

  // Softmax of logits / temperature over the kept tokens, in double.
  const double temperature = samplingParams.temperature;
  double maxLogit = -INFINITY;
  for (const auto &entry : kept)
    maxLogit = std::max(maxLogit, entry.second);
  double sum = 0;
  for (auto &entry : kept) {
    entry.second = std::exp((entry.second - maxLogit) / temperature);
    sum += entry.second;
  }
  for (auto &entry : kept)
    entry.second /= sum;

  if (samplingParams.topP < 1) {
    // Keep a token while the mass of the more probable ones is below topP
    // (HF's TopPLogitsWarper): the most probable token always stays.
    double before = 0;
    size_t count = 0;
    while (count < kept.size() && before < samplingParams.topP)
      before += kept[count++].second;
    kept.resize(count);
    for (auto &entry : kept)
      entry.second /= before;
  }
  return kept;
}

std::vector<double> Sampler::probabilities(const float *logits,
                                           int64_t vocabSize) const {
  std::vector<double> result(vocabSize > 0 ? vocabSize : 0, 0.0);
  for (const auto &[token, probability] : keptDistribution(logits, vocabSize))
    result[token] = probability;
  return result;
}

int32_t Sampler::sample(const float *logits, int64_t vocabSize) {
  std::vector<std::pair<int32_t, double>> kept =
      keptDistribution(logits, vocabSize);
  if (samplingParams.temperature == 0)
    return kept.front().first;
  double u = random.uniform();
  double cumulative = 0;
  for (const auto &[token, probability] : kept) {
    cumulative += probability;
    if (u < cumulative)
      return token;
  }
  return kept.back().first; // u beyond a sum that rounded below 1
}

double Sampler::nextUniform() {
  return samplingParams.temperature == 0 ? 0.0 : random.uniform();
}

int32_t Sampler::sample(const std::vector<float> &logits) {
  return sample(logits.data(), static_cast<int64_t>(logits.size()));
}

//===----------------------------------------------------------------------===//
// StopChecker
//===----------------------------------------------------------------------===//

StopChecker::StopChecker(StopConditions stopConditions)
    : conditions(std::move(stopConditions)) {
  for (const std::string &stop : conditions.stopStrings) {
    if (stop.empty())
      throw Error("stop conditions: empty stop string");
    longestStopString = std::max(longestStopString, stop.size());
  }
}

StopDecision StopChecker::check(int32_t token, const std::string &decodedText) {
  StopDecision decision;
  const std::vector<int32_t> &eos = conditions.eosTokenIds;
  if (std::find(eos.begin(), eos.end(), token) != eos.end()) {
    decision.reason = StopReason::EosToken;
    decision.textLength = decodedText.size();
    scannedLength = decodedText.size();
    return decision;
  }
  // A match not found before must end in the new text, so it starts at most
  // longest - 1 bytes before it.
  size_t scanned = std::min(scannedLength, decodedText.size());
  size_t from =
      scanned >= longestStopString ? scanned - longestStopString + 1 : 0;
  scannedLength = decodedText.size();
  size_t best = std::string::npos;
  for (const std::string &stop : conditions.stopStrings) {
    size_t at = decodedText.find(stop, from);
    if (at < best) {
      best = at;
      decision.stopString = stop;
    }
  }
  if (best != std::string::npos) {
    decision.reason = StopReason::StopString;
    decision.textLength = best;
  }
  return decision;
}

size_t StopChecker::safeTextLength(const std::string &decodedText) const {
  size_t safe = decodedText.size();
  for (const std::string &stop : conditions.stopStrings) {
    size_t at = decodedText.find(stop);
    if (at != std::string::npos) {
      safe = std::min(safe, at);
      continue;
    }
    // The longest tail of the text that is a proper prefix of `stop`.
    for (size_t tail = std::min(stop.size() - 1, decodedText.size()); tail > 0;
         --tail) {
      if (decodedText.compare(decodedText.size() - tail, tail, stop, 0, tail) ==
          0) {
        safe = std::min(safe, decodedText.size() - tail);
        break;
      }
    }
  }
  return safe;
}

} // namespace kiln
