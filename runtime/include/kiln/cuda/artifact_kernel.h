//===- kiln/cuda/artifact_kernel.h - a GEMM kernel out of a .kiln artifact ===//
//
// The launch configuration an artifact's kernel entry describes
// (compiler/docs/artifact.md "kernels", gemm-abi.md "Kernel manifest"),
// validated, and the kernel loaded from its cubin. Shared by the CUDA
// backend and the tools that run an artifact's kernels directly.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_ARTIFACT_KERNEL_H
#define KILN_CUDA_ARTIFACT_KERNEL_H

#include "kiln/artifact.h"
#include "kiln/cuda/gemm_launcher.h"
#include "kiln/error.h"

#include <string>

namespace kiln::cuda {

/// Throws kiln::Error naming `origin` and the kernel for a configuration the
/// ABI rejects or an entry without a cubin.
inline GemmKernel loadArtifactGemmKernel(const ArtifactKernel &k,
                                         const std::string &origin) {
  GemmKernelConfig cfg;
  cfg.kernelName = k.name;
  cfg.blockM = k.blockM;
  cfg.blockN = k.blockN;
  cfg.stages = k.stages;
  cfg.consumerWarpgroups = k.consumers;
  cfg.sharedMemoryBytes = k.sharedMemoryBytes;
  cfg.splitK = k.splitK;
  cfg.splitTail = k.split == "tail";
  cfg.clusterM = k.clusterM;
  cfg.grouping = k.grouped == "contiguous" ? GemmGrouping::Contiguous
                 : k.grouped == "masked"   ? GemmGrouping::Masked
                                           : GemmGrouping::None;
  cfg.epilogue = k.epilogue == "swiglu" ? GemmEpilogue::Swiglu
                 : k.epilogue == "swiglu_quantize"
                     ? GemmEpilogue::SwigluQuantize
                     : GemmEpilogue::Store;
  cfg.tmaStore = k.store == "tma";
  cfg.stagedScales = k.scaleA == "tma";
  cfg.gridDependencyWait = k.griddepcontrol == "wait";
  cfg.clampedABox = k.aBox == "min_m";
  cfg.validate(origin + ": kernel " + k.name);
  if (k.cubin.empty())
    throw Error(origin + ": kernel " + k.name +
                " has no cubin (compiled with --no-cubin?); recompile with "
                "ptxas available");
  return GemmKernel(k.cubin.data(), k.cubin.size(), std::move(cfg));
}

} // namespace kiln::cuda

#endif // KILN_CUDA_ARTIFACT_KERNEL_H
