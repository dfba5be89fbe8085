//===- kiln/artifact.h - the compiled model artifact (.kiln) --------------===//
//
// What kilnc writes and the CUDA backend executes: the compiled kernels
// (cubin + PTX), the launch plans of the decode and prefill steps, their
// buffer plans, the checkpoint tensors the plans read and a manifest (format
// version, target, model hash). The format is specified in
// compiler/docs/artifact.md; this header is its in-memory form, the reader
// and the writer. No CUDA and no MLIR here: the compiler writes artifacts
// with the same code the runtime reads them with.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_ARTIFACT_H
#define KILN_ARTIFACT_H

#include "kiln/config.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace kiln {

/// The container's format version this build writes. 2: `grouped_gemm`
/// runs one grouped kernel over the experts' stacked weights
/// (kernels[].grouped), where 1 ran a plain kernel per expert. 3: plans may
/// run on several streams ordered by events, and read micro-batch row parts
/// of buffers (artifact.md "Streams and micro-batches"). 4: expert-parallel
/// MoE layers (the manifest's expert_parallel, the ep_* ops, rows X). 5:
/// kernels[].epilogue, and a `grouped_gemm` with the SwiGLU epilogue over
/// the experts' gate and up weights, then a `quantize` of grouped scales
/// (artifact.md "Fused SwiGLU"). 6: kernels[].store ("tma": the kernel
/// takes a tensor map of its output as its last parameter). 7: the SwiGLU
/// grouped_gemm may write the down projection's quantized input itself
/// (kernels[].epilogue "swiglu_quantize": outputs codes and grouped scales,
/// no quantize step; artifact.md "Fused SwiGLU"), and kernels[].split
/// "tail" (split-K over the last partial wave only). 8: grouped kernels
/// may have kernels[].store "tma" (block_n 128). 9: kernels[].scale_a
/// "tma" (the kernel stages its scales with TMA through two 1-D tensor maps
/// of scaleA and scaleB, its last parameters; gemm-abi.md "Staged
/// scales"). 10: kernels[].griddepcontrol "wait" (the kernel waits on its
/// grid dependencies before touching global memory, so it may be launched
/// as a programmatic dependent; gemm-abi.md "Dependent launch"). 11:
/// kernels[].a_box "min_m" (a kernel that expects A's tensor map box to be
/// min(block_m, M) rows; gemm-abi.md "The clamped A box"). 12: decode
/// plans' expert-parallel steps may carry "gather_tokens" (gathered
/// exchanges with every rank's send offsets; artifact.md "Gathered
/// exchanges").
constexpr uint32_t kArtifactFormatVersion = 12;
/// The oldest version this build reads: a version 2 plan is a version 3 plan
/// on one stream without micro-batches.
constexpr uint32_t kOldestArtifactFormatVersion = 2;

/// "fnv1a64:<16 hex digits>" of toJson(config): what an artifact records of
/// the model it was compiled for.
std::string modelHash(const ModelConfig &config);

/// A compiled GEMM kernel (fields of gemm-abi.md's kernel manifest) and its
/// code. `cubin` is an sm_90a image; `ptx` may be empty.
struct ArtifactKernel {
  std::string name;
  int blockM = 0;
  int blockN = 0;
  int stages = 0;
  int consumers = 0;
  int sharedMemoryBytes = 0;
  /// K slices computed by separate blocks and summed in FP32 (1: none);
  /// see gemm-abi.md.
  int splitK = 1;
  std::string cubin;
  std::string ptx;
  /// "contiguous" or "masked" for a grouped kernel (gemm-abi.md "Grouped
  /// kernels"), empty for a plain one.
  std::string grouped;
  /// Blocks per cluster along M, sharing B by TMA multicast (1: none); see
  /// gemm-abi.md "Clusters".
  int clusterM = 1;
  /// "swiglu" for a grouped kernel that stores silu(gate) * up of
  /// interleaved gate/up weights (gemm-abi.md "SwiGLU epilogue"), empty for
  /// one that stores the product.
  std::string epilogue;
  /// "tma" for a plain kernel that stores its output with TMA through a
  /// tensor map the launcher builds (gemm-abi.md "TMA store"), empty for
  /// one that stores with plain stores.
  std::string store;
  /// "tail" for a split-K kernel that splits only the last partial wave's
  /// tiles (gemm-abi.md "Split tail"; version 7), empty otherwise.
  std::string split;
  /// "tma" for a kernel whose producer loads each K block's scales with
  /// TMA into its ring stage (gemm-abi.md "Staged scales"; version 9),
  /// empty for one whose consumers load them from global memory.
  std::string scaleA;
  /// "wait" for a kernel whose threads execute `griddepcontrol.wait` before
  /// they touch global memory (gemm-abi.md "Dependent launch"; version 10):
  /// the backend may launch it overlapping the previous kernel's tail.
  std::string griddepcontrol;
  /// "min_m" for a kernel whose stages expect A's TMA box to be
  /// min(block_m, M) rows (gemm-abi.md "The clamped A box"; version 11),
  /// empty for one that expects block_m rows at any M.
  std::string aBox;
};

/// A checkpoint tensor a plan reads.
struct ArtifactWeight {
  /// Checkpoint name; may contain "{e}" (one tensor per routed expert).
  std::string name;
  /// As stored: "f8e4m3" (with `<name>_scale_inv`), "bf16" or "f32".
  std::string dtype;
  std::vector<int64_t> shape;
  /// Relayout at load: "none", "bf16" or "f32".
  std::string transform = "none";
};

/// A buffer of a plan's arena.
struct PlanBuffer {
  std::string name;
  /// "f32", "bf16", "f8e4m3" or "i32".
  std::string dtype;
  /// "T", "R", "S", "E1", "X" or a decimal row count (artifact.md
  /// "Plans").
  std::string rows;
  int64_t cols = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

/// Rows [rows * part / parts, rows * (part + 1) / parts) of `rows`: micro-
/// batch `part` of `parts` (integer division; every part has rows when
/// rows >= parts).
int64_t microBatchBegin(int64_t rows, int64_t part, int64_t parts);
int64_t microBatchRows(int64_t rows, int64_t part, int64_t parts);

/// A buffer row count as artifact.md "Plans" writes it: a symbol ("T",
/// "R", "S", "E1", "X"), a micro-batch part of T, R or X ("T.1/2":
/// micro-batch 1 of 2 of T), or a decimal count (base "", count set).
struct RowSymbol {
  std::string base;
  int64_t part = 0;
  /// 0: not a micro-batch part.
  int64_t parts = 0;
  int64_t count = 0;
};
/// Parses `rows`; false when it is none of the forms above.
bool parseRowSymbol(const std::string &rows, RowSymbol &symbol);
/// "T.1/2" for ("T", 1, 2).
std::string microBatchRowSymbol(const std::string &base, int64_t part,
                                int64_t parts);

/// A whole buffer, a column slice of one, or (parts > 0) the rows of
/// micro-batch `part` of `parts` of a buffer of T rows.
struct PlanTensor {
  std::string buffer;
  int64_t col = 0;
  /// Width of the slice; 0 means the whole row (the buffer's cols).
  int64_t cols = 0;
  int64_t part = 0;
  int64_t parts = 0;
};

/// An op's attributes: numbers, strings and lists of numbers.
struct PlanAttrs {
  std::map<std::string, double> numbers;
  std::map<std::string, std::string> strings;
  std::map<std::string, std::vector<double>> lists;

  /// The attribute, or a kiln::Error naming `op` and the attribute.
  double number(const std::string &op, const std::string &name) const;
  int64_t integer(const std::string &op, const std::string &name) const;
  const std::vector<double> &list(const std::string &op,
                                  const std::string &name) const;
};

/// One op of a launch plan (the op table of artifact.md).
struct PlanStep {
  std::string op;
  /// The stream the step runs on, in [0, LaunchPlan::streams).
  int64_t stream = 0;
  /// `event_record` and `event_wait`: the event, in [0, LaunchPlan::events);
  /// -1 for other ops.
  int64_t event = -1;
  std::vector<PlanTensor> inputs;
  std::vector<PlanTensor> outputs;
  std::vector<std::string> weights;
  /// The compiled kernel of `gemm` and `grouped_gemm`; empty otherwise.
  std::string kernel;
  PlanAttrs attrs;
};

/// The launch plan of one kind of step.
struct LaunchPlan {
  int64_t maxTokens = 0;
  int64_t maxSequences = 0;
  uint64_t arenaBytes = 0;
  /// Streams the steps run on (1: all on stream 0) and events that order
  /// them (artifact.md "Streams and micro-batches").
  int64_t streams = 1;
  int64_t events = 0;
  std::vector<PlanBuffer> buffers;
  std::vector<PlanStep> steps;

  /// The buffer named `name`, or nullptr.
  const PlanBuffer *findBuffer(const std::string &name) const;
};

/// How the plans' MoE layers spread the routed experts over ranks
/// (artifact.md "Expert parallelism"); empty placement: no ep_* steps.
struct ArtifactExpertParallel {
  int64_t worldSize = 1;
  int64_t slotsPerRank = 0;
  /// Global slot (rank · slotsPerRank + local slot) → the routed expert it
  /// holds, -1 for an unused slot.
  std::vector<int> placement;

  bool enabled() const { return !placement.empty(); }
  /// Rows a rank may receive in one exchange of a plan of `maxTokens`
  /// tokens: every rank's routed rows (the X row symbol).
  int64_t exchangeRows(int64_t maxTokens, int64_t topK) const {
    return worldSize * maxTokens * topK;
  }
};

/// Build options recorded in the manifest.
struct ArtifactOptions {
  int64_t maxBatch = 8;
  int64_t maxSeqLen = 4096;
  int64_t prefillChunk = 256;
  /// "bf16" or "fp8".
  std::string kvCacheDtype = "bf16";
  int64_t kvPageTokens = 64;
  int64_t expertParallel = 1;
  /// Micro-batches the prefill plan's MoE layers overlap (1: none).
  int64_t overlapMicroBatches = 1;
};

/// A whole artifact in memory.
struct Artifact {
  /// The container's format version: what parseArtifact read, or
  /// kArtifactFormatVersion for an artifact built in memory (serializing
  /// always writes kArtifactFormatVersion).
  uint32_t formatVersion = kArtifactFormatVersion;
  std::string producer;
  /// What it was compiled from: "config.json" or the .mlir file's name.
  std::string source;
  /// "sm_90a".
  std::string targetArch = "sm_90a";
  std::string modelType;
  /// modelHash() of the config, or "" for a graph without one.
  std::string modelHash;
  /// The compiled config's fields that identify it in messages.
  int64_t hiddenSize = 0;
  int64_t numHiddenLayers = 0;
  int64_t vocabSize = 0;
  ArtifactOptions options;
  ArtifactExpertParallel expertParallel;
  std::vector<ArtifactKernel> kernels;
  std::vector<ArtifactWeight> weights;
  /// "decode", "prefill" and (max_batch > 64) "decode_small"; a
  /// hand-written graph may have others.
  std::map<std::string, LaunchPlan> plans;

  const ArtifactKernel *findKernel(const std::string &name) const;
  const LaunchPlan &plan(const std::string &name) const;
  /// The plan a step of `tokens` tokens from `sequences` sequences runs on
  /// (artifact.md "Plans"): the smallest decode plan it fits
  /// (`decode_small`, then `decode`), else `prefill`.
  const std::string &stepPlanName(int64_t tokens, int64_t sequences) const;
};

/// Checks the internal consistency artifact.md requires (every step's op is
/// known and its buffers, weights and kernel exist; buffers fit the arena
/// and are 256-byte aligned; streams and events are in range, every wait
/// follows a record of its event, every other stream starts with a wait and
/// is joined into stream 0). Throws kiln::Error naming `origin`, the plan,
/// the step index and op, and what is wrong.
void validateArtifact(const Artifact &artifact, const std::string &origin);

/// Reads and validates an artifact file. Throws kiln::Error naming the file
/// and the problem (magic, version with the producer that wrote it,
/// truncation, bad manifest).
Artifact readArtifact(const std::filesystem::path &path);
/// The same from bytes in memory; `origin` names them in errors.
Artifact parseArtifact(const std::string &bytes, const std::string &origin);

/// The file's bytes (validated first).
std::string serializeArtifact(const Artifact &artifact);
/// Writes atomically (a temporary file renamed into place).
void writeArtifact(const Artifact &artifact, const std::filesystem::path &path);

/// Throws kiln::Error unless the artifact was compiled for `config`
/// (model hash and the identifying fields, all named in the message);
/// `artifactOrigin` and `configOrigin` name the two files.
void checkArtifactMatchesModel(const Artifact &artifact,
                               const ModelConfig &config,
                               const std::string &artifactOrigin,
                               const std::string &configOrigin);

/// A human-readable summary (kernels, plans, buffers, weights): what
/// `kiln inspect` prints.
std::string describeArtifact(const Artifact &artifact);

} // namespace kiln

#endif // KILN_ARTIFACT_H
