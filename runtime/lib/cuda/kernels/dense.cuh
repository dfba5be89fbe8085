//===- dense.cuh - row-wise and dense kernels -----------------------------===//
//
// Embedding, RMSNorm (plain and fused with 1×128 quantization), quantization,
// SwiGLU, residual adds, row selection and the FP32 product with a BF16
// weight (router gate, output head). Element-wise row kernels run a grid of
// rows × column chunks of kRowThreads (one block per whole row left a decode
// step's few rows latency-bound: 28 dependent loads per thread at width
// 7168); RMSNorm runs one block of kNormThreads per row (it reduces the row);
// per-tile work runs one warp per 128-column tile.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_KERNELS_DENSE_CUH
#define KILN_CUDA_KERNELS_DENSE_CUH

#include "common.cuh"

namespace kiln::cuda::kernels {

constexpr int kRowThreads = 256;
constexpr int kNormThreads = 1024;

/// Column of this thread in a rows × column-chunks grid (y: chunks).
__device__ __forceinline__ long long chunkColumn() {
  return static_cast<long long>(blockIdx.y) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ float silu(float x) {
  // kiln::silu's formula, so that only expf's rounding differs.
  return x / (1.0f + expf(-x));
}

/// 1 / rms over a row, as kiln::rmsNorm: squares summed in FP64, the mean
/// rounded to f32, then 1 / sqrt(mean + eps) in f32 (IEEE division and
/// square root: nvcc's defaults without fast math).
__device__ __forceinline__ float inverseRms(const MatrixRef &x, long long row,
                                            long long cols, float eps) {
  __shared__ double scratch[32];
  double sumSquares = 0;
  for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
    double value = loadF32OrBF16(x, row, c);
    sumSquares += value * value;
  }
  sumSquares = blockSum(sumSquares, scratch);
  float variance = static_cast<float>(sumSquares / static_cast<double>(cols));
  return 1.0f / sqrtf(variance + eps);
}

} // namespace kiln::cuda::kernels

using namespace kiln::cuda::kernels;

extern "C" __global__ void __launch_bounds__(kRowThreads)
    kiln_embed(const EmbedParams p) {
  long long row = blockIdx.x;
  int token = pointer<const int>(p.tokens)[row];
  float *out = pointer<float>(p.out.data) + row * p.out.stride;
  bool valid = token >= 0 && token < p.vocab;
  const unsigned short *source =
      pointer<const unsigned short>(p.table) + (valid ? token * p.cols : 0);
  long long c = chunkColumn();
  if (c < p.cols)
    out[c] = valid ? bf16Bits(source[c]) : __int_as_float(0x7FC00000);
}

extern "C" __global__ void __launch_bounds__(kNormThreads)
    kiln_rms_norm(const RmsNormParams p) {
  long long row = blockIdx.x;
  float scale = inverseRms(p.x, row, p.cols, p.eps);
  const unsigned short *weight = pointer<const unsigned short>(p.weight);
  for (long long c = threadIdx.x; c < p.cols; c += blockDim.x)
    storeF32OrBF16(p.out, row, c,
                   bf16Bits(weight[c]) * (loadF32OrBF16(p.x, row, c) * scale));
}

extern "C" __global__ void __launch_bounds__(kNormThreads)
    kiln_rms_norm_quantize(const RmsNormParams p) {
  long long row = blockIdx.x;
  float scale = inverseRms(p.x, row, p.cols, p.eps);
  const unsigned short *weight = pointer<const unsigned short>(p.weight);
  ScaleSlot slot = scaleSlot(p.q, row);
  int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  for (long long tile = warp; tile < scaleTiles(p.cols);
       tile += blockDim.x / kWarpSize) {
    // A lane's four columns by one vector load each of x and the weights
    // where they are whole and aligned (a warp then reads 512 contiguous
    // bytes, not four strided passes); the values are the same either way.
    float values[4];
    const long long first = tile * kScaleBlock + lane * 4;
    const unsigned short *w = weight + first;
    if (first + 3 < p.cols &&
        (reinterpret_cast<unsigned long long>(w) & 7) == 0) {
      float x[4];
      loadFourF32OrBF16(p.x, row, first, x);
      uint2 bits = *reinterpret_cast<const uint2 *>(w);
      float ws[4] = {bf16Low(bits.x), bf16High(bits.x), bf16Low(bits.y),
                     bf16High(bits.y)};
      for (int i = 0; i < 4; ++i)
        values[i] = ws[i] * (x[i] * scale);
    } else {
      for (int i = 0; i < 4; ++i) {
        long long c = first + i;
        values[i] = c < p.cols ? bf16Bits(weight[c]) *
                                     (loadF32OrBF16(p.x, row, c) * scale)
                               : 0.0f;
      }
    }
    quantizeTile(p.q, row, tile, values, slot);
  }
}

/// One warp per run of kQuantizeRunTiles tiles of a row, eight per block.
extern "C" __global__ void __launch_bounds__(kRowThreads)
    kiln_quantize(const QuantizeParams p) {
  long long row, first;
  if (!quantizeRun(p.q.rows, p.q.cols, row, first))
    return;
  long long tiles = scaleTiles(p.q.cols);
  int lane = threadIdx.x % kWarpSize;
  float values[kQuantizeRunTiles][4];
  for (int t = 0; t < kQuantizeRunTiles; ++t) {
    long long c = (first + t) * kScaleBlock + lane * 4;
    if (first + t < tiles && c < p.q.cols)
      loadFourF32OrBF16(p.x, row, c, values[t]);
    else
      values[t][0] = values[t][1] = values[t][2] = values[t][3] = 0.0f;
  }
  ScaleSlot slot = scaleSlot(p.q, row);
  for (int t = 0; t < kQuantizeRunTiles; ++t)
    if (first + t < tiles)
      quantizeTile(p.q, row, first + t, values[t], slot);
}

extern "C" __global__ void __launch_bounds__(kRowThreads)
    kiln_swiglu(const SwigluParams p) {
  long long row = blockIdx.x, c = chunkColumn();
  if (c < p.cols)
    storeF32OrBF16(p.out, row, c,
                   silu(loadF32OrBF16(p.gate, row, c)) *
                       loadF32OrBF16(p.up, row, c));
}

/// As kiln_quantize, of silu(gate) * up.
extern "C" __global__ void __launch_bounds__(kRowThreads)
    kiln_swiglu_quantize(const SwigluParams p) {
  long long row, first;
  if (!quantizeRun(p.rows, p.cols, row, first))
    return;
  long long tiles = scaleTiles(p.cols);
  int lane = threadIdx.x % kWarpSize;
  float gate[kQuantizeRunTiles][4], up[kQuantizeRunTiles][4];
  for (int t = 0; t < kQuantizeRunTiles; ++t) {
    long long c = (first + t) * kScaleBlock + lane * 4;
    if (first + t < tiles && c < p.cols) {
      loadFourF32OrBF16(p.gate, row, c, gate[t]);
      loadFourF32OrBF16(p.up, row, c, up[t]);
    } else {
      for (int i = 0; i < 4; ++i)
        gate[t][i] = up[t][i] = 0.0f;
    }
  }
  ScaleSlot slot = scaleSlot(p.q, row);
  for (int t = 0; t < kQuantizeRunTiles; ++t) {
    if (first + t >= tiles)
      continue;
    float values[4];
    for (int i = 0; i < 4; ++i)
      values[i] = silu(gate[t][i]) * up[t][i];
    quantizeTile(p.q, row, first + t, values, slot);
  }
}

extern "C" __global__ void __launch_bounds__(kRowThreads)
    kiln_add(const AddParams p) {
  long long row = blockIdx.x, c = chunkColumn();
  if (c < p.cols)
    pointer<float>(p.out.data)[row * p.out.stride + c] =
        loadF32OrBF16(p.a, row, c) + loadF32OrBF16(p.b, row, c);
}

extern "C" __global__ void __launch_bounds__(kRowThreads)
    kiln_select_rows(const SelectRowsParams p) {
  long long row = blockIdx.x;
  int source = pointer<const int>(p.rows)[row];
  bool valid = source >= 0 && source < p.sourceRows;
  long long c = chunkColumn();
  if (c < p.cols)
    pointer<float>(p.out.data)[row * p.out.stride + c] =
        valid ? loadF32OrBF16(p.x, source, c) : __int_as_float(0x7FC00000);
}

//===--- matmulF32 --------------------------------------------------------===//
//
// out[T, N] = x[T, K] · W[N, K]ᵀ. Small T is bound by streaming W once: each
// warp owns kMatmulColumns weight rows and kTokens token rows, its lanes
// stride K with 16-byte loads (8 bf16) of every weight row, and the per-lane
// partial sums meet in one warp reduction per output. More tokens take more
// blocks along y; they re-read W, from L2 for the router gate's 3.5 MB.

constexpr int kMatmulWarps = 8;
constexpr int kMatmulColumns = 4;

/// The rows a product's lane reads: x's token rows from `firstToken` and
/// W's rows from `firstColumn`; rows past the end read the last valid one
/// (their sums are dropped).
template <int kTokens>
__device__ __forceinline__ void
matmulRows(const MatmulParams &p, long long firstToken, long long firstColumn,
           const float *(&x)[kTokens],
           const unsigned short *(&w)[kMatmulColumns]) {
  for (int t = 0; t < kTokens; ++t)
    x[t] = pointer<const float>(p.x.data) +
           min(firstToken + t, p.rows - 1) * p.x.stride;
  for (int c = 0; c < kMatmulColumns; ++c)
    w[c] = pointer<const unsigned short>(p.weight) +
           min(firstColumn + c, p.n - 1) * p.k;
}

/// sum[t][c] += x[t][k..k+8) · w[c][k..k+8), with 16-byte loads of 8 BF16
/// weights per column and 8 FP32 values per token, FMAs in index order.
template <int kTokens>
__device__ __forceinline__ void
matmulStep8(const float *const (&x)[kTokens],
            const unsigned short *const (&w)[kMatmulColumns], long long k,
            float (&sum)[kTokens][kMatmulColumns]) {
  float weights[kMatmulColumns][8];
#pragma unroll
  for (int c = 0; c < kMatmulColumns; ++c) {
    uint4 packed = __ldg(reinterpret_cast<const uint4 *>(w[c] + k));
    unsigned words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      weights[c][2 * i] = bf16Low(words[i]);
      weights[c][2 * i + 1] = bf16High(words[i]);
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    float4 low = __ldg(reinterpret_cast<const float4 *>(x[t] + k));
    float4 high = __ldg(reinterpret_cast<const float4 *>(x[t] + k + 4));
    float values[8] = {low.x,  low.y,  low.z,  low.w,
                       high.x, high.y, high.z, high.w};
#pragma unroll
    for (int c = 0; c < kMatmulColumns; ++c)
#pragma unroll
      for (int i = 0; i < 8; ++i)
        sum[t][c] = fmaf(values[i], weights[c][i], sum[t][c]);
  }
}

template <int kTokens, bool kVector>
__device__ __forceinline__ void matmulF32(const MatmulParams &p) {
  int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  long long firstColumn =
      (static_cast<long long>(blockIdx.x) * kMatmulWarps + warp) *
      kMatmulColumns;
  long long firstToken = static_cast<long long>(blockIdx.y) * kTokens;
  if (firstColumn >= p.n)
    return;
  const float *x[kTokens];
  const unsigned short *w[kMatmulColumns];
  matmulRows<kTokens>(p, firstToken, firstColumn, x, w);

  float sum[kTokens][kMatmulColumns] = {};
  if constexpr (kVector) {
    // A decode step's router product (few tokens, 256 columns: 8 blocks) is
    // bound by each lane's chain of loads; unrolling deeper keeps more of
    // them in flight (the FMA order, hence every sum, is unchanged).
#pragma unroll(kTokens <= 2 ? 4 : 2)
    for (long long k = lane * 8; k < p.k; k += kWarpSize * 8)
      matmulStep8<kTokens>(x, w, k, sum);
  } else {
    for (long long k = lane; k < p.k; k += kWarpSize) {
      float weights[kMatmulColumns];
#pragma unroll
      for (int c = 0; c < kMatmulColumns; ++c)
        weights[c] = bf16Bits(w[c][k]);
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        float value = x[t][k];
#pragma unroll
        for (int c = 0; c < kMatmulColumns; ++c)
          sum[t][c] = fmaf(value, weights[c], sum[t][c]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t)
#pragma unroll
    for (int c = 0; c < kMatmulColumns; ++c) {
      float total = warpSum(sum[t][c]);
      if (lane == 0 && firstToken + t < p.rows && firstColumn + c < p.n)
        pointer<float>(
            p.out.data)[(firstToken + t) * p.out.stride + firstColumn + c] =
            total;
    }
}

// Narrow outputs (the router gate's 256 columns: 8 blocks of the layout
// above) split K instead: a block owns kMatmulColumns weight rows, its warps
// take interleaved 256-wide slices of K and their sums meet in shared
// memory, added in warp order (so every launch gives the same bits).
template <int kTokens>
__device__ __forceinline__ void matmulF32SplitK(const MatmulParams &p) {
  int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  long long firstColumn = static_cast<long long>(blockIdx.x) * kMatmulColumns;
  long long firstToken = static_cast<long long>(blockIdx.y) * kTokens;
  const float *x[kTokens];
  const unsigned short *w[kMatmulColumns];
  matmulRows<kTokens>(p, firstToken, firstColumn, x, w);
  float sum[kTokens][kMatmulColumns] = {};
#pragma unroll 2
  for (long long k = (warp * kWarpSize + lane) * 8; k < p.k;
       k += kMatmulWarps * kWarpSize * 8)
    matmulStep8<kTokens>(x, w, k, sum);
  __shared__ float partial[kMatmulWarps][kTokens][kMatmulColumns];
#pragma unroll
  for (int t = 0; t < kTokens; ++t)
#pragma unroll
    for (int c = 0; c < kMatmulColumns; ++c) {
      float total = warpSum(sum[t][c]);
      if (lane == 0)
        partial[warp][t][c] = total;
    }
  __syncthreads();
  if (threadIdx.x < kTokens * kMatmulColumns) {
    int t = threadIdx.x / kMatmulColumns, c = threadIdx.x % kMatmulColumns;
    float total = 0;
    for (int w8 = 0; w8 < kMatmulWarps; ++w8)
      total += partial[w8][t][c];
    if (firstToken + t < p.rows && firstColumn + c < p.n)
      pointer<float>(
          p.out.data)[(firstToken + t) * p.out.stride + firstColumn + c] =
          total;
  }
}

// Many tokens (a prefill chunk's router gate: 4096 x 256 x 7168, 15
// GFLOP) re-read x once per 4 columns in the layouts above, 117 MB each
// time: 1.34 ms; a SIMT tile of 64 x 64 reached 0.71 ms (21 TFLOP/s). This
// one runs on the tensor cores in TF32 at FP32 accuracy: W (bf16) is exact
// in TF32, and x = hi + lo with hi = tf32(x), lo = tf32(x - hi), so x · W =
// hi · W + lo · W with every product exact and only |x| 2^-22 of x lost
// (FP32 keeps 2^-24). A block owns 64 tokens x 64 columns; 16-deep K
// slices of x (f32) and W (bf16 made f32) sit in shared memory,
// double-buffered through registers; four warps of 32 x 32, each k8 step
// two m16n8k8 mma per 16 x 8 tile (hi, then lo) into FP32 accumulators.
constexpr int kTiledTokens = kMatmulTiledTokens;
constexpr int kTiledColumns = kMatmulTiledColumns;
constexpr int kTiledK = 16;
constexpr int kTiledStride = kTiledK + 4; // conflict-free fragment reads
constexpr int kTiledThreads = kMatmulTiledThreads;

__device__ __forceinline__ unsigned toTf32(float value) {
  unsigned bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(value));
  return bits;
}

__device__ __forceinline__ void mmaTf32(float (&d)[4], const unsigned (&a)[4],
                                        unsigned b0, unsigned b1) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void matmulF32Tiled(const MatmulParams &p) {
  __shared__ __align__(16) float xs[2][kTiledTokens][kTiledStride];
  __shared__ __align__(16) float ws[2][kTiledColumns][kTiledStride];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int warpTokens = (warp / 2) * 32, warpColumns = (warp % 2) * 32;
  const long long firstToken =
      static_cast<long long>(blockIdx.y) * kTiledTokens;
  const long long firstColumn =
      static_cast<long long>(blockIdx.x) * kTiledColumns;

  // Loads: thread i copies x[token i / 2][k + 8 (i % 2) .. + 8) and
  // W[column i / 2][k + 8 (i % 2) .. + 8). Rows past the ends read the last
  // valid row (their sums are dropped); K is a multiple of 8, so a last
  // partial slice reads a whole zero half.
  const int loadRow = threadIdx.x / 2, loadK = 8 * (threadIdx.x % 2);
  const float *xRow = pointer<const float>(p.x.data) +
                      min(firstToken + loadRow, p.rows - 1) * p.x.stride;
  const unsigned short *wRow = pointer<const unsigned short>(p.weight) +
                               min(firstColumn + loadRow, p.n - 1) * p.k;
  float4 xNext[2];
  uint4 wNext;
  auto fetch = [&](long long k0) {
    long long k = k0 + loadK;
    bool inside = k < p.k;
    xNext[0] = inside ? __ldg(reinterpret_cast<const float4 *>(xRow + k))
                      : make_float4(0, 0, 0, 0);
    xNext[1] = inside ? __ldg(reinterpret_cast<const float4 *>(xRow + k + 4))
                      : make_float4(0, 0, 0, 0);
    wNext = inside ? __ldg(reinterpret_cast<const uint4 *>(wRow + k))
                   : make_uint4(0, 0, 0, 0);
  };
  auto stash = [&](int stage) {
    float *x = &xs[stage][loadRow][loadK];
    *reinterpret_cast<float4 *>(x) = xNext[0];
    *reinterpret_cast<float4 *>(x + 4) = xNext[1];
    unsigned words[4] = {wNext.x, wNext.y, wNext.z, wNext.w};
    float *w = &ws[stage][loadRow][loadK];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[2 * i] = bf16Low(words[i]);
      w[2 * i + 1] = bf16High(words[i]);
    }
  };

  float sum[2][4][4] = {};
  const long long steps = (p.k + kTiledK - 1) / kTiledK;
  fetch(0);
  stash(0);
  __syncthreads();
  for (long long step = 0; step < steps; ++step) {
    const int stage = static_cast<int>(step & 1);
    if (step + 1 < steps)
      fetch((step + 1) * kTiledK);
#pragma unroll
    for (int kk = 0; kk < kTiledK; kk += 8) {
      unsigned hi[2][4], lo[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const float *x = &xs[stage][warpTokens + 16 * mt + g][kk + t];
        float v[4] = {x[0], x[8 * kTiledStride], x[4], x[8 * kTiledStride + 4]};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          hi[mt][i] = toTf32(v[i]);
          lo[mt][i] = toTf32(v[i] - __uint_as_float(hi[mt][i]));
        }
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const float *w = &ws[stage][warpColumns + 8 * nt + g][kk + t];
        unsigned b0 = __float_as_uint(w[0]), b1 = __float_as_uint(w[4]);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mmaTf32(sum[mt][nt], hi[mt], b0, b1);
          mmaTf32(sum[mt][nt], lo[mt], b0, b1);
        }
      }
    }
    if (step + 1 < steps) {
      // The other stage was last read a step ago: every thread passed this
      // step's barrier since, so it is free.
      stash(stage ^ 1);
      __syncthreads();
    }
  }
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      long long token = firstToken + warpTokens + 16 * mt + g + 8 * half;
      if (token >= p.rows)
        continue;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          long long column = firstColumn + warpColumns + 8 * nt + 2 * t + e;
          if (column < p.n)
            pointer<float>(p.out.data)[token * p.out.stride + column] =
                sum[mt][nt][2 * half + e];
        }
    }
}

extern "C" __global__ void __launch_bounds__(kTiledThreads)
    kiln_matmul_f32_tiled(const MatmulParams p) {
  matmulF32Tiled(p);
}

#define KILN_MATMUL_KERNEL(tokens)                                             \
  extern "C" __global__ void __launch_bounds__(kMatmulWarps *kWarpSize)        \
      kiln_matmul_f32_t##tokens(const MatmulParams p) {                        \
    matmulF32<tokens, true>(p);                                                \
  }                                                                            \
  extern "C" __global__ void __launch_bounds__(kMatmulWarps *kWarpSize)        \
      kiln_matmul_f32_scalar_t##tokens(const MatmulParams p) {                 \
    matmulF32<tokens, false>(p);                                               \
  }                                                                            \
  extern "C" __global__ void __launch_bounds__(kMatmulWarps *kWarpSize)        \
      kiln_matmul_f32_split_k_t##tokens(const MatmulParams p) {                \
    matmulF32SplitK<tokens>(p);                                                \
  }
KILN_MATMUL_KERNEL(1)
KILN_MATMUL_KERNEL(2)
KILN_MATMUL_KERNEL(4)
KILN_MATMUL_KERNEL(8)
#undef KILN_MATMUL_KERNEL

#endif // KILN_CUDA_KERNELS_DENSE_CUH

/// Uniform values in [-amplitude, amplitude] from a hash of (seed, index):
/// synthetic weights for benchmarks, reproducible and generated where they
/// live (a full-width layer is gigabytes).
extern "C" __global__ void __launch_bounds__(kRowThreads)
    kiln_fill_random(const FillRandomParams p) {
  for (long long i =
           static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < p.count; i += static_cast<long long>(gridDim.x) * blockDim.x) {
    unsigned long long h = (p.seed + 1) * 0x9E3779B97F4A7C15ull ^
                           static_cast<unsigned long long>(i);
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    float u = (static_cast<float>(h >> 40) / 16777216.0f) * 2.0f - 1.0f;
    float v = u * p.amplitude;
    if (p.type == 0)
      pointer<float>(p.data)[i] = v;
    else if (p.type == 1)
      pointer<unsigned short>(p.data)[i] =
          static_cast<unsigned short>(__float_as_uint(v) >> 16);
    else
      pointer<unsigned char>(p.data)[i] = toE4M3(v);
  }
}
