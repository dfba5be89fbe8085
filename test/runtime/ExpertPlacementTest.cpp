//===- ExpertPlacementTest.cpp - EP expert placement ----------------------===//

#include "kiln/error.h"
#include "kiln/expert_placement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>

using kiln::ExpertPlacement;

namespace {

/// Zipf-like loads: a few hot experts, a long tail (what routers see).
std::vector<double> skewedLoads(int experts, unsigned seed) {
  std::mt19937 random(seed);
  std::vector<double> loads(experts);
  for (int e = 0; e < experts; ++e)
    loads[e] = 1000.0 / (1 + e);
  std::shuffle(loads.begin(), loads.end(), random);
  return loads;
}

/// Every expert has a replica, every replica's slot names its expert, no
/// slot is used twice.
void expectConsistent(const ExpertPlacement &p) {
  std::set<int> seen;
  for (int e = 0; e < p.experts(); ++e) {
    ASSERT_FALSE(p.replicasOf(e).empty()) << "expert " << e;
    for (int slot : p.replicasOf(e)) {
      ASSERT_GE(slot, 0);
      ASSERT_LT(slot, p.ranks() * p.slotsPerRank());
      EXPECT_EQ(p.slotExpert(slot), e);
      EXPECT_TRUE(seen.insert(slot).second) << "slot " << slot;
    }
  }
  for (int slot = 0; slot < p.ranks() * p.slotsPerRank(); ++slot) {
    if (!seen.count(slot)) {
      EXPECT_EQ(p.slotExpert(slot), -1) << "slot " << slot;
    }
  }
}

} // namespace

TEST(ExpertPlacement, ContiguousPutsExpertBlocksOnRanks) {
  ExpertPlacement p = ExpertPlacement::contiguous(256, 8);
  expectConsistent(p);
  EXPECT_EQ(p.slotsPerRank(), 32);
  for (int e = 0; e < 256; ++e) {
    ASSERT_EQ(p.replicasOf(e).size(), 1u);
    EXPECT_EQ(p.rankOfSlot(p.replicasOf(e)[0]), e / 32);
    EXPECT_EQ(p.slotFor(e, 12345), e);
  }
  EXPECT_THROW(ExpertPlacement::contiguous(256, 6), kiln::Error);
}

TEST(ExpertPlacement, RedundantSlotsRelieveHotExperts) {
  // DeepSeek-V3: 256 experts on 8 ranks, 4 redundant slots per rank.
  const std::vector<double> loads = skewedLoads(256, 7);
  const double before = ExpertPlacement::contiguous(256, 8).imbalance(loads);
  ExpertPlacement p = ExpertPlacement::balanced(loads, 8, 36);
  expectConsistent(p);
  const double after = p.imbalance(loads);
  std::printf("max/mean rank load: contiguous %.3f, balanced %.3f\n", before,
              after);
  EXPECT_GT(before, 1.5); // the skew is real
  EXPECT_LT(after, 1.05);
  // The hottest expert got the most replicas, spread over the ranks.
  int hottest = static_cast<int>(std::max_element(loads.begin(), loads.end()) -
                                 loads.begin());
  std::set<int> ranks;
  for (int slot : p.replicasOf(hottest))
    ranks.insert(p.rankOfSlot(slot));
  EXPECT_GE(p.replicasOf(hottest).size(), 3u);
  EXPECT_EQ(ranks.size(), std::min<size_t>(p.replicasOf(hottest).size(), 8));
}

TEST(ExpertPlacement, RoutingSpreadsTokensOverReplicas) {
  ExpertPlacement p = ExpertPlacement::balanced(skewedLoads(64, 3), 4, 20);
  for (int e = 0; e < 64; ++e) {
    std::map<int, int> perSlot;
    for (int64_t t = 0; t < 600; ++t)
      ++perSlot[p.slotFor(e, t)];
    ASSERT_EQ(perSlot.size(), p.replicasOf(e).size());
    for (auto [slot, n] : perSlot)
      EXPECT_EQ(n, 600 / static_cast<int>(p.replicasOf(e).size()))
          << "expert " << e << " slot " << slot;
  }
}

TEST(ExpertPlacement, UniformLoadsStayBalancedAndDeterministic) {
  std::vector<double> loads(32, 5.0);
  ExpertPlacement a = ExpertPlacement::balanced(loads, 4, 8);
  ExpertPlacement b = ExpertPlacement::balanced(loads, 4, 8);
  expectConsistent(a);
  EXPECT_DOUBLE_EQ(a.imbalance(loads), 1.0);
  EXPECT_EQ(a.describe(), b.describe());
  // Zero loads: no replica is worth adding; every expert still placed.
  ExpertPlacement idle =
      ExpertPlacement::balanced(std::vector<double>(32, 0.0), 4, 10);
  expectConsistent(idle);
  for (int e = 0; e < 32; ++e)
    EXPECT_EQ(idle.replicasOf(e).size(), 1u);
}

TEST(ExpertPlacement, BadInputIsAnErrorNamingIt) {
  auto message = [](auto &&make) {
    try {
      make();
    } catch (const kiln::Error &e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] {
              ExpertPlacement::balanced({1, 2, 3}, 1, 2);
            }).find("cannot hold 3 experts"),
            std::string::npos);
  EXPECT_NE(message([] {
              ExpertPlacement::balanced({1, -2}, 2, 1);
            }).find("load of expert 1"),
            std::string::npos);
  EXPECT_NE(message([] {
              ExpertPlacement::balanced({1, NAN}, 2, 1);
            }).find("load of expert 1"),
            std::string::npos);
  EXPECT_THROW(ExpertPlacement::balanced({}, 2, 1), kiln::Error);
  EXPECT_THROW(ExpertPlacement::contiguous(8, 0), kiln::Error);
  EXPECT_THROW(ExpertPlacement::contiguous(8, 2).rankLoads({1.0}), kiln::Error);
}

// An artifact's placement table (artifact.md "Expert parallelism") rebuilds
// the same replicas; a table that drops an expert or names a bad one fails
// naming it.
TEST(ExpertPlacement, FromSlotsRebuildsAnArtifactsTable) {
  kiln::ExpertPlacement p =
      kiln::ExpertPlacement::fromSlots({3, 3, 0, 1, 3, 2}, 2, 4);
  EXPECT_EQ(p.ranks(), 2);
  EXPECT_EQ(p.slotsPerRank(), 3);
  EXPECT_EQ(p.replicasOf(3), (std::vector<int>{0, 1, 4}));
  EXPECT_EQ(p.slotFor(3, 4), 1);
  EXPECT_EQ(p.slotFor(2, 7), 5);
  try {
    kiln::ExpertPlacement::fromSlots({0, 1, 1, 1}, 2, 3);
    FAIL() << "expert 2 has no slot";
  } catch (const kiln::Error &e) {
    EXPECT_NE(std::string(e.what()).find("expert 2 is in no slot"),
              std::string::npos)
        << e.what();
  }
  try {
    kiln::ExpertPlacement::fromSlots({0, 7}, 2, 2);
    FAIL() << "expert 7 is out of range";
  } catch (const kiln::Error &e) {
    EXPECT_NE(std::string(e.what()).find("slot 1 holds expert 7"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(kiln::ExpertPlacement::fromSlots({0, 1, 2}, 2, 3), kiln::Error);
}
