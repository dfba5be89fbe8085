//===- expert_placement.cpp - routed experts on expert-parallel ranks -----===//

#include "kiln/expert_placement.h"
#include "kiln/error.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

namespace kiln {

namespace {

void checkShape(int experts, int ranks, int slotsPerRank) {
  if (experts < 1)
    throw Error("expert placement: experts must be at least 1, got " +
                std::to_string(experts));
  if (ranks < 1)
    throw Error("expert placement: ranks must be at least 1, got " +
                std::to_string(ranks));
  if (slotsPerRank < 1 || static_cast<int64_t>(ranks) * slotsPerRank < experts)
    throw Error("expert placement: " + std::to_string(ranks) + " ranks × " +
                std::to_string(slotsPerRank) + " slots cannot hold " +
                std::to_string(experts) + " experts");
}

} // namespace

ExpertPlacement ExpertPlacement::contiguous(int experts, int ranks) {
  checkShape(experts, ranks, ranks > 0 ? (experts + ranks - 1) / ranks : 0);
  if (experts % ranks)
    throw Error("expert placement: " + std::to_string(ranks) +
                " ranks do not divide " + std::to_string(experts) +
                " experts evenly");
  ExpertPlacement p;
  p.numRanks = ranks;
  p.numSlotsPerRank = experts / ranks;
  p.slots.resize(experts);
  p.replicas.resize(experts);
  for (int e = 0; e < experts; ++e) {
    p.slots[e] = e;
    p.replicas[e] = {e};
  }
  return p;
}

ExpertPlacement ExpertPlacement::balanced(const std::vector<double> &loads,
                                          int ranks, int slotsPerRank) {
  const int experts = static_cast<int>(loads.size());
  checkShape(experts, ranks, slotsPerRank);
  for (int e = 0; e < experts; ++e)
    if (!std::isfinite(loads[e]) || loads[e] < 0)
      throw Error("expert placement: load of expert " + std::to_string(e) +
                  " must be finite and non-negative, got " +
                  std::to_string(loads[e]));

  // Replica counts: each spare slot to the largest load per replica; ties
  // to the lower expert index, so the result is deterministic.
  std::vector<int> count(experts, 1);
  const int64_t spare = static_cast<int64_t>(ranks) * slotsPerRank - experts;
  for (int64_t s = 0; s < spare; ++s) {
    int best = 0;
    for (int e = 1; e < experts; ++e)
      if (loads[e] * count[best] > loads[best] * count[e])
        best = e;
    if (loads[best] == 0)
      break; // nothing left to relieve
    ++count[best];
  }

  // Pack replicas heaviest first onto the least loaded rank with room,
  // preferring ranks that do not hold the expert yet.
  struct Replica {
    int expert;
    double load;
  };
  std::vector<Replica> order;
  for (int e = 0; e < experts; ++e)
    for (int r = 0; r < count[e]; ++r)
      order.push_back({e, loads[e] / count[e]});
  std::stable_sort(
      order.begin(), order.end(),
      [](const Replica &a, const Replica &b) { return a.load > b.load; });
  ExpertPlacement p;
  p.numRanks = ranks;
  p.numSlotsPerRank = slotsPerRank;
  p.slots.assign(static_cast<size_t>(ranks) * slotsPerRank, -1);
  p.replicas.resize(experts);
  std::vector<double> rankLoad(ranks, 0);
  std::vector<int> used(ranks, 0);
  for (const Replica &replica : order) {
    int best = -1;
    bool bestHolds = true;
    for (int r = 0; r < ranks; ++r) {
      if (used[r] == slotsPerRank)
        continue;
      bool holds = false;
      for (int slot : p.replicas[replica.expert])
        holds = holds || slot / slotsPerRank == r;
      if (best < 0 || (bestHolds && !holds) ||
          (holds == bestHolds && rankLoad[r] < rankLoad[best])) {
        best = r;
        bestHolds = holds;
      }
    }
    int slot = best * slotsPerRank + used[best]++;
    p.slots[slot] = replica.expert;
    p.replicas[replica.expert].push_back(slot);
    rankLoad[best] += replica.load;
  }
  for (std::vector<int> &slotsOfExpert : p.replicas)
    std::sort(slotsOfExpert.begin(), slotsOfExpert.end());
  return p;
}

ExpertPlacement ExpertPlacement::fromSlots(const std::vector<int> &slots,
                                           int ranks, int experts) {
  const int total = static_cast<int>(slots.size());
  if (ranks < 1 || total % ranks)
    throw Error("expert placement: " + std::to_string(total) +
                " slots are not the same number on each of " +
                std::to_string(ranks) + " ranks");
  checkShape(experts, ranks, total / ranks);
  ExpertPlacement p;
  p.numRanks = ranks;
  p.numSlotsPerRank = total / ranks;
  p.slots = slots;
  p.replicas.resize(experts);
  for (int s = 0; s < total; ++s) {
    if (slots[s] < -1 || slots[s] >= experts)
      throw Error("expert placement: slot " + std::to_string(s) +
                  " holds expert " + std::to_string(slots[s]) +
                  ", outside [0, " + std::to_string(experts) +
                  ") (-1: unused)");
    if (slots[s] >= 0)
      p.replicas[slots[s]].push_back(s);
  }
  for (int e = 0; e < experts; ++e)
    if (p.replicas[e].empty())
      throw Error("expert placement: expert " + std::to_string(e) +
                  " is in no slot");
  return p;
}

int ExpertPlacement::slotFor(int expert, int64_t tokenIndex) const {
  const std::vector<int> &r = replicas.at(expert);
  return r[static_cast<size_t>(tokenIndex % static_cast<int64_t>(r.size()))];
}

std::vector<double>
ExpertPlacement::rankLoads(const std::vector<double> &loads) const {
  if (static_cast<int>(loads.size()) != experts())
    throw Error("expert placement: " + std::to_string(loads.size()) +
                " loads for " + std::to_string(experts()) + " experts");
  std::vector<double> result(numRanks, 0);
  for (int e = 0; e < experts(); ++e)
    for (int slot : replicas[e])
      result[rankOfSlot(slot)] += loads[e] / replicas[e].size();
  return result;
}

double ExpertPlacement::imbalance(const std::vector<double> &loads) const {
  std::vector<double> perRank = rankLoads(loads);
  double total = std::accumulate(perRank.begin(), perRank.end(), 0.0);
  if (total == 0)
    return 1;
  return *std::max_element(perRank.begin(), perRank.end()) / (total / numRanks);
}

std::string ExpertPlacement::describe() const {
  std::ostringstream out;
  for (int r = 0; r < numRanks; ++r) {
    out << (r ? " | rank " : "rank ") << r << ":";
    for (int s = 0; s < numSlotsPerRank; ++s) {
      int e = slots[r * numSlotsPerRank + s];
      if (e >= 0)
        out << ' ' << e;
    }
  }
  return out.str();
}

} // namespace kiln
