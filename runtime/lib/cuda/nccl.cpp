//===- nccl.cpp - NCCL communicator for expert parallelism ----------------===//

#include "kiln/cuda/nccl.h"
#include "kiln/error.h"

#include <nccl.h>

#include <dlfcn.h>

#include <exception>
#include <mutex>

namespace kiln::cuda {

namespace {

#define KILN_NCCL_FUNCTIONS(X)                                                 \
  X(ncclGetVersion)                                                            \
  X(ncclGetUniqueId)                                                           \
  X(ncclCommInitRank)                                                          \
  X(ncclCommDestroy)                                                           \
  X(ncclCommAbort)                                                             \
  X(ncclGetErrorString)                                                        \
  X(ncclGroupStart)                                                            \
  X(ncclGroupEnd)                                                              \
  X(ncclSend)                                                                  \
  X(ncclRecv)

struct Nccl {
#define KILN_NCCL_MEMBER(fn) decltype(&::fn) fn = nullptr;
  KILN_NCCL_FUNCTIONS(KILN_NCCL_MEMBER)
#undef KILN_NCCL_MEMBER
};

/// libnccl.so.2, loaded once; a failure is remembered and rethrown.
const Nccl &nccl() {
  static Nccl table;
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    // The CUDA toolkit keeps NCCL in its own lib folder, which is not
    // always on the loader's path.
    void *handle = nullptr;
    for (const char *name : {"libnccl.so.2", "/usr/local/cuda/lib/libnccl.so.2",
                             "/usr/local/cuda/lib64/libnccl.so.2"})
      if ((handle = ::dlopen(name, RTLD_NOW | RTLD_GLOBAL)))
        break;
    if (!handle) {
      failure = std::string("cannot load libnccl.so.2 (") + ::dlerror() +
                "); NCCL ships with the CUDA toolkit: add its lib folder to "
                "LD_LIBRARY_PATH";
      return;
    }
#define KILN_NCCL_LOAD(fn)                                                     \
  table.fn = reinterpret_cast<decltype(&::fn)>(::dlsym(handle, #fn));          \
  if (!table.fn) {                                                             \
    failure = "libnccl.so.2 lacks " #fn;                                       \
    return;                                                                    \
  }
    KILN_NCCL_FUNCTIONS(KILN_NCCL_LOAD)
#undef KILN_NCCL_LOAD
  });
  if (!failure.empty())
    throw Error(failure);
  return table;
}

void check(ncclResult_t result, const char *call, int rank) {
  if (result != ncclSuccess)
    throw Error(std::string(call) + " failed on rank " + std::to_string(rank) +
                ": " + nccl().ncclGetErrorString(result) + " (" +
                std::to_string(static_cast<int>(result)) + ")");
}

} // namespace

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
};

std::unique_ptr<NcclCommunicator>
NcclCommunicator::create(const DistributedEnvironment &environment,
                         double rendezvousTimeoutSeconds) {
  const Nccl &n = nccl();
  const int rank = environment.rank;
  ncclUniqueId id{};
  if (rank == 0)
    check(n.ncclGetUniqueId(&id), "ncclGetUniqueId", rank);
  std::string shared = broadcastFromRankZero(
      environment, std::string(id.internal, sizeof id.internal),
      rendezvousTimeoutSeconds);
  if (shared.size() != sizeof id.internal)
    throw Error("rendezvous: rank " + std::to_string(rank) + " received " +
                std::to_string(shared.size()) + " bytes of NCCL id, expected " +
                std::to_string(sizeof id.internal));
  std::copy(shared.begin(), shared.end(), id.internal);

  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator);
  c->impl = std::make_unique<Impl>();
  c->rankIndex = rank;
  c->ranks = environment.worldSize;
  check(n.ncclCommInitRank(&c->impl->comm, environment.worldSize, id, rank),
        "ncclCommInitRank", rank);
  return c;
}

NcclCommunicator::~NcclCommunicator() {
  if (!impl || !impl->comm)
    return;
  // Destroyed while an error unwinds: the peers may be blocked in a
  // collective this rank never joins, and ncclCommDestroy would wait for
  // them forever; abort instead, so that the error reaches the user.
  if (std::uncaught_exceptions() > 0)
    nccl().ncclCommAbort(impl->comm);
  else
    nccl().ncclCommDestroy(impl->comm);
}

std::string NcclCommunicator::version() const {
  int v = 0;
  check(nccl().ncclGetVersion(&v), "ncclGetVersion", rankIndex);
  // NCCL >= 2.9 encodes major * 10000 + minor * 100 + patch.
  return "NCCL " + std::to_string(v / 10000) + "." +
         std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

void NcclCommunicator::allToAllV(CUdeviceptr sendBuffer,
                                 const std::vector<ByteRange> &send,
                                 CUdeviceptr receiveBuffer,
                                 const std::vector<ByteRange> &receive,
                                 CUstream stream) {
  if (static_cast<int>(send.size()) != ranks ||
      static_cast<int>(receive.size()) != ranks)
    throw Error("allToAllV on rank " + std::to_string(rankIndex) + ": " +
                std::to_string(send.size()) + " send and " +
                std::to_string(receive.size()) + " receive blocks for " +
                std::to_string(ranks) + " ranks");
  const Nccl &n = nccl();
  // CUstream and cudaStream_t are the same handle type.
  auto s = reinterpret_cast<cudaStream_t>(stream);
  check(n.ncclGroupStart(), "ncclGroupStart", rankIndex);
  for (int peer = 0; peer < ranks; ++peer) {
    if (send[peer].bytes)
      check(n.ncclSend(
                reinterpret_cast<const void *>(sendBuffer + send[peer].offset),
                send[peer].bytes, ncclUint8, peer, impl->comm, s),
            "ncclSend", rankIndex);
    if (receive[peer].bytes)
      check(n.ncclRecv(
                reinterpret_cast<void *>(receiveBuffer + receive[peer].offset),
                receive[peer].bytes, ncclUint8, peer, impl->comm, s),
            "ncclRecv", rankIndex);
  }
  check(n.ncclGroupEnd(), "ncclGroupEnd", rankIndex);
}

std::vector<int64_t>
NcclCommunicator::exchangeCounts(const std::vector<int64_t> &counts,
                                 CUstream stream) {
  if (static_cast<int>(counts.size()) != ranks)
    throw Error("exchangeCounts on rank " + std::to_string(rankIndex) + ": " +
                std::to_string(counts.size()) + " counts for " +
                std::to_string(ranks) + " ranks");
  const size_t bytes = sizeof(int64_t) * ranks;
  DeviceBuffer sendBuffer(bytes, "NCCL counts to send");
  DeviceBuffer receiveBuffer(bytes, "NCCL counts received");
  std::string where = "exchangeCounts on rank " + std::to_string(rankIndex);
  KILN_CU(where, cuMemcpyHtoD, sendBuffer.get(), counts.data(), bytes);
  std::vector<ByteRange> blocks(ranks);
  for (int p = 0; p < ranks; ++p)
    blocks[p] = {sizeof(int64_t) * p, sizeof(int64_t)};
  allToAllV(sendBuffer.get(), blocks, receiveBuffer.get(), blocks, stream);
  KILN_CU(where, cuStreamSynchronize, stream);
  std::vector<int64_t> received(ranks);
  KILN_CU(where, cuMemcpyDtoH, received.data(), receiveBuffer.get(), bytes);
  return received;
}

} // namespace kiln::cuda
