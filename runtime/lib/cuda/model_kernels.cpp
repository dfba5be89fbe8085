//===- model_kernels.cpp - the CUDA backend's non-GEMM kernels ------------===//
//
// The host side of kernels/model_kernels.cu: loads the embedded cubin,
// checks every call's shapes, types and pointers (model_kernels_checks.h)
// before any driver call, and launches with one parameter block per kernel
// (kernels/model_kernels_params.h).
//
//===----------------------------------------------------------------------===//

#include "kiln/cuda/model_kernels.h"

#include "kernels/model_kernels_params.h"
#include "model_kernels_checks.h"
#include "model_kernels_cubin.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <initializer_list>
#include <vector>

namespace kiln::cuda {

namespace k = kernels;

//===----------------------------------------------------------------------===//
// Element types
//===----------------------------------------------------------------------===//

const char *elementTypeName(ElementType type) {
  switch (type) {
  case ElementType::F32:
    return "f32";
  case ElementType::BF16:
    return "bf16";
  case ElementType::F8E4M3:
    return "f8e4m3";
  case ElementType::I32:
    return "i32";
  }
  return "unknown";
}

ElementType parseElementType(const std::string &name,
                             const std::string &origin) {
  for (ElementType type : {ElementType::F32, ElementType::BF16,
                           ElementType::F8E4M3, ElementType::I32})
    if (name == elementTypeName(type))
      return type;
  throw Error(origin + ": unknown element type \"" + name +
              "\"; expected f32, bf16, f8e4m3 or i32");
}

int elementBytes(ElementType type) {
  switch (type) {
  case ElementType::F32:
  case ElementType::I32:
    return 4;
  case ElementType::BF16:
    return 2;
  case ElementType::F8E4M3:
    return 1;
  }
  return 0;
}

namespace {

//===----------------------------------------------------------------------===//
// Checks
//===----------------------------------------------------------------------===//

/// Launch limits the kernels rely on: rows go to grid.x, token tiles and
/// tokens of attention to grid.y.
constexpr int64_t kMaxGridX = INT_MAX;
constexpr int64_t kMaxGridY = 65535;
constexpr int kScaleBlock = 128;
/// 1×128 tiles over `cols`; the last may be partial (see kernels/common.cuh).
constexpr int64_t scaleTiles(int64_t cols) {
  return (cols + kScaleBlock - 1) / kScaleBlock;
}
/// Warps of kiln_quantize / kiln_swiglu_quantize over rows x cols: one per
/// run of kQuantizeRunTiles tiles of a row.
constexpr int64_t quantizeWarps(int64_t rows, int64_t cols) {
  return rows *
         ((scaleTiles(cols) + k::kQuantizeRunTiles - 1) / k::kQuantizeRunTiles);
}
constexpr int kMaxLatentRank = 1024; // kernels/mla_attention.cuh
constexpr int kMaxRopeDim = 128;
constexpr int kMaxRouteExperts = 1024; // kernels/moe.cuh: one per thread
constexpr int kMaxTopK = 64;
constexpr size_t kDefaultSharedBytes = 48 * 1024;

/// Collects the kernel's name for messages and throws.
class Checker {
public:
  explicit Checker(const char *kernel) : kernel(kernel) {}

  [[noreturn]] void fail(const std::string &problem) const {
    throw Error(std::string("model kernel ") + kernel + ": " + problem);
  }
  void require(bool condition, const std::string &problem) const {
    if (!condition)
      fail(problem);
  }
  void pointer(CUdeviceptr address, const char *name, int alignment) const {
    require(address != 0, std::string(name) + " is a null pointer");
    require(address % alignment == 0, std::string(name) + " must be " +
                                          std::to_string(alignment) +
                                          "-byte aligned");
  }
  /// `m` is a `types` matrix of `rows` x `cols` (-1: any) with a valid
  /// stride and aligned rows.
  void matrix(const DeviceMatrix &m, const char *name,
              std::initializer_list<ElementType> types, int64_t rows = -1,
              int64_t cols = -1) const {
    std::string what = std::string(name) + " (" + describe(m) + ")";
    require(std::find(types.begin(), types.end(), m.type) != types.end(),
            what + " must be " + typeList(types));
    require(m.rows >= 0 && m.cols >= 1, what + " has no columns");
    if (rows >= 0)
      require(m.rows == rows,
              what + " must have " + std::to_string(rows) + " rows");
    if (cols >= 0)
      require(m.cols == cols,
              what + " must have " + std::to_string(cols) + " columns");
    require(m.stride >= m.cols, what + ": the row stride is below cols");
    require(m.data != 0 || m.rows == 0, what + " is a null pointer");
    require(m.data % elementBytes(m.type) == 0,
            what + " is not aligned to its element size");
  }
  /// A plain or grouped quantized matrix of `rows` x `cols`.
  void quantized(const QuantizedMatrix &q, const char *name, int64_t rows,
                 int64_t cols) const {
    std::string what = std::string(name) + " [" + std::to_string(q.rows) +
                       " x " + std::to_string(q.cols) + "]";
    require(q.rows == rows && q.cols == cols, what + " must be " +
                                                  std::to_string(rows) + " x " +
                                                  std::to_string(cols));
    // 16-byte rows: the GEMM's TMA row stride and the dispatch's copies.
    require(q.cols % 16 == 0, what + ": cols must be a multiple of 16");
    if (q.rows == 0)
      return;
    pointer(q.values, "values of the quantized output", 4);
    pointer(q.scales, "scales of the quantized output", 4);
    if (q.groupOffsets) {
      require(q.groups >= 1, what + ": grouped scales need groups >= 1, got " +
                                 std::to_string(q.groups));
      pointer(q.groupOffsets, "group offsets", 4);
    }
  }
  void rowsFitGrid(int64_t rows) const {
    require(rows <= kMaxGridX, std::to_string(rows) + " rows exceed the grid");
  }

private:
  static std::string describe(const DeviceMatrix &m) {
    return std::string(elementTypeName(m.type)) + " [" +
           std::to_string(m.rows) + " x " + std::to_string(m.cols) +
           ", stride " + std::to_string(m.stride) + "]";
  }
  static std::string typeList(std::initializer_list<ElementType> types) {
    std::string text;
    for (ElementType type : types)
      text += std::string(text.empty() ? "" : " or ") + elementTypeName(type);
    return text;
  }
  const char *kernel;
};

} // namespace

namespace detail {

void checkEmbed(CUdeviceptr tokens, int64_t T, CUdeviceptr table, int64_t vocab,
                const DeviceMatrix &out) {
  Checker check("embed");
  check.require(T >= 0, "negative token count " + std::to_string(T));
  check.require(vocab >= 1, "the vocabulary is empty");
  check.matrix(out, "out", {ElementType::F32}, T);
  check.rowsFitGrid(T);
  if (T == 0)
    return;
  check.pointer(tokens, "tokens", 4);
  check.pointer(table, "table", 2);
}

void checkRmsNorm(const DeviceMatrix &x, CUdeviceptr weight, float eps,
                  const DeviceMatrix &out) {
  Checker check("rms_norm");
  check.matrix(x, "x", {ElementType::F32, ElementType::BF16});
  check.matrix(out, "out", {ElementType::F32, ElementType::BF16}, x.rows,
               x.cols);
  check.require(eps >= 0, "eps must not be negative");
  check.rowsFitGrid(x.rows);
  if (x.rows > 0)
    check.pointer(weight, "weight", 2);
}

void checkRmsNormQuantize(const DeviceMatrix &x, CUdeviceptr weight, float eps,
                          const QuantizedMatrix &out) {
  Checker check("rms_norm_quantize");
  check.matrix(x, "x", {ElementType::F32, ElementType::BF16});
  check.quantized(out, "out", x.rows, x.cols);
  check.require(eps >= 0, "eps must not be negative");
  check.rowsFitGrid(x.rows);
  if (x.rows > 0)
    check.pointer(weight, "weight", 2);
}

void checkQuantize(const DeviceMatrix &x, const QuantizedMatrix &out) {
  Checker check("quantize");
  check.matrix(x, "x", {ElementType::F32, ElementType::BF16});
  check.quantized(out, "out", x.rows, x.cols);
  check.require(quantizeWarps(x.rows, x.cols) <= kMaxGridX * 8,
                "too many tiles for one grid");
}

void checkMatmulF32(const DeviceMatrix &x, CUdeviceptr weight, int64_t n,
                    const DeviceMatrix &out) {
  Checker check("matmul_f32");
  check.matrix(x, "x", {ElementType::F32});
  check.require(n >= 1, "N must be at least 1, got " + std::to_string(n));
  check.matrix(out, "out", {ElementType::F32}, x.rows, n);
  check.require((x.rows + 7) / 8 <= kMaxGridY,
                std::to_string(x.rows) + " rows exceed the grid (at most " +
                    std::to_string(kMaxGridY * 8) + ")");
  if (x.rows > 0)
    check.pointer(weight, "weight", 2);
}

bool matmulVectorizable(const DeviceMatrix &x, CUdeviceptr weight) {
  return x.cols % 8 == 0 && weight % 16 == 0 && x.data % 16 == 0 &&
         x.stride % 4 == 0;
}

void checkAdd(const DeviceMatrix &a, const DeviceMatrix &b,
              const DeviceMatrix &out) {
  Checker check("add");
  check.matrix(a, "a", {ElementType::F32});
  check.matrix(b, "b", {ElementType::F32, ElementType::BF16}, a.rows, a.cols);
  check.matrix(out, "out", {ElementType::F32}, a.rows, a.cols);
  check.rowsFitGrid(a.rows);
}

size_t mlaAttentionSharedBytes(const MlaAttentionArgs &args) {
  // q_nope, q_pe, q_latent, 8 warps' partial o_latent, their max and sum.
  return sizeof(float) * (size_t(args.nopeDim) + args.ropeDim +
                          9 * size_t(args.kvLoraRank) + 16);
}

/// A single token over a short context is faster on the per-(head, token)
/// kernel: its 128 blocks stream kv_b and the cache once, where the
/// tensor-core path pays three launches and ~20 µs of fixed cost per block
/// (H100, kiln-bench-mla: 33 vs 64 µs at context 128, even near 460, 86 vs
/// 422 µs at 4096; runtime/lib/cuda/kernels/README.md).
constexpr int kScalarPathMaxContext = 448;

bool mlaPrefillDecompressed(const MlaAttentionArgs &a) {
  // Q's rows go by 16-byte copies, the output by pairs of values.
  return a.decompressedPrefill && a.sequences == 1 && a.q.stride % 8 == 0 &&
         a.q.data % 16 == 0 && a.out.stride % 2 == 0 && a.out.data % 4 == 0 &&
         a.q.rows >= kMlaPrefillMinTokens && a.workspace != 0 &&
         a.cacheType == ElementType::BF16 && a.kvLoraRank % 8 == 0 &&
         a.nopeDim % 8 == 0 && a.nopeDim <= k::kPrefillNope &&
         a.ropeDim % 8 == 0 && a.ropeDim <= k::kPrefillRope &&
         a.vDim % 8 == 0 && a.vDim <= k::kPrefillV &&
         a.workspaceBytes >=
             mlaPrefillWorkspaceBytes(a.maxContext, a.heads, a.nopeDim, a.vDim);
}

bool mlaAttentionOnTensorCores(const MlaAttentionArgs &a) {
  if (a.q.rows == 1 && a.maxContext <= kScalarPathMaxContext)
    return false;
  return a.workspace != 0 && a.cacheType == ElementType::BF16 &&
         a.kvLoraRank % 8 == 0 && a.kvLoraRank <= k::kFlashLatent &&
         a.ropeDim % 8 == 0 && a.ropeDim <= k::kFlashRope &&
         a.nopeDim % 2 == 0 && a.vDim % 2 == 0;
}

void checkMlaAttention(const MlaAttentionArgs &a) {
  Checker check("mla_attention");
  check.require(a.heads >= 1, "heads must be at least 1");
  check.require(a.nopeDim >= 0 && a.vDim >= 1,
                "nope must be >= 0 and v >= 1, got nope " +
                    std::to_string(a.nopeDim) + ", v " +
                    std::to_string(a.vDim));
  check.require(a.ropeDim >= 2 && a.ropeDim % 2 == 0 &&
                    a.ropeDim <= kMaxRopeDim,
                "rope must be even, 2 to " + std::to_string(kMaxRopeDim) +
                    ", got " + std::to_string(a.ropeDim));
  check.require(a.kvLoraRank >= 2 && a.kvLoraRank % 2 == 0 &&
                    a.kvLoraRank <= kMaxLatentRank,
                "kv_lora must be even, 2 to " + std::to_string(kMaxLatentRank) +
                    ", got " + std::to_string(a.kvLoraRank));
  const int64_t T = a.q.rows;
  check.matrix(a.q, "q", {ElementType::BF16}, -1,
               int64_t(a.heads) * (a.nopeDim + a.ropeDim));
  check.matrix(a.latent, "latent", {ElementType::BF16, ElementType::F32}, T,
               a.kvLoraRank);
  check.matrix(a.kPe, "k_pe", {ElementType::BF16}, T, a.ropeDim);
  check.matrix(a.out, "out", {ElementType::BF16}, T, int64_t(a.heads) * a.vDim);
  check.require(T <= kMaxGridY, std::to_string(T) +
                                    " tokens exceed the grid (at most " +
                                    std::to_string(kMaxGridY) + ")");
  check.require(a.cacheType == ElementType::BF16 ||
                    a.cacheType == ElementType::F8E4M3,
                std::string("the cache must be bf16 or f8e4m3, got ") +
                    elementTypeName(a.cacheType));
  check.require(a.pageTokens >= 1 && a.maxPagesPerSequence >= 1,
                "pageTokens and maxPagesPerSequence must be at least 1");
  check.require(
      a.maxContext >= 1 && int64_t(a.maxContext) <=
                               int64_t(a.maxPagesPerSequence) * a.pageTokens,
      "maxContext " + std::to_string(a.maxContext) +
          " must be 1 to maxPagesPerSequence * pageTokens = " +
          std::to_string(int64_t(a.maxPagesPerSequence) * a.pageTokens));
  check.require(mlaAttentionSharedBytes(a) <= kDefaultSharedBytes,
                "nope " + std::to_string(a.nopeDim) + " and kv_lora " +
                    std::to_string(a.kvLoraRank) + " need " +
                    std::to_string(mlaAttentionSharedBytes(a)) +
                    " bytes of shared memory, above 48 KiB");
  if (T == 0)
    return;
  check.require(a.q.stride % 2 == 0 && a.q.data % 4 == 0,
                "q rows must be 4-byte aligned");
  check.pointer(a.invFreq, "invFreq", 4);
  check.pointer(a.kvB, "kvB", 4);
  check.pointer(a.positions, "positions", 4);
  check.pointer(a.sequenceSlots, "sequenceSlots", 4);
  check.pointer(a.pageTable, "pageTable", 4);
  check.pointer(a.cache, "cache", 4);
  if (a.cacheType == ElementType::F8E4M3)
    check.pointer(a.cacheScales, "cacheScales (f8e4m3 cache)", 4);
  if (mlaPrefillDecompressed(a)) {
    check.pointer(a.workspace, "workspace (decompressed prefill)", 16);
    check.pointer(a.cache, "cache (decompressed prefill)", 16);
  } else if (mlaAttentionOnTensorCores(a)) {
    check.pointer(a.workspace, "workspace", 16);
    check.pointer(a.cache, "cache (tensor-core path)", 16);
    size_t need = mlaAttentionWorkspaceBytes(T, a.heads, a.kvLoraRank);
    check.require(a.workspaceBytes >= need,
                  "the workspace has " + std::to_string(a.workspaceBytes) +
                      " bytes, " + std::to_string(T) + " tokens need " +
                      std::to_string(need));
  }
}

void checkMoeRoute(const MoeRouteArgs &a) {
  Checker check("moe_route");
  check.matrix(a.logits, "logits", {ElementType::F32});
  const int64_t E = a.logits.cols;
  check.require(E <= kMaxRouteExperts, std::to_string(E) +
                                           " experts; at most " +
                                           std::to_string(kMaxRouteExperts));
  check.require(a.nGroup >= 1 && E % a.nGroup == 0,
                "n_group " + std::to_string(a.nGroup) +
                    " must divide the experts (" + std::to_string(E) + ")");
  check.require(a.topkGroup >= 1 && a.topkGroup <= a.nGroup,
                "topk_group " + std::to_string(a.topkGroup) +
                    " must be 1 to n_group (" + std::to_string(a.nGroup) + ")");
  const int64_t candidates = int64_t(a.topkGroup) * (E / a.nGroup);
  check.require(a.topK >= 1 &&
                    a.topK <= std::min<int64_t>(kMaxTopK, candidates),
                "top_k " + std::to_string(a.topK) + " must be 1 to " +
                    std::to_string(std::min<int64_t>(kMaxTopK, candidates)) +
                    " (the experts of topk_group groups, at most " +
                    std::to_string(kMaxTopK) + ")");
  check.rowsFitGrid(a.logits.rows);
  if (a.logits.rows == 0)
    return;
  check.pointer(a.expertIds, "expertIds", 4);
  check.pointer(a.weights, "weights", 4);
  if (a.bias)
    check.pointer(a.bias, "bias", 4);
}

void checkMoeDispatch(const QuantizedMatrix &in, CUdeviceptr expertIds,
                      int topK, int experts, const QuantizedMatrix &out,
                      CUdeviceptr offsets, CUdeviceptr rows) {
  Checker check("moe_dispatch");
  check.require(topK >= 1, "top_k must be at least 1");
  check.require(experts >= 1 && experts <= 1024,
                "experts must be 1 to 1024, got " + std::to_string(experts));
  check.require(in.groupOffsets == 0, "the input's scales must be plain");
  check.quantized(in, "in", in.rows, in.cols);
  check.quantized(out, "out", in.rows * topK, in.cols);
  check.require(out.groupOffsets == 0 || out.groupOffsets == offsets,
                "the output's scales are grouped by other offsets than the "
                "ones dispatch writes");
  check.require(out.groupOffsets == 0 || out.groups == experts,
                "the output's groups (" + std::to_string(out.groups) +
                    ") must be the experts (" + std::to_string(experts) + ")");
  check.rowsFitGrid(in.rows * topK);
  check.pointer(offsets, "offsets", 4);
  if (in.rows == 0)
    return;
  check.pointer(in.values, "input values", 16);
  check.pointer(out.values, "output values", 16);
  check.pointer(expertIds, "expertIds", 4);
  check.pointer(rows, "rows", 4);
}

void checkSwiglu(const DeviceMatrix &gate, const DeviceMatrix &up,
                 const DeviceMatrix &out) {
  Checker check("swiglu");
  check.matrix(gate, "gate", {ElementType::BF16});
  check.matrix(up, "up", {ElementType::BF16}, gate.rows, gate.cols);
  check.matrix(out, "out", {ElementType::BF16}, gate.rows, gate.cols);
  check.rowsFitGrid(gate.rows);
}

void checkSwigluQuantize(const DeviceMatrix &gate, const DeviceMatrix &up,
                         const QuantizedMatrix &out) {
  Checker check("swiglu_quantize");
  check.matrix(gate, "gate", {ElementType::BF16});
  check.matrix(up, "up", {ElementType::BF16}, gate.rows, gate.cols);
  check.quantized(out, "out", gate.rows, gate.cols);
  check.require(quantizeWarps(gate.rows, gate.cols) <= kMaxGridX * 8,
                "too many tiles for one grid");
}

void checkMoeCombine(const DeviceMatrix &y, CUdeviceptr rows,
                     CUdeviceptr weights, int topK, const DeviceMatrix &out) {
  Checker check("moe_combine");
  check.require(topK >= 1, "top_k must be at least 1");
  check.matrix(y, "y", {ElementType::BF16});
  check.matrix(out, "out", {ElementType::F32}, -1, y.cols);
  check.rowsFitGrid(out.rows);
  if (out.rows == 0)
    return;
  check.pointer(rows, "rows", 4);
  check.pointer(weights, "weights", 4);
}

void checkSelectRows(const DeviceMatrix &x, CUdeviceptr rows, int64_t count,
                     const DeviceMatrix &out) {
  Checker check("select_rows");
  check.require(count >= 0, "negative row count");
  check.matrix(x, "x", {ElementType::F32});
  check.matrix(out, "out", {ElementType::F32}, count, x.cols);
  check.rowsFitGrid(count);
  if (count > 0)
    check.pointer(rows, "rows", 4);
}

void checkSample(const DeviceMatrix &logits,
                 const std::vector<SamplingRow> &rows, CUdeviceptr rowsBuffer,
                 size_t rowsBufferBytes, CUdeviceptr tokens) {
  Checker check("sample");
  const int64_t count = static_cast<int64_t>(rows.size());
  check.matrix(logits, "logits", {ElementType::F32}, count);
  // Token ids are i32.
  check.require(logits.cols <= INT_MAX, "the vocabulary of " +
                                            std::to_string(logits.cols) +
                                            " ids exceeds the i32 token ids");
  check.rowsFitGrid(count);
  for (int64_t r = 0; r < count; ++r) {
    const SamplingRow &row = rows[r];
    std::string where = "row " + std::to_string(r) + ": ";
    check.require(row.temperature >= 0, where +
                                            "temperature must be >= 0, got " +
                                            std::to_string(row.temperature));
    check.require(row.topK >= 0,
                  where + "topK must be >= 0, got " + std::to_string(row.topK));
    check.require(row.topP > 0 && row.topP <= 1,
                  where + "topP must be in (0, 1], got " +
                      std::to_string(row.topP));
    check.require(row.u >= 0 && row.u < 1,
                  where + "u must be in [0, 1), got " + std::to_string(row.u));
    check.require(row.vocabLimit >= 1 && row.vocabLimit <= logits.cols,
                  where + "the vocabulary limit " +
                      std::to_string(row.vocabLimit) + " is outside [1, " +
                      std::to_string(logits.cols) + "]");
  }
  if (count == 0)
    return;
  check.pointer(rowsBuffer, "the rows buffer", 8);
  check.require(rowsBufferBytes >= rows.size() * sizeof(SamplingRow),
                "the rows buffer of " + std::to_string(rowsBufferBytes) +
                    " bytes is below the " +
                    std::to_string(rows.size() * sizeof(SamplingRow)) +
                    " the rows take");
  check.pointer(tokens, "tokens", 4);
}

} // namespace detail

//===----------------------------------------------------------------------===//
// Loading and launching
//===----------------------------------------------------------------------===//

namespace {

/// Bytes of the workspace's q_latent/o_latent part, 256-byte aligned.
size_t latentWorkspaceBytes(int64_t tokens, int heads, int kvLoraRank) {
  return (size_t(tokens) * heads * kvLoraRank * 2 + 255) / 256 * 256;
}

/// The decompressed prefill path's K_nope and V, bf16 [context][heads][nope +
/// v], rounded up to 256 bytes (the context bound follows).
size_t kvWorkspaceBytes(int64_t context, int heads, int nopeDim, int vDim) {
  return (size_t(context) * heads * (nopeDim + vDim) * 2 + 255) / 256 * 256;
}

/// Flash blocks split a token's KV range when the step has at most
/// kMlaMaxPartials / 2 (token, head group) blocks (one wave of 132 SMs):
/// splits of at least kMinSplitLength positions, up to kMlaMaxPartials
/// blocks in all, so that a decode step of few sequences still fills the
/// GPU; each split costs a Q load and a partial O write, hence the minimum.
struct MlaSplit {
  int splits;
  int length;
};
constexpr int kMinSplitLength = 128;

MlaSplit mlaSplit(int64_t blocks, int maxContext) {
  auto roundUp = [](int64_t x, int64_t to) { return (x + to - 1) / to * to; };
  int64_t splits =
      std::min<int64_t>((maxContext + kMinSplitLength - 1) / kMinSplitLength,
                        k::kMlaMaxPartials / std::max<int64_t>(blocks, 1));
  if (splits <= 1)
    return {1, static_cast<int>(roundUp(maxContext, k::kFlashTile))};
  int64_t length = roundUp((maxContext + splits - 1) / splits, k::kFlashTile);
  return {static_cast<int>((maxContext + length - 1) / length),
          static_cast<int>(length)};
}

} // namespace

size_t mlaPrefillWorkspaceBytes(int64_t maxContext, int heads, int nopeDim,
                                int vDim) {
  return kvWorkspaceBytes(maxContext, heads, nopeDim, vDim) + 256;
}

size_t mlaAttentionWorkspaceBytes(int64_t maxTokens, int heads,
                                  int kvLoraRank) {
  return latentWorkspaceBytes(maxTokens, heads, kvLoraRank) +
         size_t(k::kMlaMaxPartials) * k::kFlashRows * (kvLoraRank + 1) * 4;
}

namespace {

enum Kernel {
  kEmbed,
  kRmsNorm,
  kRmsNormQuantize,
  kQuantize,
  kSwiglu,
  kSwigluQuantize,
  kAdd,
  kSelectRows,
  kMatmulT1,
  kMatmulT2,
  kMatmulT4,
  kMatmulT8,
  kMatmulScalarT1,
  kMatmulScalarT2,
  kMatmulScalarT4,
  kMatmulScalarT8,
  kMatmulSplitKT1,
  kMatmulSplitKT2,
  kMatmulSplitKT4,
  kMatmulSplitKT8,
  kMatmulTiled,
  kMlaAppendBF16,
  kMlaAppendF8,
  kMlaAttentionBF16,
  kMlaAttentionF8,
  kMlaAbsorbQ,
  kMlaAbsorbOut,
  kMlaFlash,
  kMlaCombine,
  kMlaPrefillBound,
  kMlaDecompress,
  kMlaPrefill,
  kMoeRoute,
  kMoeDispatchPlan,
  kMoeDispatchCopy,
  kMoeCombine,
  kEpSlots,
  kEpGroup,
  kFillRandom,
  kSample,
  kKernelCount
};

constexpr std::array<const char *, kKernelCount> kKernelNames = {
    "kiln_embed",
    "kiln_rms_norm",
    "kiln_rms_norm_quantize",
    "kiln_quantize",
    "kiln_swiglu",
    "kiln_swiglu_quantize",
    "kiln_add",
    "kiln_select_rows",
    "kiln_matmul_f32_t1",
    "kiln_matmul_f32_t2",
    "kiln_matmul_f32_t4",
    "kiln_matmul_f32_t8",
    "kiln_matmul_f32_scalar_t1",
    "kiln_matmul_f32_scalar_t2",
    "kiln_matmul_f32_scalar_t4",
    "kiln_matmul_f32_scalar_t8",
    "kiln_matmul_f32_split_k_t1",
    "kiln_matmul_f32_split_k_t2",
    "kiln_matmul_f32_split_k_t4",
    "kiln_matmul_f32_split_k_t8",
    "kiln_matmul_f32_tiled",
    "kiln_mla_append_bf16",
    "kiln_mla_append_f8",
    "kiln_mla_attention_bf16",
    "kiln_mla_attention_f8",
    "kiln_mla_absorb_q",
    "kiln_mla_absorb_out",
    "kiln_mla_flash",
    "kiln_mla_combine",
    "kiln_mla_prefill_bound",
    "kiln_mla_decompress",
    "kiln_mla_prefill",
    "kiln_moe_route",
    "kiln_moe_dispatch_plan",
    "kiln_moe_dispatch_copy",
    "kiln_moe_combine",
    "kiln_ep_slots",
    "kiln_ep_group",
    "kiln_fill_random",
    "kiln_sample",
};

constexpr unsigned kRowThreads = 256;   // kernels/dense.cuh
constexpr unsigned kNormThreads = 1024; // kernels/dense.cuh
/// Threads per row of the RMSNorms once the rows fill the GPU: a 1024-thread
/// block per row leaves two rows in flight per SM, each a chain of loads,
/// block reduction and stores (138 us for 4096 x 7168 f32 with quantization,
/// three times its bytes' time); 256 give eight.
constexpr unsigned kNormThreadsManyRows = 256;
constexpr int64_t kNormManyRows = 512;
unsigned normThreads(int64_t rows) {
  return rows >= kNormManyRows ? kNormThreadsManyRows : kNormThreads;
}
constexpr unsigned kMatmulThreads = 256; // 8 warps of 4 columns
constexpr unsigned kMatmulBlockColumns = 32;
constexpr unsigned kMatmulColumnsPerWarp = 4;
/// Below 4096 columns (128 blocks of 32) the split-K product runs instead.
constexpr int64_t kMatmulSplitKBelowColumns = 4096;
/// The tiled product (kernels/dense.cuh) reads x once per 64 columns where
/// the others read it once per 4 or 32; it runs where its 64 x 64 blocks
/// make about a wave and its token tiles are full (a prefill chunk's router
/// gate from 2048 tokens, the output head from 64 rows; fewer rows stream W
/// once on the kernels above without padding FMAs).
constexpr int64_t kMatmulTiledMinBlocks = 128;
constexpr unsigned kMlaThreads = 256;
constexpr unsigned kRouteThreads = 256;
constexpr unsigned kDispatchThreads = 1024;
constexpr unsigned kCopyThreads = 128;

k::MatrixRef ref(const DeviceMatrix &m) {
  k::MatrixRef r{};
  r.data = m.data;
  r.stride = m.stride;
  r.type = m.type == ElementType::BF16     ? k::kBF16
           : m.type == ElementType::F8E4M3 ? k::kF8E4M3
                                           : k::kF32;
  return r;
}

k::QuantizedRef ref(const QuantizedMatrix &q) {
  k::QuantizedRef r{};
  r.values = q.values;
  r.scales = q.scales;
  r.groupOffsets = q.groupOffsets;
  r.rows = q.rows;
  r.cols = q.cols;
  r.groups = q.groups;
  return r;
}

unsigned gridFor(int64_t items, int64_t perBlock) {
  return static_cast<unsigned>((items + perBlock - 1) / perBlock);
}

/// Column chunks of the element-wise row kernels (grid y).
unsigned columnChunks(int64_t cols) {
  return std::max(1u, gridFor(cols, kRowThreads));
}

} // namespace

struct ModelKernels::Impl {
  CUmodule module = nullptr;
  std::array<CUfunction, kKernelCount> functions{};

  template <typename Params>
  void launch(Kernel kernel, unsigned gridX, unsigned gridY, unsigned threads,
              size_t sharedBytes, CUstream stream, const Params &params) {
    if (gridX == 0 || gridY == 0)
      return;
    Params copy = params;
    void *arguments[] = {&copy};
    CUresult result = driver().cuLaunchKernel(
        functions[kernel], gridX, gridY, 1, threads, 1, 1,
        static_cast<unsigned>(sharedBytes), stream, arguments, nullptr);
    if (result != CUDA_SUCCESS)
      check(result, "cuLaunchKernel",
            std::string("model kernel ") + kKernelNames[kernel] + " (grid " +
                std::to_string(gridX) + " x " + std::to_string(gridY) + ", " +
                std::to_string(threads) + " threads, " +
                std::to_string(sharedBytes) + " bytes of shared memory)");
  }
};

ModelKernels::ModelKernels() : impl(new Impl) {
  try {
    std::string_view image = modelKernelsCubin();
    std::vector<char> errorLog(8192, '\0');
    CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER,
                              CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *optionValues[] = {
        errorLog.data(),
        reinterpret_cast<void *>(static_cast<uintptr_t>(errorLog.size() - 1))};
    CUresult loaded = driver().cuModuleLoadDataEx(&impl->module, image.data(),
                                                  2, options, optionValues);
    if (loaded != CUDA_SUCCESS) {
      impl->module = nullptr;
      std::string log(errorLog.data());
      check(loaded, "cuModuleLoadDataEx",
            "the model kernels (sm_90a cubin of " +
                std::to_string(image.size()) + " bytes" +
                (log.empty() ? "" : "; JIT log: " + log) + ")");
    }
    for (int kernel = 0; kernel < kKernelCount; ++kernel)
      KILN_CU(std::string("model kernel ") + kKernelNames[kernel],
              cuModuleGetFunction, &impl->functions[kernel], impl->module,
              kKernelNames[kernel]);
    KILN_CU("model kernel kiln_mla_flash", cuFuncSetAttribute,
            impl->functions[kMlaFlash],
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            k::kFlashSharedBytes);
    KILN_CU("model kernel kiln_mla_decompress", cuFuncSetAttribute,
            impl->functions[kMlaDecompress],
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            k::kDecompressSharedBytes);
    KILN_CU("model kernel kiln_mla_prefill", cuFuncSetAttribute,
            impl->functions[kMlaPrefill],
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            k::kPrefillSharedBytes);
  } catch (...) {
    if (impl->module)
      driver().cuModuleUnload(impl->module);
    delete impl;
    throw;
  }
}

ModelKernels::~ModelKernels() {
  // Unloading fails only on a lost context, which leaves nothing to free.
  if (impl->module)
    driver().cuModuleUnload(impl->module);
  delete impl;
}

void ModelKernels::embed(CUstream stream, CUdeviceptr tokens, int64_t T,
                         CUdeviceptr table, int64_t vocab,
                         const DeviceMatrix &out) {
  detail::checkEmbed(tokens, T, table, vocab, out);
  k::EmbedParams p{};
  p.tokens = tokens;
  p.table = table;
  p.out = ref(out);
  p.rows = T;
  p.cols = out.cols;
  p.vocab = vocab;
  impl->launch(kEmbed, gridFor(T, 1), columnChunks(out.cols), kRowThreads, 0,
               stream, p);
}

void ModelKernels::rmsNorm(CUstream stream, const DeviceMatrix &x,
                           CUdeviceptr weight, float eps,
                           const DeviceMatrix &out) {
  detail::checkRmsNorm(x, weight, eps, out);
  k::RmsNormParams p{};
  p.x = ref(x);
  p.weight = weight;
  p.out = ref(out);
  p.rows = x.rows;
  p.cols = x.cols;
  p.eps = eps;
  impl->launch(kRmsNorm, gridFor(x.rows, 1), 1, normThreads(x.rows), 0, stream,
               p);
}

void ModelKernels::rmsNormQuantize(CUstream stream, const DeviceMatrix &x,
                                   CUdeviceptr weight, float eps,
                                   const QuantizedMatrix &out) {
  detail::checkRmsNormQuantize(x, weight, eps, out);
  k::RmsNormParams p{};
  p.x = ref(x);
  p.weight = weight;
  p.q = ref(out);
  p.rows = x.rows;
  p.cols = x.cols;
  p.eps = eps;
  impl->launch(kRmsNormQuantize, gridFor(x.rows, 1), 1, normThreads(x.rows), 0,
               stream, p);
}

void ModelKernels::quantize(CUstream stream, const DeviceMatrix &x,
                            const QuantizedMatrix &out) {
  detail::checkQuantize(x, out);
  k::QuantizeParams p{};
  p.x = ref(x);
  p.q = ref(out);
  impl->launch(kQuantize,
               gridFor(quantizeWarps(x.rows, x.cols), kRowThreads / 32), 1,
               kRowThreads, 0, stream, p);
}

void ModelKernels::matmulF32(CUstream stream, const DeviceMatrix &x,
                             CUdeviceptr weight, int64_t n,
                             const DeviceMatrix &out) {
  detail::checkMatmulF32(x, weight, n, out);
  k::MatmulParams p{};
  p.x = ref(x);
  p.weight = weight;
  p.out = ref(out);
  p.rows = x.rows;
  p.n = n;
  p.k = x.cols;
  // The smallest token tile that holds all rows (up to 8): decode reads W
  // once without wasted FMAs on padding rows.
  int tokens = x.rows <= 1 ? 1 : x.rows <= 2 ? 2 : x.rows <= 4 ? 4 : 8;
  int index = tokens == 1 ? 0 : tokens == 2 ? 1 : tokens == 4 ? 2 : 3;
  const bool vector = detail::matmulVectorizable(x, weight);
  if (vector && x.rows >= k::kMatmulTiledTokens &&
      int64_t(gridFor(n, k::kMatmulTiledColumns)) *
              gridFor(x.rows, k::kMatmulTiledTokens) >=
          kMatmulTiledMinBlocks) {
    // A prefill chunk's router gate: 4096 x 256 x 7168 in 1.34 ms on the
    // split-K product (x re-read per 4 columns), see dense.cuh.
    impl->launch(kMatmulTiled, gridFor(n, k::kMatmulTiledColumns),
                 gridFor(x.rows, k::kMatmulTiledTokens), k::kMatmulTiledThreads,
                 0, stream, p);
    return;
  }
  if (vector && n < kMatmulSplitKBelowColumns) {
    // Too few columns to fill the GPU a warp per 4 columns (the router gate:
    // 8 blocks): a block per 4 columns with K split across its warps.
    impl->launch(static_cast<Kernel>(kMatmulSplitKT1 + index),
                 gridFor(n, kMatmulColumnsPerWarp), gridFor(x.rows, tokens),
                 kMatmulThreads, 0, stream, p);
    return;
  }
  Kernel kernel =
      static_cast<Kernel>((vector ? kMatmulT1 : kMatmulScalarT1) + index);
  impl->launch(kernel, gridFor(n, kMatmulBlockColumns), gridFor(x.rows, tokens),
               kMatmulThreads, 0, stream, p);
}

void ModelKernels::fillRandom(CUstream stream, CUdeviceptr data, int64_t count,
                              ElementType type, uint64_t seed,
                              float amplitude) {
  if (count <= 0)
    return;
  if (!data || (type != ElementType::F32 && type != ElementType::BF16 &&
                type != ElementType::F8E4M3))
    throw Error("model kernel fill_random: needs a buffer of f32, bf16 or "
                "f8e4m3");
  k::FillRandomParams p{};
  p.data = data;
  p.count = count;
  p.type = type == ElementType::F32 ? 0 : type == ElementType::BF16 ? 1 : 2;
  p.seed = seed;
  p.amplitude = amplitude;
  unsigned blocks = static_cast<unsigned>(
      std::min<int64_t>((count + kRowThreads - 1) / kRowThreads, 65535));
  impl->launch(kFillRandom, blocks, 1, kRowThreads, 0, stream, p);
}

void ModelKernels::add(CUstream stream, const DeviceMatrix &a,
                       const DeviceMatrix &b, const DeviceMatrix &out) {
  detail::checkAdd(a, b, out);
  k::AddParams p{};
  p.a = ref(a);
  p.b = ref(b);
  p.out = ref(out);
  p.rows = a.rows;
  p.cols = a.cols;
  impl->launch(kAdd, gridFor(a.rows, 1), columnChunks(a.cols), kRowThreads, 0,
               stream, p);
}

void ModelKernels::mlaAttention(CUstream stream, const MlaAttentionArgs &args) {
  detail::checkMlaAttention(args);
  k::MlaParams p{};
  p.q = ref(args.q);
  p.latent = ref(args.latent);
  p.kPe = ref(args.kPe);
  p.out = ref(args.out);
  p.kvB = args.kvB;
  p.invFreq = args.invFreq;
  p.positions = args.positions;
  p.sequenceSlots = args.sequenceSlots;
  p.pageTable = args.pageTable;
  p.cache = args.cache;
  p.cacheScales = args.cacheScales;
  p.tokens = args.q.rows;
  p.heads = args.heads;
  p.nopeDim = args.nopeDim;
  p.ropeDim = args.ropeDim;
  p.vDim = args.vDim;
  p.kvLoraRank = args.kvLoraRank;
  p.maxPagesPerSequence = args.maxPagesPerSequence;
  p.pageTokens = args.pageTokens;
  p.maxContext = args.maxContext;
  p.softmaxScale = args.softmaxScale;
  p.attentionFactor = args.attentionFactor;
  bool f8 = args.cacheType == ElementType::F8E4M3;
  unsigned tokens = static_cast<unsigned>(args.q.rows);
  // Stream order puts every append before every read of the step.
  impl->launch(f8 ? kMlaAppendF8 : kMlaAppendBF16, tokens, 1, kMlaThreads,
               sizeof(float) * (args.kvLoraRank + args.ropeDim), stream, p);
  if (detail::mlaPrefillDecompressed(args)) {
    p.workspaceKv = args.workspace;
    p.contextBound =
        args.workspace +
        kvWorkspaceBytes(args.maxContext, args.heads, args.nopeDim, args.vDim);
    impl->launch(kMlaPrefillBound, 1, 1, 1024, 0, stream, p);
    impl->launch(kMlaDecompress,
                 gridFor(int64_t(args.heads) * (args.nopeDim + args.vDim),
                         k::kDecompressN),
                 gridFor(args.maxContext, k::kDecompressM),
                 k::kDecompressThreads, k::kDecompressSharedBytes, stream, p);
    impl->launch(kMlaPrefill, static_cast<unsigned>(args.heads),
                 gridFor(args.q.rows, k::kPrefillRows), k::kPrefillThreads,
                 k::kPrefillSharedBytes, stream, p);
    return;
  }
  if (!detail::mlaAttentionOnTensorCores(args)) {
    impl->launch(f8 ? kMlaAttentionF8 : kMlaAttentionBF16,
                 static_cast<unsigned>(args.heads), tokens, kMlaThreads,
                 detail::mlaAttentionSharedBytes(args), stream, p);
    return;
  }
  const int groups = (args.heads + k::kFlashRows - 1) / k::kFlashRows;
  const MlaSplit split = mlaSplit(tokens * int64_t(groups), args.maxContext);
  p.splits = split.splits;
  p.splitLength = split.length;
  p.workspaceLatent = args.workspace;
  p.workspacePartial =
      args.workspace +
      latentWorkspaceBytes(args.q.rows, args.heads, args.kvLoraRank);
  p.partialLseFloats = int64_t(k::kMlaMaxPartials) * k::kFlashRows;
  const unsigned tokenTiles = gridFor(args.q.rows, k::kAbsorbM);
  impl->launch(kMlaAbsorbQ, gridFor(args.kvLoraRank, k::kAbsorbN) * args.heads,
               tokenTiles, k::kAbsorbThreads, 0, stream, p);
  impl->launch(kMlaFlash, static_cast<unsigned>(groups * split.splits), tokens,
               k::kFlashThreads, k::kFlashSharedBytes, stream, p);
  if (split.splits > 1)
    impl->launch(kMlaCombine, static_cast<unsigned>(args.heads), tokens,
                 k::kCombineThreads, 0, stream, p);
  impl->launch(kMlaAbsorbOut, gridFor(args.vDim, k::kAbsorbN) * args.heads,
               tokenTiles, k::kAbsorbThreads, 0, stream, p);
}

void ModelKernels::moeRoute(CUstream stream, const MoeRouteArgs &args) {
  detail::checkMoeRoute(args);
  k::RouteParams p{};
  p.logits = ref(args.logits);
  p.bias = args.bias;
  p.expertIds = args.expertIds;
  p.weights = args.weights;
  p.tokens = args.logits.rows;
  p.experts = static_cast<int>(args.logits.cols);
  p.topK = args.topK;
  p.nGroup = args.nGroup;
  p.topkGroup = args.topkGroup;
  p.routedScalingFactor = args.routedScalingFactor;
  p.normTopkProb = args.normTopkProb ? 1 : 0;
  size_t shared =
      sizeof(float) * (2 * size_t(p.experts) + p.nGroup) + size_t(p.experts);
  impl->launch(kMoeRoute, gridFor(args.logits.rows, 1), 1, kRouteThreads,
               shared, stream, p);
}

void ModelKernels::moeDispatch(CUstream stream, const QuantizedMatrix &in,
                               CUdeviceptr expertIds, int topK, int experts,
                               const QuantizedMatrix &out, CUdeviceptr offsets,
                               CUdeviceptr rows) {
  detail::checkMoeDispatch(in, expertIds, topK, experts, out, offsets, rows);
  k::DispatchParams p{};
  p.inValues = in.values;
  p.inScales = in.scales;
  p.expertIds = expertIds;
  p.outValues = out.values;
  p.outScales = out.scales;
  p.offsets = offsets;
  p.rows = rows;
  p.tokens = in.rows;
  p.cols = in.cols;
  p.topK = topK;
  p.experts = experts;
  // The plan runs even without tokens: the offsets are then all zero.
  impl->launch(kMoeDispatchPlan, 1, 1, kDispatchThreads, 0, stream, p);
  impl->launch(kMoeDispatchCopy, gridFor(in.rows * topK, 1), 1, kCopyThreads, 0,
               stream, p);
}

void ModelKernels::epSlots(CUstream stream, CUdeviceptr expertIds,
                           int64_t tokens, int topK, CUdeviceptr replicas,
                           CUdeviceptr replicaCounts, int experts,
                           int maxReplicas, CUdeviceptr slots) {
  Checker check("ep_slots");
  check.require(topK >= 1 && experts >= 1 && maxReplicas >= 1,
                "top_k, experts and replicas must be positive");
  check.rowsFitGrid(gridFor(tokens * topK, kCopyThreads));
  if (tokens == 0)
    return;
  check.pointer(expertIds, "expertIds", 4);
  check.pointer(replicas, "replicas", 4);
  check.pointer(replicaCounts, "replicaCounts", 4);
  check.pointer(slots, "slots", 4);
  k::EpSlotsParams p{};
  p.expertIds = expertIds;
  p.replicas = replicas;
  p.counts = replicaCounts;
  p.slots = slots;
  p.entries = tokens * topK;
  p.topK = topK;
  p.experts = experts;
  p.maxReplicas = maxReplicas;
  impl->launch(kEpSlots, gridFor(p.entries, kCopyThreads), 1, kCopyThreads, 0,
               stream, p);
}

void ModelKernels::epGroup(CUstream stream, CUdeviceptr in,
                           CUdeviceptr inScales, CUdeviceptr counts, int ranks,
                           int slots, int64_t rows, int64_t rowBytes,
                           int64_t cols, bool toSlotMajor, CUdeviceptr out,
                           CUdeviceptr outScales, CUdeviceptr offsets,
                           const EpGathered &gathered) {
  Checker check("ep_group");
  check.require(ranks >= 1 && slots >= 1, "ranks and slots must be positive");
  check.require(int64_t(ranks) * slots <= 1024,
                "at most 1024 chunks (ranks x slots), got " +
                    std::to_string(int64_t(ranks) * slots));
  check.require(rowBytes > 0 && rowBytes % 16 == 0,
                "rows must be a positive multiple of 16 bytes, got " +
                    std::to_string(rowBytes));
  check.require(!inScales == !outScales,
                "scales go in and out together or not at all");
  check.require(toSlotMajor || (!inScales && !offsets),
                "scales and offsets are written toward slot-major order only");
  check.require(
      gathered.peerRows >= 0 &&
          (!gathered.peerRows || (gathered.rank >= 0 && gathered.rank < ranks &&
                                  rows == ranks * gathered.peerRows)),
      "a gathered exchange holds ranks x peer rows (" + std::to_string(ranks) +
          " x " + std::to_string(gathered.peerRows) + "), got " +
          std::to_string(rows) + " rows, rank " +
          std::to_string(gathered.rank));
  check.rowsFitGrid(rows);
  check.pointer(counts, "counts", 4);
  if (rows > 0) {
    check.pointer(in, "input rows", 16);
    check.pointer(out, "output rows", 16);
  }
  k::EpGroupParams p{};
  p.inValues = in;
  p.inScales = inScales;
  p.counts = counts;
  p.outValues = out;
  p.outScales = outScales;
  p.offsets = offsets;
  p.rows = rows;
  p.rowBytes = rowBytes;
  p.cols = cols;
  p.ranks = ranks;
  p.slots = slots;
  p.toSlotMajor = toSlotMajor ? 1 : 0;
  p.peerRows = gathered.peerRows;
  p.rank = gathered.rank;
  impl->launch(kEpGroup, std::max<unsigned>(1, gridFor(rows, 1)), 1,
               kCopyThreads, 0, stream, p);
}

void ModelKernels::swiglu(CUstream stream, const DeviceMatrix &gate,
                          const DeviceMatrix &up, const DeviceMatrix &out) {
  detail::checkSwiglu(gate, up, out);
  k::SwigluParams p{};
  p.gate = ref(gate);
  p.up = ref(up);
  p.out = ref(out);
  p.rows = gate.rows;
  p.cols = gate.cols;
  impl->launch(kSwiglu, gridFor(gate.rows, 1), columnChunks(gate.cols),
               kRowThreads, 0, stream, p);
}

void ModelKernels::swigluQuantize(CUstream stream, const DeviceMatrix &gate,
                                  const DeviceMatrix &up,
                                  const QuantizedMatrix &out) {
  detail::checkSwigluQuantize(gate, up, out);
  k::SwigluParams p{};
  p.gate = ref(gate);
  p.up = ref(up);
  p.q = ref(out);
  p.rows = gate.rows;
  p.cols = gate.cols;
  impl->launch(kSwigluQuantize,
               gridFor(quantizeWarps(gate.rows, gate.cols), kRowThreads / 32),
               1, kRowThreads, 0, stream, p);
}

void ModelKernels::moeCombine(CUstream stream, const DeviceMatrix &y,
                              CUdeviceptr rows, CUdeviceptr weights, int topK,
                              const DeviceMatrix &out,
                              const EpGathered &gathered) {
  detail::checkMoeCombine(y, rows, weights, topK, out);
  if (gathered.peerRows) {
    Checker check("moe_combine");
    check.require(gathered.ranks >= 1 && gathered.slots >= 1 &&
                      y.rows == gathered.ranks * gathered.peerRows,
                  "after a gathered exchange y holds ranks x peer rows (" +
                      std::to_string(gathered.ranks) + " x " +
                      std::to_string(gathered.peerRows) + "), got " +
                      std::to_string(y.rows));
    check.pointer(gathered.sendOffsets, "send offsets", 4);
  }
  k::CombineParams p{};
  p.y = ref(y);
  p.rows = rows;
  p.weights = weights;
  p.out = ref(out);
  p.tokens = out.rows;
  p.cols = out.cols;
  p.routedRows = y.rows;
  p.topK = topK;
  p.peerOffsets = gathered.peerRows ? gathered.sendOffsets : 0;
  p.peerRows = gathered.peerRows;
  p.ranks = gathered.ranks;
  p.slots = gathered.slots;
  impl->launch(kMoeCombine, gridFor(out.rows, 1), columnChunks(out.cols),
               kRowThreads, 0, stream, p);
}

void ModelKernels::selectRows(CUstream stream, const DeviceMatrix &x,
                              CUdeviceptr rows, int64_t count,
                              const DeviceMatrix &out) {
  detail::checkSelectRows(x, rows, count, out);
  k::SelectRowsParams p{};
  p.x = ref(x);
  p.rows = rows;
  p.out = ref(out);
  p.count = count;
  p.cols = x.cols;
  p.sourceRows = x.rows;
  impl->launch(kSelectRows, gridFor(count, 1), columnChunks(x.cols),
               kRowThreads, 0, stream, p);
}

// The device reads the host's rows as they are.
static_assert(
    sizeof(SamplingRow) == sizeof(k::SampleRowParams) &&
    offsetof(SamplingRow, u) == offsetof(k::SampleRowParams, u) &&
    offsetof(SamplingRow, temperature) ==
        offsetof(k::SampleRowParams, temperature) &&
    offsetof(SamplingRow, topP) == offsetof(k::SampleRowParams, topP) &&
    offsetof(SamplingRow, topK) == offsetof(k::SampleRowParams, topK) &&
    offsetof(SamplingRow, vocabLimit) == offsetof(k::SampleRowParams, limit));

void ModelKernels::sample(CUstream stream, const DeviceMatrix &logits,
                          const std::vector<SamplingRow> &rows,
                          CUdeviceptr rowsBuffer, size_t rowsBufferBytes,
                          CUdeviceptr tokens) {
  detail::checkSample(logits, rows, rowsBuffer, rowsBufferBytes, tokens);
  if (rows.empty())
    return;
  // Pageable source: the driver stages it before returning.
  KILN_CU("model kernel kiln_sample: rows", cuMemcpyHtoDAsync, rowsBuffer,
          rows.data(), rows.size() * sizeof(SamplingRow), stream);
  k::SampleParams p{};
  p.logits = ref(logits);
  p.rows = rowsBuffer;
  p.tokens = tokens;
  p.count = logits.rows;
  p.vocab = logits.cols;
  impl->launch(kSample, gridFor(logits.rows, 1), 1, k::kSampleThreads, 0,
               stream, p);
}

} // namespace kiln::cuda
