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

/// Float index of the scale of (row, tile) in a quantized output: transposed
/// [cols/128][rows], or grouped (artifact.md "moe_dispatch"): group g's
/// scales are [cols/128][count_g] from (cols/128) * offsets[g]. -1 for a row
/// outside every group (it has no scale to write).
__device__ __forceinline__ long long scaleIndex(const QuantizedRef &q,
                                                long long row, long long tile) {
  if (!q.groupOffsets)
    return tile * q.rows + row;
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
    return -1;
  return scaleTiles(q.cols) * begin + tile * (end - begin) + (row - begin);
}

/// Quantizes one 1×128 tile held by a warp, four consecutive columns per
/// lane (`values[i]` is column tile * 128 + lane * 4 + i), and stores the
/// codes and the scale. In a partial last tile, lanes past `cols` (cols is a
/// multiple of 4) hold zeros, which leave the amax alone, and store nothing.
__device__ __forceinline__ void quantizeTile(const QuantizedRef &q,
                                             long long row, long long tile,
                                             const float (&values)[4]) {
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
  if (lane == 0) {
    long long index = scaleIndex(q, row, tile);
    if (index >= 0)
      pointer<float>(q.scales)[index] = scale;
  }
}

} // namespace kiln::cuda::kernels

#endif // KILN_CUDA_KERNELS_COMMON_CUH
