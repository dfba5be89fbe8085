//===- kiln/cuda/nccl.h - NCCL communicator for expert parallelism --------===//
//
// One process per GPU (kiln/distributed.h says how ranks are found). Rank 0
// makes the NCCL unique id, the ranks share it through the TCP rendezvous,
// and each initializes its communicator on the GPU whose context is current.
// libnccl.so.2 is loaded at run time (as libcuda.so.1 is, driver.h), so
// binaries start on machines without NCCL and fail only when asked for it.
//
// The exchange EP needs is a variable all-to-all: every rank sends a block
// of bytes to every rank (itself included) and receives one from each,
// written as one NCCL group of ncclSend/ncclRecv on a stream.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_NCCL_H
#define KILN_CUDA_NCCL_H

#include "kiln/cuda/driver.h"
#include "kiln/distributed.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kiln::cuda {

/// One rank's block of a variable all-to-all: `bytes` at `offset` bytes into
/// the buffer.
struct ByteRange {
  size_t offset = 0;
  size_t bytes = 0;
};

/// Consecutive blocks of `sizes` bytes in one buffer, each starting on a
/// 256-byte boundary; `*total` gets the buffer's size.
inline std::vector<ByteRange> packBlocks(const std::vector<size_t> &sizes,
                                         size_t *total) {
  std::vector<ByteRange> ranges;
  size_t offset = 0;
  for (size_t s : sizes) {
    ranges.push_back({offset, s});
    offset += (s + 255) / 256 * 256;
  }
  *total = offset;
  return ranges;
}

class NcclCommunicator {
public:
  /// Joins the ranks of `environment` (collective: every rank calls it). The
  /// current CUDA context's device is this rank's GPU. Throws kiln::Error
  /// when NCCL cannot be loaded or the rendezvous fails, and names the NCCL
  /// call and its error otherwise.
  static std::unique_ptr<NcclCommunicator>
  create(const DistributedEnvironment &environment,
         double rendezvousTimeoutSeconds = 120);
  ~NcclCommunicator();
  NcclCommunicator(const NcclCommunicator &) = delete;
  NcclCommunicator &operator=(const NcclCommunicator &) = delete;

  int rank() const { return rankIndex; }
  int worldSize() const { return ranks; }
  /// "NCCL 2.28.3" as the loaded library reports itself.
  std::string version() const;

  /// Sends `send[p]` of `sendBuffer` to rank p and receives `receive[p]` of
  /// `receiveBuffer` from rank p, for every p, on `stream` (asynchronous).
  /// Both vectors have worldSize() entries; the sizes must match what the
  /// peers send (exchangeCounts gives them). Zero-byte blocks are skipped.
  void allToAllV(CUdeviceptr sendBuffer, const std::vector<ByteRange> &send,
                 CUdeviceptr receiveBuffer,
                 const std::vector<ByteRange> &receive, CUstream stream);

  /// Every rank's `counts[p]` reaches rank p: returns what each rank sends
  /// this one (worldSize() values). Synchronizes `stream`.
  std::vector<int64_t> exchangeCounts(const std::vector<int64_t> &counts,
                                      CUstream stream);

private:
  NcclCommunicator() = default;
  struct Impl;
  std::unique_ptr<Impl> impl;
  int rankIndex = 0;
  int ranks = 1;
};

} // namespace kiln::cuda

#endif // KILN_CUDA_NCCL_H
