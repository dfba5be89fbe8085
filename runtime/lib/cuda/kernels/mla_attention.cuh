//===- mla_attention.cuh - absorbed MLA over the paged latent cache -------===//
//
// Two kernels, launched in order on one stream, so that every token of the
// step is in the cache before any token attends (a prefill chunk attends to
// its own earlier tokens):
//
//  - append: one block per token writes [latent, RoPE(k_pe)] at the token's
//    position in its sequence's pages (BF16, or E4M3 with one scale per row).
//  - attention (the FP8-cache path, and the path of a call without a
//    workspace; mla_attention_mma.cuh is the BF16 tensor-core path): one
//    block per (head, token). RoPE on q_pe; q_latent = q_nope ·
//    W_UK (the head's first `nope` rows of kv_b_proj); each warp walks a share
//    of the positions ≤ the token's with an online softmax in FP32 (lanes
//    split the 576 cached values in pairs, four positions in flight); the
//    warps' partial (max, sum, Σ p·latent) merge in shared memory; the output
//    is o_latent · W_UV (the head's last `v` rows).
//
// RoPE is computed as kiln::applyRope does (f32 angle = invFreq · position,
// cos and sin times attentionFactor, interleaved pairs), with products and
// sums rounded separately as the CPU does (no contraction into FMA).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_KERNELS_MLA_ATTENTION_CUH
#define KILN_CUDA_KERNELS_MLA_ATTENTION_CUH

#include "common.cuh"

namespace kiln::cuda::kernels {

constexpr int kMlaThreads = 256;
constexpr int kMlaWarps = kMlaThreads / kWarpSize;
/// Latent pairs per lane: kvLoraRank ≤ 2 * 32 * 16 = 1024.
constexpr int kMlaLatentPairs = 16;
/// Rope pairs per lane: ropeDim ≤ 2 * 32 * 2 = 128.
constexpr int kMlaRopePairs = 2;
/// Positions a warp scores at once (independent shuffle reductions).
constexpr int kMlaPositionsInFlight = 4;

/// Rotates the pair (x0, x1) at `position` by frequency `invFreq`.
__device__ __forceinline__ float2 rope(float x0, float x1, float invFreq,
                                       int position, float attentionFactor) {
  float angle = __fmul_rn(invFreq, static_cast<float>(position));
  float c = __fmul_rn(cosf(angle), attentionFactor);
  float s = __fmul_rn(sinf(angle), attentionFactor);
  return make_float2(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)),
                     __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s)));
}

/// Whether `position` can be in the cache at all: the page table bounds it.
__device__ __forceinline__ bool validPosition(const MlaParams &p,
                                              int position) {
  return position >= 0 && position < p.maxContext &&
         position <
             static_cast<long long>(p.maxPagesPerSequence) * p.pageTokens;
}

/// Cache row index (page * pageTokens + slot in page) of `position`.
__device__ __forceinline__ long long cacheRow(const MlaParams &p, int slot,
                                              int position) {
  int page = pointer<const int>(
      p.pageTable)[static_cast<long long>(slot) * p.maxPagesPerSequence +
                   position / p.pageTokens];
  return static_cast<long long>(page) * p.pageTokens + position % p.pageTokens;
}

/// The raw bits of values (2i, 2i + 1) of a cache row.
template <int kCacheType>
__device__ __forceinline__ unsigned loadPair(Address row, int pair) {
  if constexpr (kCacheType == kBF16)
    return pointer<const unsigned>(row)[pair];
  else
    return pointer<const unsigned short>(row)[pair];
}

template <int kCacheType>
__device__ __forceinline__ float2 decodePair(unsigned bits, float scale) {
  if constexpr (kCacheType == kBF16)
    return make_float2(bf16Low(bits), bf16High(bits));
  else
    return make_float2(fromE4M3(bits & 0xFF) * scale,
                       fromE4M3((bits >> 8) & 0xFF) * scale);
}

template <int kCacheType>
__device__ __forceinline__ void mlaAppend(const MlaParams &p) {
  extern __shared__ float row[]; // kvLoraRank + ropeDim
  __shared__ float scratch[32];
  long long token = blockIdx.x;
  int position = pointer<const int>(p.positions)[token];
  if (!validPosition(p, position))
    return;
  int slot = pointer<const int>(p.sequenceSlots)[token];
  int width = p.kvLoraRank + p.ropeDim;
  for (int c = threadIdx.x; c < p.kvLoraRank; c += blockDim.x)
    row[c] = loadF32OrBF16(p.latent, token, c);
  const float *invFreq = pointer<const float>(p.invFreq);
  for (int j = threadIdx.x; j < p.ropeDim / 2; j += blockDim.x) {
    float2 rotated = rope(loadF32OrBF16(p.kPe, token, 2 * j),
                          loadF32OrBF16(p.kPe, token, 2 * j + 1), invFreq[j],
                          position, p.attentionFactor);
    row[p.kvLoraRank + 2 * j] = rotated.x;
    row[p.kvLoraRank + 2 * j + 1] = rotated.y;
  }
  __syncthreads();
  long long index = cacheRow(p, slot, position);
  if constexpr (kCacheType == kBF16) {
    unsigned short *out = pointer<unsigned short>(p.cache) + index * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x)
      out[c] = toBF16(row[c]);
  } else {
    float amax = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x)
      amax = fmaxf(amax, fabsf(row[c]));
    float scale = fmaxf(blockMax(amax, scratch), kMinAmax) / kE4M3Max;
    unsigned char *out = pointer<unsigned char>(p.cache) + index * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x)
      out[c] = toE4M3(row[c] / scale);
    if (threadIdx.x == 0)
      pointer<float>(p.cacheScales)[index] = scale;
  }
}

template <int kCacheType>
__device__ __forceinline__ void mlaAttention(const MlaParams &p) {
  // Shared: q_nope, q_pe (roped), q_latent (then o_latent), and each warp's
  // partial o_latent, max and sum.
  extern __shared__ float shared[];
  float *qNope = shared;
  float *qPe = qNope + p.nopeDim;
  float *qLatent = qPe + p.ropeDim;
  float *partialO = qLatent + p.kvLoraRank;
  float *partialMax = partialO + kMlaWarps * p.kvLoraRank;
  float *partialSum = partialMax + kMlaWarps;

  const int head = blockIdx.x;
  const long long token = blockIdx.y;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int position = pointer<const int>(p.positions)[token];
  unsigned short *out = pointer<unsigned short>(p.out.data) +
                        token * p.out.stride +
                        static_cast<long long>(head) * p.vDim;
  if (!validPosition(p, position)) {
    for (int e = threadIdx.x; e < p.vDim; e += blockDim.x)
      out[e] = 0x7FC0; // NaN: the runtime passed a position the cache lacks
    return;
  }
  const int slot = pointer<const int>(p.sequenceSlots)[token];
  const int width = p.kvLoraRank + p.ropeDim;
  const int headRows = p.nopeDim + p.vDim;
  const unsigned short *kvB =
      pointer<const unsigned short>(p.kvB) +
      static_cast<long long>(head) * headRows * p.kvLoraRank;

  // q of this head; RoPE on its last ropeDim values.
  const long long qBase =
      static_cast<long long>(head) * (p.nopeDim + p.ropeDim);
  for (int d = threadIdx.x; d < p.nopeDim; d += blockDim.x)
    qNope[d] = loadF32OrBF16(p.q, token, qBase + d);
  const float *invFreq = pointer<const float>(p.invFreq);
  for (int j = threadIdx.x; j < p.ropeDim / 2; j += blockDim.x) {
    float2 rotated =
        rope(loadF32OrBF16(p.q, token, qBase + p.nopeDim + 2 * j),
             loadF32OrBF16(p.q, token, qBase + p.nopeDim + 2 * j + 1),
             invFreq[j], position, p.attentionFactor);
    qPe[2 * j] = rotated.x;
    qPe[2 * j + 1] = rotated.y;
  }
  __syncthreads();
  // q_latent[c] = Σ_d q_nope[d] · W_UK[d][c], d in order as the CPU's axpy.
  for (int c = threadIdx.x; c < p.kvLoraRank; c += blockDim.x) {
    float sum = 0.0f;
    for (int d = 0; d < p.nopeDim; ++d)
      sum += qNope[d] *
             bf16Bits(kvB[static_cast<long long>(d) * p.kvLoraRank + c]);
    qLatent[c] = sum;
  }
  __syncthreads();

  // Lane `lane` holds latent pairs lane + 32 i and rope pairs lane + 32 i.
  const int latentPairs = p.kvLoraRank / 2, ropePairs = p.ropeDim / 2;
  float2 queryLatent[kMlaLatentPairs], queryRope[kMlaRopePairs];
  float2 accumulator[kMlaLatentPairs];
#pragma unroll
  for (int i = 0; i < kMlaLatentPairs; ++i) {
    int pair = lane + kWarpSize * i;
    queryLatent[i] = pair < latentPairs
                         ? make_float2(qLatent[2 * pair], qLatent[2 * pair + 1])
                         : make_float2(0.0f, 0.0f);
    accumulator[i] = make_float2(0.0f, 0.0f);
  }
#pragma unroll
  for (int i = 0; i < kMlaRopePairs; ++i) {
    int pair = lane + kWarpSize * i;
    queryRope[i] = pair < ropePairs
                       ? make_float2(qPe[2 * pair], qPe[2 * pair + 1])
                       : make_float2(0.0f, 0.0f);
  }

  const int context = position + 1;
  const int elementBytes = kCacheType == kBF16 ? 2 : 1;
  float runningMax = -INFINITY, runningSum = 0.0f;
  for (int base = warp * kMlaPositionsInFlight; base < context;
       base += kMlaWarps * kMlaPositionsInFlight) {
    unsigned latent[kMlaPositionsInFlight][kMlaLatentPairs];
    float rowScale[kMlaPositionsInFlight];
    float score[kMlaPositionsInFlight];
#pragma unroll
    for (int u = 0; u < kMlaPositionsInFlight; ++u) {
      int at = base + u;
      float partial = 0.0f;
      rowScale[u] = 1.0f;
#pragma unroll
      for (int i = 0; i < kMlaLatentPairs; ++i)
        latent[u][i] = 0;
      if (at < context) {
        long long index = cacheRow(p, slot, at);
        Address row =
            p.cache + static_cast<Address>(index) * width * elementBytes;
        if constexpr (kCacheType != kBF16)
          rowScale[u] = pointer<const float>(p.cacheScales)[index];
#pragma unroll
        for (int i = 0; i < kMlaLatentPairs; ++i) {
          int pair = lane + kWarpSize * i;
          if (pair < latentPairs)
            latent[u][i] = loadPair<kCacheType>(row, pair);
        }
#pragma unroll
        for (int i = 0; i < kMlaLatentPairs; ++i) {
          float2 value = decodePair<kCacheType>(latent[u][i], rowScale[u]);
          partial = fmaf(queryLatent[i].x, value.x, partial);
          partial = fmaf(queryLatent[i].y, value.y, partial);
        }
#pragma unroll
        for (int i = 0; i < kMlaRopePairs; ++i) {
          int pair = lane + kWarpSize * i;
          if (pair < ropePairs) {
            float2 value = decodePair<kCacheType>(
                loadPair<kCacheType>(row, latentPairs + pair), rowScale[u]);
            partial = fmaf(queryRope[i].x, value.x, partial);
            partial = fmaf(queryRope[i].y, value.y, partial);
          }
        }
      }
      score[u] = partial;
    }
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
#pragma unroll
      for (int u = 0; u < kMlaPositionsInFlight; ++u)
        score[u] += __shfl_xor_sync(kFullMask, score[u], offset);

    float newMax = runningMax;
#pragma unroll
    for (int u = 0; u < kMlaPositionsInFlight; ++u) {
      score[u] = base + u < context ? score[u] * p.softmaxScale : -INFINITY;
      newMax = fmaxf(newMax, score[u]);
    }
    // newMax is finite: position `base` < context is always scored.
    float correction = expf(runningMax - newMax);
    runningSum *= correction;
#pragma unroll
    for (int i = 0; i < kMlaLatentPairs; ++i) {
      accumulator[i].x *= correction;
      accumulator[i].y *= correction;
    }
#pragma unroll
    for (int u = 0; u < kMlaPositionsInFlight; ++u) {
      float weight = expf(score[u] - newMax);
      runningSum += weight;
#pragma unroll
      for (int i = 0; i < kMlaLatentPairs; ++i) {
        float2 value = decodePair<kCacheType>(latent[u][i], rowScale[u]);
        accumulator[i].x = fmaf(weight, value.x, accumulator[i].x);
        accumulator[i].y = fmaf(weight, value.y, accumulator[i].y);
      }
    }
    runningMax = newMax;
  }

  // Merge the warps' partial softmaxes (a warp with no position has max
  // -inf and sum 0 and drops out through exp(-inf) = 0).
#pragma unroll
  for (int i = 0; i < kMlaLatentPairs; ++i) {
    int pair = lane + kWarpSize * i;
    if (pair < latentPairs) {
      partialO[warp * p.kvLoraRank + 2 * pair] = accumulator[i].x;
      partialO[warp * p.kvLoraRank + 2 * pair + 1] = accumulator[i].y;
    }
  }
  if (lane == 0) {
    partialMax[warp] = runningMax;
    partialSum[warp] = runningSum;
  }
  __syncthreads();
  float blockMaxScore = partialMax[0];
  for (int w = 1; w < kMlaWarps; ++w)
    blockMaxScore = fmaxf(blockMaxScore, partialMax[w]);
  float total = 0.0f, factor[kMlaWarps];
#pragma unroll
  for (int w = 0; w < kMlaWarps; ++w) {
    factor[w] = expf(partialMax[w] - blockMaxScore);
    total += partialSum[w] * factor[w];
  }
  float *oLatent = qLatent; // q_latent lives in registers now
  for (int c = threadIdx.x; c < p.kvLoraRank; c += blockDim.x) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kMlaWarps; ++w)
      sum += partialO[w * p.kvLoraRank + c] * factor[w];
    oLatent[c] = sum / total;
  }
  __syncthreads();

  // out[e] = o_latent · W_UV[e]: one warp per output value.
  for (int e = warp; e < p.vDim; e += kMlaWarps) {
    const unsigned *weights = reinterpret_cast<const unsigned *>(
        kvB + static_cast<long long>(p.nopeDim + e) * p.kvLoraRank);
    float sum = 0.0f;
    for (int pair = lane; pair < latentPairs; pair += kWarpSize) {
      unsigned bits = weights[pair];
      sum = fmaf(bf16Low(bits), oLatent[2 * pair], sum);
      sum = fmaf(bf16High(bits), oLatent[2 * pair + 1], sum);
    }
    sum = warpSum(sum);
    if (lane == 0)
      out[e] = toBF16(sum);
  }
}

} // namespace kiln::cuda::kernels

extern "C" __global__ void __launch_bounds__(kiln::cuda::kernels::kMlaThreads)
    kiln_mla_append_bf16(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaAppend<kiln::cuda::kernels::kBF16>(p);
}
extern "C" __global__ void __launch_bounds__(kiln::cuda::kernels::kMlaThreads)
    kiln_mla_append_f8(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaAppend<kiln::cuda::kernels::kF8E4M3>(p);
}
extern "C" __global__ void __launch_bounds__(kiln::cuda::kernels::kMlaThreads)
    kiln_mla_attention_bf16(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaAttention<kiln::cuda::kernels::kBF16>(p);
}
extern "C" __global__ void __launch_bounds__(kiln::cuda::kernels::kMlaThreads)
    kiln_mla_attention_f8(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaAttention<kiln::cuda::kernels::kF8E4M3>(p);
}

#endif // KILN_CUDA_KERNELS_MLA_ATTENTION_CUH
