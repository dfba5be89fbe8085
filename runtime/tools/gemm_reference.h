//===- gemm_reference.h - reference FP8 GEMM and checking kernels ---------===//
//
// What gemm_reference.cu (built by nvcc into one sm_90a cubin, embedded in
// kiln-gemm-check and the launcher test) holds, shared by the device code
// and its host users:
//
//  - `kiln_gemm_reference`: a simple FP8 block-scaled GEMM with the launch
//    ABI of compiler/docs/gemm-abi.md plus two trailing plain pointers to A
//    and B (manifest key "operand_pointers"): it takes the tensor maps but
//    reads through the pointers, so that its correctness does not depend on
//    the TMA path it is there to help check. FP32 sums per 128-wide K block,
//    promoted with both scales into an FP32 accumulator, BF16 out: the
//    numerics contract of DESIGN.md, without tensor cores.
//  - the checking kernels of kiln-gemm-check: random inputs, the FP64
//    reference fused with the comparison, buffer comparisons, a spin wait.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TOOLS_GEMM_REFERENCE_H
#define KILN_TOOLS_GEMM_REFERENCE_H

#include <cstdint>

namespace kiln::gemm_reference {

/// The reference kernel's tile and launch: 64×128 outputs per block, one
/// consumer warpgroup's worth of rows (BLOCK_M = 64), 256 threads each
/// computing 4×8 outputs; a whole 128-wide K block of A and B is staged in
/// shared memory as FP32.
constexpr int kBlockM = 64;
constexpr int kBlockN = 128;
constexpr int kConsumerWarpgroups = 1;
constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);
constexpr int kBlockK = 128;
constexpr int kSharedBytes = (kBlockM + kBlockN) * kBlockK * 4;
constexpr const char *kKernelName = "kiln_gemm_reference";

/// Bits that poison the output before a checked run: a NaN no arithmetic
/// produces (a payload, quiet bit clear), so that an element still holding
/// it was never written.
constexpr uint16_t kPoisonBF16 = 0x7FA5;

/// Checking kernels (extern "C" symbols in the same cubin).
constexpr const char *kFillE4M3 = "kiln_gemm_check_fill_e4m3";
constexpr const char *kFillScales = "kiln_gemm_check_fill_scales";
constexpr const char *kReferenceF64 = "kiln_gemm_check_reference_f64";
constexpr const char *kReferenceSwigluF64 =
    "kiln_gemm_check_reference_swiglu_f64";
constexpr const char *kCountNotEqual = "kiln_gemm_check_count_not_equal";
constexpr const char *kCountMismatches = "kiln_gemm_check_count_mismatches";
constexpr const char *kSpin = "kiln_gemm_check_spin";

/// The FP64 reference's output tile (blocks of 16×16 threads, 4×4 each).
constexpr int kCheckTile = 64;

/// What kiln_gemm_check_reference_f64 accumulates; zero it (and set the two
/// `first*` fields to ~0) before the launch.
struct CheckStats {
  /// Σ (out − ref)² over written, finite elements, and Σ ref² over all.
  double sumSquaredError;
  double sumSquaredReference;
  /// Elements still holding kPoisonBF16, and other NaN/Inf ones.
  unsigned long long unwritten;
  unsigned long long nonFinite;
  /// Smallest row-major index of each kind (~0 when none).
  unsigned long long firstUnwritten;
  unsigned long long firstNonFinite;
  /// max over elements of (bits of float |out − ref|) << 32 | index: the
  /// largest absolute error and where (float bits of non-negative values
  /// order as integers). Needs M·N < 2^32.
  unsigned long long worstError;
};

} // namespace kiln::gemm_reference

#ifndef __CUDACC__
#include "kiln/cuda/gemm_launcher.h"

#include <string_view>

namespace kiln::gemm_reference {

/// The cubin built from gemm_reference.cu (sm_90a), embedded at build time.
std::string_view cubin();

/// The reference kernel's launch configuration (what its manifest,
/// runtime/tools/gemm_reference.json, says).
inline cuda::GemmKernelConfig kernelConfig() {
  cuda::GemmKernelConfig config;
  config.kernelName = kKernelName;
  config.blockM = kBlockM;
  config.blockN = kBlockN;
  config.stages = 1;
  config.consumerWarpgroups = kConsumerWarpgroups;
  config.sharedMemoryBytes = kSharedBytes;
  config.operandPointers = true;
  return config;
}

} // namespace kiln::gemm_reference
#endif

#endif // KILN_TOOLS_GEMM_REFERENCE_H
