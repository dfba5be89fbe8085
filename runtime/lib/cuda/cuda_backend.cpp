//===- cuda_backend.cpp - the GPU backend: executes a kilnc launch plan ---===//

#include "kiln/cuda/cuda_backend.h"
#include "kiln/cuda/artifact_kernel.h"

#include "kiln/cuda/driver.h"
#include "kiln/cuda/gemm_launcher.h"
#include "kiln/cuda/model_kernels.h"
#include "kiln/cuda/nccl.h"
#include "kiln/cuda/swiglu_weights.h"
#include "kiln/distributed.h"
#include "kiln/error.h"
#include "kiln/expert_placement.h"
#include "kiln/fp8.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <tuple>

namespace kiln::cuda {

namespace {

constexpr uint64_t kArenaAlignment = 256;

constexpr const char *kGraphsNotTried =
    "decode steps will run as CUDA Graphs once a bucket has run twice";
constexpr const char *kGraphsRunning =
    "decode steps run as CUDA Graphs (one per bucket of tokens, sequences "
    "and context, powers of two)";

//===----------------------------------------------------------------------===//
// Paged latent KV cache
//===----------------------------------------------------------------------===//

/// The cache's pages, shared by every sequence of one backend. Sequences
/// hold a shared_ptr so that a sequence outliving its backend frees nothing
/// twice.
class PagePool {
public:
  explicit PagePool(int64_t pages) {
    free.reserve(pages);
    for (int64_t p = pages - 1; p >= 0; --p)
      free.push_back(static_cast<int32_t>(p));
    total = pages;
  }

  /// `count` pages, or kiln::Error when the cache is full.
  std::vector<int32_t> take(int64_t count) {
    std::lock_guard<std::mutex> lock(mutex);
    if (count > static_cast<int64_t>(free.size()))
      throw Error("CUDA backend: the KV cache is full (" +
                  std::to_string(free.size()) + " of " + std::to_string(total) +
                  " pages free, " + std::to_string(count) +
                  " needed); raise the KV budget or lower the batch");
    std::vector<int32_t> pages(free.end() - count, free.end());
    free.resize(free.size() - count);
    return pages;
  }
  void give(const int32_t *pages, size_t count) {
    std::lock_guard<std::mutex> lock(mutex);
    free.insert(free.end(), pages, pages + count);
  }
  int64_t freePages() const {
    std::lock_guard<std::mutex> lock(mutex);
    return static_cast<int64_t>(free.size());
  }
  int64_t totalPages() const { return total; }

private:
  mutable std::mutex mutex;
  std::vector<int32_t> free;
  int64_t total = 0;
};

class CudaSequence : public BackendSequence {
public:
  CudaSequence(const void *owner, std::shared_ptr<PagePool> pool,
               int64_t pageTokens)
      : owner(owner), pool(std::move(pool)), pageTokens(pageTokens) {}
  ~CudaSequence() override {
    if (!pages.empty())
      pool->give(pages.data(), pages.size());
  }
  int64_t cachedTokens() const override { return cached; }

  /// Forgets positions from `position` on and returns pages no longer used.
  void cutTo(int64_t position) {
    cached = std::min(cached, position);
    size_t keep = static_cast<size_t>((position + pageTokens - 1) / pageTokens);
    if (keep < pages.size()) {
      pool->give(pages.data() + keep, pages.size() - keep);
      pages.resize(keep);
    }
  }
  /// Holds pages for positions [0, tokens).
  void reserve(int64_t tokens) {
    size_t need = static_cast<size_t>((tokens + pageTokens - 1) / pageTokens);
    if (need > pages.size()) {
      std::vector<int32_t> more = pool->take(need - pages.size());
      pages.insert(pages.end(), more.begin(), more.end());
    }
  }

  const void *owner;
  std::shared_ptr<PagePool> pool;
  int64_t pageTokens;
  std::vector<int32_t> pages;
  int64_t cached = 0;
};

//===----------------------------------------------------------------------===//
// Weights
//===----------------------------------------------------------------------===//

struct DeviceWeight {
  ElementType type = ElementType::BF16;
  std::vector<int64_t> shape;
  DeviceBuffer data;
  /// FP8 weights: f32 [ceil(n/128)][ceil(k/128)] block scales.
  DeviceBuffer scales;
};

std::vector<uint16_t> toBf16(const std::vector<float> &values) {
  std::vector<uint16_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i)
    out[i] = encodeBF16(values[i]);
  return out;
}

/// 128×128 block quantization of an [n, k] weight (a BF16 checkpoint's
/// linear weights, which the FP8 GEMMs cannot read as they are): scale_inv =
/// amax / 448 per block, as DeepSeek's FP8 export does.
void quantizeWeightBlocks(const std::vector<float> &w, int64_t n, int64_t k,
                          std::vector<uint8_t> &q, std::vector<float> &scale) {
  const int64_t nb = scaleBlocks(n), kb = scaleBlocks(k);
  q.assign(n * k, 0);
  scale.assign(nb * kb, 0.0f);
  for (int64_t bi = 0; bi < nb; ++bi)
    for (int64_t bj = 0; bj < kb; ++bj) {
      float amax = 0;
      for (int64_t r = bi * 128; r < std::min(n, (bi + 1) * 128); ++r)
        for (int64_t c = bj * 128; c < std::min(k, (bj + 1) * 128); ++c)
          amax = std::max(amax, std::fabs(w[r * k + c]));
      float s = amax > 0 ? amax / kE4M3Max : 1.0f;
      scale[bi * kb + bj] = s;
      for (int64_t r = bi * 128; r < std::min(n, (bi + 1) * 128); ++r)
        for (int64_t c = bj * 128; c < std::min(k, (bj + 1) * 128); ++c)
          q[r * k + c] = encodeE4M3(w[r * k + c] / s);
    }
}

DeviceBuffer upload(const void *bytes, size_t size, const std::string &what) {
  DeviceBuffer buffer(size, what);
  KILN_CU(what, cuMemcpyHtoD, buffer.get(), bytes, size);
  return buffer;
}

std::string expandExpert(const std::string &pattern, int64_t expert) {
  std::string name = pattern;
  size_t at = name.find("{e}");
  if (at != std::string::npos)
    name.replace(at, 3, std::to_string(expert));
  return name;
}

/// Rows of a buffer for the current chunk.
struct ChunkShape {
  int64_t tokens = 0;    // T
  int64_t sequences = 0; // S
  int64_t routed = 0;    // R
  int64_t experts1 = 0;  // E1
  int64_t topK = 0;      // R = T * topK, per micro-batch too
  /// X: rows an expert-parallel exchange received (PlanState keeps the
  /// latest; here only for sizing).
  int64_t exchanged = 0;
  /// Bound on the context any token attends to (mla_attention).
  int64_t maxContext = 0;
  /// Expert-parallel exchanges move every rank's whole send buffer (fixed
  /// sizes, no host synchronization: artifact.md "Gathered exchanges").
  bool gathered = false;
};

/// The longest context the MLA workspace is sized to decompress for a
/// prefill chunk (1 GB at DeepSeek-V3's 128 heads); longer ones run the
/// absorbed form.
constexpr int64_t kDecompressedPrefillMaxContext = 16384;

/// The smallest power of two ≥ `n`, at most `limit` (≥ n).
int64_t bucketUp(int64_t n, int64_t limit) {
  int64_t b = 1;
  while (b < n)
    b *= 2;
  return std::min(b, limit);
}

/// Driver results that mean "this cannot be captured in a graph" (a host
/// synchronization or a legacy-stream call during capture), not a fault.
bool isCaptureError(CUresult result) {
  switch (result) {
  case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED:
  case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED:
  case CUDA_ERROR_STREAM_CAPTURE_MERGE:
  case CUDA_ERROR_STREAM_CAPTURE_UNMATCHED:
  case CUDA_ERROR_STREAM_CAPTURE_UNJOINED:
  case CUDA_ERROR_STREAM_CAPTURE_ISOLATION:
  case CUDA_ERROR_STREAM_CAPTURE_IMPLICIT:
  case CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD:
  case CUDA_ERROR_CAPTURED_EVENT:
    return true;
  default:
    return false;
  }
}

/// Holds a stream until the host opens it (timeline mode: the GPU starts a
/// plan only once every step is enqueued, so event intervals measure kernels,
/// not launch gaps). It opens by itself after a while, so that a step that
/// waits for the GPU from the host (e.g. reads data back) only delays.
struct StreamGate {
  std::mutex mutex;
  std::condition_variable opened;
  bool open = false;

  static void CUDA_CB wait(void *gate) {
    auto *g = static_cast<StreamGate *>(gate);
    std::unique_lock<std::mutex> lock(g->mutex);
    g->opened.wait_for(lock, std::chrono::milliseconds(20),
                       [g] { return g->open; });
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      open = true;
    }
    opened.notify_all();
  }
};

/// A plan's expert-parallel exchanges: -1 if it has none; else the most
/// tokens of a step whose exchanges are gathered (the smallest
/// gather_tokens of its dispatches; 0: some exchange is always packed and
/// reads its counts back to the host).
int64_t planGatherTokens(const LaunchPlan &plan) {
  int64_t least = -1;
  for (const PlanStep &step : plan.steps) {
    auto direction = step.attrs.strings.find("direction");
    if (step.op != "ep_all_to_all" || direction == step.attrs.strings.end() ||
        direction->second != "dispatch")
      continue;
    auto gather = step.attrs.numbers.find("gather_tokens");
    const int64_t tokens = gather == step.attrs.numbers.end()
                               ? 0
                               : static_cast<int64_t>(gather->second);
    least = least < 0 ? tokens : std::min(least, tokens);
  }
  return least;
}

int64_t resolveRows(const PlanBuffer &buffer, const ChunkShape &shape) {
  RowSymbol symbol;
  if (parseRowSymbol(buffer.rows, symbol) && symbol.parts)
    return symbol.base == "X"
               // At most the whole step's exchange.
               ? shape.exchanged
               : microBatchRows(shape.tokens, symbol.part, symbol.parts) *
                     (symbol.base == "R" ? shape.topK : 1);
  if (buffer.rows == "T")
    return shape.tokens;
  if (buffer.rows == "S")
    return shape.sequences;
  if (buffer.rows == "R")
    return shape.routed;
  if (buffer.rows == "E1")
    return shape.experts1;
  if (buffer.rows == "X")
    return shape.exchanged;
  return std::stoll(buffer.rows);
}

} // namespace

//===----------------------------------------------------------------------===//
// CudaBackend::Impl
//===----------------------------------------------------------------------===//

struct CudaBackend::Impl {
  ModelConfig config;
  Artifact artifact;
  std::string origin;

  // Declaration order is destruction order in reverse: everything on the
  // device goes before the context is released.
  std::unique_ptr<PrimaryContext> context;
  /// Expert parallelism (artifact.md "Expert parallelism"): this rank, its
  /// communicator (none at world size 1, where an exchange is a local
  /// copy), and the placement's replica table on the device.
  DistributedEnvironment distributed;
  std::unique_ptr<NcclCommunicator> communicator;
  std::optional<ExpertPlacement> placement;
  int epRank = 0, epRanks = 1, epSlotsPerRank = 0, epMaxReplicas = 1;
  DeviceBuffer epReplicas;      // i32 [experts][epMaxReplicas] global slots
  DeviceBuffer epReplicaCounts; // i32 [experts]
  DeviceBuffer epSendCounts;    // i32 [ranks · slots]: a dispatch's counts
  std::string deviceName;
  int multiprocessors = 0;
  int computeMajor = 0, computeMinor = 0;
  CUstream stream = nullptr;
  /// Streams 1, 2, ... of multi-stream plans (artifact.md "Streams and
  /// micro-batches"); stream 0 is `stream`.
  std::vector<CUstream> sideStreams;
  /// The events of every plan, each plan's from PlanState::firstEvent.
  std::vector<CUevent> planEvents;
  std::unique_ptr<ModelKernels> kernels;
  std::map<std::string, GemmKernel> gemms;
  std::map<std::string, DeviceWeight> weights;
  struct PlanState {
    std::string name;
    const LaunchPlan *plan = nullptr;
    DeviceBuffer arena;
    /// mla_attention steps' rotation frequencies, by step index.
    std::map<size_t, DeviceBuffer> invFreq;
    size_t firstEvent = 0;
    /// The most micro-batches a step's rows are split into (1: none).
    int64_t microBatches = 1;
    /// An expert-parallel dispatch's rows per global slot sent, and per
    /// (peer, local slot) received, and its send offsets [W·S + 1], by the
    /// name of its counts buffer: what the matching combine sends back,
    /// without reading anything from the device again.
    struct Exchange {
      std::vector<int64_t> sent, received;
      std::vector<int32_t> sendOffsets;
    };
    std::map<std::string, Exchange> exchanges;
    /// Rows of the X buffers, by row symbol ("X", or a micro-batch's
    /// "X.m/n"): the latest dispatch of that symbol's received rows.
    std::map<std::string, int64_t> exchangedRows;
    /// planGatherTokens of the plan.
    int64_t gatherTokens = -1;
  };
  std::map<std::string, PlanState> plans;
  std::vector<DeviceBuffer> cacheLayers;
  /// FP8 caches only: one FP32 scale per cached token, per layer.
  std::vector<DeviceBuffer> cacheScaleLayers;
  ElementType cacheType = ElementType::BF16;
  std::shared_ptr<PagePool> pool;
  int64_t pageTokens = 64;
  int64_t maxPagesPerSequence = 0;
  int64_t maxSequencesAnyPlan = 0;
  int64_t maxTokensAnyPlan = 0;
  DeviceBuffer pageTable;     // i32 [sequences][maxPagesPerSequence]
  DeviceBuffer sequenceSlots; // i32 [tokens]
  DeviceBuffer mlaWorkspace;  // mla_attention's scratch, for maxTokensAnyPlan
  /// Prefill steps of one sequence may take MLA's decompressed form
  /// (model_kernels.h); KILN_MLA_PREFILL=absorbed keeps them absorbed.
  bool decompressedMlaPrefill = true;

  // CUDA Graphs of the decode plans, by (plan, tokens, sequences, context)
  // bucket.
  // A bucket runs eagerly once first (that warms what launches set up
  // lazily), is captured the second time and replayed from then on.
  using GraphKey = std::tuple<std::string, int64_t, int64_t, int64_t>;
  bool graphsEnabled = true;
  bool graphsUnsupported = false;
  bool graphsProbed = false;
  bool graphStatusLogged = false;
  std::string graphStatus = kGraphsNotTried;
  std::map<GraphKey, CUgraphExec> decodeGraphs;
  std::set<GraphKey> warmedBuckets;

  // Per-op timeline (setTimeline, KILN_TIMELINE).
  bool timelineOn = false;
  std::string timelinePath;
  Timeline timeline;
  std::chrono::steady_clock::time_point timelineStart;
  std::vector<CUevent> timelineEvents;
  StreamGate gate;

  mutable std::mutex statsMutex;
  CudaBackendStats statistics;

  void makeCurrent() const {
    KILN_CU("CUDA backend", cuCtxSetCurrent, context->context());
  }
  void loadKernels();
  void loadWeights(const Checkpoint &checkpoint,
                   const CudaBackendOptions &options);
  void makeSyntheticWeights(uint64_t seed);
  /// Builds the interleaved gate/up weight of every grouped_gemm step with
  /// the SwiGLU epilogue from the loaded stacked gate and up weights, and
  /// frees those where no other step reads them.
  void fuseGateUpWeights();
  /// The experts this rank holds, in the order of its stacked weights:
  /// every expert, or its slots' experts (-1: an unused slot).
  std::vector<int64_t> localExperts() const;
  /// Joins the ranks and uploads the replica table (ep artifacts).
  void setUpExpertParallel();
  /// ep_all_to_all on the step's stream. A dispatch synchronizes the host
  /// with that stream (the counts come back first); a combine reuses its
  /// dispatch's counts and does not.
  void exchange(PlanState &state, const PlanStep &step,
                const std::string &where, const ChunkShape &shape,
                const std::function<DeviceMatrix(size_t)> &input,
                const std::function<DeviceMatrix(size_t)> &output);
  /// The gathered-exchange arguments of this step's kernels (packed: none).
  EpGathered gatheredAt(const ChunkShape &shape) const {
    EpGathered g;
    if (!shape.gathered)
      return g;
    g.peerRows = shape.routed;
    g.rank = epRank;
    g.ranks = epRanks;
    g.slots = epSlotsPerRank;
    return g;
  }
  /// A gathered exchange (artifact.md "Gathered exchanges"): the dispatch
  /// sends this rank's whole send buffer (rows, scales, offsets) to every
  /// rank; the combine sends block p of the peer-major outputs to rank p.
  /// Fixed sizes, no host synchronization.
  void gatheredExchange(PlanState &state, const PlanStep &step,
                        const std::string &where, const ChunkShape &shape,
                        bool dispatch, CUstream stream,
                        const std::function<DeviceMatrix(size_t)> &input,
                        const std::function<DeviceMatrix(size_t)> &output);
  void open(const std::string &configOrigin, const CudaBackendOptions &options,
            const std::function<void()> &weights);
  void allocate(const CudaBackendOptions &options);

  const DeviceWeight &weight(const std::string &name,
                             const std::string &where) const {
    auto it = weights.find(name);
    if (it == weights.end())
      throw Error(where + ": weight " + name + " was not loaded");
    return it->second;
  }

  struct Chunk {
    /// Entry index of each token, its id and its position.
    std::vector<int32_t> tokenEntry;
    std::vector<int32_t> tokenIds;
    std::vector<int32_t> positions;
    /// Entries present in the chunk (their local slot is the index here).
    std::vector<int32_t> entries;
    /// Entries whose last token is in the chunk, and that token's row.
    std::vector<int32_t> finishing;
    std::vector<int32_t> lastRows;
    /// The longest context any token of the chunk attends to.
    int32_t maxContext = 0;
  };
  /// Where the finishing rows of a step go: their logits (step()), or the
  /// tokens sampled from them (stepAndSample()).
  struct Outputs {
    std::vector<float> *logits = nullptr;
    const std::vector<BackendSampling> *sampling = nullptr;
    std::vector<SampledToken> *tokens = nullptr;
  };
  /// Checks every entry before any cache changes (kiln::Error).
  void checkEntries(const std::vector<BackendStepEntry> &entries) const;
  /// Runs a checked step: cuts and grows the caches, runs its chunks.
  void runEntries(const std::vector<BackendStepEntry> &entries,
                  const Outputs &outputs);
  void runChunk(const std::vector<BackendStepEntry> &entries,
                const Chunk &chunk, const Outputs &outputs);
  /// Samples the chunk's S finishing rows of `logits` into outputs.tokens.
  void sampleRows(const Chunk &chunk, CUdeviceptr logits, int64_t S,
                  const Outputs &outputs);
  // ModelKernels::sample's rows and ids, for maxSequencesAnyPlan rows (made
  // on the first stepAndSample()).
  DeviceBuffer samplingRows;
  DeviceBuffer sampledTokens;
  /// Every step of the plan, eagerly (with the timeline when it is on).
  void runPlan(PlanState &state, const ChunkShape &shape);
  void runPlanTimed(PlanState &state, const ChunkShape &shape);
  /// The decode plan from its graph for `shape`'s bucket (captured on the
  /// bucket's second use), or eagerly when it cannot be captured.
  void runDecodeGraph(PlanState &state, const ChunkShape &shape);
  /// Records the plan into a graph (nothing runs); null, with
  /// graphsUnsupported set and the reason logged, when a step cannot be
  /// captured.
  CUgraph recordDecode(PlanState &state, const ChunkShape &shape);
  CUgraphExec captureDecode(PlanState &state, const ChunkShape &shape);
  /// Records the decode plan once before its first run, so that a plan
  /// that cannot be captured never takes the bucket shapes (its results
  /// then never depend on whether graphs were tried).
  void probeDecodeCapture(PlanState &decode);
  void runStep(PlanState &state, size_t index, const PlanStep &step,
               const ChunkShape &shape);
  /// Grows every GEMM kernel's split-K workspace to what the largest chunk
  /// of any plan needs, so that no later launch reallocates one that a
  /// captured graph points to.
  void sizeGemmWorkspaces();
  void logGraphStatus(const std::string &status);
  void destroyGraphs();
  void destroyStreams();
  /// The stream a step runs on.
  CUstream streamOf(const PlanStep &step) const {
    return step.stream == 0 ? stream : sideStreams.at(step.stream - 1);
  }
};

void CudaBackend::Impl::destroyStreams() {
  for (CUevent event : planEvents)
    driver().cuEventDestroy(event);
  planEvents.clear();
  for (CUstream side : sideStreams)
    driver().cuStreamDestroy(side);
  sideStreams.clear();
  if (stream)
    driver().cuStreamDestroy(stream);
  stream = nullptr;
}

void CudaBackend::Impl::loadKernels() {
  kernels = std::make_unique<ModelKernels>();
  for (const ArtifactKernel &k : artifact.kernels)
    gemms.emplace(k.name, loadArtifactGemmKernel(k, origin));
}

/// The routed experts' weights of one projection, stacked for the grouped
/// GEMM (gemm-abi.md "Grouped kernels"): shape {E, N, K}, data [E·N, K]
/// E4M3 (expert e's rows at e·N), scales [E·⌈N/128⌉][⌈K/128⌉]; stored under
/// the artifact's "{e}" name, filled expert by expert.
DeviceWeight stackedExpertWeight(const ArtifactWeight &spec, int64_t experts,
                                 const std::string &what) {
  if (spec.dtype != "f8e4m3" || spec.transform != "none" ||
      spec.shape.size() != 2)
    throw Error(what + ": routed-expert weights feed grouped FP8 GEMMs and "
                       "must be 2-D f8e4m3 weights without a transform");
  DeviceWeight dw{
      ElementType::F8E4M3, {experts, spec.shape[0], spec.shape[1]}, {}, {}};
  dw.data = DeviceBuffer(experts * spec.shape[0] * spec.shape[1], what);
  dw.scales = DeviceBuffer(experts * scaleBlocks(spec.shape[0]) *
                               scaleBlocks(spec.shape[1]) * 4,
                           what + " scales");
  return dw;
}

void CudaBackend::Impl::loadWeights(const Checkpoint &checkpoint,
                                    const CudaBackendOptions &options) {
  // Expand {e} patterns, then upload in the artifact's order; experts go
  // into their projection's stacked weight.
  struct Load {
    std::string name;
    const ArtifactWeight *spec;
    int64_t expert = -1;
  };
  std::vector<Load> loads;
  for (const ArtifactWeight &w : artifact.weights) {
    if (w.name.find("{e}") == std::string::npos) {
      loads.push_back({w.name, &w});
      continue;
    }
    const std::vector<int64_t> experts = localExperts();
    DeviceWeight stacked = stackedExpertWeight(
        w, static_cast<int64_t>(experts.size()), origin + ": weight " + w.name);
    statistics.weightBytes += stacked.data.size() + stacked.scales.size();
    weights.emplace(w.name, std::move(stacked));
    // Only this rank's experts are read; an unused slot stays unwritten (no
    // row is ever routed to it).
    for (size_t i = 0; i < experts.size(); ++i)
      if (experts[i] >= 0)
        loads.push_back(
            {expandExpert(w.name, experts[i]), &w, static_cast<int64_t>(i)});
  }
  uint64_t totalBytes = 0;
  for (const Load &l : loads)
    totalBytes += checkpoint.tensor(l.name).byteSize;
  uint64_t done = 0;
  for (const Load &l : loads) {
    const TensorView &view = checkpoint.tensor(l.name);
    const std::string what = origin + ": weight " + l.name;
    if (view.shape != l.spec->shape)
      throw Error(what + ": the checkpoint has shape " +
                  formatShape(view.shape) + ", the artifact expects " +
                  formatShape(l.spec->shape));
    done += view.byteSize;
    auto progress = [&] {
      if (options.progress &&
          !options.progress(totalBytes ? double(done) / totalBytes : 1.0))
        throw Error(origin + ": loading cancelled");
    };
    if (l.expert >= 0) {
      // Expert e's [N, K] and scales into its slot of the stacked weight.
      DeviceWeight &stacked = weights.at(l.spec->name);
      const size_t dataBytes = view.shape[0] * view.shape[1];
      const size_t scaleBytes =
          scaleBlocks(view.shape[0]) * scaleBlocks(view.shape[1]) * 4;
      CUdeviceptr data = stacked.data.get() + l.expert * dataBytes;
      CUdeviceptr scales = stacked.scales.get() + l.expert * scaleBytes;
      if (view.dtype == DType::F8_E4M3) {
        const TensorView *scale = checkpoint.scaleInv(l.name);
        if (!scale)
          throw Error(what + ": FP8 weight without its scale_inv");
        if (scale->byteSize != scaleBytes)
          throw Error(what + "_scale_inv: " + std::to_string(scale->byteSize) +
                      " bytes, expected " + std::to_string(scaleBytes));
        KILN_CU(what, cuMemcpyHtoD, data, view.data, dataBytes);
        KILN_CU(what, cuMemcpyHtoD, scales, scale->data, scaleBytes);
      } else if (view.dtype == DType::BF16) {
        // A BF16 checkpoint feeding an FP8 GEMM: quantize at load.
        std::vector<uint8_t> q;
        std::vector<float> s;
        quantizeWeightBlocks(checkpoint.loadFloat(l.name, view.shape),
                             view.shape[0], view.shape[1], q, s);
        KILN_CU(what, cuMemcpyHtoD, data, q.data(), dataBytes);
        KILN_CU(what, cuMemcpyHtoD, scales, s.data(), scaleBytes);
      } else {
        throw Error(what + ": dtype " + dtypeName(view.dtype) +
                    " cannot feed the grouped FP8 GEMM");
      }
      progress();
      continue;
    }
    DeviceWeight dw{ElementType::BF16, view.shape, {}, {}};
    const std::string &transform = l.spec->transform;
    if (transform == "bf16") {
      std::vector<uint16_t> bf =
          toBf16(checkpoint.loadFloat(l.name, view.shape));
      dw.type = ElementType::BF16;
      dw.data = upload(bf.data(), bf.size() * 2, what);
    } else if (transform == "f32") {
      std::vector<float> f = checkpoint.loadFloat(l.name, view.shape);
      dw.type = ElementType::F32;
      dw.data = upload(f.data(), f.size() * 4, what);
    } else if (transform == "none" && l.spec->dtype == "f8e4m3" &&
               view.dtype == DType::BF16) {
      // A BF16 checkpoint feeding an FP8 GEMM: quantize at load.
      std::vector<uint8_t> q;
      std::vector<float> s;
      quantizeWeightBlocks(checkpoint.loadFloat(l.name, view.shape),
                           view.shape[0], view.shape[1], q, s);
      dw.type = ElementType::F8E4M3;
      dw.data = upload(q.data(), q.size(), what);
      dw.scales = upload(s.data(), s.size() * 4, what + " scales");
    } else if (transform == "none") {
      if (view.dtype == DType::F8_E4M3) {
        dw.type = ElementType::F8E4M3;
        const TensorView *scale = checkpoint.scaleInv(l.name);
        if (!scale)
          throw Error(what + ": FP8 weight without its scale_inv");
        dw.scales = upload(scale->data, scale->byteSize, what + "_scale_inv");
      } else if (view.dtype == DType::BF16) {
        dw.type = ElementType::BF16;
      } else if (view.dtype == DType::F32) {
        dw.type = ElementType::F32;
      } else {
        throw Error(what + ": dtype " + dtypeName(view.dtype) +
                    " is not supported on the GPU");
      }
      dw.data = upload(view.data, view.byteSize, what);
    } else {
      throw Error(what + ": unknown transform '" + transform + "'");
    }
    statistics.weightBytes += dw.data.size() + dw.scales.size();
    weights.emplace(l.name, std::move(dw));
    progress();
  }
}

std::vector<int64_t> CudaBackend::Impl::localExperts() const {
  std::vector<int64_t> experts;
  if (!placement) {
    experts.resize(config.nRoutedExperts);
    std::iota(experts.begin(), experts.end(), 0);
    return experts;
  }
  for (int s = 0; s < epSlotsPerRank; ++s)
    experts.push_back(placement->slotExpert(epRank * epSlotsPerRank + s));
  return experts;
}

void CudaBackend::Impl::setUpExpertParallel() {
  const ArtifactExpertParallel &ep = artifact.expertParallel;
  epRanks = static_cast<int>(ep.worldSize);
  epSlotsPerRank = static_cast<int>(ep.slotsPerRank);
  try {
    placement = ExpertPlacement::fromSlots(
        ep.placement, epRanks, static_cast<int>(config.nRoutedExperts));
  } catch (const Error &e) {
    throw Error(origin +
                ": the artifact's expert placement does not fit the "
                "model's " +
                std::to_string(config.nRoutedExperts) +
                " routed experts: " + e.what());
  }
  if (epRanks > 1) {
    try {
      communicator = NcclCommunicator::create(distributed);
    } catch (const Error &e) {
      throw Error(origin + ": rank " + std::to_string(epRank) + " of " +
                  std::to_string(epRanks) + " (" + distributed.source +
                  ", rendezvous " + distributed.masterAddress + ":" +
                  std::to_string(distributed.masterPort) +
                  ") could not join the NCCL communicator: " + e.what());
    }
  }
  const int experts = placement->experts();
  for (int e = 0; e < experts; ++e)
    epMaxReplicas = std::max(epMaxReplicas,
                             static_cast<int>(placement->replicasOf(e).size()));
  std::vector<int32_t> table(static_cast<size_t>(experts) * epMaxReplicas, -1),
      counts(experts);
  for (int e = 0; e < experts; ++e) {
    const std::vector<int> &r = placement->replicasOf(e);
    counts[e] = static_cast<int32_t>(r.size());
    std::copy(r.begin(), r.end(), table.begin() + size_t(e) * epMaxReplicas);
  }
  epReplicas =
      upload(table.data(), table.size() * 4, origin + ": expert replica table");
  epReplicaCounts =
      upload(counts.data(), counts.size() * 4, origin + ": expert replicas");
  epSendCounts = DeviceBuffer(size_t(epRanks) * epSlotsPerRank * 4,
                              origin + ": expert-parallel counts");
}

void CudaBackend::Impl::gatheredExchange(
    PlanState &state, const PlanStep &step, const std::string &where,
    const ChunkShape &shape, bool dispatch, CUstream stream,
    const std::function<DeviceMatrix(size_t)> &input,
    const std::function<DeviceMatrix(size_t)> &output) {
  const int W = epRanks;
  // Every block is the size of a whole send buffer of the bucket's routed
  // rows (R): nothing depends on what the routing chose, so the host reads
  // nothing back and the step can be captured.
  const int64_t R = shape.routed;
  // Block p of `to` (bytes each) from rank p: the same `bytes` of `from` to
  // every peer (dispatch: each rank gets every rank's send buffer), or, on
  // the way back, block p of `from` to rank p.
  auto move = [&](CUdeviceptr from, bool sameToEveryPeer, CUdeviceptr to,
                  size_t bytes) {
    std::vector<ByteRange> send(W), receive(W);
    for (int p = 0; p < W; ++p) {
      send[p] = {sameToEveryPeer ? 0 : size_t(p) * bytes, bytes};
      receive[p] = {size_t(p) * bytes, bytes};
    }
    if (!bytes)
      return;
    if (communicator)
      communicator->allToAllV(from, send, to, receive, stream);
    else
      KILN_CU(where, cuMemcpyDtoDAsync, to, from, bytes, stream);
  };
  if (dispatch) {
    // Outputs: every rank's rows, scales and send offsets, peer-major. The
    // received buffers hold X = W · max_tokens · top_k ≥ W · R rows (the
    // reader checks their row symbol).
    const DeviceMatrix q = input(0);
    const size_t tiles = size_t((q.cols + 127) / 128);
    move(q.data, true, output(0).data, size_t(R) * q.cols);
    move(input(1).data, true, output(1).data, size_t(R) * tiles * 4);
    const DeviceMatrix offsets = input(2);
    move(offsets.data, true, output(3).data, size_t(offsets.rows) * 4);
    state.exchangedRows[state.plan->findBuffer(step.outputs.at(0).buffer)
                            ->rows] = W * R;
  } else {
    const DeviceMatrix y = input(0);
    move(y.data, false, output(0).data,
         size_t(R) * y.cols * elementBytes(y.type));
  }
}

void CudaBackend::Impl::exchange(
    PlanState &state, const PlanStep &step, const std::string &where,
    const ChunkShape &shape, const std::function<DeviceMatrix(size_t)> &input,
    const std::function<DeviceMatrix(size_t)> &output) {
  const int W = epRanks, S = epSlotsPerRank;
  const bool dispatch = step.attrs.strings.at("direction") == "dispatch";
  // Dispatch: inputs q [R, H] and grouped scales by global slot, their
  // offsets [W·S + 1]; outputs the received rows peer-major, their scales
  // (grouped by chunk) and the received counts [W][S]. Combine: inputs the
  // expert outputs peer-major, those counts and the dispatch's offsets;
  // output the rows back in the dispatch's order.
  const std::string &countsName =
      dispatch ? step.outputs.at(2).buffer : step.inputs.at(1).buffer;
  // Every launch, copy and NCCL call goes on the step's stream (stream 1 of
  // an overlapped layer, beside the other micro-batch's compute).
  const CUstream stream = streamOf(step);
  if (shape.gathered) {
    gatheredExchange(state, step, where, shape, dispatch, stream, input,
                     output);
    return;
  }
  // Rows per peer: sent (global slots p·S .. p·S + S) and received.
  std::vector<int64_t> sentRows(W), receivedRows(W);
  PlanState::Exchange counts;
  if (dispatch) {
    // The stream is non-blocking: wait for it, then copy synchronously.
    // This blocks the host thread that enqueues every stream, so work the
    // plan lists after this step is enqueued only once the stream's earlier
    // work (the other micro-batch's exchange included) has finished.
    std::vector<int32_t> &sendOffsets = counts.sendOffsets;
    sendOffsets.resize(size_t(W) * S + 1);
    KILN_CU(where, cuStreamSynchronize, stream);
    KILN_CU(where, cuMemcpyDtoH, sendOffsets.data(), input(2).data,
            sendOffsets.size() * 4);
    std::vector<int32_t> send(size_t(W) * S), received(size_t(W) * S);
    for (size_t g = 0; g < send.size(); ++g)
      send[g] = sendOffsets[g + 1] - sendOffsets[g];
    const DeviceMatrix receivedCounts = output(2);
    KILN_CU(where, cuMemcpyHtoDAsync, epSendCounts.get(), send.data(),
            send.size() * 4, stream);
    if (communicator) {
      std::vector<ByteRange> blocks(W);
      for (int p = 0; p < W; ++p)
        blocks[p] = {size_t(p) * S * 4, size_t(S) * 4};
      communicator->allToAllV(epSendCounts.get(), blocks, receivedCounts.data,
                              blocks, stream);
    } else {
      KILN_CU(where, cuMemcpyDtoDAsync, receivedCounts.data, epSendCounts.get(),
              send.size() * 4, stream);
    }
    KILN_CU(where, cuStreamSynchronize, stream);
    KILN_CU(where, cuMemcpyDtoH, received.data(), receivedCounts.data,
            received.size() * 4);
    counts.sent.assign(send.begin(), send.end());
    counts.received.assign(received.begin(), received.end());
    state.exchanges[countsName] = counts;
  } else {
    auto it = state.exchanges.find(countsName);
    if (it == state.exchanges.end())
      throw Error(where + ": no dispatch exchange wrote counts '" + countsName +
                  "' before this combine");
    counts = it->second;
  }
  const std::vector<int32_t> &sendOffsets = counts.sendOffsets;
  int64_t received = 0;
  for (int p = 0; p < W; ++p) {
    sentRows[p] = sendOffsets[size_t(p + 1) * S] - sendOffsets[size_t(p) * S];
    for (int s = 0; s < S; ++s)
      receivedRows[p] += counts.received[size_t(p) * S + s];
    received += receivedRows[p];
  }
  // The X buffers hold every rank's routed rows at the plan's maxima; more
  // means the ranks run different plans in one step.
  const PlanBuffer *xBuffer = state.plan->findBuffer(
      dispatch ? step.outputs.at(0).buffer : step.inputs.at(0).buffer);
  const int64_t capacity = static_cast<int64_t>(
      xBuffer->bytes / (xBuffer->cols * (dispatch ? 1 : 2)));
  if (received > capacity)
    throw Error(where + ": rank " + std::to_string(epRank) + " receives " +
                std::to_string(received) + " routed rows, but buffer '" +
                xBuffer->name + "' holds " + std::to_string(capacity) +
                " (every rank must run the same plan in a step)");
  if (dispatch)
    state.exchangedRows[xBuffer->rows] = received;

  // One all-to-all per array: rows (and scales) of peer p are contiguous on
  // both sides.
  auto move = [&](CUdeviceptr from, const std::vector<int64_t> &fromRows,
                  const std::vector<int64_t> &fromStart, CUdeviceptr to,
                  const std::vector<int64_t> &toRows,
                  const std::vector<int64_t> &toStart, size_t rowBytes) {
    std::vector<ByteRange> send(W), receive(W);
    for (int p = 0; p < W; ++p) {
      send[p] = {size_t(fromStart[p]) * rowBytes,
                 size_t(fromRows[p]) * rowBytes};
      receive[p] = {size_t(toStart[p]) * rowBytes,
                    size_t(toRows[p]) * rowBytes};
    }
    if (communicator) {
      communicator->allToAllV(from, send, to, receive, stream);
    } else if (send[0].bytes) {
      KILN_CU(where, cuMemcpyDtoDAsync, to + receive[0].offset,
              from + send[0].offset, send[0].bytes, stream);
    }
  };
  std::vector<int64_t> sentStart(W), receivedStart(W);
  for (int p = 0; p < W; ++p) {
    sentStart[p] = sendOffsets[size_t(p) * S];
    receivedStart[p] = p ? receivedStart[p - 1] + receivedRows[p - 1] : 0;
  }
  if (dispatch) {
    const DeviceMatrix q = input(0);
    const size_t tiles = size_t((q.cols + 127) / 128);
    move(q.data, sentRows, sentStart, output(0).data, receivedRows,
         receivedStart, size_t(q.cols));
    move(input(1).data, sentRows, sentStart, output(1).data, receivedRows,
         receivedStart, tiles * 4);
  } else {
    const DeviceMatrix y = input(0);
    move(y.data, receivedRows, receivedStart, output(0).data, sentRows,
         sentStart, size_t(y.cols) * elementBytes(y.type));
  }
}

void CudaBackend::Impl::makeSyntheticWeights(uint64_t seed) {
  uint64_t index = 0;
  auto fill = [&](DeviceBuffer &buffer, int64_t count, ElementType type,
                  float amplitude) {
    kernels->fillRandom(stream, buffer.get(), count, type, seed + index++,
                        amplitude);
  };
  for (const ArtifactWeight &w : artifact.weights) {
    if (w.name.find("{e}") != std::string::npos) {
      // Stacked for the grouped GEMM; expert by expert with the seeds and
      // scale of unstacked experts. Expert e's seed does not depend on
      // which experts this rank holds, so every expert-parallel rank makes
      // the same weights as a single GPU does.
      const std::string what = origin + ": synthetic " + w.name;
      const std::vector<int64_t> experts = localExperts();
      DeviceWeight dw =
          stackedExpertWeight(w, static_cast<int64_t>(experts.size()), what);
      const int64_t count = numElements(w.shape);
      for (size_t i = 0; i < experts.size(); ++i)
        if (experts[i] >= 0)
          kernels->fillRandom(stream, dw.data.get() + i * count, count,
                              ElementType::F8E4M3, seed + index + experts[i],
                              kE4M3Max);
      index += config.nRoutedExperts;
      float scale = 1.0f / std::sqrt(static_cast<float>(w.shape[1])) / kE4M3Max;
      unsigned bits;
      std::memcpy(&bits, &scale, 4);
      KILN_CU(what, cuMemsetD32Async, dw.scales.get(), bits,
              dw.scales.size() / 4, stream);
      statistics.weightBytes += dw.data.size() + dw.scales.size();
      weights.emplace(w.name, std::move(dw));
      continue;
    }
    const std::string &name = w.name;
    const std::string what = origin + ": synthetic " + name;
    // Built from the shape (not assigned into an empty one: GCC 12 warns
    // about the empty vector's null data in that copy at -O3).
    DeviceWeight dw{ElementType::BF16, w.shape, {}, {}};
    int64_t count = numElements(w.shape);
    int64_t fanIn = w.shape.size() == 2 ? w.shape[1] : 1;
    bool isNorm = name.find("norm.weight") != std::string::npos;
    float amplitude = isNorm || name.find("embed_tokens") != std::string::npos
                          ? 1.0f
                          : 1.0f / std::sqrt(static_cast<float>(fanIn));
    if (w.dtype == "f8e4m3" && w.transform == "none") {
      dw.type = ElementType::F8E4M3;
      dw.data = DeviceBuffer(count, what);
      fill(dw.data, count, dw.type, kE4M3Max);
      int64_t blocks = scaleBlocks(w.shape[0]) * scaleBlocks(w.shape[1]);
      dw.scales = DeviceBuffer(blocks * 4, what + " scales");
      float scale = amplitude / kE4M3Max;
      unsigned bits;
      std::memcpy(&bits, &scale, 4);
      KILN_CU(what, cuMemsetD32Async, dw.scales.get(), bits, blocks, stream);
    } else {
      dw.type =
          w.transform == "f32" || (w.transform == "none" && w.dtype == "f32")
              ? ElementType::F32
              : ElementType::BF16;
      dw.data = DeviceBuffer(count * elementBytes(dw.type), what);
      fill(dw.data, count, dw.type,
           w.dtype == "f32" && !isNorm ? 0.01f : amplitude);
    }
    statistics.weightBytes += dw.data.size() + dw.scales.size();
    weights.emplace(name, std::move(dw));
  }
}

/// The weight map's name of the interleaved gate/up weight of a fused
/// grouped_gemm step (artifact.md "Fused SwiGLU").
std::string fusedGateUpName(const std::vector<std::string> &weights) {
  return weights.at(0) + "+" + weights.at(1);
}

void CudaBackend::Impl::fuseGateUpWeights() {
  std::set<std::string> readAlone;
  std::set<std::vector<std::string>> pairs;
  for (const auto &[name, plan] : artifact.plans)
    for (const PlanStep &step : plan.steps) {
      if (step.op == "grouped_gemm" && step.weights.size() == 2)
        pairs.insert(step.weights);
      else
        readAlone.insert(step.weights.begin(), step.weights.end());
    }
  // How many fused pairs still read each separate stack.
  std::map<std::string, int> pairReads;
  for (const std::vector<std::string> &pair : pairs)
    for (const std::string &name : pair)
      ++pairReads[name];
  for (const std::vector<std::string> &pair : pairs) {
    const std::string what =
        origin + ": fused gate/up weight of " + pair[0] + " and " + pair[1];
    const DeviceWeight &gate = weight(pair[0], what);
    const DeviceWeight &up = weight(pair[1], what);
    if (gate.type != ElementType::F8E4M3 || gate.shape.size() != 3 ||
        gate.shape != up.shape || gate.shape[1] % 128 != 0)
      throw Error(what +
                  ": the SwiGLU epilogue reads stacked FP8 gate and "
                  "up weights of one shape [E, I, K], I a multiple "
                  "of 128; got " +
                  formatShape(gate.shape) + " and " + formatShape(up.shape));
    const int64_t experts = gate.shape[0], inter = gate.shape[1],
                  k = gate.shape[2];
    DeviceWeight fused{ElementType::F8E4M3, {experts, 2 * inter, k}, {}, {}};
    fused.data = DeviceBuffer(gate.data.size() + up.data.size(), what);
    fused.scales =
        DeviceBuffer(gate.scales.size() + up.scales.size(), what + " scales");
    // 64-row blocks: gate block j to 2j, up block j to 2j + 1 (expert-major
    // stacks, so each expert's blocks land in its own 2I rows); the scales
    // per expert, gate's then up's.
    interleaveBlocksAsync(gate.data.get(), up.data.get(), fused.data.get(),
                          experts * inter / kSwigluInterleaveRows,
                          size_t(kSwigluInterleaveRows * k), stream);
    interleaveBlocksAsync(gate.scales.get(), up.scales.get(),
                          fused.scales.get(), experts,
                          gate.scales.size() / size_t(experts), stream);
    statistics.weightBytes += fused.data.size() + fused.scales.size();
    weights.emplace(fusedGateUpName(pair), std::move(fused));
    // Free this layer's separate stacks before the next layer's copy, so
    // that loading never holds two copies of every layer's experts (a full
    // model's routed experts would not fit twice).
    KILN_CU(what, cuStreamSynchronize, stream);
    for (const std::string &name : pair) {
      auto it = weights.find(name);
      if (--pairReads[name] > 0 || readAlone.count(name) || it == weights.end())
        continue;
      statistics.weightBytes -=
          it->second.data.size() + it->second.scales.size();
      weights.erase(it);
    }
  }
}

void CudaBackend::Impl::allocate(const CudaBackendOptions &options) {
  for (auto &[name, plan] : artifact.plans) {
    PlanState state;
    state.name = name;
    state.plan = &plan;
    state.arena = DeviceBuffer(std::max<uint64_t>(plan.arenaBytes, 256),
                               origin + ": arena of plan " + name);
    for (size_t i = 0; i < plan.steps.size(); ++i) {
      const PlanStep &step = plan.steps[i];
      if (step.op == "mla_attention") {
        std::vector<float> f;
        for (double v : step.attrs.list("mla_attention", "inv_freq"))
          f.push_back(static_cast<float>(v));
        state.invFreq.emplace(
            i, upload(f.data(), f.size() * 4, origin + ": inv_freq"));
      }
    }
    // Events are recorded without timing: an ordering costs least so.
    state.firstEvent = planEvents.size();
    for (int64_t e = 0; e < plan.events; ++e) {
      CUevent event = nullptr;
      KILN_CU(origin + ": events of plan " + name, cuEventCreate, &event,
              CU_EVENT_DISABLE_TIMING);
      planEvents.push_back(event);
    }
    while (static_cast<int64_t>(sideStreams.size()) + 1 < plan.streams) {
      CUstream side = nullptr;
      KILN_CU(origin + ": streams of plan " + name, cuStreamCreate, &side,
              CU_STREAM_NON_BLOCKING);
      sideStreams.push_back(side);
    }
    for (const PlanStep &step : plan.steps)
      for (const auto *tensors : {&step.inputs, &step.outputs})
        for (const PlanTensor &t : *tensors)
          state.microBatches = std::max(state.microBatches, t.parts);
    state.gatherTokens = planGatherTokens(plan);
    maxSequencesAnyPlan = std::max(maxSequencesAnyPlan, plan.maxSequences);
    maxTokensAnyPlan = std::max(maxTokensAnyPlan, plan.maxTokens);
    plans.emplace(name, std::move(state));
  }
  if (!plans.count("decode") || !plans.count("prefill"))
    throw Error(origin + ": the CUDA backend needs plans 'decode' and "
                         "'prefill'");

  pageTokens = artifact.options.kvPageTokens;
  if (pageTokens <= 0)
    throw Error(origin + ": kv_page_tokens must be positive");
  maxPagesPerSequence =
      (artifact.options.maxSeqLen + pageTokens - 1) / pageTokens;
  int64_t cacheTokens =
      options.kvCacheTokens > 0
          ? options.kvCacheTokens
          : artifact.options.maxBatch * artifact.options.maxSeqLen;
  int64_t pages = (cacheTokens + pageTokens - 1) / pageTokens;
  pool = std::make_shared<PagePool>(pages);
  const int64_t rowValues = config.kvLoraRank + config.qkRopeHeadDim;
  // BF16, or E4M3 with one FP32 scale per cached token (half the bytes;
  // attention then runs the per-(head, token) kernel, the tensor-core path
  // reads BF16 only).
  const std::string &cacheDtype = artifact.options.kvCacheDtype;
  if (cacheDtype != "bf16" && cacheDtype != "fp8")
    throw Error(origin + ": KV cache dtype '" + cacheDtype +
                "' is not supported (bf16 or fp8)");
  cacheType = cacheDtype == "fp8" ? ElementType::F8E4M3 : ElementType::BF16;
  const uint64_t rows = static_cast<uint64_t>(pages) * pageTokens;
  const uint64_t layerBytes = rows * rowValues * elementBytes(cacheType);
  const uint64_t scaleBytes = cacheType == ElementType::F8E4M3 ? rows * 4 : 0;
  for (int64_t l = 0; l < config.numHiddenLayers; ++l) {
    const std::string what =
        origin + ": KV cache of layer " + std::to_string(l);
    cacheLayers.emplace_back(layerBytes, what);
    if (scaleBytes)
      cacheScaleLayers.emplace_back(scaleBytes, what + " (scales)");
  }
  statistics.kvCacheBytes = (layerBytes + scaleBytes) * config.numHiddenLayers;
  pageTable = DeviceBuffer(
      std::max<int64_t>(1, maxSequencesAnyPlan * maxPagesPerSequence) * 4,
      "page table");
  sequenceSlots =
      DeviceBuffer(std::max<int64_t>(1, maxTokensAnyPlan) * 4, "token slots");
  // GPU sampling: one row of parameters and one token per sequence.
  samplingRows = DeviceBuffer(std::max<int64_t>(1, maxSequencesAnyPlan) *
                                  sizeof(SamplingRow),
                              origin + ": sampling rows");
  sampledTokens = DeviceBuffer(std::max<int64_t>(1, maxSequencesAnyPlan) * 4,
                               origin + ": sampled tokens");
  // Absorbed steps need q_latent for their tokens; a prefill step that
  // takes the decompressed form (kMlaPrefillMinTokens or more tokens of one
  // sequence) needs K_nope and V of its whole context: sized for max_seq_len
  // up to kDecompressedPrefillMaxContext positions (64 KB each at 128
  // heads); chunks over longer contexts run absorbed (the call checks).
  const int heads = static_cast<int>(config.numAttentionHeads);
  size_t mlaBytes =
      mlaAttentionWorkspaceBytes(std::max<int64_t>(1, maxTokensAnyPlan), heads,
                                 static_cast<int>(config.kvLoraRank));
  if (maxTokensAnyPlan >= kMlaPrefillMinTokens)
    mlaBytes = std::max(mlaBytes,
                        mlaPrefillWorkspaceBytes(
                            std::min<int64_t>(artifact.options.maxSeqLen,
                                              kDecompressedPrefillMaxContext),
                            heads, static_cast<int>(config.qkNopeHeadDim),
                            static_cast<int>(config.vHeadDim)));
  mlaWorkspace = DeviceBuffer(mlaBytes, "MLA attention workspace");
}

//===----------------------------------------------------------------------===//
// Executing a plan
//===----------------------------------------------------------------------===//

void CudaBackend::Impl::runStep(PlanState &state, size_t index,
                                const PlanStep &step, const ChunkShape &shape) {
  const LaunchPlan &plan = *state.plan;
  const std::string where =
      origin + ": step " + std::to_string(index) + " (" + step.op + ")";
  // Every launch below goes on the step's stream.
  const CUstream stream = streamOf(step);
  auto matrix = [&](const PlanTensor &t) {
    const PlanBuffer *b = plan.findBuffer(t.buffer);
    if (!b)
      throw Error(where + ": unknown buffer " + t.buffer);
    DeviceMatrix m;
    m.type = parseElementType(b->dtype, where);
    if (b->rows[0] == 'X') {
      // An exchange's received rows (0 before its first dispatch).
      auto rows = state.exchangedRows.find(b->rows);
      m.rows = rows == state.exchangedRows.end() ? 0 : rows->second;
    } else {
      m.rows = resolveRows(*b, shape);
    }
    m.stride = b->cols;
    m.cols = t.cols > 0 ? t.cols : b->cols - t.col;
    m.data = state.arena.get() + b->offset + t.col * elementBytes(m.type);
    if (t.parts) {
      // A micro-batch's rows of a T-row buffer (validated at load).
      m.data += microBatchBegin(m.rows, t.part, t.parts) * b->cols *
                elementBytes(m.type);
      m.rows = microBatchRows(m.rows, t.part, t.parts);
    }
    return m;
  };
  auto input = [&](size_t i) {
    if (i >= step.inputs.size())
      throw Error(where + ": missing input " + std::to_string(i));
    return matrix(step.inputs[i]);
  };
  auto output = [&](size_t i) {
    if (i >= step.outputs.size())
      throw Error(where + ": missing output " + std::to_string(i));
    return matrix(step.outputs[i]);
  };
  // Grouped scales: one group per offset but the last (experts, or a
  // rank's expert slots).
  auto quantized = [&](const DeviceMatrix &values, const DeviceMatrix &scales,
                       const DeviceMatrix *offsets = nullptr) {
    QuantizedMatrix q;
    q.values = values.data;
    q.scales = scales.data;
    q.rows = values.rows;
    q.cols = values.cols;
    if (offsets) {
      q.groupOffsets = offsets->data;
      q.groups = static_cast<int>(offsets->rows - 1);
    }
    return q;
  };
  auto weightAt = [&](size_t i) -> const DeviceWeight & {
    if (i >= step.weights.size())
      throw Error(where + ": missing weight " + std::to_string(i));
    return weight(step.weights[i], where);
  };

  const std::string &op = step.op;
  if (op == "event_record") {
    KILN_CU(where, cuEventRecord, planEvents.at(state.firstEvent + step.event),
            stream);
  } else if (op == "event_wait") {
    KILN_CU(where, cuStreamWaitEvent, stream,
            planEvents.at(state.firstEvent + step.event), 0);
  } else if (op == "embed") {
    const DeviceWeight &table = weightAt(0);
    DeviceMatrix tokens = input(0);
    kernels->embed(stream, tokens.data, tokens.rows, table.data.get(),
                   table.shape[0], output(0));
  } else if (op == "rms_norm") {
    float eps = static_cast<float>(step.attrs.number(op, "eps"));
    if (step.outputs.size() == 2)
      kernels->rmsNormQuantize(stream, input(0), weightAt(0).data.get(), eps,
                               quantized(output(0), output(1)));
    else
      kernels->rmsNorm(stream, input(0), weightAt(0).data.get(), eps,
                       output(0));
  } else if (op == "quantize") {
    // With a second input (the offsets), the scales are grouped.
    DeviceMatrix offsets;
    if (step.inputs.size() == 2)
      offsets = input(1);
    kernels->quantize(stream, input(0),
                      quantized(output(0), output(1),
                                step.inputs.size() == 2 ? &offsets : nullptr));
  } else if (op == "gemm" || op == "grouped_gemm") {
    auto kernel = gemms.find(step.kernel);
    if (kernel == gemms.end())
      throw Error(where + ": unknown kernel " + step.kernel);
    DeviceMatrix a = input(0), as = input(1), y = output(0);
    // No rows, nothing to compute: an expert-parallel rank that receives no
    // routed rows in a step (every token's experts on other ranks) runs its
    // expert GEMMs over X = 0 rows. (Launching them threw, and the peers
    // then waited in the combine's exchange forever.)
    if (a.rows == 0)
      return;
    if (y.stride != y.cols || a.stride != a.cols)
      throw Error(where + ": GEMM operands must be whole buffers");
    // gemm: W [N, K]; grouped_gemm: the experts' weights stacked, {E, N, K};
    // with the SwiGLU epilogue their gate and up weights interleaved,
    // {E, 2I, K}, and an output of I columns.
    const bool swiglu = op == "grouped_gemm" && step.weights.size() == 2;
    const DeviceWeight &w =
        swiglu ? weight(fusedGateUpName(step.weights), where) : weightAt(0);
    size_t rank = op == "gemm" ? 2 : 3;
    if (w.type != ElementType::F8E4M3 || w.shape.size() != rank)
      throw Error(where + ": GEMM weight " + step.weights.at(0) +
                  " is not an FP8 " + (rank == 2 ? "[N, K]" : "[E, N, K]") +
                  " weight");
    GemmOperands g;
    g.a = a.data;
    g.scaleA = as.data;
    g.b = w.data.get();
    g.scaleB = w.scales.get();
    g.out = y.data;
    g.m = static_cast<int>(a.rows);
    g.n = static_cast<int>(w.shape[rank - 2]);
    g.k = static_cast<int>(w.shape[rank - 1]);
    if (g.k != a.cols || (swiglu ? g.n / 2 : g.n) != y.cols)
      throw Error(where + ": weight shape " + formatShape(w.shape) +
                  " does not fit input cols " + std::to_string(a.cols) +
                  " and output cols " + std::to_string(y.cols));
    if (op == "gemm") {
      kernel->second.launch(g, stream);
    } else {
      // One launch for all experts: the kernel reads the offsets (and the
      // grouped scales, group e's [ceil(K/128)][count] at ceil(K/128) ·
      // offsets[e]) on the device, so nothing here waits for the GPU and
      // the step can be captured in a CUDA graph.
      GroupedGemmOperands grouped;
      grouped.gemm = g;
      grouped.groups = input(2).data;
      grouped.numGroups = static_cast<int>(w.shape[0]);
      // The quantized SwiGLU epilogue writes the down projection's input:
      // codes into output 0, grouped scales into output 1.
      if (kernel->second.config().epilogue == GemmEpilogue::SwigluQuantize)
        grouped.outScales = output(1).data;
      kernel->second.launchGrouped(grouped, stream);
    }
  } else if (op == "matmul") {
    const DeviceWeight &w = weightAt(0);
    kernels->matmulF32(stream, input(0), w.data.get(), w.shape[0], output(0));
  } else if (op == "add") {
    kernels->add(stream, input(0), input(1), output(0));
  } else if (op == "mla_attention") {
    MlaAttentionArgs args;
    const PlanAttrs &at = step.attrs;
    args.heads = static_cast<int>(at.integer(op, "heads"));
    args.nopeDim = static_cast<int>(at.integer(op, "nope"));
    args.ropeDim = static_cast<int>(at.integer(op, "rope"));
    args.vDim = static_cast<int>(at.integer(op, "v"));
    args.kvLoraRank = static_cast<int>(at.integer(op, "kv_lora"));
    args.softmaxScale = static_cast<float>(at.number(op, "softmax_scale"));
    args.attentionFactor =
        static_cast<float>(at.number(op, "attention_factor"));
    args.invFreq = state.invFreq.at(index).get();
    args.q = input(0);
    args.latent = input(1);
    args.kPe = input(2);
    args.kvB = weightAt(0).data.get();
    args.out = output(0);
    const PlanBuffer *positions = plan.findBuffer("positions");
    args.positions = state.arena.get() + positions->offset;
    args.sequenceSlots = sequenceSlots.get();
    args.pageTable = pageTable.get();
    args.maxPagesPerSequence = static_cast<int>(maxPagesPerSequence);
    args.pageTokens = static_cast<int>(pageTokens);
    int64_t layer = at.integer(op, "layer");
    if (layer < 0 || layer >= static_cast<int64_t>(cacheLayers.size()))
      throw Error(where + ": layer " + std::to_string(layer) +
                  " has no KV cache");
    args.cache = cacheLayers[layer].get();
    args.cacheType = cacheType;
    if (cacheType == ElementType::F8E4M3)
      args.cacheScales = cacheScaleLayers[layer].get();
    args.maxContext = static_cast<int>(shape.maxContext);
    args.workspace = mlaWorkspace.get();
    args.workspaceBytes = mlaWorkspace.size();
    args.sequences = static_cast<int>(shape.sequences);
    args.decompressedPrefill = decompressedMlaPrefill;
    kernels->mlaAttention(stream, args);
  } else if (op == "swiglu") {
    if (step.outputs.size() == 2) {
      std::optional<DeviceMatrix> offsets;
      if (step.inputs.size() > 2)
        offsets = input(2);
      kernels->swigluQuantize(
          stream, input(0), input(1),
          quantized(output(0), output(1), offsets ? &*offsets : nullptr));
    } else {
      kernels->swiglu(stream, input(0), input(1), output(0));
    }
  } else if (op == "moe_route") {
    MoeRouteArgs args;
    args.logits = input(0);
    args.bias = step.weights.empty() ? 0 : weightAt(0).data.get();
    DeviceMatrix ids = output(0);
    args.expertIds = ids.data;
    args.weights = output(1).data;
    args.topK = static_cast<int>(step.attrs.integer(op, "top_k"));
    args.nGroup = static_cast<int>(step.attrs.integer(op, "n_group"));
    args.topkGroup = static_cast<int>(step.attrs.integer(op, "topk_group"));
    args.routedScalingFactor =
        static_cast<float>(step.attrs.number(op, "routed_scaling_factor"));
    args.normTopkProb = step.attrs.number(op, "norm_topk_prob") != 0;
    kernels->moeRoute(stream, args);
  } else if (op == "moe_dispatch") {
    // Groups: the routed experts, or (expert parallel) the global slots.
    DeviceMatrix ids = input(2);
    DeviceMatrix outQ = output(0), outS = output(1), offsets = output(2);
    kernels->moeDispatch(
        stream, quantized(input(0), input(1)), ids.data,
        static_cast<int>(ids.cols), static_cast<int>(offsets.rows - 1),
        quantized(outQ, outS, &offsets), offsets.data, output(3).data);
  } else if (op == "ep_slots") {
    DeviceMatrix ids = input(0);
    kernels->epSlots(stream, ids.data, ids.rows, static_cast<int>(ids.cols),
                     epReplicas.get(), epReplicaCounts.get(),
                     static_cast<int>(config.nRoutedExperts), epMaxReplicas,
                     output(0).data);
  } else if (op == "ep_all_to_all") {
    exchange(state, step, where, shape, input, output);
  } else if (op == "ep_group") {
    // Gathered: the chunks are where every peer's send offsets put them
    // (the 4th input); packed: back to back, by the received counts.
    DeviceMatrix x = input(0), xs = input(1), q = output(0), qs = output(1);
    kernels->epGroup(
        stream, x.data, xs.data, input(shape.gathered ? 3 : 2).data, epRanks,
        epSlotsPerRank, x.rows, x.cols * elementBytes(x.type), x.cols, true,
        q.data, qs.data, output(2).data, gatheredAt(shape));
  } else if (op == "ep_ungroup") {
    DeviceMatrix y = input(0);
    kernels->epGroup(stream, y.data, 0, input(shape.gathered ? 2 : 1).data,
                     epRanks, epSlotsPerRank, y.rows,
                     y.cols * elementBytes(y.type), y.cols, false,
                     output(0).data, 0, 0, gatheredAt(shape));
  } else if (op == "moe_combine") {
    DeviceMatrix rows = input(1);
    EpGathered gathered = gatheredAt(shape);
    if (gathered.peerRows)
      gathered.sendOffsets = input(3).data;
    kernels->moeCombine(stream, input(0), rows.data, input(2).data,
                        static_cast<int>(rows.cols), output(0), gathered);
  } else if (op == "select_rows") {
    DeviceMatrix rows = input(1);
    kernels->selectRows(stream, input(0), rows.data, rows.rows, output(0));
  } else {
    throw Error(where + ": op not supported by the CUDA backend");
  }
}

void CudaBackend::Impl::runChunk(const std::vector<BackendStepEntry> &entries,
                                 const Chunk &chunk, const Outputs &outputs) {
  const int64_t T = static_cast<int64_t>(chunk.tokenIds.size());
  // decode_small's GEMM kernels are chosen for M <= 64, decode's for
  // max_batch, prefill's for prefill_chunk.
  const std::string &planName =
      artifact.stepPlanName(T, static_cast<int64_t>(chunk.entries.size()));
  const bool isDecode = planName != "prefill";
  PlanState &state = plans.at(planName);
  const LaunchPlan &plan = *state.plan;
  const int64_t S = static_cast<int64_t>(chunk.finishing.size());

  ChunkShape shape;
  shape.tokens = T;
  shape.sequences = S;
  shape.experts1 = config.nRoutedExperts + 1;
  shape.maxContext = chunk.maxContext;
  // A graph's launches are fixed: it runs a bucket's rows (the padding rows
  // repeat the chunk's last token, which writes the same cache row with the
  // same values, and its last sequence) and attends up to the bucket's
  // context bound. Decode chunks of a capturable plan take the bucket's
  // shape also when they run eagerly (graphs off, the timeline, a bucket's
  // first run): kernels may choose their work split from the shape (the
  // attention's KV splits do), and the same launches give the same bits.
  if (isDecode && !graphsProbed)
    probeDecodeCapture(state);
  // An expert-parallel step takes a bucket's shape only where its exchanges
  // are gathered (fixed sizes): a packed exchange reads its counts back to
  // the host, which a graph cannot hold, and would only move padding rows.
  // Every rank must run the same plan and bucket in a step.
  const bool exchangesFixed =
      state.gatherTokens < 0 ||
      (isDecode && bucketUp(T, plan.maxTokens) <= state.gatherTokens);
  const bool bucketed =
      isDecode && !graphsUnsupported && S > 0 && exchangesFixed;
  const bool graph = bucketed && graphsEnabled && !timelineOn;
  shape.gathered = bucketed && state.gatherTokens > 0;
  if (bucketed) {
    shape.tokens = bucketUp(T, plan.maxTokens);
    shape.sequences = bucketUp(S, plan.maxSequences);
    const int64_t maxPages = bucketUp(
        (chunk.maxContext + pageTokens - 1) / pageTokens, maxPagesPerSequence);
    shape.maxContext = maxPages * pageTokens;
  }
  shape.topK = config.numExpertsPerTok;
  shape.routed = shape.tokens * shape.topK;
  if (shape.tokens < state.microBatches)
    throw Error(origin + ": plan '" + planName + "' splits a step into " +
                std::to_string(state.microBatches) +
                " micro-batches, which needs as many tokens; this chunk has " +
                std::to_string(shape.tokens));

  // The step's inputs go into fixed device buffers, ordered on the stream
  // (pageable sources: the driver stages them before returning).
  std::vector<int32_t> tokens = chunk.tokenIds, positions = chunk.positions;
  std::vector<int32_t> lastRows = chunk.lastRows;
  std::vector<int32_t> slots(T);
  std::vector<int32_t> table(chunk.entries.size() * maxPagesPerSequence, -1);
  for (size_t s = 0; s < chunk.entries.size(); ++s) {
    auto *seq = static_cast<CudaSequence *>(entries[chunk.entries[s]].sequence);
    std::copy(seq->pages.begin(), seq->pages.end(),
              table.begin() + s * maxPagesPerSequence);
  }
  for (int64_t t = 0; t < T; ++t)
    slots[t] = static_cast<int32_t>(std::find(chunk.entries.begin(),
                                              chunk.entries.end(),
                                              chunk.tokenEntry[t]) -
                                    chunk.entries.begin());
  tokens.resize(shape.tokens, tokens.back());
  positions.resize(shape.tokens, positions.back());
  slots.resize(shape.tokens, slots.back());
  if (S > 0)
    lastRows.resize(shape.sequences, lastRows.back());
  auto copy = [&](CUdeviceptr to, const std::vector<int32_t> &values,
                  const std::string &what) {
    if (!values.empty())
      KILN_CU(origin + ": step input " + what, cuMemcpyHtoDAsync, to,
              values.data(), values.size() * 4, stream);
  };
  auto fill = [&](const char *name, const std::vector<int32_t> &values) {
    const PlanBuffer *b = plan.findBuffer(name);
    if (!b)
      throw Error(origin + ": plan has no '" + name + "' buffer");
    copy(state.arena.get() + b->offset, values, name);
  };
  fill("tokens", tokens);
  fill("positions", positions);
  fill("last_rows", lastRows);
  copy(sequenceSlots.get(), slots, "token slots");
  copy(pageTable.get(), table, "page table");

  if (graph)
    runDecodeGraph(state, shape);
  else
    runPlan(state, shape);

  if (S > 0) {
    const PlanBuffer *out = plan.findBuffer("logits");
    if (!out)
      throw Error(origin + ": plan has no 'logits' buffer");
    if (outputs.tokens) {
      sampleRows(chunk, state.arena.get() + out->offset, S, outputs);
    } else {
      std::vector<float> &logits = *outputs.logits;
      // Straight into the caller's rows: a staging vector cost as much again
      // (page faults and a copy; 66 MB a step at batch 128). The finishing
      // entries of a chunk are consecutive, so this is one copy.
      const size_t rowBytes = config.vocabSize * 4;
      const CUdeviceptr from = state.arena.get() + out->offset;
      KILN_CU(origin + ": logits", cuStreamSynchronize, stream);
      const bool consecutive =
          chunk.finishing.back() - chunk.finishing.front() + 1 == S;
      for (int64_t s = 0; s < S; s += consecutive ? S : 1)
        KILN_CU(origin + ": logits", cuMemcpyDtoH,
                logits.data() + chunk.finishing[s] * config.vocabSize,
                from + s * rowBytes, (consecutive ? S : 1) * rowBytes);
    }
  }
  std::lock_guard<std::mutex> lock(statsMutex);
  ++statistics.planLaunches;
  statistics.tokens += T;
}

void CudaBackend::Impl::sampleRows(const Chunk &chunk, CUdeviceptr logits,
                                   int64_t S, const Outputs &outputs) {
  const int64_t vocab = config.vocabSize;
  std::vector<SamplingRow> rows(S);
  for (int64_t s = 0; s < S; ++s) {
    const BackendSampling &b = (*outputs.sampling)[chunk.finishing[s]];
    const SamplingParams &params = b.sampler->params();
    rows[s].u = b.sampler->nextUniform();
    rows[s].temperature = params.temperature;
    rows[s].topP = params.topP;
    rows[s].topK = params.topK;
    rows[s].vocabLimit = b.vocabLimit;
  }
  kernels->sample(stream,
                  DeviceMatrix{logits, S, vocab, vocab, ElementType::F32}, rows,
                  samplingRows.get(), samplingRows.size(), sampledTokens.get());
  std::vector<int32_t> ids(S);
  KILN_CU(origin + ": sampled tokens", cuStreamSynchronize, stream);
  KILN_CU(origin + ": sampled tokens", cuMemcpyDtoH, ids.data(),
          sampledTokens.get(), S * 4);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t entry = chunk.finishing[s];
    SampledToken &result = (*outputs.tokens)[entry];
    if (ids[s] >= 0) {
      result.token = ids[s];
      continue;
    }
    // The kernel flags what the CPU sampler throws for: let it say what.
    const BackendSampling &b = (*outputs.sampling)[entry];
    std::vector<float> row(vocab);
    KILN_CU(origin + ": logits", cuMemcpyDtoH, row.data(),
            logits + s * vocab * 4, vocab * 4);
    std::fill(row.begin() + b.vocabLimit, row.end(),
              -std::numeric_limits<float>::infinity());
    try {
      b.sampler->sample(row.data(), vocab);
      result.error = std::make_exception_ptr(
          Error(origin +
                ": the sampling kernel rejected the logits of step "
                "entry " +
                std::to_string(entry) + ", which the CPU sampler accepts"));
    } catch (...) {
      result.error = std::current_exception();
    }
  }
}

void CudaBackend::Impl::runPlan(PlanState &state, const ChunkShape &shape) {
  if (timelineOn) {
    runPlanTimed(state, shape);
    return;
  }
  const LaunchPlan &plan = *state.plan;
  for (size_t i = 0; i < plan.steps.size(); ++i)
    runStep(state, i, plan.steps[i], shape);
}

void CudaBackend::Impl::runPlanTimed(PlanState &state,
                                     const ChunkShape &shape) {
  using Clock = std::chrono::steady_clock;
  auto micros = [&](Clock::time_point t) {
    return std::chrono::duration<double, std::micro>(t - timelineStart).count();
  };
  const LaunchPlan &plan = *state.plan;
  const size_t n = plan.steps.size();
  // An origin event, then a start and an end event around each step on its
  // stream (event steps only order streams and are not timed).
  while (timelineEvents.size() < 2 * n + 1) {
    CUevent event = nullptr;
    KILN_CU(origin + ": timeline", cuEventCreate, &event, CU_EVENT_DEFAULT);
    timelineEvents.push_back(event);
  }
  auto timed = [](const PlanStep &step) {
    return step.op != "event_record" && step.op != "event_wait";
  };
  {
    std::lock_guard<std::mutex> lock(gate.mutex);
    gate.open = false;
  }
  KILN_CU(origin + ": timeline", cuLaunchHostFunc, stream, &StreamGate::wait,
          &gate);
  KILN_CU(origin + ": timeline", cuEventRecord, timelineEvents[0], stream);
  std::vector<double> hostStart(n), hostUs(n);
  try {
    for (size_t i = 0; i < n; ++i) {
      const PlanStep &step = plan.steps[i];
      Clock::time_point t0 = Clock::now();
      if (timed(step))
        KILN_CU(origin + ": timeline", cuEventRecord, timelineEvents[2 * i + 1],
                streamOf(step));
      runStep(state, i, step, shape);
      if (timed(step))
        KILN_CU(origin + ": timeline", cuEventRecord, timelineEvents[2 * i + 2],
                streamOf(step));
      hostStart[i] = micros(t0);
      hostUs[i] = micros(Clock::now()) - hostStart[i];
    }
  } catch (...) {
    gate.release();
    throw;
  }
  // The GPU rows start when the gate opens (every step enqueued).
  const double gpuStart = micros(Clock::now());
  gate.release();
  // A valid plan joins every stream into stream 0 before it ends.
  KILN_CU(origin + ": timeline", cuStreamSynchronize, stream);
  auto elapsedUs = [&](size_t from, size_t to) {
    float ms = 0;
    KILN_CU(origin + ": timeline", cuEventElapsedTime, &ms,
            timelineEvents[from], timelineEvents[to]);
    return 1e3 * ms;
  };
  for (size_t i = 0; i < n; ++i) {
    const PlanStep &step = plan.steps[i];
    if (!timed(step))
      continue;
    TimelineEvent e;
    e.op = step.op;
    e.step = static_cast<int64_t>(i);
    e.plan = state.name;
    e.kernel = step.kernel;
    e.tokens = shape.tokens;
    e.stream = step.stream;
    e.row = TimelineRow::Gpu;
    e.startUs = gpuStart + elapsedUs(0, 2 * i + 1);
    e.durationUs = elapsedUs(2 * i + 1, 2 * i + 2);
    timeline.events.push_back(e);
    e.row = TimelineRow::Host;
    e.startUs = hostStart[i];
    e.durationUs = hostUs[i];
    timeline.events.push_back(e);
  }
  ++timeline.runs;
}

void CudaBackend::Impl::runDecodeGraph(PlanState &state,
                                       const ChunkShape &shape) {
  GraphKey key{state.name, shape.tokens, shape.sequences, shape.maxContext};
  auto it = decodeGraphs.find(key);
  if (it == decodeGraphs.end()) {
    if (warmedBuckets.insert(key).second) {
      runPlan(state, shape);
      return;
    }
    CUgraphExec exec = captureDecode(state, shape);
    if (!exec) {
      runPlan(state, shape);
      return;
    }
    it = decodeGraphs.emplace(key, exec).first;
  }
  KILN_CU(origin + ": decode graph", cuGraphLaunch, it->second, stream);
  std::lock_guard<std::mutex> lock(statsMutex);
  ++statistics.graphReplays;
}

CUgraph CudaBackend::Impl::recordDecode(PlanState &state,
                                        const ChunkShape &shape) {
  const LaunchPlan &plan = *state.plan;
  const std::string where = origin + ": capturing the decode plan";
  // Thread-local mode: a call on this thread that cannot be captured (a
  // synchronization, a copy to the host) fails instead of running.
  KILN_CU(where, cuStreamBeginCapture, stream,
          CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
  auto abandon = [&] {
    CUgraph broken = nullptr;
    driver().cuStreamEndCapture(stream, &broken);
    if (broken)
      driver().cuGraphDestroy(broken);
  };
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    try {
      runStep(state, i, plan.steps[i], shape);
    } catch (const CudaError &error) {
      abandon();
      if (!isCaptureError(error.result()))
        throw;
      graphsUnsupported = true;
      logGraphStatus("decode steps run eagerly: step " + std::to_string(i) +
                     " (" + plan.steps[i].op +
                     ") cannot be captured in a CUDA Graph (" + error.what() +
                     ")");
      return nullptr;
    } catch (...) {
      abandon();
      throw;
    }
  }
  CUgraph graph = nullptr;
  KILN_CU(where, cuStreamEndCapture, stream, &graph);
  return graph;
}

void CudaBackend::Impl::probeDecodeCapture(PlanState &decode) {
  graphsProbed = true;
  ChunkShape shape;
  shape.tokens = shape.sequences = 1;
  shape.topK = config.numExpertsPerTok;
  shape.routed = config.numExpertsPerTok;
  shape.experts1 = config.nRoutedExperts + 1;
  shape.maxContext = pageTokens;
  shape.gathered = decode.gatherTokens > 0;
  if (CUgraph graph = recordDecode(decode, shape))
    driver().cuGraphDestroy(graph);
}

CUgraphExec CudaBackend::Impl::captureDecode(PlanState &state,
                                             const ChunkShape &shape) {
  CUgraph graph = recordDecode(state, shape);
  if (!graph)
    return nullptr;
  CUgraphExec exec = nullptr;
  CUresult instantiated = driver().cuGraphInstantiate(&exec, graph, 0);
  driver().cuGraphDestroy(graph);
  check(instantiated, "cuGraphInstantiate",
        origin + ": instantiating the decode graph");
  {
    std::lock_guard<std::mutex> lock(statsMutex);
    ++statistics.graphCaptures;
  }
  std::string status = kGraphsRunning;
  if (state.gatherTokens > 0 && state.gatherTokens < state.plan->maxTokens)
    status += "; expert-parallel steps of more than " +
              std::to_string(state.gatherTokens) +
              " tokens run eagerly (packed exchanges read their counts back "
              "to the host)";
  logGraphStatus(status);
  return exec;
}

void CudaBackend::Impl::logGraphStatus(const std::string &status) {
  graphStatus = status;
  if (graphStatusLogged)
    return;
  graphStatusLogged = true;
  std::fprintf(stderr, "kiln: CUDA backend: %s\n", status.c_str());
}

void CudaBackend::Impl::destroyGraphs() {
  for (auto &[key, exec] : decodeGraphs)
    driver().cuGraphExecDestroy(exec);
  decodeGraphs.clear();
  warmedBuckets.clear();
}

void CudaBackend::Impl::sizeGemmWorkspaces() {
  // Only kernels the decode plan launches end up in graphs, but a prefill
  // launch of the same kernel could grow (reallocate) their workspace: size
  // them for every plan.
  std::set<std::string> captured;
  for (auto &[name, state] : plans)
    if (name.rfind("decode", 0) == 0)
      for (const PlanStep &step : state.plan->steps)
        captured.insert(step.kernel);
  for (auto &[name, state] : plans) {
    const LaunchPlan &plan = *state.plan;
    ChunkShape largest;
    largest.tokens = plan.maxTokens;
    largest.sequences = plan.maxSequences;
    largest.routed = plan.maxTokens * config.numExpertsPerTok;
    largest.experts1 = config.nRoutedExperts + 1;
    largest.exchanged = artifact.expertParallel.exchangeRows(
        plan.maxTokens, config.numExpertsPerTok);
    for (const PlanStep &step : plan.steps) {
      if ((step.op != "gemm" && step.op != "grouped_gemm") ||
          !captured.count(step.kernel))
        continue;
      auto kernel = gemms.find(step.kernel);
      const PlanBuffer *a = step.inputs.empty()
                                ? nullptr
                                : plan.findBuffer(step.inputs[0].buffer);
      const PlanBuffer *y = step.outputs.empty()
                                ? nullptr
                                : plan.findBuffer(step.outputs[0].buffer);
      // A malformed step fails with its own message when it runs.
      if (kernel == gemms.end() || !a || !y)
        continue;
      // The shape from the operands (GEMM steps use whole buffers); nothing
      // is launched, so any aligned device pointers do.
      GemmOperands g;
      g.m = static_cast<int>(std::max<int64_t>(1, resolveRows(*a, largest)));
      g.n = static_cast<int>(y->cols);
      g.k = static_cast<int>(a->cols);
      g.a = g.b = g.scaleA = g.scaleB = g.out = state.arena.get();
      const GemmKernel &k = kernel->second;
      if (k.config().grouping == GemmGrouping::None) {
        // Per-expert launches of a grouped_gemm have at most T rows each (a
        // token picks an expert once).
        if (step.op == "grouped_gemm")
          g.m = static_cast<int>(plan.maxTokens);
        k.prepare(g);
      } else {
        // One launch over all R rows (contiguous), or slabs of at most T
        // rows per expert (masked).
        GroupedGemmOperands grouped;
        grouped.gemm = g;
        if (k.config().grouping == GemmGrouping::Masked)
          grouped.gemm.m = static_cast<int>(plan.maxTokens);
        grouped.groups = state.arena.get();
        grouped.numGroups = static_cast<int>(config.nRoutedExperts);
        // SwiGLU kernels: N is the gate and up rows, twice the output's
        // columns; the quantized one also writes scales.
        if (k.config().epilogue != GemmEpilogue::Store)
          grouped.gemm.n = 2 * grouped.gemm.n;
        if (k.config().epilogue == GemmEpilogue::SwigluQuantize)
          grouped.outScales = state.arena.get();
        k.prepareGrouped(grouped);
      }
    }
  }
}

//===----------------------------------------------------------------------===//
// CudaBackend
//===----------------------------------------------------------------------===//

void CudaBackend::Impl::open(const std::string &configOrigin,
                             const CudaBackendOptions &options,
                             const std::function<void()> &weights) {
  checkArtifactMatchesModel(artifact, config, origin, configOrigin);
  const char *graphsEnv = std::getenv("KILN_CUDA_GRAPHS");
  graphsEnabled =
      options.cudaGraphs && !(graphsEnv && std::string(graphsEnv) == "0");
  if (!graphsEnabled)
    graphStatus = "decode steps run eagerly: CUDA Graphs are off";
  if (!graphsEnabled && graphsEnv)
    logGraphStatus(graphStatus + " (KILN_CUDA_GRAPHS=0)");
  const char *timelineEnv = std::getenv("KILN_TIMELINE");
  if (timelineEnv && *timelineEnv)
    timelinePath = timelineEnv;
  timelineOn = options.timeline || !timelinePath.empty();
  timelineStart = std::chrono::steady_clock::now();
  if (const char *form = std::getenv("KILN_MLA_PREFILL")) {
    const std::string value = form;
    if (value != "absorbed" && value != "decompressed")
      throw Error(origin +
                  ": KILN_MLA_PREFILL must be 'absorbed' or "
                  "'decompressed', not '" +
                  value + "'");
    decompressedMlaPrefill = value == "decompressed";
  }
  int device = options.device;
  if (artifact.expertParallel.enabled()) {
    // One process per GPU: the launcher says which rank this is, and the
    // rank's local index picks its GPU.
    distributed = readDistributedEnvironment();
    epRank = distributed.rank;
    if (distributed.worldSize != artifact.expertParallel.worldSize)
      throw Error(origin + ": compiled for expert parallelism over " +
                  std::to_string(artifact.expertParallel.worldSize) +
                  " ranks (kilnc --ep), but the environment (" +
                  distributed.source + ") gives world size " +
                  std::to_string(distributed.worldSize) + ": start " +
                  std::to_string(artifact.expertParallel.worldSize) +
                  " processes (runtime/README.md \"Expert parallelism\")");
    if (distributed.worldSize > 1)
      device = distributed.localRank;
    // A packed exchange synchronizes with the host for its counts, which a
    // CUDA Graph cannot hold; decode plans whose exchanges are gathered up
    // to some tokens run those steps as graphs (artifacts before format 12
    // have no gathered exchanges).
    bool packedOnly = false;
    for (const auto &[name, plan] : artifact.plans)
      packedOnly = packedOnly || (name.rfind("decode", 0) == 0 &&
                                  planGatherTokens(plan) == 0);
    if (packedOnly) {
      graphsProbed = graphsUnsupported = true;
      graphStatus = "decode steps run eagerly: expert-parallel exchanges read "
                    "their row counts back to the host";
    }
  }
  context = std::make_unique<PrimaryContext>(device);
  deviceName = context->name();
  computeMajor =
      context->attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
  computeMinor =
      context->attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
  multiprocessors =
      context->attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  if (artifact.targetArch == "sm_90a" &&
      (computeMajor != 9 || computeMinor != 0))
    throw Error(origin +
                ": compiled for sm_90a (compute capability 9.0, "
                "Hopper), but CUDA device " +
                std::to_string(device) + " (" + deviceName +
                ") is compute capability " + std::to_string(computeMajor) +
                "." + std::to_string(computeMinor));
  try {
    KILN_CU(origin, cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING);
    if (artifact.expertParallel.enabled())
      setUpExpertParallel();
    loadKernels();
    allocate(options);
    weights();
    fuseGateUpWeights();
    sizeGemmWorkspaces();
    KILN_CU(origin, cuCtxSynchronize);
  } catch (...) {
    // Free device memory while the context is current, then the context.
    this->weights.clear();
    plans.clear();
    cacheLayers.clear();
    cacheScaleLayers.clear();
    gemms.clear();
    kernels.reset();
    epReplicas = DeviceBuffer();
    epReplicaCounts = DeviceBuffer();
    epSendCounts = DeviceBuffer();
    communicator.reset();
    destroyStreams();
    throw;
  }
}

CudaBackend::CudaBackend(const Checkpoint &checkpoint, Artifact artifact,
                         const std::string &artifactOrigin,
                         const CudaBackendOptions &options)
    : impl(std::make_unique<Impl>()) {
  impl->config = checkpoint.config();
  impl->artifact = std::move(artifact);
  impl->origin = artifactOrigin;
  impl->open((checkpoint.directory() / kConfigFileName).string(), options,
             [&] { impl->loadWeights(checkpoint, options); });
}

CudaBackend::CudaBackend(const ModelConfig &config, Artifact artifact,
                         const std::string &artifactOrigin, uint64_t seed,
                         const CudaBackendOptions &options)
    : impl(std::make_unique<Impl>()) {
  impl->config = config;
  impl->artifact = std::move(artifact);
  impl->origin = artifactOrigin;
  impl->open("the given config", options,
             [&] { impl->makeSyntheticWeights(seed); });
}

CudaBackend::~CudaBackend() {
  if (!impl)
    return;
  impl->makeCurrent();
  if (impl->stream)
    driver().cuStreamSynchronize(impl->stream);
  if (!impl->timelinePath.empty()) {
    try {
      writeChromeTrace(impl->timeline, impl->timelinePath);
      std::fprintf(stderr,
                   "kiln: CUDA backend: timeline of %lld plan runs "
                   "in %s\n%s%s\n",
                   static_cast<long long>(impl->timeline.runs),
                   impl->timelinePath.c_str(),
                   formatOpBreakdown(impl->timeline).c_str(),
                   formatStreamOverlap(impl->timeline).c_str());
    } catch (const std::exception &error) {
      std::fprintf(stderr, "kiln: CUDA backend: %s\n", error.what());
    }
  }
  impl->destroyGraphs();
  for (CUevent event : impl->timelineEvents)
    driver().cuEventDestroy(event);
  impl->weights.clear();
  impl->plans.clear();
  impl->cacheLayers.clear();
  impl->cacheScaleLayers.clear();
  impl->pageTable = DeviceBuffer();
  impl->sequenceSlots = DeviceBuffer();
  impl->mlaWorkspace = DeviceBuffer();
  impl->samplingRows = DeviceBuffer();
  impl->sampledTokens = DeviceBuffer();
  impl->gemms.clear();
  impl->kernels.reset();
  impl->destroyStreams();
}

const ModelConfig &CudaBackend::config() const { return impl->config; }

int64_t CudaBackend::kvBytesPerToken() const {
  // A cached row per layer, plus its scale in an FP8 cache.
  const bool fp8 = impl->cacheType == ElementType::F8E4M3;
  return ((impl->config.kvLoraRank + impl->config.qkRopeHeadDim) *
              elementBytes(impl->cacheType) +
          (fp8 ? 4 : 0)) *
         impl->config.numHiddenLayers;
}

std::unique_ptr<BackendSequence> CudaBackend::newSequence() {
  return std::make_unique<CudaSequence>(impl.get(), impl->pool,
                                        impl->pageTokens);
}

CudaBackendStats CudaBackend::stats() const {
  std::lock_guard<std::mutex> lock(impl->statsMutex);
  CudaBackendStats s = impl->statistics;
  s.kvPagesFree = impl->pool->freePages();
  s.kvPagesTotal = impl->pool->totalPages();
  return s;
}

std::string CudaBackend::deviceDescription() const {
  return impl->deviceName + " (sm_" + std::to_string(impl->computeMajor) +
         std::to_string(impl->computeMinor) + ", " +
         std::to_string(impl->multiprocessors) + " SMs)";
}

void CudaBackend::setCudaGraphs(bool enabled) {
  Impl &s = *impl;
  s.graphsEnabled = enabled;
  if (s.graphsUnsupported)
    return;
  if (!enabled)
    s.graphStatus = "decode steps run eagerly: CUDA Graphs are off";
  else if (s.decodeGraphs.empty())
    s.graphStatus = kGraphsNotTried;
  else
    s.graphStatus = kGraphsRunning;
}

std::string CudaBackend::cudaGraphStatus() const { return impl->graphStatus; }

void CudaBackend::setTimeline(bool enabled) { impl->timelineOn = enabled; }

Timeline CudaBackend::takeTimeline() {
  Timeline taken = std::move(impl->timeline);
  impl->timeline = Timeline();
  return taken;
}

void CudaBackend::Impl::checkEntries(
    const std::vector<BackendStepEntry> &entries) const {
  // Check every entry before touching any cache.
  std::set<const BackendSequence *> seen;
  for (size_t i = 0; i < entries.size(); ++i) {
    const BackendStepEntry &e = entries[i];
    std::string where = "CUDA backend: step entry " + std::to_string(i);
    auto *seq = dynamic_cast<CudaSequence *>(e.sequence);
    if (!seq || seq->owner != this)
      throw Error(where + ": the sequence was not made by this backend");
    if (!seen.insert(seq).second)
      throw Error(where + ": the sequence appears twice in one step");
    if (e.tokens.empty())
      throw Error(where + ": no tokens");
    if (e.startPosition < 0 || e.startPosition > seq->cachedTokens())
      throw Error(where + ": start position " +
                  std::to_string(e.startPosition) + " is past the " +
                  std::to_string(seq->cachedTokens()) + " cached tokens");
    int64_t end = e.startPosition + static_cast<int64_t>(e.tokens.size());
    if (end > artifact.options.maxSeqLen)
      throw Error(where + ": position " + std::to_string(end - 1) +
                  " is past the artifact's max_seq_len " +
                  std::to_string(artifact.options.maxSeqLen));
    for (int32_t t : e.tokens)
      if (t < 0 || t >= config.vocabSize)
        throw Error(where + ": token id " + std::to_string(t) +
                    " is outside the vocabulary [0, " +
                    std::to_string(config.vocabSize) + ")");
  }
}

std::vector<float>
CudaBackend::step(const std::vector<BackendStepEntry> &entries) {
  Impl &s = *impl;
  s.checkEntries(entries);
  s.makeCurrent();
  std::vector<float> logits(entries.size() * s.config.vocabSize);
  s.runEntries(entries, {&logits});
  return logits;
}

std::vector<SampledToken>
CudaBackend::stepAndSample(const std::vector<BackendStepEntry> &entries,
                           const std::vector<BackendSampling> &sampling) {
  Impl &s = *impl;
  checkSampling(entries, sampling, s.config.vocabSize);
  s.checkEntries(entries);
  s.makeCurrent();
  std::vector<SampledToken> tokens(entries.size());
  s.runEntries(entries, {nullptr, &sampling, &tokens});
  return tokens;
}

void CudaBackend::Impl::runEntries(const std::vector<BackendStepEntry> &entries,
                                   const Outputs &outputs) {
  Impl &s = *this;
  const std::string &origin = s.origin;
  try {
    for (const BackendStepEntry &e : entries) {
      auto *seq = static_cast<CudaSequence *>(e.sequence);
      seq->cutTo(e.startPosition);
      seq->reserve(e.startPosition + static_cast<int64_t>(e.tokens.size()));
    }
    // Pack the tokens, in entry order, into chunks a plan can run.
    const LaunchPlan &prefill = *s.plans.at("prefill").plan;
    Impl::Chunk chunk;
    auto flush = [&] {
      if (!chunk.tokenIds.empty())
        s.runChunk(entries, chunk, outputs);
      chunk = Impl::Chunk();
    };
    for (size_t i = 0; i < entries.size(); ++i) {
      const BackendStepEntry &e = entries[i];
      for (size_t j = 0; j < e.tokens.size(); ++j) {
        bool newEntry = chunk.entries.empty() ||
                        chunk.entries.back() != static_cast<int32_t>(i);
        if (static_cast<int64_t>(chunk.tokenIds.size()) >= prefill.maxTokens ||
            (newEntry && static_cast<int64_t>(chunk.entries.size()) >=
                             prefill.maxSequences))
          flush();
        if (chunk.entries.empty() ||
            chunk.entries.back() != static_cast<int32_t>(i))
          chunk.entries.push_back(static_cast<int32_t>(i));
        chunk.tokenEntry.push_back(static_cast<int32_t>(i));
        chunk.tokenIds.push_back(e.tokens[j]);
        chunk.positions.push_back(
            static_cast<int32_t>(e.startPosition + static_cast<int64_t>(j)));
        chunk.maxContext =
            std::max(chunk.maxContext, chunk.positions.back() + 1);
        if (j + 1 == e.tokens.size()) {
          chunk.finishing.push_back(static_cast<int32_t>(i));
          chunk.lastRows.push_back(
              static_cast<int32_t>(chunk.tokenIds.size() - 1));
        }
      }
    }
    flush();
    KILN_CU(origin + ": step", cuStreamSynchronize, s.stream);
  } catch (...) {
    for (const BackendStepEntry &e : entries)
      static_cast<CudaSequence *>(e.sequence)->cutTo(e.startPosition);
    throw;
  }
  for (const BackendStepEntry &e : entries)
    static_cast<CudaSequence *>(e.sequence)->cached =
        e.startPosition + static_cast<int64_t>(e.tokens.size());
  std::lock_guard<std::mutex> lock(s.statsMutex);
  ++s.statistics.steps;
}

} // namespace kiln::cuda
