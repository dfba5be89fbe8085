// What a launch costs before and after a GEMM kernel's work, timed the way
// kiln-gemm-check times a GEMM (per-launch CUDA events, launches queued
// behind a spinning kernel): an empty kernel with no parameters, with as many
// bytes of __grid_constant__ parameters as a Kiln GEMM kernel passes (five
// 128-byte tensor maps and the rest: ~680 B) and more, in 2-block clusters,
// and with the GEMM kernels' prologue (barrier setup, a block-wide barrier,
// setmaxnreg) in 132 blocks of 384 threads with ~210 KB of shared memory.
// The question (compiler/docs/gemm-kernels.md "Session 17"): which part of
// the ~1 us of fixed cost our M <= 128 kernels carry beyond a streaming
// kernel's is the launch's.
//
// Build and run on the GPU machine:
//   nvcc -O3 -gencode arch=compute_90a,code=sm_90a \
//     -o /tmp/launch_cost bench/launch_cost.cu
//   /tmp/launch_cost
#include "event_timing.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

__global__ void empty() {}

/// `Bytes` of parameters, read by no thread in practice (thread 1024 does
/// not exist) so that the compiler keeps them.
template <int Bytes> struct alignas(64) Params { unsigned char bytes[Bytes]; };

template <int Bytes>
__global__ void emptyWithParams(const __grid_constant__ Params<Bytes> params,
                                int *sink) {
  if (threadIdx.x == 1024)
    *sink = params.bytes[blockIdx.x % Bytes];
}

__global__ void __cluster_dims__(2, 1, 1) emptyInClusters() {}

__global__ void emptyWithSharedMemory() {
  extern __shared__ char shared[];
  if (threadIdx.x == 1024)
    shared[0] = 0; // never: keeps the allocation
}

/// The prologue of Kiln's GEMM kernels without their work: thread 0 sets up
/// eight mbarriers in shared memory and fences them, the block meets at a
/// barrier, the first warpgroup gives registers up and the others take them
/// (setmaxnreg), as the producer and the consumers do.
__global__ void __launch_bounds__(384, 1) gemmPrologue() {
  extern __shared__ __align__(1024) unsigned long long ring[];
  if (threadIdx.x == 0) {
    for (int s = 0; s < 8; ++s) {
      unsigned address =
          static_cast<unsigned>(__cvta_generic_to_shared(ring + s));
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(address));
    }
    asm volatile("fence.mbarrier_init.release.cluster;");
  }
  __syncthreads();
  if (threadIdx.x < 128)
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
  else
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
}

int main() {
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  int *sink;
  CHECK(cudaMalloc(&sink, sizeof(int)));
  constexpr int kRuns = 200;
  constexpr int kSharedBytes = 210 * 1024;
  for (const void *kernel :
       {reinterpret_cast<const void *>(gemmPrologue),
        reinterpret_cast<const void *>(emptyWithSharedMemory)})
    CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  Params<128> p128{};
  Params<704> p704{};
  Params<2048> p2048{};
  std::printf(
      "| launch | blocks | µs (median of %d) |\n| --- | ---: | ---: |\n",
      kRuns);
  auto row = [&](const char *what, int blocks, auto launch) {
    // Three passes, reported side by side, to show the spread.
    std::printf("| %s | %d |", what, blocks);
    for (int pass = 0; pass < 3; ++pass)
      std::printf(" %.2f", medianMicroseconds(launch, kRuns, stream));
    std::printf(" |\n");
  };
  for (int blocks : {1, 132}) {
    row("empty, no parameters", blocks,
        [&](int) { empty<<<blocks, 384, 0, stream>>>(); });
    row("empty, 128 B of parameters", blocks, [&](int) {
      emptyWithParams<128><<<blocks, 384, 0, stream>>>(p128, sink);
    });
    row("empty, 704 B of parameters (a Kiln GEMM's)", blocks, [&](int) {
      emptyWithParams<704><<<blocks, 384, 0, stream>>>(p704, sink);
    });
    row("empty, 2048 B of parameters", blocks, [&](int) {
      emptyWithParams<2048><<<blocks, 384, 0, stream>>>(p2048, sink);
    });
  }
  row("empty, 2-block clusters", 132,
      [&](int) { emptyInClusters<<<132, 384, 0, stream>>>(); });
  row("GEMM prologue, 210 KB shared memory", 132,
      [&](int) { gemmPrologue<<<132, 384, kSharedBytes, stream>>>(); });
  row("empty, 210 KB shared memory", 132, [&](int) {
    emptyWithSharedMemory<<<132, 384, kSharedBytes, stream>>>();
  });
  CHECK(cudaFree(sink));
  return 0;
}
