//===- GemmKernelCompiler.cpp - FP8 GEMM kernels to PTX and cubins --------===//

#include "kiln/Kernels/GemmKernelCompiler.h"

#include "kiln/Dialect/Kiln/KilnDialect.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlow.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Target/LLVM/NVVM/Target.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/GPU/GPUToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/NVVM/NVVMToLLVMIRTranslation.h"
#include "llvm/ADT/ScopeExit.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Process.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/Regex.h"
#include "llvm/Support/raw_ostream.h"

#include <mutex>

using namespace mlir;

namespace kiln {

namespace {

/// The kernel pipeline as kiln-opt spells it (see kiln-compile-gemm.py).
constexpr const char *kPipeline =
    "kiln-emit-gemm-kernels,convert-scf-to-cf,convert-arith-to-llvm,"
    "convert-index-to-llvm,convert-cf-to-llvm,convert-nvvm-to-llvm,"
    "reconcile-unrealized-casts,"
    "nvvm-attach-target{module=kiln_kernels chip=sm_90a features=+ptx80 O=3},"
    "gpu-module-to-binary{format=isa}";

/// A matmul that carries `config` (a grouped one in the config's layout for
/// a grouped kernel): the emitter builds one kernel per configuration and
/// the kernel does not depend on the shapes.
std::string matmulCarrying(GemmConfigAttr config) {
  std::string text;
  llvm::raw_string_ostream os(text);
  if (std::optional<GroupLayout> layout = config.getGrouped()) {
    bool masked = *layout == GroupLayout::Masked;
    std::string rows = masked ? "2x4" : "8";
    std::string types =
        "tensor<" + rows + "x128xf8E4M3FN>, tensor<" + rows +
        "x1xf32>, tensor<2x128x128xf8E4M3FN>, tensor<2x1x1xf32>, tensor<" +
        (masked ? "2" : "3") + "xi32>";
    std::string result = "tensor<" + rows + "x128xbf16>";
    os << "func.func @gemm(%a: tensor<" << rows
       << "x128xf8E4M3FN>, %as: tensor<" << rows
       << "x1xf32>, %b: tensor<2x128x128xf8E4M3FN>, %bs: tensor<2x1x1xf32>, "
          "%g: tensor<"
       << (masked ? "2" : "3") << "xi32>) -> " << result
       << " {\n  %y = kiln.grouped_scaled_matmul "
       << stringifyGroupLayout(*layout)
       << " %a, %as, %b, %bs, %g {gemm_config = " << config << "} : (" << types
       << ") -> " << result << "\n  return %y : " << result << "\n}\n";
    return text;
  }
  os << "func.func @gemm(%a: tensor<?x128xf8E4M3FN>, %as: tensor<?x1xf32>, "
        "%b: tensor<128x128xf8E4M3FN>, %bs: tensor<1x1xf32>) -> "
        "tensor<?x128xbf16> {\n"
        "  %y = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = "
     << config
     << "} : (tensor<?x128xf8E4M3FN>, tensor<?x1xf32>, "
        "tensor<128x128xf8E4M3FN>, tensor<1x1xf32>) -> tensor<?x128xbf16>\n"
        "  return %y : tensor<?x128xbf16>\n}\n";
  return text;
}

llvm::Error error(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

} // namespace

void registerGemmKernelDialects(DialectRegistry &registry) {
  registry.insert<KilnDialect, arith::ArithDialect, cf::ControlFlowDialect,
                  func::FuncDialect, gpu::GPUDialect, LLVM::LLVMDialect,
                  NVVM::NVVMDialect, scf::SCFDialect>();
  NVVM::registerNVVMTargetInterfaceExternalModels(registry);
  registerBuiltinDialectTranslation(registry);
  registerGPUDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  registerNVVMDialectTranslation(registry);
}

void registerGemmKernelPipeline() {
  static std::once_flag once;
  std::call_once(once, [] {
    registerSCFToControlFlowPass();
    registerArithToLLVMConversionPass();
    registerConvertControlFlowToLLVMPass();
    registerConvertIndexToLLVMPass();
    registerConvertNVVMToLLVMPass();
    registerReconcileUnrealizedCastsPass();
    registerGpuNVVMAttachTarget();
    registerGpuModuleToBinaryPass();
    registerKilnPasses();
    PassPipelineRegistration<>(
        "kiln-gemm-to-ptx",
        "emit the kernel of every #kiln.gemm_config and compile it to sm_90a "
        "PTX (a gpu.binary in the isa format)",
        buildGemmToPtxPipeline);
  });
}

void buildGemmToPtxPipeline(OpPassManager &pm) {
  // The pipeline text only names passes registered above; it cannot fail.
  if (failed(parsePassPipeline(kPipeline, pm)))
    llvm::report_fatal_error("kiln-gemm-to-ptx: bad pipeline text");
}

llvm::Expected<std::string> compileGemmKernelToPtx(MLIRContext &context,
                                                   GemmConfigAttr config) {
  registerGemmKernelPipeline();
  std::string diagnostics;
  llvm::raw_string_ostream diagnosticStream(diagnostics);
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diagnostic) {
    diagnosticStream << diagnostic.getLocation() << ": " << diagnostic << "\n";
    return success();
  });
  OwningOpRef<ModuleOp> module = parseSourceString<ModuleOp>(
      matmulCarrying(config), ParserConfig(&context), "kiln-gemm-kernel");
  if (!module)
    return error("cannot build the kernel module for " +
                 config.getKernelName() + ":\n" + diagnostics);
  PassManager pm(&context);
  buildGemmToPtxPipeline(pm);
  if (failed(pm.run(*module)))
    return error("the kernel pipeline failed for " + config.getKernelName() +
                 ":\n" + diagnostics);
  auto binary = module->lookupSymbol<gpu::BinaryOp>("kiln_kernels");
  if (!binary || binary.getObjects().empty())
    return error("the kernel pipeline left no gpu.binary for " +
                 config.getKernelName());
  auto object = cast<gpu::ObjectAttr>(binary.getObjects()[0]);
  return object.getObject().getValue().str();
}

llvm::Expected<AssembledKernel> assemblePtx(llvm::StringRef ptxas,
                                            llvm::StringRef ptx,
                                            llvm::StringRef kernelName) {
  SmallString<128> ptxPath, cubinPath, logPath;
  for (auto [path, suffix] :
       {std::make_pair(&ptxPath, "ptx"), std::make_pair(&cubinPath, "cubin"),
        std::make_pair(&logPath, "log")})
    if (std::error_code ec =
            llvm::sys::fs::createTemporaryFile(kernelName, suffix, *path))
      return error("cannot create a temporary file: " + ec.message());
  llvm::scope_exit cleanup([&] {
    for (const SmallString<128> &path : {ptxPath, cubinPath, logPath})
      llvm::sys::fs::remove(path);
  });
  {
    std::error_code ec;
    llvm::raw_fd_ostream os(ptxPath, ec);
    if (ec)
      return error("cannot write " + ptxPath + ": " + ec.message());
    os << ptx;
  }
  std::string arch = std::string("-arch=") + kGemmTargetChip;
  llvm::StringRef args[] = {ptxas, arch, "-v", ptxPath, "-o", cubinPath};
  std::optional<llvm::StringRef> redirects[] = {std::nullopt, logPath.str(),
                                                logPath.str()};
  std::string launchError;
  int status = llvm::sys::ExecuteAndWait(ptxas, args, std::nullopt, redirects,
                                         /*SecondsToWait=*/0, /*MemoryLimit=*/0,
                                         &launchError);
  AssembledKernel kernel;
  if (auto log = llvm::MemoryBuffer::getFile(logPath))
    kernel.log = (*log)->getBuffer().str();
  if (status != 0)
    return error("ptxas (" + ptxas + ") failed for " + kernelName +
                 (launchError.empty() ? "" : ": " + launchError) + "\n" +
                 kernel.log);
  auto cubin = llvm::MemoryBuffer::getFile(cubinPath, /*IsText=*/false);
  if (!cubin)
    return error("ptxas wrote no cubin for " + kernelName);
  kernel.cubin = (*cubin)->getBuffer().str();

  llvm::SmallVector<llvm::StringRef> match;
  if (llvm::Regex("Used ([0-9]+) registers").match(kernel.log, &match))
    kernel.registers = std::stoi(match[1].str());
  llvm::Regex spills("([0-9]+) bytes spill (stores|loads)");
  llvm::StringRef rest = kernel.log;
  while (spills.match(rest, &match)) {
    kernel.spillBytes += std::stoll(match[1].str());
    rest = rest.substr(rest.find(match[0]) + match[0].size());
  }
  kernel.serializedWgmma =
      llvm::Regex("wgmma[^\n]*serializ", llvm::Regex::IgnoreCase)
          .match(kernel.log);
  return kernel;
}

std::optional<std::string> findPtxas(llvm::StringRef explicitPath) {
  if (!explicitPath.empty())
    return explicitPath.str();
  if (std::optional<std::string> fromEnv =
          llvm::sys::Process::GetEnv("KILN_PTXAS");
      fromEnv && !fromEnv->empty())
    return *fromEnv;
  if (llvm::ErrorOr<std::string> onPath = llvm::sys::findProgramByName("ptxas"))
    return *onPath;
  const char *toolkit = "/usr/local/cuda/bin/ptxas";
  if (llvm::sys::fs::can_execute(toolkit))
    return std::string(toolkit);
  return std::nullopt;
}

} // namespace kiln
