//===- mla_attention_mma.cuh - absorbed MLA on tensor cores ---------------===//
//
// The BF16-cache fast path of mla_attention (model_kernels.cpp picks it when
// the caller passes a workspace and the shape fits; mla_attention.cuh's
// append runs first, its per-(head, token) kernel stays the FP8-cache path).
// Four kernels, all BF16 mma.sync m16n8k16 with FP32 accumulation:
//
//  - absorb q: q_latent[t, h] = q_nope[t, h] · W_UK[h] for every token of the
//    step at once (a per-head batched GEMM: each weight tile is read once
//    per 64 tokens, not once per token) into the workspace, BF16.
//  - flash: one block per (token, 64 heads, KV split). The 64 heads of one
//    token share that token's cached positions, so they are the 64 query
//    rows of one flash-attention tile: Q (q_latent ‖ RoPE(q_pe), padded to
//    512 + 64 columns) stays in shared memory, 32-position cache tiles are
//    double-buffered with cp.async and read once for all 64 rows. Eight
//    warps: warp (r, h) owns rows 16r..16r+15; for S = Q·Kᵀ it takes
//    positions 16h..16h+15 of the tile, for O += P·V latent columns
//    256h..256h+255 (16 × 256 FP32 accumulators a thread-row, no spills).
//    The two halves agree on the running row max through shared memory and
//    exchange P (BF16) there. With one split the block writes o_latent
//    (BF16, over q_latent's rows: a (token, head) row is read and written by
//    this block alone); with several it writes O/l and log2-sum-exp.
//  - combine (splits > 1 only): o_latent = Σ_s w_s O_s, w_s ∝ 2^lse_s.
//  - absorb out: out[t, h] = o_latent[t, h] · W_UV[h]ᵀ, batched like q.
//
// Numerics: q_latent, P and o_latent are rounded to BF16 for the tensor
// cores (2^-9 relative each); scores, the softmax and all sums are FP32.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_KERNELS_MLA_ATTENTION_MMA_CUH
#define KILN_CUDA_KERNELS_MLA_ATTENTION_MMA_CUH

#include "mla_attention.cuh"

namespace kiln::cuda::kernels {

// The tiling constants are in model_kernels_params.h (the host sizes the
// launches with them).

__device__ __forceinline__ unsigned sharedAddress(const void *pointer) {
  return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void ldmatrixX4(unsigned (&r)[4],
                                           const unsigned short *address) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(sharedAddress(address)));
}

__device__ __forceinline__ void ldmatrixX4Trans(unsigned (&r)[4],
                                                const unsigned short *address) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, "
      "[%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(sharedAddress(address)));
}

/// d += a · b for one m16n8k16 BF16 tile.
__device__ __forceinline__ void mma(float (&d)[4], const unsigned (&a)[4],
                                    unsigned b0, unsigned b1) {
  // Not volatile: a pure register operation, which the compiler may then
  // schedule between the (volatile, shared-memory reading) ldmatrix.
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Copies 16 bytes, or writes 16 zero bytes when `valid` is false (the
/// source is then not read).
__device__ __forceinline__ void copyAsync16(void *destination,
                                            const void *source, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(
                   sharedAddress(destination)),
               "l"(source), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ unsigned packBF16(float low, float high) {
  return static_cast<unsigned>(toBF16(low)) |
         (static_cast<unsigned>(toBF16(high)) << 16);
}

/// Stores a warp's m16n8 accumulator tiles as BF16 pairs: tile (mt, nt) at
/// rows row0 + 16 mt.., columns col0 + 8 nt.. of `c` (row stride `stride`),
/// only inside rows x cols.
template <int kMTiles, int kNTiles>
__device__ __forceinline__ void
storeTilesBF16(const float (&acc)[kMTiles][kNTiles][4], unsigned short *c,
               long long stride, long long row0, long long col0, long long rows,
               long long cols) {
  const int lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        long long row = row0 + 16 * mt + g + 8 * half;
        long long col = col0 + 8 * nt + 2 * t;
        if (row < rows && col < cols)
          *reinterpret_cast<unsigned *>(c + row * stride + col) =
              packBF16(acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
      }
}

//===----------------------------------------------------------------------===//
// Absorption: per-head batched GEMMs over the step's tokens
//===----------------------------------------------------------------------===//

/// kUV false: q_latent[t, h, n] = Σ_k q[t, h·(nope+rope) + k] · kvB[h·(nope+v)
/// + k][n] (M = T, N = kvLora, K = nope; B is k-major in memory).
/// kUV true: out[t, h·v + n] = Σ_k o_latent[t, h, k] · kvB[h·(nope+v) + nope +
/// n][k] (M = T, N = v, K = kvLora; B is n-major). Grid: x = n-tile + head ·
/// n-tiles, y = token tile.
template <bool kUV>
__device__ __forceinline__ void mlaAbsorb(const MlaParams &p) {
  // A [m][k]; B as in memory: [k][n] (kUV false) or [n][k] (kUV true).
  __shared__ __align__(16) unsigned short as[kAbsorbM][kAbsorbK + 8];
  __shared__ __align__(16) unsigned short bs[kUV ? kAbsorbN : kAbsorbK]
                                            [(kUV ? kAbsorbK : kAbsorbN) + 8];
  const int n = kUV ? p.vDim : p.kvLoraRank;
  const int k = kUV ? p.kvLoraRank : p.nopeDim;
  const int nTiles = (n + kAbsorbN - 1) / kAbsorbN;
  const int head = blockIdx.x / nTiles;
  const int n0 = (blockIdx.x % nTiles) * kAbsorbN;
  const long long m0 = static_cast<long long>(blockIdx.y) * kAbsorbM;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int warpM = (warp & 1) * 32, warpN = (warp >> 1) * 32;
  const long long headRows = p.nopeDim + p.vDim;

  const unsigned short *a;
  long long aStride;
  if constexpr (kUV) {
    a = pointer<const unsigned short>(p.workspaceLatent) +
        static_cast<long long>(head) * p.kvLoraRank;
    aStride = static_cast<long long>(p.heads) * p.kvLoraRank;
  } else {
    a = pointer<const unsigned short>(p.q.data) +
        static_cast<long long>(head) * (p.nopeDim + p.ropeDim);
    aStride = p.q.stride;
  }
  const unsigned short *b =
      pointer<const unsigned short>(p.kvB) +
      (head * headRows + (kUV ? p.nopeDim : 0)) * p.kvLoraRank;

  // Pairs of adjacent elements along each operand's contiguous dimension
  // (every dimension is even; zeros outside the matrices), fetched into
  // registers one k-tile ahead so that the loads overlap the mma of the
  // current tile.
  constexpr int kPairs = kAbsorbM * kAbsorbK / 2 / kAbsorbThreads;
  static_assert(kAbsorbN * kAbsorbK / 2 / kAbsorbThreads == kPairs);
  unsigned aPairs[kPairs], bPairs[kPairs];
  auto fetch = [&](int k0) {
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      int i = threadIdx.x + j * kAbsorbThreads;
      int row = i / (kAbsorbK / 2), col = 2 * (i % (kAbsorbK / 2));
      aPairs[j] = m0 + row < p.tokens && k0 + col < k
                      ? *reinterpret_cast<const unsigned *>(
                            a + (m0 + row) * aStride + k0 + col)
                      : 0u;
      if constexpr (kUV)
        bPairs[j] =
            n0 + row < n && k0 + col < k
                ? *reinterpret_cast<const unsigned *>(
                      b + static_cast<long long>(n0 + row) * p.kvLoraRank + k0 +
                      col)
                : 0u;
      else {
        int kRow = i / (kAbsorbN / 2), nCol = 2 * (i % (kAbsorbN / 2));
        bPairs[j] =
            k0 + kRow < k && n0 + nCol < n
                ? *reinterpret_cast<const unsigned *>(
                      b + static_cast<long long>(k0 + kRow) * p.kvLoraRank +
                      n0 + nCol)
                : 0u;
      }
    }
  };
  auto stash = [&] {
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      int i = threadIdx.x + j * kAbsorbThreads;
      int row = i / (kAbsorbK / 2), col = 2 * (i % (kAbsorbK / 2));
      *reinterpret_cast<unsigned *>(&as[row][col]) = aPairs[j];
      if constexpr (kUV)
        *reinterpret_cast<unsigned *>(&bs[row][col]) = bPairs[j];
      else
        *reinterpret_cast<unsigned *>(
            &bs[i / (kAbsorbN / 2)][2 * (i % (kAbsorbN / 2))]) = bPairs[j];
    }
  };

  float acc[2][4][4] = {};
  fetch(0);
  for (int k0 = 0; k0 < k; k0 += kAbsorbK) {
    stash();
    __syncthreads();
    if (k0 + kAbsorbK < k)
      fetch(k0 + kAbsorbK);
#pragma unroll
    for (int kk = 0; kk < kAbsorbK; kk += 16) {
      unsigned fa[2][4], fb[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
        ldmatrixX4(fa[mt],
                   &as[warpM + 16 * mt + lane % 16][kk + lane / 16 * 8]);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        if constexpr (kUV)
          ldmatrixX4(fb[np], &bs[warpN + 16 * np + (lane & 7) + (lane >> 4) * 8]
                                [kk + ((lane >> 3) & 1) * 8]);
        else
          ldmatrixX4Trans(fb[np], &bs[kk + (lane & 7) + ((lane >> 3) & 1) * 8]
                                     [warpN + 16 * np + (lane >> 4) * 8]);
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
          mma(acc[mt][nt], fa[mt], fb[nt / 2][2 * (nt % 2)],
              fb[nt / 2][2 * (nt % 2) + 1]);
    }
    __syncthreads();
  }

  unsigned short *c;
  long long cStride;
  if constexpr (kUV) {
    c = pointer<unsigned short>(p.out.data) +
        static_cast<long long>(head) * p.vDim;
    cStride = p.out.stride;
  } else {
    c = pointer<unsigned short>(p.workspaceLatent) +
        static_cast<long long>(head) * p.kvLoraRank;
    cStride = static_cast<long long>(p.heads) * p.kvLoraRank;
  }
  storeTilesBF16(acc, c, cStride, m0 + warpM, n0 + warpN, p.tokens, n);
}

//===----------------------------------------------------------------------===//
// Flash attention over the latent cache
//===----------------------------------------------------------------------===//

__device__ __forceinline__ void mlaFlash(const MlaParams &p) {
  extern __shared__ __align__(16) unsigned short flashShared[];
  unsigned short *qs = flashShared;                        // [64][stride]
  unsigned short *ks = qs + kFlashRows * kFlashStride;     // [2][32][stride]
  unsigned short *ps = ks + 2 * kFlashTile * kFlashStride; // [64][40]
  float *rowMax = reinterpret_cast<float *>(ps + kFlashRows * kFlashPStride);
  float *rowSum = rowMax + 2 * kFlashRows; // [2][64] each

  const int groups = (p.heads + kFlashRows - 1) / kFlashRows;
  const int group = blockIdx.x % groups, split = blockIdx.x / groups;
  // Last token first: a prefill chunk's later tokens have the longer
  // contexts, and starting them early shortens the tail of the grid.
  const long long token = gridDim.y - 1 - blockIdx.y;
  const int head0 = group * kFlashRows;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int rowBase = 16 * (warp & 3), half = warp >> 2;
  const int g = lane / 4, t = lane % 4;
  const int position = pointer<const int>(p.positions)[token];
  unsigned short *latent = pointer<unsigned short>(p.workspaceLatent);
  if (!validPosition(p, position)) {
    // NaN o_latent, which the output projection carries to `out` (the
    // runtime passed a position the cache lacks); the combine does the same.
    if (p.splits == 1)
      for (int i = threadIdx.x; i < kFlashRows * p.kvLoraRank; i += blockDim.x)
        if (head0 + i / p.kvLoraRank < p.heads)
          latent[(token * p.heads + head0) * p.kvLoraRank + i] = 0x7FC0;
    return;
  }
  const int slot = pointer<const int>(p.sequenceSlots)[token];
  const int begin = split * p.splitLength;
  const int end = min(position + 1, begin + p.splitLength);
  const long long partial =
      (token * groups + group) * static_cast<long long>(p.splits) + split;
  float *partialLse = pointer<float>(p.workspacePartial) + partial * kFlashRows;
  if (begin >= end) {
    // A split past this token's context (splits > 1 only): no weight.
    if (threadIdx.x < kFlashRows)
      partialLse[threadIdx.x] = -INFINITY;
    return;
  }

  // Q: q_latent (cp.async) ‖ RoPE(q_pe), zero padded; rows of heads past
  // `heads` zero.
  for (int i = threadIdx.x; i < kFlashRows * (kFlashLatent / 8);
       i += blockDim.x) {
    int row = i / (kFlashLatent / 8), col = 8 * (i % (kFlashLatent / 8));
    bool valid = head0 + row < p.heads && col < p.kvLoraRank;
    copyAsync16(qs + row * kFlashStride + col,
                valid ? latent +
                            (token * p.heads + head0 + row) * p.kvLoraRank + col
                      : latent,
                valid);
  }
  const float *invFreq = pointer<const float>(p.invFreq);
  for (int i = threadIdx.x; i < kFlashRows * (kFlashRope / 8);
       i += blockDim.x) {
    int row = i / (kFlashRope / 8), col = 8 * (i % (kFlashRope / 8));
    int head = head0 + row;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (head < p.heads && col < p.ropeDim) {
      long long base = static_cast<long long>(head) * (p.nopeDim + p.ropeDim) +
                       p.nopeDim + col;
      unsigned words[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float2 rotated =
            rope(loadF32OrBF16(p.q, token, base + 2 * j),
                 loadF32OrBF16(p.q, token, base + 2 * j + 1),
                 invFreq[col / 2 + j], position, p.attentionFactor);
        words[j] = packBF16(rotated.x, rotated.y);
      }
      value = make_uint4(words[0], words[1], words[2], words[3]);
    }
    *reinterpret_cast<uint4 *>(qs + row * kFlashStride + kFlashLatent + col) =
        value;
  }
  // The cache tiles' padding columns stay zero (cp.async writes the rest).
  for (int i = threadIdx.x; i < 2 * kFlashTile * (kFlashDims / 8);
       i += blockDim.x) {
    int row = i / (kFlashDims / 8), col = 8 * (i % (kFlashDims / 8));
    if ((col >= p.kvLoraRank && col < kFlashLatent) ||
        col - kFlashLatent >= p.ropeDim)
      *reinterpret_cast<uint4 *>(ks + row * kFlashStride + col) =
          make_uint4(0, 0, 0, 0);
  }

  // Eight threads copy one row of a tile: one page-table lookup per row and
  // tile, made a tile ahead so that its latency hides behind the compute.
  static_assert(kFlashThreads / 8 == kFlashTile);
  const int width = p.kvLoraRank + p.ropeDim;
  const int chunks = width / 8;
  const int loadRow = threadIdx.x / 8, loadLane = threadIdx.x % 8;
  const unsigned short *cache = pointer<const unsigned short>(p.cache);
  auto rowIndex = [&](int tile) -> long long {
    int at = begin + tile * kFlashTile + loadRow;
    return at < end ? cacheRow(p, slot, at) : -1;
  };
  // Positions past the end are zero rows: P is 0 there, and 0 · V must not
  // meet stale or poisoned values.
  auto loadTile = [&](int stage, long long index) {
    unsigned short *row = ks + (stage * kFlashTile + loadRow) * kFlashStride;
    const unsigned short *source = index >= 0 ? cache + index * width : cache;
    for (int chunk = loadLane; chunk < chunks; chunk += 8)
      copyAsync16(row + (8 * chunk < p.kvLoraRank
                             ? 8 * chunk
                             : kFlashLatent + 8 * chunk - p.kvLoraRank),
                  source + 8 * chunk, index >= 0);
    asm volatile("cp.async.commit_group;\n" ::);
  };

  const float scaleLog2 = p.softmaxScale * 1.4426950408889634f;
  float o[32][4] = {};
  float runningMax[2] = {-INFINITY, -INFINITY}, runningSum[2] = {0.0f, 0.0f};
  const int tiles = (end - begin + kFlashTile - 1) / kFlashTile;
  loadTile(0, rowIndex(0)); // with Q's copies
  long long nextIndex = tiles > 1 ? rowIndex(1) : -1;
  for (int tile = 0; tile < tiles; ++tile) {
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
    if (tile + 1 < tiles) {
      loadTile((tile + 1) & 1, nextIndex);
      nextIndex = tile + 2 < tiles ? rowIndex(tile + 2) : -1;
    }
    const unsigned short *kt = ks + (tile & 1) * kFlashTile * kFlashStride;

    // S = Q · Kᵀ: this warp's 16 rows × 16 positions over 576 columns, in
    // two accumulator chains (even and odd k-steps) for twice the mma ILP.
    float s[2][4] = {}, odd[2][4] = {};
#pragma unroll 2
    for (int kk = 0; kk < kFlashDims; kk += 32) {
      unsigned a[4], b[4], a2[4], b2[4];
      const unsigned short *qRow =
          qs + (rowBase + lane % 16) * kFlashStride + kk + lane / 16 * 8;
      const unsigned short *kRow =
          kt + (16 * half + (lane & 7) + (lane >> 4) * 8) * kFlashStride + kk +
          ((lane >> 3) & 1) * 8;
      ldmatrixX4(a, qRow);
      ldmatrixX4(b, kRow);
      ldmatrixX4(a2, qRow + 16);
      ldmatrixX4(b2, kRow + 16);
      mma(s[0], a, b[0], b[1]);
      mma(s[1], a, b[2], b[3]);
      mma(odd[0], a2, b2[0], b2[1]);
      mma(odd[1], a2, b2[2], b2[3]);
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s[nt][e] += odd[nt][e];
    // Scale into the log2 domain, mask positions past the end; this warp's
    // max of rows g and g + 8.
    const int first = begin + tile * kFlashTile + 16 * half;
    float localMax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int at = first + 8 * nt + 2 * t + (e & 1);
        s[nt][e] = at < end ? s[nt][e] * scaleLog2 : -INFINITY;
        localMax[e / 2] = fmaxf(localMax[e / 2], s[nt][e]);
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      localMax[r] = quadMax(localMax[r]);
      if (t == 0)
        rowMax[half * kFlashRows + rowBase + g + 8 * r] = localMax[r];
    }
    __syncthreads();
    // Both halves now take the same new max (finite: position `first` of
    // half 0 is always < end), so their partial sums stay compatible.
    float correction[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float newMax =
          fmaxf(runningMax[r],
                fmaxf(localMax[r],
                      rowMax[(1 - half) * kFlashRows + rowBase + g + 8 * r]));
      correction[r] = exp2f(runningMax[r] - newMax);
      runningMax[r] = newMax;
      runningSum[r] *= correction[r];
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float p0 = exp2f(s[nt][2 * r] - runningMax[r]);
        float p1 = exp2f(s[nt][2 * r + 1] - runningMax[r]);
        runningSum[r] += p0 + p1;
        *reinterpret_cast<unsigned *>(
            ps + (rowBase + g + 8 * r) * kFlashPStride + 16 * half + 8 * nt +
            2 * t) = packBF16(p0, p1);
      }
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      o[j][0] *= correction[0];
      o[j][1] *= correction[0];
      o[j][2] *= correction[1];
      o[j][3] *= correction[1];
    }
    __syncthreads();

    // O += P · V: 16 rows × this half's 256 latent columns over 32 positions.
#pragma unroll
    for (int kk = 0; kk < kFlashTile; kk += 16) {
      unsigned a[4];
      ldmatrixX4(a, ps + (rowBase + lane % 16) * kFlashPStride + kk +
                        lane / 16 * 8);
#pragma unroll
      for (int j = 0; j < 32; j += 2) {
        unsigned b[4];
        ldmatrixX4Trans(
            b, kt + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * kFlashStride +
                   256 * half + 8 * j + (lane >> 4) * 8);
        mma(o[j], a, b[0], b[1]);
        mma(o[j + 1], a, b[2], b[3]);
      }
    }
  }

  // Row sums: over the quad, then over the two halves.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    runningSum[r] = quadSum(runningSum[r]);
    if (t == 0)
      rowSum[half * kFlashRows + rowBase + g + 8 * r] = runningSum[r];
  }
  __syncthreads();
  float inverse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total =
        rowSum[rowBase + g + 8 * r] + rowSum[kFlashRows + rowBase + g + 8 * r];
    inverse[r] = 1.0f / total;
    if (p.splits > 1 && half == 0 && t == 0)
      partialLse[rowBase + g + 8 * r] = runningMax[r] + log2f(total);
  }
  float *partialO = pointer<float>(p.workspacePartial) + p.partialLseFloats +
                    partial * kFlashRows * p.kvLoraRank;
#pragma unroll
  for (int j = 0; j < 32; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      int row = rowBase + g + 8 * r;
      int col = 256 * half + 8 * j + 2 * t;
      if (head0 + row >= p.heads || col >= p.kvLoraRank)
        continue;
      float x = o[j][2 * r] * inverse[r], y = o[j][2 * r + 1] * inverse[r];
      if (p.splits == 1)
        *reinterpret_cast<unsigned *>(
            latent + (token * p.heads + head0 + row) * p.kvLoraRank + col) =
            packBF16(x, y);
      else
        *reinterpret_cast<float2 *>(
            partialO + static_cast<long long>(row) * p.kvLoraRank + col) =
            make_float2(x, y);
    }
}

/// o_latent of one (token, head) from its splits (grid: heads × tokens).
__device__ __forceinline__ void mlaCombine(const MlaParams &p) {
  const int head = blockIdx.x;
  const long long token = blockIdx.y;
  const int groups = (p.heads + kFlashRows - 1) / kFlashRows;
  const int position = pointer<const int>(p.positions)[token];
  unsigned short *latent = pointer<unsigned short>(p.workspaceLatent) +
                           (token * p.heads + head) * p.kvLoraRank;
  if (!validPosition(p, position)) {
    for (int c = 2 * threadIdx.x; c < p.kvLoraRank; c += 2 * blockDim.x)
      *reinterpret_cast<unsigned *>(latent + c) = 0x7FC07FC0u;
    return;
  }
  const int row = head % kFlashRows;
  const long long first =
      (token * groups + head / kFlashRows) * static_cast<long long>(p.splits);
  const float *lse = pointer<const float>(p.workspacePartial);
  const float *partialO = lse + p.partialLseFloats;
  // The splits' weights once per block (at most kMlaMaxPartials splits);
  // an empty split (lse -inf) weighs 0 and its O, never written, is not read.
  __shared__ float weights[kMlaMaxPartials];
  __shared__ float inverseTotal;
  if (threadIdx.x < kWarpSize) {
    float largest = -INFINITY;
    for (int s = threadIdx.x; s < p.splits; s += kWarpSize)
      largest = fmaxf(largest, lse[(first + s) * kFlashRows + row]);
    largest = warpMax(largest); // finite: split 0 holds position 0
    float total = 0.0f;
    for (int s = threadIdx.x; s < p.splits; s += kWarpSize) {
      float value = lse[(first + s) * kFlashRows + row];
      float weight = value == -INFINITY ? 0.0f : exp2f(value - largest);
      weights[s] = weight;
      total += weight;
    }
    total = warpSum(total);
    if (threadIdx.x == 0)
      inverseTotal = 1.0f / total;
  }
  __syncthreads();
  for (int c = 2 * threadIdx.x; c < p.kvLoraRank; c += 2 * blockDim.x) {
    float x = 0.0f, y = 0.0f;
#pragma unroll 4
    for (int s = 0; s < p.splits; ++s) {
      if (weights[s] == 0.0f)
        continue;
      float2 o = *reinterpret_cast<const float2 *>(
          partialO + ((first + s) * kFlashRows + row) * p.kvLoraRank + c);
      x = fmaf(weights[s], o.x, x);
      y = fmaf(weights[s], o.y, y);
    }
    *reinterpret_cast<unsigned *>(latent + c) =
        packBF16(x * inverseTotal, y * inverseTotal);
  }
}

} // namespace kiln::cuda::kernels

extern "C" __global__ void
__launch_bounds__(kiln::cuda::kernels::kAbsorbThreads, 2)
    kiln_mla_absorb_q(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaAbsorb<false>(p);
}
extern "C" __global__ void
__launch_bounds__(kiln::cuda::kernels::kAbsorbThreads, 2)
    kiln_mla_absorb_out(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaAbsorb<true>(p);
}
extern "C" __global__ void __launch_bounds__(kiln::cuda::kernels::kFlashThreads,
                                             1)
    kiln_mla_flash(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaFlash(p);
}
extern "C" __global__ void
__launch_bounds__(kiln::cuda::kernels::kCombineThreads)
    kiln_mla_combine(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaCombine(p);
}

#endif // KILN_CUDA_KERNELS_MLA_ATTENTION_MMA_CUH
