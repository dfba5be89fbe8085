//===- moe.cuh - noaux_tc routing, dispatch and combine -------------------===//
//
// The router runs one block per token and reproduces kiln::routeToken
// exactly (same selection order and tie rule, same summation order of the
// weights); only expf's rounding differs from the host's. Dispatch is a
// single-block plan (count, scan, stable ranks) followed by a copy with one
// block per routed row. Combine sums the choices in order with explicit FMAs
// so that a host loop with std::fma reproduces it bit for bit.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_KERNELS_MOE_CUH
#define KILN_CUDA_KERNELS_MOE_CUH

#include "common.cuh"

namespace kiln::cuda::kernels {

constexpr int kRouteThreads = 256;
constexpr int kDispatchThreads = 1024;
constexpr int kCopyThreads = 128;

/// A key whose unsigned order is the router's: higher score first, then
/// lower index. 0 means "not eligible"; NaN ranks below every number.
__device__ __forceinline__ unsigned long long rankKey(float score, int index) {
  unsigned bits = __float_as_uint(score);
  unsigned ordered = isnan(score)           ? 0u
                     : (bits & 0x80000000u) ? ~bits
                                            : bits | 0x80000000u;
  return (static_cast<unsigned long long>(ordered) << 32) |
         (0xFFFFFFFFu - static_cast<unsigned>(index));
}

__device__ __forceinline__ int keyIndex(unsigned long long key) {
  return static_cast<int>(0xFFFFFFFFu - static_cast<unsigned>(key));
}

__device__ __forceinline__ unsigned long long
blockMaxKey(unsigned long long key, unsigned long long *scratch) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    unsigned long long other = __shfl_xor_sync(kFullMask, key, offset);
    key = other > key ? other : key;
  }
  int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  __syncthreads();
  if (lane == 0)
    scratch[warp] = key;
  __syncthreads();
  unsigned long long best = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarpSize); ++w)
    best = scratch[w] > best ? scratch[w] : best;
  return best;
}

} // namespace kiln::cuda::kernels

using namespace kiln::cuda::kernels;

/// Dynamic shared memory: scores, selection scores (f32 [E]), group scores
/// (f32 [nGroup]), eligibility (u8 [E]).
extern "C" __global__ void __launch_bounds__(kRouteThreads)
    kiln_moe_route(const RouteParams p) {
  extern __shared__ float shared[];
  float *scores = shared;
  float *selection = scores + p.experts;
  float *groupScores = selection + p.experts;
  unsigned char *eligible =
      reinterpret_cast<unsigned char *>(groupScores + p.nGroup);
  __shared__ unsigned long long scratch[32];
  __shared__ int chosen[64];

  const long long token = blockIdx.x;
  const float *logits =
      pointer<const float>(p.logits.data) + token * p.logits.stride;
  const float *bias = pointer<const float>(p.bias);
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) {
    float score = 1.0f / (1.0f + expf(-logits[e]));
    scores[e] = score;
    selection[e] = bias ? score + bias[e] : score;
  }
  __syncthreads();

  // Group score: the sum of the group's two best selection scores.
  const int perGroup = p.experts / p.nGroup;
  for (int g = threadIdx.x; g < p.nGroup; g += blockDim.x) {
    float best = -INFINITY, second = -INFINITY;
    for (int i = 0; i < perGroup; ++i) {
      float value = selection[g * perGroup + i];
      if (value > best) {
        second = best;
        best = value;
      } else if (value > second) {
        second = value;
      }
    }
    groupScores[g] = best + second;
  }
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x)
    eligible[e] = p.nGroup == 1;
  __syncthreads();
  // Keep the topkGroup best groups; the others' experts are never chosen
  // (the -inf mask of kiln::routeToken).
  if (p.nGroup > 1)
    for (int round = 0; round < p.topkGroup; ++round) {
      unsigned long long key = 0;
      for (int g = threadIdx.x; g < p.nGroup; g += blockDim.x)
        if (!eligible[g * perGroup]) {
          unsigned long long candidate = rankKey(groupScores[g], g);
          key = candidate > key ? candidate : key;
        }
      int group = keyIndex(blockMaxKey(key, scratch));
      for (int i = threadIdx.x; i < perGroup; i += blockDim.x)
        eligible[group * perGroup + i] = 1;
      __syncthreads();
    }

  for (int round = 0; round < p.topK; ++round) {
    unsigned long long key = 0;
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x)
      if (eligible[e]) {
        unsigned long long candidate = rankKey(selection[e], e);
        key = candidate > key ? candidate : key;
      }
    int expert = keyIndex(blockMaxKey(key, scratch));
    if (threadIdx.x == 0) {
      chosen[round] = expert;
      eligible[expert] = 0;
    }
    __syncthreads();
  }

  if (threadIdx.x == 0) {
    int *ids = pointer<int>(p.expertIds) + token * p.topK;
    float *weights = pointer<float>(p.weights) + token * p.topK;
    float sum = 0.0f;
    for (int j = 0; j < p.topK; ++j)
      sum += scores[chosen[j]];
    for (int j = 0; j < p.topK; ++j) {
      float weight = scores[chosen[j]];
      if (p.normTopkProb)
        weight /= sum + 1e-20f;
      ids[j] = chosen[j];
      weights[j] = weight * p.routedScalingFactor;
    }
  }
}

/// Per-warp expert histograms of the dispatch plan: warps × experts ints.
constexpr int kDispatchHistogram = 8192;

/// Walks one warp's segment [first, last) of the routed entries in order,
/// 32 at a time: lanes routed to the same expert take consecutive places
/// from that expert's cursor, which then moves past them (so the order is
/// the entries'). With `rows`, each entry's place is written there, -1 for
/// an id outside [0, experts).
__device__ __forceinline__ void walkSegment(const int *ids, long long first,
                                            long long last, int experts,
                                            int *cursors, int *rows) {
  const int lane = threadIdx.x % kWarpSize;
  for (long long base = first; base < last; base += kWarpSize) {
    long long entry = base + lane;
    int expert = entry < last ? ids[entry] : -1;
    bool valid = expert >= 0 && expert < experts;
    unsigned peers = __match_any_sync(kFullMask, valid ? expert : -1);
    int rank = __popc(peers & ((1u << lane) - 1));
    int row = valid ? cursors[expert] + rank : -1;
    __syncwarp();
    if (valid && rank == 0)
      cursors[expert] += __popc(peers);
    if (rows && entry < last)
      rows[entry] = row;
    __syncwarp();
  }
}

/// The dispatch plan in one block: counts per expert, their exclusive scan
/// into offsets[E + 1], and each routed entry's row (token-major entries
/// ranked in order within their expert, so the grouping is stable). An id
/// outside [0, E) is dropped: its row is -1. The entries are cut into one
/// contiguous segment per warp (as many warps as the histograms fit: 32 for
/// 256 experts); each warp counts its segment's experts, a scan over
/// (expert, warp) gives every warp its own cursor per expert, and the warps
/// then rank their segments in parallel, in order, 32 entries at a time.
extern "C" __global__ void __launch_bounds__(kDispatchThreads)
    kiln_moe_dispatch_plan(const DispatchParams p) {
  __shared__ int histogram[kDispatchHistogram]; // [warp][expert]
  __shared__ int warpTotals[kDispatchThreads / kWarpSize];
  const int *ids = pointer<const int>(p.expertIds);
  int *rows = pointer<int>(p.rows);
  const long long entries = p.tokens * p.topK;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int warps = min(static_cast<int>(blockDim.x / kWarpSize),
                        max(1, kDispatchHistogram / p.experts));
  const long long segment = (entries + warps - 1) / warps;
  const long long first = warp * segment, last = min(entries, first + segment);
  int *mine = histogram + warp * p.experts;

  for (int i = threadIdx.x; i < warps * p.experts; i += blockDim.x)
    histogram[i] = 0;
  __syncthreads();
  // Counts: a walk from zeroed cursors leaves each expert's count.
  if (warp < warps)
    walkSegment(ids, first, last, p.experts, mine, nullptr);
  __syncthreads();

  // Exclusive scan of the experts' totals, one expert per thread (experts
  // ≤ blockDim); then each warp's cursor per expert, in warp order.
  int count = 0;
  if (threadIdx.x < p.experts)
    for (int w = 0; w < warps; ++w)
      count += histogram[w * p.experts + threadIdx.x];
  int inclusive = count;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    int other = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset)
      inclusive += other;
  }
  if (lane == kWarpSize - 1)
    warpTotals[warp] = inclusive;
  __syncthreads();
  int before = 0;
  for (int w = 0; w < warp; ++w)
    before += warpTotals[w];
  int *offsets = pointer<int>(p.offsets);
  if (threadIdx.x < p.experts) {
    int exclusive = before + inclusive - count;
    offsets[threadIdx.x] = exclusive;
    if (threadIdx.x == p.experts - 1)
      offsets[p.experts] = exclusive + count;
    for (int w = 0; w < warps; ++w) {
      int &slot = histogram[w * p.experts + threadIdx.x];
      int segmentCount = slot;
      slot = exclusive;
      exclusive += segmentCount;
    }
  }
  __syncthreads();

  // Ranks: each warp walks its segment again from its own cursors.
  if (warp < warps)
    walkSegment(ids, first, last, p.experts, mine, rows);
}

/// Copies token t's FP8 row and its scales to each row it was routed to.
extern "C" __global__ void __launch_bounds__(kCopyThreads)
    kiln_moe_dispatch_copy(const DispatchParams p) {
  const long long entry = blockIdx.x;
  const int row = pointer<const int>(p.rows)[entry];
  if (row < 0)
    return;
  const long long token = entry / p.topK;
  const int expert = pointer<const int>(p.expertIds)[entry];
  const uint4 *source =
      pointer<const uint4>(p.inValues) + token * (p.cols / 16);
  uint4 *target = pointer<uint4>(p.outValues) + row * (p.cols / 16);
  for (long long i = threadIdx.x; i < p.cols / 16; i += blockDim.x)
    target[i] = source[i];
  const int *offsets = pointer<const int>(p.offsets);
  const long long begin = offsets[expert], count = offsets[expert + 1] - begin;
  const long long tiles = scaleTiles(p.cols);
  for (long long tile = threadIdx.x; tile < tiles; tile += blockDim.x)
    pointer<float>(p.outScales)[tiles * begin + tile * count + (row - begin)] =
        pointer<const float>(p.inScales)[tile * p.tokens + token];
}

/// The rank that computed routed row `row` of a gathered exchange: the
/// peer p whose global slots p · slots .. hold it in this rank's send order.
__device__ __forceinline__ long long epRowOwner(const CombineParams &p,
                                                long long row) {
  const int *offsets = pointer<const int>(p.peerOffsets);
  int owner = 0;
  for (int r = 1; r < p.ranks; ++r)
    if (offsets[r * p.slots] <= row)
      owner = r;
  return owner;
}

extern "C" __global__ void __launch_bounds__(kiln::cuda::kernels::kRowThreads)
    kiln_moe_combine(const CombineParams p) {
  const long long token = blockIdx.x;
  const int *rows = pointer<const int>(p.rows) + token * p.topK;
  const float *weights = pointer<const float>(p.weights) + token * p.topK;
  const unsigned short *y = pointer<const unsigned short>(p.y.data);
  // Columns in chunks along y, as the dense row kernels.
  const long long c = kiln::cuda::kernels::chunkColumn();
  if (c < p.cols) {
    float sum = 0.0f;
    for (int j = 0; j < p.topK; ++j) {
      long long row = rows[j];
      if (row >= 0 && p.peerOffsets)
        row += epRowOwner(p, row) * p.peerRows;
      if (row >= 0 && row < p.routedRows)
        sum = __fmaf_rn(weights[j], bf16Bits(y[row * p.y.stride + c]), sum);
    }
    pointer<float>(p.out.data)[token * p.out.stride + c] = sum;
  }
}

extern "C" __global__ void __launch_bounds__(kCopyThreads)
    kiln_ep_slots(const EpSlotsParams p) {
  const long long entry =
      static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (entry >= p.entries)
    return;
  const int expert = pointer<const int>(p.expertIds)[entry];
  int slot = -1;
  if (expert >= 0 && expert < p.experts) {
    const int replicas = pointer<const int>(p.counts)[expert];
    slot = pointer<const int>(
        p.replicas)[expert * p.maxReplicas + (entry / p.topK) % replicas];
  }
  pointer<int>(p.slots)[entry] = slot;
}

/// Chunks (peer, slot) an exchange's count tables may hold: moe_dispatch's
/// group limit.
constexpr int kEpMaxChunks = 1024;

/// In-place exclusive scan of `n` (≤ kEpMaxChunks) values in shared memory
/// by the whole block (Hillis-Steele over a scratch copy); returns the total.
__device__ int epBlockExclusiveScan(int *values, int *scratch, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    scratch[i] = values[i];
  __syncthreads();
  for (int step = 1; step < n; step *= 2) {
    int add[kEpMaxChunks / kCopyThreads];
    int k = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x, ++k)
      add[k] = i >= step ? scratch[i - step] : 0;
    __syncthreads();
    k = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x, ++k)
      scratch[i] += add[k];
    __syncthreads();
  }
  // scratch holds inclusive sums.
  const int total = n ? scratch[n - 1] : 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    values[i] = scratch[i] - values[i];
  __syncthreads();
  return total;
}

/// One block per peer-major row: finds its chunk (p, s) and its place among
/// slot s's rows, then copies the row (and, toward slot-major order, its
/// scales) one way or the other. Block 0 also writes the slot-major offsets.
/// Every block reads the count table into shared memory and scans it with
/// all its threads (a serial scan by one thread cost ~45 us per decode step
/// at 256 slots). A packed exchange holds the chunks back to back in
/// peer-major order; a gathered one holds each peer's whole send buffer
/// (`peerRows` rows from row p · peerRows, its chunk for this rank's slot s
/// at its send offsets), so "peer-major row" is then a place in the chunks'
/// concatenation and the block reads (or writes) the row where the peer's
/// buffer has it.
extern "C" __global__ void __launch_bounds__(kCopyThreads)
    kiln_ep_group(const EpGroupParams p) {
  __shared__ int rows[kEpMaxChunks];      // chunk (p, s) at p · slots + s
  __shared__ int peerMajor[kEpMaxChunks]; // its first row in peer-major order
  __shared__ int slotMajor[kEpMaxChunks]; // (s, p) at s · ranks + p: ditto
  __shared__ int scratch[kEpMaxChunks];
  __shared__ long long where[6];
  const int n = p.ranks * p.slots;
  const int *counts = pointer<const int>(p.counts);
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    const int peer = c / p.slots, slot = c % p.slots;
    int count;
    if (!p.peerRows) {
      count = counts[c];
    } else {
      const int *sent = counts + peer * (n + 1) + p.rank * p.slots + slot;
      count = sent[1] - sent[0];
    }
    rows[c] = count;
    peerMajor[c] = count;
    slotMajor[slot * p.ranks + peer] = count;
  }
  __syncthreads();
  epBlockExclusiveScan(peerMajor, scratch, n);
  const int total = epBlockExclusiveScan(slotMajor, scratch, n);
  if (blockIdx.x == 0 && p.offsets) {
    int *offsets = pointer<int>(p.offsets);
    for (int s = threadIdx.x; s < p.slots; s += blockDim.x)
      offsets[s] = slotMajor[s * p.ranks];
    if (threadIdx.x == 0)
      offsets[p.slots] = total;
  }
  const long long row = blockIdx.x;
  if (threadIdx.x == 0)
    where[0] = -1;
  __syncthreads();
  for (int c = threadIdx.x; c < n; c += blockDim.x)
    if (rows[c] > 0 && row >= peerMajor[c] && row < peerMajor[c] + rows[c]) {
      const int peer = c / p.slots, slot = c % p.slots;
      const long long offset = row - peerMajor[c];
      long long chunkStart = peerMajor[c];
      if (p.peerRows)
        chunkStart = peer * p.peerRows +
                     counts[peer * (n + 1) + p.rank * p.slots + slot];
      const int slotStart = slotMajor[slot * p.ranks];
      where[0] = chunkStart;
      where[1] = rows[c];
      where[2] = slotStart;
      where[3] =
          (slot + 1 < p.slots ? slotMajor[(slot + 1) * p.ranks] : total) -
          slotStart;
      where[4] = slotMajor[slot * p.ranks + peer] + offset;
      where[5] = chunkStart + offset;
    }
  __syncthreads();
  if (row >= p.rows || where[0] < 0)
    return;
  const long long chunkStart = where[0], chunkRows = where[1],
                  slotStart = where[2], slotRows = where[3],
                  slotMajorRow = where[4], peerMajorRow = where[5];
  const long long from = p.toSlotMajor ? peerMajorRow : slotMajorRow,
                  to = p.toSlotMajor ? slotMajorRow : peerMajorRow;
  const uint4 *source =
      pointer<const uint4>(p.inValues) + from * (p.rowBytes / 16);
  uint4 *target = pointer<uint4>(p.outValues) + to * (p.rowBytes / 16);
  for (long long i = threadIdx.x; i < p.rowBytes / 16; i += blockDim.x)
    target[i] = source[i];
  if (!p.toSlotMajor || !p.inScales)
    return;
  // Chunk layout: [tiles][chunkRows] from tiles · chunkStart; slot layout:
  // [tiles][slotRows] from tiles · slotStart (artifact.md "moe_dispatch").
  // A gathered peer's scales are its send buffer's, grouped by its global
  // slots: this rank's chunk is where its rows are, as in a packed one.
  const long long tiles = scaleTiles(p.cols);
  for (long long tile = threadIdx.x; tile < tiles; tile += blockDim.x)
    pointer<float>(p.outScales)[tiles * slotStart + tile * slotRows +
                                (slotMajorRow - slotStart)] =
        pointer<const float>(p.inScales)[tiles * chunkStart + tile * chunkRows +
                                         (peerMajorRow - chunkStart)];
}

#endif // KILN_CUDA_KERNELS_MOE_CUH
