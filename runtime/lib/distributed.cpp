//===- distributed.cpp - ranks of a multi-process run and their rendezvous ===//

#include "kiln/distributed.h"
#include "kiln/error.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <set>
#include <thread>

namespace kiln {

namespace {

int parseInt(const char *name, const char *text, int minimum) {
  char *end = nullptr;
  errno = 0;
  long value = std::strtol(text, &end, 10);
  if (errno || end == text || *end || value < minimum || value > 1 << 30)
    throw Error("environment variable " + std::string(name) + "='" + text +
                "': expected an integer >= " + std::to_string(minimum));
  return static_cast<int>(value);
}

/// Closes a socket when it goes out of scope.
struct Socket {
  int fd = -1;
  explicit Socket(int fd) : fd(fd) {}
  Socket(const Socket &) = delete;
  Socket &operator=(const Socket &) = delete;
  ~Socket() {
    if (fd >= 0)
      ::close(fd);
  }
};

using Clock = std::chrono::steady_clock;

/// Milliseconds left before `deadline`, at least 0.
int millisecondsLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

/// Sends or receives exactly `size` bytes before `deadline`.
bool transfer(int fd, void *data, size_t size, bool sending,
              Clock::time_point deadline) {
  auto *bytes = static_cast<char *>(data);
  while (size) {
    pollfd p{fd, static_cast<short>(sending ? POLLOUT : POLLIN), 0};
    if (::poll(&p, 1, millisecondsLeft(deadline)) <= 0)
      return false;
    ssize_t n = sending ? ::send(fd, bytes, size, MSG_NOSIGNAL)
                        : ::recv(fd, bytes, size, 0);
    if (n <= 0)
      return false;
    bytes += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

constexpr uint32_t kMagic = 0x4B494C4E; // "KILN"

struct Hello {
  uint32_t magic;
  int32_t rank;
  int32_t worldSize;
};

std::string where(const DistributedEnvironment &e) {
  return e.masterAddress + ":" + std::to_string(e.masterPort);
}

std::string serve(const DistributedEnvironment &env, const std::string &payload,
                  Clock::time_point deadline) {
  Socket listener(::socket(AF_INET, SOCK_STREAM, 0));
  if (listener.fd < 0)
    throw Error("rendezvous: socket: " + std::string(std::strerror(errno)));
  int one = 1;
  ::setsockopt(listener.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(env.masterPort));
  // Peers on other hosts reach rank 0 through any of its interfaces.
  address.sin_addr.s_addr = htonl(
      env.masterAddress.rfind("127.", 0) == 0 ? INADDR_LOOPBACK : INADDR_ANY);
  if (::bind(listener.fd, reinterpret_cast<sockaddr *>(&address),
             sizeof address) ||
      ::listen(listener.fd, env.worldSize))
    throw Error("rendezvous: rank 0 cannot listen on port " +
                std::to_string(env.masterPort) + ": " + std::strerror(errno));

  std::set<int> missing;
  for (int r = 1; r < env.worldSize; ++r)
    missing.insert(r);
  const uint64_t size = payload.size();
  while (!missing.empty()) {
    pollfd p{listener.fd, POLLIN, 0};
    if (::poll(&p, 1, millisecondsLeft(deadline)) <= 0) {
      std::string ranks;
      for (int r : missing)
        ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
      throw Error("rendezvous at " + where(env) + ": timed out waiting for " +
                  "rank(s) " + ranks + " of " + std::to_string(env.worldSize));
    }
    Socket peer(::accept(listener.fd, nullptr, nullptr));
    if (peer.fd < 0)
      continue;
    Hello hello{};
    // A stray or stale connection is dropped; the rank it claims stays
    // missing until the real one arrives.
    if (!transfer(peer.fd, &hello, sizeof hello, false, deadline) ||
        hello.magic != kMagic || hello.worldSize != env.worldSize ||
        !missing.count(hello.rank))
      continue;
    if (transfer(peer.fd, const_cast<uint64_t *>(&size), sizeof size, true,
                 deadline) &&
        transfer(peer.fd, const_cast<char *>(payload.data()), payload.size(),
                 true, deadline))
      missing.erase(hello.rank);
  }
  return payload;
}

std::string join(const DistributedEnvironment &env,
                 Clock::time_point deadline) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo *found = nullptr;
  std::string port = std::to_string(env.masterPort);
  if (int rc = ::getaddrinfo(env.masterAddress.c_str(), port.c_str(), &hints,
                             &found))
    throw Error("rendezvous: cannot resolve " + where(env) + ": " +
                gai_strerror(rc));
  sockaddr_in address = *reinterpret_cast<sockaddr_in *>(found->ai_addr);
  ::freeaddrinfo(found);

  while (true) {
    Socket s(::socket(AF_INET, SOCK_STREAM, 0));
    if (s.fd >= 0 && ::connect(s.fd, reinterpret_cast<sockaddr *>(&address),
                               sizeof address) == 0) {
      Hello hello{kMagic, env.rank, env.worldSize};
      uint64_t size = 0;
      if (transfer(s.fd, &hello, sizeof hello, true, deadline) &&
          transfer(s.fd, &size, sizeof size, false, deadline) &&
          size < (uint64_t{1} << 30)) {
        std::string payload(size, '\0');
        if (transfer(s.fd, payload.data(), size, false, deadline))
          return payload;
      }
    }
    if (millisecondsLeft(deadline) == 0)
      throw Error("rendezvous: rank " + std::to_string(env.rank) +
                  " could not reach rank 0 at " + where(env) +
                  " (is rank 0 running, and are KILN_MASTER_ADDR/PORT or "
                  "MASTER_ADDR/PORT the same for every rank?)");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

} // namespace

DistributedEnvironment
readDistributedEnvironment(const EnvironmentLookup &lookup) {
  struct Launcher {
    const char *rank, *size, *localRank, *name;
  };
  const Launcher launchers[] = {
      {"KILN_RANK", "KILN_WORLD_SIZE", "KILN_LOCAL_RANK", "KILN_*"},
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
       "OMPI_COMM_WORLD_LOCAL_RANK", "mpirun (Open MPI)"},
      {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "mpirun (PMI)"},
      {"RANK", "WORLD_SIZE", "LOCAL_RANK", "RANK/WORLD_SIZE"},
  };
  DistributedEnvironment env;
  for (const Launcher &l : launchers) {
    const char *rank = lookup(l.rank), *size = lookup(l.size);
    if (!rank && !size)
      continue;
    if (!rank || !size)
      throw Error(std::string("environment: ") + (rank ? l.size : l.rank) +
                  " is unset but " + (rank ? l.rank : l.size) +
                  " is set; a launcher sets both");
    env.rank = parseInt(l.rank, rank, 0);
    env.worldSize = parseInt(l.size, size, 1);
    const char *local = lookup(l.localRank);
    env.localRank = local ? parseInt(l.localRank, local, 0) : env.rank;
    env.source = l.name;
    if (env.rank >= env.worldSize)
      throw Error("environment: " + std::string(l.rank) + "=" +
                  std::to_string(env.rank) + " is not below " + l.size + "=" +
                  std::to_string(env.worldSize));
    if (env.localRank > env.rank)
      throw Error("environment: " + std::string(l.localRank) + "=" +
                  std::to_string(env.localRank) + " exceeds " + l.rank + "=" +
                  std::to_string(env.rank));
    break;
  }
  for (auto [addr, port] : {std::pair{"KILN_MASTER_ADDR", "KILN_MASTER_PORT"},
                            std::pair{"MASTER_ADDR", "MASTER_PORT"}}) {
    const char *a = lookup(addr), *p = lookup(port);
    if (!a && !p)
      continue;
    if (a) {
      if (!*a)
        throw Error(std::string("environment: ") + addr + " is empty");
      env.masterAddress = a;
    }
    if (p) {
      env.masterPort = parseInt(port, p, 1);
      if (env.masterPort > 65535)
        throw Error(std::string("environment: ") + port + "=" + p +
                    " is not a TCP port");
    }
    break;
  }
  return env;
}

std::string broadcastFromRankZero(const DistributedEnvironment &environment,
                                  const std::string &payload,
                                  double timeoutSeconds) {
  if (environment.worldSize == 1)
    return payload;
  auto deadline =
      Clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(timeoutSeconds * 1000));
  return environment.rank == 0 ? serve(environment, payload, deadline)
                               : join(environment, deadline);
}

} // namespace kiln
