//===- kiln/fp8.h - FP8 and BF16 numerics of the DeepSeek-V3 recipe -------===//
//
// Bit-exact CPU reference for the formats Kiln's kernels use: E4M3 (the
// `float8_e4m3fn` of checkpoints and activations), BF16, and the 1×128 /
// 128×128 block scaling. The CPU backend and every GPU test compare against
// these.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_FP8_H
#define KILN_FP8_H

#include <cstdint>

namespace kiln {

/// Elements per scale along each scaled dimension.
constexpr int64_t kScaleBlock = 128;
/// Largest finite E4M3FN value.
constexpr float kE4M3Max = 448.0f;
/// Activation scales use max(amax, kMinAmax) so that all-zero tiles get a
/// finite, nonzero scale.
constexpr float kMinAmax = 1e-4f;

/// Decodes an E4M3FN byte: 1 sign, 4 exponent (bias 7), 3 mantissa bits, no
/// infinities, S.1111.111 is NaN.
float decodeE4M3(uint8_t bits);

/// Encodes to E4M3FN with round-to-nearest-even, saturating finite and
/// infinite values beyond ±448 to ±448 (as `cvt.rn.satfinite` does on the
/// GPU); NaN becomes NaN.
uint8_t encodeE4M3(float value);

/// Decodes a bfloat16 (the upper half of an IEEE float).
float decodeBF16(uint16_t bits);

/// Encodes to bfloat16 with round-to-nearest-even; NaN stays a quiet NaN.
uint16_t encodeBF16(float value);

/// Number of 128-element scale blocks covering `n` elements.
constexpr int64_t scaleBlocks(int64_t n) {
  return (n + kScaleBlock - 1) / kScaleBlock;
}

/// Quantizes a row-major `rows`×`cols` matrix per 1×128 tile along the rows:
/// `scales[r][t] = max(amax, 1e-4) / 448` over tile `t` of row `r`, and
/// `values[r][c] = e4m3(x[r][c] / scales[r][c / 128])`. `values` is
/// `rows`×`cols`, `scales` is `rows`×`scaleBlocks(cols)`.
void quantizeActivationTiles(const float *x, int64_t rows, int64_t cols,
                             uint8_t *values, float *scales);

/// Dequantizes an `n`×`k` E4M3 weight with one `scale_inv` per 128×128 block
/// (`scaleInv` is `scaleBlocks(n)`×`scaleBlocks(k)`): `out = q * scale_inv`.
void dequantizeWeightBlocks(const uint8_t *q, const float *scaleInv, int64_t n,
                            int64_t k, float *out);

} // namespace kiln

#endif // KILN_FP8_H
