//===- ModelKernelsFixture.h - GPU tests of the CUDA model kernels --------===//
//
// A HopperTest with the model kernels loaded and device buffers that start
// poisoned (a 32-bit pattern), so a test sees which outputs a kernel wrote;
// host <-> device copies synchronize the context first.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TEST_RUNTIME_MODELKERNELSFIXTURE_H
#define KILN_TEST_RUNTIME_MODELKERNELSFIXTURE_H

#include "HopperTest.h"

#include "kiln/cuda/driver.h"
#include "kiln/cuda/model_kernels.h"

#include <memory>
#include <vector>

namespace kiln::testing {

/// Poison patterns: NaNs with payloads no arithmetic produces.
constexpr uint32_t kPoisonF32 = 0x7FA5A5A5;
constexpr uint16_t kPoisonBF16 = 0x7FA5;
constexpr uint8_t kPoisonF8 = 0x7F;
constexpr uint32_t kPoisonI32 = 0xDEADBEEF;

class ModelKernelsGpuTest : public HopperTest {
protected:
  void SetUp() override {
    HopperTest::SetUp();
    if (IsSkipped())
      return;
    kernels = std::make_unique<cuda::ModelKernels>();
  }
  void TearDown() override {
    buffers.clear();
    kernels.reset();
    context.reset();
  }

  /// A device buffer of `bytes` (plus 256 bytes of guard) filled with the
  /// 32-bit `pattern`.
  CUdeviceptr alloc(size_t bytes, uint32_t pattern = kPoisonF32) {
    bytes = (bytes + 3) / 4 * 4 + 256;
    buffers.emplace_back(bytes, "test buffer");
    KILN_CU("test", cuMemsetD32Async, buffers.back().get(), pattern, bytes / 4,
            nullptr);
    return buffers.back().get();
  }
  template <typename T> CUdeviceptr upload(const std::vector<T> &host) {
    CUdeviceptr device = alloc(host.size() * sizeof(T));
    KILN_CU("test", cuCtxSynchronize);
    if (!host.empty())
      KILN_CU("test", cuMemcpyHtoD, device, host.data(),
              host.size() * sizeof(T));
    return device;
  }
  template <typename T>
  std::vector<T> download(CUdeviceptr device, size_t count) {
    KILN_CU("test", cuCtxSynchronize);
    std::vector<T> host(count);
    if (count)
      KILN_CU("test", cuMemcpyDtoH, host.data(), device, count * sizeof(T));
    return host;
  }

  std::unique_ptr<cuda::ModelKernels> kernels;
  std::vector<cuda::DeviceBuffer> buffers;
};

} // namespace kiln::testing

#endif // KILN_TEST_RUNTIME_MODELKERNELSFIXTURE_H
