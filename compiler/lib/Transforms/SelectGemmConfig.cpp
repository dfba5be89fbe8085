//===- SelectGemmConfig.cpp - tile configuration of FP8 matmuls -----------===//
//
// The heuristic (compiler/docs/gemm-kernels.md): decode-sized M (<= 64, known
// statically) gets one consumer warpgroup and 64-wide N tiles, so that more
// blocks stream the weights; everything else gets two consumers and 128x128
// tiles. Stages fill shared memory up to a ring of 8.
//
//===----------------------------------------------------------------------===//

#include "kiln/Dialect/Kiln/KilnOps.h"
#include "kiln/Transforms/Passes.h"

namespace kiln {
#define GEN_PASS_DEF_KILNSELECTGEMMCONFIG
#include "kiln/Transforms/Passes.h.inc"
} // namespace kiln

using namespace mlir;

namespace {

constexpr int64_t kMaxStages = 8;
constexpr int64_t kStageBudgetBytes = 200 * 1024;

kiln::GemmConfigAttr chooseConfig(MLIRContext *context, int64_t m) {
  bool decode = !ShapedType::isDynamic(m) && m <= 64;
  int64_t consumers = decode ? 1 : 2;
  int64_t blockM = 64 * consumers, blockN = decode ? 64 : 128;
  int64_t stageBytes = (blockM + blockN) * 128;
  int64_t stages = std::min(kMaxStages, kStageBudgetBytes / stageBytes);
  return kiln::GemmConfigAttr::get(context, blockM, blockN, stages, consumers);
}

struct SelectGemmConfigPass
    : kiln::impl::KilnSelectGemmConfigBase<SelectGemmConfigPass> {
  void runOnOperation() override {
    getOperation().walk([](kiln::ScaledMatmulOp op) {
      if (op->hasAttr("gemm_config"))
        return;
      int64_t m = cast<RankedTensorType>(op.getA().getType()).getDimSize(0);
      op->setAttr("gemm_config", chooseConfig(op.getContext(), m));
    });
  }
};

} // namespace
