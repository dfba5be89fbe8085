//===- kiln/distributed.h - ranks of a multi-process run and their rendezvous //
//
// A multi-GPU run is one process per GPU. Each process learns its rank from
// the environment its launcher sets, and the ranks meet once over TCP at
// rank 0 to share the NCCL unique id (kiln/cuda/nccl.h). Launchers:
//
//   KILN_RANK / KILN_WORLD_SIZE / KILN_LOCAL_RANK        set by hand or a
//   script OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK           mpirun (Open
//   MPI) PMI_RANK / PMI_SIZE, MPI_LOCALRANKID                 mpirun (MPICH,
//   Hydra) RANK / WORLD_SIZE / LOCAL_RANK                       torchrun-style
//
// and the rendezvous address from KILN_MASTER_ADDR / KILN_MASTER_PORT, else
// MASTER_ADDR / MASTER_PORT, else 127.0.0.1:29517 (one host). Plain C++ and
// POSIX sockets: no NCCL or CUDA here, so it is tested on any machine.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_DISTRIBUTED_H
#define KILN_DISTRIBUTED_H

#include <cstdlib>
#include <functional>
#include <string>

namespace kiln {

struct DistributedEnvironment {
  int rank = 0;
  int worldSize = 1;
  /// Rank among the processes of this host: the GPU it takes by default.
  int localRank = 0;
  std::string masterAddress = "127.0.0.1";
  int masterPort = 29517;
  /// Which launcher's variables were read ("single process" when none).
  std::string source = "single process";
};

/// Looks a variable up; returns nullptr when unset (std::getenv's contract).
using EnvironmentLookup = std::function<const char *(const char *)>;

/// Reads the environment (the table above, first match wins). Throws
/// kiln::Error naming the variable when one is set but malformed, or when
/// rank, size and local rank are inconsistent.
DistributedEnvironment readDistributedEnvironment(
    const EnvironmentLookup &lookup = [](const char *name) {
      return static_cast<const char *>(std::getenv(name));
    });

/// Rank 0 sends `payload` to every other rank over TCP at
/// masterAddress:masterPort; every rank returns it. Rank 0 listens (all
/// interfaces when masterAddress is not a loopback address); the others
/// connect, retrying until `timeoutSeconds`. Throws kiln::Error naming the
/// address and the ranks still missing on timeout. A single-process
/// environment returns `payload` at once.
std::string broadcastFromRankZero(const DistributedEnvironment &environment,
                                  const std::string &payload,
                                  double timeoutSeconds = 120);

} // namespace kiln

#endif // KILN_DISTRIBUTED_H
