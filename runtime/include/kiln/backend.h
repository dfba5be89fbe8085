//===- kiln/backend.h - what the engine needs from a model backend --------===//
//
// The engine (engine.h) schedules requests; a backend runs the model. The
// seam between them is small on purpose, so that the CUDA backend plugs in
// beside the CPU reference without the scheduler changing: a backend makes
// per-sequence state (a KV cache) and runs one batched step over several
// sequences, returning the logits of each one's last token.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_BACKEND_H
#define KILN_BACKEND_H

#include "kiln/config.h"
#include "kiln/cpu_model.h"
#include "kiln/sampler.h"
#include "kiln/weights.h"

#include <cstdint>
#include <exception>
#include <memory>
#include <vector>

namespace kiln {

/// One sequence's state on a backend: its KV cache.
class BackendSequence {
public:
  virtual ~BackendSequence() = default;
  /// Positions held by its KV cache.
  virtual int64_t cachedTokens() const = 0;
};

/// One sequence's part of a step.
struct BackendStepEntry {
  BackendSequence *sequence = nullptr;
  /// The prompt on a sequence's first step, then the last sampled token.
  std::vector<int32_t> tokens;
  /// Position of tokens[0]; the cache is cut there first.
  int64_t startPosition = 0;
};

/// One entry's sampling in stepAndSample().
struct BackendSampling {
  /// The entry's sampler: its parameters, and its PRNG, advanced exactly as
  /// sample() would advance it.
  Sampler *sampler = nullptr;
  /// Ids at or above this are never sampled, as if their logits were -inf
  /// (the engine's text vocabulary); in [1, vocab_size].
  int64_t vocabLimit = 0;
};

/// One entry's result of stepAndSample().
struct SampledToken {
  int32_t token = -1;
  /// What Sampler::sample threw on this entry's logits (token is then -1),
  /// e.g. for a NaN logit; null when a token was chosen.
  std::exception_ptr error;
};

/// A model on some device. The engine calls step() from one thread at a
/// time; the other functions may be called from any thread.
class Backend {
public:
  virtual ~Backend() = default;

  virtual const ModelConfig &config() const = 0;
  /// Bytes of KV cache one position of one sequence takes over all layers:
  /// what a KV budget in bytes is divided by.
  virtual int64_t kvBytesPerToken() const = 0;
  /// A new, empty sequence.
  virtual std::unique_ptr<BackendSequence> newSequence() = 0;
  /// Runs every entry's tokens on its sequence in one batched pass and
  /// returns the logits of each entry's last token: entries.size() rows of
  /// vocab_size, row-major, in entry order. An entry's logits do not depend
  /// on the other entries. Throws kiln::Error for bad entries (e.g. a
  /// sequence of another backend, a position past the context); after any
  /// exception each sequence is cut back to its entry's startPosition.
  virtual std::vector<float>
  step(const std::vector<BackendStepEntry> &entries) = 0;
  /// step(), then each entry's next token from its logits as
  /// sampling[i].sampler->sample() chooses it with ids from vocabLimit up
  /// masked: one result per entry, in entry order. A sampling error is that
  /// entry's result; step errors, and a `sampling` that does not fit the
  /// entries (checked before any cache changes), are thrown. This default
  /// samples step()'s logits on the CPU; a device backend may sample where
  /// the logits are and return only the ids.
  virtual std::vector<SampledToken>
  stepAndSample(const std::vector<BackendStepEntry> &entries,
                const std::vector<BackendSampling> &sampling);

protected:
  /// Throws kiln::Error unless there is one sampling per entry, each with a
  /// sampler and a vocabLimit in [1, vocabSize].
  static void checkSampling(const std::vector<BackendStepEntry> &entries,
                            const std::vector<BackendSampling> &sampling,
                            int64_t vocabSize);
};

/// The FP32 reference backend: one CpuModel, one CpuSequence per sequence.
class CpuBackend : public Backend {
public:
  /// Loads the weights as CpuModel does (the MTP module is not loaded: the
  /// engine does not draft with it yet). Throws kiln::Error like CpuModel.
  CpuBackend(const ModelConfig &config, const WeightSource &weights,
             CpuModelOptions options = {});

  const ModelConfig &config() const override { return cpuModel.config(); }
  int64_t kvBytesPerToken() const override;
  std::unique_ptr<BackendSequence> newSequence() override;
  std::vector<float>
  step(const std::vector<BackendStepEntry> &entries) override;

  /// The model itself, e.g. to compare the engine's output with it.
  CpuModel &model() { return cpuModel; }

private:
  CpuModel cpuModel;
};

} // namespace kiln

#endif // KILN_BACKEND_H
