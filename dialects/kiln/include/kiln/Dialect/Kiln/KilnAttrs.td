//===- KilnAttrs.td - kiln attributes and enums -------------*- tablegen -*-===//

#ifndef KILN_DIALECT_KILN_KILNATTRS_TD
#define KILN_DIALECT_KILN_KILNATTRS_TD

include "kiln/Dialect/Kiln/KilnDialect.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/EnumAttr.td"

//===----------------------------------------------------------------------===//
// Enums
//===----------------------------------------------------------------------===//

def Kiln_ScaleGranularity : I32EnumAttr<"ScaleGranularity",
    "the region of a tensor that shares one FP8 scale", [
      // One scale per 1×128 tile along the last dimension (activations).
      I32EnumAttrCase<"Tile1x128", 0, "tile_1x128">,
      // One scale per 128×128 block of the last two dimensions (weights).
      I32EnumAttrCase<"Block128x128", 1, "block_128x128">
    ]> {
  let cppNamespace = "::kiln";
}

def Kiln_GroupLayout : I32EnumAttr<"GroupLayout",
    "how per-expert token groups are laid out", [
      // Rows of all groups in one [rows, K] tensor, sorted by group; group g
      // owns rows [offsets[g], offsets[g+1]). Variable sizes, for prefill.
      I32EnumAttrCase<"Contiguous", 0, "contiguous">,
      // One [capacity, K] slab per group with a row count per group. Fixed
      // shapes, for decode steps captured in CUDA graphs.
      I32EnumAttrCase<"Masked", 1, "masked">
    ]> {
  let cppNamespace = "::kiln";
}

def Kiln_RouterScoring : I32EnumAttr<"RouterScoring",
    "the function that turns router logits into expert scores", [
      I32EnumAttrCase<"Sigmoid", 0, "sigmoid">,
      I32EnumAttrCase<"Softmax", 1, "softmax">
    ]> {
  let cppNamespace = "::kiln";
}

def Kiln_StageKind : I32EnumAttr<"StageKind",
    "what a stage of an overlap region occupies", [
      // Runs on the SMs: attention, expert GEMMs, norms.
      I32EnumAttrCase<"Compute", 0, "compute">,
      // Moves tokens between ranks: MoE dispatch and combine.
      I32EnumAttrCase<"Communication", 1, "communication">
    ]> {
  let cppNamespace = "::kiln";
}

//===----------------------------------------------------------------------===//
// Attributes
//===----------------------------------------------------------------------===//

class Kiln_Attr<string name, string attrMnemonic, list<Trait> traits = []>
    : AttrDef<Kiln_Dialect, name, traits> {
  let mnemonic = attrMnemonic;
}

def Kiln_ExpertParallelAttr : Kiln_Attr<"ExpertParallel", "expert_parallel"> {
  let summary = "an expert-parallel group: ranks and expert placement";
  let description = [{
    Describes how the routed experts of a MoE layer are spread over
    `world_size` ranks. Every rank holds `slots_per_rank` expert slots; slot
    `s` of rank `r` is physical slot `r * slots_per_rank + s`.

    Without `placement`, the experts are placed in order: physical slot `p`
    holds logical expert `p`, which needs `world_size * slots_per_rank ==
    experts`. With `placement`, entry `p` names the logical expert held in
    physical slot `p`; an expert may appear in several slots (redundant
    experts for load balancing, as in EPLB), and every expert appears at least
    once.

    ```mlir
    #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
    #kiln.expert_parallel<world_size = 2, experts = 3, slots_per_rank = 2,
                          placement = [0, 1, 2, 0]>
    ```
  }];
  let parameters = (ins
    "int64_t":$worldSize,
    "int64_t":$numExperts,
    "int64_t":$slotsPerRank,
    OptionalArrayRefParameter<"int64_t">:$placement
  );
  let assemblyFormat = [{
    `<` `world_size` `=` $worldSize `,` `experts` `=` $numExperts `,`
        `slots_per_rank` `=` $slotsPerRank
        (`,` `placement` `=` `[` $placement^ `]`)? `>`
  }];
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// Physical expert slots over all ranks.
    int64_t getNumSlots() const { return getWorldSize() * getSlotsPerRank(); }
    /// The logical expert held in physical slot `slot`.
    int64_t getExpertInSlot(int64_t slot) const;
  }];
}

def Kiln_GemmConfigAttr : Kiln_Attr<"GemmConfig", "gemm_config"> {
  let summary = "the tile configuration of a warp-specialized FP8 GEMM kernel";
  let description = [{
    The kernel-level description of a `kiln.scaled_matmul`: output tiles of
    `block_m` x `block_n` (block_m = 64 per consumer warpgroup; block_n
    divides 128, or is 192 (grouped: unsplit) or 256 (plain kernels,
    unsplit, issued in 128-column halves)), a ring of
    `stages` shared-memory buffers of 128-wide K slices, one TMA producer
    warpgroup and `consumers` wgmma warpgroups. `split_k` > 1 splits the K
    blocks of every tile into that many slices computed by separate blocks,
    which write FP32 partials to a workspace; the last one to finish a tile
    sums them and stores BF16 (compiler/docs/gemm-abi.md "Split-K"). It is
    printed only when it is not 1. With `split = tail` (plain kernels) only
    the tiles of the last, partial wave of the persistent schedule are split
    that way, the others run whole: a stream-K tail (gemm-abi.md "Split
    tail"). `grouped` (absent: one GEMM) makes it the
    kernel of a `kiln.grouped_scaled_matmul`: one launch computes every
    group's GEMM, reading the group sizes (offsets for `contiguous`, row
    counts for `masked`) from device memory itself (gemm-abi.md "Grouped
    kernels"). `cluster_m` = 2 (plain kernels without split-K) runs the
    blocks in clusters of two along M: the pair computes two vertically
    adjacent tiles of the same columns, and each block loads half of their
    shared B slice and multicasts it to both, so a K block costs each SM
    (BLOCK_M + BLOCK_N / 2) x 128 bytes from L2 instead of (BLOCK_M +
    BLOCK_N) x 128 (gemm-abi.md "Clusters"). `epilogue = swiglu` (grouped,
    block_n = 128, split_k = 1) fuses DeepSeek-V3's SwiGLU into the store:
    B is the gate/up weight interleaved in blocks of 64 rows, so each tile
    holds 64 gate and the same 64 up columns, and the kernel stores
    silu(gate) * up, an output of N / 2 columns (gemm-abi.md "SwiGLU
    epilogue"). `epilogue = swiglu_quantize` does the same and stores the
    result as the down projection's input: E4M3 codes with one FP32 scale
    per 1x128 block of a row, the scales in the grouped layout the down GEMM
    reads (N a multiple of 256; gemm-abi.md "Quantized SwiGLU epilogue").
    A scale block spans two tiles, so each block computes both, one after the
    other. `store = tma` (plain kernels, split_k = 1, block_n a multiple
    of 64) writes each consumer warpgroup's BF16 rows into shared memory in
    the 128-byte swizzled layout and stores them with TMA
    (`cp.async.bulk.tensor`, a tensor map of the output as the last
    parameter), so the store runs while the warpgroup starts its next tile;
    the output's rows must be 16-byte aligned (gemm-abi.md "TMA store").
    See compiler/docs/gemm-kernels.md.

    ```mlir
    #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2>
    #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 4>
    #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split_k = 4, split = tail>
    #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = masked>
    #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2, cluster_m = 2>
    #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = swiglu>
    #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = swiglu_quantize>
    #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, store = tma>
    ```
  }];
  let parameters = (ins "int64_t":$blockM, "int64_t":$blockN,
                        "int64_t":$stages, "int64_t":$consumers,
                        DefaultValuedParameter<"int64_t", "1">:$splitK,
                        OptionalParameter<"std::optional<::kiln::GroupLayout>">:$grouped,
                        DefaultValuedParameter<"int64_t", "1">:$clusterM,
                        DefaultValuedParameter<"bool", "false">:$swiglu,
                        DefaultValuedParameter<"bool", "false">:$tmaStore,
                        DefaultValuedParameter<"bool", "false">:$quantize,
                        DefaultValuedParameter<"bool", "false">:$splitTail);
  let builders = [
    AttrBuilder<(ins "int64_t":$blockM, "int64_t":$blockN, "int64_t":$stages,
                     "int64_t":$consumers, CArg<"int64_t", "1">:$splitK,
                     CArg<"std::optional<::kiln::GroupLayout>", "std::nullopt">:$grouped,
                     CArg<"int64_t", "1">:$clusterM,
                     CArg<"bool", "false">:$swiglu,
                     CArg<"bool", "false">:$tmaStore,
                     CArg<"bool", "false">:$quantize,
                     CArg<"bool", "false">:$splitTail), [{
      return $_get($_ctxt, blockM, blockN, stages, consumers, splitK, grouped,
                   clusterM, swiglu, tmaStore, quantize, splitTail);
    }]>
  ];
  let skipDefaultBuilders = 1;
  // `<block_m = .., block_n = .., stages = .., consumers = ..
  //   [, split_k = ..] [, split = tail] [, cluster_m = ..]
  //   [, grouped = contiguous|masked]
  //   [, epilogue = swiglu|swiglu_quantize] [, store = tma]>`;
  // the optional keys all follow a comma, which the declarative format
  // cannot tell apart.
  let hasCustomAssemblyFormat = 1;
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    /// The quantized SwiGLU epilogue's per-thread stash of a pair's first
    /// tile: its 32 BF16 values (16 words) and the thread's two row maxima.
    static constexpr int64_t kQuantizeStashWords = 18;
    /// Threads per block: the producer warpgroup and the consumers.
    int64_t getThreads() const { return 128 * (1 + getConsumers()); }
    /// Groups a grouped kernel accepts: its per-group tables live in shared
    /// memory (DeepSeek-V3 has 256 routed experts).
    static constexpr int64_t kMaxGroups = 1024;
    /// Hopper's per-block shared memory limit.
    static constexpr int64_t kMaxSharedMemoryBytes = 227 * 1024;
    /// Grouped kernels: three int32 tables of kMaxGroups + 1 entries (tile
    /// prefix, first row, row count per group); 0 otherwise.
    static int64_t getGroupTableBytes(bool grouped) {
      return grouped ? 3 * 4 * (kMaxGroups + 1) : 0;
    }
    int64_t getGroupTableBytes() const {
      return getGroupTableBytes(getGrouped().has_value());
    }
    /// A row of the BF16 epilogue's staging: at most 64 columns at a time,
    /// plus 16 bytes so that 8 consecutive rows start in different banks.
    static int64_t getEpilogueRowBytes(int64_t blockN) {
      return std::min<int64_t>(blockN, 64) * 2 + 16;
    }
    /// The BF16 epilogue's staging: 16 rows per consumer warp; with the
    /// TMA store the whole BF16 tile, in 64-column boxes of 128-byte rows.
    /// (The quantized SwiGLU epilogue keeps the first tile of a pair there,
    /// kQuantizeStashWords per consumer thread, which is exactly the
    /// staging of a 128-wide tile.)
    static int64_t getEpilogueBytes(int64_t blockM, int64_t blockN,
                                    bool tmaStore) {
      return tmaStore ? blockM * blockN * 2
                      : blockM * getEpilogueRowBytes(blockN);
    }
    int64_t getEpilogueBytes() const {
      return getEpilogueBytes(getBlockM(), getBlockN(), getTmaStore());
    }
    /// TMA reads a box from a 16-byte-aligned global address only (an
    /// unaligned start coordinate is an illegal instruction): the staged
    /// scales' boxes start at the element aligned down to 4 FP32 values and
    /// are 4 longer, and the consumers skip the start's remainder.
    static constexpr int64_t kScaleAlignElements = 4;
    /// The activation-scale box of one ring stage, in FP32 elements: the K
    /// block's scale of each tile row, from the aligned-down start.
    static int64_t getStageScaleBoxElements(int64_t blockM) {
      return blockM + kScaleAlignElements;
    }
    /// One ring stage's activation-scale slot, 128-byte aligned for TMA.
    static int64_t getStageScaleBytes(int64_t blockM) {
      return (getStageScaleBoxElements(blockM) * 4 + 127) / 128 * 128;
    }
    /// Dynamic shared memory without the stages' scales: the A and B
    /// rings, the epilogue's staging, 2 mbarriers per stage, the group
    /// tables of a grouped kernel, plus 1 KB to align the ring to 1024
    /// bytes at run time.
    static int64_t getRingAndTableBytes(int64_t blockM, int64_t blockN,
                                        int64_t stages, bool grouped,
                                        bool tmaStore) {
      return stages * (blockM + blockN) * 128 +
             getEpilogueBytes(blockM, blockN, tmaStore) + 2 * 8 * stages +
             getGroupTableBytes(grouped) + 1024;
    }
    /// One ring stage's weight scales: a 16-byte TMA box per weight scale
    /// (at most three: a 192-wide tile's; a 256-wide one has two), each in
    /// its own 128-byte slot.
    static constexpr int64_t kWeightScaleBoxBytes = 4 * kScaleAlignElements;
    static constexpr int64_t kWeightScaleSlotBytes = 128;
    static constexpr int64_t kStageWeightScaleBytes = 3 * kWeightScaleSlotBytes;
    /// The stages' activation and weight scales and 128 bytes to align
    /// them for TMA.
    static int64_t getStagedScaleBytes(int64_t blockM, int64_t stages) {
      return stages * (getStageScaleBytes(blockM) + kStageWeightScaleBytes) +
             128;
    }
    /// Whether the consumers' main loop keeps one wgmma group in flight
    /// across iterations (EmitGemmKernels' writePipelinedBlocks): 128-wide
    /// tiles of two consumer warpgroups, whose two 64-register partials fit
    /// beside the accumulator.
    static bool getPipelinedLoop(int64_t blockN, int64_t consumers) {
      return blockN == 128 && consumers == 2;
    }
    /// Whether the producer stages each K block's scales in shared memory
    /// for the consumers (gemm-abi.md "Staged scales"; otherwise they load
    /// them from global memory one step ahead): unsplit kernels whose main
    /// loop does not already carry the scales a pair of blocks ahead (the
    /// pipelined loop of 128-wide tiles with two consumer warpgroups, where
    /// the producer's extra TMAs cost 2-8% at M = 4096 and hid nothing),
    /// wherever the scales fit beside the rest. Split-K kernels keep the
    /// loads: staged, the latency-bound M = 1 decode shape was 5% slower
    /// and the split-tail kernel spilled (gemm-kernels.md "Session 9").
    static bool getStagedScales(int64_t blockM, int64_t blockN,
                                int64_t stages, int64_t consumers,
                                int64_t splitK, bool grouped, bool tmaStore) {
      return splitK == 1 && !getPipelinedLoop(blockN, consumers) &&
             getRingAndTableBytes(blockM, blockN, stages, grouped, tmaStore) +
                     getStagedScaleBytes(blockM, stages) <=
                 kMaxSharedMemoryBytes;
    }
    bool getStagedScales() const {
      return getStagedScales(getBlockM(), getBlockN(), getStages(),
                             getConsumers(), getSplitK(),
                             getGrouped().has_value(), getTmaStore());
    }
    /// Dynamic shared memory, the stages' scales included where staged
    /// (after the barriers, before the group tables). The verifier holds
    /// it to kMaxSharedMemoryBytes.
    static int64_t getSharedMemoryBytes(int64_t blockM, int64_t blockN,
                                        int64_t stages, int64_t consumers,
                                        int64_t splitK, bool grouped,
                                        bool tmaStore) {
      return getRingAndTableBytes(blockM, blockN, stages, grouped, tmaStore) +
             (getStagedScales(blockM, blockN, stages, consumers, splitK,
                              grouped, tmaStore)
                  ? getStagedScaleBytes(blockM, stages)
                  : 0);
    }
    int64_t getSharedMemoryBytes() const {
      return getSharedMemoryBytes(getBlockM(), getBlockN(), getStages(),
                                  getConsumers(), getSplitK(),
                                  getGrouped().has_value(), getTmaStore());
    }
    /// The kernel's symbol name, unique per configuration.
    std::string getKernelName() const;
  }];
}

#endif // KILN_DIALECT_KILN_KILNATTRS_TD
