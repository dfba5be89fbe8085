//===- Fp8Test.cpp - E4M3/BF16 codecs and block scaling -------------------===//

#include "kiln/fp8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

bool isNaNCode(int code) { return (code & 0x7F) == 0x7F; }

/// E4M3FN from its definition, independent of decodeE4M3's arithmetic:
/// (-1)^s * 2^(e-7) * (1 + m/8) for e > 0, (-1)^s * 2^-6 * (m/8) for e = 0.
double referenceE4M3(int code) {
  int sign = code >> 7, e = (code >> 3) & 0xF, m = code & 7;
  double magnitude = e == 0 ? std::pow(2.0, -6) * (m / 8.0)
                            : std::pow(2.0, e - 7) * (1.0 + m / 8.0);
  return sign ? -magnitude : magnitude;
}

TEST(E4M3, DecodesEveryCode) {
  for (int code = 0; code < 256; ++code) {
    float value = kiln::decodeE4M3(static_cast<uint8_t>(code));
    if (isNaNCode(code)) {
      EXPECT_TRUE(std::isnan(value)) << "code " << code;
      continue;
    }
    EXPECT_EQ(static_cast<double>(value), referenceE4M3(code))
        << "code " << code;
  }
  EXPECT_EQ(kiln::decodeE4M3(0x7E), 448.0f);
  EXPECT_EQ(kiln::decodeE4M3(0xFE), -448.0f);
  EXPECT_EQ(kiln::decodeE4M3(0x01), std::ldexp(1.0f, -9)); // smallest subnormal
  EXPECT_EQ(kiln::decodeE4M3(0x08), std::ldexp(1.0f, -6)); // smallest normal
}

TEST(E4M3, EncodeInvertsDecode) {
  for (int code = 0; code < 256; ++code) {
    if (isNaNCode(code))
      continue;
    float value = kiln::decodeE4M3(static_cast<uint8_t>(code));
    EXPECT_EQ(kiln::encodeE4M3(value), code) << "value " << value;
  }
}

TEST(E4M3, RoundsToNearestEven) {
  // Between each pair of neighbouring positive codes: a point just above the
  // lower one, the midpoint, and a point just below the upper one.
  for (int low = 0; low < 0x7E; ++low) {
    double a = referenceE4M3(low), b = referenceE4M3(low + 1);
    double mid = (a + b) / 2;
    int even = (low % 2 == 0) ? low : low + 1;
    EXPECT_EQ(kiln::encodeE4M3(static_cast<float>(mid)), even)
        << "midpoint of codes " << low << " and " << low + 1;
    EXPECT_EQ(kiln::encodeE4M3(static_cast<float>(a + (b - a) * 0.25)), low);
    EXPECT_EQ(kiln::encodeE4M3(static_cast<float>(a + (b - a) * 0.75)),
              low + 1);
    EXPECT_EQ(kiln::encodeE4M3(static_cast<float>(-mid)), 0x80 | even);
  }
}

TEST(E4M3, SaturatesAndKeepsNaN) {
  EXPECT_EQ(kiln::encodeE4M3(448.0f), 0x7E);
  EXPECT_EQ(kiln::encodeE4M3(470.0f), 0x7E);
  EXPECT_EQ(kiln::encodeE4M3(1e30f), 0x7E);
  EXPECT_EQ(kiln::encodeE4M3(-1e30f), 0xFE);
  EXPECT_EQ(kiln::encodeE4M3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_TRUE(isNaNCode(kiln::encodeE4M3(std::nanf(""))));
  EXPECT_EQ(kiln::encodeE4M3(-0.0f), 0x80);
  EXPECT_EQ(kiln::encodeE4M3(1e-30f), 0x00); // underflows to zero
}

TEST(BF16, RoundTripsAndRoundsToNearestEven) {
  EXPECT_EQ(kiln::encodeBF16(1.0f), 0x3F80);
  EXPECT_EQ(kiln::decodeBF16(0x3F80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0.
  EXPECT_EQ(kiln::encodeBF16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up.
  EXPECT_EQ(kiln::encodeBF16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_TRUE(std::isnan(kiln::decodeBF16(kiln::encodeBF16(std::nanf("")))));
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits16(0, 0xFFFF);
  for (int i = 0; i < 10000; ++i) {
    uint16_t code = static_cast<uint16_t>(bits16(rng));
    float value = kiln::decodeBF16(code);
    if (!std::isnan(value)) {
      EXPECT_EQ(kiln::encodeBF16(value), code);
    }
  }
}

TEST(ActivationTiles, ScalesEachTileByItsAmax) {
  // 300 columns: two full tiles and a ragged one of 44; row 2 is all zeros.
  const int64_t rows = 3, cols = 300, tiles = kiln::scaleBlocks(cols);
  ASSERT_EQ(tiles, 3);
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> x(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i)
    x[i] = i / cols == 2 ? 0.0f : normal(rng);
  std::vector<uint8_t> q(rows * cols, 0xAA);
  std::vector<float> scales(rows * tiles, std::nanf(""));
  kiln::quantizeActivationTiles(x.data(), rows, cols, q.data(), scales.data());

  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < tiles; ++t) {
      float amax = 0.0f;
      for (int64_t c = t * 128; c < std::min<int64_t>(cols, (t + 1) * 128); ++c)
        amax = std::max(amax, std::fabs(x[r * cols + c]));
      float scale = scales[r * tiles + t];
      EXPECT_EQ(scale, std::max(amax, kiln::kMinAmax) / kiln::kE4M3Max);
      for (int64_t c = t * 128; c < std::min<int64_t>(cols, (t + 1) * 128);
           ++c) {
        float original = x[r * cols + c];
        float restored = kiln::decodeE4M3(q[r * cols + c]) * scale;
        // E4M3 keeps 3 mantissa bits: relative error <= 2^-4 for normals,
        // absolute error <= 2^-10 * scale in the subnormal range.
        EXPECT_LE(std::fabs(restored - original),
                  std::ldexp(std::fabs(original), -4) +
                      std::ldexp(scale, -10) * 1.0001f)
            << "row " << r << " col " << c;
        if (std::fabs(original) == amax && amax > 0) {
          EXPECT_EQ(std::fabs(kiln::decodeE4M3(q[r * cols + c])), 448.0f);
        }
      }
    }
  }
  for (int64_t c = 0; c < cols; ++c)
    EXPECT_EQ(q[2 * cols + c], 0x00);
}

TEST(WeightBlocks, DequantizesWithOneScalePerBlock) {
  // 200 x 300: ragged blocks in both dimensions, scales 2 x 3.
  const int64_t n = 200, k = 300;
  std::vector<uint8_t> q(n * k);
  std::mt19937 rng(99);
  std::uniform_int_distribution<int> code(0, 255);
  for (uint8_t &value : q) {
    do
      value = static_cast<uint8_t>(code(rng));
    while (isNaNCode(value));
  }
  std::vector<float> scaleInv = {0.5f, 2.0f, 0.25f, 8.0f, 1.0f, 0.125f};
  std::vector<float> out(n * k, std::nanf(""));
  kiln::dequantizeWeightBlocks(q.data(), scaleInv.data(), n, k, out.data());
  for (int64_t row = 0; row < n; ++row)
    for (int64_t col = 0; col < k; ++col)
      EXPECT_EQ(out[row * k + col],
                static_cast<float>(referenceE4M3(q[row * k + col])) *
                    scaleInv[(row / 128) * 3 + col / 128])
          << row << "," << col;
}

} // namespace
