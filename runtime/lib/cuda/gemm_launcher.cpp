//===- gemm_launcher.cpp - FP8 block-scaled GEMM launcher -----------------===//
//
// The host side of compiler/docs/gemm-abi.md. Validation happens before any
// driver call where it can, so that a bad manifest or shape is reported in
// the ABI's terms rather than as the driver's CUDA_ERROR_INVALID_VALUE.
//
//===----------------------------------------------------------------------===//

#include "kiln/cuda/gemm_launcher.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

namespace kiln::cuda {

namespace {

using Json = nlohmann::json;

/// K elements per scale block and per TMA box row (128 bytes of E4M3: the
/// span of SWIZZLE_128B).
constexpr int kBlockK = 128;
constexpr int kAbiVersion = 1;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxSplitK = 64;

std::string kernelContext(const GemmKernelConfig &config) {
  return "kernel " + config.kernelName;
}

std::string launchContext(const GemmKernelConfig &config,
                          const GemmLaunch &launch) {
  return kernelContext(config) + " (" + describeShape(launch.operands) +
         "; grid " + std::to_string(launch.gridSize) + " x " +
         std::to_string(config.threadsPerBlock()) + " threads, " +
         std::to_string(config.launchSharedMemoryBytes()) +
         " bytes of dynamic shared memory)";
}

/// Reads one integer field of a manifest.
int manifestInt(const Json &manifest, const char *field,
                const std::string &origin) {
  auto it = manifest.find(field);
  if (it == manifest.end())
    throw Error(origin + ": field \"" + field +
                "\" is missing; it is required");
  if (!it->is_number_integer())
    throw Error(origin + ": field \"" + field + "\" must be an integer, got " +
                it->dump());
  int64_t value = it->get<int64_t>();
  if (value < 0 || value > std::numeric_limits<int>::max())
    throw Error(origin + ": field \"" + field +
                "\" is out of range: " + std::to_string(value));
  return static_cast<int>(value);
}

/// cuTensorMapEncodeTiled of a dense row-major tensor at `base`: `rank`
/// dims (innermost first), the rank - 1 outer row strides in bytes, box
/// `box`, element strides 1, no interleave, OOB fill none (TMA loads then
/// read zeros outside, stores clip).
CUtensorMap encodeDenseMap(CUtensorMapDataType type, cuuint32_t rank,
                           CUdeviceptr base, const cuuint64_t *dims,
                           const cuuint64_t *strides, const cuuint32_t *box,
                           CUtensorMapSwizzle swizzle,
                           CUtensorMapL2promotion promotion,
                           const std::string &context) {
  CUtensorMap map;
  const cuuint32_t elementStrides[2] = {1, 1};
  KILN_CU(context, cuTensorMapEncodeTiled, &map, type, rank,
          reinterpret_cast<void *>(static_cast<uintptr_t>(base)), dims, strides,
          box, elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
          promotion, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return map;
}

/// One 2-D E4M3 operand as gemm-abi.md describes it: dims {K, rows}, row
/// stride K bytes, box {128, boxRows}, 128-byte swizzle, zero fill outside.
CUtensorMap encodeOperandMap(CUdeviceptr base, int rows, int k, int boxRows,
                             const std::string &context) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBlockK),
                             static_cast<cuuint32_t>(boxRows)};
  return encodeDenseMap(CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, base, dims, strides,
                        box, CU_TENSOR_MAP_SWIZZLE_128B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, context);
}

/// The BF16 output of a TMA-store kernel (gemm-abi.md "TMA store"): dims
/// {N, M}, row stride 2N bytes, box {64, 64} (one consumer warpgroup's rows
/// of a 64-column slice), 128-byte swizzle as the kernel stages it.
CUtensorMap encodeOutputMap(CUdeviceptr base, int rows, int n,
                            const std::string &context) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(n),
                              static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(n) * 2};
  const cuuint32_t box[2] = {64, 64};
  return encodeDenseMap(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, dims,
                        strides, box, CU_TENSOR_MAP_SWIZZLE_128B,
                        CU_TENSOR_MAP_L2_PROMOTION_NONE, context);
}

/// TMA's 16-byte granule in FP32 elements (KilnAttrs.td
/// GemmConfigAttr::kScaleAlignElements).
constexpr int kScaleAlignElements = 4;

/// The scales of a staged-scale kernel (gemm-abi.md "Staged scales"): all
/// of scaleA's or scaleB's FP32 values as one dimension, box {box}, zero
/// fill past the end. The kernel's boxes start at the 16-byte boundary at
/// or below the element it needs (K block kb's scale of a tile's first
/// row, or of its weight block): TMA faults on an unaligned start, so the
/// activation box is BLOCK_M + kScaleAlignElements long and the weight box
/// kScaleAlignElements.
CUtensorMap encodeScaleMap(CUdeviceptr base, int64_t elements, int box,
                           const std::string &context) {
  if (base % 16 != 0)
    throw Error(context + ": the scales must be 16-byte aligned for the "
                          "kernel's TMA loads of them");
  const cuuint64_t dims[1] = {static_cast<cuuint64_t>(elements)};
  const cuuint64_t unusedStrides[1] = {0}; // rank 1: no outer dims
  const cuuint32_t boxDim[1] = {static_cast<cuuint32_t>(box)};
  return encodeDenseMap(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 1, base, dims,
                        unusedStrides, boxDim, CU_TENSOR_MAP_SWIZZLE_NONE,
                        CU_TENSOR_MAP_L2_PROMOTION_NONE, context);
}

/// Checks the kernel's parameter list against gemm-abi.md "Buffers" (tmA,
/// tmB by value, scaleA, scaleB, out, M, N, K; then a, b for reference
/// kernels): a mismatch would otherwise make the kernel read garbage.
void checkParameters(CUfunction function, const GemmKernelConfig &config,
                     const std::string &context) {
  std::vector<size_t> expected = {
      sizeof(CUtensorMap), sizeof(CUtensorMap), 8, 8, 8, 4, 4, 4};
  if (config.splitK > 1)
    expected.push_back(8);
  if (config.grouping != GemmGrouping::None)
    expected.insert(expected.end(), {8, 4});
  if (config.epilogue == GemmEpilogue::SwigluQuantize)
    expected.push_back(8);
  if (config.operandPointers)
    expected.insert(expected.end(), {8, 8});
  if (config.tmaStore)
    expected.push_back(sizeof(CUtensorMap));
  if (config.stagedScales)
    expected.insert(expected.end(), {sizeof(CUtensorMap), sizeof(CUtensorMap)});
  std::vector<size_t> actual;
  // cuFuncGetParamInfo answers CUDA_ERROR_INVALID_VALUE past the last one;
  // the bound only keeps the message short.
  for (size_t index = 0; index < 32; ++index) {
    size_t offset = 0, size = 0;
    CUresult result =
        driver().cuFuncGetParamInfo(function, index, &offset, &size);
    if (result == CUDA_ERROR_INVALID_VALUE)
      break;
    check(result, "cuFuncGetParamInfo", context);
    actual.push_back(size);
  }
  if (actual == expected)
    return;
  auto list = [](const std::vector<size_t> &sizes) {
    std::string text;
    for (size_t size : sizes)
      text += (text.empty() ? "" : ", ") + std::to_string(size);
    return "(" + text + ")";
  };
  throw Error(
      context + ": the kernel's parameter sizes are " + list(actual) +
      "; the ABI needs " + list(expected) +
      " bytes: tmA, tmB (CUtensorMap by value), scaleA, scaleB, out, "
      "M, N, K" +
      (config.splitK > 1 ? ", workspace (split_k > 1)" : "") +
      (config.grouping != GemmGrouping::None ? ", groups, G (grouped)" : "") +
      (config.epilogue == GemmEpilogue::SwigluQuantize
           ? ", outScales (epilogue swiglu_quantize)"
           : "") +
      (config.operandPointers ? ", a, b (operand_pointers)" : "") +
      (config.tmaStore ? ", tmOut (store tma)" : "") +
      (config.stagedScales ? ", tmScaleA, tmScaleB (scale_a tma)" : ""));
}

} // namespace

int GemmKernelConfig::abiSharedMemoryBytes() const {
  int tables =
      grouping == GemmGrouping::None ? 0 : 3 * 4 * (kMaxGemmGroups + 1);
  return stages * (blockM + blockN) * kBlockK + 2 * stages * 8 + tables;
}

int GemmKernelConfig::launchSharedMemoryBytes() const {
  return sharedMemoryBytes > 0 ? sharedMemoryBytes : abiSharedMemoryBytes();
}

void GemmKernelConfig::validate(const std::string &origin) const {
  auto fail = [&](const std::string &problem) {
    throw Error(origin + ": " + problem);
  };
  if (kernelName.empty())
    fail("the kernel name is empty");
  if (consumerWarpgroups < 1 || threadsPerBlock() > kMaxThreadsPerBlock)
    fail("consumer_warpgroups must be 1 to " +
         std::to_string(kMaxThreadsPerBlock / 128 - 1) + ", got " +
         std::to_string(consumerWarpgroups));
  if (blockM != 64 * consumerWarpgroups)
    fail("block_m must be 64 per consumer warpgroup (" +
         std::to_string(64 * consumerWarpgroups) + "), got " +
         std::to_string(blockM));
  if (blockN < 8 || blockN > 256 || blockN % 8 != 0)
    fail("block_n must be a multiple of 8 from 8 to 256 (wgmma N, TMA box), "
         "got " +
         std::to_string(blockN));
  if (stages < 1 || stages > 64)
    fail("stages must be 1 to 64, got " + std::to_string(stages));
  if (splitK < 1 || splitK > kMaxSplitK)
    fail("split_k must be 1 to " + std::to_string(kMaxSplitK) + ", got " +
         std::to_string(splitK));
  if (splitK > 1 && operandPointers)
    fail("split_k > 1 and operand_pointers exclude each other");
  if (splitTail && (splitK < 2 || grouping != GemmGrouping::None || tmaStore ||
                    clusterM != 1 || epilogue != GemmEpilogue::Store))
    fail("split tail needs split_k > 1 and a plain kernel without store tma");
  if (grouping != GemmGrouping::None && operandPointers)
    fail("grouped and operand_pointers exclude each other");
  if (clusterM != 1 && clusterM != 2)
    fail("cluster_m must be 1 or 2, got " + std::to_string(clusterM));
  if (clusterM == 2 && (splitK != 1 || grouping != GemmGrouping::None ||
                        operandPointers || blockN % 16 != 0))
    fail("cluster_m = 2 needs split_k = 1, a plain kernel and block_n a "
         "multiple of 16");
  if (epilogue != GemmEpilogue::Store &&
      (grouping == GemmGrouping::None || blockN != 128 || splitK != 1 ||
       operandPointers))
    fail("epilogue swiglu and swiglu_quantize need a grouped kernel with "
         "block_n 128 and split_k 1");
  if (tmaStore && (splitK != 1 || operandPointers ||
                   epilogue != GemmEpilogue::Store || blockN % 64 != 0))
    fail("store tma needs split_k 1, no epilogue and block_n a multiple of "
         "64");
  if (tmaStore && grouping != GemmGrouping::None && blockN < 128)
    fail("store tma in a grouped kernel needs block_n >= 128");
  if (stagedScales && (splitK != 1 || operandPointers))
    fail("scale_a tma needs split_k 1 and no operand_pointers");
  if (sharedMemoryBytes < 0)
    fail("smem_bytes must not be negative, got " +
         std::to_string(sharedMemoryBytes));
  if (sharedMemoryBytes > 0 && sharedMemoryBytes < abiSharedMemoryBytes())
    fail("smem_bytes " + std::to_string(sharedMemoryBytes) +
         " is below the ABI's stages * (block_m + block_n) * 128 + "
         "16 * stages (+ the group tables of a grouped kernel) = " +
         std::to_string(abiSharedMemoryBytes()));
}

GemmKernelConfig parseGemmManifest(const std::string &json,
                                   const std::string &origin) {
  Json manifest;
  try {
    manifest = Json::parse(json);
  } catch (const Json::parse_error &error) {
    throw Error(origin + ": not valid JSON (" + error.what() + ")");
  }
  if (!manifest.is_object())
    throw Error(origin + ": expected a JSON object, got " + manifest.dump());

  if (auto version = manifest.find("abi_version"); version != manifest.end())
    if (!version->is_number_integer() || version->get<int64_t>() != kAbiVersion)
      throw Error(origin + ": abi_version " + version->dump() +
                  " is not supported; this launcher implements version " +
                  std::to_string(kAbiVersion));

  GemmKernelConfig config;
  auto kernel = manifest.find("kernel");
  if (kernel == manifest.end() || !kernel->is_string())
    throw Error(origin + ": field \"kernel\" must be the kernel's symbol name "
                         "(a string)");
  config.kernelName = kernel->get<std::string>();
  config.blockM = manifestInt(manifest, "block_m", origin);
  config.blockN = manifestInt(manifest, "block_n", origin);
  config.stages = manifestInt(manifest, "stages", origin);
  config.consumerWarpgroups =
      manifestInt(manifest, "consumer_warpgroups", origin);
  // Informational keys the compiler adds are not needed to launch, but one
  // that contradicts the configuration means the manifest is stale.
  if (auto threads = manifest.find("threads"); threads != manifest.end())
    if (!threads->is_number_integer() ||
        threads->get<int64_t>() != config.threadsPerBlock())
      throw Error(origin + ": field \"threads\" is " + threads->dump() +
                  " but consumer_warpgroups " +
                  std::to_string(config.consumerWarpgroups) + " means " +
                  std::to_string(config.threadsPerBlock()));
  if (manifest.contains("smem_bytes"))
    config.sharedMemoryBytes = manifestInt(manifest, "smem_bytes", origin);
  if (manifest.contains("split_k"))
    config.splitK = manifestInt(manifest, "split_k", origin);
  if (auto split = manifest.find("split"); split != manifest.end()) {
    if (*split != "tail")
      throw Error(origin + ": field \"split\" must be \"tail\", got " +
                  split->dump());
    config.splitTail = true;
  }
  if (manifest.contains("cluster_m"))
    config.clusterM = manifestInt(manifest, "cluster_m", origin);
  if (auto grouped = manifest.find("grouped"); grouped != manifest.end()) {
    if (*grouped == "contiguous")
      config.grouping = GemmGrouping::Contiguous;
    else if (*grouped == "masked")
      config.grouping = GemmGrouping::Masked;
    else
      throw Error(origin +
                  ": field \"grouped\" must be \"contiguous\" or "
                  "\"masked\", got " +
                  grouped->dump());
  }
  if (auto epilogue = manifest.find("epilogue"); epilogue != manifest.end()) {
    if (*epilogue != "swiglu" && *epilogue != "swiglu_quantize")
      throw Error(origin +
                  ": field \"epilogue\" must be \"swiglu\" or "
                  "\"swiglu_quantize\", got " +
                  epilogue->dump());
    config.epilogue = *epilogue == "swiglu" ? GemmEpilogue::Swiglu
                                            : GemmEpilogue::SwigluQuantize;
  }
  if (auto store = manifest.find("store"); store != manifest.end()) {
    if (*store != "tma")
      throw Error(origin + ": field \"store\" must be \"tma\", got " +
                  store->dump());
    config.tmaStore = true;
  }
  if (auto scaleA = manifest.find("scale_a"); scaleA != manifest.end()) {
    if (*scaleA != "tma")
      throw Error(origin + ": field \"scale_a\" must be \"tma\", got " +
                  scaleA->dump());
    config.stagedScales = true;
  }
  if (auto wait = manifest.find("griddepcontrol"); wait != manifest.end()) {
    if (*wait != "wait")
      throw Error(origin + ": field \"griddepcontrol\" must be \"wait\", got " +
                  wait->dump());
    config.gridDependencyWait = true;
  }
  if (auto box = manifest.find("a_box"); box != manifest.end()) {
    if (*box != "min_m")
      throw Error(origin + ": field \"a_box\" must be \"min_m\", got " +
                  box->dump());
    config.clampedABox = true;
  }
  if (auto pointers = manifest.find("operand_pointers");
      pointers != manifest.end()) {
    if (!pointers->is_boolean())
      throw Error(origin +
                  ": field \"operand_pointers\" must be true or false");
    config.operandPointers = pointers->get<bool>();
  }
  config.validate(origin);
  return config;
}

GemmKernelConfig loadGemmManifest(const std::string &path) {
  std::ifstream file(path, std::ios::binary);
  if (!file)
    throw Error(path + ": cannot open the kernel manifest");
  std::stringstream text;
  text << file.rdbuf();
  return parseGemmManifest(text.str(), path);
}

std::string toManifestJson(const GemmKernelConfig &config) {
  Json manifest = {{"abi_version", kAbiVersion},
                   {"kernel", config.kernelName},
                   {"block_m", config.blockM},
                   {"block_n", config.blockN},
                   {"stages", config.stages},
                   {"consumer_warpgroups", config.consumerWarpgroups},
                   {"smem_bytes", config.launchSharedMemoryBytes()}};
  if (config.splitK > 1)
    manifest["split_k"] = config.splitK;
  if (config.splitTail)
    manifest["split"] = "tail";
  if (config.clusterM > 1)
    manifest["cluster_m"] = config.clusterM;
  if (config.operandPointers)
    manifest["operand_pointers"] = true;
  if (config.grouping != GemmGrouping::None)
    manifest["grouped"] =
        config.grouping == GemmGrouping::Contiguous ? "contiguous" : "masked";
  if (config.epilogue == GemmEpilogue::Swiglu)
    manifest["epilogue"] = "swiglu";
  if (config.epilogue == GemmEpilogue::SwigluQuantize)
    manifest["epilogue"] = "swiglu_quantize";
  if (config.tmaStore)
    manifest["store"] = "tma";
  if (config.stagedScales)
    manifest["scale_a"] = "tma";
  if (config.gridDependencyWait)
    manifest["griddepcontrol"] = "wait";
  if (config.clampedABox)
    manifest["a_box"] = "min_m";
  return manifest.dump(2) + "\n";
}

std::string describeShape(const GemmOperands &operands) {
  return "M=" + std::to_string(operands.m) +
         " N=" + std::to_string(operands.n) +
         " K=" + std::to_string(operands.k);
}

void checkGemmOperands(const GemmKernelConfig &config,
                       const GemmOperands &operands) {
  std::string where =
      kernelContext(config) + " (" + describeShape(operands) + "): ";
  if (operands.m < 1 || operands.n < 1)
    throw Error(where + "M and N must be at least 1");
  // TMA needs 16-byte row strides; a partial last 128-wide K block is read
  // with zeros past K.
  if (operands.k < 16 || operands.k % 16 != 0)
    throw Error(where + "K must be a positive multiple of 16");
  const std::pair<const char *, CUdeviceptr> buffers[] = {
      {"A", operands.a},
      {"B", operands.b},
      {"scaleA", operands.scaleA},
      {"scaleB", operands.scaleB},
      {"out", operands.out}};
  for (const auto &[name, pointer] : buffers)
    if (pointer == 0)
      throw Error(where + name + " is a null pointer");
  // TMA reads A and B from 16-byte aligned addresses only.
  if (operands.a % 16 != 0 || operands.b % 16 != 0)
    throw Error(where + "A and B must be 16-byte aligned for TMA");
  if (operands.scaleA % 4 != 0 || operands.scaleB % 4 != 0)
    throw Error(where + "scaleA and scaleB must be 4-byte aligned");
  if (operands.out % 2 != 0)
    throw Error(where + "out must be 2-byte aligned");
  // The partials move as 16-byte vectors.
  if (config.splitK > 1 && operands.workspace % 16 != 0)
    throw Error(where + "the split-K workspace must be 16-byte aligned");
  // TMA stores rows of 2N bytes from a 16-byte aligned base.
  if (config.tmaStore && (operands.n % 8 != 0 || operands.out % 16 != 0))
    throw Error(where +
                "a TMA-store kernel needs N a multiple of 8 and out 16-byte "
                "aligned; use a kernel without store = tma");
}

int64_t gemmTileCount(const GemmKernelConfig &config, int m, int n) {
  int64_t tilesM = (int64_t(m) + config.blockM - 1) / config.blockM;
  int64_t tilesN = (int64_t(n) + config.blockN - 1) / config.blockN;
  return tilesM * tilesN;
}

int64_t gemmWorkUnitCount(const GemmKernelConfig &config, int m, int n) {
  return gemmTileCount(config, m, n) * config.splitK;
}

unsigned gemmGridSize(const GemmKernelConfig &config, int m, int n,
                      int multiprocessors) {
  if (config.clusterM > 1) {
    int64_t tilesM = (int64_t(m) + config.blockM - 1) / config.blockM;
    int64_t tilesN = (int64_t(n) + config.blockN - 1) / config.blockN;
    int64_t units = (tilesM + config.clusterM - 1) / config.clusterM * tilesN;
    return static_cast<unsigned>(
        config.clusterM *
        std::min<int64_t>(multiprocessors / config.clusterM, units));
  }
  if (config.splitTail) {
    // Whole waves on every multiprocessor, or (fewer tiles than that)
    // every tile split.
    int64_t tiles = gemmTileCount(config, m, n);
    return static_cast<unsigned>(
        tiles >= multiprocessors
            ? multiprocessors
            : std::min<int64_t>(multiprocessors, tiles * config.splitK));
  }
  return static_cast<unsigned>(
      std::min<int64_t>(multiprocessors, gemmWorkUnitCount(config, m, n)));
}

size_t gemmWorkspaceBytes(const GemmKernelConfig &config, int m, int n,
                          int multiprocessors) {
  if (config.splitK <= 1)
    return 0;
  // One record per split tile: 256 bytes of arrival counters, then the
  // slots.
  size_t tiles = static_cast<size_t>(gemmTileCount(config, m, n));
  if (config.splitTail) {
    // The kernel splits the tiles past its grid's whole waves: fewer than
    // the grid, for this M and any smaller one (so that one allocation
    // serves a plan's varying rows).
    size_t grid =
        multiprocessors > 0 ? gemmGridSize(config, m, n, multiprocessors) : 0;
    tiles = std::min<size_t>(tiles, grid > 0 ? grid : kMaxSplitTailRecords);
  }
  return tiles * (256 + size_t(config.splitK) * config.blockM * config.blockN *
                            sizeof(float));
}

int64_t groupedGemmTileBound(const GemmKernelConfig &config, int rows,
                             int groups, int n) {
  int64_t tilesN = (int64_t(n) + config.blockN - 1) / config.blockN;
  int64_t tilesM =
      config.grouping == GemmGrouping::Masked
          ? int64_t(groups) *
                ((int64_t(rows) + config.blockM - 1) / config.blockM)
          // Σ ⌈c_g / BM⌉ ≤ Σ (⌊c_g / BM⌋ + 1) over the groups with rows.
          : int64_t(rows) / config.blockM + std::min(groups, rows);
  return tilesM * tilesN;
}

unsigned groupedGemmGridSize(const GemmKernelConfig &config, int rows,
                             int groups, int n, int multiprocessors) {
  return static_cast<unsigned>(std::min<int64_t>(
      multiprocessors,
      groupedGemmTileBound(config, rows, groups, n) * config.splitK));
}

size_t groupedGemmWorkspaceBytes(const GemmKernelConfig &config, int rows,
                                 int groups, int n) {
  if (config.splitK <= 1)
    return 0;
  size_t tiles =
      static_cast<size_t>(groupedGemmTileBound(config, rows, groups, n));
  return tiles * (256 + size_t(config.splitK) * config.blockM * config.blockN *
                            sizeof(float));
}

GemmKernel::GemmKernel(const void *image, size_t imageBytes,
                       GemmKernelConfig config)
    : cfg(std::move(config)) {
  cfg.validate(kernelContext(cfg));
  std::string context = kernelContext(cfg);

  // PTX images are compiled by the driver; its log says why one fails.
  std::vector<char> errorLog(8192, '\0');
  CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER,
                            CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *optionValues[] = {
      errorLog.data(),
      reinterpret_cast<void *>(static_cast<uintptr_t>(errorLog.size() - 1))};
  if (!image || imageBytes == 0)
    throw Error(context + ": the module image is empty");
  CUresult loaded =
      driver().cuModuleLoadDataEx(&module, image, 2, options, optionValues);
  if (loaded != CUDA_SUCCESS) {
    module = nullptr;
    std::string log(errorLog.data());
    check(loaded, "cuModuleLoadDataEx",
          context + " (module image of " + std::to_string(imageBytes) +
              " bytes" + (log.empty() ? "" : "; JIT log: " + log) + ")");
  }

  try {
    KILN_CU(context, cuModuleGetFunction, &function, module,
            cfg.kernelName.c_str());
    checkParameters(function, cfg, context);

    CUdevice device = 0;
    KILN_CU(context, cuCtxGetDevice, &device);
    int sharedOptIn = 0;
    KILN_CU(context, cuDeviceGetAttribute, &multiprocessors,
            CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device);
    KILN_CU(context, cuDeviceGetAttribute, &sharedOptIn,
            CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device);
    KILN_CU(context, cuFuncGetAttribute, &attrs.registersPerThread,
            CU_FUNC_ATTRIBUTE_NUM_REGS, function);
    KILN_CU(context, cuFuncGetAttribute, &attrs.staticSharedBytes,
            CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function);
    KILN_CU(context, cuFuncGetAttribute, &attrs.localBytesPerThread,
            CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, function);
    KILN_CU(context, cuFuncGetAttribute, &attrs.maxThreadsPerBlock,
            CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, function);

    if (attrs.maxThreadsPerBlock < cfg.threadsPerBlock())
      throw Error(context + ": the configuration needs " +
                  std::to_string(cfg.threadsPerBlock()) +
                  " threads per block, the kernel allows at most " +
                  std::to_string(attrs.maxThreadsPerBlock) +
                  " (its maxntid / __launch_bounds__, or its registers)");
    int dynamicShared = cfg.launchSharedMemoryBytes();
    if (attrs.staticSharedBytes + dynamicShared > sharedOptIn)
      throw Error(context + ": " + std::to_string(dynamicShared) +
                  " bytes of dynamic plus " +
                  std::to_string(attrs.staticSharedBytes) +
                  " of static shared memory exceed the device's " +
                  std::to_string(sharedOptIn) + " per block");
    KILN_CU(context, cuFuncSetAttribute, function,
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamicShared);
    KILN_CU(context, cuOccupancyMaxActiveBlocksPerMultiprocessor,
            &attrs.residentBlocksPerMultiprocessor, function,
            cfg.threadsPerBlock(), static_cast<size_t>(dynamicShared));
    if (attrs.residentBlocksPerMultiprocessor < 1)
      throw Error(context + ": one block does not fit on a multiprocessor (" +
                  std::to_string(cfg.threadsPerBlock()) + " threads x " +
                  std::to_string(attrs.registersPerThread) + " registers, " +
                  std::to_string(dynamicShared) +
                  " bytes of dynamic shared memory)");
  } catch (...) {
    unload();
    throw;
  }
}

GemmKernel::~GemmKernel() { unload(); }

void GemmKernel::unload() {
  // Unloading can only fail on a lost context, which leaves nothing to free.
  if (module)
    driver().cuModuleUnload(module);
  module = nullptr;
  function = nullptr;
}

GemmKernel::GemmKernel(GemmKernel &&other) noexcept
    : cfg(std::move(other.cfg)), attrs(other.attrs),
      module(std::exchange(other.module, nullptr)),
      function(std::exchange(other.function, nullptr)),
      multiprocessors(other.multiprocessors),
      workspace(std::move(other.workspace)) {}

GemmKernel &GemmKernel::operator=(GemmKernel &&other) noexcept {
  if (this != &other) {
    unload();
    cfg = std::move(other.cfg);
    attrs = other.attrs;
    module = std::exchange(other.module, nullptr);
    function = std::exchange(other.function, nullptr);
    multiprocessors = other.multiprocessors;
    workspace = std::move(other.workspace);
  }
  return *this;
}

int gemmBoxRowsA(const GemmKernelConfig &config, int m) {
  // A kernel with the clamped box (gemm-abi.md "The clamped A box") counts
  // min(BLOCK_M, M) rows per stage: at M < BLOCK_M TMA then reads the rows
  // there are instead of zero-filling the rest of a BLOCK_M box.
  return config.clampedABox ? std::min(config.blockM, m) : config.blockM;
}

GemmLaunch GemmKernel::prepare(const GemmOperands &operands) const {
  if (cfg.grouping != GemmGrouping::None)
    throw Error(kernelContext(cfg) +
                ": a grouped kernel is launched with prepareGrouped()");
  checkGemmOperands(cfg, operands);
  std::string context =
      kernelContext(cfg) + " (" + describeShape(operands) + ")";
  GemmLaunch launch;
  launch.tensorMapA = encodeOperandMap(operands.a, operands.m, operands.k,
                                       gemmBoxRowsA(cfg, operands.m),
                                       context + ", tensor map A");
  // In a cluster each block loads its half of the B tile.
  launch.tensorMapB =
      encodeOperandMap(operands.b, operands.n, operands.k,
                       cfg.blockN / cfg.clusterM, context + ", tensor map B");
  if (cfg.tmaStore)
    launch.tensorMapOut = encodeOutputMap(operands.out, operands.m, operands.n,
                                          context + ", tensor map out");
  if (cfg.stagedScales) {
    int64_t blocksK = (int64_t(operands.k) + kBlockK - 1) / kBlockK;
    int64_t blocksN = (int64_t(operands.n) + kBlockK - 1) / kBlockK;
    launch.tensorMapScaleA = encodeScaleMap(
        operands.scaleA, blocksK * operands.m, cfg.blockM + kScaleAlignElements,
        context + ", tensor map scaleA");
    launch.tensorMapScaleB =
        encodeScaleMap(operands.scaleB, blocksK * blocksN, kScaleAlignElements,
                       context + ", tensor map scaleB");
  }
  launch.operands = operands;
  launch.gridSize = gemmGridSize(cfg, operands.m, operands.n, multiprocessors);
  useOwnWorkspace(
      launch, gemmWorkspaceBytes(cfg, operands.m, operands.n, multiprocessors),
      context);
  return launch;
}

GemmLaunch
GemmKernel::prepareGrouped(const GroupedGemmOperands &grouped) const {
  const GemmOperands &operands = grouped.gemm;
  int groups = grouped.numGroups;
  std::string context = kernelContext(cfg) + " (" + describeShape(operands) +
                        " G=" + std::to_string(groups) + ")";
  if (cfg.grouping == GemmGrouping::None)
    throw Error(context + ": not a grouped kernel; launch it with prepare()");
  checkGemmOperands(cfg, operands);
  if (groups < 1 || groups > kMaxGemmGroups)
    throw Error(context + ": G must be 1 to " + std::to_string(kMaxGemmGroups));
  // Each 128-wide tile pairs 64 gate and 64 up rows whose weight scales are
  // the 128-row blocks t / 2 and I / 128 + t / 2: I must be whole blocks.
  if (cfg.epilogue != GemmEpilogue::Store && operands.n % 256 != 0)
    throw Error(context + ": a SwiGLU kernel needs N = 2 * intermediate a "
                          "multiple of 256");
  if (cfg.epilogue == GemmEpilogue::SwigluQuantize &&
      (grouped.outScales == 0 || grouped.outScales % 4 != 0))
    throw Error(context + ": a quantized SwiGLU kernel needs the output "
                          "scales as a 4-byte aligned device pointer");
  if (grouped.groups == 0 || grouped.groups % 4 != 0)
    throw Error(
        context + ": the group " +
        (cfg.grouping == GemmGrouping::Contiguous ? "offsets" : "counts") +
        " must be a 4-byte aligned device pointer");
  // Contiguous: A and out hold R rows; masked: G slabs of maxRows rows.
  int64_t rowsA = cfg.grouping == GemmGrouping::Masked
                      ? int64_t(groups) * operands.m
                      : int64_t(operands.m);
  int64_t rowsB = int64_t(groups) * operands.n;
  if (rowsA > std::numeric_limits<int32_t>::max() ||
      rowsB > std::numeric_limits<int32_t>::max())
    throw Error(context + ": G * rows and G * N must fit in int32");
  GemmLaunch launch;
  // The clamped box is min(BLOCK_M, M) rows here too: M is R (contiguous)
  // or a slab's rows (masked).
  launch.tensorMapA = encodeOperandMap(
      operands.a, static_cast<int>(rowsA), operands.k,
      gemmBoxRowsA(cfg, operands.m), context + ", tensor map A");
  launch.tensorMapB =
      encodeOperandMap(operands.b, static_cast<int>(rowsB), operands.k,
                       cfg.blockN, context + ", tensor map B");
  // out has as many rows as A (R, or G slabs); the kernel stores only
  // boxes that lie inside a group's rows through it.
  if (cfg.tmaStore)
    launch.tensorMapOut =
        encodeOutputMap(operands.out, static_cast<int>(rowsA), operands.n,
                        context + ", tensor map out");
  // Both layouts hold ceil(K/128) scales per row of A, and per 128-row
  // block of each group's weights.
  if (cfg.stagedScales) {
    int64_t blocksK = (int64_t(operands.k) + kBlockK - 1) / kBlockK;
    int64_t blocksN = (int64_t(operands.n) + kBlockK - 1) / kBlockK;
    launch.tensorMapScaleA = encodeScaleMap(operands.scaleA, blocksK * rowsA,
                                            cfg.blockM + kScaleAlignElements,
                                            context + ", tensor map scaleA");
    launch.tensorMapScaleB =
        encodeScaleMap(operands.scaleB, blocksK * blocksN * groups,
                       kScaleAlignElements, context + ", tensor map scaleB");
  }
  launch.operands = operands;
  launch.groups = grouped.groups;
  launch.numGroups = groups;
  launch.outScales = grouped.outScales;
  launch.gridSize =
      groupedGemmGridSize(cfg, operands.m, groups, operands.n, multiprocessors);
  useOwnWorkspace(
      launch, groupedGemmWorkspaceBytes(cfg, operands.m, groups, operands.n),
      context);
  return launch;
}

void GemmKernel::useOwnWorkspace(GemmLaunch &launch, size_t workspaceBytes,
                                 const std::string &context) const {
  if (workspaceBytes > 0 && launch.operands.workspace == 0) {
    if (workspace.size() < workspaceBytes) {
      // Freeing the smaller one waits for the launches that still use it
      // (cuMemFree synchronizes); the counters start at zero.
      workspace = DeviceBuffer();
      workspace = DeviceBuffer(workspaceBytes, context + ", split-K workspace");
      KILN_CU(context + ", split-K workspace", cuMemsetD8Async, workspace.get(),
              0, workspaceBytes, nullptr);
      KILN_CU(context + ", split-K workspace", cuStreamSynchronize, nullptr);
    }
    launch.operands.workspace = workspace.get();
  }
}

void GemmKernel::launch(const GemmLaunch &prepared, CUstream stream) const {
  if (!function)
    throw Error(kernelContext(cfg) + ": launched after being moved from");
  // The parameter list was checked against the ABI at load.
  CUtensorMap tensorMapA = prepared.tensorMapA;
  CUtensorMap tensorMapB = prepared.tensorMapB;
  CUtensorMap tensorMapOut = prepared.tensorMapOut;
  CUtensorMap tensorMapScaleA = prepared.tensorMapScaleA;
  CUtensorMap tensorMapScaleB = prepared.tensorMapScaleB;
  GemmOperands operands = prepared.operands;
  CUdeviceptr groups = prepared.groups;
  int numGroups = prepared.numGroups;
  CUdeviceptr outScales = prepared.outScales;
  void *parameters[15] = {&tensorMapA,      &tensorMapB,   &operands.scaleA,
                          &operands.scaleB, &operands.out, &operands.m,
                          &operands.n,      &operands.k};
  // After K: the workspace (split-K), then groups and G (grouped), or A and
  // B (reference kernels, which are neither).
  size_t next = 8;
  if (cfg.splitK > 1)
    parameters[next++] = &operands.workspace;
  if (cfg.grouping != GemmGrouping::None) {
    parameters[next++] = &groups;
    parameters[next++] = &numGroups;
  }
  if (cfg.epilogue == GemmEpilogue::SwigluQuantize)
    parameters[next++] = &outScales;
  if (cfg.operandPointers) {
    parameters[next++] = &operands.a;
    parameters[next++] = &operands.b;
  }
  if (cfg.tmaStore)
    parameters[next++] = &tensorMapOut;
  if (cfg.stagedScales) {
    parameters[next++] = &tensorMapScaleA;
    parameters[next++] = &tensorMapScaleB;
  }
  CUresult result =
      launchKernel(function, prepared.gridSize, 1, cfg.threadsPerBlock(),
                   cfg.launchSharedMemoryBytes(), stream, parameters,
                   cfg.gridDependencyWait);
  // The message is built only on failure: timed loops launch back to back.
  if (result != CUDA_SUCCESS)
    check(result, "cuLaunchKernel", launchContext(cfg, prepared));
}

void GemmKernel::launch(const GemmOperands &operands, CUstream stream) const {
  launch(prepare(operands), stream);
}

void GemmKernel::launchGrouped(const GroupedGemmOperands &operands,
                               CUstream stream) const {
  launch(prepareGrouped(operands), stream);
}

} // namespace kiln::cuda
