//===- ScheduleOverlap.cpp - two-stream schedules of kiln.overlap ---------===//
//
// Lays the stages of every micro-batch of a kiln.overlap out on a compute and
// a communication stream, with the cross-stream waits their data needs (see
// Passes.td). The schedule is an attribute, so it is visible in the IR and
// checked by lit; launch-plan lowering turns it into streams and events.
//
//===----------------------------------------------------------------------===//

#include "kiln/Dialect/Kiln/KilnOps.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SetVector.h"

namespace kiln {
#define GEN_PASS_DEF_KILNSCHEDULEOVERLAP
#include "kiln/Transforms/Passes.h.inc"
} // namespace kiln

using namespace mlir;

namespace {

/// Streams of a schedule, by the kind of stage they run.
int64_t streamOf(kiln::StageOp stage) {
  return stage.getKind() == kiln::StageKind::Compute ? 0 : 1;
}

void schedule(kiln::OverlapOp overlap) {
  SmallVector<kiln::StageOp> stages(
      overlap.getBody().front().getOps<kiln::StageOp>());
  llvm::DenseMap<Operation *, size_t> indexOf;
  for (auto [index, stage] : llvm::enumerate(stages))
    indexOf[stage] = index;
  // The stages each stage reads results of (the stage graph; the verifier
  // allows no other data flow inside the body).
  SmallVector<llvm::SetVector<size_t>> producers(stages.size());
  for (auto [index, stage] : llvm::enumerate(stages))
    for (Value input : stage.getInputs())
      if (Operation *def = input.getDefiningOp())
        if (auto it = indexOf.find(def); it != indexOf.end())
          producers[index].insert(it->second);

  // Entries in wavefront order: stage s of micro-batch m comes in step
  // s + m; within a step the compute stream's stages come first, then by
  // micro-batch. Each stream sees its stages in the same order as stage by
  // stage, but the host enqueues one micro-batch's compute before the other
  // micro-batch's communication, so a communication stage that blocks the
  // host (an exchange whose counts it reads back) waits while compute work
  // is already queued.
  const int64_t batches = overlap.getNumMicroBatches();
  const int64_t numStages = static_cast<int64_t>(stages.size());
  SmallVector<std::pair<int64_t, int64_t>> order; // (stage, micro-batch)
  for (int64_t step = 0; step < numStages + batches - 1; ++step)
    for (int64_t stream : {0, 1})
      for (int64_t batch = 0; batch < batches; ++batch)
        if (step - batch >= 0 && step - batch < numStages &&
            streamOf(stages[step - batch]) == stream)
          order.push_back({step - batch, batch});
  llvm::DenseMap<std::pair<int64_t, int64_t>, int64_t> entryIndex;
  for (auto [index, key] : llvm::enumerate(order))
    entryIndex[key] = static_cast<int64_t>(index);
  Builder b(overlap.getContext());
  SmallVector<Attribute> entries;
  for (auto [index, batch] : order) {
    kiln::StageOp stage = stages[index];
    SmallVector<int64_t> waits;
    for (size_t producer : producers[index])
      if (streamOf(stages[producer]) != streamOf(stage))
        waits.push_back(entryIndex.lookup({producer, batch}));
    llvm::sort(waits);
    entries.push_back(b.getDictionaryAttr({
        b.getNamedAttr("micro_batch", b.getI64IntegerAttr(batch)),
        b.getNamedAttr("stage", stage.getNameAttr()),
        b.getNamedAttr("stream", b.getI64IntegerAttr(streamOf(stage))),
        b.getNamedAttr("waits", b.getDenseI64ArrayAttr(waits)),
    }));
  }
  overlap->setAttr("kiln.schedule", b.getArrayAttr(entries));
  overlap->setAttr("kiln.streams",
                   b.getStrArrayAttr({"compute", "communication"}));
}

struct ScheduleOverlapPass
    : kiln::impl::KilnScheduleOverlapBase<ScheduleOverlapPass> {
  void runOnOperation() override {
    getOperation().walk([](kiln::OverlapOp overlap) { schedule(overlap); });
  }
};

} // namespace
