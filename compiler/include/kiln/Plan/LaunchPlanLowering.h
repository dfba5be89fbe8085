//===- LaunchPlanLowering.h - kiln IR to launch plans ----------*- C++ -*-===//
//
// The back end of kilnc: each step function of a model graph
// (GraphConventions.h) becomes a kiln::LaunchPlan of compiler/docs/artifact.md,
// one PlanStep per op, one buffer per tensor value, the buffers placed in one
// arena with reuse between buffers whose lifetimes do not overlap.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_PLAN_LAUNCHPLANLOWERING_H
#define KILN_PLAN_LAUNCHPLANLOWERING_H

#include "kiln/Dialect/Kiln/KilnAttrs.h"
#include "kiln/artifact.h"
#include "kiln/config.h"

#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/SetVector.h"

#include <map>
#include <string>
#include <vector>

namespace kiln {

/// Everything the plans of a module need besides kernel code.
struct LoweredModel {
  std::map<std::string, LaunchPlan> plans;
  /// The checkpoint tensors the plans read, in order of first use.
  std::vector<ArtifactWeight> weights;
  /// The GEMM configurations the plans' gemm steps use, in order of first
  /// use; each becomes a kernel named GemmConfigAttr::getKernelName().
  llvm::SetVector<GemmConfigAttr> gemmConfigs;
  /// The module's kiln.expert_parallel placement (disabled without one).
  ArtifactExpertParallel expertParallel;
};

/// The module attribute (a #kiln.expert_parallel) that makes every
/// kiln.moe_permute / kiln.moe_unpermute an expert-parallel exchange
/// (artifact.md "Expert parallelism"): kilnc --ep sets it.
constexpr const char *kExpertParallelModuleAttr = "kiln.expert_parallel";

/// The module attribute (an i64, bytes) that lets decode plans gather small
/// expert-parallel exchanges (artifact.md "Gathered exchanges"): steps whose
/// ranks x tokens x top_k FP8 rows fit move every rank's whole send buffer,
/// fixed sizes a CUDA Graph can hold. kilnc --ep-gather-bytes sets it;
/// absent or 0: every exchange is packed.
constexpr const char *kExpertParallelGatherModuleAttr = "kiln.ep_gather_bytes";

/// Lowers every function of `module` to a launch plan. Every matmul must
/// carry a `gemm_config` (kiln-select-gemm-config). With a `config`, weight
/// dtypes and shapes come from the checkpoint layout it implies (and are
/// checked against the graph); without one, from the graph. Reports errors
/// as diagnostics located at the op that cannot be lowered.
mlir::FailureOr<LoweredModel> lowerToLaunchPlans(mlir::ModuleOp module,
                                                 const ModelConfig *config);

} // namespace kiln

#endif // KILN_PLAN_LAUNCHPLANLOWERING_H
