//===- kiln-gemm-check.cpp - check and time an FP8 block-scaled GEMM ------===//
//
// Loads a compiled GEMM kernel (cubin + manifest, compiler/docs/gemm-abi.md)
// and, for each shape: draws fresh random E4M3 inputs and positive scales,
// poisons the output (and a guard region past it) with a NaN pattern,
// launches through kiln::cuda::GemmKernel, and checks every element against
// the FP64 product of the dequantized operands: nothing left unwritten, no
// NaN/Inf, nothing written past the end, ‖out − ref‖ / ‖ref‖ ≤ 5e-3, the
// same bits when launched again, and (kernels launched as programmatic
// dependents) the same bits after back-to-back launches into the same
// output with other inputs first. Then it times the kernel: warm-up, then the
// median of per-launch CUDA-event times over ≥ 50 launches rotating among
// enough input sets that small shapes do not run out of L2. The HBM
// bandwidth is measured once (a large device-to-device copy) to express
// small-M shapes, which are memory-bound, as a fraction of it.
//
// Grouped kernels (manifest key "grouped") run grouped cases instead: G
// random groups against a stacked [G·N, K] weight in one launch, each group
// checked against the FP64 reference of its own GEMM, the rows outside every
// group (and a guard past out) required to keep their poison. A SwiGLU
// kernel (manifest "epilogue": "swiglu") gets the gate/up weight of every
// expert interleaved by kiln::cuda::interleaveGateUpAsync and is checked
// against silu(g)·u of the FP64 product of the checkpoint-layout weight;
// with --unfused it is also timed against the plain grouped kernel plus the
// runtime's swiglu kernel over [R, 2I]. A quantized SwiGLU kernel
// ("epilogue": "swiglu_quantize") needs --unfused naming the BF16 SwiGLU
// kernel of the same tiling: that kernel's output is checked against the
// FP64 reference as above, quantized by the runtime's quantize, and the
// fused kernel's E4M3 codes and scales must equal the result bit for bit
// (and leave the rows outside the groups poisoned); the BF16 kernel plus
// quantize is timed beside it.
//
// Exit status: 0 all shapes right, 1 a wrong result or a failed launch,
// 2 bad usage or setup (no GPU, unreadable cubin or manifest), 3 a launch
// that did not finish in time (hung kernel; the process exits at once).
//
//===----------------------------------------------------------------------===//

#include "gemm_reference.h"

#include "kiln/cuda/driver.h"
#include "kiln/cuda/gemm_launcher.h"
#include "kiln/cuda/model_kernels.h"
#include "kiln/cuda/swiglu_weights.h"
#include "kiln/error.h"
#include "kiln/fnv1a.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using namespace kiln;
using namespace kiln::cuda;
namespace reference = kiln::gemm_reference;
using Json = nlohmann::json;

constexpr double kTolerance = 5e-3;
/// Scale magnitudes: dequantized A ~ N(0, 0.8), B ~ N(0, 0.1) (weights).
constexpr float kScaleBaseA = 1.0f / 128;
constexpr float kScaleBaseB = 1.0f / 1024;

const char *const kUsage =
    R"(usage: kiln-gemm-check [options] KERNEL.cubin [MANIFEST.json]

Checks and times an FP8 block-scaled GEMM kernel (compiler/docs/gemm-abi.md).
The manifest defaults to KERNEL.json beside the cubin; the options below
override its fields (or replace it when all of them are given).

  --shapes LIST          MxNxK[,MxNxK...] (default: the 18 DeepSeek-V3 shapes,
                         M in 1,7,300,1000 on 2112x7168, and 300x129x1024)
  --runs N               timed launches per shape, median reported (50)
  --warmup N             untimed launches first (10)
  --no-time              check only (also skips the HBM measurement)
  --back-to-back         time batches of --runs launches with one event pair
                         around each batch (no events between launches, as in
                         a CUDA graph or a busy stream) and report the median,
                         min and max of 5 batches' per-launch averages; the
                         default brackets every launch with its own events
  --launch-times PATH    append every timed launch's µs to PATH, one line
                         each: what was timed, the launch's index (its
                         operand set is the index modulo the sets), µs; a
                         trend along the index is the clock, a pattern
                         with the sets' period their placement
  --seed N               base seed of the random inputs (default: random)
  --device N             CUDA device ordinal (0)
  --timeout-s S          give up on a launch after S seconds (60)
  --label NAME           name in the table and JSON (default: kernel name)
  --json PATH            write the results as JSON
  --hash-out             print a 64-bit FNV-1a hash of each shape's checked
                         output (and put it in the JSON): two builds of one
                         kernel that must agree bitwise (a SASS-patched one,
                         a refactor) give equal hashes with the same --seed
  --kernel NAME  --block-m N  --block-n N  --stages N
  --consumer-warpgroups N  --smem-bytes N  --operand-pointers

Grouped kernels (manifest "grouped": "contiguous" or "masked"):
  --cases LIST           G:R:NxK:DIST[,...]: G groups; contiguous: R rows of
                         A in all, DIST balanced, skewed (group g gets rows in
                         proportion to 1/(g+1)), random (empty groups, a
                         1-row group, rows before the first and after the
                         last group) or routed (each row to a uniformly
                         drawn group, as top-k routing spreads tokens);
                         masked: R rows per slab, DIST full or
                         random (counts in [0, R], one 0, one 1, one R).
                         Default: small random cases with ragged N
                         (N % 8 == 0 for store tma kernels).
  --reference-gflop X    check groups against the FP64 reference until X
                         GFLOP of them are checked (default: all groups)
  --unfused KERNEL.cubin SwiGLU kernels: also time this plain grouped kernel
                         (manifest beside it, same layout) followed by the
                         runtime's swiglu kernel over its [R, 2I] output,
                         and both with the intermediate's FP8 quantization
                         (swiglu_quantize, or quantize after this kernel).
                         Quantized SwiGLU kernels: the BF16 SwiGLU kernel of
                         the same tiling, the bitwise reference (above)
)";

struct Shape {
  int m = 0, n = 0, k = 0;
  std::string text() const {
    return std::to_string(m) + "x" + std::to_string(n) + "x" +
           std::to_string(k);
  }
};

/// The DeepSeek-V3 projections (N×K) at decode (M = 64, 128) and prefill
/// (M = 4096) batch sizes; ragged M on one of them; and an odd N whose rows
/// are not even 4-byte aligned. Keep in sync with bench/gemm_cublas.py.
std::vector<Shape> defaultShapes() {
  const int nk[][2] = {{2112, 7168},  {24576, 1536}, {32768, 512},
                       {7168, 16384}, {4096, 7168},  {7168, 2048}};
  std::vector<Shape> shapes;
  for (auto [n, k] : nk)
    for (int m : {64, 128, 4096})
      shapes.push_back({m, n, k});
  for (int m : {1, 7, 300, 1000})
    shapes.push_back({m, 2112, 7168});
  shapes.push_back({300, 129, 1024});
  return shapes;
}

struct Options {
  std::string cubinPath;
  std::string manifestPath;
  std::string label;
  std::string jsonPath;
  std::vector<Shape> shapes = defaultShapes();
  int runs = 50;
  int warmup = 10;
  int device = 0;
  bool time = true;
  bool backToBack = false;
  bool hashOut = false;
  /// --launch-times: where every timed launch's µs goes, in launch order.
  std::string launchTimesPath;
  double timeoutSeconds = 60;
  std::optional<uint64_t> seed;
  // Manifest overrides.
  std::optional<std::string> kernelName;
  std::optional<int> blockM, blockN, stages, consumerWarpgroups, smemBytes;
  bool operandPointers = false;
  // Grouped kernels.
  std::string cases;
  double referenceGflop = 0;
  std::string unfusedCubinPath;
};

[[noreturn]] void usageError(const std::string &message) {
  std::fprintf(stderr, "kiln-gemm-check: %s\n\n%s", message.c_str(), kUsage);
  std::exit(2);
}

long parseInteger(const std::string &option, const std::string &text, long low,
                  long high) {
  char *end = nullptr;
  errno = 0;
  long value = std::strtol(text.c_str(), &end, 0);
  if (text.empty() || *end != '\0' || errno != 0 || value < low || value > high)
    usageError(option + " needs an integer from " + std::to_string(low) +
               " to " + std::to_string(high) + ", got \"" + text + "\"");
  return value;
}

std::vector<Shape> parseShapes(const std::string &list) {
  std::vector<Shape> shapes;
  std::stringstream stream(list);
  std::string item;
  while (std::getline(stream, item, ',')) {
    Shape shape;
    char x1 = 0, x2 = 0;
    std::istringstream parse(item);
    std::string rest;
    if (!(parse >> shape.m >> x1 >> shape.n >> x2 >> shape.k) || x1 != 'x' ||
        x2 != 'x' || (parse >> rest))
      usageError("--shapes: \"" + item + "\" is not MxNxK");
    if (shape.m < 1 || shape.n < 1 || shape.k < 128 || shape.k % 128 != 0)
      usageError("--shapes: " + item +
                 ": M, N must be >= 1 and K a positive multiple of 128");
    shapes.push_back(shape);
  }
  if (shapes.empty())
    usageError("--shapes: no shape given");
  return shapes;
}

Options parseOptions(int argc, char **argv) {
  Options options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        usageError(arg + " needs a value");
      return argv[++i];
    };
    auto integer = [&](long low, long high) {
      return static_cast<int>(parseInteger(arg, value(), low, high));
    };
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--shapes") {
      options.shapes = parseShapes(value());
    } else if (arg == "--runs") {
      options.runs = integer(1, 100000);
    } else if (arg == "--warmup") {
      options.warmup = integer(0, 100000);
    } else if (arg == "--no-time") {
      options.time = false;
    } else if (arg == "--back-to-back") {
      options.backToBack = true;
    } else if (arg == "--hash-out") {
      options.hashOut = true;
    } else if (arg == "--launch-times") {
      options.launchTimesPath = value();
    } else if (arg == "--seed") {
      std::string text = value();
      char *end = nullptr;
      options.seed = std::strtoull(text.c_str(), &end, 0);
      if (text.empty() || *end != '\0')
        usageError("--seed needs an integer, got \"" + text + "\"");
    } else if (arg == "--device") {
      options.device = integer(0, 1023);
    } else if (arg == "--timeout-s") {
      options.timeoutSeconds = integer(1, 86400);
    } else if (arg == "--label") {
      options.label = value();
    } else if (arg == "--json") {
      options.jsonPath = value();
    } else if (arg == "--kernel") {
      options.kernelName = value();
    } else if (arg == "--block-m") {
      options.blockM = integer(1, 1024);
    } else if (arg == "--block-n") {
      options.blockN = integer(1, 1024);
    } else if (arg == "--stages") {
      options.stages = integer(1, 64);
    } else if (arg == "--consumer-warpgroups") {
      options.consumerWarpgroups = integer(1, 7);
    } else if (arg == "--smem-bytes") {
      options.smemBytes = integer(0, 1 << 30);
    } else if (arg == "--operand-pointers") {
      options.operandPointers = true;
    } else if (arg == "--cases") {
      options.cases = value();
    } else if (arg == "--unfused") {
      options.unfusedCubinPath = value();
    } else if (arg == "--reference-gflop") {
      std::string text = value();
      char *end = nullptr;
      options.referenceGflop = std::strtod(text.c_str(), &end);
      if (text.empty() || *end != '\0' || !(options.referenceGflop >= 0))
        usageError("--reference-gflop needs a number >= 0");
    } else if (arg.size() > 1 && arg[0] == '-') {
      usageError("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.empty() || positional.size() > 2)
    usageError("expected KERNEL.cubin and optionally MANIFEST.json");
  options.cubinPath = positional[0];
  if (positional.size() == 2) {
    options.manifestPath = positional[1];
  } else {
    std::string base = options.cubinPath;
    if (base.size() > 6 && base.compare(base.size() - 6, 6, ".cubin") == 0)
      base.resize(base.size() - 6);
    options.manifestPath = base + ".json";
  }
  return options;
}

/// The manifest (if present) with the command line's overrides applied.
GemmKernelConfig kernelConfig(const Options &options) {
  bool allGiven = options.kernelName && options.blockM && options.blockN &&
                  options.stages && options.consumerWarpgroups;
  GemmKernelConfig config;
  if (!allGiven || std::ifstream(options.manifestPath).good())
    config = loadGemmManifest(options.manifestPath);
  if (options.kernelName)
    config.kernelName = *options.kernelName;
  if (options.blockM)
    config.blockM = *options.blockM;
  if (options.blockN)
    config.blockN = *options.blockN;
  if (options.stages)
    config.stages = *options.stages;
  if (options.consumerWarpgroups)
    config.consumerWarpgroups = *options.consumerWarpgroups;
  if (options.smemBytes)
    config.sharedMemoryBytes = *options.smemBytes;
  if (options.operandPointers)
    config.operandPointers = true;
  config.validate("kernel configuration (" + options.manifestPath +
                  " and the command line)");
  return config;
}

std::string readFile(const std::string &path) {
  std::ifstream file(path, std::ios::binary);
  if (!file)
    throw Error(path + ": cannot open");
  std::stringstream bytes;
  bytes << file.rdbuf();
  return bytes.str();
}

uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

std::string format(const char *pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), pattern, value);
  return buffer;
}

//===----------------------------------------------------------------------===//
// CUDA helpers
//===----------------------------------------------------------------------===//

class Event {
public:
  explicit Event(unsigned flags = CU_EVENT_DEFAULT) {
    KILN_CU("a CUDA event", cuEventCreate, &event, flags);
  }
  ~Event() {
    if (event)
      driver().cuEventDestroy(event);
  }
  Event(Event &&other) noexcept : event(std::exchange(other.event, nullptr)) {}
  Event(const Event &) = delete;
  Event &operator=(const Event &) = delete;
  CUevent get() const { return event; }

private:
  CUevent event = nullptr;
};

class Stream {
public:
  Stream() { KILN_CU("a CUDA stream", cuStreamCreate, &stream, 0); }
  ~Stream() { driver().cuStreamDestroy(stream); }
  Stream(const Stream &) = delete;
  Stream &operator=(const Stream &) = delete;
  CUstream get() const { return stream; }

private:
  CUstream stream = nullptr;
};

/// Waits for everything enqueued on `stream` so far, polling, so that a hung
/// kernel ends the process with a message instead of stalling it (and the
/// device session) until an outer timeout: a deadlocked kernel cannot be
/// stopped from the host, only its context torn down at exit.
void waitFor(CUstream stream, double timeoutSeconds, const std::string &what) {
  Event done(CU_EVENT_DISABLE_TIMING);
  KILN_CU(what, cuEventRecord, done.get(), stream);
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::duration<double>(timeoutSeconds);
  while (true) {
    CUresult result = driver().cuEventQuery(done.get());
    if (result == CUDA_SUCCESS)
      return;
    if (result != CUDA_ERROR_NOT_READY)
      check(result, "cuEventQuery", "waiting for " + what);
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr,
                   "kiln-gemm-check: %s did not finish within %.0f s: the "
                   "kernel hangs (an mbarrier never completes?) or is far "
                   "too slow; exiting\n",
                   what.c_str(), timeoutSeconds);
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

/// The checking kernels of the embedded reference cubin.
class CheckKernels {
public:
  CheckKernels() {
    std::string_view image = reference::cubin();
    KILN_CU("the embedded checking kernels", cuModuleLoadDataEx, &module,
            image.data(), 0, nullptr, nullptr);
    for (auto [function, name] :
         {std::pair{&fillE4M3, reference::kFillE4M3},
          std::pair{&fillScales, reference::kFillScales},
          std::pair{&referenceF64, reference::kReferenceF64},
          std::pair{&referenceSwigluF64, reference::kReferenceSwigluF64},
          std::pair{&countNotEqual, reference::kCountNotEqual},
          std::pair{&countMismatches, reference::kCountMismatches},
          std::pair{&spin, reference::kSpin}})
      KILN_CU(std::string("checking kernel ") + name, cuModuleGetFunction,
              function, module, name);
  }
  ~CheckKernels() { driver().cuModuleUnload(module); }
  CheckKernels(const CheckKernels &) = delete;
  CheckKernels &operator=(const CheckKernels &) = delete;

  void fillValues(CUdeviceptr values, unsigned long long count, uint64_t seed,
                  CUstream stream) const {
    unsigned long long seedArg = seed;
    void *args[] = {&values, &count, &seedArg};
    launch(fillE4M3, reference::kFillE4M3, 1024, 1, 256, 0, stream, args);
  }

  void fillPositiveScales(CUdeviceptr scales, unsigned long long count,
                          uint64_t seed, float base, CUstream stream) const {
    unsigned long long seedArg = seed;
    void *args[] = {&scales, &count, &seedArg, &base};
    launch(fillScales, reference::kFillScales, 256, 1, 256, 0, stream, args);
  }

  void compareWithReference(const GemmOperands &operands, CUdeviceptr stats,
                            CUstream stream) const {
    CUdeviceptr a = operands.a, b = operands.b, scaleA = operands.scaleA,
                scaleB = operands.scaleB, out = operands.out;
    int m = operands.m, n = operands.n, k = operands.k;
    void *args[] = {&a, &b, &scaleA, &scaleB, &out, &m, &n, &k, &stats};
    const unsigned tile = reference::kCheckTile;
    launch(referenceF64, reference::kReferenceF64, (n + tile - 1) / tile,
           (m + tile - 1) / tile, 256, 0, stream, args);
  }

  /// `operands` as for a plain GEMM with B in the checkpoint's gate/up
  /// layout (N = 2I rows); `out` is [M, I].
  void compareWithSwigluReference(const GemmOperands &operands,
                                  CUdeviceptr stats, CUstream stream) const {
    CUdeviceptr a = operands.a, b = operands.b, scaleA = operands.scaleA,
                scaleB = operands.scaleB, out = operands.out;
    int m = operands.m, n = operands.n, k = operands.k;
    void *args[] = {&a, &b, &scaleA, &scaleB, &out, &m, &n, &k, &stats};
    const unsigned tile = reference::kCheckTile;
    launch(referenceSwigluF64, reference::kReferenceSwigluF64,
           (n / 2 + tile - 1) / tile, (m + tile - 1) / tile, 256, 0, stream,
           args);
  }

  void countDiffering(CUdeviceptr values, unsigned long long count,
                      uint16_t expected, CUdeviceptr counter,
                      CUstream stream) const {
    unsigned short expectedArg = expected;
    void *args[] = {&values, &count, &expectedArg, &counter};
    launch(countNotEqual, reference::kCountNotEqual, 512, 1, 256, 0, stream,
           args);
  }

  void countMismatching(CUdeviceptr x, CUdeviceptr y, unsigned long long count,
                        CUdeviceptr counter, CUstream stream) const {
    void *args[] = {&x, &y, &count, &counter};
    launch(countMismatches, reference::kCountMismatches, 512, 1, 256, 0, stream,
           args);
  }

  void busyWait(unsigned long long nanoseconds, CUstream stream) const {
    void *args[] = {&nanoseconds};
    launch(spin, reference::kSpin, 1, 1, 1, 0, stream, args);
  }

private:
  static void launch(CUfunction function, const char *name, unsigned gridX,
                     unsigned gridY, unsigned threads, unsigned shared,
                     CUstream stream, void **args) {
    KILN_CU(std::string("checking kernel ") + name, cuLaunchKernel, function,
            gridX, gridY, 1, threads, 1, 1, shared, stream, args, nullptr);
  }

  CUmodule module = nullptr;
  CUfunction fillE4M3 = nullptr, fillScales = nullptr, referenceF64 = nullptr,
             referenceSwigluF64 = nullptr, countNotEqual = nullptr,
             countMismatches = nullptr, spin = nullptr;
};

template <typename T>
T copyToHost(CUdeviceptr source, const std::string &what) {
  T value;
  KILN_CU(what, cuMemcpyDtoH, &value, source, sizeof(T));
  return value;
}

template <typename T>
std::vector<T> copyToHost(CUdeviceptr source, size_t count,
                          const std::string &what) {
  std::vector<T> values(count);
  KILN_CU(what, cuMemcpyDtoH, values.data(), source, count * sizeof(T));
  return values;
}

//===----------------------------------------------------------------------===//
// One shape
//===----------------------------------------------------------------------===//

struct DeviceInfo {
  std::string name;
  int multiprocessors = 0;
  int l2Bytes = 0;
  double hbmGBps = 0; // measured; 0 when not measured
};

/// Operand sets to cycle through when timing: enough that one pass over
/// them is 4x the L2, so each launch reads its operands from HBM as in a
/// real layer; 2 to 64, within half the free memory. 1 when not timing.
int timedSetCount(const Options &options, const DeviceInfo &device,
                  size_t setBytes) {
  if (!options.time)
    return 1;
  size_t wanted = (4 * size_t(device.l2Bytes) + setBytes - 1) / setBytes;
  size_t freeBytes = 0, totalBytes = 0;
  KILN_CU("memory info", cuMemGetInfo, &freeBytes, &totalBytes);
  size_t affordable = freeBytes / 2 / setBytes;
  return int(std::clamp<size_t>(std::min(wanted, affordable), 2, 64));
}

struct ShapeResult {
  Shape shape;
  std::string status = "ERROR"; // ok, WRONG, ERROR
  std::string detail;
  double relativeError = NAN;
  double medianUs = NAN, minUs = NAN, maxUs = NAN;
  int sets = 0;
  /// FNV-1a over the checked output's bytes (--hash-out), else empty.
  std::string outHash;

  double flops() const { return 2.0 * shape.m * shape.n * double(shape.k); }
  /// A + B + scales + out, each moved once.
  double bytes() const {
    double blocksK = shape.k / 128.0;
    return double(shape.m) * shape.k + double(shape.n) * shape.k +
           4.0 * (shape.m * blocksK + std::ceil(shape.n / 128.0) * blocksK) +
           2.0 * shape.m * shape.n;
  }
};

/// One input/output set in device memory.
struct OperandSet {
  DeviceBuffer a, b, scaleA, scaleB, out;
  GemmOperands operands;
};

/// E4M3FN and BF16 from their bit fields (the tool links no runtime library,
/// so that it runs on the GPU machine as one file).
double decodeE4M3(uint8_t bits) {
  int exponent = (bits >> 3) & 0xF, mantissa = bits & 7;
  if (exponent == 0xF && mantissa == 7)
    return NAN;
  double magnitude = exponent == 0 ? std::ldexp(mantissa, -9)
                                   : std::ldexp(8 + mantissa, exponent - 10);
  return (bits & 0x80) ? -magnitude : magnitude;
}

float decodeBF16(uint16_t bits) {
  uint32_t word = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

/// The product of row `row` of A and row `col` of B from the host, in FP64:
/// the reference value quoted for the worst element.
double hostReference(const OperandSet &set, int row, int col) {
  const GemmOperands &op = set.operands;
  const int blocksK = op.k / 128;
  auto a = copyToHost<uint8_t>(op.a + size_t(row) * op.k, op.k, "row of A");
  auto b = copyToHost<uint8_t>(op.b + size_t(col) * op.k, op.k, "row of B");
  auto scaleA = copyToHost<float>(op.scaleA, size_t(blocksK) * op.m, "scaleA");
  auto scaleB =
      copyToHost<float>(op.scaleB + size_t(col / 128) * blocksK * sizeof(float),
                        blocksK, "scaleB");
  double sum = 0;
  for (int k = 0; k < op.k; ++k)
    sum += decodeE4M3(a[k]) * scaleA[size_t(k / 128) * op.m + row] *
           decodeE4M3(b[k]) * scaleB[k / 128];
  return sum;
}

std::string position(unsigned long long index, int n) {
  return "(row " + std::to_string(index / n) + ", col " +
         std::to_string(index % n) + ")";
}

class ShapeRunner {
public:
  ShapeRunner(const GemmKernel &kernel, const CheckKernels &check,
              const Options &options, const DeviceInfo &device, CUstream stream)
      : kernel(kernel), check(check), options(options), device(device),
        stream(stream) {}

  ShapeResult run(const Shape &shape, uint64_t seed) const;

private:
  /// Poisons out and its guard, launches once, waits.
  void poisonAndLaunch(const OperandSet &set, const std::string &what) const;
  /// Guard elements no longer holding the poison.
  unsigned long long guardWrites(const OperandSet &set, size_t outElements,
                                 size_t guardElements,
                                 const DeviceBuffer &counter) const;
  /// Elements of set 0's output that differ from `expected` after
  /// back-to-back launches with set 1's inputs into it (kernels that may be
  /// launched as programmatic dependents; 0 otherwise).
  unsigned long long dependentLaunchMismatches(
      const std::vector<OperandSet> &sets, const DeviceBuffer &expected,
      const DeviceBuffer &counter, const std::string &what) const;
  void time(const std::vector<OperandSet> &sets, ShapeResult &result) const;

  const GemmKernel &kernel;
  const CheckKernels &check;
  const Options &options;
  const DeviceInfo &device;
  CUstream stream;
};

void ShapeRunner::poisonAndLaunch(const OperandSet &set,
                                  const std::string &what) const {
  KILN_CU(what, cuMemsetD16Async, set.out.get(), reference::kPoisonBF16,
          set.out.size() / 2, stream);
  kernel.launch(set.operands, stream);
  waitFor(stream, options.timeoutSeconds, what);
}

unsigned long long ShapeRunner::dependentLaunchMismatches(
    const std::vector<OperandSet> &sets, const DeviceBuffer &expected,
    const DeviceBuffer &counter, const std::string &what) const {
  // A kernel launched as a programmatic dependent (gemm-abi.md "Dependent
  // launch") overlaps the previous one's tail: launches into one output,
  // another set's inputs and then the checked set's, eight times back to
  // back, must end with the checked bits. A kernel that touched memory
  // before its griddepcontrol.wait would leave some of the other products
  // (or of the shared split-K workspace) behind.
  if (!kernel.config().gridDependencyWait || sets.size() < 2)
    return 0;
  GemmOperands other = sets[1].operands;
  other.out = sets[0].operands.out;
  for (int round = 0; round < 8; ++round) {
    kernel.launch(other, stream);
    kernel.launch(sets[0].operands, stream);
  }
  waitFor(stream, options.timeoutSeconds, what + ", dependent launches");
  KILN_CU("dependent launch check", cuMemsetD8Async, counter.get(), 0,
          counter.size(), stream);
  check.countMismatching(expected.get(), sets[0].out.get(), expected.size() / 2,
                         counter.get(), stream);
  waitFor(stream, options.timeoutSeconds, "dependent launch check");
  return copyToHost<unsigned long long>(counter.get(), "mismatches");
}

unsigned long long ShapeRunner::guardWrites(const OperandSet &set,
                                            size_t outElements,
                                            size_t guardElements,
                                            const DeviceBuffer &counter) const {
  KILN_CU("guard check", cuMemsetD8Async, counter.get(), 0, counter.size(),
          stream);
  check.countDiffering(set.out.get() + outElements * 2, guardElements,
                       reference::kPoisonBF16, counter.get(), stream);
  waitFor(stream, options.timeoutSeconds, "guard check");
  return copyToHost<unsigned long long>(counter.get(), "guard count");
}

ShapeResult ShapeRunner::run(const Shape &shape, uint64_t seed) const {
  ShapeResult result;
  result.shape = shape;
  const GemmKernelConfig &config = kernel.config();
  const size_t m = shape.m, n = shape.n, k = shape.k, blocksK = k / 128;
  if (m * n >= (1ULL << 32))
    throw Error("shape " + shape.text() +
                ": the checker needs M*N < 2^32 elements");
  const size_t outElements = m * n;
  // A kernel that writes rows >= M lands here: up to a tile's worth.
  const size_t guardElements = size_t(config.blockM) * n + config.blockN;
  const size_t bytesA = m * k, bytesB = n * k;
  const size_t bytesScaleA = 4 * blocksK * m;
  const size_t bytesScaleB = 4 * ((n + 127) / 128) * blocksK;
  const size_t bytesOut = 2 * (outElements + guardElements);
  const size_t setBytes =
      bytesA + bytesB + bytesScaleA + bytesScaleB + bytesOut;

  int sets = timedSetCount(options, device, setBytes);
  result.sets = sets;

  std::vector<OperandSet> operandSets;
  for (int s = 0; s < sets; ++s) {
    std::string what = shape.text() + " set " + std::to_string(s) + ": ";
    OperandSet set{DeviceBuffer(bytesA, what + "A"),
                   DeviceBuffer(bytesB, what + "B"),
                   DeviceBuffer(bytesScaleA, what + "scaleA"),
                   DeviceBuffer(bytesScaleB, what + "scaleB"),
                   DeviceBuffer(bytesOut, what + "out"),
                   {}};
    set.operands = {set.a.get(),      set.b.get(),   set.scaleA.get(),
                    set.scaleB.get(), set.out.get(), shape.m,
                    shape.n,          shape.k};
    uint64_t setSeed = splitmix(seed + s);
    check.fillValues(set.a.get(), bytesA, splitmix(setSeed + 1), stream);
    check.fillValues(set.b.get(), bytesB, splitmix(setSeed + 2), stream);
    check.fillPositiveScales(set.scaleA.get(), bytesScaleA / 4,
                             splitmix(setSeed + 3), kScaleBaseA, stream);
    check.fillPositiveScales(set.scaleB.get(), bytesScaleB / 4,
                             splitmix(setSeed + 4), kScaleBaseB, stream);
    operandSets.push_back(std::move(set));
  }
  waitFor(stream, options.timeoutSeconds, shape.text() + ": random inputs");

  // The checked launch on set 0.
  const OperandSet &checked = operandSets[0];
  std::string launchWhat =
      "kernel " + config.kernelName + " (" + shape.text() + ")";
  poisonAndLaunch(checked, launchWhat);

  DeviceBuffer statsBuffer(sizeof(reference::CheckStats), "check statistics");
  reference::CheckStats initial{};
  initial.firstUnwritten = initial.firstNonFinite = ~0ULL;
  KILN_CU("check statistics", cuMemcpyHtoD, statsBuffer.get(), &initial,
          sizeof(initial));
  check.compareWithReference(checked.operands, statsBuffer.get(), stream);
  waitFor(stream, options.timeoutSeconds, shape.text() + ": FP64 reference");
  auto stats =
      copyToHost<reference::CheckStats>(statsBuffer.get(), "check statistics");
  DeviceBuffer counter(sizeof(unsigned long long), "counter");
  unsigned long long guard =
      guardWrites(checked, outElements, guardElements, counter);

  result.relativeError =
      std::sqrt(stats.sumSquaredError / stats.sumSquaredReference);
  std::vector<std::string> problems;
  if (stats.unwritten)
    problems.push_back(std::to_string(stats.unwritten) +
                       " elements never written, first at " +
                       position(stats.firstUnwritten, shape.n));
  if (stats.nonFinite)
    problems.push_back(std::to_string(stats.nonFinite) +
                       " elements NaN or Inf, first at " +
                       position(stats.firstNonFinite, shape.n));
  if (guard)
    problems.push_back(std::to_string(guard) +
                       " elements written past the end of out (rows >= M)");
  if (!(result.relativeError <= kTolerance))
    problems.push_back("relative error " +
                       format("%.3g", result.relativeError) + " > " +
                       format("%.0e", kTolerance));
  if (stats.worstError) {
    unsigned long long index = stats.worstError & 0xFFFFFFFFULL;
    uint32_t errorBits = uint32_t(stats.worstError >> 32);
    float worstError;
    std::memcpy(&worstError, &errorBits, sizeof(worstError));
    auto outBits =
        copyToHost<uint16_t>(checked.out.get() + index * 2, "worst element");
    double expected = hostReference(checked, int(index / n), int(index % n));
    double rms = std::sqrt(stats.sumSquaredReference / double(outElements));
    result.detail = "worst |err| " + format("%.3g", worstError) + " at " +
                    position(index, shape.n) + ": out " +
                    format("%.6g", decodeBF16(outBits)) + ", ref " +
                    format("%.6g", expected) + " (rms of ref " +
                    format("%.3g", rms) + ")";
  }

  if (options.hashOut) {
    auto bytes = copyToHost<uint8_t>(checked.out.get(), outElements * 2,
                                     "checked output");
    uint64_t hash = kiln::fnv1a64(bytes.data(), bytes.size());
    char digits[17];
    std::snprintf(digits, sizeof(digits), "%016llx",
                  static_cast<unsigned long long>(hash));
    result.outHash = digits;
    std::printf("out hash %s %s\n", shape.text().c_str(),
                result.outHash.c_str());
  }

  // Timing, then the same launch again: it must reproduce the checked bits.
  DeviceBuffer firstOut(outElements * 2, "copy of the checked output");
  KILN_CU("copy of the checked output", cuMemcpyDtoDAsync, firstOut.get(),
          checked.out.get(), outElements * 2, stream);
  if (options.time)
    time(operandSets, result);
  poisonAndLaunch(checked, launchWhat + ", repeated");
  KILN_CU("repeat check", cuMemsetD8Async, counter.get(), 0, counter.size(),
          stream);
  check.countMismatching(firstOut.get(), checked.out.get(), outElements,
                         counter.get(), stream);
  waitFor(stream, options.timeoutSeconds, "repeat check");
  auto differing = copyToHost<unsigned long long>(counter.get(), "mismatches");
  guard = guardWrites(checked, outElements, guardElements, counter);
  if (differing)
    problems.push_back(std::to_string(differing) +
                       " elements differ when launched again on the same "
                       "inputs (a race?)");
  if (guard)
    problems.push_back(std::to_string(guard) +
                       " elements written past the end of out on the repeat");
  if (unsigned long long raced =
          dependentLaunchMismatches(operandSets, firstOut, counter, launchWhat))
    problems.push_back(
        std::to_string(raced) +
        " elements differ after back-to-back launches into the same output "
        "with other inputs first (a dependent launch ran early?)");

  if (problems.empty()) {
    result.status = "ok";
  } else {
    result.status = "WRONG";
    std::string joined;
    for (const std::string &problem : problems)
      joined += (joined.empty() ? "" : "; ") + problem;
    result.detail =
        joined + (result.detail.empty() ? "" : "; ") + result.detail;
  }
  return result;
}

/// Median, min and max in µs of `options.runs` launches rotating over
/// `launches`, after `options.warmup` untimed ones.
struct Timing {
  double medianUs = NAN, minUs = NAN, maxUs = NAN;
};
/// The same for any work: `enqueue(i)` enqueues the i-th repetition.
Timing timeWork(const CheckKernels &check, const Options &options,
                const std::function<void(int)> &enqueue, CUstream stream,
                const std::string &what) {
  // The first timed loop of a process measured up to 10% slower than the
  // same kernel and shape timed later in it (H100, 2026-11-24: 64 x 24576 x
  // 1536 21.7 us first, 19.5 us second), whichever kernel came first, while
  // repeating a whole loop of a long shape first made it run hot and slow
  // (7168 x 16384: +9%). So the process's first shape is launched for about
  // kWarmUpMs of GPU time, untimed, before its warm-up launches.
  static bool warmedUp = false;
  if (!warmedUp) {
    warmedUp = true;
    constexpr double kWarmUpMs = 20.0;
    Event start, stop;
    KILN_CU("warm-up event", cuEventRecord, start.get(), stream);
    enqueue(0);
    KILN_CU("warm-up event", cuEventRecord, stop.get(), stream);
    waitFor(stream, options.timeoutSeconds, what + ", warm-up");
    float once = 0;
    KILN_CU("warm-up event", cuEventElapsedTime, &once, start.get(),
            stop.get());
    int repeats =
        static_cast<int>(std::min(5000.0, kWarmUpMs / std::max(once, 0.001f)));
    for (int r = 0; r < repeats; ++r)
      enqueue(r + 1);
    waitFor(stream, options.timeoutSeconds, what + ", warm-up");
  }
  const int runs = options.runs;
  for (int w = 0; w < options.warmup; ++w)
    enqueue(w);
  if (options.backToBack) {
    // A pair of events per launch adds ~2 us of the GPU front end's own
    // work to every launch (H100: an empty kernel 3.9 us per event pair,
    // 1.9 us back to back), which kernels in a graph or a busy stream do not
    // pay; here the launches follow each other with nothing between them.
    constexpr int kBatches = 5;
    std::vector<double> perLaunchUs;
    for (int b = 0; b < kBatches; ++b) {
      Event start, stop;
      check.busyWait(2'000'000ULL + 30'000ULL * runs, stream);
      KILN_CU("timing event", cuEventRecord, start.get(), stream);
      for (int r = 0; r < runs; ++r)
        enqueue(options.warmup + b * runs + r);
      KILN_CU("timing event", cuEventRecord, stop.get(), stream);
      waitFor(stream, options.timeoutSeconds, what);
      float milliseconds = 0;
      KILN_CU("timing event", cuEventElapsedTime, &milliseconds, start.get(),
              stop.get());
      perLaunchUs.push_back(1000.0 * milliseconds / runs);
    }
    std::sort(perLaunchUs.begin(), perLaunchUs.end());
    return {perLaunchUs[kBatches / 2], perLaunchUs.front(), perLaunchUs.back()};
  }
  std::vector<Event> starts, stops;
  for (int r = 0; r < runs; ++r) {
    starts.emplace_back();
    stops.emplace_back();
  }
  // The GPU waits while the host enqueues every timed launch (a few µs
  // each), so launches run back to back and each event pair brackets one
  // kernel's GPU time.
  check.busyWait(2'000'000ULL + 30'000ULL * runs, stream);
  for (int r = 0; r < runs; ++r) {
    KILN_CU("timing event", cuEventRecord, starts[r].get(), stream);
    enqueue(options.warmup + r);
    KILN_CU("timing event", cuEventRecord, stops[r].get(), stream);
  }
  waitFor(stream, options.timeoutSeconds, what);
  std::vector<double> microseconds;
  for (int r = 0; r < runs; ++r) {
    float milliseconds = 0;
    KILN_CU("timing event", cuEventElapsedTime, &milliseconds, starts[r].get(),
            stops[r].get());
    microseconds.push_back(1000.0 * milliseconds);
  }
  if (!options.launchTimesPath.empty()) {
    std::ofstream out(options.launchTimesPath, std::ios::app);
    for (int r = 0; r < runs; ++r)
      out << what << '\t' << options.warmup + r << '\t' << microseconds[r]
          << '\n';
    if (!out)
      throw Error("--launch-times: cannot write " + options.launchTimesPath);
  }
  std::sort(microseconds.begin(), microseconds.end());
  Timing timing;
  timing.minUs = microseconds.front();
  timing.maxUs = microseconds.back();
  timing.medianUs =
      runs % 2 ? microseconds[runs / 2]
               : 0.5 * (microseconds[runs / 2 - 1] + microseconds[runs / 2]);
  return timing;
}

Timing timeLaunches(const GemmKernel &kernel, const CheckKernels &check,
                    const Options &options,
                    const std::vector<GemmLaunch> &launches, CUstream stream,
                    const std::string &what) {
  return timeWork(
      check, options,
      [&](int i) { kernel.launch(launches[i % launches.size()], stream); },
      stream, what);
}

void ShapeRunner::time(const std::vector<OperandSet> &sets,
                       ShapeResult &result) const {
  // Tensor maps are encoded once per set, outside the timed loop.
  std::vector<GemmLaunch> launches;
  for (const OperandSet &set : sets)
    launches.push_back(kernel.prepare(set.operands));
  Timing timing = timeLaunches(kernel, check, options, launches, stream,
                               "kernel " + kernel.config().kernelName + " (" +
                                   result.shape.text() + "), timed launches");
  result.medianUs = timing.medianUs;
  result.minUs = timing.minUs;
  result.maxUs = timing.maxUs;
}

/// Device-to-device copy bandwidth (bytes read + written), the median of 10
/// copies of 2 GiB (or a quarter of the free memory, if less).
double measureHbmBandwidth(const CheckKernels &check, CUstream stream,
                           double timeoutSeconds) {
  size_t freeBytes = 0, totalBytes = 0;
  KILN_CU("memory info", cuMemGetInfo, &freeBytes, &totalBytes);
  size_t bytes =
      std::min<size_t>(size_t(2) << 30, freeBytes / 4) & ~size_t(255);
  DeviceBuffer source(bytes, "bandwidth source"),
      target(bytes, "bandwidth target");
  check.fillValues(source.get(), bytes, 1, stream);
  const int copies = 10;
  std::vector<Event> starts(copies), stops(copies);
  for (int c = -2; c < copies; ++c) {
    if (c >= 0)
      KILN_CU("timing event", cuEventRecord, starts[c].get(), stream);
    KILN_CU("bandwidth copy", cuMemcpyDtoDAsync, target.get(), source.get(),
            bytes, stream);
    if (c >= 0)
      KILN_CU("timing event", cuEventRecord, stops[c].get(), stream);
  }
  waitFor(stream, timeoutSeconds, "bandwidth copies");
  std::vector<double> seconds;
  for (int c = 0; c < copies; ++c) {
    float milliseconds = 0;
    KILN_CU("timing event", cuEventElapsedTime, &milliseconds, starts[c].get(),
            stops[c].get());
    seconds.push_back(milliseconds / 1000.0);
  }
  std::sort(seconds.begin(), seconds.end());
  return 2.0 * bytes / seconds[copies / 2] / 1e9;
}

//===----------------------------------------------------------------------===//
// Reporting
//===----------------------------------------------------------------------===//

bool memoryBound(const Shape &shape) { return shape.m <= 128; }

std::string cell(double value, const char *pattern) {
  return std::isfinite(value) ? format(pattern, value) : "-";
}

void printTable(const std::string &label, const std::vector<ShapeResult> &rows,
                const DeviceInfo &device) {
  std::printf(
      "\n%s on %s%s\n\n", label.c_str(), device.name.c_str(),
      device.hbmGBps > 0
          ? (", HBM copy " + format("%.0f", device.hbmGBps) + " GB/s").c_str()
          : "");
  std::printf("| M | N | K | µs | TFLOP/s | GB/s | %% HBM | rel. error | "
              "result |\n");
  std::printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
              "--- |\n");
  for (const ShapeResult &row : rows) {
    double us = row.medianUs;
    double tflops = row.flops() / (us * 1e6);
    double gbps = row.bytes() / (us * 1e3);
    double hbm = memoryBound(row.shape) && device.hbmGBps > 0
                     ? 100.0 * gbps / device.hbmGBps
                     : NAN;
    std::printf("| %d | %d | %d | %s | %s | %s | %s | %s | %s |\n", row.shape.m,
                row.shape.n, row.shape.k, cell(us, "%.1f").c_str(),
                cell(tflops, "%.1f").c_str(), cell(gbps, "%.0f").c_str(),
                cell(hbm, "%.0f").c_str(),
                cell(row.relativeError, "%.2e").c_str(), row.status.c_str());
  }
}

/// A JSON number, or null where nothing was measured (NaN, inf).
Json jsonNumber(double value) {
  return std::isfinite(value) ? Json(value) : Json(nullptr);
}

/// What every results file starts with: the run, the kernel, the device.
Json runHeader(const std::string &label, const GemmKernelConfig &config,
               const std::string &cubin, const DeviceInfo &device,
               uint64_t seed, const Options &options) {
  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"tool", "kiln-gemm-check"},
          {"label", label},
          {"cubin", cubin},
          {"manifest", Json::parse(toManifestJson(config))},
          {"device", device.name},
          {"date", date},
          {"hbm_gbps", jsonNumber(device.hbmGBps)},
          {"seed", seed},
          {"runs", options.time ? options.runs : 0},
          {"tolerance", kTolerance}};
}

Json toJson(const std::string &label, const GemmKernelConfig &config,
            const std::string &cubin, const DeviceInfo &device,
            const std::vector<ShapeResult> &rows, uint64_t seed,
            const Options &options) {
  Json json = runHeader(label, config, cubin, device, seed, options);
  Json list = Json::array();
  for (const ShapeResult &row : rows) {
    double us = row.medianUs;
    double gbps = row.bytes() / (us * 1e3);
    list.push_back(
        {{"m", row.shape.m},
         {"n", row.shape.n},
         {"k", row.shape.k},
         {"us", jsonNumber(us)},
         {"min_us", jsonNumber(row.minUs)},
         {"max_us", jsonNumber(row.maxUs)},
         {"tflops", jsonNumber(row.flops() / (us * 1e6))},
         {"gbps", jsonNumber(gbps)},
         {"hbm_fraction", memoryBound(row.shape) && device.hbmGBps > 0
                              ? jsonNumber(gbps / device.hbmGBps)
                              : Json(nullptr)},
         {"rel_error", jsonNumber(row.relativeError)},
         {"sets", row.sets},
         {"status", row.status},
         {"detail", row.detail}});
    if (!row.outHash.empty())
      list.back()["out_hash"] = row.outHash;
  }
  json["rows"] = list;
  return json;
}

//===----------------------------------------------------------------------===//
// Grouped kernels
//===----------------------------------------------------------------------===//

struct GroupedCase {
  int groups = 0;
  /// Contiguous: rows of A in all (R); masked: rows per slab (maxRows).
  int rows = 0;
  int n = 0, k = 0;
  std::string distribution;
  std::string text() const {
    return std::to_string(groups) + ":" + std::to_string(rows) + ":" +
           std::to_string(n) + "x" + std::to_string(k) + ":" + distribution;
  }
};

/// Small cases that exercise the edges: empty groups, a group of one row,
/// rows outside every group, ragged N tails (N = 200 and 129: the last tile
/// reads the next expert's weight rows, and N = 129 has two scale rows per
/// expert; 136 instead of 129 for a TMA-store kernel, which needs N % 8 ==
/// 0). K stays a multiple of 128: the FP64 reference needs it.
std::vector<GroupedCase> defaultGroupedCases(const GemmKernelConfig &config) {
  int twoScaleRows = config.tmaStore ? 136 : 129;
  if (config.grouping == GemmGrouping::Contiguous)
    return {{8, 300, 200, 1024, "random"},
            {16, 1000, 4096, 7168, "random"},
            {5, 9, 7168, 2048, "random"},
            {8, 8, 4096, 7168, "balanced"},
            {4, 700, twoScaleRows, 1024, "skewed"}};
  return {{8, 64, 200, 1024, "random"},
          {4, 256, 7168, 2048, "random"},
          {8, 1, 4096, 7168, "full"},
          {3, 130, twoScaleRows, 1024, "random"}};
}

std::vector<GroupedCase> parseGroupedCases(const std::string &list,
                                           GemmGrouping grouping) {
  std::vector<GroupedCase> cases;
  std::stringstream stream(list);
  std::string item;
  while (std::getline(stream, item, ',')) {
    GroupedCase c;
    char colon1 = 0, colon2 = 0, x = 0, colon3 = 0;
    std::istringstream parse(item);
    if (!(parse >> c.groups >> colon1 >> c.rows >> colon2 >> c.n >> x >> c.k >>
          colon3) ||
        colon1 != ':' || colon2 != ':' || x != 'x' || colon3 != ':' ||
        !std::getline(parse, c.distribution))
      usageError("--cases: \"" + item + "\" is not G:R:NxK:DIST");
    bool contiguous = grouping == GemmGrouping::Contiguous;
    bool known =
        contiguous
            ? (c.distribution == "balanced" || c.distribution == "skewed" ||
               c.distribution == "random" || c.distribution == "routed")
            : (c.distribution == "full" || c.distribution == "random");
    if (!known)
      usageError("--cases: " + item + ": unknown distribution for a " +
                 (contiguous ? "contiguous" : "masked") + " kernel");
    if (c.groups < 1 || c.groups > kMaxGemmGroups || c.rows < 1 || c.n < 1 ||
        c.k < 128 || c.k % 128 != 0)
      usageError("--cases: " + item +
                 ": needs 1 <= G <= " + std::to_string(kMaxGemmGroups) +
                 ", R, N >= 1, K a positive multiple of 128 (the FP64 "
                 "reference's blocks)");
    cases.push_back(c);
  }
  if (cases.empty())
    usageError("--cases: no case given");
  return cases;
}

/// Rows of each group and, for contiguous, the offsets (G + 1 entries).
struct GroupLayoutOnHost {
  std::vector<int> counts;
  std::vector<int32_t> offsets;
  /// Row of A (and out) where group g starts.
  std::vector<int64_t> firstRow;
};

GroupLayoutOnHost drawGroups(const GroupedCase &c, GemmGrouping grouping,
                             uint64_t seed) {
  GroupLayoutOnHost layout;
  const int g = c.groups;
  std::vector<int> &counts = layout.counts;
  counts.assign(g, 0);
  int lead = 0;
  uint64_t state = seed;
  auto uniform = [&] { return (splitmix(state++) >> 11) * 0x1.0p-53; };
  if (grouping == GemmGrouping::Masked) {
    for (int i = 0; i < g; ++i)
      counts[i] = c.distribution == "full"
                      ? c.rows
                      : int(uniform() * (c.rows + 1)) % (c.rows + 1);
    if (c.distribution == "random") {
      counts[0] = 0;
      if (g > 1)
        counts[1] = std::min(1, c.rows);
      if (g > 2)
        counts[2] = c.rows;
    }
    for (int i = 0; i < g; ++i)
      layout.firstRow.push_back(int64_t(i) * c.rows);
    return layout;
  }
  int available = c.rows;
  std::vector<double> weights(g, 1.0);
  if (c.distribution == "skewed") {
    for (int i = 0; i < g; ++i)
      weights[i] = 1.0 / (i + 1);
  } else if (c.distribution == "random") {
    // Rows before the first group and after the last stay untouched.
    lead = std::min(3, c.rows / 8);
    available = c.rows - lead - std::min(5, c.rows / 8);
    for (int i = 0; i < g; ++i)
      weights[i] = (i % 5 == 3 || i == 0) ? 0.0 : 0.1 + uniform();
  }
  if (c.distribution == "routed") {
    // Each row to a uniformly drawn group, as top-k routing with unbiased
    // scores spreads tokens over experts (multinomial counts: R/G ± √(R/G)).
    for (int row = 0; row < available; ++row)
      ++counts[std::min(g - 1, int(uniform() * g))];
  } else {
    int fixed = 0;
    if (c.distribution == "random" && g > 1 && available >= 1) {
      counts[1] = 1; // a group of one row
      weights[1] = 0;
      fixed = 1;
    }
    double total = 0;
    for (double w : weights)
      total += w;
    int assigned = fixed;
    for (int i = 0; i < g && total > 0; ++i) {
      if (weights[i] == 0)
        continue;
      counts[i] = int((available - fixed) * weights[i] / total);
      assigned += counts[i];
    }
    // The remainder goes to the first group with weight, so the groups
    // cover `available` rows exactly.
    for (int i = 0; i < g; ++i)
      if (weights[i] > 0) {
        counts[i] += available - assigned;
        break;
      }
  }
  layout.offsets.push_back(lead);
  for (int i = 0; i < g; ++i) {
    layout.firstRow.push_back(layout.offsets.back());
    layout.offsets.push_back(layout.offsets.back() + counts[i]);
  }
  return layout;
}

struct GroupedResult {
  GroupedCase c;
  std::string status = "ERROR";
  std::string detail;
  double relativeError = NAN;
  double checkedFraction = 0;
  Timing timing;
  /// SwiGLU kernels with --unfused: the plain kernel plus the swiglu kernel;
  /// then with the FP8 quantization of the intermediate the down GEMM reads
  /// (plain kernel + swiglu_quantize against this kernel + quantize).
  Timing unfused, unfusedQuantize, fusedQuantize;
  /// The runtime's quantize over [rows, I] and swiglu_quantize over the
  /// [rows, 2I] product alone (memory-bound; their bytes over the time).
  Timing quantizeAlone, swigluQuantizeAlone;
  int64_t quantizedRows = 0; ///< rows of A, which they run over
  int sets = 0;
  int64_t routedRows = 0;
  int activeGroups = 0;
  int maxRows = 0;
  /// Columns of out: N, or N / 2 for a SwiGLU kernel.
  int outCols = 0;

  double flops() const { return 2.0 * routedRows * c.n * double(c.k); }
  /// The weights (and their scales) of the groups that have rows.
  double weightBytes() const {
    double blocksK = std::ceil(c.k / 128.0);
    return activeGroups *
           (double(c.n) * c.k + 4.0 * std::ceil(c.n / 128.0) * blocksK);
  }
  /// The weights, A and scales of the routed rows, BF16 out.
  double bytes() const {
    double blocksK = std::ceil(c.k / 128.0);
    return weightBytes() + routedRows * (c.k + 4.0 * blocksK + 2.0 * outCols);
  }
};

class GroupedRunner {
public:
  /// `unfused`, `modelKernels`: SwiGLU kernels only, to time the plain
  /// grouped kernel plus the runtime's swiglu kernel (may be null).
  GroupedRunner(const GemmKernel &kernel, const CheckKernels &check,
                const Options &options, const DeviceInfo &device,
                CUstream stream, const GemmKernel *unfused = nullptr,
                ModelKernels *modelKernels = nullptr)
      : kernel(kernel), check(check), options(options), device(device),
        stream(stream), unfused(unfused), modelKernels(modelKernels) {}

  GroupedResult run(const GroupedCase &c, uint64_t seed) const;

private:
  struct Set {
    DeviceBuffer a, b, scaleA, scaleB, out, groups;
    GroupedGemmOperands operands;
    /// The unfused path's [rows, N] product (SwiGLU with --unfused).
    DeviceBuffer product;
    /// Quantized SwiGLU kernels: the output scales; the BF16 SwiGLU
    /// kernel's [rows, I] output and its operands (out = bf16Out).
    DeviceBuffer outScales, bf16Out;
    GroupedGemmOperands bf16Operands;
  };
  unsigned long long countNotPoison(CUdeviceptr at, size_t elements,
                                    const DeviceBuffer &counter) const {
    if (elements == 0)
      return 0;
    KILN_CU("poison check", cuMemsetD8Async, counter.get(), 0, counter.size(),
            stream);
    check.countDiffering(at, elements, reference::kPoisonBF16, counter.get(),
                         stream);
    waitFor(stream, options.timeoutSeconds, "poison check");
    return copyToHost<unsigned long long>(counter.get(), "poison count");
  }
  void poisonAndLaunch(const Set &set, const std::string &what) const {
    if (set.outScales.size()) {
      // Quantized: E4M3 codes and FP32 scales, poisoned bytewise (0xFF is
      // NaN in both, which the saturating quantization never writes).
      KILN_CU(what, cuMemsetD8Async, set.out.get(), kPoisonByte, set.out.size(),
              stream);
      KILN_CU(what, cuMemsetD8Async, set.outScales.get(), kPoisonByte,
              set.outScales.size(), stream);
    } else {
      KILN_CU(what, cuMemsetD16Async, set.out.get(), reference::kPoisonBF16,
              set.out.size() / 2, stream);
    }
    kernel.launchGrouped(set.operands, stream);
    waitFor(stream, options.timeoutSeconds, what);
  }
  /// Quantized SwiGLU kernels: the checked set's codes and scales against
  /// the runtime's quantize of the BF16 kernel's output; problems appended.
  void compareQuantized(const Set &set, const GroupedCase &c,
                        const GroupLayoutOnHost &layout,
                        std::vector<std::string> &problems) const;
  static constexpr unsigned char kPoisonByte = 0xFF; // E4M3 NaN, FP32 NaN

  const GemmKernel &kernel;
  const CheckKernels &check;
  const Options &options;
  const DeviceInfo &device;
  CUstream stream;
  const GemmKernel *unfused;
  ModelKernels *modelKernels;
};

void GroupedRunner::compareQuantized(const Set &set, const GroupedCase &c,
                                     const GroupLayoutOnHost &layout,
                                     std::vector<std::string> &problems) const {
  const bool masked = kernel.config().grouping == GemmGrouping::Masked;
  const int64_t cols = c.n / 2, blocks = cols / 128;
  const int64_t rows = masked ? int64_t(c.groups) * c.rows : int64_t(c.rows);
  // The runtime's quantize of the BF16 kernel's output, with the scales in
  // the grouped layout: the contiguous offsets, or one group per slab.
  std::vector<int32_t> offsets = layout.offsets;
  if (masked) {
    offsets.clear();
    for (int g = 0; g <= c.groups; ++g)
      offsets.push_back(g * c.rows);
  }
  DeviceBuffer offsetsBuffer(4 * offsets.size(), "reference group offsets");
  KILN_CU("reference group offsets", cuMemcpyHtoD, offsetsBuffer.get(),
          offsets.data(), 4 * offsets.size());
  DeviceBuffer codes(rows * cols, "reference codes");
  DeviceBuffer scales(4 * rows * blocks, "reference scales");
  QuantizedMatrix reference{codes.get(), scales.get(),        rows,
                            cols,        offsetsBuffer.get(), c.groups};
  modelKernels->quantize(
      stream,
      DeviceMatrix{set.bf16Out.get(), rows, cols, cols, ElementType::BF16},
      reference);
  waitFor(stream, options.timeoutSeconds, "reference quantize");
  auto download = [&](CUdeviceptr at, size_t bytes, const char *what) {
    std::vector<unsigned char> host(bytes);
    KILN_CU(what, cuMemcpyDtoH, host.data(), at, bytes);
    return host;
  };
  std::vector<unsigned char> wantCodes =
      download(codes.get(), codes.size(), "reference codes");
  // The whole buffer: past rows * cols it is a guard that keeps its poison.
  std::vector<unsigned char> gotCodes =
      download(set.out.get(), set.out.size(), "kernel codes");
  unsigned long long written = 0;
  for (size_t at = size_t(rows * cols); at < gotCodes.size(); ++at)
    written += gotCodes[at] != kPoisonByte;
  std::vector<unsigned char> wantScales =
      download(scales.get(), scales.size(), "reference scales");
  std::vector<unsigned char> gotScales =
      download(set.outScales.get(), set.outScales.size(), "kernel scales");
  // Rows of a group (those the kernel writes) and their scale index.
  std::vector<int64_t> scaleBase(rows, -1), scaleStride(rows, 0);
  for (int g = 0; g < c.groups; ++g) {
    int64_t begin = masked ? int64_t(g) * c.rows : layout.offsets[g];
    int64_t count = layout.counts[g];
    int64_t stride = masked ? c.rows : count;
    for (int64_t r = 0; r < count; ++r) {
      scaleBase[begin + r] = blocks * begin + r;
      scaleStride[begin + r] = stride;
    }
  }
  unsigned long long codeErrors = 0, scaleErrors = 0, codesCompared = 0,
                     scalesCompared = 0;
  std::string first;
  for (int64_t r = 0; r < rows; ++r) {
    const unsigned char *got = gotCodes.data() + r * cols;
    const unsigned char *want = wantCodes.data() + r * cols;
    if (scaleBase[r] < 0) {
      for (int64_t j = 0; j < cols; ++j)
        written += got[j] != kPoisonByte;
      continue;
    }
    codesCompared += cols;
    scalesCompared += blocks;
    for (int64_t j = 0; j < cols; ++j)
      if (got[j] != want[j] && codeErrors++ == 0)
        first = "first code mismatch at row " + std::to_string(r) + " column " +
                std::to_string(j) + ": " + std::to_string(got[j]) + ", want " +
                std::to_string(want[j]);
    for (int64_t b = 0; b < blocks; ++b) {
      size_t at = 4 * size_t(scaleBase[r] + b * scaleStride[r]);
      if (std::memcmp(gotScales.data() + at, wantScales.data() + at, 4) &&
          scaleErrors++ == 0 && first.empty())
        first = "first scale mismatch at row " + std::to_string(r) + " block " +
                std::to_string(b);
    }
  }
  // No scale outside the groups' (the guard past them included).
  size_t scaleEnd = 4 * (masked ? size_t(c.groups) * c.rows * blocks
                                : size_t(layout.offsets.back()) * blocks);
  for (size_t at = scaleEnd; at < gotScales.size(); ++at)
    written += gotScales[at] != kPoisonByte;
  std::printf("    quantized output: %llu of %llu codes and %llu of %llu "
              "scales equal to quantize of the BF16 kernel's output, %llu "
              "bytes written outside\n",
              codesCompared - codeErrors, codesCompared,
              scalesCompared - scaleErrors, scalesCompared, written);
  if (codeErrors || scaleErrors)
    problems.push_back(std::to_string(codeErrors) + " codes and " +
                       std::to_string(scaleErrors) +
                       " scales differ from quantize of the BF16 SwiGLU "
                       "kernel's output (" +
                       first + ")");
  if (written)
    problems.push_back(std::to_string(written) +
                       " bytes written outside the groups' rows and scales");
}

GroupedResult GroupedRunner::run(const GroupedCase &c, uint64_t seed) const {
  GroupedResult result;
  result.c = c;
  const GemmKernelConfig &config = kernel.config();
  const bool masked = config.grouping == GemmGrouping::Masked;
  const bool quantized = config.epilogue == GemmEpilogue::SwigluQuantize;
  const bool swiglu = config.epilogue != GemmEpilogue::Store;
  if (quantized && !unfused)
    throw Error(c.text() + ": a quantized SwiGLU kernel is checked against "
                           "the BF16 SwiGLU kernel given by --unfused");
  if (swiglu && c.n % 256 != 0)
    throw Error(c.text() + ": a SwiGLU kernel needs N = 2I a multiple of 256");
  GroupLayoutOnHost layout = drawGroups(c, config.grouping, splitmix(seed));
  for (int count : layout.counts) {
    result.routedRows += count;
    result.activeGroups += count > 0;
    result.maxRows = std::max(result.maxRows, count);
  }
  const size_t g = c.groups, n = c.n, k = c.k;
  const size_t blocksK = (k + 127) / 128, blocksN = (n + 127) / 128;
  const size_t rowsA = masked ? g * c.rows : size_t(c.rows);
  const size_t outCols = swiglu ? n / 2 : n;
  result.outCols = int(outCols);
  const size_t outElements = rowsA * outCols;
  // A kernel that writes rows past the end lands here.
  const size_t guardElements = size_t(config.blockM) * outCols + config.blockN;
  const size_t bytesA = rowsA * k, bytesB = g * n * k;
  const size_t bytesScaleA = 4 * blocksK * rowsA;
  const size_t bytesScaleB = 4 * g * blocksN * blocksK;
  const size_t bytesOut = 2 * (outElements + guardElements);
  const size_t setBytes =
      bytesA + bytesB + bytesScaleA + bytesScaleB + bytesOut;
  int sets = timedSetCount(options, device, setBytes);
  result.sets = sets;
  std::vector<int32_t> groupWords =
      masked ? std::vector<int32_t>(layout.counts.begin(), layout.counts.end())
             : layout.offsets;

  std::vector<Set> setList;
  DeviceBuffer checkpointB;
  for (int s = 0; s < sets; ++s) {
    std::string what = c.text() + " set " + std::to_string(s) + ": ";
    Set set{DeviceBuffer(bytesA, what + "A"),
            DeviceBuffer(bytesB, what + "B"),
            DeviceBuffer(bytesScaleA, what + "scaleA"),
            DeviceBuffer(bytesScaleB, what + "scaleB"),
            DeviceBuffer(bytesOut, what + "out"),
            DeviceBuffer(groupWords.size() * 4, what + "groups"),
            {},
            DeviceBuffer(),
            DeviceBuffer(),
            DeviceBuffer(),
            {}};
    set.operands.gemm = {set.a.get(),
                         set.b.get(),
                         set.scaleA.get(),
                         set.scaleB.get(),
                         set.out.get(),
                         c.rows,
                         c.n,
                         c.k};
    set.operands.groups = set.groups.get();
    set.operands.numGroups = c.groups;
    KILN_CU(what + "groups", cuMemcpyHtoD, set.groups.get(), groupWords.data(),
            groupWords.size() * 4);
    uint64_t setSeed = splitmix(seed + s);
    check.fillValues(set.a.get(), bytesA, splitmix(setSeed + 1), stream);
    if (swiglu && s == 0) {
      // The checked set: the checkpoint's gate/up layout for the
      // reference, interleaved for the kernel.
      checkpointB = DeviceBuffer(bytesB, what + "checkpoint-layout B");
      check.fillValues(checkpointB.get(), bytesB, splitmix(setSeed + 2),
                       stream);
      interleaveGateUpAsync(checkpointB.get(), set.b.get(), c.groups, c.n / 2,
                            k, stream);
    } else {
      check.fillValues(set.b.get(), bytesB, splitmix(setSeed + 2), stream);
    }
    if (swiglu && unfused && !quantized)
      set.product = DeviceBuffer(2 * rowsA * n, what + "unfused product");
    if (quantized) {
      // Scales: [I/128] per routed row, plus a guard as for out.
      set.outScales =
          DeviceBuffer(4 * (rowsA + config.blockM) * (outCols / 128),
                       what + "output scales");
      set.operands.outScales = set.outScales.get();
      set.bf16Out = DeviceBuffer(bytesOut, what + "BF16 SwiGLU output");
      set.bf16Operands = set.operands;
      set.bf16Operands.gemm.out = set.bf16Out.get();
      set.bf16Operands.outScales = 0;
    }
    check.fillPositiveScales(set.scaleA.get(), bytesScaleA / 4,
                             splitmix(setSeed + 3), kScaleBaseA, stream);
    check.fillPositiveScales(set.scaleB.get(), bytesScaleB / 4,
                             splitmix(setSeed + 4), kScaleBaseB, stream);
    setList.push_back(std::move(set));
  }
  waitFor(stream, options.timeoutSeconds, c.text() + ": random inputs");

  const Set &checked = setList[0];
  std::string launchWhat =
      "kernel " + config.kernelName + " (" + c.text() + ")";
  poisonAndLaunch(checked, launchWhat);
  if (quantized) {
    // The BF16 SwiGLU kernel's output: what the FP64 reference checks below
    // and the bitwise reference of the quantization.
    KILN_CU("BF16 SwiGLU output", cuMemsetD16Async, checked.bf16Out.get(),
            reference::kPoisonBF16, checked.bf16Out.size() / 2, stream);
    unfused->launchGrouped(checked.bf16Operands, stream);
    waitFor(stream, options.timeoutSeconds,
            launchWhat + ", the BF16 SwiGLU kernel");
  }
  // The BF16 output the FP64 reference checks.
  const CUdeviceptr checkedOut =
      quantized ? checked.bf16Out.get() : checked.out.get();

  // Each group against the FP64 reference of its own GEMM.
  std::vector<std::string> problems;
  DeviceBuffer statsBuffer(sizeof(reference::CheckStats), "check statistics");
  DeviceBuffer counter(sizeof(unsigned long long), "counter");
  DeviceBuffer compactScales(4 * blocksK * std::max(1, c.rows),
                             "compacted scaleA");
  double sumSquaredError = 0, sumSquaredReference = 0;
  double checkedFlops = 0, budget = options.referenceGflop * 1e9;
  for (size_t group = 0; group < g; ++group) {
    int count = layout.counts[group];
    if (count == 0)
      continue;
    double groupFlops = 2.0 * count * n * k;
    if (budget > 0 && checkedFlops > 0 && checkedFlops + groupFlops > budget)
      break;
    checkedFlops += groupFlops;
    int64_t row = layout.firstRow[group];
    GemmOperands one;
    one.a = checked.a.get() + row * k;
    one.b = (swiglu ? checkpointB.get() : checked.b.get()) + group * n * k;
    one.scaleB = checked.scaleB.get() + 4 * group * blocksN * blocksK;
    one.out = checkedOut + 2 * row * outCols;
    one.m = count;
    one.n = c.n;
    one.k = c.k;
    if (masked) {
      // Slab g's scales are [ceil(K/128)][maxRows]; the reference reads
      // [ceil(K/128)][count].
      for (size_t block = 0; block < blocksK; ++block)
        KILN_CU("compacting scaleA", cuMemcpyDtoDAsync,
                compactScales.get() + 4 * block * count,
                checked.scaleA.get() + 4 * (blocksK * row + block * c.rows),
                4 * size_t(count), stream);
      one.scaleA = compactScales.get();
    } else {
      // Contiguous: group g's [ceil(K/128)][count] at ceil(K/128)·offset.
      one.scaleA = checked.scaleA.get() + 4 * blocksK * row;
    }
    reference::CheckStats initial{};
    initial.firstUnwritten = initial.firstNonFinite = ~0ULL;
    KILN_CU("check statistics", cuMemcpyHtoD, statsBuffer.get(), &initial,
            sizeof(initial));
    if (swiglu)
      check.compareWithSwigluReference(one, statsBuffer.get(), stream);
    else
      check.compareWithReference(one, statsBuffer.get(), stream);
    waitFor(stream, options.timeoutSeconds,
            c.text() + ": FP64 reference of group " + std::to_string(group));
    auto stats = copyToHost<reference::CheckStats>(statsBuffer.get(),
                                                   "check statistics");
    sumSquaredError += stats.sumSquaredError;
    sumSquaredReference += stats.sumSquaredReference;
    std::string where = "group " + std::to_string(group) + " (" +
                        std::to_string(count) + " rows)";
    if (stats.unwritten)
      problems.push_back(where + ": " + std::to_string(stats.unwritten) +
                         " elements never written, first at " +
                         position(stats.firstUnwritten, int(outCols)));
    if (stats.nonFinite)
      problems.push_back(where + ": " + std::to_string(stats.nonFinite) +
                         " elements NaN or Inf, first at " +
                         position(stats.firstNonFinite, int(outCols)));
    if (stats.worstError && result.detail.empty()) {
      unsigned long long index = stats.worstError & 0xFFFFFFFFULL;
      uint32_t errorBits = uint32_t(stats.worstError >> 32);
      float worstError;
      std::memcpy(&worstError, &errorBits, sizeof(worstError));
      result.detail = "first group's worst |err| " +
                      format("%.3g", worstError) + " at " +
                      position(index, int(outCols)) + " (rms of ref " +
                      format("%.3g", std::sqrt(stats.sumSquaredReference /
                                               (double(count) * outCols))) +
                      ")";
    }
  }
  result.checkedFraction =
      result.flops() > 0 ? checkedFlops / result.flops() : 1.0;
  result.relativeError = sumSquaredReference > 0
                             ? std::sqrt(sumSquaredError / sumSquaredReference)
                             : 0.0;
  if (!(result.relativeError <= kTolerance))
    problems.push_back("relative error " +
                       format("%.3g", result.relativeError) + " > " +
                       format("%.0e", kTolerance));

  // Rows outside every group, and the guard past out, keep their poison.
  auto untouched = [&](const std::string &when) {
    unsigned long long written = 0;
    CUdeviceptr out = checked.out.get();
    if (masked) {
      for (size_t group = 0; group < g; ++group)
        written += countNotPoison(
            out + 2 * (group * c.rows + layout.counts[group]) * outCols,
            size_t(c.rows - layout.counts[group]) * outCols, counter);
    } else {
      written += countNotPoison(out, size_t(layout.offsets.front()) * outCols,
                                counter);
      written +=
          countNotPoison(out + 2 * size_t(layout.offsets.back()) * outCols,
                         (rowsA - layout.offsets.back()) * outCols, counter);
    }
    written += countNotPoison(out + 2 * outElements, guardElements, counter);
    if (written)
      problems.push_back(std::to_string(written) +
                         " elements written outside the groups' rows" + when);
  };
  if (quantized)
    compareQuantized(checked, c, layout, problems);
  else
    untouched("");

  DeviceBuffer firstOut(std::max<size_t>(2, outElements * 2),
                        "copy of the checked output");
  KILN_CU("copy of the checked output", cuMemcpyDtoDAsync, firstOut.get(),
          checked.out.get(), outElements * 2, stream);
  if (options.time) {
    std::vector<GemmLaunch> launches;
    for (const Set &set : setList)
      launches.push_back(kernel.prepareGrouped(set.operands));
    result.timing = timeLaunches(kernel, check, options, launches, stream,
                                 launchWhat + ", timed launches");
    // The paths with the runtime's quantization of the [rows, I]
    // intermediate write it here (one output for all sets: only the time
    // matters).
    const int64_t rows = int64_t(rowsA), cols = int64_t(outCols);
    const bool timesQuantize = swiglu && unfused && modelKernels;
    DeviceBuffer values, scales;
    QuantizedMatrix quantizedOut{};
    if (timesQuantize) {
      values = DeviceBuffer(rowsA * outCols, "quantized intermediate");
      scales = DeviceBuffer(4 * rowsA * ((outCols + 127) / 128),
                            "intermediate scales");
      quantizedOut = {values.get(), scales.get(), rows, cols, 0, 0};
      result.quantizedRows = rows;
    }
    if (timesQuantize && quantized) {
      // What the runtime runs without the fused quantization: the BF16
      // SwiGLU kernel, then quantize over its [rows, I] output.
      std::vector<GemmLaunch> bf16;
      for (const Set &set : setList)
        bf16.push_back(unfused->prepareGrouped(set.bf16Operands));
      result.fusedQuantize = timeWork(
          check, options,
          [&](int i) {
            const Set &set = setList[i % setList.size()];
            unfused->launch(bf16[i % bf16.size()], stream);
            DeviceMatrix x{set.bf16Out.get(), rows, cols, cols,
                           ElementType::BF16};
            modelKernels->quantize(stream, x, quantizedOut);
          },
          stream, launchWhat + ", BF16 SwiGLU + quantize timed launches");
    }
    if (timesQuantize && !quantized) {
      // What the runtime runs today: the plain grouped GEMM into [rows, 2I]
      // (same bytes of B; its column order does not change the time), then
      // the swiglu kernel over the gate and up halves into [rows, I].
      std::vector<GemmLaunch> plain;
      for (const Set &set : setList) {
        GroupedGemmOperands operands = set.operands;
        operands.gemm.out = set.product.get();
        plain.push_back(unfused->prepareGrouped(operands));
      }
      // The gate and up halves of a set's [rows, 2I] product.
      auto gateOf = [&](const Set &set) {
        return DeviceMatrix{set.product.get(), rows, cols, 2 * cols,
                            ElementType::BF16};
      };
      auto upOf = [&](const Set &set) {
        return DeviceMatrix{set.product.get() + 2 * cols, rows, cols, 2 * cols,
                            ElementType::BF16};
      };
      result.unfused = timeWork(
          check, options,
          [&](int i) {
            const Set &set = setList[i % setList.size()];
            unfused->launch(plain[i % plain.size()], stream);
            DeviceMatrix out{set.out.get(), rows, cols, cols,
                             ElementType::BF16};
            modelKernels->swiglu(stream, gateOf(set), upOf(set), out);
          },
          stream, launchWhat + ", unfused timed launches");
      // The same with the intermediate quantized 1x128.
      result.unfusedQuantize = timeWork(
          check, options,
          [&](int i) {
            const Set &set = setList[i % setList.size()];
            unfused->launch(plain[i % plain.size()], stream);
            modelKernels->swigluQuantize(stream, gateOf(set), upOf(set),
                                         quantizedOut);
          },
          stream, launchWhat + ", unfused + quantize timed launches");
      result.fusedQuantize = timeWork(
          check, options,
          [&](int i) {
            const Set &set = setList[i % setList.size()];
            kernel.launch(launches[i % launches.size()], stream);
            DeviceMatrix x{set.out.get(), rows, cols, cols, ElementType::BF16};
            modelKernels->quantize(stream, x, quantizedOut);
          },
          stream, launchWhat + ", fused + quantize timed launches");
      result.quantizeAlone = timeWork(
          check, options,
          [&](int i) {
            const Set &set = setList[i % setList.size()];
            DeviceMatrix x{set.out.get(), rows, cols, cols, ElementType::BF16};
            modelKernels->quantize(stream, x, quantizedOut);
          },
          stream, launchWhat + ", quantize timed launches");
      result.swigluQuantizeAlone = timeWork(
          check, options,
          [&](int i) {
            const Set &set = setList[i % setList.size()];
            modelKernels->swigluQuantize(stream, gateOf(set), upOf(set),
                                         quantizedOut);
          },
          stream, launchWhat + ", swiglu_quantize timed launches");
    }
  }
  poisonAndLaunch(checked, launchWhat + ", repeated");
  KILN_CU("repeat check", cuMemsetD8Async, counter.get(), 0, counter.size(),
          stream);
  check.countMismatching(firstOut.get(), checked.out.get(), outElements,
                         counter.get(), stream);
  waitFor(stream, options.timeoutSeconds, "repeat check");
  auto differing = copyToHost<unsigned long long>(counter.get(), "mismatches");
  if (differing)
    problems.push_back(std::to_string(differing) +
                       " elements differ when launched again on the same "
                       "inputs (a race?)");
  if (!quantized)
    untouched(" on the repeat");

  if (problems.empty()) {
    result.status = "ok";
  } else {
    result.status = "WRONG";
    std::string joined;
    for (const std::string &problem : problems)
      joined += (joined.empty() ? "" : "; ") + problem;
    result.detail =
        joined + (result.detail.empty() ? "" : "; ") + result.detail;
  }
  return result;
}

void printGroupedTable(const std::string &label,
                       const std::vector<GroupedResult> &rows,
                       const DeviceInfo &device) {
  std::printf(
      "\n%s on %s%s\n\n", label.c_str(), device.name.c_str(),
      device.hbmGBps > 0
          ? (", HBM copy " + format("%.0f", device.hbmGBps) + " GB/s").c_str()
          : "");
  std::printf("| case | routed rows | groups with rows | µs | TFLOP/s | "
              "weight GB/s | GB/s | rel. error | checked | result |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
              "--- |\n");
  for (const GroupedResult &row : rows) {
    double us = row.timing.medianUs;
    std::printf("| %s | %lld | %d | %s | %s | %s | %s | %s | %.0f%% | %s |\n",
                row.c.text().c_str(), (long long)row.routedRows,
                row.activeGroups, cell(us, "%.1f").c_str(),
                cell(row.flops() / (us * 1e6), "%.1f").c_str(),
                cell(row.weightBytes() / (us * 1e3), "%.0f").c_str(),
                cell(row.bytes() / (us * 1e3), "%.0f").c_str(),
                cell(row.relativeError, "%.2e").c_str(),
                100 * row.checkedFraction, row.status.c_str());
  }
}

Json groupedJson(const std::string &label, const GemmKernelConfig &config,
                 const std::string &cubin, const DeviceInfo &device,
                 const std::vector<GroupedResult> &rows, uint64_t seed,
                 const Options &options) {
  Json json = runHeader(label, config, cubin, device, seed, options);
  Json list = Json::array();
  for (const GroupedResult &row : rows) {
    double us = row.timing.medianUs;
    list.push_back(
        {{"case", row.c.text()},
         {"groups", row.c.groups},
         {"rows", row.c.rows},
         {"n", row.c.n},
         {"k", row.c.k},
         {"distribution", row.c.distribution},
         {"routed_rows", row.routedRows},
         {"active_groups", row.activeGroups},
         {"us", jsonNumber(us)},
         {"min_us", jsonNumber(row.timing.minUs)},
         {"max_us", jsonNumber(row.timing.maxUs)},
         {"tflops", jsonNumber(row.flops() / (us * 1e6))},
         {"weight_gbps", jsonNumber(row.weightBytes() / (us * 1e3))},
         {"gbps", jsonNumber(row.bytes() / (us * 1e3))},
         {"rel_error", jsonNumber(row.relativeError)},
         {"unfused_us", jsonNumber(row.unfused.medianUs)},
         {"unfused_quantize_us", jsonNumber(row.unfusedQuantize.medianUs)},
         {"fused_quantize_us", jsonNumber(row.fusedQuantize.medianUs)},
         {"quantize_us", jsonNumber(row.quantizeAlone.medianUs)},
         {"swiglu_quantize_us", jsonNumber(row.swigluQuantizeAlone.medianUs)},
         {"checked_fraction", row.checkedFraction},
         {"sets", row.sets},
         {"status", row.status},
         {"detail", row.detail}});
  }
  json["rows"] = list;
  return json;
}

/// The end of a run: the results as JSON into --json (when given), how many
/// of `total` came out right, and the exit status (0: all run and right).
template <typename Result, typename MakeJson>
int finishRun(const Options &options, const std::string &label,
              const std::vector<Result> &results, size_t total,
              const char *noun, bool allRight, MakeJson makeJson) {
  if (!options.jsonPath.empty()) {
    std::ofstream file(options.jsonPath);
    file << makeJson().dump(2) << "\n";
    if (!file)
      throw Error(options.jsonPath + ": cannot write the results");
  }
  size_t wrong =
      std::count_if(results.begin(), results.end(),
                    [](const Result &r) { return r.status != "ok"; });
  std::printf("\n%s: %zu of %zu %s right%s\n", label.c_str(),
              results.size() - wrong, total, noun,
              results.size() < total ? " (stopped early)" : "");
  return allRight && results.size() == total ? 0 : 1;
}

/// The grouped cases of a grouped kernel; exit status as for shapes.
int runGrouped(const Options &options, const GemmKernel &kernel,
               const CheckKernels &check, const DeviceInfo &device,
               CUstream stream, const std::string &label, uint64_t seed) {
  const GemmKernelConfig &config = kernel.config();
  std::vector<GroupedCase> cases =
      options.cases.empty() ? defaultGroupedCases(config)
                            : parseGroupedCases(options.cases, config.grouping);
  std::optional<GemmKernel> unfused;
  std::optional<ModelKernels> modelKernels;
  if (!options.unfusedCubinPath.empty()) {
    if (config.epilogue == GemmEpilogue::Store)
      usageError("--unfused needs a SwiGLU kernel");
    // The manifest beside the cubin, as for the kernel under test.
    std::string path = options.unfusedCubinPath;
    std::string stem = path;
    if (stem.size() > 6 && stem.compare(stem.size() - 6, 6, ".cubin") == 0)
      stem.resize(stem.size() - 6);
    GemmKernelConfig plain = loadGemmManifest(stem + ".json");
    // The quantized kernel's reference is the BF16 SwiGLU kernel of the
    // same tiling; the BF16 one's is the plain kernel of the same layout.
    GemmEpilogue wanted = config.epilogue == GemmEpilogue::SwigluQuantize
                              ? GemmEpilogue::Swiglu
                              : GemmEpilogue::Store;
    bool sameTiling = plain.blockM == config.blockM &&
                      plain.blockN == config.blockN &&
                      plain.stages == config.stages &&
                      plain.consumerWarpgroups == config.consumerWarpgroups;
    if (plain.grouping != config.grouping || plain.epilogue != wanted ||
        (wanted == GemmEpilogue::Swiglu && !sameTiling))
      usageError("--unfused: " + path +
                 (wanted == GemmEpilogue::Swiglu
                      ? " must be the BF16 SwiGLU kernel of the same tiling"
                      : " must be a plain grouped kernel of the same layout"));
    std::string image = readFile(path);
    unfused.emplace(image.data(), image.size(), plain);
    modelKernels.emplace();
  }
  GroupedRunner runner(kernel, check, options, device, stream,
                       unfused ? &*unfused : nullptr,
                       modelKernels ? &*modelKernels : nullptr);
  std::vector<GroupedResult> results;
  bool allRight = true;
  for (size_t i = 0; i < cases.size(); ++i) {
    GroupedResult result;
    try {
      result = runner.run(cases[i], splitmix(seed ^ (0x2000 + i)));
    } catch (const Error &error) {
      result = GroupedResult();
      result.c = cases[i];
      result.detail = error.what();
    }
    std::printf("%-24s %-5s rel. error %s, %s µs (min %s, max %s, %d sets, "
                "%lld rows in %d groups)%s%s\n",
                cases[i].text().c_str(), result.status.c_str(),
                cell(result.relativeError, "%.2e").c_str(),
                cell(result.timing.medianUs, "%.1f").c_str(),
                cell(result.timing.minUs, "%.1f").c_str(),
                cell(result.timing.maxUs, "%.1f").c_str(), result.sets,
                (long long)result.routedRows, result.activeGroups,
                result.detail.empty() ? "" : "\n    ", result.detail.c_str());
    if (!std::isnan(result.unfused.medianUs))
      std::printf(
          "    unfused (plain grouped GEMM + swiglu): %s µs, fused "
          "saves %s%%\n",
          cell(result.unfused.medianUs, "%.1f").c_str(),
          cell(100 * (1 - result.timing.medianUs / result.unfused.medianUs),
               "%.1f")
              .c_str());
    if (!std::isnan(result.unfusedQuantize.medianUs))
      std::printf("    with FP8 quantization of the intermediate: unfused "
                  "(GEMM + swiglu_quantize) %s µs, fused (+ quantize) %s µs, "
                  "saves %s%%\n",
                  cell(result.unfusedQuantize.medianUs, "%.1f").c_str(),
                  cell(result.fusedQuantize.medianUs, "%.1f").c_str(),
                  cell(100 * (1 - result.fusedQuantize.medianUs /
                                      result.unfusedQuantize.medianUs),
                       "%.1f")
                      .c_str());
    if (result.c.n > 0 && !std::isnan(result.fusedQuantize.medianUs) &&
        std::isnan(result.unfusedQuantize.medianUs))
      std::printf("    BF16 SwiGLU kernel + quantize: %s µs, the fused "
                  "quantization saves %s%%\n",
                  cell(result.fusedQuantize.medianUs, "%.1f").c_str(),
                  cell(100 * (1 - result.timing.medianUs /
                                      result.fusedQuantize.medianUs),
                       "%.1f")
                      .c_str());
    if (!std::isnan(result.quantizeAlone.medianUs)) {
      // quantize reads [rows, I] BF16 and writes [rows, I] E4M3 and the
      // scales; swiglu_quantize reads [rows, 2I] BF16.
      double rows = double(result.quantizedRows), cols = result.c.n / 2.0;
      double scaleBytes = 4 * rows * std::ceil(cols / 128);
      double quantizeBytes = rows * cols * 3 + scaleBytes;
      double swigluBytes = rows * cols * 5 + scaleBytes;
      std::printf(
          "    alone: quantize %s µs (%s GB/s), swiglu_quantize %s µs (%s "
          "GB/s)\n",
          cell(result.quantizeAlone.medianUs, "%.1f").c_str(),
          cell(quantizeBytes / (result.quantizeAlone.medianUs * 1e3), "%.0f")
              .c_str(),
          cell(result.swigluQuantizeAlone.medianUs, "%.1f").c_str(),
          cell(swigluBytes / (result.swigluQuantizeAlone.medianUs * 1e3),
               "%.0f")
              .c_str());
    }
    std::fflush(stdout);
    allRight = allRight && result.status == "ok";
    results.push_back(result);
    if (result.status == "ERROR" &&
        driver().cuCtxSynchronize() != CUDA_SUCCESS) {
      std::printf("the CUDA context is lost; the remaining cases are not "
                  "run\n");
      break;
    }
  }
  printGroupedTable(label, results, device);
  return finishRun(options, label, results, cases.size(), "cases", allRight,
                   [&] {
                     return groupedJson(label, config, options.cubinPath,
                                        device, results, seed, options);
                   });
}

int run(const Options &options) {
  GemmKernelConfig config = kernelConfig(options);
  std::string image = readFile(options.cubinPath);
  std::string why;
  if (deviceCount(&why) == 0)
    throw Error("no CUDA device: " + why);

  PrimaryContext context(options.device);
  DeviceInfo device;
  device.name = context.name();
  device.multiprocessors =
      context.attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
  device.l2Bytes = context.attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
  int driverVersion = 0;
  KILN_CU("driver version", cuDriverGetVersion, &driverVersion);

  GemmKernel kernel(image.data(), image.size(), config);
  const GemmKernelAttributes &attributes = kernel.attributes();
  std::string label = options.label.empty() ? config.kernelName : options.label;
  uint64_t seed = options.seed ? *options.seed : std::random_device{}();

  std::printf("kiln-gemm-check: %s, %d SMs, %d MiB L2, driver %d.%d\n",
              device.name.c_str(), device.multiprocessors, device.l2Bytes >> 20,
              driverVersion / 1000, driverVersion % 1000 / 10);
  std::printf("kernel %s from %s: BLOCK %dx%d, %d stages, %d consumer "
              "warpgroups, %d threads, %d B dynamic + %d B static shared, "
              "%d registers, %d B local, %d blocks/SM\n",
              config.kernelName.c_str(), options.cubinPath.c_str(),
              config.blockM, config.blockN, config.stages,
              config.consumerWarpgroups, config.threadsPerBlock(),
              config.launchSharedMemoryBytes(), attributes.staticSharedBytes,
              attributes.registersPerThread, attributes.localBytesPerThread,
              attributes.residentBlocksPerMultiprocessor);
  if (attributes.localBytesPerThread > 0)
    std::printf("warning: %d bytes of local memory per thread (spills or a "
                "stack) slow the kernel down\n",
                attributes.localBytesPerThread);
  std::printf("seed %llu (--seed to repeat)\n", (unsigned long long)seed);

  Stream stream;
  CheckKernels check;
  if (options.time) {
    device.hbmGBps =
        measureHbmBandwidth(check, stream.get(), options.timeoutSeconds);
    std::printf("HBM copy bandwidth: %.0f GB/s (device-to-device, read + "
                "write, median of 10)\n",
                device.hbmGBps);
  }
  std::fflush(stdout);

  if (config.grouping != GemmGrouping::None)
    return runGrouped(options, kernel, check, device, stream.get(), label,
                      seed);

  ShapeRunner runner(kernel, check, options, device, stream.get());
  std::vector<ShapeResult> results;
  bool allRight = true;
  for (size_t i = 0; i < options.shapes.size(); ++i) {
    const Shape &shape = options.shapes[i];
    ShapeResult result;
    try {
      result = runner.run(shape, splitmix(seed ^ (0x1000 + i)));
    } catch (const Error &error) {
      result = ShapeResult();
      result.shape = shape;
      result.detail = error.what();
    }
    std::printf("%-14s %-5s rel. error %s, %s µs (min %s, max %s, %d "
                "sets)%s%s\n",
                shape.text().c_str(), result.status.c_str(),
                cell(result.relativeError, "%.2e").c_str(),
                cell(result.medianUs, "%.1f").c_str(),
                cell(result.minUs, "%.1f").c_str(),
                cell(result.maxUs, "%.1f").c_str(), result.sets,
                result.detail.empty() ? "" : "\n    ", result.detail.c_str());
    std::fflush(stdout);
    allRight = allRight && result.status == "ok";
    results.push_back(result);
    // A fault inside a kernel (illegal address, trap) loses the context:
    // nothing after it can run.
    if (result.status == "ERROR" &&
        driver().cuCtxSynchronize() != CUDA_SUCCESS) {
      std::printf("the CUDA context is lost; the remaining shapes are not "
                  "run\n");
      break;
    }
  }

  printTable(label, results, device);
  return finishRun(options, label, results, options.shapes.size(), "shapes",
                   allRight, [&] {
                     return toJson(label, config, options.cubinPath, device,
                                   results, seed, options);
                   });
}

} // namespace

int main(int argc, char **argv) {
  Options options = parseOptions(argc, argv);
  try {
    return run(options);
  } catch (const Error &error) {
    std::fflush(stdout);
    std::fprintf(stderr, "kiln-gemm-check: %s\n", error.what());
    return 2;
  }
}
