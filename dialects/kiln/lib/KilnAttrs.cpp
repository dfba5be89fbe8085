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

/// K slices per tile: the last slice's block sums all of them, unrolled.
static constexpr int64_t kMaxSplitK = 16;

LogicalResult GemmConfigAttr::verify(
    function_ref<InFlightDiagnostic()> emitError, int64_t blockM,
    int64_t blockN, int64_t stages, int64_t consumers, int64_t splitK,
    std::optional<GroupLayout> grouped, int64_t clusterM, bool swiglu,
    bool tmaStore, bool quantize, bool splitTail) {
  if (consumers < 1 || consumers > 2)
    return emitError() << "gemm_config: consumers must be 1 or 2, got "
                       << consumers;
  if (blockM != 64 * consumers)
    return emitError() << "gemm_config: block_m must be 64 per consumer "
                          "warpgroup ("
                       << 64 * consumers << "), got " << blockM;
  // wgmma's N is a multiple of 8. A tile up to 128 wide lies inside one
  // 128x128 weight-scale block; a 192-wide one spans two, which its
  // promotion tells apart per 64 columns; a 256-wide one (plain, unsplit)
  // is issued and promoted in 128-column halves, one block each. Grouped
  // kernels take 192-wide tiles unsplit (a 256-wide one's ring does not fit
  // beside the group tables with more than 2 stages).
  bool wide = blockN == 192 || blockN == 256;
  if (blockN == 256 && grouped)
    return emitError() << "gemm_config: block_n = 256 is for plain kernels "
                          "(no 'grouped')";
  if (blockN == 192 && grouped && splitK != 1)
    return emitError() << "gemm_config: block_n = 192 in a grouped kernel "
                          "needs split_k = 1";
  if (blockN == 256 && splitK != 1)
    return emitError() << "gemm_config: block_n = 256 needs split_k = 1";
  if (!wide &&
      (blockN < 8 || blockN > 128 || blockN % 8 != 0 || 128 % blockN != 0))
    return emitError() << "gemm_config: block_n must divide 128 and be a "
                          "multiple of 8, or be 192 or 256, got "
                       << blockN;
  if (stages < 2 || stages > 16)
    return emitError() << "gemm_config: stages must be in [2, 16], got "
                       << stages;
  if (splitK < 1 || splitK > kMaxSplitK)
    return emitError() << "gemm_config: split_k must be in [1, " << kMaxSplitK
                       << "], got " << splitK;
  // The tail's split units reduce through the split-K workspace; the whole
  // tiles store as a plain kernel does (not with TMA).
  if (splitTail && (splitK < 2 || grouped || swiglu || tmaStore))
    return emitError() << "gemm_config: split = tail needs split_k > 1 and "
                          "a plain kernel without 'store = tma'";
  // A cluster's blocks split each B slice in halves of whole 8-row swizzle
  // atoms, and walk the same units (no K slices, no group tables).
  if (clusterM != 1 && clusterM != 2)
    return emitError() << "gemm_config: cluster_m must be 1 or 2, got "
                       << clusterM;
  if (clusterM == 2 && (splitK != 1 || grouped || blockN % 16 != 0))
    return emitError() << "gemm_config: cluster_m = 2 needs split_k = 1, no "
                          "'grouped' and block_n a multiple of 16";
  // A SwiGLU tile pairs its left (gate) and right (up) 64 columns, whose
  // weight scales are two different 128-row blocks of the gate/up weight;
  // only the grouped MoE GEMM has a gate/up weight.
  if (swiglu && (blockN != 128 || !grouped || splitK != 1))
    return emitError() << "gemm_config: epilogue = swiglu needs block_n = "
                          "128, 'grouped' and split_k = 1";
  // The quantized output is the SwiGLU intermediate's (the down
  // projection's input); its first tile's stash fits the BF16 staging.
  if (quantize && !swiglu)
    return emitError() << "gemm_config: the quantized output is SwiGLU's "
                          "(epilogue = swiglu_quantize)";
  // (Two consumer threads per row of the tile.)
  if (quantize && 2 * kQuantizeStashWords * 4 > getEpilogueRowBytes(blockN))
    return emitError() << "gemm_config: the quantized SwiGLU stash does not "
                          "fit the epilogue staging";
  // TMA stores whole 64-column boxes of a consumer's 64 rows, and split-K
  // reduces in registers. A grouped tile's rows may belong to two groups:
  // its warpgroups store with plain stores there, staged in their part of
  // the TMA staging, which needs block_n >= 128 (9 KB of 16 or 24).
  if (tmaStore && (splitK != 1 || swiglu || blockN % 64 != 0))
    return emitError() << "gemm_config: store = tma needs split_k = 1, no "
                          "epilogue and block_n a multiple of 64";
  if (tmaStore && grouped && blockN < 128)
    return emitError() << "gemm_config: store = tma in a grouped kernel "
                          "needs block_n >= 128";
  int64_t bytes = GemmConfigAttr::getSharedMemoryBytes(
      blockM, blockN, stages, consumers, splitK, grouped.has_value(), tmaStore);
  if (bytes > GemmConfigAttr::kMaxSharedMemoryBytes)
    return emitError() << "gemm_config: " << bytes
                       << " bytes of shared memory exceed the "
                       << GemmConfigAttr::kMaxSharedMemoryBytes
                       << " of an sm_90 block";
  return success();
}

Attribute GemmConfigAttr::parse(AsmParser &parser, Type) {
  int64_t blockM = 0, blockN = 0, stages = 0, consumers = 0, splitK = 1;
  std::optional<GroupLayout> grouped;
  auto parseKey = [&](StringRef key, int64_t &value) -> ParseResult {
    return failure(parser.parseKeyword(key) || parser.parseEqual() ||
                   parser.parseInteger(value));
  };
  if (parser.parseLess() || parseKey("block_m", blockM) ||
      parser.parseComma() || parseKey("block_n", blockN) ||
      parser.parseComma() || parseKey("stages", stages) ||
      parser.parseComma() || parseKey("consumers", consumers))
    return {};
  // The keyword value of `key`, one of `allowed`; a diagnostic naming
  // them otherwise.
  auto parseKind = [&](StringRef key, ArrayRef<StringRef> allowed,
                       StringRef &kind) -> ParseResult {
    SMLoc kindAt = parser.getCurrentLocation();
    if (parser.parseKeyword(&kind))
      return failure();
    if (llvm::is_contained(allowed, kind))
      return success();
    InFlightDiagnostic diag = parser.emitError(kindAt) << key << " must be ";
    for (size_t i = 0; i < allowed.size(); ++i)
      diag << (i == 0                    ? ""
               : i + 1 == allowed.size() ? " or "
                                         : ", ")
           << "'" << allowed[i] << "'";
    return diag << ", got '" << kind << "'";
  };
  // Optional keys, each at most once, in any order.
  bool seenSplit = false, seenCluster = false, swiglu = false, tmaStore = false,
       quantize = false, splitTail = false;
  int64_t clusterM = 1;
  while (succeeded(parser.parseOptionalComma())) {
    StringRef key;
    SMLoc at = parser.getCurrentLocation();
    if (parser.parseKeyword(&key) || parser.parseEqual())
      return {};
    if (key == "split_k" && !seenSplit) {
      seenSplit = true;
      if (parser.parseInteger(splitK))
        return {};
      continue;
    }
    StringRef kind;
    if (key == "split" && !splitTail) {
      if (parseKind(key, {"tail"}, kind))
        return {};
      splitTail = true;
      continue;
    }
    if (key == "cluster_m" && !seenCluster) {
      seenCluster = true;
      if (parser.parseInteger(clusterM))
        return {};
      continue;
    }
    if (key == "epilogue" && !swiglu) {
      if (parseKind(key, {"swiglu", "swiglu_quantize"}, kind))
        return {};
      swiglu = true;
      quantize = kind == "swiglu_quantize";
      continue;
    }
    if (key == "store" && !tmaStore) {
      if (parseKind(key, {"tma"}, kind))
        return {};
      tmaStore = true;
      continue;
    }
    StringRef layout;
    if (key != "grouped" || grouped || parser.parseKeyword(&layout)) {
      parser.emitError(at, "expected 'split_k = N', 'split = tail', "
                           "'cluster_m = N', "
                           "'grouped = contiguous|masked', 'epilogue = "
                           "swiglu|swiglu_quantize' or 'store = tma', each "
                           "at most once");
      return {};
    }
    grouped = symbolizeGroupLayout(layout);
    if (!grouped) {
      parser.emitError(at, "grouped must be 'contiguous' or 'masked', got '")
          << layout << "'";
      return {};
    }
  }
  if (parser.parseGreater())
    return {};
  return getChecked([&] { return parser.emitError(parser.getNameLoc()); },
                    parser.getContext(), blockM, blockN, stages, consumers,
                    splitK, grouped, clusterM, swiglu, tmaStore, quantize,
                    splitTail);
}

void GemmConfigAttr::print(AsmPrinter &printer) const {
  printer << "<block_m = " << getBlockM() << ", block_n = " << getBlockN()
          << ", stages = " << getStages() << ", consumers = " << getConsumers();
  if (getSplitK() != 1)
    printer << ", split_k = " << getSplitK();
  if (getSplitTail())
    printer << ", split = tail";
  if (getClusterM() != 1)
    printer << ", cluster_m = " << getClusterM();
  if (getGrouped())
    printer << ", grouped = " << stringifyGroupLayout(*getGrouped());
  if (getSwiglu())
    printer << ", epilogue = "
            << (getQuantize() ? "swiglu_quantize" : "swiglu");
  if (getTmaStore())
    printer << ", store = tma";
  printer << ">";
}

std::string GemmConfigAttr::getKernelName() const {
  return "kiln_gemm_fp8_m" + std::to_string(getBlockM()) + "n" +
         std::to_string(getBlockN()) + "s" + std::to_string(getStages()) + "c" +
         std::to_string(getConsumers()) +
         (getSplitK() > 1 ? "k" + std::to_string(getSplitK()) : "") +
         (getSplitTail() ? "t" : "") +
         (getClusterM() > 1 ? "x" + std::to_string(getClusterM()) : "") +
         (getGrouped() ? "_" + stringifyGroupLayout(*getGrouped()).str() : "") +
         (getSwiglu() ? "_swiglu" : "") + (getQuantize() ? "_quantize" : "") +
         (getTmaStore() ? "_tma" : "");
}
