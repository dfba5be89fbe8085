//===- fp8.cpp - FP8 and BF16 numerics of the DeepSeek-V3 recipe ----------===//

#include "kiln/fp8.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

namespace kiln {

namespace {
constexpr int kExponentBias = 7;
constexpr int kMantissaBits = 3;
/// Exponent of the smallest normal E4M3 value (2^-6); below it, subnormals
/// step by 2^-9.
constexpr int kMinNormalExponent = 1 - kExponentBias;
constexpr uint8_t kNaN = 0x7F;
constexpr uint8_t kMaxFinite = 0x7E;
constexpr uint8_t kSignBit = 0x80;

/// E4M3 from its definition; decodeE4M3 reads a table built from it, since
/// weight loading decodes every byte of a checkpoint.
float decodeE4M3FromBits(uint8_t bits) {
  float sign = (bits & kSignBit) ? -1.0f : 1.0f;
  int exponent = (bits >> kMantissaBits) & 0xF;
  int mantissa = bits & 0x7;
  if ((bits & 0x7F) == kNaN)
    return std::nanf("");
  if (exponent == 0)
    return sign * std::ldexp(static_cast<float>(mantissa),
                             kMinNormalExponent - kMantissaBits);
  return sign * std::ldexp(1.0f + mantissa / 8.0f, exponent - kExponentBias);
}
} // namespace

float decodeE4M3(uint8_t bits) {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (int code = 0; code < 256; ++code)
      values[code] = decodeE4M3FromBits(static_cast<uint8_t>(code));
    return values;
  }();
  return table[bits];
}

uint8_t encodeE4M3(float value) {
  if (std::isnan(value))
    return kNaN;
  uint8_t sign = std::signbit(value) ? kSignBit : 0;
  float magnitude = std::fabs(value);
  if (magnitude >= kE4M3Max)
    return sign | kMaxFinite;
  if (magnitude == 0.0f)
    return sign;

  // Count grid steps of the magnitude's binade (subnormals share the grid of
  // the smallest normal binade). nearbyint rounds half to even in the default
  // rounding mode; a mantissa that rounds up to 8 steps carries into the
  // exponent field, which is exactly the next code. Below 448 nothing can
  // round to the NaN code: the largest magnitude here rounds to 448 at most.
  int exponent;
  std::frexp(magnitude, &exponent); // magnitude = f * 2^exponent, f in [0.5, 1)
  int binade = std::max(exponent - 1, kMinNormalExponent);
  int steps = static_cast<int>(
      std::nearbyint(std::ldexp(magnitude, kMantissaBits - binade)));
  int code = steps + ((binade + kExponentBias - 1) << kMantissaBits);
  return sign | static_cast<uint8_t>(code);
}

float decodeBF16(uint16_t bits) {
  uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}

uint16_t encodeBF16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if (std::isnan(value))
    return static_cast<uint16_t>((word >> 16) | 0x40); // keep it quiet
  uint32_t roundingBias = 0x7FFF + ((word >> 16) & 1);
  return static_cast<uint16_t>((word + roundingBias) >> 16);
}

void quantizeActivationTiles(const float *x, int64_t rows, int64_t cols,
                             uint8_t *values, float *scales) {
  int64_t tiles = scaleBlocks(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < tiles; ++t) {
      int64_t begin = t * kScaleBlock;
      int64_t end = std::min(begin + kScaleBlock, cols);
      float amax = 0.0f;
      for (int64_t c = begin; c < end; ++c)
        amax = std::max(amax, std::fabs(x[r * cols + c]));
      float scale = std::max(amax, kMinAmax) / kE4M3Max;
      scales[r * tiles + t] = scale;
      for (int64_t c = begin; c < end; ++c)
        values[r * cols + c] = encodeE4M3(x[r * cols + c] / scale);
    }
  }
}

void dequantizeWeightBlocks(const uint8_t *q, const float *scaleInv, int64_t n,
                            int64_t k, float *out) {
  int64_t kBlocks = scaleBlocks(k);
  for (int64_t row = 0; row < n; ++row)
    for (int64_t col = 0; col < k; ++col)
      out[row * k + col] =
          decodeE4M3(q[row * k + col]) *
          scaleInv[(row / kScaleBlock) * kBlocks + col / kScaleBlock];
}

} // namespace kiln
