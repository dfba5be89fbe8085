//===- SelectGemmConfig.cpp - tile configuration of FP8 matmuls -----------===//
//
// The heuristic (compiler/docs/gemm-kernels.md "Configuration heuristic"):
// decode-sized M (<= 64, known statically) gets one consumer warpgroup and
// 64-wide N tiles, M <= 128 two consumers and 128x64 tiles, so that more
// blocks stream the weights (64x128 with one consumer where K is at most 512
// and 128x128 tiles would still give every multiprocessor one; 64x64 where
// the 128x64 tiles would be split along K and 64x64 ones less); everything
// else gets two consumers and 128x128 tiles. Stages fill shared memory up to a
// ring of 8. For a static M (above 128 only with K >= 2048), N and K, split-K
// cuts each tile's chain of K blocks into slices computed by separate blocks,
// when that shortens the busiest multiprocessor's work. Grouped GEMMs get the
// grouped kernel of their layout, configured for the rows one group sees, with
// the tiles of all groups that have rows counted for split-K (they run in one
// launch). The ring is a power of two of stages (its index arithmetic is then
// shifts and masks); 2-block clusters (`cluster_m = 2`) only for 128x256
// tiles (measured neutral for 128x128 once its ring is 4 deep, gemm-kernels.md
// "Version 8"; 2-10% faster for 128x256, "Session 16"). Plain GEMMs with a
// static M above 128 take 128x192 or 128x256 tiles where that needs fewer waves
// of tiles by more than a wider tile costs over a 128-wide one (gemm-kernels.md
// "Session 9", "Session 10"); plain unsplit GEMMs with N % 8 == 0 store their
// output with TMA (gemm-kernels.md "Version 9").
//
//===----------------------------------------------------------------------===//

#include "kiln/Dialect/Kiln/KilnOps.h"
#include "kiln/FrontEnd/GraphConventions.h"
#include "kiln/Transforms/Passes.h"

#include "llvm/ADT/bit.h"
#include <cmath>

namespace kiln {
#define GEN_PASS_DEF_KILNSELECTGEMMCONFIG
#include "kiln/Transforms/Passes.h.inc"
} // namespace kiln

using namespace mlir;

namespace {

constexpr int64_t kMaxStages = 8;
constexpr int64_t kStageBudgetBytes = 200 * 1024;
/// Multiprocessors of the target (H100 SXM and H200 both have 132).
constexpr int64_t kMultiprocessors = 132;
/// Split-K bounds: at most 16 slices (the reduction is unrolled), each of at
/// least 4 K blocks (512 of K), so that the partial's store and the
/// reduction stay small next to the slice's MMAs.
constexpr int64_t kMaxSplitK = 16;
constexpr int64_t kMinSliceBlocks = 4;
/// Above 128 rows, split only chains of at least this many K blocks.
constexpr int64_t kMinLargeSplitBlocks = 16;
/// The reduction loads every slice's partial of a thread's accumulator at
/// once (split_k * block_n / 2 registers); past 128 of them ptxas spills.
constexpr int64_t kReductionRegisters = 128;
/// What a work unit costs beyond its K blocks, in K blocks: the BF16
/// epilogue (1); with split-K also the FP32 partial's store, the arrival
/// and, for one slice in S, the reduction (1 more).
constexpr int64_t kEpilogueBlocks = 1;
constexpr int64_t kSplitBlocks = 1;
/// A 128x192 tile takes this many times as long as a 128x128 one, measured
/// per wave on H100 at M = 4096 with the wide tile's scales staged
/// (gemm-kernels.md "Session 9"): 1.30-1.33 for chains of up to 56 K blocks
/// (32768 x 512, 24576 x 1536, 7168 x 2048, 2112 x 7168, 4096 x 7168), 1.40
/// at 128 (7168 x 16384). Before staging the wide tile loaded its scales
/// from global memory one block ahead: 1.48 and 1.72 ("Version 9").
constexpr double kWideTileCostShort = 1.33;
constexpr double kWideTileCostLong = 1.40;
/// Chains of at most this many K blocks count as short (kWideTileCostShort).
constexpr int64_t kShortChainBlocks = 64;
/// The same for a 128x256 tile (two 128-column halves, one after the other;
/// gemm-kernels.md "Session 10") in a 2-block cluster that multicasts each
/// 256-row B slice to both blocks ("Session 16"): 16 KB from L2 per block
/// and 128x128 of MACs, half of a 128x128 tile's 32. Measured per wave
/// against 128x128 tiles (H100, M = 4096): 1.85 at 4096 x 7168, 1.94-1.98
/// at 16 K blocks or fewer (7168 x 2048, 24576 x 1536, 32768 x 512), 1.94
/// at 128 (7168 x 16384). Unclustered it was 1.96 and 2.0-2.06: the two
/// waits per K block ate what the bytes saved.
constexpr double kWidestTileCostShort = 1.92;
constexpr double kWidestTileCostLong = 1.94;

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Split tail (gemm-abi.md "Split tail"): at most this many slices per tail
/// tile (128-wide tiles; the reduction of 8 compiles without spills).
constexpr int64_t kMaxTailSplit = 8;

/// The busiest multiprocessor's K blocks (as chooseSplitK counts them) for
/// `tiles` tiles of `numKB` blocks when the last partial wave's tiles are
/// split `split` ways, or whole (`split` 1).
int64_t tailSplitCost(int64_t tiles, int64_t numKB, int64_t split) {
  int64_t full = tiles / kMultiprocessors * kMultiprocessors;
  int64_t tail = tiles - full;
  int64_t cost = full / kMultiprocessors * (numKB + kEpilogueBlocks);
  if (tail == 0)
    return cost;
  if (split == 1)
    return cost + numKB + kEpilogueBlocks;
  return cost + ceilDiv(tail * split, kMultiprocessors) *
                    (ceilDiv(numKB, split) + kEpilogueBlocks + kSplitBlocks);
}

/// A split tail must take at most this fraction of the whole tiles' time:
/// its kernel stores without TMA (worth 1-5% at M = 4096), and the model
/// ignores the reduction's latency.
constexpr double kTailSplitGain = 0.9;
/// The fraction of tailSplitCost's predicted gain a split tail realizes
/// (measured: about half at 4096 x 2112 x 7168, gemm-kernels.md "Known
/// limits and next steps").
constexpr double kTailSplitRealized = 0.5;

/// The tail split that minimizes tailSplitCost for at least a wave of
/// tiles of long chains, or 1 (none, also when it saves too little).
int64_t chooseTailSplit(int64_t tiles, int64_t numKB) {
  if (tiles < kMultiprocessors || numKB < kMinLargeSplitBlocks)
    return 1;
  int64_t whole = tailSplitCost(tiles, numKB, 1);
  int64_t best = 1, bestCost = int64_t(kTailSplitGain * double(whole));
  for (int64_t split = 2; split <= kMaxTailSplit; ++split) {
    if (numKB / split < kMinSliceBlocks)
      break;
    int64_t cost = tailSplitCost(tiles, numKB, split);
    if (cost < bestCost) {
      best = split;
      bestCost = cost;
    }
  }
  return best;
}

/// The split that minimizes the K blocks the busiest multiprocessor runs:
/// waves of work units times each unit's blocks plus its fixed cost. Ties go
/// to the smaller split.
int64_t chooseSplitK(int64_t tiles, int64_t numKB, int64_t blockN) {
  int64_t maxSplit = std::min(kMaxSplitK, kReductionRegisters / (blockN / 2));
  int64_t best = 1;
  int64_t bestCost =
      ceilDiv(tiles, kMultiprocessors) * (numKB + kEpilogueBlocks);
  for (int64_t split = 2; split <= maxSplit; ++split) {
    if (numKB / split < kMinSliceBlocks)
      break;
    int64_t waves = ceilDiv(tiles * split, kMultiprocessors);
    int64_t cost =
        waves * (ceilDiv(numKB, split) + kEpilogueBlocks + kSplitBlocks);
    if (cost < bestCost) {
      best = split;
      bestCost = cost;
    }
  }
  return best;
}

/// The configuration for GEMMs of M x N x K; `groups` of them run in one
/// launch (a grouped kernel of layout `grouped`; dynamic: unknown, no split).
kiln::GemmConfigAttr
chooseConfig(MLIRContext *context, int64_t m, int64_t n, int64_t k,
             int64_t groups = 1,
             std::optional<kiln::GroupLayout> grouped = std::nullopt) {
  bool known = !ShapedType::isDynamic(m);
  bool decode = known && m <= 64, small = known && m <= 128;
  int64_t consumers = decode ? 1 : 2;
  int64_t blockM = 64 * consumers, blockN = small ? 64 : 128;
  // A grouped decode GEMM whose groups give every multiprocessor a 64x128
  // tile streams the weights faster with them than with 64x64 ones (half
  // the tiles, each tile's fixed cost over twice the bytes: 84% against
  // 70% of HBM at 8 groups of 1 row x 4096 x 7168, gemm-kernels.md
  // "Grouped kernels").
  if (grouped && decode && !ShapedType::isDynamic(n) &&
      !ShapedType::isDynamic(groups) &&
      groups * ceilDiv(m, blockM) * ceilDiv(n, 128) >= kMultiprocessors)
    blockN = 128;
  // A plain GEMM of 65-128 rows whose tiles are chains of at most 4 K blocks
  // is dominated by each tile's fixed cost (first loads, epilogue): 128-wide
  // tiles run half as many of them where 128x128 tiles still give every
  // multiprocessor one (128 x 32768 x 512: 16.9 -> 16.1 us, gemm-kernels.md
  // "Version 7"), and 64x128 tiles with one consumer do better still (two
  // tile rows, the second reading the weights from L2: 14.9 -> 14.4 us,
  // "Session 12"). Measured not to carry over to longer chains (128 x 24576
  // x 1536: 23.8 -> 24.7 us with 128x128, level with 64x128) or to 64x128
  // tiles at M <= 64 (level).
  if (small && !decode && !grouped && !ShapedType::isDynamic(n) &&
      !ShapedType::isDynamic(k) && k <= 4 * 128 &&
      ceilDiv(m, blockM) * ceilDiv(n, 128) >= kMultiprocessors) {
    blockN = 128;
    blockM = 64;
    consumers = 1;
  }
  // 65-128 rows whose 128x64 tiles would be split along K take 64x64 tiles
  // (one consumer) where that needs a smaller split: twice the tiles, the
  // second tile row reading the weights from L2 (M runs fastest in the
  // raster), against a split's partial-sum round trips, which cost ~2 us
  // at these sizes. H100: 128 x 4096 x 7168 20.0 -> 18.7 us (k2 -> none),
  // 128 x 2112 x 7168 14.8 -> 14.2 (k4 -> k2); where the 128x64 tiles run
  // unsplit they stay (7168 x 16384 48.5 against 62.8; gemm-kernels.md
  // "Session 11").
  if (small && !decode && !grouped && blockN == 64 &&
      !ShapedType::isDynamic(n) && !ShapedType::isDynamic(k)) {
    int64_t numKB = ceilDiv(k, 128);
    int64_t split128 =
        chooseSplitK(ceilDiv(m, 128) * ceilDiv(n, blockN), numKB, blockN);
    int64_t split64 =
        chooseSplitK(ceilDiv(m, 64) * ceilDiv(n, blockN), numKB, blockN);
    if (split128 > 1 && split64 < split128) {
      consumers = 1;
      blockM = 64;
    }
  }
  // Exactly 128 rows on unsplit 128x64 tiles take 64x128 tiles with one
  // consumer instead: as many tiles, each with one warpgroup's m64n128
  // chain for two warpgroups' m64n64 ones (the second tile row reads the
  // weights from L2). H100, same calls: 128 x 7168 x 16384 48.6 -> 47.4 us,
  // 128 x 24576 x 1536 20.9 -> 20.5, 128 x 7168 x 2048 11.8 -> 11.7, and
  // 1-2% in session 13's call (gemm-kernels.md "Session 20"). Decode steps
  // run at bucket sizes (powers of two), so their 65-128 rows are 128. Not
  // chosen below 128 rows: the second tile row's box would be filled with
  // zeros past M, which costs more than reading rows ("Session 18"), where
  // the 128x64 tile clamps its box to M (a kernel chosen for 128 and run on
  // fewer rows, as a prefill chunk's may be, pays that fill).
  if (small && !decode && !grouped && blockM == 128 && blockN == 64 &&
      m == 128 && !ShapedType::isDynamic(n) && !ShapedType::isDynamic(k) &&
      chooseSplitK(ceilDiv(n, 64), ceilDiv(k, 128), 64) == 1) {
    blockM = 64;
    blockN = 128;
    consumers = 1;
  }
  int64_t stageBytes = (blockM + blockN) * 128;
  // The largest power of two that fits: 128x128 tiles get 4 stages, not 6
  // (M = 4096: 0.84 -> 0.87 of cuBLAS; 32768 x 512 -7%, 4096 x 7168 -4%,
  // the rest equal; gemm-kernels.md "Version 8").
  int64_t stages = llvm::bit_floor(static_cast<uint64_t>(
      std::min(kMaxStages, kStageBudgetBytes / stageBytes)));
  bool plainStatic =
      !grouped && !ShapedType::isDynamic(n) && !ShapedType::isDynamic(k);
  // Wide tiles: fewer bytes per MAC through L2 (40 KB per K block for 1.5
  // times the MACs) but fewer, longer tiles; worth it when the waves of
  // tiles drop by more than the tile's cost grows (M = 4096: 2112 x 7168
  // 5 -> 3 waves, 24576 x 1536 47 -> 32, 7168 x 2048 14 -> 10, 32768 x 512
  // 63 -> 42; not 7168 x 16384, 14 -> 10 at 1.40, or 4096 x 7168, 8 -> 6).
  // A split tail instead: the last partial wave's tiles split along K over
  // the multiprocessors (4096 x 2112 x 7168: 544 tiles are 4 waves and 16
  // tiles, whose fifth wave costs a whole one; gemm-kernels.md "Session 6").
  // Grouped GEMMs weigh 128x192 tiles the same way over the tiles of all
  // their groups (one launch); they have no split tail and no 128x256
  // tiles (gemm-kernels.md "Session 11").
  bool groupedStatic = grouped && !ShapedType::isDynamic(n) &&
                       !ShapedType::isDynamic(k) &&
                       !ShapedType::isDynamic(groups);
  int64_t tailSplit = 1;
  int64_t clusterM = 1;
  if ((plainStatic || groupedStatic) && known && !small && blockN == 128) {
    int64_t numKB = ceilDiv(k, 128);
    auto waves = [&](int64_t width) {
      return ceilDiv(groups * ceilDiv(m, blockM) * ceilDiv(n, width),
                     kMultiprocessors);
    };
    double cost =
        numKB <= kShortChainBlocks ? kWideTileCostShort : kWideTileCostLong;
    int64_t tiles = groups * ceilDiv(m, blockM) * ceilDiv(n, 128);
    if (plainStatic)
      tailSplit = chooseTailSplit(tiles, numKB);
    // The split tail, in waves: it realizes about half the gain its cost
    // model predicts (kTailSplitRealized), which against wide tiles decides
    // 1000 x 2112 x 7168 (k8t 38.8 us, 128x192 33.7; gemm-kernels.md
    // "Session 9").
    double tailCost = double(tailSplitCost(tiles, numKB, tailSplit)) /
                      double(numKB + kEpilogueBlocks);
    double tailWaves =
        waves(128) - kTailSplitRealized * (double(waves(128)) - tailCost);
    double cost256 =
        numKB <= kShortChainBlocks ? kWidestTileCostShort : kWidestTileCostLong;
    double best = std::min<double>(waves(128), tailWaves);
    if (cost * waves(192) < best) {
      best = cost * waves(192);
      blockN = 192;
    }
    // 128x256 tiles only where they beat both, for chains long enough that
    // the tile's plainly stored 64 KB epilogue stays small: 4096 x 4096 x
    // 7168 (4 waves instead of 8, or 6 of 128x192 tiles) and, clustered,
    // 4096 x 7168 x 16384 (7 against 14; 727-737 against 742-773 us for
    // 128x128, cuBLAS 728-758 in the same passes; gemm-kernels.md
    // "Session 10", "Session 16"). In pairs of blocks along M that share
    // B by multicast wherever there are two row blocks.
    if (plainStatic && numKB >= kMinLargeSplitBlocks &&
        cost256 * waves(256) < best) {
      blockN = 256;
      clusterM = ceilDiv(m, blockM) >= 2 ? 2 : 1;
    }
    if (blockN != 128) {
      tailSplit = 1;
      stages = llvm::bit_floor(static_cast<uint64_t>(
          std::min(kMaxStages, kStageBudgetBytes / ((blockM + blockN) * 128))));
    }
  }
  // Split-K where the tiles leave multiprocessors idle, with the final tile
  // width: any static M <= 128, and larger ones whose tiles are long chains
  // (300 x 2112 x 7168, 51 tiles of 56 K blocks: 28.9 -> 22.5 us; 300 x 129
  // x 1024, 6 tiles of 8 blocks: 14.3 -> 15.3 us, not split).
  // (Grouped 192-wide kernels are unsplit.)
  int64_t splitK = tailSplit;
  if (tailSplit == 1 && !(grouped && blockN == 192) && known &&
      !ShapedType::isDynamic(n) && !ShapedType::isDynamic(k) &&
      !ShapedType::isDynamic(groups)) {
    int64_t tiles = groups * ceilDiv(m, blockM) * ceilDiv(n, blockN);
    // Above 128 rows only where SMs would idle: splitting to even out
    // waves lost (4096 x 2112 x 7168: 182.5 against 144.2 us, version 7).
    if (small ||
        (ceilDiv(k, 128) >= kMinLargeSplitBlocks && tiles < kMultiprocessors))
      splitK = chooseSplitK(tiles, k / 128, blockN);
  }
  // TMA stores run while the next tile's MMAs do (5-15% at M = 4096, K <=
  // 2048; 1-5% at K >= 7168 with the pipelined main loop). They stage the
  // whole tile: plain stores where that does not fit. Grouped 128x128
  // kernels too (their warpgroups whose rows end past the group store
  // plainly): 8192 rows x 7168 x 2048 -4 to -5%, x 4096 x 7168 -1 to -2%
  // (session 7); the single-consumer 64x128 one would spill.
  bool groupedWide = grouped && blockM == 128 && blockN >= 128 &&
                     consumers == 2 && !ShapedType::isDynamic(n);
  bool tmaStore =
      (plainStatic || groupedWide) && splitK == 1 && blockN % 64 == 0 &&
      n % 8 == 0 &&
      kiln::GemmConfigAttr::getSharedMemoryBytes(
          blockM, blockN, stages, consumers, splitK, grouped.has_value(),
          /*tmaStore=*/true) <= kiln::GemmConfigAttr::kMaxSharedMemoryBytes;
  return kiln::GemmConfigAttr::get(context, blockM, blockN, stages, consumers,
                                   splitK, grouped, clusterM,
                                   /*swiglu=*/false, tmaStore,
                                   /*quantize=*/false,
                                   /*splitTail=*/tailSplit > 1);
}

/// The gate and up GEMMs of a kiln.swiglu marked for fusion
/// (kiln::kFuseSwiGLUAttrName), if the SwiGLU epilogue kernel can compute
/// it: contiguous grouped GEMMs over the same rows, offsets and weight
/// shape [G, I, K], read by the swiglu alone, I a multiple of 128 (the
/// fused N = 2I is whole 256-column pairs of 128x128 scale blocks), and a
/// BF16 result (what the kernel stores).
std::optional<
    std::pair<kiln::GroupedScaledMatmulOp, kiln::GroupedScaledMatmulOp>>
fusableGateUp(kiln::SwiGLUOp swiglu) {
  if (!swiglu->hasAttr(kiln::kFuseSwiGLUAttrName) || !swiglu.getUp())
    return std::nullopt;
  auto gate = swiglu.getGate().getDefiningOp<kiln::GroupedScaledMatmulOp>();
  auto up = swiglu.getUp().getDefiningOp<kiln::GroupedScaledMatmulOp>();
  if (!gate || !up || gate == up ||
      gate.getLayout() != kiln::GroupLayout::Contiguous ||
      up.getLayout() != kiln::GroupLayout::Contiguous ||
      gate.getA() != up.getA() || gate.getAScales() != up.getAScales() ||
      gate.getGroups() != up.getGroups() ||
      gate.getB().getType() != up.getB().getType() || !gate->hasOneUse() ||
      !up->hasOneUse() ||
      !cast<ShapedType>(swiglu.getType()).getElementType().isBF16())
    return std::nullopt;
  auto b = cast<RankedTensorType>(gate.getB().getType());
  if (!b.hasStaticShape() || b.getDimSize(1) % 128 != 0)
    return std::nullopt;
  return std::make_pair(gate, up);
}

struct SelectGemmConfigPass
    : kiln::impl::KilnSelectGemmConfigBase<SelectGemmConfigPass> {
  void runOnOperation() override {
    getOperation().walk([](kiln::ScaledMatmulOp op) {
      if (op->hasAttr("gemm_config"))
        return;
      auto a = cast<RankedTensorType>(op.getA().getType());
      auto b = cast<RankedTensorType>(op.getB().getType());
      op->setAttr("gemm_config",
                  chooseConfig(op.getContext(), a.getDimSize(0),
                               b.getDimSize(0), b.getDimSize(1)));
    });
    // A grouped GEMM runs one GEMM per expert group in one launch; each
    // sees the rows of its group: C in the masked layout (all G groups
    // counted as full), and in the contiguous layout the mean under uniform
    // routing over the min(G, T) groups that can have rows, ceil(T / that)
    // (T = tokens * top_k routed rows), plus one standard deviation of the
    // multinomial counts, ceil(sqrt(mean * (1 - 1 / groups))): at decode, 8
    // groups of 1 (+1) row. Routed groups are rarely the mean: at a 4096-
    // token prefill (32768 rows over 256 experts, 128 ± 11) half of them
    // spill into a second 128-row tile, and the tiles chosen for exactly 128
    // rows (128x64, the M <= 128 rule) ran the down projection in 2190 us
    // against 1507 for the 128x192 ones that 140 rows choose (1472 and 1479
    // with balanced groups; bench/results/grouped-routed-h100.md).
    getOperation().walk([](kiln::GroupedScaledMatmulOp op) {
      if (op->hasAttr("gemm_config"))
        return;
      auto a = cast<RankedTensorType>(op.getA().getType());
      auto b = cast<RankedTensorType>(op.getB().getType());
      int64_t rows = a.getDimSize(a.getRank() - 2), groups = b.getDimSize(0);
      if (op.getLayout() == kiln::GroupLayout::Contiguous &&
          !ShapedType::isDynamic(rows)) {
        if (ShapedType::isDynamic(groups)) {
          rows = ShapedType::kDynamic;
        } else {
          groups = std::max<int64_t>(1, std::min(groups, rows));
          int64_t mean = std::max<int64_t>(1, ceilDiv(rows, groups));
          rows = mean + static_cast<int64_t>(std::ceil(std::sqrt(
                            double(mean) * (1.0 - 1.0 / double(groups)))));
        }
      } else if (op.getLayout() == kiln::GroupLayout::Contiguous) {
        groups = ShapedType::kDynamic;
      }
      op->setAttr("gemm_config",
                  chooseConfig(op.getContext(), rows, b.getDimSize(1),
                               b.getDimSize(2), groups, op.getLayout()));
    });
    // A fused gate/up GEMM gets the gate's tiles (the heuristic's choice
    // for its rows) widened to 128 columns, the one width the
    // SwiGLU epilogue pairs (64 gate and 64 up columns per tile), unsplit.
    getOperation().walk([](kiln::SwiGLUOp op) {
      if (op->hasAttr(kiln::kGemmConfigAttrName))
        return;
      auto gateUp = fusableGateUp(op);
      if (!gateUp)
        return;
      auto gate = gateUp->first->getAttrOfType<kiln::GemmConfigAttr>(
          kiln::kGemmConfigAttrName);
      int64_t blockN = 128;
      int64_t stages = llvm::bit_floor(static_cast<uint64_t>(
          std::min(kMaxStages,
                   kStageBudgetBytes / ((gate.getBlockM() + blockN) * 128))));
      // When the result only feeds the down projection's quantization,
      // the kernel stores that instead (epilogue = swiglu_quantize): the
      // same codes and scales, without the BF16 round trip or the
      // quantize launch (gemm-kernels.md "Quantized SwiGLU epilogue").
      bool quantize = false;
      if (op->hasOneUse())
        if (auto q = dyn_cast<kiln::QuantizeOp>(*op->user_begin())) {
          quantize = !q.getScales().use_empty();
          for (Operation *user : q.getScales().getUsers()) {
            auto down = dyn_cast<kiln::GroupedScaledMatmulOp>(user);
            quantize = quantize && down &&
                       down.getGroups() == gateUp->first.getGroups();
          }
        }
      op->setAttr(kiln::kGemmConfigAttrName,
                  kiln::GemmConfigAttr::get(
                      op.getContext(), gate.getBlockM(), blockN, stages,
                      gate.getConsumers(), /*splitK=*/1,
                      kiln::GroupLayout::Contiguous, /*clusterM=*/1,
                      /*swiglu=*/true, /*tmaStore=*/false, quantize));
    });
  }
};

} // namespace
