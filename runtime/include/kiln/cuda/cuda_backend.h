//===- kiln/cuda/cuda_backend.h - the GPU backend: executes a kilnc plan --===//
//
// The CUDA backend runs a model the way kilnc compiled it: it loads the
// artifact's GEMM kernels, streams the checkpoint's weights to the GPU as
// they are stored (FP8 with their block scales; the relayouts the artifact's
// weight table asks for done on the way), keeps a paged MLA latent KV cache
// (kv_lora_rank + qk_rope_head_dim values per token per layer) and executes
// the artifact's launch plans op by op (compiler/docs/artifact.md): the
// `decode` plan for steps of up to max_batch tokens, the `prefill` plan in
// chunks for longer ones. Every GEMM runs one of the artifact's compiled FP8
// kernels; the other ops run the CUDA kernels of model_kernels.h. Decode
// steps replay CUDA Graphs, one per batch bucket, when every op of the plan
// can be captured; an opt-in per-op timeline times each plan step
// (runtime/README.md "CUDA backend" says how both work).
//
// Threading: as Backend says. Every entry point makes the backend's context
// current on the calling thread; the setters below take effect between
// steps (call them from the thread that steps).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_CUDA_BACKEND_H
#define KILN_CUDA_CUDA_BACKEND_H

#include "kiln/artifact.h"
#include "kiln/backend.h"
#include "kiln/checkpoint.h"
#include "kiln/cuda/timeline.h"

#include <filesystem>
#include <functional>
#include <memory>

namespace kiln::cuda {

struct CudaBackendOptions {
  /// CUDA device ordinal.
  int device = 0;
  /// Latent KV cache to allocate, in tokens over all sequences; 0 means
  /// max_batch × max_seq_len of the artifact.
  int64_t kvCacheTokens = 0;
  /// Called after each weight tensor with the share of weight bytes
  /// uploaded, in [0, 1]; returning false cancels the load (kiln::Error
  /// "cancelled" after everything is freed).
  std::function<bool(double)> progress;
  /// Run decode steps as CUDA Graphs (one captured per batch and context
  /// bucket, replayed after; see cudaGraphStatus()). The environment
  /// variable KILN_CUDA_GRAPHS=0 turns it off whatever this says.
  bool cudaGraphs = true;
  /// Record a per-op timeline of every plan run (setTimeline() says how).
  /// KILN_TIMELINE=FILE.json turns it on too and writes the Chrome trace to
  /// FILE.json, and the per-op table to stderr, when the backend is
  /// destroyed.
  bool timeline = false;
};

/// Statistics of the steps run so far.
struct CudaBackendStats {
  int64_t steps = 0;
  int64_t planLaunches = 0;
  int64_t tokens = 0;
  uint64_t weightBytes = 0;
  uint64_t kvCacheBytes = 0;
  int64_t kvPagesFree = 0;
  int64_t kvPagesTotal = 0;
  /// Decode chunks replayed from a CUDA Graph, and graphs captured.
  int64_t graphReplays = 0;
  int64_t graphCaptures = 0;
};

class CudaBackend : public Backend {
public:
  /// Checks that `artifact` was compiled for `checkpoint`'s model and for
  /// the GPU (compute capability 9.0 for sm_90a), then uploads the weights
  /// and allocates the arenas and the KV cache. Throws kiln::Error naming
  /// the artifact, the tensor or the GPU; nothing stays allocated after a
  /// failure.
  CudaBackend(const Checkpoint &checkpoint, Artifact artifact,
              const std::string &artifactOrigin,
              const CudaBackendOptions &options = {});
  /// The same model with synthetic weights generated on the GPU (uniform,
  /// scaled by 1/sqrt(fan-in); norms around 1): benchmarks at full
  /// DeepSeek-V3 width without a 690 GB checkpoint. `config` must be the
  /// one the artifact was compiled for.
  CudaBackend(const ModelConfig &config, Artifact artifact,
              const std::string &artifactOrigin, uint64_t seed,
              const CudaBackendOptions &options = {});
  ~CudaBackend() override;

  const ModelConfig &config() const override;
  int64_t kvBytesPerToken() const override;
  std::unique_ptr<BackendSequence> newSequence() override;
  std::vector<float>
  step(const std::vector<BackendStepEntry> &entries) override;
  /// Samples each finishing row on the device (ModelKernels::sample, on the
  /// step's stream after the plan or its graph) and copies back only the
  /// ids; a row the kernel flags is copied back and run through the CPU
  /// sampler for its error.
  std::vector<SampledToken>
  stepAndSample(const std::vector<BackendStepEntry> &entries,
                const std::vector<BackendSampling> &sampling) override;

  CudaBackendStats stats() const;
  /// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)".
  std::string deviceDescription() const;

  /// Turns CUDA Graph replay of decode steps on or off for later steps
  /// (graphs already captured are kept).
  void setCudaGraphs(bool enabled);
  /// Whether decode steps run as graphs, and why not when they do not (off,
  /// not tried yet, or the step of the plan that cannot be captured).
  std::string cudaGraphStatus() const;
  /// Turns the per-op timeline on or off for later steps. While it is on,
  /// every plan runs eagerly with a CUDA event recorded after each step and
  /// the GPU held until the whole plan is enqueued, so that each step's GPU
  /// time is its kernels' alone, without the host's launch gaps (the host's
  /// enqueue time is recorded on its own row).
  void setTimeline(bool enabled);
  /// The timeline recorded so far; recording starts afresh.
  Timeline takeTimeline();

  struct Impl;

private:
  std::unique_ptr<Impl> impl;
};

} // namespace kiln::cuda

#endif // KILN_CUDA_CUDA_BACKEND_H
