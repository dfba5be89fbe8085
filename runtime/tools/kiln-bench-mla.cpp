//===- kiln-bench-mla.cpp - mla_attention alone at DeepSeek-V3 shapes -----===//
//
// Times ModelKernels::mlaAttention (cache append + attention) at
// DeepSeek-V3's shapes (128 heads, nope 128, rope 64, v 128, kv_lora 512,
// 64-token pages, BF16 cache) with synthetic inputs made on the GPU: decode
// steps of B sequences at context C (B tokens, each at position C - 1) and
// prefill chunks of P tokens of a new sequence (causal). Each decode case
// runs the one-block-per-(head, token) kernel (no workspace) and the
// tensor-core path (with a workspace; a single token at context <= 448 stays
// on the first kernel either way: mlaAttentionOnTensorCores) on the same
// inputs, prints both times, the bytes a decode step must read (cache rows +
// kv_b_proj) over the time against the HBM bandwidth, and the largest
// difference between the two outputs relative to a token's rms. Each prefill
// runs the absorbed tensor-core path and the decompressed one
// (mlaPrefillDecompressed, from kMlaPrefillMinTokens tokens) and prints both
// times, each form's FLOPs over its time and the outputs' difference.
//
// usage: kiln-bench-mla [--batches 1,8,32,128] [--contexts 128,4096]
//          [--prefill 512,4096] [--hbm-gbps 3350]
//
//===----------------------------------------------------------------------===//

#include "bench_util.h"
#include "event_timer.h"
#include "kiln/cuda/driver.h"
#include "kiln/cuda/model_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

using namespace kiln::cuda;

namespace {

constexpr int kHeads = 128, kNope = 128, kRope = 64, kV = 128, kLora = 512;
constexpr int kPageTokens = 64, kWidth = kLora + kRope;

double bf16(uint16_t bits) {
  uint32_t word = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &word, 4);
  return value;
}

struct Result {
  double seconds;
  std::vector<uint16_t> out;
};

class Bench {
public:
  /// Times the step of `sequences` sequences with `tokensEach` tokens at
  /// positions context - tokensEach .. context - 1.
  enum class Path { Scalar, TensorCores, Decompressed };
  Result run(int sequences, int tokensEach, int context, Path path) {
    const int64_t T = int64_t(sequences) * tokensEach;
    const int maxPages = (context + kPageTokens - 1) / kPageTokens;
    std::vector<int32_t> pageTable(int64_t(sequences) * maxPages);
    std::iota(pageTable.begin(), pageTable.end(), 0);
    std::vector<int32_t> positions, slots;
    for (int s = 0; s < sequences; ++s)
      for (int j = 0; j < tokensEach; ++j) {
        positions.push_back(context - tokensEach + j);
        slots.push_back(s);
      }
    std::vector<DeviceBuffer> buffers;
    auto random = [&](int64_t count, ElementType type, float amplitude) {
      buffers.emplace_back(std::max<int64_t>(count, 1) * elementBytes(type),
                           "bench");
      kernels.fillRandom(nullptr, buffers.back().get(), count, type,
                         buffers.size(), amplitude);
      return buffers.back().get();
    };
    auto upload = [&](const std::vector<int32_t> &host) {
      buffers.emplace_back(host.size() * 4, "bench");
      KILN_CU("bench", cuMemcpyHtoD, buffers.back().get(), host.data(),
              host.size() * 4);
      return buffers.back().get();
    };
    auto matrix = [](CUdeviceptr data, int64_t rows, int64_t cols) {
      DeviceMatrix m;
      m.data = data;
      m.rows = rows;
      m.cols = m.stride = cols;
      m.type = ElementType::BF16;
      return m;
    };
    std::vector<float> invFreq(kRope / 2);
    for (int j = 0; j < kRope / 2; ++j)
      invFreq[j] = static_cast<float>(std::pow(10000.0, -2.0 * j / kRope));
    buffers.emplace_back(invFreq.size() * 4, "bench");
    KILN_CU("bench", cuMemcpyHtoD, buffers.back().get(), invFreq.data(),
            invFreq.size() * 4);

    MlaAttentionArgs a;
    a.heads = kHeads;
    a.nopeDim = kNope;
    a.ropeDim = kRope;
    a.vDim = kV;
    a.kvLoraRank = kLora;
    a.softmaxScale = 1.0f / std::sqrt(float(kNope + kRope));
    a.attentionFactor = 1.0f;
    a.invFreq = buffers.back().get();
    a.q = matrix(random(T * kHeads * (kNope + kRope), ElementType::BF16, 1.0f),
                 T, kHeads * (kNope + kRope));
    a.latent = matrix(random(T * kLora, ElementType::BF16, 1.0f), T, kLora);
    a.kPe = matrix(random(T * kRope, ElementType::BF16, 1.0f), T, kRope);
    a.kvB = random(int64_t(kHeads) * (kNope + kV) * kLora, ElementType::BF16,
                   0.05f);
    buffers.emplace_back(T * kHeads * kV * 2, "bench out");
    a.out = matrix(buffers.back().get(), T, kHeads * kV);
    a.positions = upload(positions);
    a.sequenceSlots = upload(slots);
    a.pageTable = upload(pageTable);
    a.maxPagesPerSequence = maxPages;
    a.pageTokens = kPageTokens;
    a.cache = random(int64_t(pageTable.size()) * kPageTokens * kWidth,
                     ElementType::BF16, 1.0f);
    a.maxContext = context;
    if (path != Path::Scalar) {
      a.workspaceBytes = mlaAttentionWorkspaceBytes(T, kHeads, kLora);
      if (path == Path::Decompressed) {
        a.sequences = sequences;
        a.workspaceBytes =
            std::max(a.workspaceBytes,
                     mlaPrefillWorkspaceBytes(context, kHeads, kNope, kV));
      }
      buffers.emplace_back(a.workspaceBytes, "bench workspace");
      a.workspace = buffers.back().get();
    }

    // About 0.3 s of repeats, 1 to 50 of them.
    const double seconds = timer.secondsPerCall(
        [&] { kernels.mlaAttention(nullptr, a); }, 300.0, 1, 50);
    Result result{seconds, std::vector<uint16_t>(T * kHeads * kV)};
    KILN_CU("bench", cuMemcpyDtoH, result.out.data(), a.out.data,
            result.out.size() * 2);
    return result;
  }

  /// max over tokens of max |a - b| / rms(a) within the token's row (a
  /// prefill's early tokens attend to few positions and have outputs far
  /// above the late ones').
  static double difference(const std::vector<uint16_t> &a,
                           const std::vector<uint16_t> &b) {
    const size_t row = size_t(kHeads) * kV;
    double worst = 0;
    for (size_t r = 0; r < a.size() / row; ++r) {
      double squares = 0, largest = 0;
      for (size_t i = r * row; i < (r + 1) * row; ++i) {
        double x = bf16(a[i]), y = bf16(b[i]);
        squares += x * x;
        largest = std::max(largest, std::fabs(x - y));
        if (std::isnan(x) || std::isnan(y))
          largest = INFINITY;
      }
      worst = std::max(worst, largest / std::sqrt(squares / row));
    }
    return worst;
  }

  ModelKernels kernels;

private:
  kiln::bench::EventTimer timer;
};

} // namespace

int main(int argc, char **argv) {
  std::vector<int> batches{1, 8, 32, 128}, contexts{128, 4096};
  std::vector<int> prefills{512, 4096};
  double hbm = 3350;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--batches")
      batches = kiln::bench::parseIntList(value);
    else if (flag == "--contexts")
      contexts = kiln::bench::parseIntList(value);
    else if (flag == "--prefill")
      prefills = kiln::bench::parseIntList(value);
    else if (flag == "--hbm-gbps")
      hbm = std::stod(value);
    else {
      std::fprintf(stderr, "kiln-bench-mla: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  try {
    PrimaryContext context;
    std::printf("device: %s\n\n", context.name().c_str());
    Bench bench;
    const double kvB = double(kHeads) * (kNope + kV) * kLora * 2;
    std::printf(
        "| step | old (us) | new (us) | speedup | new: bytes read | "
        "new: GB/s (%% of %.0f) | new: TFLOP/s | max diff / token rms |\n",
        hbm);
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (int context : contexts)
      for (int batch : batches) {
        Result old = bench.run(batch, 1, context, Bench::Path::Scalar);
        Result fast = bench.run(batch, 1, context, Bench::Path::TensorCores);
        double bytes = double(batch) * context * kWidth * 2 + kvB;
        double flops = double(batch) * kHeads *
                       (2.0 * context * (kWidth + kLora) +
                        2.0 * (kNope * kLora + kLora * kV));
        std::printf(
            "| decode B=%d C=%d | %.1f | %.1f | %.1fx | %.1f MB | "
            "%.0f (%.0f%%) | %.1f | %.1e |\n",
            batch, context, old.seconds * 1e6, fast.seconds * 1e6,
            old.seconds / fast.seconds, bytes / 1e6, bytes / fast.seconds / 1e9,
            100 * bytes / fast.seconds / 1e9 / hbm, flops / fast.seconds / 1e12,
            Bench::difference(old.out, fast.out));
        std::fflush(stdout);
      }
    std::printf("\n| prefill (one new sequence) | absorbed (us) | "
                "decompressed (us) | speedup | absorbed: TFLOP/s | "
                "decompressed: TFLOP/s | max diff / token rms |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    for (int prefill : prefills) {
      Result absorbed =
          bench.run(1, prefill, prefill, Bench::Path::TensorCores);
      Result decompressed =
          bench.run(1, prefill, prefill, Bench::Path::Decompressed);
      // Each form's own FLOPs: the absorbed scores and sums run over the
      // 576/512-wide latent plus the per-token absorptions; the
      // decompressed ones over 192/128 per head plus kv_b_proj once per
      // position.
      double T = prefill, pairs = T * (T + 1) / 2;
      double absorbedFlops = pairs * kHeads * (kWidth + kLora) * 2 +
                             T * kHeads * (kNope * kLora + kLora * kV) * 2;
      double decompressedFlops = pairs * kHeads * (kNope + kRope + kV) * 2 +
                                 T * kHeads * (kNope + kV) * kLora * 2;
      std::printf("| T=%d | %.1f | %.1f | %.2fx | %.1f | %.1f | %.1e |\n",
                  prefill, absorbed.seconds * 1e6, decompressed.seconds * 1e6,
                  absorbed.seconds / decompressed.seconds,
                  absorbedFlops / absorbed.seconds / 1e12,
                  decompressedFlops / decompressed.seconds / 1e12,
                  Bench::difference(absorbed.out, decompressed.out));
      std::fflush(stdout);
    }
  } catch (const std::exception &error) {
    std::fprintf(stderr, "kiln-bench-mla: %s\n", error.what());
    return 1;
  }
  return 0;
}
