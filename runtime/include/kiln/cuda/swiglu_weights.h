//===- kiln/cuda/swiglu_weights.h - gate/up weights for SwiGLU GEMMs ------===//
//
// The grouped GEMM kernels with the SwiGLU epilogue (compiler/docs/
// gemm-abi.md "SwiGLU epilogue") read each expert's gate/up weight with the
// gate and up rows interleaved in blocks of 64: rows [128t, 128t + 64) of
// the kernel's weight are gate rows [64t, 64t + 64) and rows
// [128t + 64, 128t + 128) the up rows of the same intermediate columns, so
// that one 128-wide output tile holds both halves of 64 SwiGLU outputs.
// The checkpoint stacks them [gate (I rows); up (I rows)] per expert; these
// functions rearrange its rows. The weight scales keep the checkpoint's
// layout ([2I/128][K/128] per expert, gate blocks first): the kernel picks
// its two blocks per tile itself.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_SWIGLU_WEIGHTS_H
#define KILN_CUDA_SWIGLU_WEIGHTS_H

#include "kiln/cuda/driver.h"

#include <cstddef>
#include <cstdint>

namespace kiln::cuda {

/// Rows of gate (then of up) per 128-row tile of the interleaved weight.
constexpr int64_t kSwigluInterleaveRows = 64;

/// The row of the interleaved weight that holds row `row` of one expert's
/// checkpoint gate/up weight (`row` < 2 · `intermediate`).
int64_t swigluInterleavedRow(int64_t row, int64_t intermediate);

/// Interleaves `experts` stacked gate/up weights of 2 · `intermediate` rows
/// of `rowBytes` bytes each, host memory to host memory (`src` and `dst`
/// must not overlap). Throws kiln::Error unless `intermediate` is a
/// positive multiple of 64.
void interleaveGateUp(const uint8_t *src, uint8_t *dst, int64_t experts,
                      int64_t intermediate, size_t rowBytes);

/// The same in device memory, as asynchronous device-to-device copies of
/// 64-row blocks on `stream`.
void interleaveGateUpAsync(CUdeviceptr src, CUdeviceptr dst, int64_t experts,
                           int64_t intermediate, size_t rowBytes,
                           CUstream stream);

/// Device to device on `stream`, from separate gate and up stacks: block j
/// of `gate` goes to block 2j of `dst` and block j of `up` to block 2j + 1,
/// for `blocks` blocks of `blockBytes` each. With blocks of 64 rows this
/// interleaves the stacked gate and up weights of the grouped GEMM ([E·I, K]
/// each, expert e at row e·I) into the kernel's [E·2I, K]; with blocks of
/// one expert's scales ([I/128][K/128]), it stacks each expert's gate then
/// up scales, the layout the kernel reads.
void interleaveBlocksAsync(CUdeviceptr gate, CUdeviceptr up, CUdeviceptr dst,
                           int64_t blocks, size_t blockBytes, CUstream stream);

} // namespace kiln::cuda

#endif // KILN_CUDA_SWIGLU_WEIGHTS_H
