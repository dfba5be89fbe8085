//===- NcclTest.cpp - the NCCL communicator at one rank -------------------===//
//
// One GPU can hold one NCCL rank only, so here the all-to-all is a send to
// itself; several ranks are checked by tools/kiln-ep-check on a multi-GPU
// machine.
//
//===----------------------------------------------------------------------===//

#include "HopperTest.h"

#include "kiln/cuda/nccl.h"

#include <cstring>
#include <numeric>
#include <random>

using kiln::cuda::ByteRange;
using kiln::cuda::DeviceBuffer;
using kiln::cuda::NcclCommunicator;

namespace {

class NcclTest : public kiln::testing::HopperTest {};

} // namespace

TEST_F(NcclTest, OneRankAllToAllIsACopyIntoPlace) {
  std::unique_ptr<NcclCommunicator> comm;
  try {
    comm = NcclCommunicator::create(kiln::DistributedEnvironment{});
  } catch (const kiln::Error &e) {
    GTEST_SKIP() << "no NCCL: " << e.what();
  }
  std::printf("%s, rank %d of %d\n", comm->version().c_str(), comm->rank(),
              comm->worldSize());
  ASSERT_EQ(comm->worldSize(), 1);
  CUstream stream = nullptr;
  KILN_CU("test", cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING);

  const size_t bytes = 3 << 20, offset = 4096;
  std::vector<uint8_t> data(bytes);
  std::mt19937 random(11);
  for (uint8_t &b : data)
    b = static_cast<uint8_t>(random());
  DeviceBuffer send(bytes, "send"), receive(bytes + 2 * offset, "receive");
  KILN_CU("test", cuMemcpyHtoD, send.get(), data.data(), bytes);
  // Poison: the bytes around the received block must stay untouched.
  std::vector<uint8_t> poison(bytes + 2 * offset, 0xA5);
  KILN_CU("test", cuMemcpyHtoD, receive.get(), poison.data(), poison.size());
  comm->allToAllV(send.get(), {ByteRange{0, bytes}}, receive.get(),
                  {ByteRange{offset, bytes}}, stream);
  KILN_CU("test", cuStreamSynchronize, stream);
  std::vector<uint8_t> back(poison.size());
  KILN_CU("test", cuMemcpyDtoH, back.data(), receive.get(), back.size());
  EXPECT_EQ(std::memcmp(back.data() + offset, data.data(), bytes), 0);
  for (size_t i = 0; i < offset; ++i) {
    ASSERT_EQ(back[i], 0xA5) << "byte " << i << " before the block";
    ASSERT_EQ(back[offset + bytes + i], 0xA5) << "byte after the block";
  }

  EXPECT_EQ(comm->exchangeCounts({12345}, stream), std::vector<int64_t>{12345});
  EXPECT_THROW(comm->exchangeCounts({1, 2}, stream), kiln::Error);
  KILN_CU("test", cuStreamDestroy, stream);
}
