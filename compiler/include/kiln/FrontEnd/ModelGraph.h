//===- ModelGraph.h - DeepSeek-V3 config.json to kiln IR -------*- C++ -*-===//
//
// The model front end: the whole DeepSeek-V3 forward of a config, as one
// function of kiln ops per kind of step (GraphConventions.h), following the
// CPU reference (runtime/lib/cpu_model.cpp) op for op. The MTP module is not
// part of the steps.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_FRONTEND_MODELGRAPH_H
#define KILN_FRONTEND_MODELGRAPH_H

#include "kiln/config.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

/// One kind of step and the maxima its function is built for.
struct ModelStep {
  std::string name;
  int64_t maxTokens = 0;
  int64_t maxSequences = 0;
  /// With 2 or more, each MoE layer splits the step's tokens into this many
  /// micro-batches in a kiln.overlap (route, dispatch, experts, combine,
  /// residual stages), so that one micro-batch's dispatch and combine can
  /// run beside another's GEMMs. maxTokens must divide evenly.
  int64_t overlapMicroBatches = 1;
  /// Marks each MoE layer's routed-expert SwiGLU for fusion into the gate/up
  /// grouped GEMM (kFuseSwiGLUAttrName), whose intermediate is then BF16
  /// (what the fused kernel stores) before its FP8 quantization.
  bool fuseExpertSwiGLU = false;
};

/// Steps of at most this many tokens get their own decode plan when
/// max_batch is larger: its GEMMs get the kernels chosen for M <= 64
/// (64-row tiles, split-K), which stream the weights faster at small batch
/// than the 128-row ones chosen for M = max_batch.
constexpr int64_t kSmallDecodeTokens = 64;

/// `decode` (max_batch tokens of max_batch sequences), `decode_small`
/// (kSmallDecodeTokens of as many sequences, when max_batch is larger) and
/// `prefill` (prefill_chunk tokens of up to min(max_batch, prefill_chunk)
/// sequences). `overlapMicroBatches` applies to `prefill` (decode steps are
/// too small to split). `prefill` fuses the routed experts' SwiGLU into
/// their gate/up GEMM (3-7% faster at prefill-sized groups, no gain at
/// decode: bench/results/swiglu-epilogue-h100.md).
std::vector<ModelStep> defaultModelSteps(int64_t maxBatch, int64_t prefillChunk,
                                         int64_t overlapMicroBatches = 1);

/// Builds the graph of `config` (already validated) with one function per
/// step; `origin` (the config file) is the location of every op. Throws
/// kiln::Error for a config the graph cannot express (a BF16 checkpoint,
/// bad RoPE fields) or a step whose tokens its micro-batches do not divide.
mlir::OwningOpRef<mlir::ModuleOp>
buildModelGraph(mlir::MLIRContext &context, const ModelConfig &config,
                llvm::ArrayRef<ModelStep> steps, llvm::StringRef origin);

} // namespace kiln

#endif // KILN_FRONTEND_MODELGRAPH_H
