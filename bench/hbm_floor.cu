// The floor under a small memory-bound kernel on this GPU, timed the way
// kiln-gemm-check times a GEMM (per-launch CUDA events, launches queued
// behind a spinning kernel, inputs rotating over 4x the L2): an empty
// launch, an empty launch shaped like a GEMM kernel (one block of 384
// threads and ~220 KB of shared memory per SM), and a streaming read of
// N bytes plus a write of W bytes by plain vector loads. The GEMMs at
// M <= 128 read their weights once, so this is what "memory-bound" can
// reach at their sizes (compiler/docs/gemm-kernels.md "Version 10").
//
// Build and run on the GPU machine:
//   nvcc -O3 -arch=sm_90a -o /tmp/hbm_floor bench/hbm_floor.cu
//   /tmp/hbm_floor [READ_MB[:WRITE_MB],...]
#include "event_timing.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

__global__ void empty() {}

__global__ void emptyWithSharedMemory() {
  extern __shared__ char shared[];
  if (threadIdx.x == 1024)
    shared[0] = 0; // never: keeps the allocation
}

/// Reads `n16` 16-byte words four at a time per thread (independent loads
/// in flight), streaming (evict-first), and writes `w16` words of zeros.
__global__ void streamBytes(const int4 *__restrict__ in, size_t n16, int4 *out,
                            size_t w16, int *sink) {
  size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int acc = 0;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    int4 a = __ldcs(in + i), b = __ldcs(in + i + stride),
         c = __ldcs(in + i + 2 * stride), d = __ldcs(in + i + 3 * stride);
    acc ^= a.x ^ b.y ^ c.z ^ d.w;
  }
  for (; i < n16; i += stride)
    acc ^= __ldcs(in + i).x;
  for (size_t j = size_t(blockIdx.x) * blockDim.x + threadIdx.x; j < w16;
       j += stride)
    __stcs(out + j, make_int4(0, 0, 0, 0));
  if (acc == 0x7fffffff)
    *sink = acc; // practically never: keeps the loads
}

int main(int argc, char **argv) {
  std::string list = argc > 1 ? argv[1]
                              : "4.2:4.2,15.1:0.3,16.8:4.2,29.4:0.5,37.7:3.1,"
                                "117.4:0.9,235:0";
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  int sms = prop.multiProcessorCount;
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  const int runs = 50;
  std::printf("hbm_floor on %s, %d SMs, %d MiB L2\n\n", prop.name, sms,
              prop.l2CacheSize >> 20);

  double emptyUs = medianMicroseconds(
      [&](int) { empty<<<1, 32, 0, stream>>>(); }, runs, stream);
  int smem = 220 * 1024;
  CHECK(cudaFuncSetAttribute(emptyWithSharedMemory,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             smem));
  double gemmShapedUs = medianMicroseconds(
      [&](int) { emptyWithSharedMemory<<<sms, 384, smem, stream>>>(); }, runs,
      stream);
  std::printf("| launch | µs |\n| --- | ---: |\n");
  std::printf("| empty, 1 block of 32 threads | %.1f |\n", emptyUs);
  std::printf("| empty, %d blocks of 384 threads, %d KB shared memory | %.1f "
              "|\n\n",
              sms, smem / 1024, gemmShapedUs);

  std::printf("| read MB | write MB | µs | GB/s (read + write) | µs over "
              "the empty GEMM-shaped launch |\n| ---: | ---: | ---: | ---: "
              "| ---: |\n");
  int *sink;
  CHECK(cudaMalloc(&sink, sizeof(int)));
  for (const std::string &item : splitList(list)) {
    double readMB = std::atof(item.c_str());
    size_t colon = item.find(':');
    double writeMB =
        colon == std::string::npos ? 0 : std::atof(item.c_str() + colon + 1);
    size_t readBytes = size_t(readMB * 1e6) / 64 * 64;
    size_t writeBytes = size_t(writeMB * 1e6) / 64 * 64;
    size_t sets = setsBeyondL2(prop, readBytes);
    std::vector<int4 *> ins(sets), outs(sets);
    for (size_t s = 0; s < sets; ++s) {
      CHECK(cudaMalloc(&ins[s], readBytes));
      CHECK(cudaMemset(ins[s], s, readBytes));
      CHECK(cudaMalloc(&outs[s], std::max<size_t>(writeBytes, 16)));
    }
    auto launch = [&](int r) {
      size_t s = size_t(r) % sets;
      streamBytes<<<sms * 4, 512, 0, stream>>>(ins[s], readBytes / 16, outs[s],
                                               writeBytes / 16, sink);
    };
    double us = medianMicroseconds(launch, runs, stream);
    CHECK(cudaGetLastError());
    std::printf("| %.1f | %.1f | %.1f | %.0f | %.1f |\n", readMB, writeMB, us,
                (readBytes + writeBytes) / us / 1e3, us - gemmShapedUs);
    for (size_t s = 0; s < sets; ++s) {
      CHECK(cudaFree(ins[s]));
      CHECK(cudaFree(outs[s]));
    }
  }
  return 0;
}
