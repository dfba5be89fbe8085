//===- kiln-ep-check.cpp - the expert-parallel exchange across processes --===//
//
// One process per GPU (ranks from the environment: kiln/distributed.h;
// scripts/device/ep.sh starts them). Checks and times the variable
// all-to-all that expert-parallel dispatch and combine are built on:
//
// 1. correctness: several rounds of blocks of pseudo-random sizes (empty
//    ones included) with a pattern that names sender, receiver and round;
//    sizes learned through exchangeCounts; every byte verified, and the
//    poisoned bytes past each received block left alone;
// 2. bandwidth: an all-to-all of --mb MiB per peer pair, median of 20, as
//    GB/s per GPU of bytes leaving it (what DeepEP reports).
//
// Prints one line per rank and a JSON line on rank 0; exits 1 on a mismatch.
//
//===----------------------------------------------------------------------===//

#include "kiln/cuda/driver.h"
#include "kiln/cuda/nccl.h"
#include "kiln/distributed.h"
#include "kiln/error.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace kiln;
using namespace kiln::cuda;

namespace {

uint8_t pattern(int from, int to, int round, size_t i) {
  return static_cast<uint8_t>(from * 131 + to * 17 + round * 29 + i * 7);
}

size_t blockBytes(int from, int to, int round) {
  uint64_t h = (uint64_t(from) * 1000003u + to) * 2654435761u + round * 97u;
  return h % 5 == 0 ? 0 : 1 + h % (1 << 20); // some empty blocks
}

} // namespace

int main(int argc, char **argv) {
  double megabytes = 64;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--mb" && i + 1 < argc) {
      megabytes = std::stod(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: kiln-ep-check [--mb MiB-per-peer]\n"
                           "ranks come from KILN_RANK/KILN_WORLD_SIZE, "
                           "mpirun or RANK/WORLD_SIZE (kiln/distributed.h)\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  try {
    DistributedEnvironment env = readDistributedEnvironment();
    PrimaryContext context(env.localRank);
    std::unique_ptr<NcclCommunicator> comm = NcclCommunicator::create(env);
    const int ranks = comm->worldSize(), me = comm->rank();
    CUstream stream = nullptr;
    KILN_CU("kiln-ep-check", cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING);

    // 1. Correctness.
    size_t mismatches = 0, checked = 0;
    for (int round = 0; round < 4; ++round) {
      std::vector<size_t> sendSizes(ranks);
      for (int p = 0; p < ranks; ++p)
        sendSizes[p] = blockBytes(me, p, round);
      std::vector<int64_t> counts(sendSizes.begin(), sendSizes.end());
      std::vector<int64_t> incoming = comm->exchangeCounts(counts, stream);
      std::vector<size_t> receiveSizes(ranks);
      for (int p = 0; p < ranks; ++p) {
        receiveSizes[p] = static_cast<size_t>(incoming[p]);
        if (receiveSizes[p] != blockBytes(p, me, round))
          ++mismatches;
      }
      size_t sendTotal = 0, receiveTotal = 0;
      auto send = packBlocks(sendSizes, &sendTotal);
      auto receive = packBlocks(receiveSizes, &receiveTotal);
      std::vector<uint8_t> host(std::max(sendTotal, receiveTotal) + 256);
      for (int p = 0; p < ranks; ++p)
        for (size_t i = 0; i < send[p].bytes; ++i)
          host[send[p].offset + i] = pattern(me, p, round, i);
      DeviceBuffer sendBuffer(sendTotal + 256, "send");
      DeviceBuffer receiveBuffer(receiveTotal + 256, "receive");
      KILN_CU("send", cuMemcpyHtoD, sendBuffer.get(), host.data(),
              sendTotal + 256);
      std::vector<uint8_t> poison(receiveTotal + 256, 0xA5);
      KILN_CU("poison", cuMemcpyHtoD, receiveBuffer.get(), poison.data(),
              poison.size());
      comm->allToAllV(sendBuffer.get(), send, receiveBuffer.get(), receive,
                      stream);
      KILN_CU("exchange", cuStreamSynchronize, stream);
      KILN_CU("receive", cuMemcpyDtoH, poison.data(), receiveBuffer.get(),
              poison.size());
      for (int p = 0; p < ranks; ++p) {
        const ByteRange &r = receive[p];
        for (size_t i = 0; i < r.bytes; ++i)
          mismatches += poison[r.offset + i] != pattern(p, me, round, i);
        size_t end = (r.bytes + 255) / 256 * 256;
        for (size_t i = r.bytes; i < end; ++i)
          mismatches += poison[r.offset + i] != 0xA5;
        checked += r.bytes;
      }
    }

    // 2. Bandwidth: equal blocks to every peer (itself included).
    const size_t block = static_cast<size_t>(megabytes * (1 << 20));
    DeviceBuffer sendBuffer(block * ranks, "bandwidth send");
    DeviceBuffer receiveBuffer(block * ranks, "bandwidth receive");
    std::vector<ByteRange> blocks(ranks);
    for (int p = 0; p < ranks; ++p)
      blocks[p] = {block * p, block};
    CUevent start = nullptr, stop = nullptr;
    KILN_CU("event", cuEventCreate, &start, CU_EVENT_DEFAULT);
    KILN_CU("event", cuEventCreate, &stop, CU_EVENT_DEFAULT);
    std::vector<float> times;
    for (int i = 0; i < 25; ++i) {
      KILN_CU("event", cuEventRecord, start, stream);
      comm->allToAllV(sendBuffer.get(), blocks, receiveBuffer.get(), blocks,
                      stream);
      KILN_CU("event", cuEventRecord, stop, stream);
      KILN_CU("event", cuEventSynchronize, stop);
      float ms = 0;
      KILN_CU("event", cuEventElapsedTime, &ms, start, stop);
      if (i >= 5) // warm-up
        times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    const double ms = times[times.size() / 2];
    // Bytes leaving this GPU: the blocks for the other ranks.
    const double gbps =
        ranks > 1 ? double(block) * (ranks - 1) / (ms * 1e-3) / 1e9 : 0;
    std::printf("rank %d/%d (%s, GPU %d, %s): %zu bytes checked, %zu "
                "mismatches; all-to-all %.1f MiB per peer: %.3f ms, %.1f GB/s "
                "out per GPU\n",
                me, ranks, env.source.c_str(), env.localRank,
                comm->version().c_str(), checked, mismatches, megabytes, ms,
                gbps);
    if (me == 0)
      std::printf("kiln-ep-check: {\"ranks\": %d, \"ok\": %s, "
                  "\"mib_per_peer\": %.1f, \"ms\": %.4f, "
                  "\"gb_per_s_per_gpu\": %.2f}\n",
                  ranks, mismatches ? "false" : "true", megabytes, ms, gbps);
    KILN_CU("event", cuEventDestroy, start);
    KILN_CU("event", cuEventDestroy, stop);
    KILN_CU("stream", cuStreamDestroy, stream);
    return mismatches ? 1 : 0;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "kiln-ep-check: error: %s\n", e.what());
    return 1;
  }
}
