//===- DistributedTest.cpp - launcher environments and the rendezvous -----===//

#include "kiln/distributed.h"
#include "kiln/error.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

using kiln::DistributedEnvironment;
using kiln::readDistributedEnvironment;

namespace {

kiln::EnvironmentLookup
fakeEnvironment(const std::map<std::string, std::string> &variables) {
  return [variables](const char *name) -> const char * {
    auto it = variables.find(name);
    return it == variables.end() ? nullptr : it->second.c_str();
  };
}

std::string errorOf(const std::map<std::string, std::string> &variables) {
  try {
    readDistributedEnvironment(fakeEnvironment(variables));
  } catch (const kiln::Error &e) {
    return e.what();
  }
  return "no error";
}

/// A port unlikely to be taken, different per test run.
int testPort(int offset) {
  return 30000 + static_cast<int>(::getpid() % 20000) + offset;
}

} // namespace

TEST(DistributedEnvironment, ReadsEachLauncher) {
  DistributedEnvironment single =
      readDistributedEnvironment(fakeEnvironment({}));
  EXPECT_EQ(single.worldSize, 1);
  EXPECT_EQ(single.rank, 0);
  EXPECT_EQ(single.source, "single process");

  DistributedEnvironment mpi = readDistributedEnvironment(
      fakeEnvironment({{"OMPI_COMM_WORLD_RANK", "5"},
                       {"OMPI_COMM_WORLD_SIZE", "8"},
                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                       {"MASTER_ADDR", "10.0.0.7"},
                       {"MASTER_PORT", "4242"}}));
  EXPECT_EQ(mpi.rank, 5);
  EXPECT_EQ(mpi.worldSize, 8);
  EXPECT_EQ(mpi.localRank, 1);
  EXPECT_EQ(mpi.masterAddress, "10.0.0.7");
  EXPECT_EQ(mpi.masterPort, 4242);
  EXPECT_EQ(mpi.source, "mpirun (Open MPI)");

  // Kiln's own variables win over a launcher's; local rank defaults to rank.
  DistributedEnvironment own =
      readDistributedEnvironment(fakeEnvironment({{"KILN_RANK", "1"},
                                                  {"KILN_WORLD_SIZE", "2"},
                                                  {"RANK", "0"},
                                                  {"WORLD_SIZE", "4"},
                                                  {"KILN_MASTER_PORT", "5000"},
                                                  {"MASTER_PORT", "6000"}}));
  EXPECT_EQ(own.rank, 1);
  EXPECT_EQ(own.worldSize, 2);
  EXPECT_EQ(own.localRank, 1);
  EXPECT_EQ(own.masterPort, 5000);
  EXPECT_EQ(own.masterAddress, "127.0.0.1");

  DistributedEnvironment pmi = readDistributedEnvironment(fakeEnvironment(
      {{"PMI_RANK", "3"}, {"PMI_SIZE", "4"}, {"MPI_LOCALRANKID", "3"}}));
  EXPECT_EQ(pmi.rank, 3);
  EXPECT_EQ(pmi.source, "mpirun (PMI)");
}

TEST(DistributedEnvironment, MalformedVariablesAreNamed) {
  EXPECT_NE(errorOf({{"KILN_RANK", "x"}, {"KILN_WORLD_SIZE", "2"}})
                .find("KILN_RANK='x'"),
            std::string::npos);
  EXPECT_NE(errorOf({{"RANK", "4"}, {"WORLD_SIZE", "4"}})
                .find("RANK=4 is not below WORLD_SIZE=4"),
            std::string::npos);
  EXPECT_NE(errorOf({{"KILN_RANK", "1"}}).find("KILN_WORLD_SIZE is unset"),
            std::string::npos);
  EXPECT_NE(errorOf({{"MASTER_PORT", "70000"}}).find("not a TCP port"),
            std::string::npos);
  EXPECT_NE(errorOf({{"KILN_WORLD_SIZE", "0"}, {"KILN_RANK", "0"}})
                .find("KILN_WORLD_SIZE='0'"),
            std::string::npos);
}

TEST(Rendezvous, RankZeroPayloadReachesEveryRank) {
  const int world = 4;
  const std::string id(128, '\x5a'); // an NCCL unique id is 128 bytes
  std::vector<std::string> received(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> ranks;
  // Peers start first: they must retry until rank 0 listens.
  for (int r = world - 1; r >= 0; --r)
    ranks.emplace_back([&, r] {
      DistributedEnvironment env;
      env.rank = r;
      env.worldSize = world;
      env.masterPort = testPort(0);
      try {
        received[r] = kiln::broadcastFromRankZero(
            env, r == 0 ? id + "-from-0" : "ignored", 20);
      } catch (const kiln::Error &e) {
        errors[r] = e.what();
      }
    });
  for (std::thread &t : ranks)
    t.join();
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(received[r], id + "-from-0") << "rank " << r;
  }
}

TEST(Rendezvous, MissingRanksTimeOutWithAMessage) {
  DistributedEnvironment env;
  env.worldSize = 3;
  env.masterPort = testPort(1);
  try {
    kiln::broadcastFromRankZero(env, "id", 0.3);
    FAIL() << "rank 0 returned without its peers";
  } catch (const kiln::Error &e) {
    EXPECT_NE(std::string(e.what()).find("rank(s) 1, 2 of 3"),
              std::string::npos)
        << e.what();
  }
  env.rank = 2;
  env.masterPort = testPort(2);
  try {
    kiln::broadcastFromRankZero(env, "", 0.3);
    FAIL() << "rank 2 returned without rank 0";
  } catch (const kiln::Error &e) {
    EXPECT_NE(std::string(e.what()).find("could not reach rank 0"),
              std::string::npos)
        << e.what();
  }
}
