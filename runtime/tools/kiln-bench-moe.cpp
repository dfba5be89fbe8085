//===- kiln-bench-moe.cpp - MoE dispatch and combine bandwidth, one GPU ---===//
//
// Times ModelKernels::moeDispatch (the 1x128-quantized token rows and their
// scales copied into expert-grouped order, top-k copies per token) and
// ModelKernels::moeCombine (each token's k expert outputs, BF16, weighted
// into an FP32 row) at DeepSeek-V3's width (hidden 7168, 256 experts,
// top-8) for T tokens with uniform random routing made on the host. Prints
// the bytes each kernel must move (read + write) over its time against the
// HBM bandwidth: what issue #6 asks of one-GPU dispatch + combine (>= 60%).
//
// usage: kiln-bench-moe [--tokens 128,512,4096,8192] [--hbm-gbps 3350]
//
//===----------------------------------------------------------------------===//

#include "bench_util.h"
#include "event_timer.h"
#include "kiln/cuda/driver.h"
#include "kiln/cuda/model_kernels.h"

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

using namespace kiln::cuda;

namespace {

constexpr int kHidden = 7168, kExperts = 256, kTopK = 8;
constexpr int kScaleBlocks = kHidden / 128;

} // namespace

int main(int argc, char **argv) {
  std::vector<int> tokenCounts{128, 512, 4096, 8192};
  double hbm = 3350;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--tokens" && i + 1 < argc) {
      tokenCounts = kiln::bench::parseIntList(argv[++i]);
    } else if (arg == "--hbm-gbps" && i + 1 < argc) {
      hbm = std::stod(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: kiln-bench-moe [--tokens 128,512,4096,8192] "
                           "[--hbm-gbps 3350]\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  try {
    PrimaryContext context;
    ModelKernels kernels;
    kiln::bench::EventTimer timer;
    // About 0.2 s of calls per measurement.
    auto time = [&](auto launch) {
      return timer.secondsPerCall(launch, 200.0, 3, 200);
    };
    std::printf("device: %s; hidden %d, %d experts, top-%d\n\n"
                "| tokens | dispatch us | dispatch GB/s | combine us | combine "
                "GB/s | both, of %.0f GB/s |\n| --- | --- | --- | --- | --- | "
                "--- |\n",
                context.name().c_str(), kHidden, kExperts, kTopK, hbm);
    std::mt19937 random(5);
    for (int T : tokenCounts) {
      const int64_t R = int64_t(T) * kTopK;
      // Top-k distinct experts per token, uniformly at random.
      std::vector<int32_t> ids(R);
      std::vector<int32_t> all(kExperts);
      for (int e = 0; e < kExperts; ++e)
        all[e] = e;
      for (int t = 0; t < T; ++t) {
        std::shuffle(all.begin(), all.end(), random);
        std::copy_n(all.begin(), kTopK, ids.begin() + int64_t(t) * kTopK);
      }
      DeviceBuffer idsDevice(R * 4, "ids");
      KILN_CU("bench", cuMemcpyHtoD, idsDevice.get(), ids.data(), R * 4);
      DeviceBuffer inValues(int64_t(T) * kHidden, "tokens");
      DeviceBuffer inScales(int64_t(T) * kScaleBlocks * 4, "token scales");
      DeviceBuffer outValues(R * kHidden, "dispatched");
      DeviceBuffer outScales(R * kScaleBlocks * 4, "dispatched scales");
      DeviceBuffer offsets((kExperts + 1) * 4, "offsets");
      DeviceBuffer rows(R * 4, "rows");
      DeviceBuffer expertOut(R * kHidden * 2, "expert outputs");
      DeviceBuffer weights(R * 4, "weights");
      DeviceBuffer combined(int64_t(T) * kHidden * 4, "combined");
      kernels.fillRandom(nullptr, inValues.get(), int64_t(T) * kHidden,
                         ElementType::F8E4M3, 1, 1.0f);
      kernels.fillRandom(nullptr, inScales.get(), int64_t(T) * kScaleBlocks,
                         ElementType::F32, 2, 1.0f);
      kernels.fillRandom(nullptr, expertOut.get(), R * kHidden,
                         ElementType::BF16, 3, 1.0f);
      kernels.fillRandom(nullptr, weights.get(), R, ElementType::F32, 4, 1.0f);

      QuantizedMatrix in{inValues.get(), inScales.get(), T, kHidden, 0, 0};
      QuantizedMatrix out{outValues.get(), outScales.get(), R,
                          kHidden,         offsets.get(),   kExperts};
      const double dispatch = time([&] {
        kernels.moeDispatch(nullptr, in, idsDevice.get(), kTopK, kExperts, out,
                            offsets.get(), rows.get());
      });
      DeviceMatrix y{expertOut.get(), R, kHidden, kHidden, ElementType::BF16};
      DeviceMatrix sum{combined.get(), T, kHidden, kHidden, ElementType::F32};
      const double combine = time([&] {
        kernels.moeCombine(nullptr, y, rows.get(), weights.get(), kTopK, sum);
      });
      // Dispatch reads each token row once per choice and writes every
      // copy (values + scales); combine reads k BF16 rows and writes one
      // FP32 row per token.
      const double dispatchBytes =
          2.0 * R * (kHidden + 4.0 * kScaleBlocks) + R * 4.0 * 2;
      const double combineBytes =
          R * (2.0 * kHidden + 8.0) + double(T) * kHidden * 4;
      const double both =
          (dispatchBytes + combineBytes) / (dispatch + combine) / 1e9;
      std::printf("| %d | %.1f | %.0f | %.1f | %.0f | %.0f%% |\n", T,
                  dispatch * 1e6, dispatchBytes / dispatch / 1e9, combine * 1e6,
                  combineBytes / combine / 1e9, 100.0 * both / hbm);
    }
    return 0;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "kiln-bench-moe: error: %s\n", e.what());
    return 1;
  }
}
