//===- EmitGemmKernels.cpp - warp-specialized FP8 GEMM kernels ------------===//
//
// Emits one sm_90a kernel per GEMM configuration, following the launch ABI
// of compiler/docs/gemm-abi.md and the design of gemm-kernels.md.
//
// The kernel is written as an MLIR template in the NVVM, LLVM, SCF and arith
// dialects and instantiated for a configuration: its structure is fixed and
// its parameters are a handful of integers, and as text it reads like the
// PTX it becomes, which is what a reviewer has to check it against. The
// template is parsed and verified here, so a malformed instance is a compiler
// error with a location in the generated text, never bad PTX.
//
//===----------------------------------------------------------------------===//

#include "kiln/Dialect/Kiln/KilnOps.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/SymbolTable.h"
#include "mlir/Parser/Parser.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/SmallSet.h"

#include <sstream>
#include <string>
#include <vector>

namespace kiln {
#define GEN_PASS_DEF_KILNEMITGEMMKERNELS
#include "kiln/Transforms/Passes.h.inc"
} // namespace kiln

using namespace mlir;

namespace {

constexpr llvm::StringLiteral kKernelModuleName = "kiln_kernels";
/// Bytes of one 128-element FP8 K slice of a tile row.
constexpr int64_t kSliceBytes = 128;
/// Rows of A per consumer warpgroup: one wgmma m64.
constexpr int64_t kRowsPerConsumer = 64;
/// Warps per warpgroup: with staged scales each releases a stage itself.
constexpr int64_t kWarpsPerWarpgroup = 4;
/// Register budgets after setmaxnreg: producers only issue TMA, consumers
/// hold two accumulators. 128 * 40 + 256 * 232 fits the 64K register file.
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
/// One consumer warpgroup with the SwiGLU epilogue: its four scales per K
/// block spill 60 bytes at 232 (gemm-kernels.md "SwiGLU epilogue"); with a
/// single consumer 128 * 40 + 128 * 240 registers fit easily.
constexpr int kSwigluSingleConsumerRegisters = 240;
/// Suspend-time hint of mbarrier.try_wait, in nanoseconds.
constexpr int kWaitTicks = 10000000;
/// Matrix descriptor bits 62-63 = 1 (128-byte swizzle), stride byte offset
/// 1024 >> 4 at bits 32-45 (8 rows of 128 bytes), leading byte offset 1 at
/// bits 16-29 (unused for swizzled K-major operands).
/// Split-K: the 256 bytes at the head of each tile's workspace record, for
/// its arrival counters (4 bytes per consumer warp, at most 8).
constexpr int64_t kCounterRecordFloats = 64;
/// Split-K: the first of the record header's tag words (one per consumer
/// warp, after the at most 8 arrival counters).
constexpr int64_t kTagWordBase = 8;
/// Columns of the BF16 epilogue's staging in shared memory (per pass).
constexpr int64_t kEpilogueCols = 64;
/// K blocks in flight per consumer warpgroup for 64-wide tiles
/// (writeChainedBlocks): 32 accumulator registers plus four partials of 32.
constexpr int64_t kChainBlocks = 4;
/// Tile rows per band of the plain kernels' tile order (writeTileOrigin).
constexpr int64_t kRasterRows = 8;
/// The same for plain kernels with 192- and 256-wide tiles (the M = 4096
/// picks): a wave of 132 such tiles in bands of 8 rows spans 16.5 of a
/// 4096-wide product's 16 columns, i.e. all of B, and B plus the band's A
/// (29 + 7 MB at 4096^2 x 7168) is more than stays in L2 from one wave to
/// the next; bands of 16 rows halve the columns a wave spans (H100,
/// interleaved with cuBLAS, session 22: M = 4096 geomean +1.3-2.3%,
/// 4096 x 32768 x 512 -4%, 4096 x 2112 x 7168 +1%).
constexpr int64_t kWideRasterRows = 16;
constexpr uint64_t kDescriptorHighBits =
    (uint64_t{1} << 62) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 16);

/// Builds the text of one kernel, line by line, with fresh SSA names.
class KernelWriter {
public:
  explicit KernelWriter(kiln::GemmConfigAttr config) : config(config) {}

  std::string write() {
    int64_t bm = config.getBlockM(), bn = config.getBlockN();
    int64_t stages = config.getStages(), consumers = config.getConsumers();
    int64_t accRegs = bn / 2;
    splitK = config.getSplitK();
    grouped = config.getGrouped();
    clusterM = config.getClusterM();
    swiglu = config.getSwiglu();
    tmaStore = config.getTmaStore();
    quantize = config.getQuantize();
    splitTail = config.getSplitTail();
    stagedScales = config.getStagedScales();
    std::string name = config.getKernelName();
    structType = accumulatorType(accRegs);
    // A 256-wide tile's consumer issues and promotes its two 128-column
    // halves one after the other into one 64-register partial (beside the
    // 128-register accumulator, two partials would not fit).
    halves = bn == 256 ? 2 : 1;
    partialType = accumulatorType(accRegs / halves);

    int64_t epilogue = stages * (bm + bn) * kSliceBytes;
    int64_t barriers = epilogue + config.getEpilogueBytes();
    // The stages' scale slots, 128-byte aligned for TMA (getSharedMemoryBytes
    // counts the padding).
    int64_t stageScales = (barriers + 16 * stages + 127) / 128 * 128;
    int64_t stageWeightScales =
        stageScales + stages * kiln::GemmConfigAttr::getStageScaleBytes(bm);
    int64_t tables =
        stagedScales ? stageWeightScales +
                           stages * kiln::GemmConfigAttr::kStageWeightScaleBytes
                     : barriers + 16 * stages;
    int64_t tableBytes = 4 * (kiln::GemmConfigAttr::kMaxGroups + 1);
    layout = {/*ringA=*/0,
              /*ringB=*/stages * bm * kSliceBytes,
              /*epilogue=*/epilogue,
              /*fullBar=*/barriers,
              /*emptyBar=*/barriers + 8 * stages,
              /*stageScales=*/stageScales,
              /*stageWeightScales=*/stageWeightScales,
              /*tilePrefix=*/tables,
              /*groupRow=*/tables + tableBytes,
              /*groupRows=*/tables + 2 * tableBytes};

    emit("gpu.module @" + kKernelModuleName.str() + " {");
    emit("llvm.mlir.global external @" + name +
         "_smem() {addr_space = 3 : i32, alignment = 1024 : i64} : "
         "!llvm.array<0 x i8>");
    // TMA reads the tensor maps in place from the parameter space, where
    // they must be 64-byte aligned (CUtensorMap is alignas(64) in CUDA C++).
    emit("llvm.func @" + name +
         "(%tmA: !llvm.ptr {llvm.align = 64 : i64, llvm.byval = "
         "!llvm.array<128 x i8>, nvvm.grid_constant}, %tmB: !llvm.ptr "
         "{llvm.align = 64 : i64, llvm.byval = !llvm.array<128 x i8>, "
         "nvvm.grid_constant}, %scaleA: !llvm.ptr<1>, "
         "%scaleB: !llvm.ptr<1>, %out: !llvm.ptr<1>, %M: i32, %N: i32, %K: "
         "i32" +
         std::string(splitK > 1 ? ", %workspace: !llvm.ptr<1>" : "") +
         std::string(grouped ? ", %groups: !llvm.ptr<1>, %G: i32" : "") +
         std::string(quantize ? ", %outScales: !llvm.ptr<1>" : "") +
         std::string(tmaStore ? ", %tmC: !llvm.ptr {llvm.align = 64 : i64, "
                                "llvm.byval = !llvm.array<128 x i8>, "
                                "nvvm.grid_constant}"
                              : "") +
         std::string(stagedScales
                         ? ", %tmSA: !llvm.ptr {llvm.align = 64 : i64, "
                           "llvm.byval = !llvm.array<128 x i8>, "
                           "nvvm.grid_constant}, %tmSB: !llvm.ptr "
                           "{llvm.align = 64 : i64, llvm.byval = "
                           "!llvm.array<128 x i8>, nvvm.grid_constant}"
                         : "") +
         ") attributes {nvvm.kernel, nvvm.maxntid = array<i32: " +
         std::to_string(config.getThreads()) +
         ", 1, 1>, nvvm.minctasm = 1 : i32, " +
         (clusterM > 1 ? "nvvm.cluster_dim = array<i32: " +
                             std::to_string(clusterM) + ", 1, 1>, "
                       : std::string()) +
         "kiln.gemm_config = " + printAttr(config) + "} {");
    for (int64_t v : {0, 1, 2, 4, 8, 16, 32, 64, 128})
      emit("%c" + std::to_string(v) + " = arith.constant " + std::to_string(v) +
           " : i32");
    emit("%ticks = arith.constant " + std::to_string(kWaitTicks) + " : i32");
    // The dynamic shared memory window is only 16-byte aligned in practice,
    // whatever the declaration asks; SWIZZLE_128B TMA destinations need 1024,
    // so the ring starts at the next 1024-byte boundary (the launch adds
    // 1 KB of slack for it).
    emit("%smemRaw = llvm.mlir.addressof @" + name + "_smem : !llvm.ptr<3>");
    emit("%smemAddr = llvm.ptrtoint %smemRaw : !llvm.ptr<3> to i32");
    emit("%smemEnd = arith.addi %smemAddr, " + i32(1023) + " : i32");
    emit("%smemAligned = arith.andi %smemEnd, " + i32(-1024) + " : i32");
    emit("%smemPad = arith.subi %smemAligned, %smemAddr : i32");
    emit("%smem = llvm.getelementptr %smemRaw[%smemPad] : (!llvm.ptr<3>, i32) "
         "-> !llvm.ptr<3>, i8");
    emit("%tid = nvvm.read.ptx.sreg.tid.x : i32");
    emit("%bid = nvvm.read.ptx.sreg.ctaid.x : i32");
    emit("%nbid = nvvm.read.ptx.sreg.nctaid.x : i32");
    emit("%wg = arith.divui %tid, %c128 : i32");
    emitCeilDiv("%nTiles", "%N", bn);
    if (!grouped) {
      emitCeilDiv("%mTiles", "%M", bm);
      emit("%numTiles = arith.muli %mTiles, %nTiles : i32");
    }
    if (clusterM > 1) {
      // A cluster's work unit is clusterM tiles stacked along M; block
      // %cta of the cluster computes the %cta-th of them. A last unit that
      // sticks out of M leaves its blocks with rows TMA fills with zeros
      // and the epilogue does not store.
      emit("%cta = nvvm.read.ptx.sreg.cluster.ctarank : i32");
      emit("%peer = arith.xori %cta, %c1 : i32");
      emit("%cid = nvvm.read.ptx.sreg.clusterid.x : i32");
      emit("%ncid = nvvm.read.ptx.sreg.nclusterid.x : i32");
      emitCeilDiv("%mUnits", "%mTiles", clusterM);
      emit("%numUnits = arith.muli %mUnits, %nTiles : i32");
    }
    // A partial last K block reads zeros past K (TMA's out-of-bounds fill),
    // so ceil(K / 128) blocks cover any K.
    emitCeilDiv("%numKB", "%K", 128);
    emit("%isT0 = arith.cmpi eq, %tid, %c0 : i32");

    // Thread 0 initializes the ring's barriers: full[s] completes when the
    // producer's one arrival and the stage's TMA bytes have landed;
    // empty[s] when every consumer warpgroup (with staged scales: every
    // consumer warp, which reads the stage's scales) has released it.
    emit("scf.if %isT0 {");
    // Start fetching the tensor maps now, so that the first TMA loads (and
    // stores) do not wait for them after the barriers are set up: at small M
    // the kernel is a few microseconds and this latency is on its path.
    for (const char *map : {"%tmA", "%tmB"})
      emit(std::string("nvvm.prefetch tensormap in_param_space, ") + map +
           " : !llvm.ptr");
    if (tmaStore)
      emit("nvvm.prefetch tensormap in_param_space, %tmC : !llvm.ptr");
    if (stagedScales)
      for (const char *map : {"%tmSA", "%tmSB"})
        emit(std::string("nvvm.prefetch tensormap in_param_space, ") + map +
             " : !llvm.ptr");
    emit("scf.for %s = %c0 to " + i32(stages) + " step %c1 : i32 {");
    emit("%full = " + barrier(layout.fullBar, "%s"));
    emit("nvvm.mbarrier.init %full, %c1 : !llvm.ptr<3>, i32");
    // In a cluster, every consumer warpgroup of both blocks releases a
    // stage in both: each producer overwrites its peer's B half too.
    emit("%empty = " + barrier(layout.emptyBar, "%s"));
    emit("nvvm.mbarrier.init %empty, " +
         i32(consumers * (stagedScales ? kWarpsPerWarpgroup : 1) * clusterM) +
         " : !llvm.ptr<3>, i32");
    emit("}");
    emit("nvvm.fence.mbarrier.init");
    emit("}");
    // Programmatic dependent launch (gemm-abi.md "Dependent launch"): a
    // launch that allows it may start while the previous kernel in the
    // stream drains, so nothing before this point touches global memory
    // (the barriers are shared memory, the tensor maps parameters); every
    // thread waits for the previous grids to complete and their writes to be
    // visible before it reads an operand or the group tables or writes the
    // output. No `launch_dependents`: the next kernel's launch then starts as
    // our last block exits (the implicit trigger), which keeps all of the
    // gain at small M, where triggering at the start measured 3-7% slower at
    // 4096 x 7168 x 16384 (bench/results/dependent-launch-h100.md).
    emit("nvvm.griddepcontrol wait");
    if (grouped) {
      writeGroupTables(bm);
    } else if (clusterM > 1) {
      // The peer's barriers must be initialized before anything arrives on
      // them or multicasts into its ring.
      emit("nvvm.cluster.arrive");
      emit("nvvm.cluster.wait");
    } else {
      emit("nvvm.barrier0");
    }
    if (splitK > 1)
      emit("%numUnits = arith.muli %numTiles, " + i32(splitK) + " : i32");

    emit("%isProducer = arith.cmpi eq, %wg, %c0 : i32");
    emit("scf.if %isProducer {");
    writeProducer(bm, bn, stages);
    emit("} else {");
    writeConsumer(bm, bn, accRegs);
    emit("}");
    if (clusterM > 1) {
      // No block exits while its peer may still arrive on its barriers.
      emit("nvvm.cluster.arrive");
      emit("nvvm.cluster.wait");
    }
    emit("llvm.return");
    emit("}");
    emit("}");
    std::string result = body.str();
    const std::string placeholder = "<<CONSTANTS>>\n";
    return result.replace(result.find(placeholder), placeholder.size(),
                          constants.str());
  }

private:
  /// One thread of the producer warpgroup walks the same (tile, k-block)
  /// sequence as the consumers, waits for a free stage and loads the A and B
  /// slices into it with TMA.
  void writeProducer(int64_t bm, int64_t bn, int64_t stages) {
    emit("nvvm.setmaxregister decrease " + std::to_string(kProducerRegisters));
    emit("scf.if %isT0 {");
    writeWorkLoop();
    writeTileOrigin(bm, bn);
    if (stagedScales) {
      if (grouped) {
        emit("%aScaleBase = arith.muli %groupRow, %numKB : i32");
        emitCeilDiv("%nScaleBlocks", "%N", 128);
      }
      writeScaleTileRow();
      writeWeightScaleRows(bn);
    }
    emit("%next = scf.for %kb = " + kbBegin() + " to " + kbEnd() +
         " step %c1 iter_args(%j = %it) -> (i32) : i32 {");
    writeStageAndPhase(stages);
    // A fresh barrier counts its previous phase as complete, so the first
    // round's waits on parity 1 pass at once.
    emit("%freePhase = arith.xori %phase, %c1 : i32");
    emit("%empty = " + barrier(layout.emptyBar, "%s"));
    emit("nvvm.mbarrier.try_wait.parity %empty, %freePhase, %ticks : "
         "!llvm.ptr<3>, i32, i32");
    emit("%full = " + barrier(layout.fullBar, "%s"));
    std::vector<std::string> weightSuffixes = weightScaleSuffixes();
    int64_t scaleBytes =
        stagedScales ? 4 * kiln::GemmConfigAttr::getStageScaleBoxElements(bm) +
                           kiln::GemmConfigAttr::kWeightScaleBoxBytes *
                               weightScaleBoxes()
                     : 0;
    // A's box is min(BLOCK_M, M) rows (gemm-abi.md "The clamped A box";
    // grouped kernels: M is a contiguous launch's R or a masked slab's
    // rows): with fewer rows than a tile TMA would fill the rest with
    // zeros, which costs more than reading them (M = 1 28% slower than
    // M = 64 at 7168 x 16384); the stale rows past M (or past the slab)
    // only reach output rows never stored.
    emit("%aBoxRows = arith.minui %M, " + i32(bm) + " : i32");
    emit("%aBoxBytes = arith.muli %aBoxRows, " + i32(kSliceBytes) + " : i32");
    emit("%stageBytes = arith.addi %aBoxBytes, " +
         i32(bn * kSliceBytes + scaleBytes) + " : i32");
    emit("nvvm.mbarrier.arrive.expect_tx %full, %stageBytes : "
         "!llvm.ptr<3>, i32");
    emit("%kOff = arith.muli %kb, %c128 : i32");
    emit("%aDst = " + ringSlot(layout.ringA, bm * kSliceBytes, "%s"));
    emit("%aDst7 = llvm.addrspacecast %aDst : !llvm.ptr<3> to !llvm.ptr<7>");
    emit("nvvm.cp.async.bulk.tensor.shared.cluster.global %aDst7, %tmA, "
         "%full, box[%kOff, " +
         std::string(grouped ? "%aRow" : "%mOff") +
         "] : !llvm.ptr<7>, !llvm.ptr");
    emit("%bDst = " + ringSlot(layout.ringB, bn * kSliceBytes, "%s"));
    if (clusterM > 1) {
      // This block's share of the B slice: rows [cta, cta + 1) * bn / 2 of
      // the tile (whole 1024-byte swizzle atoms), multicast to the same
      // offset of both blocks' rings and counted on both full barriers.
      int64_t half = bn / clusterM;
      emit("%bHalfRow = arith.muli %cta, " + i32(half) + " : i32");
      emit("%bHalfOff = arith.muli %cta, " + i32(half * kSliceBytes) +
           " : i32");
      emit("%bRowHalf = arith.addi %nOff, %bHalfRow : i32");
      emit("%bDstHalf = llvm.getelementptr %bDst[%bHalfOff] : (!llvm.ptr<3>, "
           "i32) -> !llvm.ptr<3>, i8");
      emit("%bDst7 = llvm.addrspacecast %bDstHalf : !llvm.ptr<3> to "
           "!llvm.ptr<7>");
      emit("%castMask = arith.constant " + std::to_string((1 << clusterM) - 1) +
           " : i16");
      emit("nvvm.cp.async.bulk.tensor.shared.cluster.global %bDst7, %tmB, "
           "%full, box[%kOff, %bRowHalf] multicast_mask = %castMask : "
           "!llvm.ptr<7>, !llvm.ptr");
    } else {
      emit("%bDst7 = llvm.addrspacecast %bDst : !llvm.ptr<3> to !llvm.ptr<7>");
      emit("nvvm.cp.async.bulk.tensor.shared.cluster.global %bDst7, %tmB, "
           "%full, box[%kOff, " +
           std::string(grouped ? "%bRow" : "%nOff") +
           "] : !llvm.ptr<7>, !llvm.ptr");
    }
    if (stagedScales)
      writeStagedScaleLoads(bm, weightSuffixes);
    emit("%j1 = arith.addi %j, %c1 : i32");
    emit("scf.yield %j1 : i32");
    emit("}");
    emit("scf.yield %next : i32");
    emit("}");
    emit("}");
  }

  /// Staged scales, in the producer's loop after the A and B loads (issued
  /// first, the scales' TMAs delayed the data's: gemm-kernels.md "Session
  /// 9"): TMA loads of K block %kb's scales into stage %s, counted on its
  /// full barrier. TMA starts a box at a 16-byte-aligned element only, so
  /// each box starts at the scale's element aligned down to 4 and the
  /// consumers skip the remainder (stagedScaleOffsets): the activation
  /// scales of the tile's rows, BLOCK_M + 4 elements from element
  /// kb * stride + first row of scaleA seen as one 1-D tensor (rows past M
  /// or the group read the next ones, whose results are never stored; past
  /// the end TMA fills zeros), and per weight scale the 16-byte box (TMA's
  /// smallest) that holds it, in its own 128-byte slot.
  void writeStagedScaleLoads(int64_t bm,
                             const std::vector<std::string> &weightSuffixes) {
    emit("%scKbRows = arith.muli %kb, " + aScaleStride() + " : i32");
    emit("%scFirst = arith.addi %scKbRows, %scTileRow : i32");
    emit("%scStart = arith.andi %scFirst, " + alignDownMask() + " : i32");
    emit("%scDst = " + ringSlot(layout.stageScales,
                                kiln::GemmConfigAttr::getStageScaleBytes(bm),
                                "%s"));
    emit("%scDst7 = llvm.addrspacecast %scDst : !llvm.ptr<3> to "
         "!llvm.ptr<7>");
    emit("nvvm.cp.async.bulk.tensor.shared.cluster.global %scDst7, %tmSA, "
         "%full, box[%scStart] : !llvm.ptr<7>, !llvm.ptr");
    for (size_t b = 0; b < weightSuffixes.size(); ++b) {
      if (twoWeightScaleBoxes() && b == 1)
        continue; // chunk 1 shares chunk 0's or chunk 2's box
      std::string bs = std::to_string(b);
      emit("%scWu" + bs + " = arith.addi %bScaleRow" + weightSuffixes[b] +
           ", %kb : i32");
      emit("%scW" + bs + " = arith.andi %scWu" + bs + ", " + alignDownMask() +
           " : i32");
      emit("%scWDst" + bs + " = " +
           ringSlot(layout.stageWeightScales +
                        kiln::GemmConfigAttr::kWeightScaleSlotBytes *
                            weightScaleSlot(b),
                    kiln::GemmConfigAttr::kStageWeightScaleBytes, "%s"));
      emit("%scWDst7" + bs + " = llvm.addrspacecast %scWDst" + bs +
           " : !llvm.ptr<3> to !llvm.ptr<7>");
      emit("nvvm.cp.async.bulk.tensor.shared.cluster.global %scWDst7" + bs +
           ", %tmSB, %full, box[%scW" + bs + "] : !llvm.ptr<7>, !llvm.ptr");
    }
  }

  /// Staged scales: %scTileRow, the tile's first row in K block 0 of the
  /// activation scales seen as one 1-D tensor (both grouped layouts put
  /// group g's at ceil(K/128) * groupRow[g]: grouped kernels need
  /// %aScaleBase).
  void writeScaleTileRow() {
    emit(std::string("%scTileRow = arith.addi ") +
         (grouped ? "%aScaleBase" : "%c0") + ", %mOff : i32");
  }

  /// The weight scales' rows of this tile at K block 0, %bScaleRow<suffix>
  /// for each of weightScaleSuffixes() (add kb for block kb); grouped
  /// kernels need %nScaleBlocks.
  void writeWeightScaleRows(int64_t bn) {
    if (grouped) {
      emit("%groupScaleRow = arith.muli " + groupIndex +
           ", %nScaleBlocks : i32");
      if (swiglu) {
        // Tile t holds gate rows [64t, 64t + 64) and the same up rows: the
        // gate's weight-scale block t / 2 and the up's N / 256 + t / 2
        // (the checkpoint's 128-row blocks of the gate/up weight, gate
        // blocks first).
        emit("%nBlockInGroup = arith.divui %nOff, " + i32(256) + " : i32");
        emit("%nBlock = arith.addi %groupScaleRow, %nBlockInGroup : i32");
        emit("%upBlocks = arith.divui %nScaleBlocks, %c2 : i32");
        emit("%nBlockUp = arith.addi %nBlock, %upBlocks : i32");
        emit("%bScaleRowUp = arith.muli %nBlockUp, %numKB : i32");
      } else {
        emit("%nBlockInGroup = arith.divui %nOff, %c128 : i32");
        emit("%nBlock = arith.addi %groupScaleRow, %nBlockInGroup : i32");
      }
    } else {
      emit("%nBlock = arith.divui %nOff, %c128 : i32");
    }
    emit("%bScaleRow = arith.muli %nBlock, %numKB : i32");
    if (bn > 128) {
      // A 192-wide tile spans two weight-scale blocks, a 256-wide one
      // (nOff a multiple of 256) exactly two; chunk c of scaleChunkCols()
      // columns lies in block (nOff + c * cols) / 128 (nOff is a multiple
      // of 64), clamped to the last block for chunks past N (never stored):
      // in a grouped kernel the group's last, so that a group's last tile
      // reads neither the next expert's scales nor past the last expert's.
      std::string scaleBlocks = "%nScaleBlocks";
      if (!grouped) {
        emitCeilDiv("%nScaleBlocksP", "%N", 128);
        scaleBlocks = "%nScaleBlocksP";
      }
      emit("%lastNBlock = arith.subi " + scaleBlocks + ", %c1 : i32");
      for (int64_t c = 1; c < bn / scaleChunkCols(); ++c) {
        std::string cs = std::to_string(c);
        emit("%nOffC" + cs + " = arith.addi %nOff, " +
             i32(scaleChunkCols() * c) + " : i32");
        emit("%nBlockC" + cs + "u = arith.divui %nOffC" + cs + ", %c128 : i32");
        std::string block = "%nBlockC" + cs;
        emit(block + " = arith.minui %nBlockC" + cs + "u, %lastNBlock : i32");
        if (grouped) {
          emit("%nBlockC" + cs + "g = arith.addi %groupScaleRow, " + block +
               " : i32");
          block += "g";
        }
        emit("%bScaleRowC" + cs + " = arith.muli " + block + ", %numKB : i32");
      }
      if (twoWeightScaleBoxes()) {
        emit("%nOffInBlock = arith.remui %nOff, %c128 : i32");
        emit("%midInFirst = arith.cmpi eq, %nOffInBlock, %c0 : i32");
        emit("%midScaleSlot = arith.select %midInFirst, %c0, " +
             i32(kiln::GemmConfigAttr::kWeightScaleSlotBytes) + " : i32");
      }
    }
  }

  /// Each consumer warpgroup owns 64 rows of the tile. K blocks go in pairs
  /// (issueBlock twice, then finishBlock twice), so one block's wgmmas run
  /// while the other's partial accumulator is promoted into the FP32
  /// accumulator with the row's activation scale times the block's weight
  /// scale (DeepSeek-V3's promotion every 128 K); an odd last block runs
  /// alone. The epilogue converts to BF16 and stores the rows and columns
  /// inside M x N.
  void writeConsumer(int64_t bm, int64_t bn, int64_t accRegs) {
    int registers = swiglu && config.getConsumers() == 1
                        ? kSwigluSingleConsumerRegisters
                        : kConsumerRegisters;
    emit("nvvm.setmaxregister increase " + std::to_string(registers));
    // The warpgroup index is the same in all lanes, but ptxas cannot tell
    // from tid / 128; read back from lane 0 it can, and keeps what derives
    // from it (the A operand's wgmma descriptors above all) in uniform
    // registers instead of moving each descriptor over with R2UR before
    // every wgmma (gemm-kernels.md "Session 7").
    emit("%consumerLane = arith.subi %wg, %c1 : i32");
    emit("%wgAllLanes = arith.constant -1 : i32");
    emit("%consumer = nvvm.shfl.sync idx %wgAllLanes, %consumerLane, %c0, " +
         i32(31) + " : i32 -> i32");
    emit("%local = arith.remui %tid, %c128 : i32");
    emit("%warp = arith.divui %local, %c32 : i32");
    emit("%lane = arith.remui %tid, %c32 : i32");
    emit("%warpRow = arith.muli %warp, %c16 : i32");
    emit("%laneRow = arith.divui %lane, %c4 : i32");
    emit("%consumerRow = arith.muli %consumer, %c64 : i32");
    emit("%rowInTile0 = arith.addi %consumerRow, %warpRow : i32");
    emit("%rowInTile = arith.addi %rowInTile0, %laneRow : i32");
    emit("%laneQuad = arith.remui %lane, %c4 : i32");
    emit("%isLeader = arith.cmpi eq, %local, %c0 : i32");
    emit("%aConsumerOff = arith.muli %consumer, " +
         i32(kRowsPerConsumer * kSliceBytes) + " : i32");
    if (grouped) {
      emitCeilDiv("%nScaleBlocks", "%N", 128);
    } else {
      emit("%lastRow = arith.subi %M, %c1 : i32");
    }
    if (stagedScales) {
      // This thread's rows r and r + 8 in a stage's activation scales.
      emit("%scaleOff = arith.muli %rowInTile, %c4 : i32");
      emit("%isWarpLeader = arith.cmpi eq, %lane, %c0 : i32");
    }
    emit("%N64 = arith.extui %N : i32 to i64");
    emit("%addrMask = arith.constant 262143 : i64");
    emit("%c4i64 = arith.constant 4 : i64");
    emit("%descHigh = arith.constant " + std::to_string(kDescriptorHighBits) +
         " : i64");
    // The wgmma descriptors of stage 0 (this consumer's rows of A, B); stage
    // s adds s times a stage's bytes / 16 in the 14-bit address field, which
    // never carries out of it (shared memory ends below 256 KB). Computed
    // once, so a K block's descriptors cost one multiply-add each.
    emit("%aOff0 = arith.addi %aConsumerOff, " + i32(layout.ringA) + " : i32");
    emit("%aPtr0 = llvm.getelementptr %smem[%aOff0] : (!llvm.ptr<3>, i32) -> "
         "!llvm.ptr<3>, i8");
    emit("%bPtr0 = llvm.getelementptr %smem[" + i32(layout.ringB) +
         "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
    writeDescriptor("%descA0", "%aPtr0");
    writeDescriptor("%descB0", "%bPtr0");
    emit("%descAStage = arith.constant " +
         std::to_string(bm * kSliceBytes / 16) + " : i64");
    emit("%descBStage = arith.constant " +
         std::to_string(bn * kSliceBytes / 16) + " : i64");
    emit("%zeroF = arith.constant 0.0 : f32");
    emit("%undefAcc = llvm.mlir.undef : " + structType);
    if (halves > 1)
      emit("%undefPartial = llvm.mlir.undef : " + partialType);
    std::string zero = "%undefAcc";
    for (int64_t i = 0; i < accRegs; ++i) {
      std::string next = "%zeroAcc" + std::to_string(i);
      emit(next + " = llvm.insertvalue %zeroF, " + zero + "[" +
           std::to_string(i) + "] : " + structType);
      zero = next;
    }

    if (splitK > 1)
      writeSplitPrologue(accRegs);

    writeWorkLoop();
    writeTileOrigin(bm, bn, /*wholeWarp=*/true);
    if (taggedSplit())
      writeSplitTagLoad();
    emit("%row0 = arith.addi %mOff, %rowInTile : i32");
    emit("%row1 = arith.addi %row0, %c8 : i32");
    if (grouped) {
      // Rows past the group's (the next group's, or padding) read a valid
      // scale of the group; their results are never stored. Both layouts
      // put group g's activation scales at ceil(K/128) * groupRow[g].
      emit("%lastRow = arith.subi %groupRows, %c1 : i32");
      emit("%row0l = arith.minui %row0, %lastRow : i32");
      emit("%row1l = arith.minui %row1, %lastRow : i32");
      emit("%aScaleBase = arith.muli %groupRow, %numKB : i32");
      emit("%row0c = arith.addi %row0l, %aScaleBase : i32");
      emit("%row1c = arith.addi %row1l, %aScaleBase : i32");
    } else {
      // Rows past M read a valid scale; their results are never stored.
      emit("%row0c = arith.minui %row0, %lastRow : i32");
      emit("%row1c = arith.minui %row1, %lastRow : i32");
    }
    if (stagedScales)
      writeScaleTileRow();
    writeWeightScaleRows(bn);
    // 192- and 256-wide tiles have no registers for a second partial (96 +
    // 96, 128 + 64 accumulator registers already): one K block (a 256-wide
    // tile: one half of one) at a time.
    bool paired = accRegs <= 64;
    // 64-wide tiles (32 accumulator registers) have room for four partials:
    // chains of four K blocks in flight instead of pairs.
    int64_t chain = accRegs <= 32 && !swiglu ? kChainBlocks : 2;
    // The scales of one K block, as loadScales names them with tag "".
    std::vector<std::string> blockScales;
    // With staged scales: the offsets stagedScaleOffsets names instead.
    if (stagedScales) {
      blockScales.push_back("%stagedA");
      for (size_t b = 0; b < weightScaleSuffixes().size(); ++b)
        blockScales.push_back("%stagedW" + std::to_string(b));
    } else {
      for (const std::string &suffix : weightScaleSuffixes())
        for (const char *row : {"%scale0", "%scale1"})
          blockScales.push_back(row + suffix);
    }
    finalAcc = "%final";
    if (!paired)
      writeSingleBlocks(zero, blockScales);
    else if (chain > 2)
      writeChainedBlocks(zero, blockScales, chain);
    else if (pipelined())
      writePipelinedBlocks(zero, blockScales);
    else
      writePairedBlocks(zero);
    emit("%itNext = arith.addi %it, " + kbCount() + " : i32");

    if (splitTail) {
      // Whole tiles store as a plain kernel does; the tail's slices reduce
      // through the workspace, indexed by their tile's place in the tail.
      emit("scf.if %isSplit {");
      writeSplitEpilogue(bm, bn, accRegs, "%tailTile");
      emit("} else {");
      writeStores(plainStores(finalAcc));
      emit("}");
    } else if (splitK > 1) {
      writeSplitEpilogue(bm, bn, accRegs, "%tile");
    } else if (tmaStore && grouped) {
      writeGroupedTmaStores(bn);
    } else if (tmaStore) {
      writeTmaStores(bn);
    } else if (quantize) {
      writeQuantizedSwiglu(finalAcc);
    } else {
      writeStores(swiglu ? writeSwiglu(finalAcc) : plainStores(finalAcc));
    }
    emit("scf.yield %itNext : i32");
    emit("}");
    if (tmaStore) {
      // The last tile's stores read shared memory, which ends with the block.
      emit("scf.if %isLeader {");
      emit("nvvm.cp.async.bulk.wait_group 0");
      emit("}");
    }
  }

  /// Waits until the warpgroup's previous TMA stores have read its staging
  /// (%tsBar: the warpgroup's named barrier). No branch on the leader: the
  /// others have no bulk groups to wait for, and the stores are predicated
  /// (measured 1-2% faster than branching around them at M <= 128, H100).
  void writeTmaStagingWait() {
    emit("%tsBar = arith.addi %consumer, %c1 : i32");
    emit("nvvm.cp.async.bulk.wait_group 0 {read}");
    emit("nvvm.barrier id = %tsBar number_of_threads = %c128");
  }

  /// One warpgroup's TMA-store staging: its 64 rows of the tile as BF16,
  /// in 64-column boxes of 64 rows x 128 bytes.
  static int64_t tmaStagingBytes(int64_t bn) {
    return bn / 64 * kRowsPerConsumer * 128;
  }

  /// Grouped kernels with store = tma: a warpgroup whose 64 rows all
  /// belong to the tile's group stores them with TMA (the output map spans
  /// all of out's rows, so a box must not reach into the next group's);
  /// one with rows past the group's end stores with plain stores, staged
  /// in its own part of the TMA staging (writeStores), which the previous
  /// tile's TMA stores may still be reading until the wait.
  void writeGroupedTmaStores(int64_t bn) {
    writeTmaStagingWait();
    emit("%tsRowsEnd0 = arith.addi %mOff, %consumerRow : i32");
    emit("%tsRowsEnd = arith.addi %tsRowsEnd0, %c64 : i32");
    emit("%tsWhole = arith.cmpi ule, %tsRowsEnd, %groupRows : i32");
    emit("scf.if %tsWhole {");
    writeTmaStores(bn, /*waited=*/true);
    emit("} else {");
    writeStores(plainStores(finalAcc));
    emit("}");
  }

  /// The TMA-store epilogue: the warpgroup writes its 64 rows of the tile
  /// as BF16 into its staging in shared memory, in boxes of 64 columns
  /// (64 rows of 128 bytes, 128-byte swizzle: the 16-byte chunk c of row r
  /// sits at chunk c ^ (r % 8), so the 8 rows a warp's 4-byte writes touch
  /// at once fall in 8 different chunks and no two lanes share a bank), and
  /// its leader stores each box with one cp.async.bulk.tensor through %tmC,
  /// which clips rows past M and columns past N. The warpgroup goes on to
  /// its next tile while the stores run; it only waits, at its next
  /// epilogue, until they have read the staging.
  void writeTmaStores(int64_t bn, bool waited = false) {
    int64_t boxBytes = kRowsPerConsumer * 128;
    if (!waited)
      writeTmaStagingWait();
    emit("%tsOwn = arith.muli %consumer, " + i32(tmaStagingBytes(bn)) +
         " : i32");
    emit("%tsBase = arith.addi %tsOwn, " + i32(layout.epilogue) + " : i32");
    emit("%tsRow = arith.addi %warpRow, %laneRow : i32");
    emit("%tsRowOff = arith.muli %tsRow, %c128 : i32");
    emit("%tsQuadOff = arith.muli %laneQuad, %c4 : i32");
    emit("%tsLaneOff0 = arith.addi %tsRowOff, %tsQuadOff : i32");
    emit("%tsLaneOff = arith.addi %tsLaneOff0, %tsBase : i32");
    for (int64_t c = 0; c < 8; ++c) {
      std::string cs = std::to_string(c);
      emit("%tsX" + cs + " = arith.xori %laneRow, " + i32(c) + " : i32");
      emit("%tsXB" + cs + " = arith.muli %tsX" + cs + ", %c16 : i32");
      emit("%tsAt" + cs + " = arith.addi %tsLaneOff, %tsXB" + cs + " : i32");
    }
    // Register i: row r (+ 8 for i % 4 >= 2), columns 8 (i / 4) + 2 quad
    // and the next: box (i / 4) / 8, chunk (i / 4) % 8.
    for (int64_t i = 0; i < bn / 2; i += 2) {
      std::string n = std::to_string(i);
      int64_t group = i / 4, box = group / 8, chunk = group % 8;
      int64_t upper = (i % 4) >= 2 ? 1 : 0;
      emit("%tsPtr" + n + " = llvm.getelementptr %smem[%tsAt" +
           std::to_string(chunk) +
           "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
      emit("%tsPtrC" + n + " = llvm.getelementptr %tsPtr" + n + "[" +
           i32(box * boxBytes + upper * 8 * 128) +
           "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
      storeBf16Pair("%ts", n, finalAcc, structType, i, "%tsPtrC" + n);
    }
    // The generic-proxy writes must be visible to the TMA (async proxy)
    // before the leader issues the stores.
    emit("nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = "
         "#nvvm.shared_space<cta>}");
    emit("nvvm.barrier id = %tsBar number_of_threads = %c128");
    // Grouped kernels: the group's first row in A and out, plus the tile's.
    emit("%tsRow0 = arith.addi " + std::string(grouped ? "%aRow" : "%mOff") +
         ", %consumerRow : i32");
    for (int64_t h = 0; h < bn / 64; ++h) {
      std::string hs = std::to_string(h);
      emit("%tsSrcAt" + hs + " = arith.addi %tsBase, " + i32(h * boxBytes) +
           " : i32");
      emit("%tsSrc" + hs + " = llvm.getelementptr %smem[%tsSrcAt" + hs +
           "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
      emit("%tsCol" + hs + " = arith.addi %nOff, " + i32(64 * h) + " : i32");
      emit("nvvm.cp.async.bulk.tensor.global.shared.cta %tmC, %tsSrc" + hs +
           ", box[%tsCol" + hs +
           ", %tsRow0], predicate = %isLeader : "
           "!llvm.ptr, !llvm.ptr<3>");
    }
    // (An empty bulk group in the other threads.)
    emit("nvvm.cp.async.bulk.commit.group");
  }

  /// The main loop of one consumer warpgroup with 128-wide tiles, into
  /// finalAcc: K blocks in pairs, the second block's wgmmas running while
  /// the first block's partial is promoted; an odd last block runs alone.
  /// Its scales are loaded per pair, not carried ahead: with 64
  /// accumulator and 2 x 64 partial registers the 4 more live values
  /// spilled 60 bytes (gemm-kernels.md "Version 8").
  void writePairedBlocks(const std::string &zero) {
    emit("%numPairs = arith.divui " + kbCount() + ", %c2 : i32");
    emit("%res:2 = scf.for %pair = %c0 to %numPairs step %c1 iter_args(%j = "
         "%it, %acc = " +
         zero + ") -> (i32, " + structType + ") : i32 {");
    if (splitK > 1) {
      emit("%kbA0 = arith.muli %pair, %c2 : i32");
      emit("%kbA = arith.addi %kbA0, %kbBegin : i32");
    } else {
      emit("%kbA = arith.muli %pair, %c2 : i32");
    }
    emit("%kbB = arith.addi %kbA, %c1 : i32");
    emit("%jB = arith.addi %j, %c1 : i32");
    std::vector<std::string> scalesA = loadScales("A", "%kbA");
    std::vector<std::string> scalesB = loadScales("B", "%kbB");
    std::string partialA = issueBlock("A", "%j");
    std::string partialB = issueBlock("B", "%jB");
    std::string accA = finishBlock("A", partialA, "%acc", scalesA, 1);
    std::string accB = finishBlock("B", partialB, accA, scalesB, 0);
    emit("%j2 = arith.addi %j, %c2 : i32");
    emit("scf.yield %j2, " + accB + " : i32, " + structType);
    emit("}");
    emit("%pairBlocks = arith.muli %numPairs, %c2 : i32");
    emit("%hasTail = arith.cmpi ne, %pairBlocks, " + kbCount() + " : i32");
    emit("%final = scf.if %hasTail -> (" + structType + ") {");
    emit("%jT = arith.addi %it, %pairBlocks : i32");
    emit("%kbT = arith.subi " + kbEnd() + ", %c1 : i32");
    std::vector<std::string> tailScales = loadScales("T", "%kbT");
    std::string partialT = issueBlock("T", "%jT");
    std::string accT = finishBlock("T", partialT, "%res#1", tailScales, 0);
    emit("scf.yield " + accT + " : " + structType);
    emit("} else {");
    emit("scf.yield %res#1 : " + structType);
    emit("}");
  }

  /// The main loop without pairs, into finalAcc: per K block, wait for the
  /// stage, issue its wgmmas, wait for them, release and promote. The next
  /// block's scales are loaded one block ahead (clamped to the unit's last
  /// block) and carried in registers.
  void writeSingleBlocks(const std::string &zero,
                         const std::vector<std::string> &blockScales) {
    std::string scaleTypes, scaleArgs, nextScales;
    std::vector<std::string> current;
    emitKbLast();
    std::vector<std::string> first = loadScales("P", kbBegin());
    for (size_t i = 0; i < blockScales.size(); ++i) {
      scaleArgs += ", " + blockScales[i] + "S = " + first[i];
      scaleTypes += std::string(", ") + scaleType();
      current.push_back(blockScales[i] + "S");
    }
    emit("%res:" + std::to_string(2 + blockScales.size()) +
         " = scf.for %kb = " + kbBegin() + " to " + kbEnd() +
         " step %c1 iter_args(%j = %it, %acc = " + zero + scaleArgs +
         ") -> (i32, " + structType + scaleTypes + ") : i32 {");
    emit("%kbN0 = arith.addi %kb, %c1 : i32");
    emit("%kbN = arith.minui %kbN0, %kbLast : i32");
    for (const std::string &next : loadScales("N", "%kbN"))
      nextScales += ", " + next;
    std::string acc = "%acc", partial;
    for (int64_t half = 0; half < halves; ++half) {
      partial = half ? issueHalf("S", half, partial) : issueBlock("S", "%j");
      acc = finishBlock("S", partial, acc, current, 0, half);
    }
    emit("%j1 = arith.addi %j, %c1 : i32");
    emit("scf.yield %j1, " + acc + nextScales + " : i32, " + structType +
         scaleTypes);
    emit("}");
    finalAcc = "%res#1";
  }

  /// The main loop for small tiles, into finalAcc: chains of `chain` K
  /// blocks, all issued before the first is waited for; block x of a chain
  /// is promoted once at most chain - 1 - x groups are in flight, so every
  /// promotion but the chain's last runs under MMAs of this warpgroup, and
  /// a short tile's blocks (K = 512: one chain) wait for their data
  /// together rather than pair by pair. The next chain's scales are loaded
  /// one chain ahead (clamped to the unit's last block); the blocks past
  /// the last whole chain run one at a time with their scales loaded there.
  void writeChainedBlocks(const std::string &zero,
                          const std::vector<std::string> &blockScales,
                          int64_t chain) {
    std::string scaleTypes, scaleArgs, nextScales;
    std::vector<std::vector<std::string>> current(chain);
    emitKbLast();
    for (int64_t x = 0; x < chain; ++x) {
      std::string xs = std::to_string(x);
      emit("%kbF" + xs + "u = arith.addi " + kbBegin() + ", " + i32(x) +
           " : i32");
      emit("%kbF" + xs + " = arith.minui %kbF" + xs + "u, %kbLast : i32");
      std::vector<std::string> first = loadScales("F" + xs, "%kbF" + xs);
      for (size_t i = 0; i < blockScales.size(); ++i) {
        std::string name = blockScales[i] + "C" + xs;
        scaleArgs += ", " + name + " = " + first[i];
        scaleTypes += std::string(", ") + scaleType();
        current[x].push_back(name);
      }
    }
    emit("%numChains = arith.divui " + kbCount() + ", " + i32(chain) +
         " : i32");
    emit("%res:" + std::to_string(2 + chain * blockScales.size()) +
         " = scf.for %ch = %c0 to %numChains step %c1 iter_args(%j = %it, "
         "%acc = " +
         zero + scaleArgs + ") -> (i32, " + structType + scaleTypes +
         ") : i32 {");
    emit("%kbC0 = arith.muli %ch, " + i32(chain) + " : i32");
    emit("%kbC = arith.addi %kbC0, " + kbBegin() + " : i32");
    for (int64_t x = 0; x < chain; ++x) {
      std::string xs = std::to_string(x);
      emit("%kbN" + xs + "u = arith.addi %kbC, " + i32(chain + x) + " : i32");
      emit("%kbN" + xs + " = arith.minui %kbN" + xs + "u, %kbLast : i32");
      for (const std::string &next : loadScales("N" + xs, "%kbN" + xs))
        nextScales += ", " + next;
    }
    std::vector<std::string> partials;
    for (int64_t x = 0; x < chain; ++x) {
      std::string xs = std::to_string(x);
      std::string j = "%j";
      if (x) {
        j = "%jX" + xs;
        emit(j + " = arith.addi %j, " + i32(x) + " : i32");
      }
      partials.push_back(issueBlock("X" + xs, j));
    }
    std::string acc = "%acc";
    for (int64_t x = 0; x < chain; ++x)
      acc = finishBlock("X" + std::to_string(x), partials[x], acc, current[x],
                        static_cast<int>(chain - 1 - x));
    emit("%jNext = arith.addi %j, " + i32(chain) + " : i32");
    emit("scf.yield %jNext, " + acc + nextScales + " : i32, " + structType +
         scaleTypes);
    emit("}");
    emit("%chainBlocks = arith.muli %numChains, " + i32(chain) + " : i32");
    emit("%restBegin = arith.addi " + kbBegin() + ", %chainBlocks : i32");
    emit("%jRest = arith.addi %it, %chainBlocks : i32");
    emit("%rest:2 = scf.for %kbR = %restBegin to " + kbEnd() +
         " step %c1 iter_args(%jR = %jRest, %accR = %res#1) -> (i32, " +
         structType + ") : i32 {");
    std::vector<std::string> scales = loadScales("R", "%kbR");
    std::string partial = issueBlock("R", "%jR");
    std::string accR = finishBlock("R", partial, "%accR", scales, 0);
    emit("%jR1 = arith.addi %jR, %c1 : i32");
    emit("scf.yield %jR1, " + accR + " : i32, " + structType);
    emit("}");
    finalAcc = "%rest#1";
  }

  /// Whether the main loop keeps one wgmma group in flight across
  /// iterations (writePipelinedBlocks): 128-wide tiles of two consumer
  /// warpgroups, whose two 64-register partials fit beside the
  /// accumulator (one consumer keeps pairs: its scales are not prefetched,
  /// gemm-kernels.md "Version 8").
  bool pipelined() const {
    return kiln::GemmConfigAttr::getPipelinedLoop(config.getBlockN(),
                                                  config.getConsumers());
  }

  /// The main loop with one group always in flight, into finalAcc: block
  /// b + 1 is issued before block b is promoted, for every b, so each
  /// promotion runs under the next block's MMAs (pairs leave the second
  /// block's promotion without one). Two partials alternate: block 2q in
  /// the loop-carried one (issued by the previous iteration), 2q + 1 in the
  /// other; the scales of blocks 2q + 2 and 2q + 3 are loaded one iteration
  /// ahead.
  void writePipelinedBlocks(const std::string &zero,
                            const std::vector<std::string> &blockScales) {
    // An empty split-K slice issues nothing and stores a zero partial.
    bool mayBeEmpty = splitK > 1;
    if (mayBeEmpty) {
      emit("%hasBlocks = arith.cmpi ne, " + kbCount() + ", %c0 : i32");
      emit("%final = scf.if %hasBlocks -> (" + structType + ") {");
    }
    std::string result = mayBeEmpty ? "%finalP" : "%final";
    int64_t stages = config.getStages();
    std::string scaleTypes, scaleArgs, nextScales;
    std::vector<std::string> evenScales, oddScales;
    emitKbLast();
    emit("%kbQ1u = arith.addi " + kbBegin() + ", %c1 : i32");
    emit("%kbQ1 = arith.minui %kbQ1u, %kbLast : i32");
    std::vector<std::string> first0 = loadScales("Q0", kbBegin());
    std::vector<std::string> first1 = loadScales("Q1", "%kbQ1");
    for (size_t i = 0; i < blockScales.size(); ++i) {
      scaleArgs += ", " + blockScales[i] + "E = " + first0[i];
      evenScales.push_back(blockScales[i] + "E");
    }
    for (size_t i = 0; i < blockScales.size(); ++i) {
      scaleArgs += ", " + blockScales[i] + "O = " + first1[i];
      oddScales.push_back(blockScales[i] + "O");
    }
    for (size_t i = 0; i < 2 * blockScales.size(); ++i)
      scaleTypes += std::string(", ") + scaleType();
    std::string first = issueBlock("F", "%it");
    emit("%countM1 = arith.subi " + kbCount() + ", %c1 : i32");
    emit("%numIter = arith.divui %countM1, %c2 : i32");
    emit("%res:" + std::to_string(3 + 2 * blockScales.size()) +
         " = scf.for %q = %c0 to %numIter step %c1 iter_args(%j = %it, "
         "%acc = " +
         zero + ", %pIn = " + first + scaleArgs + ") -> (i32, " + structType +
         ", " + structType + scaleTypes + ") : i32 {");
    emit("%kbE0 = arith.muli %q, %c2 : i32");
    emit("%kbE = arith.addi %kbE0, " + kbBegin() + " : i32");
    emit("%kbNEu = arith.addi %kbE, %c2 : i32");
    emit("%kbNE = arith.minui %kbNEu, %kbLast : i32");
    emit("%kbNOu = arith.addi %kbE, " + i32(3) + " : i32");
    emit("%kbNO = arith.minui %kbNOu, %kbLast : i32");
    for (const std::string &next : loadScales("NE", "%kbNE"))
      nextScales += ", " + next;
    for (const std::string &next : loadScales("NO", "%kbNO"))
      nextScales += ", " + next;
    emit("%jO = arith.addi %j, %c1 : i32");
    std::string odd = issueBlock("O", "%jO");
    // Block 2q, issued by the previous iteration: its stage from %j.
    emit("%sE = arith.remui %j, " + i32(stages) + " : i32");
    std::string acc = finishBlock("E", "%pIn", "%acc", evenScales, 1);
    emit("%jE2 = arith.addi %j, %c2 : i32");
    std::string next = issueBlock("E2", "%jE2");
    acc = finishBlock("O", odd, acc, oddScales, 1);
    emit("scf.yield %jE2, " + acc + ", " + next + nextScales + " : i32, " +
         structType + ", " + structType + scaleTypes);
    emit("}");
    // In flight: block 2n (n = %numIter) at ring position %res#0. An even
    // count leaves block 2n + 1 to issue.
    std::vector<std::string> lastEven, lastOdd;
    for (size_t i = 0; i < blockScales.size(); ++i) {
      lastEven.push_back("%res#" + std::to_string(3 + i));
      lastOdd.push_back("%res#" + std::to_string(3 + blockScales.size() + i));
    }
    emit("%oddLeft = arith.remui %countM1, %c2 : i32");
    emit("%hasOdd = arith.cmpi ne, %oddLeft, %c0 : i32");
    emit(result + " = scf.if %hasOdd -> (" + structType + ") {");
    emit("%jL = arith.addi %res#0, %c1 : i32");
    std::string last = issueBlock("L", "%jL");
    emit("%sLE = arith.remui %res#0, " + i32(stages) + " : i32");
    std::string accA = finishBlock("LE", "%res#2", "%res#1", lastEven, 1);
    std::string accB = finishBlock("L", last, accA, lastOdd, 0);
    emit("scf.yield " + accB + " : " + structType);
    emit("} else {");
    emit("%sTE = arith.remui %res#0, " + i32(stages) + " : i32");
    std::string accT = finishBlock("TE", "%res#2", "%res#1", lastEven, 0);
    emit("scf.yield " + accT + " : " + structType);
    emit("}");
    if (mayBeEmpty) {
      emit("scf.yield %finalP : " + structType);
      emit("} else {");
      emit("scf.yield " + zero + " : " + structType);
      emit("}");
    }
    finalAcc = "%final";
  }

  /// The work loop's head: persistent blocks take tiles (split_k = 1) or
  /// (tile, K slice) units `b, b + gridDim.x, ...`; unit u is slice u % S of
  /// tile u / S, so a tile's slices run side by side. Slice s covers K blocks
  /// [s * numKB / S, (s + 1) * numKB / S): sizes differ by at most one.
  void writeWorkLoop() {
    if (clusterM > 1) {
      // Clusters take units the way blocks take tiles.
      emit("%done = scf.for %tile = %cid to %numUnits step %ncid "
           "iter_args(%it = %c0) -> (i32) : i32 {");
      return;
    }
    if (quantize) {
      // Pairs of tiles (2p, 2p + 1): the same rows, adjacent 64-column
      // halves of one 128-column scale block of the intermediate (every
      // group has an even number of N tiles). A block runs both of a pair,
      // in order, before its next pair; %half tells them apart.
      emit("%numTilePairs = arith.divui %numTiles, %c2 : i32");
      emit("%tilePairsLeft0 = arith.subi %numTilePairs, %bid : i32");
      emit("%tilePairsLeft = arith.maxsi %tilePairsLeft0, %c0 : i32");
      emit("%nbidLess1 = arith.subi %nbid, %c1 : i32");
      emit("%tilePairsRounded = arith.addi %tilePairsLeft, %nbidLess1 : i32");
      emit("%myTilePairs = arith.divui %tilePairsRounded, %nbid : i32");
      emit("%mySlots = arith.muli %myTilePairs, %c2 : i32");
      emit("%done = scf.for %slot = %c0 to %mySlots step %c1 "
           "iter_args(%it = %c0) -> (i32) : i32 {");
      emit("%slotTilePair = arith.shrui %slot, %c1 : i32");
      emit("%tilePairStep = arith.muli %slotTilePair, %nbid : i32");
      emit("%tilePair = arith.addi %bid, %tilePairStep : i32");
      emit("%tilePairFirst = arith.muli %tilePair, %c2 : i32");
      emit("%half = arith.andi %slot, %c1 : i32");
      emit("%tile = arith.addi %tilePairFirst, %half : i32");
      return;
    }
    if (splitK == 1) {
      emit("%done = scf.for %tile = %bid to %numTiles step %nbid "
           "iter_args(%it = %c0) -> (i32) : i32 {");
      return;
    }
    if (splitTail) {
      // Whole waves of whole tiles first (units [0, numFull), unit = tile),
      // then the tiles of the last partial wave, each split into split_k
      // slices (gemm-abi.md "Split tail"): a wave's worth of units instead
      // of a wave for a few tiles. With fewer tiles than blocks every tile
      // is split (numFull = 0).
      emit("%fullWaves = arith.divui %numTiles, %nbid : i32");
      emit("%numFull = arith.muli %fullWaves, %nbid : i32");
      emit("%tailTiles = arith.subi %numTiles, %numFull : i32");
      emit("%tailUnits = arith.muli %tailTiles, " + i32(splitK) + " : i32");
      emit("%allUnits = arith.addi %numFull, %tailUnits : i32");
      emit("%done = scf.for %unit = %bid to %allUnits step %nbid "
           "iter_args(%it = %c0) -> (i32) : i32 {");
      emit("%isSplit = arith.cmpi uge, %unit, %numFull : i32");
      // (Only meaningful when %isSplit; selected away otherwise.)
      emit("%tailUnit = arith.subi %unit, %numFull : i32");
      emit("%tailTile = arith.divui %tailUnit, " + i32(splitK) + " : i32");
      emit("%tailSplit = arith.remui %tailUnit, " + i32(splitK) + " : i32");
      emit("%tileOfTail = arith.addi %numFull, %tailTile : i32");
      emit("%tile = arith.select %isSplit, %tileOfTail, %unit : i32");
      emit("%split = arith.select %isSplit, %tailSplit, %c0 : i32");
    } else {
      emit("%done = scf.for %unit = %bid to %numUnits step %nbid "
           "iter_args(%it = %c0) -> (i32) : i32 {");
      emit("%tile = arith.divui %unit, " + i32(splitK) + " : i32");
      emit("%split = arith.remui %unit, " + i32(splitK) + " : i32");
    }
    // A whole tile of the split tail's schedule runs all K blocks.
    std::string sliced = splitTail ? "S" : "";
    emit("%kbBeginNum = arith.muli %split, %numKB : i32");
    emit("%kbBegin" + sliced + " = arith.divui %kbBeginNum, " + i32(splitK) +
         " : i32");
    emit("%splitNext = arith.addi %split, %c1 : i32");
    emit("%kbEndNum = arith.muli %splitNext, %numKB : i32");
    emit("%kbEnd" + sliced + " = arith.divui %kbEndNum, " + i32(splitK) +
         " : i32");
    if (splitTail) {
      emit("%kbBegin = arith.select %isSplit, %kbBeginS, %c0 : i32");
      emit("%kbEnd = arith.select %isSplit, %kbEndS, %numKB : i32");
    }
    emit("%kbCount = arith.subi %kbEnd, %kbBegin : i32");
  }

  /// The weight scales a K block's promotion needs, as name suffixes of
  /// the rows %bScaleRow<suffix>: one block; the gate's and the up
  /// projection's (SwiGLU); or one per scaleChunkCols() columns (wider tiles).
  std::vector<std::string> weightScaleSuffixes() const {
    if (swiglu)
      return {"", "Up"};
    std::vector<std::string> suffixes = {""};
    for (int64_t c = 1;
         config.getBlockN() > 128 && c < config.getBlockN() / scaleChunkCols();
         ++c)
      suffixes.push_back("C" + std::to_string(c));
    return suffixes;
  }

  /// Staged 192-wide tiles: their three 64-column chunks' weight scales lie
  /// in two blocks, nOff / 128 and the next (clamped to the last): chunk 0
  /// in the first, chunk 2 in the second, chunk 1 in the first when nOff is
  /// a multiple of 128 and in the second otherwise (nOff is a multiple of
  /// 192). The producer loads the two blocks' boxes only (slots 0 and 1):
  /// each TMA load delays its stage, however small (gemm-kernels.md
  /// "Session 23").
  bool twoWeightScaleBoxes() const {
    return stagedScales && config.getBlockN() == 192 && !swiglu;
  }

  /// The slot (0, 1, ...) that weight scale `index` of weightScaleSuffixes()
  /// has in a stage's weight-scale slots, as the producer loads them; for
  /// chunk 1 of a 192-wide tile (twoWeightScaleBoxes) the consumers pick
  /// the slot per tile instead (%midScaleSlot).
  int64_t weightScaleSlot(size_t index) const {
    return twoWeightScaleBoxes() && index == 2 ? 1
                                               : static_cast<int64_t>(index);
  }

  /// The weight-scale boxes the producer loads per K block.
  int64_t weightScaleBoxes() const {
    return twoWeightScaleBoxes()
               ? 2
               : static_cast<int64_t>(weightScaleSuffixes().size());
  }

  /// Columns per weight scale in the promotion of tiles wider than 128:
  /// 64 (192-wide tiles), or a 256-wide tile's 128-column half.
  int64_t scaleChunkCols() const { return halves > 1 ? 128 : 64; }

  /// %kbLast: the unit's last K block, to which the scale loads ahead
  /// are clamped. A split-K slice may be empty (numKB < split_k), where
  /// kbEnd - 1 is below kbBegin (or -1, which the unsigned clamp would
  /// not catch): clamping to kbBegin instead keeps every load inside the
  /// scales (kbBegin < numKB for every slice).
  void emitKbLast() {
    if (splitK == 1) {
      emit("%kbLast = arith.subi " + kbEnd() + ", %c1 : i32");
      return;
    }
    emit("%kbLastRaw = arith.subi " + kbEnd() + ", %c1 : i32");
    emit("%kbLast = arith.maxsi %kbLastRaw, " + kbBegin() + " : i32");
  }

  /// The unit's K-block range and its length.
  std::string kbBegin() const { return splitK > 1 ? "%kbBegin" : "%c0"; }
  std::string kbEnd() const { return splitK > 1 ? "%kbEnd" : "%numKB"; }
  std::string kbCount() const { return splitK > 1 ? "%kbCount" : "%numKB"; }

  /// Split-K values that do not change from unit to unit: where this
  /// thread's partial goes in a workspace slot. Each tile owns a fixed-size
  /// record of the workspace: 256 bytes holding one arrival counter per
  /// consumer warp, then its split_k slots (gemm-abi.md "Split-K"). The
  /// record's size does not depend on M and N, so no launch's partials ever
  /// land on another shape's counters.
  void writeSplitPrologue(int64_t accRegs) {
    int64_t slotFloats = config.getBlockM() * config.getBlockN();
    emit("%consumerThread = arith.subi %tid, %c128 : i32");
    emit("%consumerWarp = arith.divui %consumerThread, %c32 : i32");
    emit("%threadSlot0 = arith.muli %consumerWarp, " + i32(accRegs / 4 * 32) +
         " : i32");
    emit("%threadSlot1 = arith.addi %threadSlot0, %lane : i32");
    emit("%threadSlot = arith.muli %threadSlot1, %c4 : i32");
    emit("%partialsAtThread = arith.addi %threadSlot, " +
         i32(kCounterRecordFloats) + " : i32");
    emit("%partialsAtThreadW = arith.extui %partialsAtThread : i32 to i64");
    emit("%isLane0 = arith.cmpi eq, %lane, %c0 : i32");
    emit("%fullMask = arith.constant -1 : i32");
    emit("%slotFloats = arith.constant " + std::to_string(slotFloats) +
         " : i64");
    emit("%tileFloats = arith.constant " +
         std::to_string(kCounterRecordFloats + splitK * slotFloats) + " : i64");
  }

  /// Split-K: the record this unit's partial goes to (a whole tile of a
  /// split-tail kernel has none: record 0 stands in, never written).
  std::string splitRecord() {
    if (!splitTail)
      return "%tile";
    emit("%splitRecord = arith.select %isSplit, %tailTile, %c0 : i32");
    return "%splitRecord";
  }

  /// Split-K: starts loading the warp's tag word for this unit's tile
  /// (header word kTagWordBase + warp) before the K loop, so that the
  /// epilogue finds it without a round trip. It counts the record's uses:
  /// this launch's partials carry (tag + 1) & 1 in each word's lowest bit.
  void writeSplitTagLoad() {
    std::string record = splitRecord();
    emit("%tagTileW = arith.extui " + record + " : i32 to i64");
    emit("%tagTileAt = arith.muli %tagTileW, %tileFloats : i64");
    emit("%tagWarpW = arith.extui %consumerWarp : i32 to i64");
    emit("%tagBase = arith.constant " + std::to_string(kTagWordBase) +
         " : i64");
    emit("%tagAt0 = arith.addi %tagTileAt, %tagBase : i64");
    emit("%tagAt = arith.addi %tagAt0, %tagWarpW : i64");
    emit("%tagPtr = llvm.getelementptr %workspace[%tagAt] : "
         "(!llvm.ptr<1>, i64) -> !llvm.ptr<1>, i32");
    emit("%tagWord = llvm.load volatile %tagPtr : !llvm.ptr<1> -> i32");
  }

  /// Split-K: %tileAt (the unit's record), %tileSlot (this thread's place
  /// in its slot 0) and %mySlot (in its own slice's slot), in words.
  void writeSplitSlotAddress(const std::string &record) {
    emit("%tileW = arith.extui " + record + " : i32 to i64");
    emit("%tileAt = arith.muli %tileW, %tileFloats : i64");
    emit("%splitW = arith.extui %split : i32 to i64");
    emit("%slotAt = arith.muli %splitW, %slotFloats : i64");
    emit("%tileSlot = arith.addi %tileAt, %partialsAtThreadW : i64");
    emit("%mySlot = arith.addi %tileSlot, %slotAt : i64");
  }

  /// Split-K: %quadPtr<g>, register quad g's 16 bytes in this thread's
  /// own slot.
  void writeQuadPointer(int64_t g) {
    std::string n = std::to_string(g);
    emit("%quadOff" + n + " = arith.constant " + std::to_string(128 * g) +
         " : i64");
    emit("%quadAt" + n + " = arith.addi %mySlot, %quadOff" + n + " : i64");
    emit("%quadPtr" + n + " = llvm.getelementptr %workspace[%quadAt" + n +
         "] : (!llvm.ptr<1>, i64) -> !llvm.ptr<1>, f32");
  }

  /// Split-K: the warp's relaxed arrival on its (tile, warp) counter, the
  /// old count broadcast to the warp; %isLast for the warp that arrives
  /// last.
  void writeSplitArrival() {
    emit("nvvm.bar.warp.sync %fullMask : i32");
    emit("%consumerWarpW = arith.extui %consumerWarp : i32 to i64");
    emit("%counterAt = arith.addi %tileAt, %consumerWarpW : i64");
    emit("%counter = llvm.getelementptr %workspace[%counterAt] : "
         "(!llvm.ptr<1>, i64) -> !llvm.ptr<1>, i32");
    emit("%arrivedLane0 = scf.if %isLane0 -> (i32) {");
    emit("%old = llvm.atomicrmw add %counter, %c1 syncscope(\"device\") "
         "monotonic : !llvm.ptr<1>, i32");
    emit("scf.yield %old : i32");
    emit("} else {");
    emit("scf.yield %c0 : i32");
    emit("}");
    emit("%arrived = nvvm.shfl.sync idx %fullMask, %arrivedLane0, %c0, " +
         i32(31) + " : i32 -> i32");
    emit("%isLast = arith.cmpi eq, %arrived, " + i32(splitK - 1) + " : i32");
  }

  /// The split-K epilogue: the tagged reduction for 64-wide tiles, the
  /// fenced one for wider tiles (the tagged one spilled there: split tails
  /// of 4 and 8 slices of 128x128 tiles, 548 and 5048 bytes). Both use the
  /// record layout of gemm-abi.md "Split-K" and a zeroed workspace.
  bool taggedSplit() const {
    return splitK > 1 && config.getBlockN() <= 64 && config.getConsumers() == 1;
  }
  void writeSplitEpilogue(int64_t bm, int64_t bn, int64_t accRegs,
                          const std::string &record) {
    if (taggedSplit())
      writeTaggedSplitEpilogue(bm, bn, accRegs, record);
    else
      writeFencedSplitEpilogue(bm, bn, accRegs, record);
  }

  /// 64-wide tiles' split reduction (32 accumulator registers; what the
  /// heuristic splits at small M; gemm-abi.md "Split-K"). Every warp stores
  /// its FP32 partial into the unit's workspace slot (16 bytes per thread
  /// and register quad, coalesced), each word's lowest bit replaced by this
  /// use's tag bit, then counts itself in on its (tile, warp) counter with
  /// one relaxed atomic add, no fence between. The warp that arrives last
  /// knows its peers have issued their stores, not that they landed: it
  /// loads the S - 1 other slots until every word carries the tag bit (a
  /// word of the record's previous use carries the other), sums all S in
  /// slice order with its own from registers (so it never waits for its
  /// own stores), each word's tag bit cleared (so the sum depends neither
  /// on which slice arrived last nor on the launch: the partials lose the
  /// last of their 24 bits, far below BF16's rounding), resets the counter,
  /// advances the tag word and stores BF16. No block waits for one that has
  /// not arrived, and a zeroed workspace is ready. H100: 64 x 2112 x 7168
  /// 13.0 -> 12.6 us, 128 x 2112 x 7168 14.2 -> 13.7, 64 x 4096 x 7168 18.0
  /// -> 17.6 against the fenced reduction (gemm-kernels.md "Session 20").
  void writeTaggedSplitEpilogue(int64_t bm, int64_t bn, int64_t accRegs,
                                const std::string &record) {
    writeSplitSlotAddress(record);
    emit("%tagNext = arith.addi %tagWord, %c1 : i32");
    emit("%tagBit = arith.andi %tagNext, %c1 : i32");
    emit("%clearTag = arith.constant -2 : i32");
    const int64_t quads = accRegs / 4;
    // This thread's partial, tag bit cleared (what the last warp sums for
    // its own slice) and stored tagged.
    std::vector<std::string> own(accRegs);
    for (int64_t g = 0; g < quads; ++g) {
      std::string n = std::to_string(g);
      std::string vec = packQuad(
          g, "i32",
          [&](const std::string &x, const std::string &value, int64_t reg) {
            emit(x + "b = arith.bitcast " + value + " : f32 to i32");
            emit(x + "c = arith.andi " + x + "b, %clearTag : i32");
            emit(x + "o = arith.bitcast " + x + "c : i32 to f32");
            own[reg] = x + "o";
            emit(x + "t = arith.ori " + x + "c, %tagBit : i32");
            return x + "t";
          });
      writeQuadPointer(g);
      // Volatile (relaxed): the last warp's loads race with these by design.
      emit("llvm.store volatile " + vec + ", %quadPtr" + n +
           " {alignment = 16 : i64} : vector<4xi32>, !llvm.ptr<1>");
    }
    writeSplitArrival();
    emit("scf.if %isLast {");
    // The S - 1 other slots: the k-th is slice k, or k + 1 from this warp's
    // own on; its own slice comes from registers, so it never waits for its
    // own stores.
    const int64_t loaded = splitK - 1;
    std::vector<std::string> otherPtr(loaded);
    for (int64_t k = 0; k < loaded; ++k) {
      std::string n = std::to_string(k);
      emit("%otherIsPast" + n + " = arith.cmpi uge, " + i32(k) +
           ", %split : i32");
      emit("%otherSlice" + n + " = arith.select %otherIsPast" + n + ", " +
           i32(k + 1) + ", " + i32(k) + " : i32");
      emit("%otherSliceW" + n + " = arith.extui %otherSlice" + n +
           " : i32 to i64");
      emit("%otherAt" + n + " = arith.muli %otherSliceW" + n +
           ", %slotFloats : i64");
      emit("%otherSlot" + n + " = arith.addi %tileSlot, %otherAt" + n +
           " : i64");
      otherPtr[k] = "%otherSlot" + n;
    }
    // Slice s in slice order: this warp's own registers, the s-th other
    // slot before it, the (s - 1)-th after it.
    for (int64_t s = 0; s < splitK; ++s) {
      std::string n = std::to_string(s);
      emit("%isOwn" + n + " = arith.cmpi eq, %split, " + i32(s) + " : i32");
      emit("%isBefore" + n + " = arith.cmpi ult, " + i32(s) + ", %split : i32");
    }
    // Loaded and summed until every loaded word carries the tag bit: the
    // first pass, unless a peer's stores are still on their way. Each word
    // is its own access (PTX gives a vector access no atomicity), so each
    // is checked. The pass yields the sums, not the loads.
    std::vector<std::string> quadTypes(quads, "vector<4xf32>");
    std::string types = llvm::join(quadTypes, ", ");
    emit("%false = arith.constant false");
    emit("%sums:" + std::to_string(quads) +
         " = scf.while (%pollPass = %c0) : (i32) -> (" + types + ") {");
    std::vector<std::string> sums;
    std::string pending = "%false";
    for (int64_t g = 0; g < quads; ++g) {
      for (int64_t k = 0; k < loaded; ++k) {
        std::string n = std::to_string(g) + "_" + std::to_string(k);
        // (%quadOff<g>: quad g's offset in a slot, from the stores.)
        emit("%pollAt" + n + " = arith.addi " + otherPtr[k] + ", %quadOff" +
             std::to_string(g) + " : i64");
        emit("%pollPtr" + n + " = llvm.getelementptr %workspace[%pollAt" + n +
             "] : (!llvm.ptr<1>, i64) -> !llvm.ptr<1>, f32");
        emit("%poll" + n + " = llvm.load volatile %pollPtr" + n +
             " {alignment = 16 : i64} : !llvm.ptr<1> -> vector<4xi32>");
      }
      std::string vec = "%sumUndef" + std::to_string(g);
      emit(vec + " = llvm.mlir.undef : vector<4xf32>");
      for (int64_t e = 0; e < 4; ++e) {
        // The other slots' word e, checked and cleared of the tag bit.
        std::vector<std::string> got(loaded);
        for (int64_t k = 0; k < loaded; ++k) {
          std::string w = "%pollWord" + std::to_string(g) + "_" +
                          std::to_string(k) + "_" + std::to_string(e);
          emit(w + " = llvm.extractelement %poll" + std::to_string(g) + "_" +
               std::to_string(k) + "[" + i32(e) + " : i32] : vector<4xi32>");
          emit(w + "Bit = arith.andi " + w + ", %c1 : i32");
          emit(w + "Stale = arith.cmpi ne, " + w + "Bit, %tagBit : i32");
          emit(w + "Pending = arith.ori " + pending + ", " + w + "Stale : i1");
          pending = w + "Pending";
          emit(w + "c = arith.andi " + w + ", %clearTag : i32");
          emit(w + "f = arith.bitcast " + w + "c : i32 to f32");
          got[k] = w + "f";
        }
        std::string lane;
        for (int64_t s = 0; s < splitK; ++s) {
          std::string n = std::to_string(g) + "_" + std::to_string(s) + "_" +
                          std::to_string(e);
          std::string v;
          if (s == 0) {
            v = got[0];
          } else if (s == splitK - 1) {
            v = got[splitK - 2];
          } else {
            emit("%pick" + n + " = arith.select %isBefore" + std::to_string(s) +
                 ", " + got[s] + ", " + got[s - 1] + " : f32");
            v = "%pick" + n;
          }
          emit("%slice" + n + " = arith.select %isOwn" + std::to_string(s) +
               ", " + own[4 * g + e] + ", " + v + " : f32");
          v = "%slice" + n;
          if (s == 0) {
            lane = v;
            continue;
          }
          emit("%acc" + n + " = arith.addf " + lane + ", " + v + " : f32");
          lane = "%acc" + n;
        }
        std::string next =
            "%sumQuad" + std::to_string(g) + "_" + std::to_string(e);
        emit(next + " = llvm.insertelement " + lane + ", " + vec + "[" +
             i32(e) + " : i32] : vector<4xf32>");
        vec = next;
      }
      sums.push_back(vec);
    }
    emit("scf.condition(" + pending + ") " + llvm::join(sums, ", ") + " : " +
         types);
    emit("} do {");
    std::vector<std::string> blockArgs;
    for (int64_t g = 0; g < quads; ++g)
      blockArgs.push_back("%pollArg" + std::to_string(g) + ": vector<4xf32>");
    emit("^bb0(" + llvm::join(blockArgs, ", ") + "):");
    emit("scf.yield %c0 : i32");
    emit("}");
    emit("scf.if %isLane0 {");
    emit("llvm.store %c0, %counter : i32, !llvm.ptr<1>");
    emit("llvm.store volatile %tagNext, %tagPtr : i32, !llvm.ptr<1>");
    emit("}");
    std::string sum = "%undefAcc";
    for (int64_t g = 0; g < quads; ++g) {
      for (int64_t e = 0; e < 4; ++e) {
        std::string lane = "%sumLane" + std::to_string(4 * g + e);
        emit(lane + " = llvm.extractelement %sums#" + std::to_string(g) + "[" +
             i32(e) + " : i32] : vector<4xf32>");
        std::string next = "%sum" + std::to_string(4 * g + e);
        emit(next + " = llvm.insertvalue " + lane + ", " + sum + "[" +
             std::to_string(4 * g + e) + "] : " + structType);
        sum = next;
      }
    }
    writeStores(plainStores(sum));
    emit("}");
  }

  /// Packs accumulator registers 4g .. 4g + 3 of finalAcc into a
  /// vector<4 x `type`> for one 16-byte store of a split partial, and
  /// returns its name. Element e is named %quad<g>_<e>; `element(x, value,
  /// reg)` emits what element x needs from register `reg`'s f32 `value` and
  /// returns the value to insert.
  template <typename Element>
  std::string packQuad(int64_t g, const std::string &type, Element element) {
    std::string n = std::to_string(g);
    std::string vectorType = "vector<4x" + type + ">";
    std::string vec = "%quadUndef" + n;
    emit(vec + " = llvm.mlir.undef : " + vectorType);
    for (int64_t e = 0; e < 4; ++e) {
      std::string x = "%quad" + n + "_" + std::to_string(e);
      emit(x + "v = llvm.extractvalue " + finalAcc + "[" +
           std::to_string(4 * g + e) + "] : " + structType);
      std::string value = element(x, x + "v", 4 * g + e);
      emit(x + " = llvm.insertelement " + value + ", " + vec + "[" + i32(e) +
           " : i32] : " + vectorType);
      vec = x;
    }
    return vec;
  }

  /// Wider tiles' split reduction: every warp stores its FP32 partial into
  /// the unit's workspace slot (16 bytes per thread and register quad,
  /// coalesced), then counts itself in on its (tile, warp) counter: stores,
  /// fence, warp barrier, one atomic add (the classic threadfence
  /// reduction). The warp that arrives last sums the tile's slots in slice
  /// order, so the result does not depend on which slice finished last,
  /// resets the counter for the next launch and stores BF16.
  void writeFencedSplitEpilogue(int64_t bm, int64_t bn, int64_t accRegs,
                                const std::string &record) {
    writeSplitSlotAddress(record);
    for (int64_t g = 0; g < accRegs / 4; ++g) {
      std::string n = std::to_string(g);
      std::string vec = packQuad(
          g, "f32", [](const std::string &, const std::string &value, int64_t) {
            return value;
          });
      writeQuadPointer(g);
      emit("llvm.store " + vec + ", %quadPtr" + n +
           " {alignment = 16 : i64} : vector<4xf32>, !llvm.ptr<1>");
    }
    emit("llvm.fence syncscope(\"device\") acq_rel");
    writeSplitArrival();
    emit("scf.if %isLast {");
    emit("llvm.fence syncscope(\"device\") acq_rel");
    emit("scf.if %isLane0 {");
    emit("llvm.store %c0, %counter : i32, !llvm.ptr<1>");
    emit("}");
    std::string sum = "%undefAcc";
    for (int64_t g = 0; g < accRegs / 4; ++g) {
      std::vector<std::string> lanes(4);
      for (int64_t s = 0; s < splitK; ++s) {
        std::string n = std::to_string(g) + "_" + std::to_string(s);
        emit("%partOff" + n + " = arith.constant " +
             std::to_string(s * bm * bn + 128 * g) + " : i64");
        emit("%partAt" + n + " = arith.addi %tileSlot, %partOff" + n +
             " : i64");
        emit("%partPtr" + n + " = llvm.getelementptr %workspace[%partAt" + n +
             "] : (!llvm.ptr<1>, i64) -> !llvm.ptr<1>, f32");
        emit("%part" + n + " = llvm.load %partPtr" + n +
             " {alignment = 16 : i64} : !llvm.ptr<1> -> vector<4xf32>");
        for (int64_t e = 0; e < 4; ++e) {
          std::string x = "%part" + n + "_" + std::to_string(e);
          emit(x + " = llvm.extractelement %part" + n + "[" + i32(e) +
               " : i32] : vector<4xf32>");
          if (s == 0) {
            lanes[e] = x;
            continue;
          }
          emit(x + "sum = arith.addf " + lanes[e] + ", " + x + " : f32");
          lanes[e] = x + "sum";
        }
      }
      for (int64_t e = 0; e < 4; ++e) {
        std::string next = "%sum" + std::to_string(4 * g + e);
        emit(next + " = llvm.insertvalue " + lanes[e] + ", " + sum + "[" +
             std::to_string(4 * g + e) + "] : " + structType);
        sum = next;
      }
    }
    writeStores(plainStores(sum));
    emit("}");
  }

  /// What writeStores stores: an accumulator `acc` of `type` in the m64nN
  /// fragment layout, N = `cols`, into an output of `n` columns (`n64`, as
  /// i64) starting at column `nOff`.
  struct Stores {
    std::string acc, type, n, n64, nOff;
    int64_t cols;
  };

  /// The plain epilogue stores the accumulator as it is.
  Stores plainStores(const std::string &acc) const {
    return {acc, structType, "%N", "%N64", "%nOff", config.getBlockN()};
  }

  /// The SwiGLU epilogue: the tile's left 64 columns are gate, its right
  /// 64 the up projection of the same intermediate columns (B interleaved
  /// in blocks of 64 rows, gemm-abi.md "SwiGLU epilogue"), so register i
  /// (column c) and register i + 32 (column c + 64) of a thread pair up.
  /// Computes silu(g) * u = g * rcp(1 + 2^(-g log2 e)) * u in FP32 (both
  /// approximations within a few ulp, far below BF16's rounding; a
  /// full-precision division's slow path made ptxas spill) into an m64n64
  /// fragment, for an output of N / 2 columns from column nOff / 2.
  Stores writeSwiglu(const std::string &acc) {
    int64_t half = config.getBlockN() / 4;
    std::string type = "!llvm.struct<(";
    for (int64_t i = 0; i < half; ++i)
      type += i ? ", f32" : "f32";
    type += ")>";
    emit("%swiN = arith.divui %N, %c2 : i32");
    emit("%swiN64 = arith.extui %swiN : i32 to i64");
    emit("%swiNOff = arith.divui %nOff, %c2 : i32");
    emit("%swiNegLog2e = arith.constant -1.44269504088896341 : f32");
    emit("%swiOne = arith.constant 1.0 : f32");
    std::string out = "%swiUndef";
    emit(out + " = llvm.mlir.undef : " + type);
    for (int64_t i = 0; i < half; ++i) {
      std::string n = std::to_string(i);
      emit("%swiG" + n + " = llvm.extractvalue " + acc + "[" + n +
           "] : " + structType);
      emit("%swiU" + n + " = llvm.extractvalue " + acc + "[" +
           std::to_string(i + half) + "] : " + structType);
      emit("%swiX" + n + " = arith.mulf %swiG" + n + ", %swiNegLog2e : f32");
      // exp(-g); +inf for very negative g, where g * rcp(inf) = -0 is
      // silu's limit.
      emit("%swiE" + n +
           " = llvm.inline_asm \"ex2.approx.ftz.f32 $0, $1;\", "
           "\"=f,f\" %swiX" +
           n + " : (f32) -> f32");
      emit("%swiD" + n + " = arith.addf %swiE" + n + ", %swiOne : f32");
      emit("%swiR" + n +
           " = llvm.inline_asm \"rcp.approx.ftz.f32 $0, $1;\", \"=f,f\" "
           "%swiD" +
           n + " : (f32) -> f32");
      emit("%swiS" + n + " = arith.mulf %swiG" + n + ", %swiR" + n + " : f32");
      emit("%swiH" + n + " = arith.mulf %swiS" + n + ", %swiU" + n + " : f32");
      std::string next = "%swiOut" + n;
      emit(next + " = llvm.insertvalue %swiH" + n + ", " + out + "[" + n +
           "] : " + type);
      out = next;
    }
    return {out, type, "%swiN", "%swiN64", "%swiNOff", config.getBlockN() / 2};
  }

  /// The quantized SwiGLU epilogue (gemm-abi.md "Quantized SwiGLU
  /// epilogue"): h = silu(gate) * up rounded to BF16, as the unfused path
  /// stores it, then DeepSeek-V3's 1x128 quantization of the down
  /// projection's input with the runtime quantizer's exact arithmetic: s =
  /// max(amax, 1e-4) / 448 per row and 128 columns, codes e4m3(h / s)
  /// (IEEE division, round to nearest, saturating). A scale block is the
  /// 64 columns of this tile and the 64 of the other tile of its pair, so
  /// the pair's first tile leaves its BF16 values and its two row maxima
  /// in this thread's stash (the BF16 staging, which this epilogue does not
  /// otherwise use: word w of consumer thread t at w * threads + t, no bank
  /// conflicts, no barrier since only the thread reads it); the second
  /// reduces the maxima over both tiles and the row's quad of lanes and
  /// stores both tiles' codes and the scales. Register i of the m64n64
  /// fragment is at row r (+8 for i % 4 >= 2), column 8 * (i / 4) + 2 *
  /// (lane % 4) + i % 2, so each pair (i, i + 1) is one 2-byte store.
  void writeQuantizedSwiglu(const std::string &acc) {
    Stores h = writeSwiglu(acc);
    int64_t values = config.getBlockN() / 4; // 32: an m64n64 fragment
    int64_t threads = 128 * config.getConsumers();
    // BF16 rounding, packed pairs for the stash and their f32 values.
    std::vector<std::string> own(values), words(values / 2);
    for (int64_t i = 0; i < values; i += 2) {
      std::string n = std::to_string(i);
      std::string pair = bf16Pair("%q", n, h.acc, h.type, i);
      words[i / 2] = "%qW" + n;
      emit(words[i / 2] + " = llvm.bitcast " + pair +
           " : vector<2xbf16> to i32");
      bf16PairValues(pair, "%qF" + n, own, i);
    }
    std::string ownMax0 = rowMax(own, 0, "%qOwnMax0");
    std::string ownMax1 = rowMax(own, 1, "%qOwnMax1");
    // The stash: word w of this thread at epilogue + 4 * (w * threads + t).
    emit("%qThread = arith.subi %tid, %c128 : i32");
    emit("%qThreadOff = arith.muli %qThread, %c4 : i32");
    emit("%qStashAt = arith.addi %qThreadOff, " + i32(layout.epilogue) +
         " : i32");
    emit("%qStash = llvm.getelementptr %smem[%qStashAt] : (!llvm.ptr<3>, "
         "i32) -> !llvm.ptr<3>, i8");
    auto stashWord = [&](int64_t w) {
      std::string ptr = "%qStashW" + std::to_string(w);
      emit(ptr + " = llvm.getelementptr %qStash[" + i32(4 * w * threads) +
           "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
      return ptr;
    };
    int64_t maxWord = values / 2;
    emit("%qFirst = arith.cmpi eq, %half, %c0 : i32");
    emit("scf.if %qFirst {");
    for (int64_t w = 0; w < values / 2; ++w)
      emit("llvm.store " + words[w] + ", " + stashWord(w) +
           " : i32, !llvm.ptr<3>");
    emit("llvm.store " + ownMax0 + ", " + stashWord(maxWord) +
         " : f32, !llvm.ptr<3>");
    emit("llvm.store " + ownMax1 + ", " + stashWord(maxWord + 1) +
         " : f32, !llvm.ptr<3>");
    emit("} else {");
    std::vector<std::string> stashed(values);
    for (int64_t w = 0; w < values / 2; ++w) {
      std::string n = std::to_string(2 * w);
      emit("%qSW" + n + " = llvm.load " + stashWord(w) +
           " : !llvm.ptr<3> -> i32");
      emit("%qSB" + n + " = llvm.bitcast %qSW" + n +
           " : i32 to vector<2xbf16>");
      bf16PairValues("%qSB" + n, "%qSV" + n, stashed, 2 * w);
    }
    emit("%qSMax0 = llvm.load " + stashWord(maxWord) +
         " : !llvm.ptr<3> -> f32");
    emit("%qSMax1 = llvm.load " + stashWord(maxWord + 1) +
         " : !llvm.ptr<3> -> f32");
    emit("%qQuadMask = arith.constant -1 : i32");
    emit("%qMinAmax = arith.constant 0x38D1B717 : f32"); // 1e-4f
    emit("%qE4M3Max = arith.constant 448.0 : f32");
    // Rows: this thread's two, inside the group or not stored.
    std::string rowLimit = "%groupRows";
    emit("%qI = arith.divui %N, %c2 : i32");
    emit("%qIW = arith.extui %qI : i32 to i64");
    emit("%qScaleBlocks = arith.divui %qI, %c128 : i32");
    emit("%qScaleBase = arith.muli %qScaleBlocks, %groupRow : i32");
    emit("%qBlock = arith.divui %swiNOff, %c128 : i32");
    emit("%qBlockAt = arith.muli %qBlock, " + aScaleStride() + " : i32");
    emit("%qScaleRowBase = arith.addi %qScaleBase, %qBlockAt : i32");
    emit("%qIsQuad0 = arith.cmpi eq, %laneQuad, %c0 : i32");
    // Columns of this thread's first pair in the first and second tiles.
    emit("%qQuadCol = arith.muli %laneQuad, %c2 : i32");
    emit("%qCol1 = arith.addi %swiNOff, %qQuadCol : i32");
    emit("%qCol0 = arith.subi %qCol1, %c64 : i32");
    emit("%qCol0W = arith.extui %qCol0 : i32 to i64");
    emit("%qCol1W = arith.extui %qCol1 : i32 to i64");
    for (int64_t r = 0; r < 2; ++r) {
      std::string rs = std::to_string(r);
      std::string amax = "%qAmax" + rs;
      emit(amax + "a = arith.maxnumf " + std::string(r ? ownMax1 : ownMax0) +
           ", %qSMax" + rs + " : f32");
      // The row's 128 columns lie in the 4 lanes of a quad.
      std::string reduced = amax + "a";
      for (int64_t d : {1, 2}) {
        std::string ds = std::to_string(d);
        emit(amax + "x" + ds + " = nvvm.shfl.sync bfly %qQuadMask, " + reduced +
             ", " + i32(d) + ", " + i32(31) + " : f32 -> f32");
        emit(amax + "m" + ds + " = arith.maxnumf " + reduced + ", " + amax +
             "x" + ds + " : f32");
        reduced = amax + "m" + ds;
      }
      emit("%qFloor" + rs + " = arith.maxnumf " + reduced +
           ", %qMinAmax : f32");
      emit("%qScale" + rs + " = arith.divf %qFloor" + rs + ", %qE4M3Max : f32");
      std::string row = "%row" + rs;
      emit("%qRowOk" + rs + " = arith.cmpi ult, " + row + ", " + rowLimit +
           " : i32");
      emit("scf.if %qRowOk" + rs + " {");
      emit("%qRowG" + rs + " = arith.addi %groupRow, " + row + " : i32");
      emit("%qRowGW" + rs + " = arith.extui %qRowG" + rs + " : i32 to i64");
      emit("%qRowAt" + rs + " = arith.muli %qRowGW" + rs + ", %qIW : i64");
      for (int64_t t = 0; t < 2; ++t) {
        const std::vector<std::string> &vals = t ? own : stashed;
        std::string ts = rs + "_" + std::to_string(t);
        emit("%qAt" + ts + " = arith.addi %qRowAt" + rs + ", %qCol" +
             std::to_string(t) + "W : i64");
        emit("%qPtr" + ts + " = llvm.getelementptr %out[%qAt" + ts +
             "] : (!llvm.ptr<1>, i64) -> !llvm.ptr<1>, i8");
        for (int64_t i = 2 * r; i < values; i += 4) {
          std::string n = ts + "_" + std::to_string(i);
          // Pair (i, i + 1) is columns c, c + 1: c's code in the low byte.
          for (int64_t e = 0; e < 2; ++e)
            emit("%qQ" + n + "_" + std::to_string(e) + " = arith.divf " +
                 vals[i + e] + ", %qScale" + rs + " : f32");
          emit("%qC" + n + " = nvvm.convert.f32x2.to.f8x2 %qQ" + n + "_1, %qQ" +
               n +
               "_0 {rnd = #nvvm.fp_rnd_mode<rn>, sat = "
               "#nvvm.sat_mode<satfinite>} : i16 (f8E4M3FN)");
          emit("%qP" + n + " = llvm.getelementptr %qPtr" + ts + "[" +
               i32(8 * (i / 4)) +
               "] : (!llvm.ptr<1>, i32) -> !llvm.ptr<1>, i8");
          emit("llvm.store %qC" + n + ", %qP" + n +
               " {alignment = 2 : i64} : i16, !llvm.ptr<1>");
        }
      }
      emit("scf.if %qIsQuad0 {");
      emit("%qScaleAt" + rs + " = arith.addi %qScaleRowBase, " + row +
           " : i32");
      emit("%qScalePtr" + rs + " = llvm.getelementptr %outScales[%qScaleAt" +
           rs + "] : (!llvm.ptr<1>, i32) -> !llvm.ptr<1>, f32");
      emit("llvm.store %qScale" + rs + ", %qScalePtr" + rs +
           " : f32, !llvm.ptr<1>");
      emit("}");
      emit("}");
    }
    emit("}");
  }

  /// The two f32 values of the BF16 pair `pair` (vector<2xbf16>), named
  /// `prefix`_0 and _1, into `into[at]` and `into[at + 1]`.
  void bf16PairValues(const std::string &pair, const std::string &prefix,
                      std::vector<std::string> &into, int64_t at) {
    emit(prefix + "f = arith.extf " + pair +
         " : vector<2xbf16> to vector<2xf32>");
    for (int64_t e = 0; e < 2; ++e) {
      std::string x = prefix + "_" + std::to_string(e);
      emit(x + " = llvm.extractelement " + prefix + "f[" + i32(e) +
           " : i32] : vector<2xf32>");
      into[at + e] = x;
    }
  }

  /// max |v| over the values of fragment row `row` (0: registers i with
  /// i % 4 < 2, 1: the others) of `values`, named `name`.
  std::string rowMax(const std::vector<std::string> &values, int64_t row,
                     const std::string &name) {
    std::string running;
    for (size_t i = 0; i < values.size(); ++i) {
      if (int64_t(i % 4 >= 2) != row)
        continue;
      std::string abs = name + "Abs" + std::to_string(i);
      emit(abs + " = llvm.intr.fabs(" + values[i] + ") : (f32) -> f32");
      if (running.empty()) {
        running = abs;
        continue;
      }
      std::string next = name + "M" + std::to_string(i);
      emit(next + " = arith.maxnumf " + running + ", " + abs + " : f32");
      running = next;
    }
    return running;
  }

  /// Converts the accumulator `acc` to BF16 and stores the elements inside
  /// M x N. Register i of the m64nN accumulator is at row r (+8 for
  /// i % 4 >= 2) and column 8 * (i / 4) + 2 * (lane % 4) + i % 2, so a
  /// warp's direct stores would each write 4 bytes in 8 rows. Instead each
  /// warp stages its 16 rows in its own slice of shared memory, 64 columns
  /// at a time, and reads them back as whole 16-byte chunks: 8 lanes store
  /// 128 contiguous bytes of a row. Staged rows are 16 bytes longer than
  /// their data, so the 4-byte writes (8 rows, same columns) and the 16-byte
  /// reads (8 chunks of a row) hit distinct banks, and every address is one
  /// per-thread base plus a constant. Only the warp touches its slice, so
  /// bar.warp.sync orders it. Chunks that stick out of M x N, or any chunk
  /// when rows are not 16-byte aligned (N % 8 != 0 or an unaligned output),
  /// are stored element by element.
  void writeStores(const Stores &stores) {
    const std::string &acc = stores.acc;
    int64_t bn = stores.cols;
    int64_t halfCols = std::min<int64_t>(bn, kEpilogueCols);
    int64_t chunks = halfCols / 8;
    int64_t stride = kiln::GemmConfigAttr::getEpilogueRowBytes(bn);
    int64_t rowsPerRead = std::min<int64_t>(16, 32 / chunks);
    int64_t reads = 16 / rowsPerRead;
    if (tmaStore) {
      // Inside the warpgroup's own TMA staging (writeGroupedTmaStores).
      emit("%epiOwn = arith.muli %consumer, " +
           i32(tmaStagingBytes(config.getBlockN())) + " : i32");
      emit("%epiWarpIn = arith.muli %warp, " + i32(16 * stride) + " : i32");
      emit("%epiWarpOff = arith.addi %epiOwn, %epiWarpIn : i32");
    } else {
      emit("%epiWarp0 = arith.divui %tid, %c32 : i32");
      emit("%epiWarp = arith.subi %epiWarp0, %c4 : i32");
      emit("%epiWarpOff = arith.muli %epiWarp, " + i32(16 * stride) + " : i32");
    }
    emit("%epiBase = arith.addi %epiWarpOff, " + i32(layout.epilogue) +
         " : i32");
    // Write side: this thread's row and column pair in the first chunk.
    emit("%wrRowOff = arith.muli %laneRow, " + i32(stride) + " : i32");
    emit("%wrQuadOff = arith.muli %laneQuad, %c4 : i32");
    emit("%wrOff = arith.addi %wrRowOff, %wrQuadOff : i32");
    emit("%wrAt = arith.addi %epiBase, %wrOff : i32");
    emit("%wrBase = llvm.getelementptr %smem[%wrAt] : (!llvm.ptr<3>, i32) "
         "-> !llvm.ptr<3>, i8");
    // Read side: lane -> (row in the warp's 16, chunk).
    emit("%rdChunk = arith.remui %lane, " + i32(chunks) + " : i32");
    emit("%rdRow = arith.divui %lane, " + i32(chunks) + " : i32");
    emit("%rdLaneOk = arith.cmpi ult, %rdRow, " + i32(rowsPerRead) + " : i32");
    emit("%rdRowOff = arith.muli %rdRow, " + i32(stride) + " : i32");
    emit("%rdChunkOff = arith.muli %rdChunk, %c16 : i32");
    emit("%rdOff = arith.addi %rdRowOff, %rdChunkOff : i32");
    emit("%rdAt = arith.addi %epiBase, %rdOff : i32");
    emit("%rdBase = llvm.getelementptr %smem[%rdAt] : (!llvm.ptr<3>, i32) "
         "-> !llvm.ptr<3>, i8");
    emit("%rdChunkCol = arith.muli %rdChunk, %c8 : i32");
    emit("%outAddr = llvm.ptrtoint %out : !llvm.ptr<1> to i64");
    emit("%c15i64 = arith.constant 15 : i64");
    emit("%c0i64 = arith.constant 0 : i64");
    emit("%outMis = arith.andi %outAddr, %c15i64 : i64");
    emit("%outAligned = arith.cmpi eq, %outMis, %c0i64 : i64");
    emit("%nMis = arith.andi " + stores.n + ", " + i32(7) + " : i32");
    emit("%nAligned = arith.cmpi eq, %nMis, %c0 : i32");
    emit("%vecOk = arith.andi %outAligned, %nAligned : i1");
    emit("%epiFullMask = arith.constant -1 : i32");
    // The first row this lane reads, in the tile, and its place in C.
    emit("%warpRowInTile = arith.addi %consumerRow, %warpRow : i32");
    emit("%rdRowInTile = arith.addi %warpRowInTile, %rdRow : i32");
    emit("%rdRowLocal = arith.addi %mOff, %rdRowInTile : i32");
    std::string rowLimit = grouped ? "%groupRows" : "%M";
    std::string rdRowGlobal = "%rdRowLocal";
    if (grouped) {
      // Only the group's own rows: a tile straddling into the next group's
      // rows (contiguous) or past the count (masked) stores none of them.
      emit("%rdRowGlobal = arith.addi %groupRow, %rdRowLocal : i32");
      rdRowGlobal = "%rdRowGlobal";
    }
    emit("%rdRowW = arith.extui " + rdRowGlobal + " : i32 to i64");
    emit("%rdRowBase = arith.muli %rdRowW, " + stores.n64 + " : i64");
    emit("%rdColBase = arith.addi " + stores.nOff + ", %rdChunkCol : i32");
    emit("%rdColW = arith.extui %rdColBase : i32 to i64");
    emit("%rdIdx = arith.addi %rdRowBase, %rdColW : i64");
    emit("%rdStep = arith.constant " + std::to_string(rowsPerRead) + " : i64");
    emit("%rdStride = arith.muli " + stores.n64 + ", %rdStep : i64");
    for (int64_t h = 0; h < bn / halfCols; ++h) {
      std::string hs = std::to_string(h);
      for (int64_t c = 0; c < chunks; ++c) {
        for (int64_t upper = 0; upper < 2; ++upper) {
          std::string n =
              hs + "_" + std::to_string(c) + "_" + std::to_string(upper);
          int64_t reg = 4 * (h * chunks + c) + 2 * upper;
          emit("%wrPtr" + n + " = llvm.getelementptr %wrBase[" +
               i32(8 * upper * stride + 16 * c) +
               "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
          storeBf16Pair("%wr", n, acc, stores.type, reg, "%wrPtr" + n);
        }
      }
      emit("nvvm.bar.warp.sync %epiFullMask : i32");
      for (int64_t t = 0; t < reads; ++t) {
        std::string n = hs + "_" + std::to_string(t);
        emit("%rdPtr" + n + " = llvm.getelementptr %rdBase[" +
             i32(t * rowsPerRead * stride) +
             "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
        emit("%row" + n + " = arith.addi %rdRowLocal, " + i32(t * rowsPerRead) +
             " : i32");
        emit("%rowOk" + n + " = arith.cmpi ult, %row" + n + ", " + rowLimit +
             " : i32");
        emit("%live" + n + " = arith.andi %rowOk" + n + ", %rdLaneOk : i1");
        emit("%col" + n + " = arith.addi %rdColBase, " + i32(h * halfCols) +
             " : i32");
        emit("%colEnd" + n + " = arith.addi %col" + n + ", %c8 : i32");
        emit("%colsIn" + n + " = arith.cmpi ule, %colEnd" + n + ", " +
             stores.n + " : i32");
        emit("%whole" + n + " = arith.andi %colsIn" + n + ", %vecOk : i1");
        emit("%tStep" + n + " = arith.constant " + std::to_string(t) +
             " : i64");
        emit("%tOff" + n + " = arith.muli %rdStride, %tStep" + n + " : i64");
        emit("%idx" + n + " = arith.addi %rdIdx, %tOff" + n + " : i64");
        emit("%dst" + n + " = llvm.getelementptr %out[%idx" + n +
             "] : (!llvm.ptr<1>, i64) -> !llvm.ptr<1>, bf16");
        emit("%dstH" + n + " = llvm.getelementptr %dst" + n + "[" +
             i32(h * halfCols) +
             "] : (!llvm.ptr<1>, i32) -> !llvm.ptr<1>, bf16");
        emit("scf.if %live" + n + " {");
        emit("%chunk" + n + " = llvm.load %rdPtr" + n +
             " {alignment = 16 : i64} : !llvm.ptr<3> -> vector<8xbf16>");
        emit("scf.if %whole" + n + " {");
        emit("llvm.store %chunk" + n + ", %dstH" + n +
             " {alignment = 16 : i64} : vector<8xbf16>, !llvm.ptr<1>");
        emit("} else {");
        for (int64_t e = 0; e < 8; ++e) {
          std::string es = n + "_" + std::to_string(e);
          emit("%colE" + es + " = arith.addi %col" + n + ", " + i32(e) +
               " : i32");
          emit("%inE" + es + " = arith.cmpi ult, %colE" + es + ", " + stores.n +
               " : i32");
          emit("scf.if %inE" + es + " {");
          emit("%elem" + es + " = llvm.extractelement %chunk" + n + "[" +
               i32(e) + " : i32] : vector<8xbf16>");
          emit("%elemPtr" + es + " = llvm.getelementptr %dstH" + n + "[" +
               i32(e) + "] : (!llvm.ptr<1>, i32) -> !llvm.ptr<1>, bf16");
          emit("llvm.store %elem" + es + ", %elemPtr" + es +
               " : bf16, !llvm.ptr<1>");
          emit("}");
        }
        emit("}");
        emit("}");
      }
      // The next half (or tile) overwrites the slice.
      emit("nvvm.bar.warp.sync %epiFullMask : i32");
    }
  }

  /// Converts registers `reg` and `reg + 1` of the accumulator `acc` (of
  /// `type`) to a BF16 pair and stores it at the shared-memory pointer
  /// `ptr`; SSA names start with `prefix` and end in `n`.
  void storeBf16Pair(const std::string &prefix, const std::string &n,
                     const std::string &acc, const std::string &type,
                     int64_t reg, const std::string &ptr) {
    std::string pair = bf16Pair(prefix, n, acc, type, reg);
    emit("llvm.store " + pair + ", " + ptr +
         " {alignment = 4 : i64} : vector<2xbf16>, !llvm.ptr<3>");
  }

  /// Registers `reg` and `reg + 1` of the accumulator `acc` (of `type`) as a
  /// BF16 pair (vector<2xbf16>, round to nearest), named `prefix`H`n`.
  std::string bf16Pair(const std::string &prefix, const std::string &n,
                       const std::string &acc, const std::string &type,
                       int64_t reg) {
    std::string vec = prefix + "U" + n;
    emit(vec + " = llvm.mlir.undef : vector<2xf32>");
    for (int64_t e = 0; e < 2; ++e) {
      std::string x = prefix + "V" + n + "_" + std::to_string(e);
      emit(x + "s = llvm.extractvalue " + acc + "[" + std::to_string(reg + e) +
           "] : " + type);
      emit(x + " = llvm.insertelement " + x + "s, " + vec + "[" + i32(e) +
           " : i32] : vector<2xf32>");
      vec = x;
    }
    emit(prefix + "H" + n + " = arith.truncf " + vec +
         " : vector<2xf32> to vector<2xbf16>");
    return prefix + "H" + n;
  }

  /// The combined scales of K block `kb` for this thread's two rows:
  /// scaleA[kb][row] * scaleB[n block][kb]; with the SwiGLU epilogue then
  /// the same with the up block's weight scale (the tile's right half).
  /// SSA names end in `tag`.
  std::vector<std::string> loadScales(const std::string &tag,
                                      const std::string &kb) {
    if (stagedScales)
      return stagedScaleOffsets(tag, kb);
    emit("%kbRows" + tag + " = arith.muli " + kb + ", " + aScaleStride() +
         " : i32");
    emit("%ia0" + tag + " = arith.addi %kbRows" + tag + ", %row0c : i32");
    emit("%ia1" + tag + " = arith.addi %kbRows" + tag + ", %row1c : i32");
    emit("%ib" + tag + " = arith.addi %bScaleRow, " + kb + " : i32");
    for (const char *which : {"0", "1"}) {
      std::string w = which + tag;
      emit("%pa" + w + " = llvm.getelementptr %scaleA[%ia" + w +
           "] : (!llvm.ptr<1>, i32) -> !llvm.ptr<1>, f32");
      emit("%sa" + w + " = llvm.load %pa" + w + " : !llvm.ptr<1> -> f32");
    }
    // The weight scale at %ib<half><tag>, times both row scales.
    std::vector<std::string> scales;
    auto combine = [&](const std::string &half) {
      std::string t = half + tag;
      emit("%pb" + t + " = llvm.getelementptr %scaleB[%ib" + t +
           "] : (!llvm.ptr<1>, i32) -> !llvm.ptr<1>, f32");
      emit("%sb" + t + " = llvm.load %pb" + t + " : !llvm.ptr<1> -> f32");
      for (const char *which : {"0", "1"}) {
        std::string name = std::string("%scale") + which + t;
        emit(name + " = arith.mulf %sa" + which + tag + ", %sb" + t + " : f32");
        scales.push_back(name);
      }
    };
    for (const std::string &suffix : weightScaleSuffixes()) {
      if (!suffix.empty())
        emit("%ib" + suffix + tag + " = arith.addi %bScaleRow" + suffix + ", " +
             kb + " : i32");
      combine(suffix);
    }
    return scales;
  }

  /// Staged scales: where K block `kb`'s scales lie in its stage, as byte
  /// offsets past their boxes' aligned-down starts (writeStagedScaleLoads):
  /// the activation scales' first, then each weight scale's. Cheap integer
  /// work, done one step ahead like the loads it replaces.
  std::vector<std::string> stagedScaleOffsets(const std::string &tag,
                                              const std::string &kb) {
    std::vector<std::string> offsets;
    auto remainderBytes = [&](const std::string &name,
                              const std::string &element) {
      emit(name + "R = arith.andi " + element + ", " +
           i32(kiln::GemmConfigAttr::kScaleAlignElements - 1) + " : i32");
      emit(name + " = arith.muli " + name + "R, %c4 : i32");
      offsets.push_back(name);
    };
    emit("%kbRows" + tag + " = arith.muli " + kb + ", " + aScaleStride() +
         " : i32");
    emit("%scFirst" + tag + " = arith.addi %kbRows" + tag +
         ", %scTileRow : i32");
    remainderBytes("%scAOff" + tag, "%scFirst" + tag);
    std::vector<std::string> suffixes = weightScaleSuffixes();
    for (size_t b = 0; b < suffixes.size(); ++b) {
      std::string bs = std::to_string(b);
      emit("%scW" + bs + tag + " = arith.addi %bScaleRow" + suffixes[b] + ", " +
           kb + " : i32");
      remainderBytes("%scWOff" + bs + tag, "%scW" + bs + tag);
    }
    return offsets;
  }

  /// A K block's combined scales with staged scales, in loadScales' order
  /// (rows r and r + 8 times each weight scale), from the block's stage at
  /// `offsets` (stagedScaleOffsets): read before the block's wgmma wait (so
  /// that their latency hides under it) and before the warp releases the
  /// stage.
  std::vector<std::string>
  readStagedScales(const std::string &tag,
                   const std::vector<std::string> &offsets) {
    int64_t bm = config.getBlockM();
    std::vector<std::string> weights;
    emit("%scWSlot0" + tag + " = arith.muli %s" + tag + ", " +
         i32(kiln::GemmConfigAttr::kStageWeightScaleBytes) + " : i32");
    for (size_t b = 0; b < weightScaleSuffixes().size(); ++b) {
      std::string name = "%sb" + std::to_string(b) + tag;
      // Chunk 1 of a 192-wide tile: the slot picked per tile.
      std::string slot = twoWeightScaleBoxes() && b == 1
                             ? "%midScaleSlot"
                             : i32(kiln::GemmConfigAttr::kWeightScaleSlotBytes *
                                   weightScaleSlot(b));
      emit(name + "Slot0 = arith.addi %scWSlot0" + tag + ", " +
           i32(layout.stageWeightScales) + " : i32");
      emit(name + "Slot = arith.addi " + name + "Slot0, " + slot + " : i32");
      emit(name + "At = arith.addi " + name + "Slot, " + offsets[1 + b] +
           " : i32");
      emit(name + "P = llvm.getelementptr %smem[" + name +
           "At] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
      emit(name + " = llvm.load " + name + "P : !llvm.ptr<3> -> f32");
      weights.push_back(name);
    }
    emit("%scSlot0" + tag + " = arith.muli %s" + tag + ", " +
         i32(kiln::GemmConfigAttr::getStageScaleBytes(bm)) + " : i32");
    emit("%scSlot1" + tag + " = arith.addi %scSlot0" + tag + ", " +
         i32(layout.stageScales) + " : i32");
    emit("%scSlot" + tag + " = arith.addi %scSlot1" + tag + ", " + offsets[0] +
         " : i32");
    // Rows r and r + 8: 32 bytes apart (an immediate offset).
    emit("%sa0" + tag + "At = arith.addi %scSlot" + tag + ", %scaleOff : i32");
    emit("%sa0" + tag + "P = llvm.getelementptr %smem[%sa0" + tag +
         "At] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
    emit("%sa1" + tag + "P = llvm.getelementptr %sa0" + tag +
         "P[32] : (!llvm.ptr<3>) -> !llvm.ptr<3>, i8");
    for (const char *which : {"0", "1"})
      emit(std::string("%sa") + which + tag + " = llvm.load %sa" + which + tag +
           "P : !llvm.ptr<3> -> f32");
    std::vector<std::string> scales;
    for (size_t b = 0; b < weights.size(); ++b) {
      for (const char *which : {"0", "1"}) {
        std::string name =
            std::string("%scale") + which + "_" + std::to_string(b) + tag;
        emit(name + " = arith.mulf %sa" + which + tag + ", " + weights[b] +
             " : f32");
        scales.push_back(name);
      }
    }
    return scales;
  }

  /// For the K block at ring position `j`: waits for the stage, issues four
  /// k32 wgmmas into a fresh partial accumulator and commits them as one
  /// group (a 256-wide tile: its left half only, issueHalf issues the
  /// other). SSA names end in `tag`; returns the partial.
  std::string issueBlock(const std::string &tag, const std::string &j) {
    int64_t stages = config.getStages();
    emit("%s" + tag + " = arith.remui " + j + ", " + i32(stages) + " : i32");
    emit("%round" + tag + " = arith.divui " + j + ", " + i32(stages) +
         " : i32");
    emit("%phase" + tag + " = arith.andi %round" + tag + ", %c1 : i32");
    emit("%full" + tag + " = " + barrier(layout.fullBar, "%s" + tag));
    emit("nvvm.mbarrier.try_wait.parity %full" + tag + ", %phase" + tag +
         ", %ticks : !llvm.ptr<3>, i32, i32");
    emit("%sW" + tag + " = arith.extui %s" + tag + " : i32 to i64");
    emit("%descAOff" + tag + " = arith.muli %sW" + tag + ", %descAStage : i64");
    emit("%descA" + tag + " = arith.addi %descA0, %descAOff" + tag + " : i64");
    emit("%descBOff" + tag + " = arith.muli %sW" + tag + ", %descBStage : i64");
    emit("%descB" + tag + " = arith.addi %descB0, %descBOff" + tag + " : i64");
    return issueWgmmas(tag, "%descA" + tag, "%descB" + tag);
  }

  /// The `half`-th 128-column half of a 256-wide tile's K block, whose
  /// stage issueBlock(`tag`) waited for: B's rows from 128 * half on, one
  /// 1024-byte swizzle atom per 8 rows, i.e. 1024 * half in the
  /// descriptor's 16-byte units.
  std::string issueHalf(const std::string &tag, int64_t half,
                        const std::string &previous) {
    std::string hTag = tag + "H" + std::to_string(half);
    emit("%descBHalf" + hTag + " = arith.constant " +
         std::to_string(half * 128 * kSliceBytes / 16) + " : i64");
    emit("%descB" + hTag + " = arith.addi %descB" + tag + ", %descBHalf" +
         hTag + " : i64");
    return issueWgmmas(hTag, "%descA" + tag, "%descB" + hTag, previous);
  }

  /// Four k32 wgmmas (one 128-wide K slice) from the stage's descriptors
  /// `descA` and `descB` into a fresh partial, committed as one group.
  std::string issueWgmmas(const std::string &tag, const std::string &descA,
                          const std::string &descB,
                          const std::string &seed = "") {
    int64_t n = config.getBlockN() / halves;
    emit("nvvm.wgmma.fence.aligned");
    // The first wgmma ignores its accumulator input (scale-d 0): give it an
    // undefined one rather than a live value the compiler would copy.
    std::string partial = !seed.empty() ? seed
                          : halves > 1  ? "%undefPartial"
                                        : "%undefAcc";
    for (int k = 0; k < 4; ++k) {
      std::string a = descA, b = descB;
      if (k) {
        // Each k32 step starts 32 bytes further into the swizzled rows:
        // +2 in the descriptor's 16-byte address units.
        std::string step = "%kStep" + std::to_string(k) + tag;
        emit(step + " = arith.constant " + std::to_string(2 * k) + " : i64");
        a = "%descA" + tag + "_" + std::to_string(k);
        b = "%descB" + tag + "_" + std::to_string(k);
        emit(a + " = arith.addi " + descA + ", " + step + " : i64");
        emit(b + " = arith.addi " + descB + ", " + step + " : i64");
      }
      std::string result = "%partial" + std::to_string(k) + tag;
      emit(result + " = nvvm.wgmma.mma_async " + a + ", " + b + ", " + partial +
           ", #nvvm.shape<m = 64, n = " + std::to_string(n) +
           ", k = 32>, D [<f32>, #nvvm.wgmma_scale_out<" +
           (k ? "one" : "zero") +
           ">], A [<e4m3>, #nvvm.wgmma_scale_in<one>, <row>], B [<e4m3>, "
           "#nvvm.wgmma_scale_in<one>, <col>] : " +
           partialType + " -> " + partialType);
      partial = result;
    }
    emit("nvvm.wgmma.commit.group.sync.aligned");
    return partial;
  }

  /// Waits until at most `pending` wgmma groups are in flight (the block's
  /// own is then done), releases its stage, and promotes its partial into
  /// `accIn`: acc += partial * scaleA[row] * scaleB, with `scales` the
  /// block's combined scales of rows r and r + 8 (loadScales; SwiGLU: then
  /// those of the up half, for registers from BLOCK_N / 4 on). Every partial
  /// register passes through an empty volatile asm after the wait, so the
  /// promotion cannot be scheduled before the MMAs complete. A 256-wide
  /// tile's block finishes in two calls, `half` 0 and 1 (issueHalf): the
  /// first reads the staged scales, the second releases the stage, and half
  /// h promotes into accumulator registers from 64 h on with the weight
  /// scale of its 128 columns. Returns the accumulator.
  std::string finishBlock(const std::string &tag, const std::string &partial,
                          const std::string &accIn,
                          const std::vector<std::string> &scales, int pending,
                          int64_t half = 0) {
    int64_t partialRegs = config.getBlockN() / 2 / halves;
    std::string nameTag = half ? tag + "H" + std::to_string(half) : tag;
    if (half == 0)
      halfScales = stagedScales ? readStagedScales(tag, scales) : scales;
    const std::vector<std::string> &combined = halfScales;
    emit("nvvm.wgmma.wait.group.sync.aligned " + std::to_string(pending));
    if (half + 1 < halves) {
      // The stage's other half is still to be read.
      return promote(nameTag, partial, accIn, combined, partialRegs, half);
    }
    if (stagedScales) {
      // Every warp releases the stage for itself once its lanes have read
      // the scales: the warp barrier orders their loads before lane 0's
      // arrive (a warpgroup leader's arrive would not order the others').
      emit("nvvm.bar.warp.sync %wgAllLanes : i32");
      emit("scf.if %isWarpLeader {");
    } else {
      emit("scf.if %isLeader {");
    }
    emit("%empty = " + barrier(layout.emptyBar, "%s" + tag));
    emit("%token = nvvm.mbarrier.arrive %empty : !llvm.ptr<3> -> i64");
    if (clusterM > 1) {
      // The peer's producer multicasts into this block's ring too. The
      // stage's only readers were this warpgroup's wgmmas, complete after
      // the wait, so the arrive orders nothing else: .release.cta, not a
      // cluster-scope release, which would first drain the warp's
      // outstanding memory operations (2x slower kernels, measured).
      emit("%emptyPeer = nvvm.mapa %empty, %peer : !llvm.ptr<3> -> "
           "!llvm.ptr<7>");
      emit("nvvm.mbarrier.arrive %emptyPeer : !llvm.ptr<7>");
    }
    emit("}");
    return promote(nameTag, partial, accIn, combined, partialRegs, half);
  }

  /// accIn + partial * scale per register, the partial's `partialRegs`
  /// registers going to accumulator registers from `half` * partialRegs on.
  std::string promote(const std::string &tag, const std::string &partial,
                      const std::string &accIn,
                      const std::vector<std::string> &combined,
                      int64_t partialRegs, int64_t half) {
    std::string acc = accIn;
    for (int64_t i = 0; i < partialRegs; ++i) {
      std::string n = std::to_string(i) + tag;
      std::string idx = std::to_string(i);
      std::string accIdx = std::to_string(half * partialRegs + i);
      // Partial register i holds row (i % 4 < 2 ? r : r + 8) and, for
      // i >= partialRegs / 2, column 64 + ... (the up half of a SwiGLU tile).
      size_t which = (i % 4) < 2 ? 0 : 1;
      if (swiglu && i >= partialRegs / 2)
        which += 2;
      if (halves > 1)
        which += 2 * half; // the half's own weight scale
      else if (partialRegs > 64)
        which += 2 * (i / 32); // 64-column chunk i / 32: 32 registers each
      const std::string &scale = combined[which];
      emit("%raw" + n + " = llvm.extractvalue " + partial + "[" + idx +
           "] : " + partialType);
      emit("%p" + n +
           " = llvm.inline_asm has_side_effects \"\", \"=f,0\" %raw" + n +
           " : (f32) -> f32");
      emit("%a" + n + " = llvm.extractvalue " + accIn + "[" + accIdx +
           "] : " + structType);
      emit("%f" + n + " = llvm.intr.fma(%p" + n + ", " + scale + ", %a" + n +
           ") : (f32, f32, f32) -> f32");
      std::string next = "%promoted" + n;
      emit(next + " = llvm.insertvalue %f" + n + ", " + acc + "[" + accIdx +
           "] : " + structType);
      acc = next;
    }
    return acc;
  }

  /// %mOff, %nOff: the tile's first row and column. Plain kernels walk the
  /// tiles in bands of kRasterRows tile rows, M fastest inside a band, so
  /// that the blocks of one wave share rows of A and of B in L2.
  ///
  /// Grouped kernels number the tiles of all groups in group order (each
  /// group's tiles as in a plain kernel) and find a tile's group by binary
  /// search in the tile prefix sums: %search#0, its first row %groupRow and
  /// row count %groupRows; %mOff is then relative to the group, and %aRow,
  /// %bRow are the TMA rows of A and of the stacked B ([G * N, K]).
  void writeTileOrigin(int64_t bm, int64_t bn, bool wholeWarp = false) {
    std::string localTile = "%tile";
    if (grouped && wholeWarp) {
      // A consumer warp's 32 lanes search together: lane i tests group
      // start 32i, then the 32 starts from the last one at or below the
      // tile; the group is the last start at or below it (prefix[G] is the
      // total, above every tile; empty groups are never the last). Two
      // rounds of one shared-memory load and a ballot, instead of the
      // binary search's chain of log2 G loads at each tile's start.
      groupIndex = "%wsGroup";
      std::string base = "%c0";
      for (int round = 0; round < 2; ++round) {
        std::string r = std::to_string(round);
        if (round == 0)
          emit("%ws" + r + "x = arith.muli %lane, %c32 : i32");
        else
          emit("%ws" + r + "x = arith.addi " + base + ", %lane : i32");
        emit("%ws" + r + "c = arith.minui %ws" + r + "x, %numGroups : i32");
        emit("%ws" + r + "v = llvm.load " +
             table(layout.tilePrefix, "%ws" + r + "c") +
             " : !llvm.ptr<3> -> i32");
        emit("%ws" + r + "p = arith.cmpi ule, %ws" + r + "v, %tile : i32");
        emit("%ws" + r + "b = nvvm.vote.sync ballot %wgAllLanes, %ws" + r +
             "p -> i32");
        emit("%ws" + r + "n = llvm.intr.ctpop(%ws" + r + "b) : (i32) -> i32");
        emit("%ws" + r + "m = arith.subi %ws" + r + "n, %c1 : i32");
        if (round == 0) {
          emit("%wsBase = arith.muli %ws0m, %c32 : i32");
          base = "%wsBase";
        } else {
          emit("%wsGroup = arith.addi %wsBase, %ws1m : i32");
        }
      }
    } else if (grouped) {
      groupIndex = "%search#0";
      // prefix[lo] <= tile < prefix[hi] holds throughout; floor(log2 G) + 1
      // halvings (%searchSteps, at most 11 for kMaxGroups = 1024) take
      // hi - lo from G down to 1: 3 for 4 groups rather than a fixed 10,
      // on the path of every tile's first loads and wgmmas.
      emit("%search:2 = scf.for %searchStep = %c0 to %searchSteps step %c1 "
           "iter_args(%lo = %c0, %hi = %numGroups) -> (i32, i32) : i32 {");
      emit("%midSum = arith.addi %lo, %hi : i32");
      emit("%mid = arith.shrui %midSum, %c1 : i32");
      emit("%midTiles = llvm.load " + table(layout.tilePrefix, "%mid") +
           " : !llvm.ptr<3> -> i32");
      emit("%below = arith.cmpi ule, %midTiles, %tile : i32");
      emit("%lo1 = arith.select %below, %mid, %lo : i32");
      emit("%hi1 = arith.select %below, %hi, %mid : i32");
      emit("scf.yield %lo1, %hi1 : i32, i32");
      emit("}");
    }
    if (grouped) {
      emit("%groupTiles = llvm.load " + table(layout.tilePrefix, groupIndex) +
           " : !llvm.ptr<3> -> i32");
      emit("%groupRow = llvm.load " + table(layout.groupRow, groupIndex) +
           " : !llvm.ptr<3> -> i32");
      emit("%groupRows = llvm.load " + table(layout.groupRows, groupIndex) +
           " : !llvm.ptr<3> -> i32");
      emit("%localTile = arith.subi %tile, %groupTiles : i32");
      localTile = "%localTile";
    }
    // Bands of tile rows, M fastest inside a band: the blocks
    // running at the same time cover about 8 x 16 tiles instead of 2 x 56
    // (7168 x 16384 at M = 4096), so each K block of A and B is fetched
    // from DRAM for fewer of them; at M <= 128 (one tile row) the order is
    // the N order as before. Grouped kernels band each group's tiles.
    // Plain kernels with 192- and 256-wide tiles take bands of
    // kWideRasterRows. A cluster's units are rows of clusterM tiles, so its
    // bands hold that many tile rows / clusterM unit rows.
    int64_t rasterRows =
        !grouped && config.getBlockN() >= 192 ? kWideRasterRows : kRasterRows;
    int64_t bandUnits = rasterRows / clusterM;
    std::string rows = clusterM > 1 ? "%mUnits" : "%mTiles";
    std::string row = clusterM > 1 ? "%mUnit" : "%mTile";
    if (grouped) {
      emitCeilDiv("%groupMTiles", "%groupRows", bm);
      rows = "%groupMTiles";
    }
    // The band's columns: tiles, or for the quantized SwiGLU pairs of
    // tiles (2p, 2p + 1), the two halves of one scale block (every group
    // has an even number of tiles, so a pair never straddles two).
    std::string index = localTile, columns = "%nTiles";
    if (quantize) {
      emit("%localPair = arith.shrui " + localTile + ", %c1 : i32");
      emit("%nPairs = arith.shrui %nTiles, %c1 : i32");
      index = "%localPair";
      columns = "%nPairs";
    }
    emit("%bandTiles = arith.muli " + columns + ", " + i32(bandUnits) +
         " : i32");
    emit("%band = arith.divui " + index + ", %bandTiles : i32");
    emit("%inBand = arith.remui " + index + ", %bandTiles : i32");
    emit("%bandFirst = arith.muli %band, " + i32(bandUnits) + " : i32");
    emit("%bandLeft = arith.subi " + rows + ", %bandFirst : i32");
    emit("%bandRows = arith.minui %bandLeft, " + i32(bandUnits) + " : i32");
    emit("%mInBand = arith.remui %inBand, %bandRows : i32");
    emit(row + " = arith.addi %bandFirst, %mInBand : i32");
    if (quantize) {
      emit("%nPair = arith.divui %inBand, %bandRows : i32");
      emit("%nPairTile = arith.shli %nPair, %c1 : i32");
      emit("%localHalf = arith.andi " + localTile + ", %c1 : i32");
      emit("%nTile = arith.addi %nPairTile, %localHalf : i32");
    } else {
      emit("%nTile = arith.divui %inBand, %bandRows : i32");
    }
    if (clusterM > 1) {
      emit("%mUnitTile = arith.muli %mUnit, " + i32(clusterM) + " : i32");
      emit("%mTile = arith.addi %mUnitTile, %cta : i32");
    }
    emit("%mOff = arith.muli %mTile, " + i32(bm) + " : i32");
    emit("%nOff = arith.muli %nTile, " + i32(bn) + " : i32");
    if (grouped) {
      emit("%aRow = arith.addi %groupRow, %mOff : i32");
      emit("%groupN = arith.muli " + groupIndex + ", %N : i32");
      emit("%bRow = arith.addi %groupN, %nOff : i32");
    }
  }

  /// Row stride of the activation scales: M, or a contiguous group's count.
  std::string aScaleStride() const {
    return grouped == kiln::GroupLayout::Contiguous ? "%groupRows" : "%M";
  }

  /// Staged scales: -4, which aligns a scale's element index down to the
  /// 16-byte boundary where its TMA box starts.
  std::string alignDownMask() {
    return i32(-kiln::GemmConfigAttr::kScaleAlignElements);
  }

  /// The type of the per-block values loadScales returns (and the main
  /// loops carry ahead): combined FP32 scales, or with staged scales the
  /// i32 byte offsets of the block's scales in its stage.
  const char *scaleType() const { return stagedScales ? "i32" : "f32"; }

  /// Grouped kernels: every block builds the group tables in shared memory
  /// from the offsets or counts in global memory (no host involvement, so a
  /// launch's group sizes may be written by an earlier kernel on the same
  /// stream): all threads read one group each, clamp it into the rows of A
  /// and count its tiles; warp 0 turns the counts into prefix sums, 32
  /// groups at a time with shuffles. %numTiles is the total.
  void writeGroupTables(int64_t bm) {
    emit("%numGroups = arith.minui %G, " +
         i32(kiln::GemmConfigAttr::kMaxGroups) + " : i32");
    // The tile lookup's binary search steps (writeTileOrigin).
    emit("%numGroupsLz = \"llvm.intr.ctlz\"(%numGroups) <{is_zero_poison = "
         "false}> : (i32) -> i32");
    emit("%searchSteps = arith.subi " + i32(32) + ", %numGroupsLz : i32");
    emit("scf.for %g = %tid to %numGroups step " + i32(config.getThreads()) +
         " : i32 {");
    emit("%g1 = arith.addi %g, %c1 : i32");
    if (grouped == kiln::GroupLayout::Contiguous) {
      // Group g owns rows [offsets[g], offsets[g+1]), clamped into [0, M].
      emit("%beginPtr = llvm.getelementptr %groups[%g] : (!llvm.ptr<1>, i32) "
           "-> !llvm.ptr<1>, i32");
      emit("%endPtr = llvm.getelementptr %groups[%g1] : (!llvm.ptr<1>, i32) "
           "-> !llvm.ptr<1>, i32");
      emit("%begin0 = llvm.load %beginPtr : !llvm.ptr<1> -> i32");
      emit("%end0 = llvm.load %endPtr : !llvm.ptr<1> -> i32");
      emit("%begin1 = arith.maxsi %begin0, %c0 : i32");
      emit("%rowOfGroup = arith.minsi %begin1, %M : i32");
      emit("%end1 = arith.maxsi %end0, %rowOfGroup : i32");
      emit("%end2 = arith.minsi %end1, %M : i32");
      emit("%rowsOfGroup = arith.subi %end2, %rowOfGroup : i32");
    } else {
      // Group g's slab holds rows [g * M, g * M + counts[g]), counts
      // clamped into [0, M].
      emit("%countPtr = llvm.getelementptr %groups[%g] : (!llvm.ptr<1>, i32) "
           "-> !llvm.ptr<1>, i32");
      emit("%count0 = llvm.load %countPtr : !llvm.ptr<1> -> i32");
      emit("%count1 = arith.maxsi %count0, %c0 : i32");
      emit("%rowsOfGroup = arith.minsi %count1, %M : i32");
      emit("%rowOfGroup = arith.muli %g, %M : i32");
    }
    emitCeilDiv("%mTilesOfGroup", "%rowsOfGroup", bm);
    emit("%tilesOfGroup = arith.muli %mTilesOfGroup, %nTiles : i32");
    emit("llvm.store %rowOfGroup, " + table(layout.groupRow, "%g") +
         " : i32, !llvm.ptr<3>");
    emit("llvm.store %rowsOfGroup, " + table(layout.groupRows, "%g") +
         " : i32, !llvm.ptr<3>");
    emit("llvm.store %tilesOfGroup, " + table(layout.tilePrefix, "%g1") +
         " : i32, !llvm.ptr<3>");
    emit("}");
    // The barriers' initialization is also published by this barrier.
    emit("nvvm.barrier0");
    emit("%isWarp0 = arith.cmpi ult, %tid, %c32 : i32");
    emit("scf.if %isWarp0 {");
    emit("%scanMask = arith.constant -1 : i32");
    emitCeilDiv("%chunks", "%numGroups", 32);
    emit("%scanned = scf.for %chunk = %c0 to %chunks step %c1 iter_args("
         "%carry = %c0) -> (i32) : i32 {");
    emit("%chunkBase = arith.muli %chunk, %c32 : i32");
    emit("%sg = arith.addi %chunkBase, %tid : i32");
    emit("%sg1 = arith.addi %sg, %c1 : i32");
    emit("%inRange = arith.cmpi ult, %sg, %numGroups : i32");
    emit("%own = scf.if %inRange -> (i32) {");
    emit("%ownTiles = llvm.load " + table(layout.tilePrefix, "%sg1") +
         " : !llvm.ptr<3> -> i32");
    emit("scf.yield %ownTiles : i32");
    emit("} else {");
    emit("scf.yield %c0 : i32");
    emit("}");
    // Inclusive scan across the warp (Hillis-Steele).
    std::string sum = "%own";
    for (int64_t d : {1, 2, 4, 8, 16}) {
      std::string n = std::to_string(d);
      emit("%up" + n + " = nvvm.shfl.sync up %scanMask, " + sum + ", " +
           i32(d) + ", %c0 : i32 -> i32");
      emit("%has" + n + " = arith.cmpi uge, %tid, " + i32(d) + " : i32");
      emit("%add" + n + " = arith.select %has" + n + ", %up" + n +
           ", %c0 : i32");
      emit("%scan" + n + " = arith.addi " + sum + ", %add" + n + " : i32");
      sum = "%scan" + n;
    }
    emit("%prefixed = arith.addi %carry, " + sum + " : i32");
    emit("scf.if %inRange {");
    emit("llvm.store %prefixed, " + table(layout.tilePrefix, "%sg1") +
         " : i32, !llvm.ptr<3>");
    emit("}");
    emit("%chunkTotal = nvvm.shfl.sync idx %scanMask, %prefixed, " + i32(31) +
         ", " + i32(31) + " : i32 -> i32");
    emit("scf.yield %chunkTotal : i32");
    emit("}");
    emit("scf.if %isT0 {");
    emit("llvm.store %c0, " + table(layout.tilePrefix, "%c0") +
         " : i32, !llvm.ptr<3>");
    emit("}");
    emit("}");
    emit("nvvm.barrier0");
    emit("%numTiles = llvm.load " + table(layout.tilePrefix, "%numGroups") +
         " : !llvm.ptr<3> -> i32");
  }

  /// %s, %phase: the ring slot of the j-th k block and its phase parity.
  void writeStageAndPhase(int64_t stages) {
    emit("%s = arith.remui %j, " + i32(stages) + " : i32");
    emit("%round = arith.divui %j, " + i32(stages) + " : i32");
    emit("%phase = arith.andi %round, %c1 : i32");
  }

  /// A K-major, 128-byte-swizzled wgmma matrix descriptor for `ptr`.
  void writeDescriptor(const std::string &name, const std::string &ptr) {
    emit(name + "Addr = llvm.ptrtoint " + ptr + " : !llvm.ptr<3> to i64");
    emit(name + "Lo = arith.andi " + name + "Addr, %addrMask : i64");
    emit(name + "Units = arith.shrui " + name + "Lo, %c4i64 : i64");
    emit(name + " = arith.ori " + name + "Units, %descHigh : i64");
  }

  /// Pointer to barrier `index` of the array at byte `base`.
  std::string barrier(int64_t base, const std::string &index) {
    std::string id = std::to_string(counter++);
    emit("%barOff" + id + " = arith.muli " + index + ", %c8 : i32");
    emit("%barAt" + id + " = arith.addi %barOff" + id + ", " + i32(base) +
         " : i32");
    return "llvm.getelementptr %smem[%barAt" + id +
           "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8";
  }

  /// Emits a pointer to int32 entry `index` of the group table at byte
  /// `base` and returns its name.
  std::string table(int64_t base, const std::string &index) {
    std::string id = std::to_string(counter++);
    emit("%tabOff" + id + " = arith.muli " + index + ", %c4 : i32");
    emit("%tabAt" + id + " = arith.addi %tabOff" + id + ", " + i32(base) +
         " : i32");
    emit("%tabPtr" + id + " = llvm.getelementptr %smem[%tabAt" + id +
         "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8");
    return "%tabPtr" + id;
  }

  /// Pointer to slot `index` of a ring of `slotBytes` slots at byte `base`.
  std::string ringSlot(int64_t base, int64_t slotBytes,
                       const std::string &index) {
    std::string id = std::to_string(counter++);
    emit("%slotOff" + id + " = arith.muli " + index + ", " + i32(slotBytes) +
         " : i32");
    emit("%slotAt" + id + " = arith.addi %slotOff" + id + ", " + i32(base) +
         " : i32");
    return "llvm.getelementptr %smem[%slotAt" + id +
           "] : (!llvm.ptr<3>, i32) -> !llvm.ptr<3>, i8";
  }

  /// `result` = ceil(`value` / `divisor`) for a non-negative i32 `value`.
  void emitCeilDiv(const std::string &result, const std::string &value,
                   int64_t divisor) {
    emit(result + "Pad = arith.addi " + value + ", " + i32(divisor - 1) +
         " : i32");
    emit(result + " = arith.divui " + result + "Pad, " + i32(divisor) +
         " : i32");
  }

  /// An LLVM struct of `regs` FP32 values: a wgmma accumulator fragment.
  static std::string accumulatorType(int64_t regs) {
    std::string type = "!llvm.struct<(";
    for (int64_t i = 0; i < regs; ++i)
      type += i ? ", f32" : "f32";
    return type + ")>";
  }

  /// An i32 constant as an SSA value, materialized once.
  std::string i32(int64_t value) {
    std::string name = value < 0 ? "%kneg" + std::to_string(-value)
                                 : "%k" + std::to_string(value);
    if (materialized.insert(value).second)
      constants << "    " << name << " = arith.constant " << value
                << " : i32\n";
    return name;
  }

  static std::string printAttr(Attribute attr) {
    std::string s;
    llvm::raw_string_ostream os(s);
    attr.print(os);
    return s;
  }

  void emit(const std::string &line) {
    // Constants go right after the function's entry, ahead of all uses.
    if (!entered && line.rfind("%c0 = ", 0) == 0) {
      entered = true;
      body << "<<CONSTANTS>>\n";
    }
    body << "    " << line << "\n";
  }

  /// Byte offsets in the aligned shared memory: the A and B rings, the
  /// epilogue's staging (16 rows per consumer warp), the full and empty
  /// barrier arrays, the stages' activation and weight scales (staged
  /// scales) and,
  /// in grouped kernels, the group
  /// tables (tile prefix sums, first row and row count of each group).
  struct Layout {
    int64_t ringA = 0, ringB = 0, epilogue = 0, fullBar = 0, emptyBar = 0;
    int64_t stageScales = 0, stageWeightScales = 0;
    int64_t tilePrefix = 0, groupRow = 0, groupRows = 0;
  };

  kiln::GemmConfigAttr config;
  int64_t splitK = 1;
  std::optional<kiln::GroupLayout> grouped;
  /// Blocks per cluster along M (1: no cluster, no multicast).
  int64_t clusterM = 1;
  /// 128-column halves a K block is issued and promoted in (2 for 256-wide
  /// tiles), and the type of one half's partial accumulator.
  int64_t halves = 1;
  std::string partialType;
  /// The current K block's combined scales (finishBlock's first half).
  std::vector<std::string> halfScales;
  /// The SwiGLU epilogue (gemm-abi.md "SwiGLU epilogue").
  bool swiglu = false;
  Layout layout;
  std::string structType;
  /// Whether the epilogue stores with TMA (config store = tma).
  bool tmaStore = false;
  /// The quantized SwiGLU epilogue: tiles go in pairs that share the
  /// intermediate's 1x128 scale blocks (config epilogue = swiglu_quantize).
  bool quantize = false;
  /// Split-K for the last partial wave's tiles only (config split = tail).
  bool splitTail = false;
  /// The producer loads each K block's activation scales into its stage
  /// with TMA (GemmConfigAttr::getStagedScales; gemm-abi.md "Staged
  /// scales"), where the consumers read them after the stage's data.
  bool stagedScales = false;
  /// The main loop's result: the tile's FP32 accumulator.
  std::string finalAcc;
  /// Grouped kernels: the tile's group index (writeTileOrigin).
  std::string groupIndex;
  std::ostringstream body, constants;
  llvm::SmallSet<int64_t, 16> materialized;
  int counter = 0;
  bool entered = false;
};

struct EmitGemmKernelsPass
    : kiln::impl::KilnEmitGemmKernelsBase<EmitGemmKernelsPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    MLIRContext *context = &getContext();
    llvm::SetVector<kiln::GemmConfigAttr> configs;
    WalkResult walk = module.walk([&](Operation *op) {
      auto grouped = dyn_cast<kiln::GroupedScaledMatmulOp>(op);
      if (!grouped && !isa<kiln::ScaledMatmulOp>(op))
        return WalkResult::advance();
      auto config = op->getAttrOfType<kiln::GemmConfigAttr>("gemm_config");
      if (!config) {
        op->emitOpError("has no 'gemm_config'; run kiln-select-gemm-config "
                        "first");
        return WalkResult::interrupt();
      }
      // A grouped kernel reads its group sizes in one layout; a plain one
      // has no group parameters.
      std::optional<kiln::GroupLayout> layout;
      if (grouped)
        layout = grouped.getLayout();
      if (config.getGrouped() != layout) {
        op->emitOpError("needs a gemm_config with ")
            << (layout
                    ? "grouped = " + kiln::stringifyGroupLayout(*layout).str()
                    : std::string("no 'grouped'"))
            << ", got " << config;
        return WalkResult::interrupt();
      }
      configs.insert(config);
      op->setAttr("kernel",
                  SymbolRefAttr::get(context, kKernelModuleName,
                                     {FlatSymbolRefAttr::get(
                                         context, config.getKernelName())}));
      return WalkResult::advance();
    });
    if (walk.wasInterrupted())
      return signalPassFailure();
    if (configs.empty())
      return;

    module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                    UnitAttr::get(context));
    OpBuilder builder = OpBuilder::atBlockEnd(module.getBody());
    auto kernels = module.lookupSymbol<gpu::GPUModuleOp>(kKernelModuleName);
    if (!kernels)
      kernels =
          gpu::GPUModuleOp::create(builder, module.getLoc(), kKernelModuleName);
    for (kiln::GemmConfigAttr config : configs) {
      if (kernels.lookupSymbol(config.getKernelName()))
        continue;
      std::string source = KernelWriter(config).write();
      OwningOpRef<ModuleOp> parsed = parseSourceString<ModuleOp>(
          source, ParserConfig(context),
          "kiln-gemm-kernel:" + config.getKernelName());
      if (!parsed) {
        module.emitError("internal error: the kernel template for ")
            << config << " does not parse";
        return signalPassFailure();
      }
      auto instance = *parsed->getOps<gpu::GPUModuleOp>().begin();
      for (Operation &op :
           llvm::make_early_inc_range(instance.getBody()->getOperations()))
        op.moveBefore(kernels.getBody(), kernels.getBody()->end());
    }
  }
};

} // namespace
