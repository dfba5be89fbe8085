//===- Passes.td - kiln compiler passes ---------------------*- tablegen -*-===//

#ifndef KILN_TRANSFORMS_PASSES_TD
#define KILN_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def KilnSelectGemmConfig : Pass<"kiln-select-gemm-config", "mlir::ModuleOp"> {
  let summary = "choose the tile configuration of every FP8 matmul";
  let description = [{
    Attaches a `#kiln.gemm_config` to each `kiln.scaled_matmul` and
    `kiln.grouped_scaled_matmul` that has none, chosen from its static N and
    K (and M when known) by the heuristic documented in
    compiler/docs/gemm-kernels.md. A grouped GEMM is one GEMM per group, so
    its M is the rows of one group: the capacity C in the masked layout, the
    mean ceil(T / G) under uniform routing in the contiguous one.
    Configurations already present (written by hand or by an offline search)
    are kept.
  }];
  let dependentDialects = ["kiln::KilnDialect"];
}

def KilnEmitGemmKernels : Pass<"kiln-emit-gemm-kernels", "mlir::ModuleOp"> {
  let summary = "emit the warp-specialized sm_90a kernel of every GEMM config";
  let description = [{
    For every distinct `#kiln.gemm_config` on a `kiln.scaled_matmul`, emits
    one kernel into `gpu.module @kiln_kernels`: a TMA producer warpgroup and
    consumer warpgroups issuing FP8 `wgmma`, a multi-stage shared-memory ring
    guarded by mbarriers, per-128-K promotion with the 1x128 and 128x128
    scales, a persistent tile loop and a BF16 epilogue, following the launch
    ABI of compiler/docs/gemm-abi.md. Each matmul gets a `kernel` symbol
    reference to its kernel. The kernels are in the NVVM, LLVM, SCF and arith
    dialects; the standard pipeline (convert-scf-to-cf, convert-arith-to-llvm,
    convert-cf-to-llvm, convert-nvvm-to-llvm, reconcile-unrealized-casts,
    nvvm-attach-target, gpu-module-to-binary) takes them to PTX.
  }];
  let dependentDialects = [
    "kiln::KilnDialect", "mlir::arith::ArithDialect", "mlir::gpu::GPUDialect",
    "mlir::LLVM::LLVMDialect", "mlir::NVVM::NVVMDialect", "mlir::scf::SCFDialect"
  ];
}

#endif // KILN_TRANSFORMS_PASSES_TD
