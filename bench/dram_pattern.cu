// Does the weights' layout cost the M <= 128 GEMMs HBM bandwidth?
//
// Those kernels stream the [N, K] weight matrix one 64-row stripe per SM,
// 128 K-bytes at a time: a TMA box is 64 pieces of 128 B, each K bytes
// apart, so every piece opens its own DRAM page. This benchmark reads the
// same bytes the same way (one block per 64-row stripe, one 8 KB "box" per
// step, DEPTH boxes in flight, so the GEMM's ring), once from the row-major
// layout and once from a layout that stores each box contiguously (what a
// load-time repacking of the checkpoint would give), timed like
// kiln-gemm-check (per-launch events, inputs rotating over 4x the L2).
// Equal times mean the pattern is not what keeps those kernels from the
// streaming floor of bench/hbm_floor.cu.
//
// Build and run on the GPU machine:
//   nvcc -O3 -arch=sm_90a -o /tmp/dram_pattern bench/dram_pattern.cu
//   /tmp/dram_pattern [N:K,...]
#include "event_timing.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

constexpr int kRows = 64;      // rows of a stripe (the GEMMs' block_n)
constexpr int kBoxBytes = 128; // K bytes of a box (the GEMMs' block_k)
constexpr int kThreads = kRows * kBoxBytes / 16; // one 16-byte load each

/// How the stripes are laid out and walked.
enum class Layout {
  RowMajor,        // [N, K]: a box is 64 pieces of 128 B, K bytes apart
  BoxContiguous,   // box (b, kb) is 8 KB at (b * K / 128 + kb) * 8 KB
  RowMajorRotated, // row-major, block b starting at box b * boxes / blocks
};

/// Block b reads rows [64b, 64b + 64) of a [N, K] byte matrix box by box,
/// DEPTH boxes in flight, laid out and walked as `layout` says. With `a`,
/// each step also reads box kb of a 64 x K activation matrix every block
/// shares (the GEMM's A, from L2).
template <int DEPTH>
__global__ void __launch_bounds__(kThreads)
    readStripes(const int4 *__restrict__ w, const int4 *__restrict__ a, int K,
                Layout layout, int *sink) {
  extern __shared__ char oneBlockPerSM[];
  int boxes = K / kBoxBytes;
  int row = threadIdx.x / (kBoxBytes / 16), piece = threadIdx.x % 8;
  size_t rowMajor = (size_t(blockIdx.x) * kRows + row) * (K / 16) + piece;
  size_t boxMajor = size_t(blockIdx.x) * boxes * (kThreads) + threadIdx.x;
  int first = layout == Layout::RowMajorRotated
                  ? int(int64_t(blockIdx.x) * boxes / gridDim.x)
                  : 0;
  int acc = 0;
  for (int kb = 0; kb < boxes; kb += DEPTH) {
    int4 v[DEPTH];
    int box[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
      box[d] = (first + kb + d) % boxes;
      size_t at = layout == Layout::BoxContiguous
                      ? boxMajor + size_t(box[d]) * kThreads
                      : rowMajor + size_t(box[d]) * (kBoxBytes / 16);
      v[d] = kb + d < boxes ? __ldcs(w + at) : make_int4(0, 0, 0, 0);
    }
    int4 x[DEPTH];
    if (a) { // the activations' box, which every block reads: L2 after the
             // first
#pragma unroll
      for (int d = 0; d < DEPTH; ++d)
        x[d] = kb + d < boxes
                   ? __ldg(a + size_t(box[d]) * kThreads + threadIdx.x)
                   : make_int4(0, 0, 0, 0);
#pragma unroll
      for (int d = 0; d < DEPTH; ++d)
        acc ^= x[d].y;
    }
#pragma unroll
    for (int d = 0; d < DEPTH; ++d)
      acc ^= v[d].x ^ v[d].w;
  }
  if (acc == 0x7fffffff)
    *sink = acc + oneBlockPerSM[0]; // practically never: keeps the loads
}

int main(int argc, char **argv) {
  std::string list = argc > 1 ? argv[1] : "7168:16384,7168:2048,2112:7168";
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  int *sink;
  CHECK(cudaMalloc(&sink, sizeof(int)));
  const int runs = 50;
  // More than half an SM's shared memory: one block per SM, as the GEMMs.
  const int smem = 120 * 1024;
  CHECK(cudaFuncSetAttribute(
      readStripes<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  CHECK(cudaFuncSetAttribute(
      readStripes<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  std::printf(
      "| N | K | weight MB | boxes in flight | layout | µs | weight GB/s |\n");
  std::printf("| ---: | ---: | ---: | ---: | --- | ---: | ---: |\n");
  for (const std::string &item : splitList(list)) {
    int N = std::atoi(item.c_str());
    int K = std::atoi(item.c_str() + item.find(':') + 1);
    if (N % kRows || K % kBoxBytes) {
      std::fprintf(stderr,
                   "dram_pattern: %s: N must be a multiple of %d and "
                   "K of %d\n",
                   item.c_str(), kRows, kBoxBytes);
      return 1;
    }
    size_t bytes = size_t(N) * K;
    size_t sets = setsBeyondL2(prop, bytes);
    std::vector<int4 *> ins(sets), acts(sets);
    for (size_t s = 0; s < sets; ++s) {
      CHECK(cudaMalloc(&ins[s], bytes));
      CHECK(cudaMemset(ins[s], int(s), bytes));
      CHECK(cudaMalloc(&acts[s], size_t(kRows) * K));
      CHECK(cudaMemset(acts[s], int(s), size_t(kRows) * K));
    }
    for (int depth : {8, 16}) {
      for (int variant = 0; variant < 6; ++variant) {
        Layout layout = Layout(variant % 3);
        bool withA = variant >= 3;
        auto launch = [&](int r) {
          const int4 *w = ins[size_t(r) % sets];
          const int4 *a = withA ? acts[size_t(r) % sets] : nullptr;
          if (depth == 8)
            readStripes<8>
                <<<N / kRows, kThreads, smem, stream>>>(w, a, K, layout, sink);
          else
            readStripes<16>
                <<<N / kRows, kThreads, smem, stream>>>(w, a, K, layout, sink);
        };
        double us = medianMicroseconds(launch, runs, stream);
        const char *names[] = {"row-major", "box-contiguous",
                               "row-major, K order rotated per block"};
        std::printf("| %d | %d | %.1f | %d | %s%s | %.1f | %.0f |\n", N, K,
                    bytes / 1e6, depth, names[variant % 3],
                    withA ? " + A from L2" : "", us, bytes / us / 1e3);
      }
    }
    for (size_t s = 0; s < sets; ++s) {
      CHECK(cudaFree(ins[s]));
      CHECK(cudaFree(acts[s]));
    }
  }
  return 0;
}
