//===- backend.cpp - the CPU reference backend behind the engine ----------===//

#include "kiln/backend.h"

#include "kiln/error.h"

#include <algorithm>
#include <limits>
#include <string>

namespace kiln {

namespace {

class CpuBackendSequence : public BackendSequence {
public:
  explicit CpuBackendSequence(CpuSequence sequence)
      : sequence(std::move(sequence)) {}
  int64_t cachedTokens() const override { return sequence.cachedTokens(); }

  CpuSequence sequence;
};

CpuModelOptions withoutMtp(CpuModelOptions options) {
  options.loadMtp = false;
  return options;
}

} // namespace

void Backend::checkSampling(const std::vector<BackendStepEntry> &entries,
                            const std::vector<BackendSampling> &sampling,
                            int64_t vocabSize) {
  if (sampling.size() != entries.size())
    throw Error("backend: " + std::to_string(sampling.size()) +
                " sampling inputs for " + std::to_string(entries.size()) +
                " step entries");
  for (size_t i = 0; i < sampling.size(); ++i) {
    std::string where = "backend: sampling of step entry " + std::to_string(i);
    if (!sampling[i].sampler)
      throw Error(where + " has no sampler");
    if (sampling[i].vocabLimit < 1 || sampling[i].vocabLimit > vocabSize)
      throw Error(where + ": the vocabulary limit " +
                  std::to_string(sampling[i].vocabLimit) + " is outside [1, " +
                  std::to_string(vocabSize) + "]");
  }
}

std::vector<SampledToken>
Backend::stepAndSample(const std::vector<BackendStepEntry> &entries,
                       const std::vector<BackendSampling> &sampling) {
  const int64_t vocab = config().vocabSize;
  checkSampling(entries, sampling, vocab);
  std::vector<float> logits = step(entries);
  std::vector<SampledToken> tokens(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    float *row = logits.data() + i * vocab;
    std::fill(row + sampling[i].vocabLimit, row + vocab,
              -std::numeric_limits<float>::infinity());
    try {
      tokens[i].token = sampling[i].sampler->sample(row, vocab);
    } catch (...) {
      tokens[i].error = std::current_exception();
    }
  }
  return tokens;
}

CpuBackend::CpuBackend(const ModelConfig &config, const WeightSource &weights,
                       CpuModelOptions options)
    : cpuModel(config, weights, withoutMtp(options)) {}

int64_t CpuBackend::kvBytesPerToken() const {
  const ModelConfig &c = cpuModel.config();
  return kvCacheValuesPerToken(c, cpuModel.options().mlaForm) *
         c.numHiddenLayers * static_cast<int64_t>(sizeof(float));
}

std::unique_ptr<BackendSequence> CpuBackend::newSequence() {
  return std::make_unique<CpuBackendSequence>(cpuModel.newSequence());
}

std::vector<float>
CpuBackend::step(const std::vector<BackendStepEntry> &entries) {
  std::vector<CpuBatchEntry> batch;
  batch.reserve(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    auto *sequence = dynamic_cast<CpuBackendSequence *>(entries[i].sequence);
    if (!sequence)
      throw Error("CPU backend: step entry " + std::to_string(i) +
                  ": the sequence was not made by a CPU backend");
    batch.push_back({&sequence->sequence, entries[i].tokens,
                     entries[i].startPosition,
                     /*lastTokenLogitsOnly=*/true});
  }
  std::vector<std::vector<float>> rows = cpuModel.forwardBatch(batch);
  const int64_t vocab = cpuModel.config().vocabSize;
  std::vector<float> logits(rows.size() * vocab);
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy(rows[i].begin(), rows[i].end(), logits.begin() + i * vocab);
  return logits;
}

} // namespace kiln
