//===- ModelKernelsTest.cpp - the CUDA backend's non-GEMM kernels ---------===//
//
// The host-side checks need no GPU. On a GPU, every kernel runs on fresh
// random inputs with its outputs poisoned first (a NaN pattern arithmetic
// does not produce), and is compared with the CPU reference's building
// blocks (kiln::rmsNorm, kiln::quantizeActivationTiles, kiln::routeToken,
// kiln::applyRope) or a plain FP64 host loop, with tolerances derived from
// the formats involved. Skips with the reason where there is no sm_90 GPU.
//
//===----------------------------------------------------------------------===//

#include "model_kernels_checks.h"

#include "kiln/config.h"
#include "kiln/cpu_model.h"
#include "kiln/cuda/driver.h"
#include "kiln/cuda/model_kernels.h"
#include "kiln/fp8.h"

#include "ModelKernelsFixture.h"
#include "TestSupport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

namespace {

using kiln::testing::errorOf;
using kiln::testing::expectMentions;
using namespace kiln::cuda;

//===----------------------------------------------------------------------===//
// Host-side checks (no GPU)
//===----------------------------------------------------------------------===//

DeviceMatrix matrix(ElementType type, int64_t rows, int64_t cols,
                    int64_t stride = 0, CUdeviceptr data = 0x10000) {
  DeviceMatrix m;
  m.data = data;
  m.rows = rows;
  m.cols = cols;
  m.stride = stride ? stride : cols;
  m.type = type;
  return m;
}

QuantizedMatrix quantized(int64_t rows, int64_t cols) {
  QuantizedMatrix q;
  q.values = 0x20000;
  q.scales = 0x30000;
  q.rows = rows;
  q.cols = cols;
  return q;
}

TEST(ModelKernelChecks, QuantizationNeeds16ByteRows) {
  DeviceMatrix x = matrix(ElementType::F32, 4, 200);
  expectMentions(errorOf([&] { detail::checkQuantize(x, quantized(4, 200)); }),
                 {"model kernel quantize", "multiple of 16"});
  expectMentions(errorOf([&] {
                   detail::checkRmsNormQuantize(x, 0x40000, 1e-6f,
                                                quantized(4, 200));
                 }),
                 {"model kernel rms_norm_quantize", "multiple of 16"});
  DeviceMatrix gate = matrix(ElementType::BF16, 4, 100);
  expectMentions(errorOf([&] {
                   detail::checkSwigluQuantize(gate, gate, quantized(4, 100));
                 }),
                 {"swiglu_quantize", "multiple of 16"});
  // A partial last 1×128 tile is fine (192 = 128 + 64).
  detail::checkQuantize(matrix(ElementType::BF16, 4, 256), quantized(4, 256));
  detail::checkQuantize(matrix(ElementType::BF16, 4, 192), quantized(4, 192));
}

TEST(ModelKernelChecks, ShapesTypesAndPointers) {
  DeviceMatrix x = matrix(ElementType::F32, 4, 256);
  expectMentions(errorOf([&] {
                   detail::checkRmsNorm(x, 0x40000, 1e-6f,
                                        matrix(ElementType::F32, 3, 256));
                 }),
                 {"model kernel rms_norm", "out", "must have 4 rows"});
  expectMentions(errorOf([&] { detail::checkQuantize(x, quantized(4, 512)); }),
                 {"out [4 x 512] must be 4 x 256"});
  expectMentions(errorOf([&] { detail::checkRmsNorm(x, 0, 1e-6f, x); }),
                 {"weight is a null pointer"});
  expectMentions(errorOf([&] {
                   detail::checkRmsNorm(matrix(ElementType::I32, 4, 256),
                                        0x40000, 1e-6f, x);
                 }),
                 {"x (i32 [4 x 256, stride 256]) must be f32 or bf16"});
  expectMentions(errorOf([&] {
                   detail::checkAdd(x, matrix(ElementType::F32, 4, 256, 128),
                                    x);
                 }),
                 {"model kernel add", "stride is below cols"});
  expectMentions(errorOf([&] {
                   detail::checkMatmulF32(x, 0x40000, 10,
                                          matrix(ElementType::F32, 4, 11));
                 }),
                 {"model kernel matmul_f32", "must have 10 columns"});
  expectMentions(errorOf([&] {
                   detail::checkEmbed(0x50000, 3, 0x40000, 100,
                                      matrix(ElementType::BF16, 3, 64));
                 }),
                 {"model kernel embed", "must be f32"});
  expectMentions(errorOf([&] {
                   detail::checkSelectRows(x, 0x50000, 2,
                                           matrix(ElementType::F32, 3, 256));
                 }),
                 {"select_rows", "must have 2 rows"});
  // Unaligned rows fall back to scalar loads in matmulF32.
  EXPECT_TRUE(detail::matmulVectorizable(x, 0x40000));
  EXPECT_FALSE(detail::matmulVectorizable(
      matrix(ElementType::F32, 4, 256, 256, 0x10004), 0x40000));
  EXPECT_FALSE(
      detail::matmulVectorizable(matrix(ElementType::F32, 4, 250), 0x40000));
}

MlaAttentionArgs mlaArgs(int tokens) {
  MlaAttentionArgs a;
  a.heads = 4;
  a.nopeDim = 32;
  a.ropeDim = 16;
  a.vDim = 32;
  a.kvLoraRank = 160;
  a.invFreq = a.kvB = a.positions = a.sequenceSlots = a.pageTable = a.cache =
      0x40000;
  a.q = matrix(ElementType::BF16, tokens, 4 * 48);
  a.latent = matrix(ElementType::F32, tokens, 160);
  a.kPe = matrix(ElementType::BF16, tokens, 16);
  a.out = matrix(ElementType::BF16, tokens, 4 * 32);
  a.maxPagesPerSequence = 4;
  a.pageTokens = 16;
  a.maxContext = 40;
  return a;
}

TEST(ModelKernelChecks, MlaAttention) {
  detail::checkMlaAttention(mlaArgs(3));
  MlaAttentionArgs a = mlaArgs(3);
  a.ropeDim = 15;
  expectMentions(errorOf([&] { detail::checkMlaAttention(a); }),
                 {"model kernel mla_attention", "rope must be even"});
  a = mlaArgs(3);
  a.kPe.rows = 2;
  expectMentions(errorOf([&] { detail::checkMlaAttention(a); }),
                 {"k_pe", "must have 3 rows"});
  a = mlaArgs(3);
  a.maxContext = 65;
  expectMentions(errorOf([&] { detail::checkMlaAttention(a); }),
                 {"maxContext 65", "= 64"});
  a = mlaArgs(3);
  a.cacheType = ElementType::F8E4M3;
  expectMentions(errorOf([&] { detail::checkMlaAttention(a); }),
                 {"cacheScales (f8e4m3 cache) is a null pointer"});
  a = mlaArgs(3);
  a.kvLoraRank = 2048;
  a.latent.cols = 2048;
  expectMentions(errorOf([&] { detail::checkMlaAttention(a); }),
                 {"kv_lora must be even, 2 to 1024"});

  // The tensor-core path: taken with a workspace for a BF16 cache and
  // kv_lora ≤ 512, rope ≤ 64 (multiples of 8); the workspace must fit T.
  a = mlaArgs(3);
  EXPECT_FALSE(detail::mlaAttentionOnTensorCores(a));
  a.workspace = 0x80000;
  a.workspaceBytes = mlaAttentionWorkspaceBytes(3, 4, 160);
  EXPECT_TRUE(detail::mlaAttentionOnTensorCores(a));
  detail::checkMlaAttention(a);
  EXPECT_GE(a.workspaceBytes, size_t(3) * 4 * 160 * 2);
  a.workspaceBytes -= 1;
  expectMentions(errorOf([&] { detail::checkMlaAttention(a); }),
                 {"the workspace has", "3 tokens need"});
  a.workspaceBytes += 1;
  // One token over a short context stays on the scalar kernel (faster).
  MlaAttentionArgs single = mlaArgs(1);
  single.workspace = 0x80000;
  single.workspaceBytes = mlaAttentionWorkspaceBytes(1, 4, 160);
  EXPECT_FALSE(detail::mlaAttentionOnTensorCores(single));
  single.maxContext = 1000;
  EXPECT_TRUE(detail::mlaAttentionOnTensorCores(single));
  a.cacheType = ElementType::F8E4M3;
  a.cacheScales = 0x40000;
  EXPECT_FALSE(detail::mlaAttentionOnTensorCores(a));
  a = mlaArgs(3);
  a.workspace = 0x80000;
  a.workspaceBytes = size_t(1) << 30;
  a.ropeDim = 12;
  a.kPe.cols = 12;
  a.q.cols = 4 * 44;
  EXPECT_FALSE(detail::mlaAttentionOnTensorCores(a));
  detail::checkMlaAttention(a);

  // The decompressed prefill path: one sequence, kMlaPrefillMinTokens
  // tokens, a BF16 cache and a workspace for the whole context.
  MlaAttentionArgs prefill = mlaArgs(kMlaPrefillMinTokens);
  prefill.maxContext = 64;
  prefill.sequences = 1;
  prefill.workspace = 0x80000;
  prefill.workspaceBytes = mlaPrefillWorkspaceBytes(64, 4, 32, 32);
  EXPECT_GE(prefill.workspaceBytes, size_t(64) * 4 * 64 * 2 + 4);
  EXPECT_TRUE(detail::mlaPrefillDecompressed(prefill));
  detail::checkMlaAttention(prefill);
  MlaAttentionArgs other = prefill;
  other.workspaceBytes -= 1;
  EXPECT_FALSE(detail::mlaPrefillDecompressed(other));
  other = prefill;
  other.sequences = 2;
  EXPECT_FALSE(detail::mlaPrefillDecompressed(other));
  other = prefill;
  other.sequences = 0;
  EXPECT_FALSE(detail::mlaPrefillDecompressed(other));
  other = prefill;
  other.decompressedPrefill = false;
  EXPECT_FALSE(detail::mlaPrefillDecompressed(other));
  other = mlaArgs(kMlaPrefillMinTokens - 1);
  other.maxContext = 64;
  other.sequences = 1;
  other.workspace = 0x80000;
  other.workspaceBytes = prefill.workspaceBytes;
  EXPECT_FALSE(detail::mlaPrefillDecompressed(other));
  other = prefill;
  other.cacheType = ElementType::F8E4M3;
  other.cacheScales = 0x40000;
  EXPECT_FALSE(detail::mlaPrefillDecompressed(other));
  other = prefill;
  other.vDim = 136;
  other.out.cols = 4 * 136;
  other.out.stride = 4 * 136;
  EXPECT_FALSE(detail::mlaPrefillDecompressed(other));
}

TEST(ModelKernelChecks, MoeRouteAndDispatch) {
  MoeRouteArgs r;
  r.logits = matrix(ElementType::F32, 5, 256);
  r.expertIds = r.weights = 0x40000;
  r.topK = 8;
  r.nGroup = 8;
  r.topkGroup = 4;
  detail::checkMoeRoute(r);
  r.nGroup = 7;
  expectMentions(errorOf([&] { detail::checkMoeRoute(r); }),
                 {"model kernel moe_route", "n_group 7 must divide"});
  r.nGroup = 8;
  r.topkGroup = 1;
  r.topK = 33;
  expectMentions(errorOf([&] { detail::checkMoeRoute(r); }),
                 {"top_k 33 must be 1 to 32"});

  QuantizedMatrix in = quantized(5, 256), out = quantized(40, 256);
  detail::checkMoeDispatch(in, 0x40000, 8, 256, out, 0x50000, 0x60000);
  expectMentions(errorOf([&] {
                   detail::checkMoeDispatch(in, 0x40000, 8, 256,
                                            quantized(39, 256), 0x50000,
                                            0x60000);
                 }),
                 {"model kernel moe_dispatch", "must be 40 x 256"});
  expectMentions(errorOf([&] {
                   detail::checkMoeDispatch(in, 0x40000, 8, 256, out, 0,
                                            0x60000);
                 }),
                 {"offsets is a null pointer"});
  expectMentions(errorOf([&] {
                   detail::checkMoeCombine(matrix(ElementType::F32, 40, 256),
                                           0x40000, 0x50000, 8,
                                           matrix(ElementType::F32, 5, 256));
                 }),
                 {"model kernel moe_combine", "y", "must be bf16"});
}

//===----------------------------------------------------------------------===//
// On a GPU
//===----------------------------------------------------------------------===//

using kiln::testing::kPoisonBF16;
using kiln::testing::kPoisonF32;
using kiln::testing::kPoisonF8;
using kiln::testing::kPoisonI32;

class ModelKernelsOnGpu : public kiln::testing::ModelKernelsGpuTest {
protected:
  /// rmsNormQuantize of `rows` x 7168 against the CPU's rmsNorm + quantize.
  void checkRmsNormQuantize(int64_t rows);
  std::vector<float> normals(size_t count, float sigma = 1.0f) {
    std::normal_distribution<float> normal(0.0f, sigma);
    std::vector<float> values(count);
    for (float &v : values)
      v = normal(random);
    return values;
  }
  static std::vector<uint16_t> toBF16(const std::vector<float> &values) {
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < values.size(); ++i)
      bits[i] = kiln::encodeBF16(values[i]);
    return bits;
  }
  static std::vector<float> fromBF16(const std::vector<uint16_t> &bits) {
    std::vector<float> values(bits.size());
    for (size_t i = 0; i < bits.size(); ++i)
      values[i] = kiln::decodeBF16(bits[i]);
    return values;
  }

  /// `count` random E4M3 codes, none of them NaN.
  std::vector<uint8_t> randomCodes(size_t count) {
    std::vector<uint8_t> codes(count);
    for (uint8_t &v : codes)
      v = static_cast<uint8_t>(random() & 0x7E);
    return codes;
  }
  /// moe_dispatch's input: `rows` tokens of `cols` codes and their 1x128
  /// scales ([cols / 128][rows]), uploaded.
  QuantizedMatrix quantizedInput(const std::vector<uint8_t> &values,
                                 const std::vector<float> &scales, int64_t rows,
                                 int64_t cols) {
    QuantizedMatrix in;
    in.values = upload(values);
    in.scales = upload(scales);
    in.rows = rows;
    in.cols = cols;
    return in;
  }
  /// moe_dispatch's output: `routed` rows of `cols` codes and their scales,
  /// grouped over `groups` groups by `offsets`.
  QuantizedMatrix dispatchOutput(int64_t routed, int64_t cols, int groups,
                                 CUdeviceptr offsets) {
    QuantizedMatrix out;
    out.values = alloc(routed * cols);
    out.scales = alloc(routed * (cols / 128) * 4);
    out.rows = routed;
    out.cols = cols;
    out.groupOffsets = offsets;
    out.groups = groups;
    return out;
  }

  std::mt19937 random{20261123};
};

bool isPoisonF32(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return bits == kPoisonF32;
}

/// Distance in E4M3 codes between two codes of the same sign (0 if equal).
int codeDistance(uint8_t a, uint8_t b) {
  if (a == b)
    return 0;
  if ((a & 0x80) != (b & 0x80))
    return 1000;
  return std::abs(int(a & 0x7F) - int(b & 0x7F));
}

TEST_F(ModelKernelsOnGpu, Embed) {
  const int64_t vocab = 1000, hidden = 300, stride = 320;
  std::vector<float> table = normals(vocab * hidden);
  std::vector<uint16_t> tableBits = toBF16(table);
  std::vector<int32_t> tokens = {5, 999, 0, -1, 1000, 17, 5};
  const int64_t T = tokens.size();
  CUdeviceptr out = alloc(T * stride * 4);
  kernels->embed(nullptr, upload(tokens), T, upload(tableBits), vocab,
                 matrix(ElementType::F32, T, hidden, stride, out));
  std::vector<float> result = download<float>(out, T * stride);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < stride; ++c) {
      float value = result[t * stride + c];
      if (c >= hidden) {
        ASSERT_TRUE(isPoisonF32(value)) << "wrote past cols at " << t;
      } else if (tokens[t] < 0 || tokens[t] >= vocab) {
        ASSERT_TRUE(std::isnan(value) && !isPoisonF32(value))
            << "bad id row " << t;
      } else {
        ASSERT_EQ(value, kiln::decodeBF16(tableBits[tokens[t] * hidden + c]))
            << t << ", " << c;
      }
    }
}

TEST_F(ModelKernelsOnGpu, RmsNorm) {
  for (int64_t cols : {7168, 200}) {
    for (ElementType inType : {ElementType::F32, ElementType::BF16}) {
      for (ElementType outType : {ElementType::F32, ElementType::BF16}) {
        // 5 rows: a 1024-thread block per row; 520: 256 threads per row.
        const int64_t rows = cols == 200 ? 520 : 5, inStride = cols + 8,
                      outStride = cols + 4;
        std::vector<float> x = normals(rows * inStride, 3.0f);
        std::vector<float> weight = fromBF16(toBF16(normals(cols)));
        CUdeviceptr xDevice;
        if (inType == ElementType::BF16) {
          std::vector<uint16_t> bits = toBF16(x);
          x = fromBF16(bits);
          xDevice = upload(bits);
        } else {
          xDevice = upload(x);
        }
        int outBytes = elementBytes(outType);
        CUdeviceptr out = alloc(rows * outStride * outBytes);
        kernels->rmsNorm(nullptr, matrix(inType, rows, cols, inStride, xDevice),
                         upload(toBF16(weight)), 1e-6f,
                         matrix(outType, rows, cols, outStride, out));
        std::vector<float> got(rows * outStride);
        if (outType == ElementType::F32)
          got = download<float>(out, rows * outStride);
        else
          got = fromBF16(download<uint16_t>(out, rows * outStride));
        std::vector<float> expected(cols);
        for (int64_t r = 0; r < rows; ++r) {
          kiln::rmsNorm(x.data() + r * inStride, weight.data(), cols, 1e-6f,
                        expected.data());
          for (int64_t c = 0; c < cols; ++c) {
            float want = expected[c];
            if (outType == ElementType::BF16)
              want = kiln::decodeBF16(kiln::encodeBF16(want));
            // f32: both sum squares in FP64; 1e-5 leaves room for a
            // different rounding of the mean. bf16: one unit in the last
            // place where the f32 values straddle a rounding boundary.
            float tolerance = outType == ElementType::F32
                                  ? 1e-5f * std::fabs(want)
                                  : std::ldexp(std::fabs(want), -7);
            ASSERT_NEAR(got[r * outStride + c], want, tolerance)
                << "cols " << cols << " row " << r << " col " << c;
          }
        }
      }
    }
  }
}

/// The CPU quantizer's codes and transposed scales of `x` [rows, cols].
void quantizeOnHost(const std::vector<float> &x, int64_t rows, int64_t cols,
                    std::vector<uint8_t> &codes,
                    std::vector<float> &transposedScales) {
  const int64_t tiles = (cols + 127) / 128;
  std::vector<float> scales(rows * tiles);
  codes.resize(rows * cols);
  kiln::quantizeActivationTiles(x.data(), rows, cols, codes.data(),
                                scales.data());
  transposedScales.resize(rows * tiles);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < tiles; ++t)
      transposedScales[t * rows + r] = scales[r * tiles + t];
}

TEST_F(ModelKernelsOnGpu, QuantizeIsBitwiseTheCpuQuantizer) {
  // 512 columns: whole tiles; 464: a partial last tile (80 columns), as
  // model widths that are not multiples of 128 give; 1136: nine tiles, so
  // a row spans several warps' runs (kQuantizeRunTiles) and the last run is
  // short. Strides of 520 and 1144 keep every row 16-byte aligned (vector
  // loads); 1142 leaves odd rows unaligned (the scalar fallback).
  struct Case {
    ElementType type;
    int64_t cols, stride;
  };
  for (auto [inType, cols, stride] :
       {Case{ElementType::F32, 512, 520}, Case{ElementType::BF16, 512, 520},
        Case{ElementType::F32, 464, 520}, Case{ElementType::BF16, 464, 520},
        Case{ElementType::F32, 1136, 1144}, Case{ElementType::BF16, 1136, 1144},
        Case{ElementType::F32, 1136, 1142},
        Case{ElementType::BF16, 1136, 1142}}) {
    SCOPED_TRACE(::testing::Message()
                 << "cols " << cols << ", stride " << stride << ", bf16 "
                 << (inType == ElementType::BF16));
    const int64_t rows = 9;
    std::vector<float> x = normals(rows * stride, 2.0f);
    // Edge tiles: all zero (the 1e-4 floor), huge, tiny (E4M3 subnormals),
    // and values that saturate against a tile maximum.
    for (int64_t c = 0; c < 128; ++c) {
      x[1 * stride + c] = 0.0f;
      x[2 * stride + 128 + c] = 1e30f * (c % 2 ? 1 : -1) / (c + 1);
      x[3 * stride + 256 + c] = 1e-7f * (c - 64);
    }
    CUdeviceptr xDevice;
    if (inType == ElementType::BF16) {
      std::vector<uint16_t> bits = toBF16(x);
      x = fromBF16(bits);
      xDevice = upload(bits);
    } else {
      xDevice = upload(x);
    }
    std::vector<float> dense(rows * cols);
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(x.data() + r * stride, cols, dense.data() + r * cols);
    std::vector<uint8_t> codes;
    std::vector<float> scales;
    quantizeOnHost(dense, rows, cols, codes, scales);

    QuantizedMatrix q;
    q.values = alloc(rows * cols);
    q.scales = alloc(scales.size() * 4);
    q.rows = rows;
    q.cols = cols;
    kernels->quantize(nullptr, matrix(inType, rows, cols, stride, xDevice), q);
    EXPECT_EQ(download<uint8_t>(q.values, rows * cols), codes);
    std::vector<float> gotScales = download<float>(q.scales, scales.size());
    for (size_t i = 0; i < scales.size(); ++i)
      ASSERT_EQ(gotScales[i], scales[i]) << i;
  }
}

TEST_F(ModelKernelsOnGpu, QuantizeWritesGroupedScales) {
  // Nine tiles: three warps' runs per row, each finding the row's group.
  const int64_t rows = 11, cols = 1152, tiles = 9;
  std::vector<int32_t> offsets = {0, 4, 4, 9, 11}; // an empty group
  std::vector<float> x = normals(rows * cols);
  std::vector<uint8_t> codes;
  std::vector<float> transposed;
  quantizeOnHost(x, rows, cols, codes, transposed);
  QuantizedMatrix q;
  q.values = alloc(rows * cols);
  q.scales = alloc(rows * tiles * 4);
  q.rows = rows;
  q.cols = cols;
  q.groupOffsets = upload(offsets);
  q.groups = 4;
  kernels->quantize(nullptr,
                    matrix(ElementType::F32, rows, cols, cols, upload(x)), q);
  EXPECT_EQ(download<uint8_t>(q.values, rows * cols), codes);
  std::vector<float> got = download<float>(q.scales, rows * tiles);
  for (int g = 0; g < 4; ++g) {
    int64_t begin = offsets[g], count = offsets[g + 1] - begin;
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t i = 0; i < count; ++i)
        ASSERT_EQ(got[tiles * begin + t * count + i],
                  transposed[t * rows + begin + i])
            << "group " << g << " tile " << t << " row " << i;
  }
}

TEST_F(ModelKernelsOnGpu, RmsNormQuantize) {
  // 6 rows: a 1024-thread block per row; 600: 256 threads per row.
  for (int64_t rows : {6, 600})
    checkRmsNormQuantize(rows);
}

void ModelKernelsOnGpu::checkRmsNormQuantize(int64_t rows) {
  const int64_t cols = 7168;
  std::vector<float> x = normals(rows * cols, 4.0f);
  std::vector<float> weight = fromBF16(toBF16(normals(cols)));
  std::vector<float> normed(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    kiln::rmsNorm(x.data() + r * cols, weight.data(), cols, 1e-6f,
                  normed.data() + r * cols);
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  quantizeOnHost(normed, rows, cols, codes, scales);
  QuantizedMatrix q;
  q.values = alloc(rows * cols);
  q.scales = alloc(scales.size() * 4);
  q.rows = rows;
  q.cols = cols;
  kernels->rmsNormQuantize(
      nullptr, matrix(ElementType::F32, rows, cols, cols, upload(x)),
      upload(toBF16(weight)), 1e-6f, q);
  std::vector<uint8_t> got = download<uint8_t>(q.values, codes.size());
  std::vector<float> gotScales = download<float>(q.scales, scales.size());
  // Both sum squares in FP64, so the normalized values agree to the last bit
  // but for a rare different rounding of the mean: then a code may move by
  // one step and a scale by a few ulps.
  size_t different = 0;
  for (size_t i = 0; i < codes.size(); ++i) {
    ASSERT_LE(codeDistance(got[i], codes[i]), 1) << i;
    different += got[i] != codes[i];
  }
  EXPECT_LE(different, codes.size() / 1000);
  for (size_t i = 0; i < scales.size(); ++i)
    ASSERT_NEAR(gotScales[i], scales[i], 1e-6f * scales[i]) << i;
}

TEST_F(ModelKernelsOnGpu, MatmulF32) {
  struct Case {
    int64_t rows, n, k, stride;
    bool misaligned; // x one float off 16 bytes: the scalar path
  };
  const Case cases[] = {
      {1, 1000, 7168, 7168, false},
      {3, 517, 7168, 7172, false},
      {8, 256, 7168, 7168, false},
      {37, 300, 1536, 1536, false},
      {5, 100, 200, 200, false},
      {6, 70, 7168, 7168, true},
      // N ≥ 4096: a warp per 4 columns over all of K (below: K split
      // across a block's warps; misaligned: scalar loads).
      {2, 4100, 1024, 1024, false},
      // Where 64 x 64 blocks make 128 or more: the tiled product, 16-deep K
      // slices (a partial last one at K = 1032), partial tiles in both
      // directions; misaligned rows keep the scalar path.
      {2048, 256, 1024, 1024, false},
      {200, 2500, 1032, 1036, false},
      {130, 4000, 512, 512, true}};
  for (const Case &c : cases) {
    std::vector<float> x = normals(c.rows * c.stride + 1);
    std::vector<float> w = fromBF16(toBF16(normals(c.n * c.k, 0.05f)));
    CUdeviceptr xDevice = upload(x) + (c.misaligned ? 4 : 0);
    const float *xHost = x.data() + (c.misaligned ? 1 : 0);
    const int64_t outStride = c.n + 3;
    CUdeviceptr out = alloc(c.rows * outStride * 4);
    DeviceMatrix xMatrix =
        matrix(ElementType::F32, c.rows, c.k, c.stride, xDevice);
    EXPECT_EQ(detail::matmulVectorizable(xMatrix, 0x40000),
              !c.misaligned && c.k % 8 == 0);
    kernels->matmulF32(nullptr, xMatrix, upload(toBF16(w)), c.n,
                       matrix(ElementType::F32, c.rows, c.n, outStride, out));
    std::vector<float> got = download<float>(out, c.rows * outStride);
    double worst = 0;
    for (int64_t t = 0; t < c.rows; ++t)
      for (int64_t j = 0; j < outStride; ++j) {
        float value = got[t * outStride + j];
        if (j >= c.n) {
          ASSERT_TRUE(isPoisonF32(value)) << "wrote past N";
          continue;
        }
        double sum = 0, magnitude = 0;
        for (int64_t kk = 0; kk < c.k; ++kk) {
          double term = double(xHost[t * c.stride + kk]) * w[j * c.k + kk];
          sum += term;
          magnitude += std::fabs(term);
        }
        // FP32 accumulation of K products in a lane-then-tree order: far
        // below K * 2^-24 of Σ|terms| in the worst case.
        double error = std::fabs(value - sum) / magnitude;
        ASSERT_LE(error, 1e-5) << "T " << c.rows << " N " << c.n << " K " << c.k
                               << " at " << t << ", " << j;
        worst = std::max(worst, error);
      }
    std::printf("matmulF32 T=%lld N=%lld K=%lld: worst error %.2e of "
                "sum|x*w|\n",
                (long long)c.rows, (long long)c.n, (long long)c.k, worst);
  }
}

TEST_F(ModelKernelsOnGpu, AddAndSelectRows) {
  const int64_t rows = 7, cols = 300;
  std::vector<float> a = normals(rows * cols), b = normals(rows * cols);
  std::vector<uint16_t> bBits = toBF16(b);
  CUdeviceptr aDevice = upload(a);
  DeviceMatrix aMatrix = matrix(ElementType::F32, rows, cols, cols, aDevice);
  // In place, bf16 b.
  kernels->add(nullptr, aMatrix,
               matrix(ElementType::BF16, rows, cols, cols, upload(bBits)),
               aMatrix);
  std::vector<float> sum = download<float>(aDevice, rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i)
    ASSERT_EQ(sum[i], a[i] + kiln::decodeBF16(bBits[i])) << i;

  CUdeviceptr out = alloc(rows * cols * 4);
  kernels->add(nullptr, aMatrix,
               matrix(ElementType::F32, rows, cols, cols, upload(b)),
               matrix(ElementType::F32, rows, cols, cols, out));
  std::vector<float> sum2 = download<float>(out, rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i)
    ASSERT_EQ(sum2[i], sum[i] + b[i]) << i;

  std::vector<int32_t> pick = {6, 0, 3, 9};
  CUdeviceptr selected = alloc(pick.size() * cols * 4);
  kernels->selectRows(
      nullptr, aMatrix, upload(pick), pick.size(),
      matrix(ElementType::F32, pick.size(), cols, cols, selected));
  std::vector<float> got = download<float>(selected, pick.size() * cols);
  for (size_t s = 0; s < pick.size(); ++s)
    for (int64_t c = 0; c < cols; ++c) {
      float value = got[s * cols + c];
      if (pick[s] >= rows)
        ASSERT_TRUE(std::isnan(value) && !isPoisonF32(value));
      else
        ASSERT_EQ(value, sum[pick[s] * cols + c]);
    }
}

TEST_F(ModelKernelsOnGpu, Swiglu) {
  // Nine tiles: a row spans three of swiglu_quantize's warp runs.
  const int64_t rows = 10, cols = 1152, tiles = 9;
  std::vector<uint16_t> gate = toBF16(normals(rows * cols, 3.0f));
  std::vector<uint16_t> up = toBF16(normals(rows * cols, 2.0f));
  std::vector<float> product(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i)
    product[i] =
        kiln::silu(kiln::decodeBF16(gate[i])) * kiln::decodeBF16(up[i]);
  CUdeviceptr gateDevice = upload(gate), upDevice = upload(up);
  DeviceMatrix g = matrix(ElementType::BF16, rows, cols, cols, gateDevice);
  DeviceMatrix u = matrix(ElementType::BF16, rows, cols, cols, upDevice);

  CUdeviceptr out = alloc(rows * cols * 2);
  kernels->swiglu(nullptr, g, u,
                  matrix(ElementType::BF16, rows, cols, cols, out));
  std::vector<float> got = fromBF16(download<uint16_t>(out, rows * cols));
  // expf may differ from the host's by an ulp or two: at most one bf16 step.
  for (int64_t i = 0; i < rows * cols; ++i)
    ASSERT_NEAR(got[i], kiln::decodeBF16(kiln::encodeBF16(product[i])),
                std::ldexp(std::fabs(product[i]), -7) + 1e-30)
        << i;

  // Quantized, with scales grouped (the experts' SwiGLU output).
  std::vector<int32_t> offsets = {0, 3, 3, 10};
  std::vector<uint8_t> codes;
  std::vector<float> transposed;
  quantizeOnHost(product, rows, cols, codes, transposed);
  for (bool grouped : {false, true}) {
    QuantizedMatrix q;
    q.values = alloc(rows * cols);
    q.scales = alloc(rows * tiles * 4);
    q.rows = rows;
    q.cols = cols;
    if (grouped) {
      q.groupOffsets = upload(offsets);
      q.groups = 3;
    }
    kernels->swigluQuantize(nullptr, g, u, q);
    std::vector<uint8_t> gotCodes = download<uint8_t>(q.values, rows * cols);
    for (size_t i = 0; i < codes.size(); ++i)
      ASSERT_LE(codeDistance(gotCodes[i], codes[i]), 1) << i;
    std::vector<float> scales = download<float>(q.scales, rows * tiles);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < tiles; ++t) {
        int64_t index = t * rows + r;
        if (grouped) {
          int g = r < 3 ? 0 : 2;
          int64_t begin = offsets[g], count = offsets[g + 1] - begin;
          index = tiles * begin + t * count + (r - begin);
        }
        float want = transposed[t * rows + r];
        ASSERT_NEAR(scales[index], want, 1e-6f * want) << r << ", " << t;
      }
  }
}

kiln::ModelConfig routerConfig(int experts, int topK, int nGroup, int topkGroup,
                               bool norm, double factor) {
  kiln::ModelConfig config;
  config.nRoutedExperts = experts;
  config.numExpertsPerTok = topK;
  config.nGroup = nGroup;
  config.topkGroup = topkGroup;
  config.normTopkProb = norm;
  config.routedScalingFactor = factor;
  config.scoringFunc = "sigmoid";
  config.topkMethod = "noaux_tc";
  return config;
}

TEST_F(ModelKernelsOnGpu, MoeRouteMatchesTheCpuRouter) {
  struct Case {
    int experts, topK, nGroup, topkGroup;
    bool norm, bias;
    float factor;
  };
  const Case cases[] = {{256, 8, 8, 4, true, true, 2.5f},
                        {16, 4, 4, 2, true, true, 2.5f},
                        {64, 6, 1, 1, false, false, 1.0f}};
  for (const Case &c : cases) {
    const int64_t T = 33;
    std::vector<float> logits = normals(T * c.experts, 2.0f);
    std::vector<float> bias = normals(c.experts, 0.1f);
    std::vector<float> zero(c.experts, 0.0f);
    MoeRouteArgs args;
    args.logits =
        matrix(ElementType::F32, T, c.experts, c.experts, upload(logits));
    args.bias = c.bias ? upload(bias) : 0;
    args.expertIds = alloc(T * c.topK * 4, kPoisonI32);
    args.weights = alloc(T * c.topK * 4);
    args.topK = c.topK;
    args.nGroup = c.nGroup;
    args.topkGroup = c.topkGroup;
    args.routedScalingFactor = c.factor;
    args.normTopkProb = c.norm;
    kernels->moeRoute(nullptr, args);
    std::vector<int32_t> ids = download<int32_t>(args.expertIds, T * c.topK);
    std::vector<float> weights = download<float>(args.weights, T * c.topK);
    kiln::ModelConfig config = routerConfig(c.experts, c.topK, c.nGroup,
                                            c.topkGroup, c.norm, c.factor);
    for (int64_t t = 0; t < T; ++t) {
      kiln::RouterChoice choice =
          kiln::routeToken(config, logits.data() + t * c.experts,
                           c.bias ? bias.data() : zero.data());
      for (int j = 0; j < c.topK; ++j) {
        ASSERT_EQ(ids[t * c.topK + j], choice.experts[j])
            << c.experts << " experts, token " << t << " choice " << j;
        // Only expf's rounding differs (an ulp or two of each score).
        ASSERT_NEAR(weights[t * c.topK + j], choice.weights[j],
                    1e-6f * choice.weights[j])
            << c.experts << " experts, token " << t << " choice " << j;
      }
    }
  }
}

TEST_F(ModelKernelsOnGpu, MoeDispatchAndCombine) {
  struct Case {
    int64_t T;
    int topK, experts;
  };
  for (const Case &c :
       {Case{37, 8, 256}, Case{300, 8, 256}, Case{5, 4, 16}, Case{1, 8, 256},
        // Many entries over the plan's per-warp segments; experts past 256
        // leave fewer warps (8192 / 1000 = 8 histograms).
        Case{3000, 8, 256}, Case{3000, 8, 1000}}) {
    const int64_t H = 256, tiles = H / 128, R = c.T * c.topK;
    // Skewed ids (a few hot experts), duplicates within a token included.
    std::vector<int32_t> ids(R);
    std::uniform_int_distribution<int> any(0, c.experts - 1), hot(0, 3);
    std::bernoulli_distribution pickHot(0.3);
    for (int32_t &id : ids)
      id = pickHot(random) ? hot(random) : any(random);
    std::vector<uint8_t> values = randomCodes(c.T * H);
    std::vector<float> scales = normals(tiles * c.T);

    QuantizedMatrix in = quantizedInput(values, scales, c.T, H);
    CUdeviceptr offsets = alloc((c.experts + 1) * 4, kPoisonI32);
    CUdeviceptr rows = alloc(R * 4, kPoisonI32);
    QuantizedMatrix out = dispatchOutput(R, H, c.experts, offsets);
    kernels->moeDispatch(nullptr, in, upload(ids), c.topK, c.experts, out,
                         offsets, rows);

    // Host: counts, exclusive scan, stable placement in token-major order.
    std::vector<int32_t> wantOffsets(c.experts + 1, 0), wantRows(R);
    for (int32_t id : ids)
      ++wantOffsets[id + 1];
    std::partial_sum(wantOffsets.begin(), wantOffsets.end(),
                     wantOffsets.begin());
    std::vector<int32_t> cursor(wantOffsets.begin(), wantOffsets.end() - 1);
    for (int64_t i = 0; i < R; ++i)
      wantRows[i] = cursor[ids[i]]++;
    ASSERT_EQ(download<int32_t>(offsets, c.experts + 1), wantOffsets);
    ASSERT_EQ(download<int32_t>(rows, R), wantRows);
    std::vector<uint8_t> gotValues = download<uint8_t>(out.values, R * H);
    std::vector<float> gotScales = download<float>(out.scales, R * tiles);
    for (int64_t i = 0; i < R; ++i) {
      int64_t t = i / c.topK, row = wantRows[i];
      int e = ids[i];
      int64_t begin = wantOffsets[e], count = wantOffsets[e + 1] - begin;
      ASSERT_TRUE(std::equal(values.begin() + t * H,
                             values.begin() + (t + 1) * H,
                             gotValues.begin() + row * H))
          << "payload of entry " << i;
      for (int64_t b = 0; b < tiles; ++b)
        ASSERT_EQ(gotScales[tiles * begin + b * count + (row - begin)],
                  scales[b * c.T + t])
            << "scale of entry " << i << " tile " << b;
    }

    // Combine the expert outputs back, in choice order with FMAs.
    std::vector<uint16_t> y = toBF16(normals(R * H));
    std::vector<float> weights = normals(R);
    CUdeviceptr combined = alloc(c.T * H * 4);
    kernels->moeCombine(nullptr, matrix(ElementType::BF16, R, H, H, upload(y)),
                        rows, upload(weights), c.topK,
                        matrix(ElementType::F32, c.T, H, H, combined));
    std::vector<float> got = download<float>(combined, c.T * H);
    for (int64_t t = 0; t < c.T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        float sum = 0.0f;
        for (int j = 0; j < c.topK; ++j)
          sum = std::fma(weights[t * c.topK + j],
                         kiln::decodeBF16(y[wantRows[t * c.topK + j] * H + h]),
                         sum);
        ASSERT_EQ(got[t * H + h], sum) << t << ", " << h;
      }
  }
}

// A gathered exchange (artifact.md "Gathered exchanges") gives the expert
// GEMMs the same rows, scales and offsets as a packed one, and the combine
// the same sums: two ranks' send buffers simulated on one GPU, rank 1's view.
TEST_F(ModelKernelsOnGpu, EpGatheredExchangeMatchesPacked) {
  const int W = 2, S = 5, me = 1, topK = 4;
  const int64_t T = 13, R = T * topK, H = 256, tiles = H / 128;
  // Each sender's routed rows grouped by global slot (moe_dispatch), with a
  // hot slot and empty ones.
  std::vector<std::vector<uint8_t>> sendQ(W);
  std::vector<std::vector<float>> sendS(W);
  std::vector<std::vector<int32_t>> sendOffsets(W);
  std::uniform_int_distribution<int> anySlot(0, W * S - 1);
  for (int p = 0; p < W; ++p) {
    std::vector<int32_t> slots(R);
    for (int32_t &slot : slots)
      slot = random() % 3 == 0 ? 6 : anySlot(random);
    slots[0] = 9;
    std::vector<uint8_t> values = randomCodes(T * H);
    QuantizedMatrix in = quantizedInput(values, normals(tiles * T), T, H);
    CUdeviceptr offsets = alloc((W * S + 1) * 4, kPoisonI32);
    QuantizedMatrix out = dispatchOutput(R, H, W * S, offsets);
    kernels->moeDispatch(nullptr, in, upload(slots), topK, W * S, out, offsets,
                         alloc(R * 4));
    sendQ[p] = download<uint8_t>(out.values, R * H);
    sendS[p] = download<float>(out.scales, R * tiles);
    sendOffsets[p] = download<int32_t>(offsets, W * S + 1);
  }
  // Packed: the chunks for rank `me`, peer-major, with their counts.
  std::vector<uint8_t> packedQ, gatheredQ;
  std::vector<float> packedS, gatheredS;
  std::vector<int32_t> counts, gatheredOffsets;
  for (int p = 0; p < W; ++p) {
    const int32_t *o = sendOffsets[p].data();
    packedQ.insert(packedQ.end(), sendQ[p].begin() + o[me * S] * H,
                   sendQ[p].begin() + o[(me + 1) * S] * H);
    packedS.insert(packedS.end(), sendS[p].begin() + o[me * S] * tiles,
                   sendS[p].begin() + o[(me + 1) * S] * tiles);
    for (int s = 0; s < S; ++s)
      counts.push_back(o[me * S + s + 1] - o[me * S + s]);
    gatheredQ.insert(gatheredQ.end(), sendQ[p].begin(), sendQ[p].end());
    gatheredS.insert(gatheredS.end(), sendS[p].begin(), sendS[p].end());
    gatheredOffsets.insert(gatheredOffsets.end(), sendOffsets[p].begin(),
                           sendOffsets[p].end());
  }
  const int64_t X = static_cast<int64_t>(packedQ.size()) / H;
  ASSERT_GT(X, 0);
  EpGathered gathered;
  gathered.peerRows = R;
  gathered.rank = me;
  gathered.ranks = W;
  gathered.slots = S;
  auto group = [&](const std::vector<uint8_t> &q, const std::vector<float> &qs,
                   const std::vector<int32_t> &table, int64_t rows,
                   const EpGathered &g) {
    CUdeviceptr outQ = alloc(W * R * H, kPoisonF8);
    CUdeviceptr outS = alloc(W * R * tiles * 4, kPoisonI32);
    CUdeviceptr offsets = alloc((S + 1) * 4, kPoisonI32);
    kernels->epGroup(nullptr, upload(q), upload(qs), upload(table), W, S, rows,
                     H, H, true, outQ, outS, offsets, g);
    return std::make_tuple(download<uint8_t>(outQ, X * H),
                           download<float>(outS, X * tiles),
                           download<int32_t>(offsets, S + 1));
  };
  auto packed = group(packedQ, packedS, counts, X, {});
  auto viaGather =
      group(gatheredQ, gatheredS, gatheredOffsets, W * R, gathered);
  EXPECT_EQ(std::get<2>(viaGather), std::get<2>(packed));
  EXPECT_EQ(std::get<2>(packed)[S], X);
  EXPECT_EQ(std::get<0>(viaGather), std::get<0>(packed));
  EXPECT_EQ(std::get<1>(viaGather), std::get<1>(packed));

  // Back: slot-major outputs to where each peer's buffer had the row.
  std::vector<uint16_t> y = toBF16(normals(X * H));
  CUdeviceptr packedBack = alloc(X * H * 2, kPoisonBF16);
  kernels->epGroup(nullptr, upload(y), 0, upload(counts), W, S, X, H * 2, H,
                   false, packedBack, 0, 0);
  CUdeviceptr gatheredBack = alloc(W * R * H * 2, kPoisonBF16);
  kernels->epGroup(nullptr, upload(y), 0, upload(gatheredOffsets), W, S, W * R,
                   H * 2, H, false, gatheredBack, 0, 0, gathered);
  std::vector<uint16_t> gotPacked = download<uint16_t>(packedBack, X * H);
  std::vector<uint16_t> gotGathered =
      download<uint16_t>(gatheredBack, W * R * H);
  int64_t row = 0;
  for (int p = 0; p < W; ++p) {
    const int32_t *o = sendOffsets[p].data();
    for (int64_t i = o[me * S]; i < o[(me + 1) * S]; ++i, ++row)
      ASSERT_TRUE(std::equal(gotPacked.begin() + row * H,
                             gotPacked.begin() + (row + 1) * H,
                             gotGathered.begin() + (p * R + i) * H))
          << "peer " << p << " row " << i;
  }

  // Combine on rank `me` as a sender: row i came back from the rank whose
  // global slots hold it, in that rank's block; the other blocks' rows are
  // poison, which a wrong block would add.
  const std::vector<int32_t> &mine = sendOffsets[me];
  std::vector<uint16_t> back = toBF16(normals(R * H));
  std::vector<uint16_t> blocks(W * R * H, kPoisonBF16);
  for (int64_t i = 0; i < R; ++i) {
    int owner = 0;
    for (int q = 1; q < W; ++q)
      if (mine[q * S] <= i)
        owner = q;
    std::copy(back.begin() + i * H, back.begin() + (i + 1) * H,
              blocks.begin() + (owner * R + i) * H);
  }
  std::vector<int32_t> rows(R);
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), random);
  std::vector<float> weights = normals(R);
  CUdeviceptr rowsOnGpu = upload(rows), weightsOnGpu = upload(weights);
  CUdeviceptr packedSum = alloc(T * H * 4, kPoisonF32),
              gatheredSum = alloc(T * H * 4, kPoisonF32);
  kernels->moeCombine(nullptr, matrix(ElementType::BF16, R, H, H, upload(back)),
                      rowsOnGpu, weightsOnGpu, topK,
                      matrix(ElementType::F32, T, H, H, packedSum));
  EpGathered combine = gathered;
  combine.sendOffsets = upload(mine);
  kernels->moeCombine(nullptr,
                      matrix(ElementType::BF16, W * R, H, H, upload(blocks)),
                      rowsOnGpu, weightsOnGpu, topK,
                      matrix(ElementType::F32, T, H, H, gatheredSum), combine);
  std::vector<float> want = download<float>(packedSum, T * H),
                     got = download<float>(gatheredSum, T * H);
  for (float v : want)
    ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(got, want);
}

//===--- MLA attention ----------------------------------------------------===//

struct MlaShape {
  int heads, nope, rope, v, kvLora, pageTokens;
};

struct MlaStep {
  /// Tokens already cached per sequence, and tokens this step adds.
  std::vector<int> cached, added;
};

class MlaAttentionOnGpu : public ModelKernelsOnGpu {
protected:
  /// With `tensorCores`, the call gets a (poisoned) workspace and takes the
  /// tensor-core path where the shape allows it.
  /// With `decompressed` (one sequence, kMlaPrefillMinTokens tokens or
  /// more), the step says it has one sequence and the workspace holds the
  /// context's K_nope and V: the decompressed prefill path.
  void run(const MlaShape &s, const MlaStep &step, ElementType cacheType,
           ElementType latentType, bool tensorCores = false,
           bool decompressed = false) {
    if (decompressed)
      tensorCores = true;
    const int sequences = static_cast<int>(step.cached.size());
    const int width = s.kvLora + s.rope;
    int longest = 0;
    for (int i = 0; i < sequences; ++i)
      longest = std::max(longest, step.cached[i] + step.added[i]);
    const int maxPages = (longest + s.pageTokens - 1) / s.pageTokens + 1;
    const int pages = sequences * maxPages + 3;
    // Each slot gets distinct pages in random order.
    std::vector<int32_t> pagePool(pages);
    std::iota(pagePool.begin(), pagePool.end(), 0);
    std::shuffle(pagePool.begin(), pagePool.end(), random);
    std::vector<int32_t> pageTable(pagePool.begin(),
                                   pagePool.begin() + sequences * maxPages);

    // The step's tokens, sequences interleaved.
    std::vector<int32_t> positions, slots;
    for (int i = 0; i < sequences; ++i)
      for (int j = 0; j < step.added[i]; ++j) {
        positions.push_back(step.cached[i] + j);
        slots.push_back(i);
      }
    std::vector<size_t> order(positions.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), random);
    std::vector<int32_t> shuffledPositions, shuffledSlots;
    for (size_t i : order) {
      shuffledPositions.push_back(positions[i]);
      shuffledSlots.push_back(slots[i]);
    }
    positions = shuffledPositions;
    slots = shuffledSlots;
    const int64_t T = positions.size();

    auto cacheRowOf = [&](int slot, int position) {
      return int64_t(pageTable[slot * maxPages + position / s.pageTokens]) *
                 s.pageTokens +
             position % s.pageTokens;
    };

    // The cache: poisoned, then the already cached positions filled.
    const bool f8 = cacheType == ElementType::F8E4M3;
    const int64_t cacheRows = int64_t(pages) * s.pageTokens;
    std::vector<uint16_t> cacheBF16(cacheRows * width, kPoisonBF16);
    std::vector<uint8_t> cacheF8(cacheRows * width, kPoisonF8);
    std::vector<float> cacheScales(cacheRows);
    std::memset(cacheScales.data(), 0xFF, cacheScales.size() * 4);
    std::vector<bool> filled(cacheRows, false);
    std::uniform_real_distribution<float> scaleDist(0.001f, 0.01f);
    for (int i = 0; i < sequences; ++i)
      for (int p = 0; p < step.cached[i]; ++p) {
        int64_t row = cacheRowOf(i, p);
        filled[row] = true;
        std::vector<float> values = normals(width);
        cacheScales[row] = scaleDist(random);
        for (int c = 0; c < width; ++c) {
          cacheBF16[row * width + c] = kiln::encodeBF16(values[c]);
          cacheF8[row * width + c] =
              kiln::encodeE4M3(values[c] / cacheScales[row] / 4);
        }
      }

    // Inputs.
    std::vector<uint16_t> q = toBF16(normals(T * s.heads * (s.nope + s.rope)));
    std::vector<float> latent = normals(T * s.kvLora);
    std::vector<uint16_t> latentBits = toBF16(latent);
    if (latentType == ElementType::BF16)
      latent = fromBF16(latentBits);
    std::vector<uint16_t> kPe = toBF16(normals(T * s.rope));
    std::vector<uint16_t> kvB =
        toBF16(normals(int64_t(s.heads) * (s.nope + s.v) * s.kvLora, 0.1f));
    kiln::RopeParameters rope;
    for (int j = 0; j < s.rope / 2; ++j)
      rope.invFreq.push_back(
          static_cast<float>(std::pow(10000.0, -2.0 * j / s.rope)));
    rope.attentionFactor = 1.1f;
    rope.softmaxScale = 0.7f / std::sqrt(float(s.nope + s.rope));

    MlaAttentionArgs args;
    args.heads = s.heads;
    args.nopeDim = s.nope;
    args.ropeDim = s.rope;
    args.vDim = s.v;
    args.kvLoraRank = s.kvLora;
    args.softmaxScale = rope.softmaxScale;
    args.attentionFactor = rope.attentionFactor;
    args.invFreq = upload(rope.invFreq);
    args.q = matrix(ElementType::BF16, T, s.heads * (s.nope + s.rope),
                    s.heads * (s.nope + s.rope), upload(q));
    args.latent =
        latentType == ElementType::BF16
            ? matrix(ElementType::BF16, T, s.kvLora, s.kvLora,
                     upload(latentBits))
            : matrix(ElementType::F32, T, s.kvLora, s.kvLora, upload(latent));
    args.kPe = matrix(ElementType::BF16, T, s.rope, s.rope, upload(kPe));
    args.kvB = upload(kvB);
    const int64_t outStride = s.heads * s.v + 8;
    CUdeviceptr out = alloc(T * outStride * 2, kPoisonBF16 * 0x10001u);
    args.out = matrix(ElementType::BF16, T, s.heads * s.v, outStride, out);
    args.positions = upload(positions);
    args.sequenceSlots = upload(slots);
    args.pageTable = upload(pageTable);
    args.maxPagesPerSequence = maxPages;
    args.pageTokens = s.pageTokens;
    args.cache = f8 ? upload(cacheF8) : upload(cacheBF16);
    args.cacheType = cacheType;
    args.cacheScales = f8 ? upload(cacheScales) : 0;
    args.maxContext = *std::max_element(positions.begin(), positions.end()) + 1;
    if (decompressed) {
      args.sequences = sequences;
      args.workspaceBytes = std::max(
          mlaAttentionWorkspaceBytes(T, s.heads, s.kvLora),
          mlaPrefillWorkspaceBytes(args.maxContext, s.heads, s.nope, s.v));
      args.workspace = alloc(args.workspaceBytes);
      ASSERT_TRUE(detail::mlaPrefillDecompressed(args));
    } else if (tensorCores) {
      args.workspaceBytes = mlaAttentionWorkspaceBytes(T, s.heads, s.kvLora);
      args.workspace = alloc(args.workspaceBytes);
      ASSERT_TRUE(detail::mlaAttentionOnTensorCores(args));
      ASSERT_FALSE(detail::mlaPrefillDecompressed(args));
    }
    kernels->mlaAttention(nullptr, args);

    // The cache after the step, dequantized.
    std::vector<float> cache(cacheRows * width);
    std::vector<float> gotScales;
    if (f8) {
      std::vector<uint8_t> bytes = download<uint8_t>(args.cache, cache.size());
      gotScales = download<float>(args.cacheScales, cacheRows);
      for (int64_t r = 0; r < cacheRows; ++r)
        for (int c = 0; c < width; ++c)
          cache[r * width + c] =
              kiln::decodeE4M3(bytes[r * width + c]) * gotScales[r];
      cacheF8 = bytes;
    } else {
      cacheBF16 = download<uint16_t>(args.cache, cache.size());
      cache = fromBF16(cacheBF16);
    }

    // 1. The appended rows: [latent, RoPE(k_pe)] as the CPU computes them.
    for (int64_t t = 0; t < T; ++t) {
      int64_t row = cacheRowOf(slots[t], positions[t]);
      std::vector<float> expected(latent.begin() + t * s.kvLora,
                                  latent.begin() + (t + 1) * s.kvLora);
      std::vector<float> roped = fromBF16(std::vector<uint16_t>(
          kPe.begin() + t * s.rope, kPe.begin() + (t + 1) * s.rope));
      kiln::applyRope(roped.data(), positions[t], rope);
      expected.insert(expected.end(), roped.begin(), roped.end());
      float amax = 0;
      for (float v : expected)
        amax = std::max(amax, std::fabs(v));
      float scale = std::max(amax, kiln::kMinAmax) / kiln::kE4M3Max;
      if (f8) {
        ASSERT_NEAR(gotScales[row], scale, 1e-6f * scale) << "token " << t;
      }
      for (int c = 0; c < width; ++c) {
        float got = cache[row * width + c], want = expected[c];
        if (f8) {
          // One E4M3 step (2^-3 relative, or a subnormal step) off at most.
          ASSERT_NEAR(got, want,
                      std::ldexp(std::fabs(want), -3) + std::ldexp(scale, -8))
              << "token " << t << " value " << c;
        } else if (c < s.kvLora) {
          ASSERT_EQ(cacheBF16[row * width + c], kiln::encodeBF16(want))
              << "token " << t << " latent " << c;
        } else {
          // sin/cos may differ from the host's by an ulp: one bf16 step.
          ASSERT_NEAR(got, kiln::decodeBF16(kiln::encodeBF16(want)),
                      std::ldexp(std::fabs(want), -7) + 1e-30)
              << "token " << t << " k_pe " << c - s.kvLora;
        }
      }
      filled[row] = true;
    }
    // Nothing else in the cache was written.
    for (int64_t r = 0; r < cacheRows; ++r) {
      if (filled[r])
        continue;
      for (int c = 0; c < width; ++c) {
        ASSERT_TRUE(f8 ? cacheF8[r * width + c] == kPoisonF8
                       : cacheBF16[r * width + c] == kPoisonBF16)
            << "cache row " << r << " written";
      }
    }

    // 2. Attention in FP64 over the cache the GPU holds.
    std::vector<uint16_t> gotOut = download<uint16_t>(out, T * outStride);
    std::vector<double> reference(T * s.heads * s.v);
    double sumSquares = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int h = 0; h < s.heads; ++h) {
        const uint16_t *qHead =
            q.data() + (t * s.heads + h) * (s.nope + s.rope);
        std::vector<float> qPe(s.rope);
        for (int d = 0; d < s.rope; ++d)
          qPe[d] = kiln::decodeBF16(qHead[s.nope + d]);
        kiln::applyRope(qPe.data(), positions[t], rope);
        const uint16_t *w = kvB.data() + int64_t(h) * (s.nope + s.v) * s.kvLora;
        std::vector<double> qLatent(s.kvLora, 0.0);
        for (int d = 0; d < s.nope; ++d)
          for (int c = 0; c < s.kvLora; ++c)
            qLatent[c] += double(kiln::decodeBF16(qHead[d])) *
                          kiln::decodeBF16(w[int64_t(d) * s.kvLora + c]);
        const int context = positions[t] + 1;
        std::vector<double> score(context);
        double maxScore = -INFINITY;
        for (int p = 0; p < context; ++p) {
          const float *row = cache.data() + cacheRowOf(slots[t], p) * width;
          double dot = 0;
          for (int c = 0; c < s.kvLora; ++c)
            dot += qLatent[c] * row[c];
          for (int d = 0; d < s.rope; ++d)
            dot += double(qPe[d]) * row[s.kvLora + d];
          score[p] = dot * rope.softmaxScale;
          maxScore = std::max(maxScore, score[p]);
        }
        double total = 0;
        for (double &value : score)
          total += value = std::exp(value - maxScore);
        std::vector<double> oLatent(s.kvLora, 0.0);
        for (int p = 0; p < context; ++p) {
          const float *row = cache.data() + cacheRowOf(slots[t], p) * width;
          for (int c = 0; c < s.kvLora; ++c)
            oLatent[c] += score[p] / total * row[c];
        }
        for (int e = 0; e < s.v; ++e) {
          double value = 0;
          for (int c = 0; c < s.kvLora; ++c)
            value += oLatent[c] *
                     kiln::decodeBF16(w[int64_t(s.nope + e) * s.kvLora + c]);
          reference[(t * s.heads + h) * s.v + e] = value;
          sumSquares += value * value;
        }
      }
    const double rms = std::sqrt(sumSquares / reference.size());
    // The tensor-core path rounds q_latent, RoPE(q_pe), P and o_latent to
    // BF16 (2^-9 relative each) for the mma operands: o_latent's rounding
    // alone gives a head's output an error of ≈ 2^-9 of that head's rms,
    // P's and the scores' about as much again (measured: 2-3.5e-3 of rms,
    // the old kernel's BF16 output alone 1.6e-3). A head that attends
    // sharply has outputs far above the step's rms, so the per-value bound
    // scales with the larger of the two rms and allows the tail (≈ 8 σ over
    // up to 10^6 values); the rms bound keeps the typical error at that
    // level.
    const double absolute = tensorCores ? 2.5e-2 : 1e-4;
    double worst = 0, errorSquares = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < outStride; ++j) {
        uint16_t bits = gotOut[t * outStride + j];
        if (j >= s.heads * s.v) {
          ASSERT_EQ(bits, kPoisonBF16) << "wrote past out's cols";
          continue;
        }
        ASSERT_NE(bits, kPoisonBF16) << "unwritten: token " << t << ", " << j;
        double want = reference[t * s.heads * s.v + j];
        double got = kiln::decodeBF16(bits);
        double scale = rms;
        if (tensorCores) {
          double headSquares = 0;
          for (int e = 0; e < s.v; ++e) {
            double value = reference[t * s.heads * s.v + j / s.v * s.v + e];
            headSquares += value * value;
          }
          scale = std::max(rms, std::sqrt(headSquares / s.v));
        }
        // The bf16 output rounds to 2^-9 relative; FP32 sums of ≤ 1024
        // products and the online softmax add ~1e-6 of the magnitudes.
        double error = std::fabs(got - want);
        errorSquares += error * error;
        ASSERT_LE(error, std::ldexp(std::fabs(want), -8) + absolute * scale)
            << "token " << t << " (position " << positions[t] << ", slot "
            << slots[t] << ") head " << j / s.v << " value " << j % s.v << ": "
            << got << " vs " << want;
        worst = std::max(worst, error / rms);
      }
    const double rmsError = std::sqrt(errorSquares / reference.size()) / rms;
    if (tensorCores) {
      EXPECT_LE(rmsError, 8e-3);
    }
    std::printf("mla_attention%s heads=%d kv_lora=%d rope=%d cache=%s "
                "T=%lld: worst error %.2e, rms error %.2e of rms %.3g\n",
                decompressed  ? " (decompressed prefill)"
                : tensorCores ? " (tensor cores)"
                              : "",
                s.heads, s.kvLora, s.rope, elementTypeName(cacheType),
                (long long)T, worst, rmsError, rms);
  }
};

const MlaShape kTinyShape{4, 32, 16, 32, 160, 16};
const MlaShape kDeepSeekShape{8, 128, 64, 128, 512, 64};

TEST_F(MlaAttentionOnGpu, DecodeStep) {
  MlaStep decode{{37, 5, 70, 0}, {1, 1, 1, 1}};
  for (bool tensorCores : {false, true}) {
    run(kTinyShape, decode, ElementType::BF16, ElementType::F32, tensorCores);
    run(kDeepSeekShape, decode, ElementType::BF16, ElementType::BF16,
        tensorCores);
  }
}

TEST_F(MlaAttentionOnGpu, PrefillStep) {
  // A chunk that continues one sequence, adds one token to another, starts a
  // new one and leaves one alone: tokens attend to earlier ones of the step.
  MlaStep prefill{{37, 5, 70, 0}, {20, 1, 0, 13}};
  for (bool tensorCores : {false, true}) {
    run(kTinyShape, prefill, ElementType::BF16, ElementType::BF16, tensorCores);
    run(kDeepSeekShape, prefill, ElementType::BF16, ElementType::F32,
        tensorCores);
  }
}

// DeepSeek-V3's head dimensions with 128 heads (two 64-head groups) and 72
// (a partial second group); contexts not multiples of the 32-position tile.
const MlaShape kDeepSeek128{128, 128, 64, 128, 512, 64};
const MlaShape kDeepSeek72{72, 128, 64, 128, 512, 64};

TEST_F(MlaAttentionOnGpu, TensorCoreDecodeBatches) {
  // Batch 1 at a long context: the KV range split across 8 blocks.
  run(kDeepSeek128, MlaStep{{1000}, {1}}, ElementType::BF16, ElementType::BF16,
      true);
  // Batch 8, contexts 1 to 700: splits past the short ones are empty.
  run(kDeepSeek128,
      MlaStep{{699, 0, 31, 32, 200, 5, 64, 450}, {1, 1, 1, 1, 1, 1, 1, 1}},
      ElementType::BF16, ElementType::F32, true);
  // Batch 64 (128 blocks: two splits) with random contexts.
  MlaStep batch64;
  std::uniform_int_distribution<int> context(0, 300);
  for (int i = 0; i < 64; ++i) {
    batch64.cached.push_back(context(random));
    batch64.added.push_back(1);
  }
  run(kDeepSeek72, batch64, ElementType::BF16, ElementType::BF16, true);
}

TEST_F(MlaAttentionOnGpu, TensorCorePrefillChunks) {
  // A chunk continuing a cached sequence (causal within the chunk, one
  // block per token and head group, no splits).
  run(kDeepSeek72, MlaStep{{45}, {150}}, ElementType::BF16, ElementType::BF16,
      true);
  // Few tokens after a long prefix (split), with a second sequence starting.
  run(kDeepSeek128, MlaStep{{500, 0}, {3, 2}}, ElementType::BF16,
      ElementType::F32, true);
  // The tiny model's shape (4 heads, kv_lora 160, rope 16: padded columns).
  run(kTinyShape, MlaStep{{300, 7}, {40, 33}}, ElementType::BF16,
      ElementType::F32, true);
}

TEST_F(MlaAttentionOnGpu, DecompressedPrefill) {
  // A fresh sequence: 256 tokens over positions 0-255 (in shuffled order:
  // every 64-token block spans the whole context), 128 heads.
  run(kDeepSeek128, MlaStep{{0}, {256}}, ElementType::BF16, ElementType::BF16,
      false, true);
  // A chunk continuing a cached prefix: context 357, not a multiple of the
  // 64-position tile; 72 heads; an f32 latent input.
  run(kDeepSeek72, MlaStep{{100}, {257}}, ElementType::BF16, ElementType::F32,
      false, true);
  // The tiny model's shape: nope 32, rope 16, v 32, kv_lora 160 (padded
  // columns in every tile), pages of 16.
  run(kTinyShape, MlaStep{{37}, {300}}, ElementType::BF16, ElementType::F32,
      false, true);
}

TEST_F(MlaAttentionOnGpu, Fp8Cache) {
  run(kTinyShape, MlaStep{{37, 5, 70, 0}, {3, 1, 1, 13}}, ElementType::F8E4M3,
      ElementType::F32);
  run(kDeepSeekShape, MlaStep{{130, 2}, {1, 9}}, ElementType::F8E4M3,
      ElementType::BF16);
}

//===--- Timings (printed, not asserted) ----------------------------------===//

TEST_F(ModelKernelsOnGpu, Timings) {
  CUevent start, stop;
  KILN_CU("test", cuEventCreate, &start, 0);
  KILN_CU("test", cuEventCreate, &stop, 0);
  auto time = [&](const char *what, double bytes, auto &&launch) {
    launch();
    KILN_CU("test", cuEventRecord, start, nullptr);
    const int repeats = 20;
    for (int i = 0; i < repeats; ++i)
      launch();
    KILN_CU("test", cuEventRecord, stop, nullptr);
    KILN_CU("test", cuEventSynchronize, stop);
    float ms = 0;
    KILN_CU("test", cuEventElapsedTime, &ms, start, stop);
    double seconds = ms / 1e3 / repeats;
    std::printf("%-48s %9.1f us  %7.0f GB/s\n", what, seconds * 1e6,
                bytes / seconds / 1e9);
  };

  // Output head: N 129280, K 7168 (1.85 GB of bf16).
  const int64_t n = 129280, k = 7168;
  CUdeviceptr w = alloc(n * k * 2, 0x3C003C00);
  CUdeviceptr x = alloc(8 * k * 4, 0x3F800000);
  CUdeviceptr out = alloc(8 * n * 4);
  for (int64_t T : {1, 8}) {
    std::string what = "matmulF32 lm_head T=" + std::to_string(T);
    time(what.c_str(), double(n) * k * 2, [&] {
      kernels->matmulF32(nullptr, matrix(ElementType::F32, T, k, k, x), w, n,
                         matrix(ElementType::F32, T, n, n, out));
    });
  }
  // Router gate for a prefill chunk: N 256, K 7168, T 256 and 4096.
  CUdeviceptr xs = alloc(4096 * k * 4, 0x3F800000);
  CUdeviceptr routerOut = alloc(4096 * 256 * 4);
  for (int64_t T : {256, 2048, 4096}) {
    std::string what = "matmulF32 router T=" + std::to_string(T) + " N=256";
    time(what.c_str(), double(T) * k * 4, [&] {
      kernels->matmulF32(nullptr, matrix(ElementType::F32, T, k, k, xs), w, 256,
                         matrix(ElementType::F32, T, 256, 256, routerOut));
    });
  }
  // RMSNorm + quantize of 256 rows of 7168.
  QuantizedMatrix q;
  q.values = alloc(256 * k);
  q.scales = alloc(256 * k / 128 * 4);
  q.rows = 256;
  q.cols = k;
  time("rmsNormQuantize 256 x 7168", 256.0 * k * 5, [&] {
    kernels->rmsNormQuantize(nullptr, matrix(ElementType::F32, 256, k, k, xs),
                             w, 1e-6f, q);
  });

  // Decode attention, DeepSeek-V3 shape: 128 heads, 8 sequences of 4096.
  const int heads = 128, seqs = 8, context = 4096, pageTokens = 64;
  const int maxPages = context / pageTokens, width = 576;
  std::vector<int32_t> pageTable(seqs * maxPages);
  std::iota(pageTable.begin(), pageTable.end(), 0);
  std::vector<int32_t> positions(seqs, context - 1), slots(seqs);
  std::iota(slots.begin(), slots.end(), 0);
  std::vector<float> invFreq(32, 0.01f);
  MlaAttentionArgs a;
  a.heads = heads;
  a.nopeDim = 128;
  a.ropeDim = 64;
  a.vDim = 128;
  a.kvLoraRank = 512;
  a.softmaxScale = 0.1f;
  a.invFreq = upload(invFreq);
  a.q = matrix(ElementType::BF16, seqs, heads * 192, heads * 192,
               alloc(seqs * heads * 192 * 2, 0x3C003C00));
  a.latent = matrix(ElementType::BF16, seqs, 512, 512,
                    alloc(seqs * 512 * 2, 0x3C003C00));
  a.kPe =
      matrix(ElementType::BF16, seqs, 64, 64, alloc(seqs * 64 * 2, 0x3C003C00));
  a.kvB = alloc(int64_t(heads) * 256 * 512 * 2, 0x3C003C00);
  a.out = matrix(ElementType::BF16, seqs, heads * 128, heads * 128,
                 alloc(seqs * heads * 128 * 2));
  a.positions = upload(positions);
  a.sequenceSlots = upload(slots);
  a.pageTable = upload(pageTable);
  a.maxPagesPerSequence = maxPages;
  a.pageTokens = pageTokens;
  a.cache = alloc(int64_t(seqs) * context * width * 2, 0x3C003C00);
  a.maxContext = context;
  time("mla decode 8 x 4096, 128 heads (cache bytes)",
       double(seqs) * context * width * 2,
       [&] { kernels->mlaAttention(nullptr, a); });
  KILN_CU("test", cuEventDestroy, start);
  KILN_CU("test", cuEventDestroy, stop);
}

} // namespace
