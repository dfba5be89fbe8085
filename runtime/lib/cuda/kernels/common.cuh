//===- common.cuh - device helpers of the model kernels -------------------===//
//
// Element access for the parameter blocks' matrices, warp and block
// reductions, and the 1×128 quantization with the CPU's exact numerics
// (kiln/fp8.h): s = max(amax, 1e-4) / 448, q = e4m3(x / s), saturating RN.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_KERNELS_COMMON_CUH
#define KILN_CUDA_KERNELS_COMMON_CUH

#include "model_kernels_params.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

namespace kiln::cuda::kernels {

constexpr float kE4M3Max = 448.0f;
constexpr float kMinAmax = 1e-4f;
constexpr int kScaleBlock = 128;
constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

template <typename T> __device__ __forceinline__ T *pointer(Address address) {
  return reinterpret_cast<T *>(address);
}

__device__ __forceinline__ float bf16Bits(unsigned short bits) {
  return __uint_as_float(static_cast<unsigned>(bits) << 16);
}

/// The two BF16 values of a 32-bit word as f32: the low half (the lower
/// address), then the high half.
__device__ __forceinline__ float bf16Low(unsigned word) {
  return __uint_as_float(word << 16);
}
__device__ __forceinline__ float bf16High(unsigned word) {
  return __uint_as_float(word & 0xFFFF0000u);
}

__device__ __forceinline__ unsigned short toBF16(float value) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(value));
}

/// The E4M3FN code of `value`, as kiln::encodeE4M3 (cvt.rn.satfinite).
__device__ __forceinline__ unsigned char toE4M3(float value) {
  return __nv_cvt_float_to_fp8(value, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float fromE4M3(unsigned char bits) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(bits, __NV_E4M3)));
}

/// Element (row, col) of an f32 or bf16 matrix as f32.
__device__ __forceinline__ float loadF32OrBF16(const MatrixRef &m,
                                               long long row, long long col) {
  long long index = row * m.stride + col;
  return m.type == kBF16
             ? bf16Bits(pointer<const unsigned short>(m.data)[index])
             : pointer<const float>(m.data)[index];
}

/// Stores `value` at (row, col) of an f32 or bf16 matrix.
__device__ __forceinline__ void
storeF32OrBF16(const MatrixRef &m, long long row, long long col, float value) {
  long long index = row * m.stride + col;
  if (m.type == kBF16)
    pointer<unsigned short>(m.data)[index] = toBF16(value);
  else
    pointer<float>(m.data)[index] = value;
}

__device__ __forceinline__ float warpSum(float value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

__device__ __forceinline__ float warpMax(float value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(kFullMask, value, offset));
  return value;
}

/// Sum and max over the quad of 4 lanes that holds one row of an mma.sync
/// accumulator fragment (lanes 4g .. 4g + 3); every lane gets the result.
__device__ __forceinline__ float quadSum(float value) {
  value += __shfl_xor_sync(kFullMask, value, 1);
  return value + __shfl_xor_sync(kFullMask, value, 2);
}

__device__ __forceinline__ float quadMax(float value) {
  value = fmaxf(value, __shfl_xor_sync(kFullMask, value, 1));
  return fmaxf(value, __shfl_xor_sync(kFullMask, value, 2));
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
/// thread gets the result. `scratch` holds 32 doubles.
__device__ __forceinline__ double blockSum(double value, double *scratch) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value += __shfl_xor_sync(kFullMask, value, offset);
  int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  int warps = blockDim.x / kWarpSize;
  __syncthreads(); // scratch may still be read by a previous call
  if (lane == 0)
    scratch[warp] = value;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < warps; ++w)
    total += scratch[w];
  return total;
}

/// Max over the block, as blockSum.
__device__ __forceinline__ float blockMax(float value, float *scratch) {
  value = warpMax(value);
  int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  int warps = blockDim.x / kWarpSize;
  __syncthreads();
  if (lane == 0)
    scratch[warp] = value;
  __syncthreads();
  float total = scratch[0];
  for (int w = 1; w < warps; ++w)
    total = fmaxf(total, scratch[w]);
  return total;
}

/// 1×128 tiles covering `cols` columns; the last one may be partial (the
/// GEMM reads its missing columns as zeros through TMA's out-of-bounds fill).
__host__ __device__ constexpr long long scaleTiles(long long cols) {
  return (cols + kScaleBlock - 1) / kScaleBlock;
}

/// Four consecutive elements (row, col .. col + 3) of an f32 or bf16 matrix
/// as f32: one 8- or 16-byte load where the address allows (every row of a
/// dense activation), else four scalar ones. A warp of such loads reads 256
/// or 512 contiguous bytes with one instruction instead of four.
__device__ __forceinline__ void loadFourF32OrBF16(const MatrixRef &m,
                                                  long long row, long long col,
                                                  float (&values)[4]) {
  long long index = row * m.stride + col;
  if (m.type == kBF16) {
    const unsigned short *at = pointer<const unsigned short>(m.data) + index;
    if ((reinterpret_cast<unsigned long long>(at) & 7) == 0) {
      uint2 bits = *reinterpret_cast<const uint2 *>(at);
      values[0] = bf16Low(bits.x);
      values[1] = bf16High(bits.x);
      values[2] = bf16Low(bits.y);
      values[3] = bf16High(bits.y);
      return;
    }
  } else {
    const float *at = pointer<const float>(m.data) + index;
    if ((reinterpret_cast<unsigned long long>(at) & 15) == 0) {
      float4 four = *reinterpret_cast<const float4 *>(at);
      values[0] = four.x;
      values[1] = four.y;
      values[2] = four.z;
      values[3] = four.w;
      return;
    }
  }
  for (int i = 0; i < 4; ++i)
    values[i] = loadF32OrBF16(m, row, col + i);
}

/// Where a row's scales go in a quantized output: the scale of tile t at
/// float `base + t * stride`. Transposed [cols/128][rows], or grouped
/// (artifact.md "moe_dispatch"): group g's scales are [cols/128][count_g]
/// from (cols/128) * offsets[g]. `base` is -1 for a row outside every group
/// (it has no scale to write). Found once per row: the grouped case is a
/// binary search over the offsets, a chain of dependent loads.
struct ScaleSlot {
  long long base, stride;
};
__device__ __forceinline__ ScaleSlot scaleSlot(const QuantizedRef &q,
                                               long long row) {
  if (!q.groupOffsets)
    return {row, q.rows};
  const int *offsets = pointer<const int>(q.groupOffsets);
  // The last group starting at or before `row`; empty groups before it start
  // at the same offset and are skipped because a later one also qualifies.
  int low = 0, high = q.groups;
  while (high - low > 1) {
    int middle = (low + high) / 2;
    if (offsets[middle] <= row)
      low = middle;
    else
      high = middle;
  }
  long long begin = offsets[low], end = offsets[low + 1];
  if (row < begin || row >= end)
    return {-1, 0};
  return {scaleTiles(q.cols) * begin + (row - begin), end - begin};
}

/// Quantizes one 1×128 tile held by a warp, four consecutive columns per
/// lane (`values[i]` is column tile * 128 + lane * 4 + i), and stores the
/// codes and the scale (at `slot`, the row's scaleSlot). In a partial last
/// tile, lanes past `cols` (cols is a multiple of 4) hold zeros, which leave
/// the amax alone, and store nothing.
__device__ __forceinline__ void quantizeTile(const QuantizedRef &q,
                                             long long row, long long tile,
                                             const float (&values)[4],
                                             const ScaleSlot &slot) {
  float amax = 0.0f;
  for (int i = 0; i < 4; ++i)
    amax = fmaxf(amax, fabsf(values[i]));
  amax = warpMax(amax);
  float scale = fmaxf(amax, kMinAmax) / kE4M3Max;
  int lane = threadIdx.x % kWarpSize;
  uchar4 codes =
      make_uchar4(toE4M3(values[0] / scale), toE4M3(values[1] / scale),
                  toE4M3(values[2] / scale), toE4M3(values[3] / scale));
  long long column = tile * kScaleBlock + lane * 4;
  if (column < q.cols)
    *reinterpret_cast<uchar4 *>(pointer<unsigned char>(q.values) +
                                row * q.cols + column) = codes;
  if (lane == 0 && slot.base >= 0)
    pointer<float>(q.scales)[slot.base + tile * slot.stride] = scale;
}

/// The (row, first tile) of this warp's run in a rows × runs grid of warps;
/// false past the end.
__device__ __forceinline__ bool quantizeRun(long long rows, long long cols,
                                            long long &row,
                                            long long &firstTile) {
  long long runs =
      (scaleTiles(cols) + kQuantizeRunTiles - 1) / kQuantizeRunTiles;
  long long item =
      (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) /
      kWarpSize;
  if (item >= rows * runs)
    return false;
  row = item / runs;
  firstTile = item % runs * kQuantizeRunTiles;
  return true;
}

} // namespace kiln::cuda::kernels

#endif // KILN_CUDA_KERNELS_COMMON_CUH
