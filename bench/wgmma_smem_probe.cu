// What bounds a 128x256 FP8 K block on Hopper when no data has to arrive:
// the tensor pipe, shared-memory bandwidth, or the consumers' wait-promote
// chain (compiler/docs/gemm-kernels.md "Session 22").
//
// One block per SM, three warpgroups, like Kiln's 128x256 GEMM kernel
// (m128n256s4c2): two consumers of 64 rows each issue, per K block of 128,
// two 128-column halves of four wgmma m64n128k32 e4m3 into one 64-register
// partial, wait for each half and (PROMOTE) add it into a 128-register
// accumulator. Operands sit in a 4-stage ring of 48 KB stages that is never
// refilled from memory, so nothing waits for data. Variants:
//   rs       A from registers (loaded once per K block with ldmatrix, shared
//            by both halves) instead of shared memory: 40 instead of 48 KB
//            of shared-memory reads per consumer and K block
//   turns    the consumers take turns at the issue (named barrier 3)
//   write=1  the third warpgroup stores 48 KB per K block into the stage two
//            ahead with st.shared (the bytes TMA writes in the real kernel)
//   write=2  the same bytes with bulk copies from an L2-resident buffer
//   write=3  the same in 2-block clusters, each block copying half of the
//            stage and multicasting it to both (the real kernel's B)
// Prints cycles per K block (median over the blocks) and that as a fraction
// of the tensor peak (128 x 256 x 128 MACs at 4096 FP8 MACs per cycle).
//
// Build and run on the GPU machine:
//   nvcc -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/wgmma_smem_probe \
//     bench/wgmma_smem_probe.cu && /tmp/wgmma_smem_probe [K_BLOCKS]
#include "event_timing.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

constexpr int kStages = 4;
constexpr int kStageBytes = 48 * 1024; // A: 128 x 128, B: 256 x 128 (e4m3)
constexpr int kBOffset = 16 * 1024;
constexpr int kBarrierOffset = kStages * kStageBytes;
constexpr int kSharedBytes = kBarrierOffset + 64 + 1024;
constexpr int kSourceBytes = 4 << 20; // the bulk copies' L2-resident source

// K-major, 128-byte-swizzled matrix descriptor (stride 1024 bytes per 8 rows).
__device__ uint64_t descriptor(uint32_t address) {
  return uint64_t((address & 0x3ffff) >> 4) | (1ull << 16) | (64ull << 32) |
         (1ull << 62);
}

__device__ uint32_t sharedAddress(const void *p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// The wgmma both variants issue, and its 64 partial registers as asm
// operands %0-%63.
#define WGMMA_OP "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3"
#define PARTIAL_REGS                                                           \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%"   \
  "20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%"   \
  "38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%"   \
  "56,%57,%58,%59,%60,%61,%62,%63}"
#define PARTIAL_OPERANDS(d)                                                    \
  "+f"((d)[0]), "+f"((d)[1]), "+f"((d)[2]), "+f"((d)[3]), "+f"((d)[4]),        \
      "+f"((d)[5]), "+f"((d)[6]), "+f"((d)[7]), "+f"((d)[8]), "+f"((d)[9]),    \
      "+f"((d)[10]), "+f"((d)[11]), "+f"((d)[12]), "+f"((d)[13]),              \
      "+f"((d)[14]), "+f"((d)[15]), "+f"((d)[16]), "+f"((d)[17]),              \
      "+f"((d)[18]), "+f"((d)[19]), "+f"((d)[20]), "+f"((d)[21]),              \
      "+f"((d)[22]), "+f"((d)[23]), "+f"((d)[24]), "+f"((d)[25]),              \
      "+f"((d)[26]), "+f"((d)[27]), "+f"((d)[28]), "+f"((d)[29]),              \
      "+f"((d)[30]), "+f"((d)[31]), "+f"((d)[32]), "+f"((d)[33]),              \
      "+f"((d)[34]), "+f"((d)[35]), "+f"((d)[36]), "+f"((d)[37]),              \
      "+f"((d)[38]), "+f"((d)[39]), "+f"((d)[40]), "+f"((d)[41]),              \
      "+f"((d)[42]), "+f"((d)[43]), "+f"((d)[44]), "+f"((d)[45]),              \
      "+f"((d)[46]), "+f"((d)[47]), "+f"((d)[48]), "+f"((d)[49]),              \
      "+f"((d)[50]), "+f"((d)[51]), "+f"((d)[52]), "+f"((d)[53]),              \
      "+f"((d)[54]), "+f"((d)[55]), "+f"((d)[56]), "+f"((d)[57]),              \
      "+f"((d)[58]), "+f"((d)[59]), "+f"((d)[60]), "+f"((d)[61]),              \
      "+f"((d)[62]), "+f"((d)[63])

// Four k32 wgmmas of one 128-column half into d (the first with scale-d 0).
template <bool RS>
__device__ void issueHalf(float (&d)[64], uint64_t descA, uint64_t descB,
                          const uint32_t (&a)[4][4]) {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    uint64_t b = descB + 2 * k;
    int scaleD = k ? 1 : 0;
    if constexpr (RS) {
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %69, 0;\n" WGMMA_OP
                   " " PARTIAL_REGS ", {%64,%65,%66,%67}, %68, p, 1, 1; }"
                   : PARTIAL_OPERANDS(d)
                   : "r"(a[k][0]), "r"(a[k][1]), "r"(a[k][2]), "r"(a[k][3]),
                     "l"(b), "r"(scaleD));
    } else {
      uint64_t aDesc = descA + 2 * k;
      asm volatile("{ .reg .pred p; setp.ne.b32 p, %66, 0;\n" WGMMA_OP
                   " " PARTIAL_REGS ", %64, %65, p, 1, 1; }"
                   : PARTIAL_OPERANDS(d)
                   : "l"(aDesc), "l"(b), "r"(scaleD));
    }
  }
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

__device__ void waitAll(float (&d)[64]) {
  asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#pragma unroll
  for (int i = 0; i < 64; ++i)
    asm volatile("" : "+f"(d[i]));
}

__device__ void turn(bool mine) {
  asm volatile(
      "{ .reg .pred p; setp.ne.u32 p, %0, 0; @p bar.sync 3, 256; }" ::"r"(
          int(mine)));
}

// The warp's A fragment of one K block (rows 16w..16w+15 of the consumer's
// 64, 128 bytes each, 128-byte swizzle: 16-byte chunk c of row r at c ^ r%8),
// as ldmatrix.x4 gives it: per k32 step, four registers.
__device__ void loadA(uint32_t (&a)[4][4], uint32_t aBase, int lane, int warp) {
  int row = warp * 16 + (lane & 15);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    int chunk = 2 * k + (lane >> 4);
    uint32_t address = aBase + row * 128 + ((chunk ^ (row & 7)) << 4);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(a[k][0]), "=r"(a[k][1]), "=r"(a[k][2]), "=r"(a[k][3])
                 : "r"(address));
  }
}

__device__ void waitParity(uint32_t barrier, uint32_t parity) {
  asm volatile(
      "{ .reg .pred done; wait_%=: mbarrier.try_wait.parity.shared.b64 "
      "done, [%0], %1; @!done bra wait_%=; }" ::"r"(barrier),
      "r"(parity)
      : "memory");
}

__device__ void clusterSync() {
  asm volatile("barrier.cluster.arrive; barrier.cluster.wait;" ::: "memory");
}

__device__ uint32_t clusterRank() {
  uint32_t rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  return rank;
}

// Arrives on the barrier at the same offset in the peer block.
__device__ void arrivePeer(uint32_t barrier) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
               : "=r"(remote)
               : "r"(barrier), "r"(clusterRank() ^ 1));
  asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(remote)
               : "memory");
}

template <bool RS, bool Promote, bool Turns, int Write, int Halves = 2,
          int WriteKB = 48, bool WaitFull = true, bool Swap = false,
          int ChunkKB = 16>
__global__ void __launch_bounds__(384, 1)
    probe(int kBlocks, const uint8_t *source, long long *cycles, float *sink) {
  static_assert(WriteKB % ChunkKB == 0 &&
                    (Write != 3 || WriteKB * 512 % (ChunkKB * 1024) == 0),
                "a stage (a multicast half) is a whole number of copies");
  extern __shared__ __align__(1024) uint8_t smem[];
  int wg = threadIdx.x / 128, lane = threadIdx.x % 32,
      warp = (threadIdx.x / 32) % 4;
  // full[s] at 8 s, empty[s] at 32 + 8 s: a ring as in the GEMM kernel.
  uint32_t barriers = sharedAddress(smem + kBarrierOffset);
  volatile int *progress =
      reinterpret_cast<volatile int *>(smem + kBarrierOffset + 64);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(barriers + 8 * s));
      asm volatile(
          "mbarrier.init.shared.b64 [%0], %1;" ::"r"(barriers + 32 + 8 * s),
          "r"(Write == 3 ? 4 : 2));
    }
    asm volatile("fence.mbarrier_init.release.cluster;");
    *progress = 0;
  }
  __syncthreads();
  if (Write == 3)
    clusterSync(); // the peer's barriers exist before anything lands there
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    // The producer: fills stage r % 4 once both consumers released it.
    for (int r = 0; Write != 0 && r < kBlocks; ++r) {
      int s = r % kStages;
      if (WaitFull) {
        waitParity(barriers + 32 + 8 * s, ((r / kStages) & 1) ^ 1);
      } else {
        // Consumers that do not wait may run phases ahead of an mbarrier's
        // parity: pace the producer by their K block count instead (it
        // writes stage r once both finished block r - 3).
        while (r >= 3 && *progress < 2 * (r - 2))
          __nanosleep(64);
      }
      uint8_t *stage = smem + s * kStageBytes;
      if (Write == 1) {
        uint4 value = make_uint4(r, threadIdx.x, r ^ threadIdx.x, 0x38383838);
        for (int offset = threadIdx.x * 16; offset < WriteKB * 1024;
             offset += 128 * 16)
          *reinterpret_cast<uint4 *>(stage + offset) = value;
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        asm volatile("bar.sync 1, 128;" ::: "memory");
        if (threadIdx.x == 0)
          asm volatile(
              "mbarrier.arrive.shared.b64 _, [%0];" ::"r"(barriers + 8 * s)
              : "memory");
      } else if (Write == 3 && threadIdx.x == 0) {
        int half = WriteKB * 512, rank = int(clusterRank());
        const uint8_t *from = source +
                              (size_t(blockIdx.x / 2) * 7 + r) %
                                  (kSourceBytes / kStageBytes) * kStageBytes +
                              rank * half;
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(
                         barriers + 8 * s),
                     "r"(WriteKB * 1024)
                     : "memory");
        for (int part = 0; part < half / (ChunkKB * 1024); ++part)
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::"
                       "complete_tx::bytes.multicast::cluster [%0], [%1], %2, "
                       "[%3], %4;" ::"r"(sharedAddress(stage + rank * half +
                                                       part * ChunkKB * 1024)),
                       "l"(from + part * ChunkKB * 1024), "n"(ChunkKB * 1024),
                       "r"(barriers + 8 * s), "h"(uint16_t(3))
                       : "memory");
      } else if (threadIdx.x == 0) {
        // Without consumers waiting for it, the producer itself waits for
        // its copies into the stage to land before it arms the stage again.
        if (!WaitFull && r >= kStages)
          waitParity(barriers + 8 * s, ((r / kStages) - 1) & 1);
        const uint8_t *from = source + (size_t(blockIdx.x) * 7 + r) %
                                           (kSourceBytes / kStageBytes) *
                                           kStageBytes;
        asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" ::"r"(
                         barriers + 8 * s),
                     "r"(WriteKB * 1024)
                     : "memory");
        for (int part = 0; part < WriteKB / ChunkKB; ++part)
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::"
                       "complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                           sharedAddress(stage + part * ChunkKB * 1024)),
                       "l"(from + part * ChunkKB * 1024), "n"(ChunkKB * 1024),
                       "r"(barriers + 8 * s)
                       : "memory");
      }
    }
    // Copies still in flight must land before the block may exit.
    for (int r = kBlocks > kStages ? kBlocks - kStages : 0;
         Write == 2 && !WaitFull && threadIdx.x == 0 && r < kBlocks; ++r)
      waitParity(barriers + 8 * (r % kStages), (r / kStages) & 1);
    if (Write == 3)
      clusterSync(); // the peer may still multicast into this block
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  int consumer = wg - 1;
  float acc[128], d[64];
  uint32_t a[4][4];
#pragma unroll
  for (int i = 0; i < 128; ++i)
    acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < 64; ++i)
    d[i] = 0.f;
  float scale0 = 1.0f / (1 + blockIdx.x), scale1 = 0.5f * scale0;
  long long start = clock64();
  for (int kb = 0; kb < kBlocks; ++kb) {
    uint8_t *stage = smem + (kb % kStages) * kStageBytes;
    if (Write && WaitFull)
      waitParity(barriers + 8 * (kb % kStages), (kb / kStages) & 1);
    uint32_t aBase = sharedAddress(stage) + consumer * 64 * 128;
    uint64_t descA = descriptor(aBase);
    uint64_t descB = descriptor(sharedAddress(stage + kBOffset));
    if (RS)
      loadA(a, aBase, lane, warp);
#pragma unroll
    for (int half = 0; half < Halves; ++half) {
      if (Turns)
        turn(consumer == 0);
      // Swap: consumer 1 takes the halves in the other order, so the two
      // read different B rows at the same time.
      int column = Swap && consumer == 1 ? 1 - half : half;
      issueHalf<RS>(d, descA, descB + column * 128 * 128 / 16, a);
      if (Turns)
        turn(consumer == 1);
      waitAll(d);
      if (Promote) {
        float s = half ? scale1 : scale0;
#pragma unroll
        for (int i = 0; i < 64; ++i)
          acc[half * 64 + i] += d[i] * s;
      }
    }
    if (Write && WaitFull && threadIdx.x % 128 == 0) {
      asm volatile("mbarrier.arrive.shared.b64 _, [%0];" ::"r"(
                       barriers + 32 + 8 * (kb % kStages))
                   : "memory");
      if (Write == 3)
        arrivePeer(barriers + 32 + 8 * (kb % kStages));
    }
    if (Write && !WaitFull && threadIdx.x % 128 == 0)
      atomicAdd(const_cast<int *>(progress), 1);
  }
  long long stop = clock64();
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 128; ++i)
    sum += acc[i];
#pragma unroll
  for (int i = 0; i < 64; ++i)
    sum += d[i];
  sink[blockIdx.x * 256 + threadIdx.x - 128] = sum;
  if (threadIdx.x % 128 == 0)
    cycles[blockIdx.x * 2 + consumer] = stop - start;
  if (Write == 3)
    clusterSync();
}

template <bool RS, bool Promote, bool Turns, int Write, int Halves = 2,
          int WriteKB = 48, bool WaitFull = true, bool Swap = false,
          int ChunkKB = 16>
void run(const char *name, int sms, int kBlocks, const uint8_t *source,
         long long *cycles, float *sink) {
  auto kernel = probe<RS, Promote, Turns, Write, Halves, WriteKB, WaitFull,
                      Swap, ChunkKB>;
  CHECK(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes));
  cudaLaunchAttribute cluster;
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = Write == 3 ? 2 : 1;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(Write == 3 ? sms / 2 * 2 : sms);
  config.blockDim = dim3(384);
  config.dynamicSmemBytes = kSharedBytes;
  config.attrs = &cluster;
  config.numAttrs = 1;
  CHECK(cudaLaunchKernelEx(&config, kernel, kBlocks / 8, source, cycles,
                           sink)); // warm-up
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaLaunchKernelEx(&config, kernel, kBlocks, source, cycles, sink));
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  sms = config.gridDim.x;
  std::vector<long long> host(sms * 2);
  CHECK(cudaMemcpy(host.data(), cycles, host.size() * sizeof(long long),
                   cudaMemcpyDeviceToHost));
  std::sort(host.begin(), host.end());
  double median = double(host[host.size() / 2]) / kBlocks;
  double worst = double(host.back()) / kBlocks;
  double ideal = 128.0 * 128 * Halves * 128 / 4096;
  std::printf("| %s | %.0f | %.0f | %.1f%% |\n", name, median, worst,
              100.0 * ideal / median);
  std::fflush(stdout);
}

} // namespace

int main(int argc, char **argv) {
  int kBlocks = argc > 1 ? std::atoi(argv[1]) : 4000;
  if (kBlocks < 8) {
    std::fprintf(stderr,
                 "usage: wgmma_smem_probe [K_BLOCKS (>= 8) [BLOCKS]]\n");
    return 2;
  }
  cudaDeviceProp properties;
  CHECK(cudaGetDeviceProperties(&properties, 0));
  // A grid smaller than the SM count (second argument) tells a per-SM limit
  // from a shared one (L2, the crossbar).
  int sms = properties.multiProcessorCount;
  if (argc > 2)
    sms = std::max(1, std::min(sms, std::atoi(argv[2])));
  uint8_t *source;
  long long *cycles;
  float *sink;
  CHECK(cudaMalloc(&source, kSourceBytes));
  CHECK(cudaMemset(source, 0x38, kSourceBytes));
  CHECK(cudaMalloc(&cycles, sms * 2 * sizeof(long long)));
  CHECK(cudaMalloc(&sink, sms * 256 * sizeof(float)));
  std::printf("%s, %d blocks (one per SM), %d K blocks of 128 x 256 x 128 "
              "per block\n\n",
              properties.name, sms, kBlocks);
  std::printf("| variant | cycles per K block (median) | slowest block | "
              "tensor peak |\n| --- | ---: | ---: | ---: |\n");
  run<false, true, false, 0>("SS", sms, kBlocks, source, cycles, sink);
  for (int repeat = 0; repeat < 2; ++repeat) {
    run<false, true, false, 2>("SS, 48 KB bulk copies per K block", sms,
                               kBlocks, source, cycles, sink);
    run<false, true, false, 3, 2, 48, true, false, 8>(
        "SS, 48 KB per K block, multicast halves", sms, kBlocks, source, cycles,
        sink);
    run<false, true, false, 2, 2, 32>("SS, 32 KB bulk copies", sms, kBlocks,
                                      source, cycles, sink);
    run<false, true, false, 3, 2, 32, true, false, 8>(
        "SS, 32 KB, multicast halves", sms, kBlocks, source, cycles, sink);
    run<false, true, false, 2, 2, 40, true, false, 8>(
        "SS, 40 KB in 8 KB bulk copies", sms, kBlocks, source, cycles, sink);
  }
  return 0;
}
