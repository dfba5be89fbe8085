//===- KilnAttrs.cpp - kiln attributes ------------------------------------===//

#include "kiln/Dialect/Kiln/KilnAttrs.h"
#include "kiln/Dialect/Kiln/KilnDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/SmallBitVector.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/CheckedArithmetic.h"

#include <limits>

using namespace mlir;
using namespace kiln;

#include "kiln/Dialect/Kiln/KilnEnums.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "kiln/Dialect/Kiln/KilnAttrs.cpp.inc"

void KilnDialect::registerAttributes() {
  addAttributes<
#define GET_ATTRDEF_LIST
#include "kiln/Dialect/Kiln/KilnAttrs.cpp.inc"
      >();
}

LogicalResult
ExpertParallelAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                           int64_t worldSize, int64_t numExperts,
                           int64_t slotsPerRank, ArrayRef<int64_t> placement) {
  if (worldSize < 1)
    return emitError() << "expert_parallel: world_size must be positive, got "
                       << worldSize;
  if (numExperts < 1)
    return emitError() << "expert_parallel: experts must be positive, got "
                       << numExperts;
  if (slotsPerRank < 1)
    return emitError()
           << "expert_parallel: slots_per_rank must be positive, got "
           << slotsPerRank;
  std::optional<int64_t> numSlots = llvm::checkedMul(worldSize, slotsPerRank);
  // Expert ids and slot indices travel as i32.
  constexpr int64_t kMaxSlots = std::numeric_limits<int32_t>::max();
  if (!numSlots || *numSlots > kMaxSlots)
    return emitError() << "expert_parallel: world_size * slots_per_rank must "
                          "be at most 2^31 - 1 (slots are indexed in i32)";

  if (placement.empty()) {
    if (*numSlots != numExperts)
      return emitError()
             << "expert_parallel: without a placement, world_size * "
                "slots_per_rank ("
             << *numSlots << ") must equal experts (" << numExperts
             << "); give a placement to hold redundant experts";
    return success();
  }

  if (static_cast<int64_t>(placement.size()) != *numSlots)
    return emitError() << "expert_parallel: placement has " << placement.size()
                       << " entries, expected world_size * slots_per_rank = "
                       << *numSlots;
  // More experts than slots leaves one unplaced; checking first also bounds
  // the bit vector below by the placement's own size.
  if (numExperts > *numSlots)
    return emitError() << "expert_parallel: " << numExperts
                       << " experts do not fit in " << *numSlots << " slots";
  llvm::SmallBitVector placed(numExperts);
  for (auto [slot, expert] : llvm::enumerate(placement)) {
    if (expert < 0 || expert >= numExperts)
      return emitError() << "expert_parallel: placement[" << slot
                         << "] = " << expert << " is not an expert in [0, "
                         << numExperts << ")";
    placed.set(expert);
  }
  if (!placed.all())
    return emitError() << "expert_parallel: expert "
                       << placed.find_first_unset()
                       << " has no slot in the placement";
  return success();
}

int64_t ExpertParallelAttr::getExpertInSlot(int64_t slot) const {
  ArrayRef<int64_t> placement = getPlacement();
  return placement.empty() ? slot : placement[slot];
}
