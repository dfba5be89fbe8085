//===- model_kernels_params.h - parameter blocks of the model kernels -----===//
//
// Each kernel of model_kernels.cu takes one of these structs by value: the
// host (model_kernels.cpp) and nvcc compile this one definition, so the two
// sides cannot disagree on the order or width of a parameter. Only fixed-width
// scalars and 64-bit device addresses appear, laid out without padding holes
// that could differ between the compilers.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_KERNELS_MODEL_KERNELS_PARAMS_H
#define KILN_CUDA_KERNELS_MODEL_KERNELS_PARAMS_H

namespace kiln::cuda::kernels {

/// A device address (CUdeviceptr on the host).
using Address = unsigned long long;

/// 1×128 tiles of a row one warp of kiln_quantize and kiln_swiglu_quantize
/// quantizes: all of their loads are issued before the first amax, so that a
/// warp has 1-2 KB in flight (a warp per tile kept too few bytes in flight
/// to stream HBM: ~70 µs for [8192, 2048] BF16, 4x the bandwidth time), and
/// the row's scale slot (a binary search when grouped) is found once.
constexpr int kQuantizeRunTiles = 4;

/// Element type codes of the parameter blocks.
enum : int { kF32 = 0, kBF16 = 1, kF8E4M3 = 2 };

/// A row-major input or output: element (r, c) at data + r * stride + c.
struct MatrixRef {
  Address data;
  long long stride;
  int type;
  int unused;
};

/// A 1×128-quantized output: values [rows, cols] dense, scales transposed
/// [cols/128][rows] or, with groupOffsets (i32 [groups + 1]), grouped.
struct QuantizedRef {
  Address values;
  Address scales;
  Address groupOffsets;
  long long rows;
  long long cols;
  int groups;
  int unused;
};

struct EmbedParams {
  Address tokens; // i32 [rows]
  Address table;  // bf16 [vocab, cols]
  MatrixRef out;  // f32
  long long rows;
  long long cols;
  long long vocab;
};

struct RmsNormParams {
  MatrixRef x;
  Address weight; // bf16 [cols]
  MatrixRef out;  // plain output (rmsNorm)
  QuantizedRef q; // quantized output (rmsNormQuantize)
  long long rows;
  long long cols;
  float eps;
  int unused;
};

struct QuantizeParams {
  MatrixRef x;
  QuantizedRef q;
};

struct SwigluParams {
  MatrixRef gate; // bf16
  MatrixRef up;   // bf16
  MatrixRef out;  // bf16 (swiglu)
  QuantizedRef q; // (swigluQuantize)
  long long rows;
  long long cols;
};

/// The tiled FP32 product's blocks (kernels/dense.cuh, kiln_matmul_f32_tiled):
/// 64 tokens x 64 columns, four warps; shared with the host's launch.
constexpr int kMatmulTiledTokens = 64;
constexpr int kMatmulTiledColumns = 64;
constexpr int kMatmulTiledThreads = 128;

struct MatmulParams {
  MatrixRef x;    // f32 [rows, k]
  Address weight; // bf16 [n, k]
  MatrixRef out;  // f32 [rows, n]
  long long rows;
  long long n;
  long long k;
};

struct FillRandomParams {
  unsigned long long data;
  long long count;
  int type; // ElementType: 0 f32, 1 bf16, 2 e4m3
  unsigned long long seed;
  float amplitude;
};

struct AddParams {
  MatrixRef a;   // f32
  MatrixRef b;   // f32 or bf16
  MatrixRef out; // f32
  long long rows;
  long long cols;
};

/// The tensor-core MLA path's fixed tiling (mla_attention_mma.cuh), shared
/// with the host for launch sizes: a flash block holds 64 query rows (heads
/// of one token) and 32-position cache tiles of kvLoraRank ≤ 512 latent plus
/// ropeDim ≤ 64 columns, padded; at most kMlaMaxPartials (token, head group,
/// split) partial results exist in a step (two waves of 132 SMs).
constexpr int kFlashRows = 64;
constexpr int kFlashTile = 32;
constexpr int kFlashLatent = 512;
constexpr int kFlashRope = 64;
constexpr int kFlashDims = kFlashLatent + kFlashRope;
/// Shared-memory row strides in elements: +8 keeps ldmatrix conflict-free.
constexpr int kFlashStride = kFlashDims + 8;
constexpr int kFlashPStride = kFlashTile + 8;
constexpr int kFlashThreads = 256;
/// Q, two cache tiles, P (all bf16), the halves' row maxima and sums (f32).
constexpr int kFlashSharedBytes =
    (kFlashRows + 2 * kFlashTile) * kFlashStride * 2 +
    kFlashRows * kFlashPStride * 2 + 4 * kFlashRows * 4;
constexpr int kMlaMaxPartials = 264;
constexpr int kCombineThreads = 256;
constexpr int kAbsorbM = 64;
constexpr int kAbsorbN = 64;
constexpr int kAbsorbK = 64;
constexpr int kAbsorbThreads = 128;

/// The decompressed prefill path (mla_prefill_mma.cuh) for a step of one
/// sequence: kv_b_proj expands the cached latents of positions [0, context)
/// once into per-head K_nope and V (a 128×128×64-tiled BF16 GEMM, three
/// cp.async stages), then a causal flash attention runs one block per (256
/// query tokens, head) over 64-position tiles of [K_nope ‖ k_pe] (nope ≤
/// 128, rope ≤ 64, padded to 192 columns) and V (≤ 128 columns).
constexpr int kDecompressM = 128;
constexpr int kDecompressN = 128;
constexpr int kDecompressK = 64;
constexpr int kDecompressStages = 3;
constexpr int kDecompressStride = kDecompressK + 8;
constexpr int kDecompressThreads = 256;
constexpr int kDecompressSharedBytes =
    kDecompressStages * (kDecompressM + kDecompressN) * kDecompressStride * 2;
/// Eight warps of 32 query rows (two 16-row mma tiles, so that each K and
/// V fragment read from shared memory serves both): 256 tokens per block.
constexpr int kPrefillWarpRows = 32;
constexpr int kPrefillWarpTiles = kPrefillWarpRows / 16;
constexpr int kPrefillWarps = 8;
constexpr int kPrefillRows = kPrefillWarps * kPrefillWarpRows;
constexpr int kPrefillTile = 64;
constexpr int kPrefillNope = 128;
constexpr int kPrefillRope = 64;
constexpr int kPrefillQk = kPrefillNope + kPrefillRope;
constexpr int kPrefillV = 128;
constexpr int kPrefillQkStride = kPrefillQk + 8;
constexpr int kPrefillVStride = kPrefillV + 8;
constexpr int kPrefillThreads = kPrefillWarps * 32;
/// Q, then two stages of K and V tiles (bf16).
constexpr int kPrefillSharedBytes =
    (kPrefillRows * kPrefillQkStride +
     2 * kPrefillTile * (kPrefillQkStride + kPrefillVStride)) *
    2;

struct MlaParams {
  MatrixRef q;      // bf16 [T, heads * (nope + rope)]
  MatrixRef latent; // bf16 or f32 [T, kvLoraRank]
  MatrixRef kPe;    // bf16 [T, ropeDim]
  MatrixRef out;    // bf16 [T, heads * v]
  Address kvB;      // bf16 [heads * (nope + v), kvLoraRank]
  Address invFreq;  // f32 [ropeDim / 2]
  Address positions;
  Address sequenceSlots;
  Address pageTable;
  Address cache;
  Address cacheScales;
  /// The tensor-core path's workspace (mla_attention_mma.cuh): q_latent,
  /// then o_latent over it, bf16 [tokens][heads][kvLoraRank]; and the KV
  /// splits' partials, f32: log2-sum-exp [partials][64], then O/l
  /// [partials][64][kvLoraRank] from partialLseFloats on.
  Address workspaceLatent;
  Address workspacePartial;
  /// The decompressed prefill path's workspace (mla_prefill_mma.cuh): K_nope
  /// and V of every position, bf16 [context][heads][nope + v], and the
  /// step's context (i32: its largest valid position + 1, 0 for none).
  Address workspaceKv;
  Address contextBound;
  long long partialLseFloats;
  long long tokens;
  int heads;
  int nopeDim;
  int ropeDim;
  int vDim;
  int kvLoraRank;
  int maxPagesPerSequence;
  int pageTokens;
  int maxContext;
  float softmaxScale;
  float attentionFactor;
  /// KV splits per (token, 64 heads) and the positions each covers.
  int splits;
  int splitLength;
};

struct RouteParams {
  MatrixRef logits; // f32 [T, E]
  Address bias;     // f32 [E] or 0
  Address expertIds;
  Address weights;
  long long tokens;
  int experts;
  int topK;
  int nGroup;
  int topkGroup;
  float routedScalingFactor;
  int normTopkProb;
};

struct DispatchParams {
  Address inValues; // f8 [T, cols]
  Address inScales; // f32 [cols/128][T]
  Address expertIds;
  Address outValues; // f8 [T·k, cols]
  Address outScales; // grouped by offsets
  Address offsets;   // i32 [experts + 1]
  Address rows;      // i32 [T, k]
  long long tokens;
  long long cols;
  int topK;
  int experts;
};

/// Expert parallelism (artifact.md "Expert parallelism"): each routed
/// entry's expert → the global slot serving it, replicas taking turns by
/// token (ExpertPlacement::slotFor).
struct EpSlotsParams {
  Address expertIds; // i32 [T·k]
  Address replicas;  // i32 [experts][maxReplicas] global slots
  Address counts;    // i32 [experts] replicas of each expert
  Address slots;     // i32 [T·k] out; -1 for an id outside [0, experts)
  long long entries;
  int topK;
  int experts;
  int maxReplicas;
  int unused;
};

/// Rows of one exchange between peer-major order (chunk (p, s): peer p's
/// rows for local slot s, in that order) and slot-major order (slot s's
/// rows from peers 0, 1, ...). counts is i32 [ranks][slots].
struct EpGroupParams {
  Address inValues;
  Address inScales; // f32, grouped by the peer-major chunks (may be 0)
  /// i32 [ranks][slots] (packed exchange), or with `peerRows` > 0 the
  /// gathered send offsets i32 [ranks][ranks · slots + 1] (gathered
  /// exchange: peer p's block of `peerRows` rows starts at row p · peerRows).
  Address counts;
  Address outValues;
  Address outScales; // f32, grouped by slot (may be 0)
  Address offsets;   // i32 [slots + 1] out (may be 0)
  long long rows;    // peer-major rows (packed) or row capacity (gathered)
  long long rowBytes;
  long long cols;     // scale tiles = ceil(cols / 128)
  long long peerRows; // 0: packed exchange
  int ranks;
  int slots;
  int toSlotMajor; // 1: peer-major → slot-major; 0: back
  int rank;        // this rank (gathered exchange)
};

struct CombineParams {
  MatrixRef y; // bf16 [R, cols], or [ranks][peerRows] rows (gathered)
  Address rows;
  Address weights;
  MatrixRef out; // f32 [T, cols]
  /// Gathered exchange (0 otherwise): this rank's send offsets i32
  /// [ranks · slots + 1]; routed row i came back in block owner(i).
  Address peerOffsets;
  long long tokens;
  long long cols;
  long long routedRows;
  long long peerRows;
  int topK;
  int ranks;
  int slots;
  int unused;
};

struct SelectRowsParams {
  MatrixRef x; // f32
  Address rows;
  MatrixRef out; // f32
  long long count;
  long long cols;
  long long sourceRows;
};

/// One row's sampling parameters (kiln::cuda::SamplingRow on the host).
struct SampleRowParams {
  double u;          // uniform in [0, 1), the row's draw
  float temperature; // 0: greedy
  float topP;        // (0, 1]
  long long topK;    // 0: all
  long long limit;   // ids >= limit are never sampled
};

/// sampling.cuh: one block of kSampleThreads per row.
constexpr int kSampleThreads = 512;

struct SampleParams {
  MatrixRef logits; // f32 [count, vocab]
  Address rows;     // SampleRowParams [count]
  Address tokens;   // i32 [count], out
  long long count;
  long long vocab;
};

} // namespace kiln::cuda::kernels

#endif // KILN_CUDA_KERNELS_MODEL_KERNELS_PARAMS_H
