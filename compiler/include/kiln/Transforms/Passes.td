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
    compiler/docs/gemm-kernels.md. A grouped GEMM gets a grouped kernel of
    its layout (`grouped = contiguous | masked`) that runs all groups in one
    launch; its M is the rows of one group: the capacity C in the masked
    layout, ceil(T / min(G, T)) over the groups that can have rows in the
    contiguous one, and split-K weighs the tiles of all those groups. A
    `kiln.swiglu` marked `kiln.fuse_swiglu` whose gate and up are matching
    contiguous grouped GEMMs gets the gate's tile widened to 128 columns
    with `epilogue = swiglu` (compiler/docs/kilnc.md). Configurations already
    present (written by hand or by an offline search) are kept.
  }];
  let dependentDialects = ["kiln::KilnDialect"];
}

def KilnEmitGemmKernels : Pass<"kiln-emit-gemm-kernels", "mlir::ModuleOp"> {
  let summary = "emit the warp-specialized sm_90a kernel of every GEMM config";
  let description = [{
    For every distinct `#kiln.gemm_config` on a `kiln.scaled_matmul` or
    `kiln.grouped_scaled_matmul` (whose config must be grouped in its
    layout, and a plain matmul's not), emits one kernel into
    `gpu.module @kiln_kernels`: a TMA producer warpgroup and
    consumer warpgroups issuing FP8 `wgmma`, a multi-stage shared-memory ring
    guarded by mbarriers, per-128-K promotion with the 1x128 and 128x128
    scales, a persistent tile loop and a BF16 epilogue, following the launch
    ABI of compiler/docs/gemm-abi.md. Grouped kernels read the group offsets
    or counts on the device, into shared-memory tables that map work units
    to groups (gemm-abi.md "Grouped kernels"). Each matmul gets a `kernel` symbol
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

def KilnScheduleOverlap : Pass<"kiln-schedule-overlap", "mlir::ModuleOp"> {
  let summary = "schedule the micro-batches of each kiln.overlap on two streams";
  let description = [{
    Attaches `kiln.schedule` to every `kiln.overlap`: the order in which the
    runtime issues the stages of all its micro-batches, each on stream 0
    (`compute` stages) or stream 1 (`communication` stages), and for each
    the earlier entries of the other stream it waits for (one event each).

    Entries are issued in wavefront order: stage k of micro-batch m in step
    k + m, and within a step the compute stream's stages first, then by
    micro-batch. A stage's producers (earlier stages of its micro-batch) are
    in earlier steps, so each stream's order is a topological order of every
    micro-batch's stage graph and a wait only names an earlier entry: no
    schedule deadlocks. The host issues one micro-batch's expert GEMMs before
    the other micro-batch's dispatch, which may block it (an expert-parallel
    exchange reads its counts back), so the GPU has the GEMMs queued while
    the host waits (measured: bench/results/ep-overlap-h100.md). A stage waits for the
    stages of its own micro-batch on the other stream that produce its
    operands; within a stream, order does the rest. With alternating compute
    and communication stages (attention, dispatch, experts, combine) one
    micro-batch's dispatch and combine run beside the other's attention and
    expert GEMMs:

    ```
    compute:        mb0.attention  mb1.attention  mb0.experts  mb1.experts
    communication:                 mb0.dispatch   mb1.dispatch mb0.combine  mb1.combine
    ```

    Each entry is `{micro_batch, stage, stream, waits}` with `waits` the
    indices of the entries it waits for; `kiln.streams` names the streams.
  }];
  let dependentDialects = ["kiln::KilnDialect"];
}

#endif // KILN_TRANSFORMS_PASSES_TD
