//===- sampling.cuh - next-token sampling of logits rows ------------------===//
//
// kiln::Sampler (runtime/lib/sampler.cpp) on the device: one block per row of
// FP32 logits writes the chosen token id, -1 where the CPU sampler throws
// (a NaN or +inf logit below the row's limit, or no finite one).
//
// The CPU sorts the finite logits (most probable first, the lower id first
// among equals), keeps the first top_k, then the prefix whose mass before
// each token is below top_p, and walks the kept tokens (in that order, or in
// id order when nothing was cut) until the cumulative probability passes u.
// Here every kept set is a threshold instead of a sorted list: all keys above
// `low` plus the first `lowKept` ids of key `low`, where a key is the logit's
// order-preserving bit pattern. Thresholds come from bisection on the key,
// one block-wide pass over the row (from L2) per step: a count of keys for
// top-k, the mass above the key for top-p and for the draw. Masses are
// exp((logit - max) / temperature) in double, as on the CPU, summed in a
// fixed order (deterministic, rounding-level different from the CPU's
// sequential sums); a choice can differ from the CPU's only when u, or the
// top-p cut, lies within that rounding of a cumulative boundary.
//
// Cost (H100, batch 32, bench/results/sampling-kernel-h100.md): greedy 68 us,
// temperature only 0.36 ms, top-k/top-p 3.4-4.8 ms: a pass is latency bound
// (~50 us), so wider loads, several blocks per row or radix digits are next.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_KERNELS_SAMPLING_CUH
#define KILN_CUDA_KERNELS_SAMPLING_CUH

#include "common.cuh"

namespace kiln::cuda::kernels {

/// Order-preserving unsigned key of a non-NaN float. -0 is +0: the CPU
/// compares values, so the two tie (and go by id).
__device__ __forceinline__ unsigned orderKey(float value) {
  unsigned bits = __float_as_uint(value == 0.0f ? 0.0f : value);
  return bits & 0x80000000u ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float keyValue(unsigned long long key) {
  unsigned bits = static_cast<unsigned>(key);
  return __uint_as_float(bits & 0x80000000u ? bits & 0x7FFFFFFFu : ~bits);
}

/// Reduction over the block with `op`; every thread gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T blockReduce(T value, T *scratch, Op op) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value = op(value, __shfl_xor_sync(kFullMask, value, offset));
  int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  __syncthreads(); // scratch may still be read by a previous call
  if (lane == 0)
    scratch[warp] = value;
  __syncthreads();
  T total = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x) / kWarpSize; ++w)
    total = op(total, scratch[w]);
  return total;
}

struct Add {
  template <typename T> __device__ T operator()(T a, T b) const {
    return a + b;
  }
};

/// Exclusive and inclusive prefix sums of the threads' values, in thread
/// order.
template <typename T>
__device__ __forceinline__ void blockScan(T value, T *scratch, T &exclusive,
                                          T &inclusive) {
  int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  inclusive = value;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    T other = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset)
      inclusive += other;
  }
  T before = __shfl_up_sync(kFullMask, inclusive, 1);
  __syncthreads();
  if (lane == kWarpSize - 1)
    scratch[warp] = inclusive;
  __syncthreads();
  T warpBase = 0;
  for (int w = 0; w < warp; ++w)
    warpBase += scratch[w];
  exclusive = warpBase + (lane == 0 ? T(0) : before);
  inclusive = warpBase + inclusive;
}

/// Block-wide passes over one row's ids [0, limit), all finite or -inf.
/// Strided passes (coalesced) reduce; chunked passes (thread t owns ids
/// [t·chunk, (t+1)·chunk)) find an id by its rank in id order.
struct RowScan {
  static constexpr int kNone = 0x7FFFFFFF;

  const float *logits;
  int limit;
  int chunk;
  double maxLogit;
  double temperature;
  unsigned long long *scratch;
  int *chosen;

  __device__ double mass(float logit) const {
    return exp((static_cast<double>(logit) - maxLogit) / temperature);
  }
  __device__ long long countAtLeast(unsigned long long key) const {
    long long count = 0;
    for (int i = threadIdx.x; i < limit; i += blockDim.x)
      count += logits[i] != -INFINITY && orderKey(logits[i]) >= key;
    return blockReduce(count, reinterpret_cast<long long *>(scratch), Add());
  }
  __device__ long long countEqual(unsigned long long key) const {
    long long count = 0;
    for (int i = threadIdx.x; i < limit; i += blockDim.x)
      count += logits[i] != -INFINITY && orderKey(logits[i]) == key;
    return blockReduce(count, reinterpret_cast<long long *>(scratch), Add());
  }
  /// Mass of the tokens with a key >= `key`.
  __device__ double massAtLeast(unsigned long long key) const {
    double sum = 0;
    for (int i = threadIdx.x; i < limit; i += blockDim.x) {
      float logit = logits[i];
      if (logit != -INFINITY && orderKey(logit) >= key)
        sum += mass(logit);
    }
    return blockReduce(sum, reinterpret_cast<double *>(scratch), Add());
  }
  /// The id of the n-th (from 1) token of key `key` in id order.
  __device__ int nthEqual(unsigned long long key, long long n) const {
    int begin = min(limit, static_cast<int>(threadIdx.x) * chunk);
    int end = min(limit, begin + chunk);
    long long count = 0;
    for (int i = begin; i < end; ++i)
      count += logits[i] != -INFINITY && orderKey(logits[i]) == key;
    long long before, through;
    blockScan(count, reinterpret_cast<long long *>(scratch), before, through);
    if (before < n && n <= through) {
      for (int i = begin; i < end; ++i)
        if (logits[i] != -INFINITY && orderKey(logits[i]) == key &&
            ++before == n) {
          *chosen = i;
          break;
        }
    }
    __syncthreads();
    return *chosen;
  }
  /// The first id in id order whose cumulative mass passes `target`; the
  /// last finite id when rounding leaves the total at or below it (the
  /// CPU's kept.back()).
  __device__ int firstPast(double target) const {
    int begin = min(limit, static_cast<int>(threadIdx.x) * chunk);
    int end = min(limit, begin + chunk);
    double sum = 0;
    int lastFinite = -1;
    for (int i = begin; i < end; ++i)
      if (logits[i] != -INFINITY) {
        sum += mass(logits[i]);
        lastFinite = i;
      }
    double before, through;
    blockScan(sum, reinterpret_cast<double *>(scratch), before, through);
    // The first thread whose inclusive sum passes: tree sums need not be
    // monotone in the last bit, so take the minimum over all that pass.
    int owner =
        blockReduce(through > target ? static_cast<int>(threadIdx.x) : kNone,
                    reinterpret_cast<int *>(scratch),
                    [](int a, int b) { return min(a, b); });
    int last = blockReduce(lastFinite, reinterpret_cast<int *>(scratch),
                           [](int a, int b) { return max(a, b); });
    if (owner == kNone)
      return last;
    if (threadIdx.x == owner) {
      int pick = lastFinite >= 0 ? lastFinite : last;
      double running = before;
      for (int i = begin; i < end; ++i)
        if (logits[i] != -INFINITY) {
          running += mass(logits[i]);
          if (running > target) {
            pick = i;
            break;
          }
        }
      *chosen = pick;
    }
    __syncthreads();
    return *chosen;
  }
};

extern "C" __global__ void __launch_bounds__(kSampleThreads)
    kiln_sample(const SampleParams p) {
  __shared__ unsigned long long scratch[kWarpSize];
  __shared__ int chosen;
  const long long row = blockIdx.x;
  const SampleRowParams rp = pointer<const SampleRowParams>(p.rows)[row];
  const float *logits =
      pointer<const float>(p.logits.data) + row * p.logits.stride;
  const int limit = static_cast<int>(rp.limit);
  int *out = pointer<int>(p.tokens) + row;
  // What a search that finds nothing leaves: the host then asks the CPU
  // sampler, which reports the disagreement.
  if (threadIdx.x == 0)
    chosen = -1;

  // Check the row as the CPU does; the argmax (the lower id among equals),
  // the key range and the finite count.
  int bad = 0;
  long long finite = 0;
  unsigned long long best = 0;
  unsigned minKey = 0xFFFFFFFFu;
  for (int i = threadIdx.x; i < limit; i += blockDim.x) {
    float logit = logits[i];
    if (isnan(logit) || logit == INFINITY) {
      bad = 1;
    } else if (logit != -INFINITY) {
      ++finite;
      unsigned key = orderKey(logit);
      best = max(best, (static_cast<unsigned long long>(key) << 32) |
                           (0xFFFFFFFFu - static_cast<unsigned>(i)));
      minKey = min(minKey, key);
    }
  }
  bad = blockReduce(bad, reinterpret_cast<int *>(scratch),
                    [](int a, int b) { return a | b; });
  finite = blockReduce(finite, reinterpret_cast<long long *>(scratch), Add());
  best = blockReduce(
      best, scratch,
      [](unsigned long long a, unsigned long long b) { return max(a, b); });
  minKey = blockReduce(minKey, reinterpret_cast<unsigned *>(scratch),
                       [](unsigned a, unsigned b) { return min(a, b); });
  if (bad || finite == 0) {
    if (threadIdx.x == 0)
      *out = -1;
    return;
  }
  const unsigned long long maxKey = best >> 32;
  if (rp.temperature == 0.0f) {
    if (threadIdx.x == 0)
      *out = static_cast<int>(0xFFFFFFFFu - static_cast<unsigned>(best));
    return;
  }

  const int chunk = (limit + blockDim.x - 1) / blockDim.x;
  const RowScan scan{logits,
                     limit,
                     chunk,
                     static_cast<double>(keyValue(maxKey)),
                     static_cast<double>(rp.temperature),
                     scratch,
                     &chosen};
  const bool cutTopK = rp.topK > 0 && rp.topK < finite;
  const bool cutTopP = rp.topP < 1.0f;

  // The kept set: keys above `low` and the first `lowKept` ids of key `low`.
  unsigned long long low = minKey;
  long long lowKept;
  if (cutTopK) {
    // The k-th largest key: the largest with at least k keys at or above.
    unsigned long long lo = minKey, hi = maxKey;
    while (lo < hi) {
      unsigned long long mid = lo + (hi - lo + 1) / 2;
      if (scan.countAtLeast(mid) >= rp.topK)
        lo = mid;
      else
        hi = mid - 1;
    }
    low = lo;
    lowKept = rp.topK - scan.countAtLeast(lo + 1);
  } else {
    lowKept = scan.countEqual(low);
  }
  double kept = scan.massAtLeast(low + 1) + lowKept * scan.mass(keyValue(low));

  if (cutTopP) {
    // The last kept token's key: the smallest at or above `low` whose more
    // probable tokens hold less than top_p (then some of its ties are kept).
    const double topP = rp.topP;
    unsigned long long lo = low, hi = maxKey;
    while (lo < hi) {
      unsigned long long mid = lo + (hi - lo) / 2;
      if (scan.massAtLeast(mid + 1) / kept < topP)
        hi = mid;
      else
        lo = mid + 1;
    }
    const double above = scan.massAtLeast(lo + 1);
    const long long ties = lo == low ? lowKept : scan.countEqual(lo);
    const double each = scan.mass(keyValue(lo));
    // The j-th tie stays while the mass before it, above + (j - 1) · each,
    // is below top_p. Near a whole number of ties (exact rational masses:
    // equal logits) rounding decides, so add them one by one as the CPU does.
    double before = above / kept;
    const double step = each / kept;
    const double room = (topP - before) / step;
    if (room < static_cast<double>(ties) &&
        fabs(room - rint(room)) <= 1e-9 * room) {
      lowKept = 0;
      while (lowKept < ties && before < topP) {
        before += step;
        ++lowKept;
      }
    } else {
      lowKept = room >= static_cast<double>(ties)
                    ? ties
                    : max(1LL, static_cast<long long>(ceil(room)));
    }
    low = lo;
    kept = above + lowKept * each;
  }

  const double target = rp.u * kept;
  int token;
  if (!cutTopK && !cutTopP) {
    // Nothing cut: the CPU walks the tokens in id order.
    token = scan.firstPast(target);
  } else if (!(kept > target)) {
    token = scan.nthEqual(low, lowKept);
  } else {
    // Most probable first: the largest key whose tokens at or above it pass
    // the target, then the tie within that key, in id order.
    unsigned long long lo = low, hi = maxKey;
    while (lo < hi) {
      unsigned long long mid = lo + (hi - lo + 1) / 2;
      if (scan.massAtLeast(mid) > target)
        lo = mid;
      else
        hi = mid - 1;
    }
    const double above = scan.massAtLeast(lo + 1);
    const long long ties = lo == low ? lowKept : scan.countEqual(lo);
    const double each = scan.mass(keyValue(lo));
    const double steps = floor((target - above) / each);
    const long long n = steps >= static_cast<double>(ties)
                            ? ties
                            : max(1LL, static_cast<long long>(steps) + 1);
    token = scan.nthEqual(lo, n);
  }
  if (threadIdx.x == 0)
    *out = token;
}

} // namespace kiln::cuda::kernels

#endif // KILN_CUDA_KERNELS_SAMPLING_CUH
