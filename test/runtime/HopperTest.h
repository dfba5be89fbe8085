//===- HopperTest.h - a GoogleTest fixture for tests that need sm_90 -----===//
//
// Holds GPU 0's primary context for the test and skips, saying why, on a
// machine without a driver or GPU, or with a GPU other than compute
// capability 9.0 (the sm_90a cubins run nowhere else).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TEST_RUNTIME_HOPPERTEST_H
#define KILN_TEST_RUNTIME_HOPPERTEST_H

#include "kiln/cuda/driver.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace kiln::testing {

class HopperTest : public ::testing::Test {
protected:
  void SetUp() override {
    std::string why;
    if (cuda::deviceCount(&why) == 0)
      GTEST_SKIP() << "no CUDA device: " << why;
    context = std::make_unique<cuda::PrimaryContext>(0);
    int major =
        context->attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
    int minor =
        context->attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
    if (major != 9 || minor != 0)
      GTEST_SKIP() << "no CUDA device of compute capability 9.0 (sm_90a "
                      "cubin); found "
                   << major << "." << minor;
  }

  std::unique_ptr<cuda::PrimaryContext> context;
};

} // namespace kiln::testing

#endif // KILN_TEST_RUNTIME_HOPPERTEST_H
