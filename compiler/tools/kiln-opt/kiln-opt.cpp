//===- kiln-opt.cpp - the kiln optimizer driver ---------------------------===//
//
// mlir-opt with the kiln dialect and the upstream dialects and passes Kiln's
// pipelines use. It parses, verifies, transforms and prints IR; it drives the
// lit suite under test/.
//
//===----------------------------------------------------------------------===//

#include "kiln/Dialect/Kiln/KilnDialect.h"
#include "kiln/Kernels/GemmKernelCompiler.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/ControlFlow/IR/ControlFlow.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;

namespace {

/// Deeper bracket nesting than any real IR has. MLIR's parser recurses once
/// per level and would overflow the stack on pathological input (thousands of
/// levels), so such input is rejected before parsing.
constexpr int kMaxNesting = 1000;

/// Rejects input nested deeper than kMaxNesting with a located error. Counts
/// (, [, {, < against their closers outside string literals and comments;
/// the `>` of `->` is not a closer.
LogicalResult checkNesting(const llvm::MemoryBuffer &input,
                           llvm::StringRef name) {
  llvm::StringRef text = input.getBuffer();
  int depth = 0, line = 1;
  size_t lineStart = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n') {
      ++line;
      lineStart = i + 1;
    } else if (c == '"') {
      for (++i; i < text.size() && text[i] != '"' && text[i] != '\n'; ++i)
        if (text[i] == '\\')
          ++i;
    } else if (c == '/' && text.substr(i, 2) == "//") {
      i = std::min(text.find('\n', i), text.size()) - 1;
    } else if (c == '(' || c == '[' || c == '{' || c == '<') {
      if (++depth > kMaxNesting) {
        llvm::errs() << (name == "-" ? "<stdin>" : name) << ":" << line << ":"
                     << i - lineStart + 1 << ": error: brackets nested deeper "
                     << "than " << kMaxNesting << " levels\n";
        return failure();
      }
    } else if (c == ')' || c == ']' || c == '}' ||
               (c == '>' && (i == 0 || text[i - 1] != '-'))) {
      depth = std::max(depth - 1, 0);
    }
  }
  return success();
}

} // namespace

int main(int argc, char **argv) {
  DialectRegistry registry;
  registry
      .insert<kiln::KilnDialect, arith::ArithDialect, cf::ControlFlowDialect,
              func::FuncDialect, gpu::GPUDialect, LLVM::LLVMDialect,
              math::MathDialect, memref::MemRefDialect, NVVM::NVVMDialect,
              nvgpu::NVGPUDialect, scf::SCFDialect, tensor::TensorDialect>();
  // The NVVM target and LLVM IR translation, for gpu-module-to-binary.
  kiln::registerGemmKernelDialects(registry);

  // Canonicalize, CSE, inlining, symbol DCE and the other generic passes.
  registerTransformsPasses();
  // Kiln's passes and the kernel pipeline (kiln-gemm-to-ptx) with the
  // passes it is made of: structured control flow and arith to LLVM, NVVM to
  // LLVM (inline PTX for what LLVM lacks), then PTX through NVPTX.
  kiln::registerGemmKernelPipeline();

  auto [inputFilename, outputFilename] = registerAndParseCLIOptions(
      argc, argv, "Kiln optimizer driver: the kiln dialect with MLIR 22\n",
      registry);
  MlirOptMainConfig config = MlirOptMainConfig::createFromCLOptions();
  if (config.shouldShowDialects() || config.shouldListPasses())
    return asMainReturnCode(
        MlirOptMain(argc, argv, inputFilename, outputFilename, registry));

  std::string error;
  std::unique_ptr<llvm::MemoryBuffer> input =
      openInputFile(inputFilename, &error);
  if (!input) {
    llvm::errs() << error << "\n";
    return EXIT_FAILURE;
  }
  if (failed(checkNesting(*input, inputFilename)))
    return EXIT_FAILURE;
  std::unique_ptr<llvm::ToolOutputFile> output =
      openOutputFile(outputFilename, &error);
  if (!output) {
    llvm::errs() << error << "\n";
    return EXIT_FAILURE;
  }
  if (failed(MlirOptMain(output->os(), std::move(input), registry, config)))
    return EXIT_FAILURE;
  output->keep();
  return EXIT_SUCCESS;
}
