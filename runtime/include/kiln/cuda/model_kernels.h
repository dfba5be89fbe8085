//===- kiln/cuda/model_kernels.h - the CUDA backend's non-GEMM kernels ----===//
//
// Everything of the DeepSeek-V3 forward that is not an FP8 GEMM: embedding,
// RMSNorm (with fused 1×128 FP8 quantization), quantization, the FP32 dense
// products (router gate, output head), residual adds, absorbed MLA attention
// over the paged latent cache (with RoPE and the cache append), the
// noaux_tc router, MoE dispatch/combine and SwiGLU (with fused
// quantization). Written in CUDA C (runtime/lib/cuda/kernels/), compiled by
// nvcc to one sm_90a cubin that is embedded in the library and loaded with
// the driver API, like the GEMM kernels: no CUDA runtime dependency.
//
// Every function enqueues on `stream` and returns; shapes and pointers are
// checked on the host first (kiln::Error naming the kernel and what is
// wrong). The ops and layouts are those of compiler/docs/artifact.md.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_MODEL_KERNELS_H
#define KILN_CUDA_MODEL_KERNELS_H

#include "kiln/cuda/driver.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::cuda {

enum class ElementType { F32, BF16, F8E4M3, I32 };

/// "f32", "bf16", "f8e4m3", "i32" (the artifact's dtype names).
const char *elementTypeName(ElementType type);
/// Inverse of elementTypeName; throws kiln::Error naming `origin`.
ElementType parseElementType(const std::string &name,
                             const std::string &origin);
int elementBytes(ElementType type);

/// A row-major matrix in device memory, possibly a column slice of a wider
/// one: element (r, c) is at `data + (r * stride + c) * elementBytes(type)`.
struct DeviceMatrix {
  CUdeviceptr data = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  /// Elements between consecutive rows (≥ cols).
  int64_t stride = 0;
  ElementType type = ElementType::F32;
};

/// A 1×128-quantized activation: `values` E4M3 [rows, cols] (dense, row
/// stride = cols) and its scales [cols/128][rows] (the GEMM ABI's layout).
/// With `groupOffsets` set (i32 [groups + 1], on the device) the scales are
/// grouped (artifact.md "moe_dispatch"): group g's are [cols/128][count_g]
/// starting at float index (cols/128) * offsets[g].
struct QuantizedMatrix {
  CUdeviceptr values = 0;
  CUdeviceptr scales = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  CUdeviceptr groupOffsets = 0;
  int groups = 0;
};

/// Absorbed MLA attention of one layer over a paged latent cache.
struct MlaAttentionArgs {
  int heads = 0;
  int nopeDim = 0; // qk_nope_head_dim
  int ropeDim = 0; // qk_rope_head_dim
  int vDim = 0;    // v_head_dim
  int kvLoraRank = 0;
  float softmaxScale = 1.0f;
  /// YaRN's factor on cos and sin.
  float attentionFactor = 1.0f;
  /// f32 [ropeDim / 2] rotation frequencies (device).
  CUdeviceptr invFreq = 0;

  /// bf16 [T, heads * (nope + rope)]
  DeviceMatrix q;
  /// bf16 or f32 [T, kvLoraRank], already RMS-normalized.
  DeviceMatrix latent;
  /// bf16 [T, ropeDim], before RoPE.
  DeviceMatrix kPe;
  /// kv_b_proj in BF16: [heads * (nope + v), kvLoraRank] (device).
  CUdeviceptr kvB = 0;
  /// bf16 [T, heads * v]
  DeviceMatrix out;

  /// Per token (i32 [T], device): position in its sequence and the
  /// sequence's slot in `pageTable`.
  CUdeviceptr positions = 0;
  CUdeviceptr sequenceSlots = 0;
  /// i32 [slots][maxPagesPerSequence]: page indices of each slot's positions
  /// (page = position / pageTokens).
  CUdeviceptr pageTable = 0;
  int maxPagesPerSequence = 0;
  int pageTokens = 0;
  /// This layer's cache: [pages][pageTokens][kvLoraRank + ropeDim] of
  /// `cacheType` (BF16; F8E4M3 with one f32 scale per token-row in
  /// `cacheScales` [pages][pageTokens] as an option).
  CUdeviceptr cache = 0;
  ElementType cacheType = ElementType::BF16;
  CUdeviceptr cacheScales = 0;
  /// The longest sequence (positions + 1) in the step: bounds the work.
  int maxContext = 0;

  /// Scratch of at least mlaAttentionWorkspaceBytes(T, heads, kvLoraRank)
  /// bytes (16-byte aligned, device), or 0. With it, a BF16 cache with
  /// kvLoraRank ≤ 512 and ropeDim ≤ 64 (multiples of 8) takes the
  /// tensor-core path: absorption as per-head batched GEMMs over the step's
  /// tokens, flash attention over 64 heads of a token per block with the KV
  /// range split across blocks when the step has few. Otherwise (an FP8
  /// cache, other shapes, or no workspace) one block per (head, token).
  /// Allocate it once for the most tokens a step will have: the call
  /// allocates nothing and never synchronizes.
  CUdeviceptr workspace = 0;
  size_t workspaceBytes = 0;

  /// Sequences the step's tokens belong to (0: not known). A step of one
  /// sequence with at least kMlaPrefillMinTokens tokens, a BF16 cache, nope
  /// and v ≤ 128, rope ≤ 64 (multiples of 8) and a workspace of at least
  /// mlaPrefillWorkspaceBytes(maxContext, ...) takes the decompressed
  /// prefill path: kv_b_proj expands the context's latents once into the
  /// heads' K_nope and V, then a causal flash attention over them
  /// (kernels/mla_prefill_mma.cuh); ~3.4× fewer FLOPs than the absorbed
  /// form at DeepSeek-V3's shapes. `decompressedPrefill` false keeps such a
  /// step on the absorbed form (KILN_MLA_PREFILL=absorbed in the backend).
  int sequences = 0;
  bool decompressedPrefill = true;
};

/// Tokens from which a one-sequence step takes the decompressed prefill
/// path: decompressing costs kv_b_proj's FLOPs per context position, which
/// the cheaper scores repay from about this many tokens on.
constexpr int64_t kMlaPrefillMinTokens = 256;

/// Bytes of MlaAttentionArgs::workspace the decompressed prefill path needs
/// at a context of `maxContext` positions: bf16 [maxContext][heads][nope +
/// v] and the step's context bound.
size_t mlaPrefillWorkspaceBytes(int64_t maxContext, int heads, int nopeDim,
                                int vDim);

/// Bytes of MlaAttentionArgs::workspace for steps of up to `maxTokens`
/// tokens: q_latent/o_latent bf16 [maxTokens][heads][kvLoraRank] plus the
/// KV splits' partials (fixed, ≈ 35 MB at kvLoraRank 512).
size_t mlaAttentionWorkspaceBytes(int64_t maxTokens, int heads, int kvLoraRank);

/// noaux_tc routing.
struct MoeRouteArgs {
  DeviceMatrix logits;       // f32 [T, E]
  CUdeviceptr bias = 0;      // f32 [E] or 0
  CUdeviceptr expertIds = 0; // i32 [T, topK]
  CUdeviceptr weights = 0;   // f32 [T, topK]
  int topK = 0;
  int nGroup = 1;
  int topkGroup = 1;
  float routedScalingFactor = 1.0f;
  bool normTopkProb = true;
};

/// An expert-parallel exchange that moved every rank's whole send buffer
/// (artifact.md "Gathered exchanges"): fixed sizes, so a decode step that
/// holds it can be a CUDA Graph. Default: a packed exchange.
struct EpGathered {
  int64_t peerRows = 0; ///< rows of each rank's send buffer (0: packed)
  int rank = 0;         ///< this rank
  int ranks = 1, slots = 1;
  /// moe_combine: this rank's send offsets, i32 [ranks · slots + 1].
  CUdeviceptr sendOffsets = 0;
};

/// One row's sampling parameters (kiln::SamplingParams plus the row's draw
/// and vocabulary limit), as sample() hands them to the device.
struct SamplingRow {
  /// The uniform in [0, 1) the CPU sampler would draw for this row (its
  /// Random::uniform()); unused when greedy.
  double u = 0;
  /// 0 picks the argmax (the lower id among equals).
  float temperature = 0;
  /// (0, 1]
  float topP = 1;
  /// 0 keeps all.
  int64_t topK = 0;
  /// Ids at or above this are never sampled (as if their logits were -inf);
  /// in [1, vocab].
  int64_t vocabLimit = 0;
};

/// The non-GEMM kernels, loaded into the context current on the calling
/// thread. Use (and destroy) them with that context current.
class ModelKernels {
public:
  /// Loads the embedded cubin. Throws CudaError/kiln::Error.
  ModelKernels();
  ~ModelKernels();
  ModelKernels(const ModelKernels &) = delete;
  ModelKernels &operator=(const ModelKernels &) = delete;

  /// out[t] = table[tokens[t]] (bf16 [V, H] → f32 [T, H]); ids outside
  /// [0, V) give NaN rows (the runtime checks ids before).
  void embed(CUstream stream, CUdeviceptr tokens, int64_t T, CUdeviceptr table,
             int64_t vocab, const DeviceMatrix &out);
  /// RMSNorm over each row with bf16 weight [cols]: out f32 or bf16.
  void rmsNorm(CUstream stream, const DeviceMatrix &x, CUdeviceptr weight,
               float eps, const DeviceMatrix &out);
  /// RMSNorm fused with 1×128 quantization (cols % 128 == 0).
  void rmsNormQuantize(CUstream stream, const DeviceMatrix &x,
                       CUdeviceptr weight, float eps,
                       const QuantizedMatrix &out);
  /// 1×128 quantization of f32/bf16 rows, `s = max(amax, 1e-4) / 448`.
  void quantize(CUstream stream, const DeviceMatrix &x,
                const QuantizedMatrix &out);
  /// out f32 [T, N] = x f32 [T, K] · W bf16 [N, K]ᵀ, FP32 accumulation.
  void matmulF32(CUstream stream, const DeviceMatrix &x, CUdeviceptr weight,
                 int64_t n, const DeviceMatrix &out);
  /// out f32 = a f32 + b (f32 or bf16); out may be a.
  void add(CUstream stream, const DeviceMatrix &a, const DeviceMatrix &b,
           const DeviceMatrix &out);
  /// Appends the step's tokens to the cache (RoPE on k_pe), then attention
  /// for every token over positions ≤ its own.
  void mlaAttention(CUstream stream, const MlaAttentionArgs &args);
  void moeRoute(CUstream stream, const MoeRouteArgs &args);
  /// Groups the routed rows by expert (stable in token order): outQ [T·k,
  /// H] with grouped scales, offsets i32 [E + 1], rows i32 [T, k].
  void moeDispatch(CUstream stream, const QuantizedMatrix &in,
                   CUdeviceptr expertIds, int topK, int experts,
                   const QuantizedMatrix &out, CUdeviceptr offsets,
                   CUdeviceptr rows);
  /// Expert parallelism (artifact.md "Expert parallelism"): slots[i] = the
  /// global slot serving entry i's expert (ids i32 [T, topK]): replica
  /// (i / topK) mod replicaCounts[e] of replicas[e] (i32 [experts]
  /// [maxReplicas]); -1 for an id outside [0, experts).
  void epSlots(CUstream stream, CUdeviceptr expertIds, int64_t tokens, int topK,
               CUdeviceptr replicas, CUdeviceptr replicaCounts, int experts,
               int maxReplicas, CUdeviceptr slots);
  /// Reorders `rows` exchanged rows of `rowBytes` bytes between peer-major
  /// order (the chunks counts[p][s] in order p, s) and slot-major order (the
  /// chunks in order s, p). Toward slot-major (`toSlotMajor`), the scales
  /// follow when given (f32 of `cols` columns: grouped by the peer-major
  /// chunks in, by slot out) and `offsets` (i32 [slots + 1]) gets the slots'
  /// row offsets; it runs even without rows, so that the offsets are set.
  ///
  /// A gathered exchange (`gathered.peerRows` > 0; artifact.md "Gathered
  /// exchanges") received every peer's whole send buffer instead: peer p's
  /// `peerRows` rows from row p · peerRows, its chunk for this rank's slot s
  /// at its send offsets; `counts` is then those offsets, i32 [ranks]
  /// [ranks · slots + 1], `rows` the buffer's capacity (ranks · peerRows),
  /// and the way back writes each row where the peer's buffer had it.
  void epGroup(CUstream stream, CUdeviceptr in, CUdeviceptr inScales,
               CUdeviceptr counts, int ranks, int slots, int64_t rows,
               int64_t rowBytes, int64_t cols, bool toSlotMajor,
               CUdeviceptr out, CUdeviceptr outScales, CUdeviceptr offsets,
               const EpGathered &gathered = {});
  /// out = silu(gate) * up, bf16 → bf16.
  void swiglu(CUstream stream, const DeviceMatrix &gate, const DeviceMatrix &up,
              const DeviceMatrix &out);
  /// out = quantize(silu(gate) * up), plain or grouped scales.
  void swigluQuantize(CUstream stream, const DeviceMatrix &gate,
                      const DeviceMatrix &up, const QuantizedMatrix &out);
  /// out[t] = Σ_j weights[t, j] · y[rows[t, j]] (y bf16 [R, H] → f32).
  /// After a gathered exchange (`gathered.peerRows` > 0), y holds one block
  /// of peerRows rows per rank and row i came back in block owner(i), the
  /// rank whose global slots hold it in `gathered.sendOffsets`.
  void moeCombine(CUstream stream, const DeviceMatrix &y, CUdeviceptr rows,
                  CUdeviceptr weights, int topK, const DeviceMatrix &out,
                  const EpGathered &gathered = {});
  /// `count` elements of `type` (f32, bf16 or e4m3) uniform in
  /// [-amplitude, amplitude], a reproducible hash of (seed, index):
  /// synthetic weights for benchmarks, made on the GPU.
  void fillRandom(CUstream stream, CUdeviceptr data, int64_t count,
                  ElementType type, uint64_t seed, float amplitude);
  /// out[s] = x[rows[s]] (f32).
  void selectRows(CUstream stream, const DeviceMatrix &x, CUdeviceptr rows,
                  int64_t count, const DeviceMatrix &out);
  /// kiln::Sampler::sample over each row of `logits` (f32 [rows.size(),
  /// vocab]) with that row's parameters: tokens (i32 [rows.size()], device)
  /// gets the chosen ids, -1 where the CPU sampler throws (a NaN or +inf
  /// logit below the row's limit, or none finite). Greedy rows equal the
  /// CPU's argmax; sampled rows choose from the CPU's kept set by the CPU's
  /// walk with the row's u, equal to the CPU's choice except when u lies
  /// within double rounding of a cumulative boundary (kernels/sampling.cuh).
  /// The rows are copied on the stream into `rowsBuffer` (device, at least
  /// rows.size() * sizeof(SamplingRow) bytes, 8-byte aligned) first.
  void sample(CUstream stream, const DeviceMatrix &logits,
              const std::vector<SamplingRow> &rows, CUdeviceptr rowsBuffer,
              size_t rowsBufferBytes, CUdeviceptr tokens);

private:
  struct Impl;
  Impl *impl = nullptr;
};

} // namespace kiln::cuda

#endif // KILN_CUDA_MODEL_KERNELS_H
