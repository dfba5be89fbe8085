//===- mla_prefill_mma.cuh - decompressed MLA for prefill on tensor cores -===//
//
// MLA in the form the model was trained in, for a prefill step of one
// sequence (model_kernels.cpp picks it: detail::mlaPrefillDecompressed).
// The absorbed form (mla_attention_mma.cuh) scores every position against a
// 576-wide latent and sums 512-wide latents per (token, head): 278,528 FLOP
// per (token, position) at DeepSeek-V3's 128 heads, the right trade for a
// decode step that reads the cache once. A prefill chunk of T tokens over a
// context of L positions is cheaper decompressed: kv_b_proj expands each
// cached latent once (33.5 MFLOP per position) into the heads' K_nope and V,
// after which a score costs (nope + rope) and a value v per head: 81,920
// FLOP per (token, position). The append (mla_attention.cuh) runs first, as
// for the other paths. Three kernels, BF16 mma.sync m16n8k16 with FP32
// accumulation:
//
//  - bound: the step's context, its largest valid position + 1, into the
//    workspace (positions past it may have no pages: nothing reads them).
//  - decompress: KV[j, h, :] = kvB[h·(nope + v) + :] · latent_j for every
//    position j < bound of the step's sequence (a GEMM of bound × heads ·
//    (nope + v) × kvLora, the latents gathered from the pages), bf16.
//  - prefill: causal flash attention, one block per (256 query tokens,
//    head), eight warps of 32 query rows (two 16-row mma tiles, so that
//    each K and V fragment read from shared memory serves both). Q =
//    [q_nope ‖ RoPE(q_pe)] stays in shared memory; 64-position tiles of K =
//    [K_nope ‖ k_pe (the cache's, roped at append)] and V are
//    double-buffered with cp.async; P goes from the score accumulators
//    straight into the P·V operands. A token attends to
//    the positions ≤ its own; the output is written as bf16 [T, heads · v].
//
// Numerics: K_nope, V, RoPE(q_pe) and P are rounded to BF16 for the tensor
// cores (2^-9 relative each); scores, the softmax and all sums are FP32.
// Tokens at invalid positions get NaN rows, as on the other paths.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_KERNELS_MLA_PREFILL_MMA_CUH
#define KILN_CUDA_KERNELS_MLA_PREFILL_MMA_CUH

#include "mla_attention_mma.cuh"

namespace kiln::cuda::kernels {

/// One block: the largest valid position of the step's tokens, + 1.
__device__ __forceinline__ void mlaPrefillBound(const MlaParams &p) {
  __shared__ int largest;
  if (threadIdx.x == 0)
    largest = -1;
  __syncthreads();
  int mine = -1;
  for (long long t = threadIdx.x; t < p.tokens; t += blockDim.x) {
    int position = pointer<const int>(p.positions)[t];
    if (validPosition(p, position))
      mine = max(mine, position);
  }
  atomicMax(&largest, mine);
  __syncthreads();
  if (threadIdx.x == 0)
    *pointer<int>(p.contextBound) = largest + 1;
}

/// KV = latents · kvBᵀ over positions [0, bound): M = positions, N = heads ·
/// (nope + v), K = kvLora. Grid: x = N tiles, y = position tiles.
__device__ __forceinline__ void mlaDecompress(const MlaParams &p) {
  extern __shared__ __align__(16) unsigned short decompressShared[];
  constexpr int kStageElements =
      (kDecompressM + kDecompressN) * kDecompressStride;
  const int bound = *pointer<const int>(p.contextBound);
  const long long m0 = static_cast<long long>(blockIdx.y) * kDecompressM;
  if (m0 >= bound)
    return;
  const long long n = static_cast<long long>(p.heads) * (p.nopeDim + p.vDim);
  const long long n0 = static_cast<long long>(blockIdx.x) * kDecompressN;
  const int k = p.kvLoraRank;
  const int slot = pointer<const int>(p.sequenceSlots)[0];
  const int width = p.kvLoraRank + p.ropeDim;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int warpM = (warp & 1) * 64, warpN = (warp >> 1) * 32;

  // Each thread copies 16 bytes of kPasses A rows and kPasses B rows per
  // stage: rows loadRow + kRowsPerPass i, columns 8 · loadChunk.
  constexpr int kChunks = kDecompressK / 8;
  constexpr int kRowsPerPass = kDecompressThreads / kChunks;
  constexpr int kPasses = kDecompressM / kRowsPerPass;
  static_assert(kDecompressM == kDecompressN);
  const int loadRow = threadIdx.x / kChunks, loadChunk = threadIdx.x % kChunks;
  // A's rows come through the page table (looked up once); B's are
  // computed where used, which keeps the kernel within 128 registers.
  const unsigned short *aRow[kPasses];
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    long long position = m0 + loadRow + kRowsPerPass * i;
    aRow[i] = position < bound
                  ? pointer<const unsigned short>(p.cache) +
                        cacheRow(p, slot, static_cast<int>(position)) * width
                  : nullptr;
  }
  const unsigned short *kvB = pointer<const unsigned short>(p.kvB);
  auto load = [&](int stage, int k0) {
    unsigned short *as = decompressShared + stage * kStageElements;
    unsigned short *bs = as + kDecompressM * kDecompressStride;
    int col = k0 + 8 * loadChunk;
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      int row = loadRow + kRowsPerPass * i;
      bool aValid = aRow[i] && col < k, bValid = n0 + row < n && col < k;
      copyAsync16(as + row * kDecompressStride + 8 * loadChunk,
                  aValid ? aRow[i] + col
                         : pointer<const unsigned short>(p.cache),
                  aValid);
      copyAsync16(bs + row * kDecompressStride + 8 * loadChunk,
                  bValid ? kvB + (n0 + row) * k + col : kvB, bValid);
    }
  };

  float acc[4][4][4] = {};
  const int steps = (k + kDecompressK - 1) / kDecompressK;
#pragma unroll
  for (int s = 0; s < kDecompressStages - 1; ++s) {
    if (s < steps)
      load(s, s * kDecompressK);
    asm volatile("cp.async.commit_group;\n" ::);
  }
  for (int step = 0; step < steps; ++step) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kDecompressStages - 2));
    __syncthreads();
    // The stage the previous step read is free for the step + 2's copies.
    int ahead = step + kDecompressStages - 1;
    if (ahead < steps)
      load(ahead % kDecompressStages, ahead * kDecompressK);
    asm volatile("cp.async.commit_group;\n" ::);
    const unsigned short *as =
        decompressShared + (step % kDecompressStages) * kStageElements;
    const unsigned short *bs = as + kDecompressM * kDecompressStride;
#pragma unroll
    for (int kk = 0; kk < kDecompressK; kk += 16) {
      unsigned fa[4][4], fb[2][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
        ldmatrixX4(fa[mt],
                   as + (warpM + 16 * mt + lane % 16) * kDecompressStride + kk +
                       lane / 16 * 8);
#pragma unroll
      for (int np = 0; np < 2; ++np)
        ldmatrixX4(fb[np],
                   bs +
                       (warpN + 16 * np + (lane & 7) + (lane >> 4) * 8) *
                           kDecompressStride +
                       kk + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
          mma(acc[mt][nt], fa[mt], fb[nt / 2][2 * (nt % 2)],
              fb[nt / 2][2 * (nt % 2) + 1]);
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::);

  storeTilesBF16(acc, pointer<unsigned short>(p.workspaceKv), n, m0 + warpM,
                 n0 + warpN, bound, n);
}

/// Causal flash attention of 256 query tokens × one head over the
/// decompressed K and V. Grid: x = heads, y = token tiles.
__device__ __forceinline__ void mlaPrefill(const MlaParams &p) {
  extern __shared__ __align__(16) unsigned short prefillShared[];
  unsigned short *qs = prefillShared; // [64][kPrefillQkStride]
  unsigned short *ks = qs + kPrefillRows * kPrefillQkStride; // [2][64][..]
  unsigned short *vs = ks + 2 * kPrefillTile * kPrefillQkStride;
  __shared__ int tileLargest;

  const int head = blockIdx.x;
  // Last tokens first: they attend to the most positions.
  const long long t0 =
      static_cast<long long>(gridDim.y - 1 - blockIdx.y) * kPrefillRows;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const int slot = pointer<const int>(p.sequenceSlots)[0];
  const int bound = *pointer<const int>(p.contextBound);
  const int headDims = p.nopeDim + p.vDim;
  const long long kvStride = static_cast<long long>(p.heads) * headDims;
  const unsigned short *kv = pointer<const unsigned short>(p.workspaceKv) +
                             static_cast<long long>(head) * headDims;
  const unsigned short *cache = pointer<const unsigned short>(p.cache);
  const int width = p.kvLoraRank + p.ropeDim;

  if (threadIdx.x == 0)
    tileLargest = -1;
  // Zero Q's and both stages' padding columns and the rows past the step
  // (cp.async writes the rest).
  for (int i = threadIdx.x; i < kPrefillRows * (kPrefillQk / 8);
       i += blockDim.x) {
    int row = i / (kPrefillQk / 8), col = 8 * (i % (kPrefillQk / 8));
    bool used = t0 + row < p.tokens &&
                (col < p.nopeDim ||
                 (col >= kPrefillNope && col < kPrefillNope + p.ropeDim));
    if (!used)
      *reinterpret_cast<uint4 *>(qs + row * kPrefillQkStride + col) =
          make_uint4(0, 0, 0, 0);
  }
  for (int i = threadIdx.x; i < 2 * kPrefillTile * (kPrefillQk / 8);
       i += blockDim.x) {
    int row = i / (kPrefillQk / 8), col = 8 * (i % (kPrefillQk / 8));
    if ((col >= p.nopeDim && col < kPrefillNope) ||
        col >= kPrefillNope + p.ropeDim)
      *reinterpret_cast<uint4 *>(ks + row * kPrefillQkStride + col) =
          make_uint4(0, 0, 0, 0);
  }
  for (int i = threadIdx.x; i < 2 * kPrefillTile * (kPrefillV / 8);
       i += blockDim.x) {
    int row = i / (kPrefillV / 8), col = 8 * (i % (kPrefillV / 8));
    if (col >= p.vDim)
      *reinterpret_cast<uint4 *>(vs + row * kPrefillVStride + col) =
          make_uint4(0, 0, 0, 0);
  }
  __syncthreads();

  // Q: q_nope by cp.async, RoPE(q_pe) computed; this tile's last position.
  const int headQ = head * (p.nopeDim + p.ropeDim);
  for (int i = threadIdx.x; i < kPrefillRows * (p.nopeDim / 8);
       i += blockDim.x) {
    int row = i / (p.nopeDim / 8), col = 8 * (i % (p.nopeDim / 8));
    if (t0 + row < p.tokens)
      copyAsync16(qs + row * kPrefillQkStride + col,
                  pointer<const unsigned short>(p.q.data) +
                      (t0 + row) * p.q.stride + headQ + col,
                  true);
  }
  asm volatile("cp.async.commit_group;\n" ::);
  const float *invFreq = pointer<const float>(p.invFreq);
  for (int i = threadIdx.x; i < kPrefillRows * (p.ropeDim / 2);
       i += blockDim.x) {
    int row = i / (p.ropeDim / 2), pair = i % (p.ropeDim / 2);
    long long token = t0 + row;
    if (token >= p.tokens)
      continue;
    int position = pointer<const int>(p.positions)[token];
    long long base = headQ + p.nopeDim + 2 * pair;
    float2 rotated = rope(loadF32OrBF16(p.q, token, base),
                          loadF32OrBF16(p.q, token, base + 1), invFreq[pair],
                          position, p.attentionFactor);
    *reinterpret_cast<unsigned *>(qs + row * kPrefillQkStride + kPrefillNope +
                                  2 * pair) = packBF16(rotated.x, rotated.y);
  }
  // This thread's rows: g and g + 8 of each of the warp's 16-row tiles.
  int rowPosition[kPrefillWarpTiles][2];
#pragma unroll
  for (int mt = 0; mt < kPrefillWarpTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      long long token = t0 + kPrefillWarpRows * warp + 16 * mt + g + 8 * r;
      int position =
          token < p.tokens ? pointer<const int>(p.positions)[token] : -1;
      rowPosition[mt][r] =
          validPosition(p, position) && position < bound ? position : -1;
      if (t == 0)
        atomicMax(&tileLargest, rowPosition[mt][r]);
    }
  asm volatile("cp.async.wait_group 0;\n" ::);
  __syncthreads();
  const int last = tileLargest;
  // This warp's last position: tiles past it are masked for all its rows
  // (the causal diagonal of a 256-token block spans four 64-position
  // tiles), so the warp skips their products and only keeps the barriers.
  int warpLast = rowPosition[0][0];
#pragma unroll
  for (int mt = 0; mt < kPrefillWarpTiles; ++mt)
    warpLast = max(warpLast, max(rowPosition[mt][0], rowPosition[mt][1]));
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset *= 2)
    warpLast = max(warpLast, __shfl_xor_sync(kFullMask, warpLast, offset));

  // Tile rows: kLoaders threads per position, K_nope ‖ k_pe and V chunks
  // split between them; positions past the tile's last are zero rows (P is
  // 0 there, and 0 · V must not meet what the workspace holds).
  constexpr int kLoaders = kPrefillThreads / kPrefillTile;
  const int loadRow = threadIdx.x / kLoaders, loadPart = threadIdx.x % kLoaders;
  const int nopeChunks = p.nopeDim / 8, ropeChunks = p.ropeDim / 8,
            vChunks = p.vDim / 8;
  const int rowChunks = nopeChunks + ropeChunks + vChunks;
  auto loadTile = [&](int stage, int tile) {
    int position = tile * kPrefillTile + loadRow;
    bool valid = position <= last;
    const unsigned short *kvRow = kv + position * kvStride;
    const unsigned short *cacheRowData =
        valid ? cache + cacheRow(p, slot, position) * width + p.kvLoraRank
              : cache;
    unsigned short *kRow =
        ks + (stage * kPrefillTile + loadRow) * kPrefillQkStride;
    unsigned short *vRow =
        vs + (stage * kPrefillTile + loadRow) * kPrefillVStride;
    for (int c = loadPart; c < rowChunks; c += kLoaders) {
      if (c < nopeChunks)
        copyAsync16(kRow + 8 * c, valid ? kvRow + 8 * c : cache, valid);
      else if (c < nopeChunks + ropeChunks)
        copyAsync16(kRow + kPrefillNope + 8 * (c - nopeChunks),
                    cacheRowData + 8 * (c - nopeChunks), valid);
      else
        copyAsync16(vRow + 8 * (c - nopeChunks - ropeChunks),
                    valid
                        ? kvRow + p.nopeDim + 8 * (c - nopeChunks - ropeChunks)
                        : cache,
                    valid);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };

  const float scaleLog2 = p.softmaxScale * 1.4426950408889634f;
  constexpr int kTiles = kPrefillWarpTiles;
  float o[kTiles][kPrefillV / 8][4] = {};
  float runningMax[kTiles][2], runningSum[kTiles][2];
#pragma unroll
  for (int mt = 0; mt < kTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      runningMax[mt][r] = -INFINITY;
      runningSum[mt][r] = 0.0f;
    }
  const unsigned short *qWarp =
      qs + (kPrefillWarpRows * warp + lane % 16) * kPrefillQkStride +
      lane / 16 * 8;
  const int tiles = last < 0 ? 0 : last / kPrefillTile + 1;
  if (tiles > 0)
    loadTile(0, 0);
  for (int tile = 0; tile < tiles; ++tile) {
    if (tile + 1 < tiles) {
      loadTile((tile + 1) & 1, tile + 1);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();
    const unsigned short *kt =
        ks + (tile & 1) * kPrefillTile * kPrefillQkStride;
    const unsigned short *vt = vs + (tile & 1) * kPrefillTile * kPrefillVStride;

    if (tile * kPrefillTile <= warpLast) {
      // S = Q · Kᵀ: the warp's rows × 64 positions; each K fragment serves
      // all of the warp's 16-row tiles (shared-memory reads bound this loop).
      float s[kTiles][kPrefillTile / 8][4] = {};
#pragma unroll
      for (int kk = 0; kk < kPrefillQk / 16; ++kk) {
        unsigned a[kTiles][4];
#pragma unroll
        for (int mt = 0; mt < kTiles; ++mt)
          ldmatrixX4(a[mt], qWarp + 16 * mt * kPrefillQkStride + 16 * kk);
#pragma unroll
        for (int np = 0; np < kPrefillTile / 16; ++np) {
          unsigned b[4];
          ldmatrixX4(b, kt +
                            (16 * np + (lane & 7) + (lane >> 4) * 8) *
                                kPrefillQkStride +
                            16 * kk + ((lane >> 3) & 1) * 8);
#pragma unroll
          for (int mt = 0; mt < kTiles; ++mt) {
            mma(s[mt][2 * np], a[mt], b[0], b[1]);
            mma(s[mt][2 * np + 1], a[mt], b[2], b[3]);
          }
        }
      }
      // Causal mask in the log2 domain; the online softmax per row; P (bf16)
      // as the A operand of P · V: score tiles 2kk and 2kk + 1 are the k16
      // step kk's columns 0-7 and 8-15.
      const int first = tile * kPrefillTile;
      unsigned pa[kTiles][kPrefillTile / 16][4];
#pragma unroll
      for (int mt = 0; mt < kTiles; ++mt) {
        float tileMax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < kPrefillTile / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            int at = first + 8 * nt + 2 * t + (e & 1);
            s[mt][nt][e] = at <= rowPosition[mt][e / 2]
                               ? s[mt][nt][e] * scaleLog2
                               : -INFINITY;
            tileMax[e / 2] = fmaxf(tileMax[e / 2], s[mt][nt][e]);
          }
        float correction[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          tileMax[r] = quadMax(tileMax[r]);
          float newMax = fmaxf(runningMax[mt][r], tileMax[r]);
          // A row with nothing unmasked yet keeps max -inf: exponents from 0.
          base[r] = newMax == -INFINITY ? 0.0f : newMax;
          correction[r] = exp2f(runningMax[mt][r] - base[r]);
          runningMax[mt][r] = newMax;
          runningSum[mt][r] *= correction[r];
        }
#pragma unroll
        for (int j = 0; j < kPrefillV / 8; ++j) {
          o[mt][j][0] *= correction[0];
          o[mt][j][1] *= correction[0];
          o[mt][j][2] *= correction[1];
          o[mt][j][3] *= correction[1];
        }
#pragma unroll
        for (int kk = 0; kk < kPrefillTile / 16; ++kk)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float p0 = exp2f(s[mt][2 * kk + h][0] - base[0]);
            float p1 = exp2f(s[mt][2 * kk + h][1] - base[0]);
            float p2 = exp2f(s[mt][2 * kk + h][2] - base[1]);
            float p3 = exp2f(s[mt][2 * kk + h][3] - base[1]);
            runningSum[mt][0] += p0 + p1;
            runningSum[mt][1] += p2 + p3;
            pa[mt][kk][2 * h] = packBF16(p0, p1);
            pa[mt][kk][2 * h + 1] = packBF16(p2, p3);
          }
      }
      // O += P · V: the warp's rows × 128 columns over 64 positions; each V
      // fragment serves all of the warp's row tiles.
#pragma unroll
      for (int kk = 0; kk < kPrefillTile / 16; ++kk)
#pragma unroll
        for (int j = 0; j < kPrefillV / 8; j += 2) {
          unsigned b[4];
          ldmatrixX4Trans(b,
                          vt +
                              (16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8) *
                                  kPrefillVStride +
                              8 * j + (lane >> 4) * 8);
#pragma unroll
          for (int mt = 0; mt < kTiles; ++mt) {
            mma(o[mt][j], pa[mt][kk], b[0], b[1]);
            mma(o[mt][j + 1], pa[mt][kk], b[2], b[3]);
          }
        }
    }
    // Every warp is done with this stage before the next iteration's copies
    // refill it.
    __syncthreads();
  }

  unsigned short *out = pointer<unsigned short>(p.out.data);
#pragma unroll
  for (int mt = 0; mt < kTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = quadSum(runningSum[mt][r]);
      long long token = t0 + kPrefillWarpRows * warp + 16 * mt + g + 8 * r;
      if (token >= p.tokens)
        continue;
      // A token at an invalid position gets a NaN row.
      float inverse =
          rowPosition[mt][r] < 0 ? __int_as_float(0x7FC00000) : 1.0f / sum;
#pragma unroll
      for (int j = 0; j < kPrefillV / 8; ++j) {
        int col = 8 * j + 2 * t;
        if (col < p.vDim)
          *reinterpret_cast<unsigned *>(out + token * p.out.stride +
                                        static_cast<long long>(head) * p.vDim +
                                        col) =
              packBF16(o[mt][j][2 * r] * inverse,
                       o[mt][j][2 * r + 1] * inverse);
      }
    }
}

} // namespace kiln::cuda::kernels

extern "C" __global__ void __launch_bounds__(1024)
    kiln_mla_prefill_bound(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaPrefillBound(p);
}
extern "C" __global__ void
__launch_bounds__(kiln::cuda::kernels::kDecompressThreads, 2)
    kiln_mla_decompress(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaDecompress(p);
}
extern "C" __global__ void
__launch_bounds__(kiln::cuda::kernels::kPrefillThreads, 1)
    kiln_mla_prefill(const kiln::cuda::kernels::MlaParams p) {
  kiln::cuda::kernels::mlaPrefill(p);
}

#endif // KILN_CUDA_KERNELS_MLA_PREFILL_MMA_CUH
