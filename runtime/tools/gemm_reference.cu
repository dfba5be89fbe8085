//===- gemm_reference.cu - reference FP8 GEMM and checking kernels --------===//
//
// Built by nvcc into one cubin (`nvcc -cubin`, sm_90a) at build time; see
// gemm_reference.h for what each kernel is for. Everything here favours
// being obviously right over being fast: plain loads, FP32 FMAs on CUDA
// cores, one barrier-separated stage at a time.
//
// Two independent computations check each other, and kernels under test:
//  - kiln_gemm_reference follows the numerics contract (FP32 sum per 128-K
//    block from hardware E4M3 conversion, promoted with the scales in FP32,
//    BF16 out), exactly what a Kiln kernel computes up to summation order;
//  - kiln_gemm_check_reference_f64 is the product of the dequantized
//    operands in FP64, with its own bit-level E4M3 decoding. FP64 because it
//    takes the reference's own rounding out of the question: E4M3 values
//    times FP32 scales are exact in FP64 and sums of up to 2^14 products
//    lose ~1e-16 relative, against a 5e-3 tolerance. FP32 with per-block
//    sums would be accurate enough too, but then a kernel and its check
//    would share the same rounding structure.
//
//===----------------------------------------------------------------------===//

#include "gemm_reference.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

using namespace kiln::gemm_reference;

namespace {

/// Stages rows [row0, row0 + rows) × K columns [k0, k0 + 128) of an E4M3
/// row-major matrix into shared memory as FP32, K-major (`tile[k * rows +
/// r]`), so that the compute loop reads consecutive rows. Rows past `limit`
/// become zeros. Consecutive threads take consecutive rows: conflict-free
/// shared-memory stores.
__device__ void stageTile(const uint8_t *__restrict__ matrix, int limit, int k,
                          int row0, int k0, int rows, float *tile) {
  for (int index = threadIdx.x; index < rows * (kBlockK / 16);
       index += blockDim.x) {
    int r = index % rows;
    int chunk = index / rows; // 16 bytes of K
    uint4 packed = make_uint4(0, 0, 0, 0);
    if (row0 + r < limit)
      packed = *reinterpret_cast<const uint4 *>(
          matrix + static_cast<size_t>(row0 + r) * k + k0 + chunk * 16);
    const uint8_t *bytes = reinterpret_cast<const uint8_t *>(&packed);
    for (int e = 0; e < 16; ++e) {
      __nv_fp8_e4m3 value;
      value.__x = bytes[e];
      tile[(chunk * 16 + e) * rows + r] = static_cast<float>(value);
    }
  }
}

/// E4M3FN from its bit fields, independent of cuda_fp8.h: (-1)^s ·
/// (8 + m) · 2^(e − 10) for e > 0, (-1)^s · m · 2^−9 for e = 0; S.1111.111 is
/// NaN (the fill kernel never writes it).
__device__ double decodeE4M3(uint8_t bits) {
  int exponent = (bits >> 3) & 0xF, mantissa = bits & 7;
  if (exponent == 0xF && mantissa == 7)
    return __longlong_as_double(0x7FF8000000000000ULL);
  double magnitude = exponent == 0 ? ldexp(double(mantissa), -9)
                                   : ldexp(double(8 + mantissa), exponent - 10);
  return (bits & 0x80) ? -magnitude : magnitude;
}

/// A well-mixed 64-bit hash (splitmix64's finalizer): element i of a buffer
/// draws from hash(seed + i), so the fill is the same for any launch shape.
__device__ uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

/// Uniform in [0, 1) from 24 random bits.
__device__ float uniform(uint64_t bits) {
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

__device__ void warpSum(double &value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xFFFFFFFFu, value, offset);
}

__device__ void warpSum(unsigned long long &value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xFFFFFFFFu, value, offset);
}

__device__ void warpMin(unsigned long long &value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value = min(value, __shfl_down_sync(0xFFFFFFFFu, value, offset));
}

__device__ void warpMax(unsigned long long &value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value = max(value, __shfl_down_sync(0xFFFFFFFFu, value, offset));
}

/// One thread's comparison of BF16 outputs with FP64 references, then its
/// warp's share of the CheckStats (one atomic per field and warp).
struct ErrorTally {
  double sumSquaredError = 0, sumSquaredReference = 0;
  unsigned long long unwritten = 0, nonFinite = 0;
  unsigned long long firstUnwritten = ~0ULL, firstNonFinite = ~0ULL;
  /// The largest |error| (float bits, high word) and its index (low word).
  unsigned long long worst = 0;

  __device__ void add(double reference, uint16_t bits,
                      unsigned long long index) {
    sumSquaredReference += reference * reference;
    if (bits == kPoisonBF16) {
      ++unwritten;
      firstUnwritten = min(firstUnwritten, index);
      return;
    }
    float value = __uint_as_float(static_cast<uint32_t>(bits) << 16);
    if (!isfinite(value)) {
      ++nonFinite;
      firstNonFinite = min(firstNonFinite, index);
      return;
    }
    double error = double(value) - reference;
    sumSquaredError += error * error;
    float magnitude = static_cast<float>(fabs(error));
    worst =
        max(worst, static_cast<unsigned long long>(__float_as_uint(magnitude))
                           << 32 |
                       index);
  }

  /// Every thread of the warp calls it; lane 0 adds the warp's totals.
  __device__ void flush(CheckStats *stats) {
    warpSum(sumSquaredError);
    warpSum(sumSquaredReference);
    warpSum(unwritten);
    warpSum(nonFinite);
    warpMin(firstUnwritten);
    warpMin(firstNonFinite);
    warpMax(worst);
    if (threadIdx.x % 32 != 0)
      return;
    atomicAdd(&stats->sumSquaredError, sumSquaredError);
    atomicAdd(&stats->sumSquaredReference, sumSquaredReference);
    if (unwritten) {
      atomicAdd(&stats->unwritten, unwritten);
      atomicMin(&stats->firstUnwritten, firstUnwritten);
    }
    if (nonFinite) {
      atomicAdd(&stats->nonFinite, nonFinite);
      atomicMin(&stats->firstNonFinite, firstNonFinite);
    }
    atomicMax(&stats->worstError, worst);
  }
};

} // namespace

/// The reference GEMM (gemm-abi.md's ABI plus `a`, `b`). Persistent: block b
/// takes tiles b, b + gridDim.x, ... of the ⌈M/64⌉ × ⌈N/128⌉ grid, N-tiles
/// fastest, as the ABI prescribes. Its tile does not depend on the
/// manifest's block_m/block_n, which only size the grid.
extern "C" __global__ void __launch_bounds__(kThreads, 1)
    kiln_gemm_reference(const __grid_constant__ CUtensorMap tmA,
                        const __grid_constant__ CUtensorMap tmB,
                        const float *__restrict__ scaleA,
                        const float *__restrict__ scaleB,
                        __nv_bfloat16 *__restrict__ out, int M, int N, int K,
                        const uint8_t *__restrict__ a,
                        const uint8_t *__restrict__ b) {
  extern __shared__ float4 sharedTiles[];
  // A launch with less shared memory or other threads would compute garbage.
  unsigned dynamicShared;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dynamicShared));
  if (dynamicShared < kSharedBytes || blockDim.x != kThreads)
    __trap();
  float *tileA = reinterpret_cast<float *>(sharedTiles); // [128][64]
  float *tileB = tileA + kBlockK * kBlockM;              // [128][128]

  // Thread (ty, tx) owns rows ty + 16i and columns tx + 16j of the tile:
  // in the inner loop a warp reads 2 distinct A values and 16 consecutive B
  // values, both without bank conflicts.
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int tilesN = (N + kBlockN - 1) / kBlockN;
  const int tiles = (M + kBlockM - 1) / kBlockM * tilesN;
  const int blocksK = K / kBlockK;

  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int m0 = tile / tilesN * kBlockM, n0 = tile % tilesN * kBlockN;
    float acc[4][8] = {};
    for (int kb = 0; kb < blocksK; ++kb) {
      __syncthreads(); // the previous block's reads are done
      stageTile(a, M, K, m0, kb * kBlockK, kBlockM, tileA);
      stageTile(b, N, K, n0, kb * kBlockK, kBlockN, tileB);
      __syncthreads();

      float partial[4][8] = {};
      for (int k = 0; k < kBlockK; ++k) {
        float av[4], bv[8];
        for (int i = 0; i < 4; ++i)
          av[i] = tileA[k * kBlockM + ty + 16 * i];
        for (int j = 0; j < 8; ++j)
          bv[j] = tileB[k * kBlockN + tx + 16 * j];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 8; ++j)
            partial[i][j] = fmaf(av[i], bv[j], partial[i][j]);
      }
      // Promotion: acc += partial · scaleA[kb][row] · scaleB[col / 128][kb].
      for (int i = 0; i < 4; ++i) {
        int row = m0 + ty + 16 * i;
        float sa = row < M ? scaleA[static_cast<size_t>(kb) * M + row] : 0.0f;
        for (int j = 0; j < 8; ++j) {
          int col = n0 + tx + 16 * j;
          float sb = col < N
                         ? scaleB[static_cast<size_t>(col / 128) * blocksK + kb]
                         : 0.0f;
          acc[i][j] += partial[i][j] * sa * sb;
        }
      }
    }
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 8; ++j) {
        int row = m0 + ty + 16 * i, col = n0 + tx + 16 * j;
        if (row < M && col < N)
          out[static_cast<size_t>(row) * N + col] =
              __float2bfloat16_rn(acc[i][j]);
      }
  }
}

/// Random E4M3 values: normal with σ = 112 (so ±448, the format's largest
/// value, is 4σ and saturates rarely), like activations and weights after
/// amax scaling; never NaN, rarely zero.
extern "C" __global__ void kiln_gemm_check_fill_e4m3(uint8_t *values,
                                                     unsigned long long count,
                                                     unsigned long long seed) {
  for (unsigned long long i = blockIdx.x * 1ULL * blockDim.x + threadIdx.x;
       i < count; i += 1ULL * gridDim.x * blockDim.x) {
    uint64_t bits = mix(seed + i);
    // Box-Muller; u1 in (0, 1] keeps the logarithm finite.
    float u1 = 1.0f - uniform(bits), u2 = uniform(bits << 24);
    float normal = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    values[i] =
        __nv_cvt_float_to_fp8(112.0f * normal, __NV_SATFINITE, __NV_E4M3);
  }
}

/// Random positive scales in [base/2, 2·base), log-uniform: a factor of 4
/// keeps every block's contribution comparable, so a wrong or dropped scale
/// shows in the error, and none is zero.
extern "C" __global__ void kiln_gemm_check_fill_scales(float *scales,
                                                       unsigned long long count,
                                                       unsigned long long seed,
                                                       float base) {
  for (unsigned long long i = blockIdx.x * 1ULL * blockDim.x + threadIdx.x;
       i < count; i += 1ULL * gridDim.x * blockDim.x)
    scales[i] = base * exp2f(2.0f * uniform(mix(seed + i)) - 1.0f);
}

/// The FP64 product of the dequantized operands, compared element by element
/// with `out` (BF16 bits) into `stats`. Grid (⌈N/64⌉, ⌈M/64⌉), 256 threads.
extern "C" __global__ void __launch_bounds__(256) kiln_gemm_check_reference_f64(
    const uint8_t *__restrict__ a, const uint8_t *__restrict__ b,
    const float *__restrict__ scaleA, const float *__restrict__ scaleB,
    const uint16_t *__restrict__ out, int M, int N, int K, CheckStats *stats) {
  constexpr int kTile = kCheckTile, kChunk = 32;
  // +1 column: the staging stores (consecutive k) hit distinct banks.
  __shared__ double tileA[kChunk][kTile + 1];
  __shared__ double tileB[kChunk][kTile + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile;
  const int blocksK = K / 128;

  double acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kChunk) {
    const int kb = k0 / 128;
    __syncthreads();
    for (int index = threadIdx.x; index < kTile * kChunk; index += blockDim.x) {
      int kk = index % kChunk, r = index / kChunk;
      int row = m0 + r, col = n0 + r;
      tileA[kk][r] =
          row < M ? decodeE4M3(a[static_cast<size_t>(row) * K + k0 + kk]) *
                        double(scaleA[static_cast<size_t>(kb) * M + row])
                  : 0.0;
      tileB[kk][r] =
          col < N
              ? decodeE4M3(b[static_cast<size_t>(col) * K + k0 + kk]) *
                    double(
                        scaleB[static_cast<size_t>(col / 128) * blocksK + kb])
              : 0.0;
    }
    __syncthreads();
    for (int kk = 0; kk < kChunk; ++kk)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
          acc[i][j] =
              fma(tileA[kk][ty + 16 * i], tileB[kk][tx + 16 * j], acc[i][j]);
  }

  ErrorTally tally;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      int row = m0 + ty + 16 * i, col = n0 + tx + 16 * j;
      if (row >= M || col >= N)
        continue;
      unsigned long long index = static_cast<unsigned long long>(row) * N + col;
      double reference = acc[i][j];
      tally.add(reference, out[index], index);
    }
  tally.flush(stats);
}

/// The SwiGLU epilogue's reference (gemm-abi.md "SwiGLU epilogue"): for B
/// in the checkpoint's gate/up layout ([gate; up], N = 2I rows, NOT the
/// interleaved layout the kernel reads), out[m, j] = silu(g) · u with
/// g = (A·Bᵀ)[m, j] and u = (A·Bᵀ)[m, I + j] from the FP64 product of the
/// dequantized operands, compared with `out` ([M, I] BF16 bits) into
/// `stats` as kiln_gemm_check_reference_f64 does. Grid (⌈I/64⌉, ⌈M/64⌉),
/// 256 threads.
extern "C" __global__ void __launch_bounds__(256)
    kiln_gemm_check_reference_swiglu_f64(const uint8_t *__restrict__ a,
                                         const uint8_t *__restrict__ b,
                                         const float *__restrict__ scaleA,
                                         const float *__restrict__ scaleB,
                                         const uint16_t *__restrict__ out,
                                         int M, int N, int K,
                                         CheckStats *stats) {
  constexpr int kTile = kCheckTile, kChunk = 16;
  __shared__ double tileA[kChunk][kTile + 1];
  __shared__ double tileG[kChunk][kTile + 1];
  __shared__ double tileU[kChunk][kTile + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int I = N / 2;
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile;
  const int blocksK = K / 128;

  double gate[4][4] = {}, up[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kChunk) {
    const int kb = k0 / 128;
    __syncthreads();
    for (int index = threadIdx.x; index < kTile * kChunk; index += blockDim.x) {
      int kk = index % kChunk, r = index / kChunk;
      int row = m0 + r, col = n0 + r;
      tileA[kk][r] =
          row < M ? decodeE4M3(a[static_cast<size_t>(row) * K + k0 + kk]) *
                        double(scaleA[static_cast<size_t>(kb) * M + row])
                  : 0.0;
      for (int half = 0; half < 2; ++half) {
        int wrow = col + half * I;
        double value =
            col < I
                ? decodeE4M3(b[static_cast<size_t>(wrow) * K + k0 + kk]) *
                      double(scaleB[static_cast<size_t>(wrow / 128) * blocksK +
                                    kb])
                : 0.0;
        (half ? tileU : tileG)[kk][r] = value;
      }
    }
    __syncthreads();
    for (int kk = 0; kk < kChunk; ++kk)
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          gate[i][j] =
              fma(tileA[kk][ty + 16 * i], tileG[kk][tx + 16 * j], gate[i][j]);
          up[i][j] =
              fma(tileA[kk][ty + 16 * i], tileU[kk][tx + 16 * j], up[i][j]);
        }
  }

  ErrorTally tally;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      int row = m0 + ty + 16 * i, col = n0 + tx + 16 * j;
      if (row >= M || col >= I)
        continue;
      unsigned long long index = static_cast<unsigned long long>(row) * I + col;
      double g = gate[i][j];
      double reference = g / (1.0 + exp(-g)) * up[i][j];
      tally.add(reference, out[index], index);
    }
  tally.flush(stats);
}

/// Counts the elements of `values` that differ from `expected` (the guard
/// region past `out`, which must keep the poison).
extern "C" __global__ void
kiln_gemm_check_count_not_equal(const uint16_t *values,
                                unsigned long long count, uint16_t expected,
                                unsigned long long *differing) {
  unsigned long long local = 0;
  for (unsigned long long i = blockIdx.x * 1ULL * blockDim.x + threadIdx.x;
       i < count; i += 1ULL * gridDim.x * blockDim.x)
    local += values[i] != expected;
  warpSum(local);
  if (threadIdx.x % 32 == 0 && local)
    atomicAdd(differing, local);
}

/// Counts the positions where two BF16 buffers differ bit for bit (the same
/// launch on the same inputs must give the same output).
extern "C" __global__ void
kiln_gemm_check_count_mismatches(const uint16_t *x, const uint16_t *y,
                                 unsigned long long count,
                                 unsigned long long *differing) {
  unsigned long long local = 0;
  for (unsigned long long i = blockIdx.x * 1ULL * blockDim.x + threadIdx.x;
       i < count; i += 1ULL * gridDim.x * blockDim.x)
    local += x[i] != y[i];
  warpSum(local);
  if (threadIdx.x % 32 == 0 && local)
    atomicAdd(differing, local);
}

/// Keeps the stream busy for `nanoseconds`, so that the host can enqueue a
/// whole timed loop before the GPU reaches it and host launch overhead stays
/// out of the timings.
extern "C" __global__ void
kiln_gemm_check_spin(unsigned long long nanoseconds) {
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < nanoseconds);
}
