// How many thread-block clusters of each size the GPU keeps resident at once
// for a GEMM-shaped block (cudaOccupancyMaxActiveClusters): the question a
// split-K reduction through distributed shared memory asks before it puts a
// tile's S slices in one cluster of S blocks, since every cluster of a
// persistent launch must be resident together (compiler/docs/gemm-kernels.md
// "Session 16": the 64 x 2112 x 7168 decode shape needs 33 clusters of 4).
//
// Build and run on the GPU machine:
//   nvcc -O3 -arch=sm_90a -o /tmp/cluster_occupancy bench/cluster_occupancy.cu
//   /tmp/cluster_occupancy [THREADS [SHARED_KB]]   (default 256 and 150)
#include "event_timing.cuh"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

__global__ void gemmShaped() {}

int main(int argc, char **argv) {
  int threads = argc > 1 ? std::atoi(argv[1]) : 256;
  int sharedKb = argc > 2 ? std::atoi(argv[2]) : 150;
  if (threads < 32 || threads > 1024 || sharedKb < 0 || sharedKb > 227) {
    std::fprintf(stderr, "usage: cluster_occupancy [THREADS (32-1024) "
                         "[SHARED_KB (0-227)]]\n");
    return 2;
  }
  cudaDeviceProp properties;
  CHECK(cudaGetDeviceProperties(&properties, 0));
  size_t shared = size_t(sharedKb) * 1024;
  CHECK(cudaFuncSetAttribute(
      gemmShaped, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
  CHECK(cudaFuncSetAttribute(
      gemmShaped, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  std::printf("%s, %d SMs; blocks of %d threads and %d KB of shared memory\n\n",
              properties.name, properties.multiProcessorCount, threads,
              sharedKb);
  std::printf(
      "| cluster size | resident clusters | blocks | SMs left idle |\n");
  std::printf("| ---: | ---: | ---: | ---: |\n");
  for (int size : {1, 2, 4, 8, 16}) {
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = size;
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(size * 1024, 1, 1);
    config.blockDim = dim3(threads, 1, 1);
    config.dynamicSmemBytes = shared;
    config.attrs = &attribute;
    config.numAttrs = 1;
    int clusters = 0;
    cudaError_t status =
        cudaOccupancyMaxActiveClusters(&clusters, gemmShaped, &config);
    if (status != cudaSuccess) {
      std::printf("| %d | %s | - | - |\n", size, cudaGetErrorString(status));
      cudaGetLastError();
      continue;
    }
    std::printf("| %d | %d | %d | %d |\n", size, clusters, clusters * size,
                properties.multiProcessorCount - clusters * size);
  }
  return 0;
}
