// What the standalone CUDA benchmarks in bench/ share: a CUDA call check that
// names the file, and kiln-gemm-check's way of timing a launch (per-launch
// CUDA events, the launches queued behind a spinning kernel so that the
// host's enqueueing is not timed, the median over the runs).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#define CHECK(call)                                                            \
  do {                                                                         \
    cudaError_t status = (call);                                               \
    if (status != cudaSuccess) {                                               \
      std::fprintf(stderr, "%s: %s failed: %s\n", __FILE__, #call,             \
                   cudaGetErrorString(status));                                \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

__global__ void spin(long long cycles) {
  long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

/// The median µs of `runs` launches, each between two events, after 10
/// warm-up launches; `launch(i)` gets the launch's index (inputs can rotate
/// with it).
template <typename Launch>
double medianMicroseconds(Launch launch, int runs, cudaStream_t stream) {
  for (int w = 0; w < 10; ++w)
    launch(w);
  std::vector<cudaEvent_t> starts(runs), stops(runs);
  for (int r = 0; r < runs; ++r) {
    CHECK(cudaEventCreate(&starts[r]));
    CHECK(cudaEventCreate(&stops[r]));
  }
  spin<<<1, 1, 0, stream>>>(2'000'000LL + 30'000LL * runs);
  for (int r = 0; r < runs; ++r) {
    CHECK(cudaEventRecord(starts[r], stream));
    launch(10 + r);
    CHECK(cudaEventRecord(stops[r], stream));
  }
  CHECK(cudaStreamSynchronize(stream));
  CHECK(cudaGetLastError());
  std::vector<double> us;
  for (int r = 0; r < runs; ++r) {
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, starts[r], stops[r]));
    us.push_back(1000.0 * ms);
    CHECK(cudaEventDestroy(starts[r]));
    CHECK(cudaEventDestroy(stops[r]));
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

/// The items of a comma-separated command-line list ("a,b,c").
inline std::vector<std::string> splitList(const std::string &list) {
  std::vector<std::string> items;
  size_t pos = 0;
  while (pos < list.size()) {
    size_t end = list.find(',', pos);
    items.push_back(list.substr(
        pos, end == std::string::npos ? std::string::npos : end - pos));
    pos = end == std::string::npos ? list.size() : end + 1;
  }
  return items;
}

/// How many input sets of `bytes` each a benchmark rotates over so that
/// every launch reads HBM, not L2: enough to cover 4x the L2, at least 2.
inline size_t setsBeyondL2(const cudaDeviceProp &prop, size_t bytes) {
  return std::max<size_t>(2,
                          (4 * size_t(prop.l2CacheSize) + bytes - 1) / bytes);
}
