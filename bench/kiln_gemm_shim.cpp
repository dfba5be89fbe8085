// C entry points over kiln::cuda::GemmKernel, so that a Python harness can
// launch a Kiln GEMM cubin on PyTorch's stream, between cuBLAS launches, in
// one process (bench/gemm_interleaved.py): both then run under the same SM
// clock levels, which the power controller changes within a run
// (bench/results/steady-state-power.md).
//
// The kernel loads into the context current on the calling thread (the
// primary context PyTorch made current). Every entry point returns 0 on
// success and otherwise -1 with the message in kiln_shim_error().

#include "kiln/cuda/gemm_launcher.h"

#include <cstdint>
#include <exception>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Shim {
  std::unique_ptr<kiln::cuda::GemmKernel> kernel;
  std::vector<kiln::cuda::GemmLaunch> launches;
};

thread_local std::string lastError;

template <typename Body> int guarded(Body body) {
  try {
    body();
    return 0;
  } catch (const std::exception &error) {
    lastError = error.what();
    return -1;
  }
}

} // namespace

extern "C" {

const char *kiln_shim_error(void) { return lastError.c_str(); }

/// Loads `cubin` with the manifest `manifest` into *handle.
int kiln_shim_open(const char *cubin, const char *manifest, void **handle) {
  return guarded([&] {
    std::ifstream file(cubin, std::ios::binary);
    if (!file)
      throw std::runtime_error(std::string(cubin) + ": cannot open");
    std::string image((std::istreambuf_iterator<char>(file)),
                      std::istreambuf_iterator<char>());
    auto shim = std::make_unique<Shim>();
    shim->kernel = std::make_unique<kiln::cuda::GemmKernel>(
        image.data(), image.size(), kiln::cuda::loadGemmManifest(manifest));
    *handle = shim.release();
  });
}

/// Prepares a launch on device pointers (gemm-abi.md "Buffers": A M×K, B
/// N×K, scaleA [K/128][M], scaleB [⌈N/128⌉][K/128], out M×N BF16); its index
/// goes to *index.
int kiln_shim_prepare(void *handle, uint64_t a, uint64_t b, uint64_t scaleA,
                      uint64_t scaleB, uint64_t out, int m, int n, int k,
                      int *index) {
  return guarded([&] {
    auto *shim = static_cast<Shim *>(handle);
    kiln::cuda::GemmOperands operands;
    operands.a = a;
    operands.b = b;
    operands.scaleA = scaleA;
    operands.scaleB = scaleB;
    operands.out = out;
    operands.m = m;
    operands.n = n;
    operands.k = k;
    shim->launches.push_back(shim->kernel->prepare(operands));
    *index = static_cast<int>(shim->launches.size()) - 1;
  });
}

/// Enqueues prepared launch `index` on `stream` (a CUstream).
int kiln_shim_launch(void *handle, int index, uint64_t stream) {
  return guarded([&] {
    auto *shim = static_cast<Shim *>(handle);
    shim->kernel->launch(shim->launches.at(static_cast<size_t>(index)),
                         reinterpret_cast<CUstream>(stream));
  });
}

void kiln_shim_close(void *handle) { delete static_cast<Shim *>(handle); }

} // extern "C"
