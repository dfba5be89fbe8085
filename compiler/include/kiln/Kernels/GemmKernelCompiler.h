//===- GemmKernelCompiler.h - FP8 GEMM kernels to PTX and cubins -*- C++
//-*-===//
//
// The one definition of the pipeline that takes a #kiln.gemm_config to an
// sm_90a kernel: kiln-emit-gemm-kernels, the lowering to LLVM and NVVM,
// gpu-module-to-binary to PTX (in process), then ptxas to a cubin (a
// subprocess). kiln-opt registers the pipeline as `kiln-gemm-to-ptx`;
// kilnc and kiln-compile-gemm.py both go through it.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_KERNELS_GEMMKERNELCOMPILER_H
#define KILN_KERNELS_GEMMKERNELCOMPILER_H

#include "kiln/Dialect/Kiln/KilnAttrs.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/Error.h"

#include <optional>
#include <string>

namespace kiln {

/// The target every kernel is compiled for.
constexpr const char *kGemmTargetChip = "sm_90a";

/// The dialects, target interfaces and LLVM IR translations the pipeline
/// needs.
void registerGemmKernelDialects(mlir::DialectRegistry &registry);

/// Registers the passes of the pipeline and the pipeline itself, as
/// `kiln-gemm-to-ptx`.
void registerGemmKernelPipeline();

/// Appends the kernel pipeline to `pm` (on builtin.module): emission, then
/// SCF/arith/index/CF/NVVM to LLVM, NVVM target attachment (sm_90a, PTX 8.0,
/// O3) and gpu-module-to-binary with format=isa (PTX).
void buildGemmToPtxPipeline(mlir::OpPassManager &pm);

/// The PTX of the kernel of `config`, compiled in process in `context`
/// (which must hold registerGemmKernelDialects' registry).
llvm::Expected<std::string> compileGemmKernelToPtx(mlir::MLIRContext &context,
                                                   GemmConfigAttr config);

/// What ptxas made of one kernel.
struct AssembledKernel {
  std::string cubin;
  /// Registers per thread (-1 when ptxas did not say).
  int registers = -1;
  /// Bytes of spill stores and loads (ptxas -v); any is an error for kilnc.
  int64_t spillBytes = 0;
  /// Whether ptxas warns that it serializes the kernel's wgmmas (it waits
  /// for each where it cannot prove an in-flight accumulator untouched):
  /// an error for kilnc, since the pipelined main loops rely on it not.
  bool serializedWgmma = false;
  /// ptxas' own report.
  std::string log;
};

/// Assembles `ptx` for sm_90a with `ptxas -v`. Fails with ptxas' report
/// when it does not succeed.
llvm::Expected<AssembledKernel> assemblePtx(llvm::StringRef ptxas,
                                            llvm::StringRef ptx,
                                            llvm::StringRef kernelName);

/// The ptxas to use: `explicitPath` if given, else $KILN_PTXAS, ptxas on the
/// PATH, /usr/local/cuda/bin/ptxas; nullopt if none is there.
std::optional<std::string> findPtxas(llvm::StringRef explicitPath);

} // namespace kiln

#endif // KILN_KERNELS_GEMMKERNELCOMPILER_H
