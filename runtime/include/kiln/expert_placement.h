//===- kiln/expert_placement.h - routed experts on expert-parallel ranks --===//
//
// Expert parallelism (EP) gives each of `ranks` GPUs `slotsPerRank` expert
// slots; every routed expert has at least one replica, and spare slots hold
// extra replicas of the experts that observed loads say are hot, so that the
// busiest rank does less work (DeepSeek's EPLB idea). A token routed to an
// expert with several replicas goes to one of them, spread round-robin by
// token index.
//
// Plain C++ (no CUDA, no NCCL): the engine builds a placement at load (the
// contiguous one, or one from saved loads) and may rebuild it from the loads
// it counts while serving.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_EXPERT_PLACEMENT_H
#define KILN_EXPERT_PLACEMENT_H

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

class ExpertPlacement {
public:
  /// Expert e on rank e / (experts / ranks), one replica each: what a
  /// placement starts as before any load is seen. Throws kiln::Error unless
  /// `ranks` divides `experts`.
  static ExpertPlacement contiguous(int experts, int ranks);

  /// Replicates and packs `loads` (tokens routed to each expert over some
  /// window, any non-negative unit) onto `ranks` × `slotsPerRank` slots:
  /// spare slots go one by one to the expert with the largest load per
  /// replica; replicas, heaviest first, go to the least loaded rank with a
  /// free slot that does not hold that expert yet (when one exists).
  /// Deterministic. Throws kiln::Error naming the argument on bad input
  /// (ranks × slotsPerRank < experts, negative or non-finite loads).
  static ExpertPlacement balanced(const std::vector<double> &loads, int ranks,
                                  int slotsPerRank);

  /// The placement whose global slot s holds `slots[s]` (-1: unused), as
  /// an artifact records it (artifact.md "Expert parallelism"). Throws
  /// kiln::Error naming the slot or expert when `ranks` does not divide the
  /// slots, an entry is outside [-1, experts) or an expert has no slot.
  static ExpertPlacement fromSlots(const std::vector<int> &slots, int ranks,
                                   int experts);

  int experts() const { return static_cast<int>(replicas.size()); }
  int ranks() const { return numRanks; }
  int slotsPerRank() const { return numSlotsPerRank; }

  /// The expert in global slot `slot` (rank = slot / slotsPerRank), or -1
  /// for an unused slot.
  int slotExpert(int slot) const { return slots.at(slot); }
  /// The global slots holding `expert`, in increasing order.
  const std::vector<int> &replicasOf(int expert) const {
    return replicas.at(expert);
  }
  /// The slot that serves `expert` for the `tokenIndex`-th token routed in
  /// a step: the replicas take turns.
  int slotFor(int expert, int64_t tokenIndex) const;
  int rankOfSlot(int slot) const { return slot / numSlotsPerRank; }

  /// Each rank's share of `loads` under this placement, with an expert's
  /// load split evenly over its replicas (what slotFor does on average).
  std::vector<double> rankLoads(const std::vector<double> &loads) const;
  /// max / mean of rankLoads: 1 is perfect balance.
  double imbalance(const std::vector<double> &loads) const;

  /// "rank 0: 3 17 17 40 | rank 1: ..." for logs and errors.
  std::string describe() const;

private:
  int numRanks = 0;
  int numSlotsPerRank = 0;
  std::vector<int> slots;                 // ranks × slotsPerRank
  std::vector<std::vector<int>> replicas; // per expert: its slots
};

} // namespace kiln

#endif // KILN_EXPERT_PLACEMENT_H
