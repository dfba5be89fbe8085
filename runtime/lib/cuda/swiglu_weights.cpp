//===- swiglu_weights.cpp - gate/up weights for SwiGLU GEMMs --------------===//
//
// Row rearrangement of kiln/cuda/swiglu_weights.h: block b of
// kSwigluInterleaveRows rows of an expert's checkpoint weight (gate blocks
// 0 .. I/64 − 1, then up blocks) goes to block 2b (gate) or
// 2(b − I/64) + 1 (up) of the interleaved one.
//
//===----------------------------------------------------------------------===//

#include "kiln/cuda/swiglu_weights.h"

#include "kiln/error.h"

#include <cstring>
#include <string>

namespace kiln::cuda {

namespace {

void checkIntermediate(int64_t experts, int64_t intermediate) {
  if (experts < 0 || intermediate < 1 ||
      intermediate % kSwigluInterleaveRows != 0)
    throw Error("interleaving gate/up weights: the intermediate size " +
                std::to_string(intermediate) +
                " must be a positive multiple of " +
                std::to_string(kSwigluInterleaveRows) + " and the experts (" +
                std::to_string(experts) + ") not negative");
}

/// Calls `copy(srcBlock, dstBlock)` for every 64-row block of the stacked
/// weights, as block indices from the start of the buffer.
template <typename Copy>
void forEachBlock(int64_t experts, int64_t intermediate, Copy copy) {
  int64_t half = intermediate / kSwigluInterleaveRows;
  for (int64_t expert = 0; expert < experts; ++expert) {
    int64_t base = expert * 2 * half;
    for (int64_t block = 0; block < half; ++block) {
      copy(base + block, base + 2 * block);
      copy(base + half + block, base + 2 * block + 1);
    }
  }
}

} // namespace

int64_t swigluInterleavedRow(int64_t row, int64_t intermediate) {
  int64_t up = row >= intermediate ? 1 : 0;
  int64_t inHalf = row - up * intermediate;
  return inHalf / kSwigluInterleaveRows * 2 * kSwigluInterleaveRows +
         up * kSwigluInterleaveRows + inHalf % kSwigluInterleaveRows;
}

void interleaveGateUp(const uint8_t *src, uint8_t *dst, int64_t experts,
                      int64_t intermediate, size_t rowBytes) {
  checkIntermediate(experts, intermediate);
  size_t blockBytes = kSwigluInterleaveRows * rowBytes;
  forEachBlock(experts, intermediate, [&](int64_t from, int64_t to) {
    std::memcpy(dst + to * blockBytes, src + from * blockBytes, blockBytes);
  });
}

void interleaveGateUpAsync(CUdeviceptr src, CUdeviceptr dst, int64_t experts,
                           int64_t intermediate, size_t rowBytes,
                           CUstream stream) {
  checkIntermediate(experts, intermediate);
  size_t blockBytes = kSwigluInterleaveRows * rowBytes;
  forEachBlock(experts, intermediate, [&](int64_t from, int64_t to) {
    KILN_CU("interleaving gate/up weights", cuMemcpyDtoDAsync,
            dst + to * blockBytes, src + from * blockBytes, blockBytes, stream);
  });
}

void interleaveBlocksAsync(CUdeviceptr gate, CUdeviceptr up, CUdeviceptr dst,
                           int64_t blocks, size_t blockBytes, CUstream stream) {
  for (int64_t block = 0; block < blocks; ++block) {
    KILN_CU("interleaving gate/up weights", cuMemcpyDtoDAsync,
            dst + 2 * block * blockBytes, gate + block * blockBytes, blockBytes,
            stream);
    KILN_CU("interleaving gate/up weights", cuMemcpyDtoDAsync,
            dst + (2 * block + 1) * blockBytes, up + block * blockBytes,
            blockBytes, stream);
  }
}

} // namespace kiln::cuda
