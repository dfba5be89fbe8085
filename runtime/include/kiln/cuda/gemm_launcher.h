//===- kiln/cuda/gemm_launcher.h - FP8 block-scaled GEMM launcher ---------===//
//
// Loads a compiled FP8 GEMM kernel (cubin or PTX) and launches it as
// compiler/docs/gemm-abi.md specifies: two TMA tensor maps for A and B, the
// 1×128 and 128×128 scales, BF16 out, a persistent grid of
// min(#SMs, tiles × split_k) blocks; split-K kernels also take an FP32
// workspace, which the GemmKernel allocates unless the caller passes one.
// Grouped kernels (gemm-abi.md "Grouped kernels") compute one GEMM per group
// of rows against a stacked [G·N, K] weight in one launch, reading the group
// offsets or counts from device memory: launchGrouped() never synchronizes
// or reads anything back, so it can be captured in a CUDA graph. The
// kernel's configuration comes from the manifest the compiler writes beside
// the cubin (`<name>.json`, format in gemm-abi.md "Kernel manifest").
//
// Every driver error is a kiln::cuda::CudaError naming the call, the kernel
// and the shape. Launches are asynchronous: faults inside the kernel surface
// at the caller's next synchronization.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_GEMM_LAUNCHER_H
#define KILN_CUDA_GEMM_LAUNCHER_H

#include "kiln/cuda/driver.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln::cuda {

/// What a grouped kernel reads as its groups (gemm-abi.md "Grouped
/// kernels"): none (a plain GEMM), G + 1 row offsets into one [R, K] A, or G
/// row counts of [G, maxRows, K] slabs.
enum class GemmGrouping { None, Contiguous, Masked };

/// What a kernel stores: the product, or (grouped kernels over interleaved
/// gate/up weights, gemm-abi.md "SwiGLU epilogue") silu(gate) · up, N / 2
/// columns, in BF16 or (SwigluQuantize, gemm-abi.md "Quantized SwiGLU
/// epilogue") as E4M3 codes and 1×128 scales, the down projection's input.
enum class GemmEpilogue { Store, Swiglu, SwigluQuantize };

/// Groups a grouped kernel accepts (its group tables live in shared memory).
constexpr int kMaxGemmGroups = 1024;

/// How a GEMM kernel is launched (gemm-abi.md "Launch", "Kernel manifest").
struct GemmKernelConfig {
  /// The kernel's entry symbol in the module.
  std::string kernelName;
  /// Output tile: BLOCK_M rows (64 per consumer warpgroup) × BLOCK_N columns.
  int blockM = 0;
  int blockN = 0;
  /// Depth of the TMA → wgmma shared-memory pipeline.
  int stages = 0;
  /// Warpgroups running wgmma; one more warpgroup produces (TMA).
  int consumerWarpgroups = 0;
  /// Dynamic shared memory the launch requests; 0 means the ABI's minimum,
  /// `abiSharedMemoryBytes()`.
  int sharedMemoryBytes = 0;
  /// K slices per tile, each computed by its own block into an FP32
  /// workspace slot; the last block to finish a tile sums them (gemm-abi.md
  /// "Split-K"). 1: no workspace parameter.
  int splitK = 1;
  /// Only the tiles of the last, partial wave are split that way; the
  /// others run whole (manifest "split": "tail"; gemm-abi.md "Split tail").
  /// Plain kernels without the TMA store.
  bool splitTail = false;
  /// Reference kernels only (runtime/tools/gemm_reference.cu): A and B are
  /// also passed as plain `const uint8_t *` after K.
  bool operandPointers = false;
  /// Grouped kernels take `groups` and `G` after K (and the workspace).
  GemmGrouping grouping = GemmGrouping::None;
  /// Blocks per cluster along M (gemm-abi.md "Clusters"): 2 means each
  /// block loads half of its B tile (the tensor map's box is BLOCK_N / 2
  /// rows) and multicasts it to its peer, and the grid is whole clusters.
  int clusterM = 1;
  /// Swiglu: a grouped kernel with block_n 128 and split_k 1 whose output
  /// has N / 2 columns (manifest "epilogue": "swiglu"); SwigluQuantize the
  /// same, stored as E4M3 codes with their scales in
  /// GroupedGemmOperands::outScales, a parameter after G (manifest
  /// "epilogue": "swiglu_quantize").
  GemmEpilogue epilogue = GemmEpilogue::Store;
  /// The kernel stores its output with TMA through a tensor map of `out`,
  /// its last parameter (manifest "store": "tma"; gemm-abi.md "TMA store"):
  /// plain kernels with split_k 1 and block_n a multiple of 64; the output
  /// must be 16-byte aligned with N a multiple of 8.
  bool tmaStore = false;
  /// The kernel's producer loads the scales of each K block with TMA,
  /// through 1-D tensor maps of scaleA and scaleB, its last two parameters
  /// (manifest "scale_a": "tma"; gemm-abi.md "Staged scales"): both must be
  /// 16-byte aligned.
  bool stagedScales = false;
  /// Every thread of the kernel executes `griddepcontrol.wait` before it
  /// touches global memory (manifest "griddepcontrol": "wait"; gemm-abi.md
  /// "Dependent launch"; it never triggers its dependents early): it may be
  /// launched with programmatic stream serialization, overlapping its launch
  /// and prologue with the previous kernel's tail.
  bool gridDependencyWait = false;
  /// The kernel's stages expect A's TMA box to be min(BLOCK_M, M) rows
  /// (manifest "a_box": "min_m"; gemm-abi.md "The clamped A box"; in a
  /// grouped launch M is R or a masked slab's rows): at M < BLOCK_M the
  /// launcher builds tmA with that box, so TMA reads the M rows there are
  /// instead of filling the rest with zeros, which costs more than reading
  /// them. Without it the box is BLOCK_M rows.
  bool clampedABox = false;

  int threadsPerBlock() const { return 128 * (1 + consumerWarpgroups); }
  /// `stages * (BLOCK_M + BLOCK_N) * 128` bytes of tiles plus `2 * stages`
  /// 8-byte mbarriers, plus a grouped kernel's group tables (three int32
  /// arrays of kMaxGemmGroups + 1).
  int abiSharedMemoryBytes() const;
  /// `sharedMemoryBytes`, or the ABI minimum when it is 0.
  int launchSharedMemoryBytes() const;
  /// Throws kiln::Error naming `origin` and the rule a field breaks.
  void validate(const std::string &origin) const;
};

/// Parses a kernel manifest (JSON text); `origin` names it in errors. The
/// result is validated.
GemmKernelConfig parseGemmManifest(const std::string &json,
                                   const std::string &origin);
/// Reads and parses the manifest file at `path`.
GemmKernelConfig loadGemmManifest(const std::string &path);
/// The manifest text of `config` (what the compiler writes).
std::string toManifestJson(const GemmKernelConfig &config);

/// Device buffers and sizes of one product (gemm-abi.md "Buffers"):
/// out[M×N] = A[M×K] · B[N×K]ᵀ with scaleA[K/128][M], scaleB[⌈N/128⌉][K/128].
struct GemmOperands {
  CUdeviceptr a = 0;      // E4M3, M×K row-major
  CUdeviceptr b = 0;      // E4M3, N×K row-major
  CUdeviceptr scaleA = 0; // float, [K/128][M]
  CUdeviceptr scaleB = 0; // float, [ceil(N/128)][K/128]
  CUdeviceptr out = 0;    // bf16, M×N row-major
  int m = 0;
  int n = 0;
  int k = 0;
  /// Split-K kernels only: gemmWorkspaceBytes(config, m, n) bytes, 16-byte
  /// aligned, zeroed once when allocated (every launch leaves its counters
  /// zero again), used by one kernel configuration and one launch at a time.
  /// 0: the GemmKernel's own workspace.
  CUdeviceptr workspace = 0;
};

/// "M=.. N=.. K=.." for messages.
std::string describeShape(const GemmOperands &operands);

/// Throws kiln::Error unless the operands satisfy the ABI: M, N ≥ 1,
/// K a positive multiple of 128, A and B 16-byte aligned (TMA), scales
/// 4-byte and out 2-byte aligned, no null pointer.
void checkGemmOperands(const GemmKernelConfig &config,
                       const GemmOperands &operands);

/// Output tiles of the persistent schedule: ⌈M/BLOCK_M⌉ · ⌈N/BLOCK_N⌉.
int64_t gemmTileCount(const GemmKernelConfig &config, int m, int n);
/// Rows of A's TMA box for a launch on M rows (grouped: R, or a masked
/// slab's rows): min(BLOCK_M, M) for a kernel with the clamped box
/// (clampedABox), else BLOCK_M.
int gemmBoxRowsA(const GemmKernelConfig &config, int m);
/// Work units of the persistent schedule: tiles × split_k.
int64_t gemmWorkUnitCount(const GemmKernelConfig &config, int m, int n);
/// The persistent grid: min(multiprocessors, work units); with clusters,
/// cluster_m blocks per unit of cluster_m tiles stacked along M and at most
/// multiprocessors / cluster_m clusters.
unsigned gemmGridSize(const GemmKernelConfig &config, int m, int n,
                      int multiprocessors);
/// Bytes of split-K workspace a launch on M×N needs (gemm-abi.md
/// "Split-K"): per tile, 256 bytes of arrival counters and split_k FP32
/// slots of BLOCK_M × BLOCK_N. 0 when split_k is 1. A split-tail kernel
/// needs a record per tile of the last partial wave, fewer than its grid on
/// `multiprocessors` blocks: min(tiles, grid) records cover this M and any
/// smaller one; 0 multiprocessors means any grid (at most
/// kMaxSplitTailRecords).
size_t gemmWorkspaceBytes(const GemmKernelConfig &config, int m, int n,
                          int multiprocessors = 0);
/// The split tail of a grid no larger than this never has more tiles.
constexpr int kMaxSplitTailRecords = 256;

/// One grouped launch (gemm-abi.md "Grouped kernels"): G GEMMs
/// out_g = A_g · B_gᵀ with B = [G·N, K] (expert g's weight at rows g·N) and
/// scaleB = [G·⌈N/128⌉][⌈K/128⌉]. `gemm.m` is R, the rows of A and out
/// (contiguous), or maxRows, the rows of each group's slab (masked: A is
/// [G, maxRows, K], scaleA [G][⌈K/128⌉][maxRows], out [G, maxRows, N]).
/// A SwiGLU kernel takes N = 2·I (a multiple of 256) with B interleaved
/// (kiln/cuda/swiglu_weights.h) and writes out with I columns.
struct GroupedGemmOperands {
  GemmOperands gemm;
  /// int32 in device memory: G + 1 row offsets (contiguous; group g owns
  /// rows offsets[g] .. offsets[g+1] of A, scaleA in the grouped layout of
  /// artifact.md) or G row counts (masked). Read by the kernel only.
  CUdeviceptr groups = 0;
  int numGroups = 0;
  /// SwigluQuantize kernels: `gemm.out` receives the E4M3 codes [rows, I]
  /// (I = N / 2, 1-byte elements), this the FP32 scales, one per row and
  /// 128 columns, in the grouped layout the down projection's A scales use
  /// (gemm-abi.md "Grouped kernels"): contiguous, group g's [I/128][count_g]
  /// from (I/128)·offsets[g]; masked, slab g's [I/128][maxRows] from
  /// (I/128)·g·maxRows. Rows outside the groups get neither codes nor scales.
  CUdeviceptr outScales = 0;
};

/// Tiles of a grouped launch whatever the group sizes turn out to be (the
/// grid and the split-K workspace are sized by it): contiguous
/// (⌊R/BLOCK_M⌋ + min(G, R)) · ⌈N/BLOCK_N⌉, masked G · ⌈maxRows/BLOCK_M⌉ ·
/// ⌈N/BLOCK_N⌉.
int64_t groupedGemmTileBound(const GemmKernelConfig &config, int rows,
                             int groups, int n);
/// The persistent grid: min(multiprocessors, tile bound × split_k).
unsigned groupedGemmGridSize(const GemmKernelConfig &config, int rows,
                             int groups, int n, int multiprocessors);
/// Split-K workspace of a grouped launch: gemmWorkspaceBytes' record for
/// each of the tile bound's tiles. 0 when split_k is 1.
size_t groupedGemmWorkspaceBytes(const GemmKernelConfig &config, int rows,
                                 int groups, int n);

/// Everything a launch passes, prepared once per operand set: encoding the
/// tensor maps is host work that timed loops should not repeat.
struct GemmLaunch {
  CUtensorMap tensorMapA;
  CUtensorMap tensorMapB;
  /// TMA-store kernels only: the output, BF16 [M, N], boxes of 64 × 64.
  CUtensorMap tensorMapOut;
  /// Staged-scale kernels only: scaleA as one FP32 vector, boxes of BLOCK_M,
  /// and scaleB, boxes of 4.
  CUtensorMap tensorMapScaleA;
  CUtensorMap tensorMapScaleB;
  GemmOperands operands;
  unsigned gridSize = 0;
  /// Grouped kernels: the offsets or counts, and G.
  CUdeviceptr groups = 0;
  int numGroups = 0;
  /// SwigluQuantize kernels: the scales of the quantized output.
  CUdeviceptr outScales = 0;
};

/// The kernel's resources as the driver reports them.
struct GemmKernelAttributes {
  int registersPerThread = 0;
  int staticSharedBytes = 0;
  /// Per-thread local memory: nonzero means spills or a stack.
  int localBytesPerThread = 0;
  int maxThreadsPerBlock = 0;
  /// Blocks of this configuration that fit on one multiprocessor.
  int residentBlocksPerMultiprocessor = 0;
};

/// A GEMM kernel loaded into the context current on the calling thread.
/// Use (and destroy) it with that context current.
class GemmKernel {
public:
  /// Loads a cubin (or PTX, JIT-compiled by the driver) from memory, finds
  /// the kernel, raises its dynamic shared-memory limit and checks that one
  /// block fits on a multiprocessor. Throws CudaError/kiln::Error naming the
  /// kernel and what failed.
  GemmKernel(const void *image, size_t imageBytes, GemmKernelConfig config);
  ~GemmKernel();
  GemmKernel(GemmKernel &&other) noexcept;
  GemmKernel &operator=(GemmKernel &&other) noexcept;
  GemmKernel(const GemmKernel &) = delete;
  GemmKernel &operator=(const GemmKernel &) = delete;

  /// Checks the operands and encodes the two tensor maps. A split-K kernel
  /// given no workspace gets the kernel's own, grown (and zeroed) here when
  /// the shape needs more: launches through one GemmKernel that use its
  /// workspace must then be ordered (one stream), and a prepared launch is
  /// valid until a later prepare() grows it.
  GemmLaunch prepare(const GemmOperands &operands) const;
  /// The same for a grouped kernel. Nothing is read back from the device:
  /// the group sizes stay where they are until the kernel reads them. To
  /// capture launches in a CUDA graph, pass a workspace (split-K) or
  /// prepare once outside the capture so that the kernel's own is sized
  /// for the largest R (growing it synchronizes).
  GemmLaunch prepareGrouped(const GroupedGemmOperands &operands) const;
  /// Enqueues the kernel on `stream` (no synchronization).
  void launch(const GemmLaunch &prepared, CUstream stream) const;
  /// prepare + launch.
  void launch(const GemmOperands &operands, CUstream stream) const;
  /// prepareGrouped + launch: no synchronization, nothing read back.
  void launchGrouped(const GroupedGemmOperands &operands,
                     CUstream stream) const;

  const GemmKernelConfig &config() const { return cfg; }
  const GemmKernelAttributes &attributes() const { return attrs; }
  int multiprocessorCount() const { return multiprocessors; }

private:
  void unload();
  /// Points `launch` at the kernel's own split-K workspace when it needs
  /// one and brings none, growing (and zeroing) it first if too small.
  void useOwnWorkspace(GemmLaunch &launch, size_t workspaceBytes,
                       const std::string &context) const;

  GemmKernelConfig cfg;
  GemmKernelAttributes attrs;
  CUmodule module = nullptr;
  CUfunction function = nullptr;
  int multiprocessors = 0;
  /// Split-K workspace for launches that bring none (see prepare()).
  mutable DeviceBuffer workspace;
};

} // namespace kiln::cuda

#endif // KILN_CUDA_GEMM_LAUNCHER_H
