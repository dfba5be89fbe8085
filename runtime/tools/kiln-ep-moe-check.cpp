//===- kiln-ep-moe-check.cpp - one MoE layer: expert parallel vs one rank -===//
//
// One process per GPU (ranks from the environment: kiln/distributed.h;
// scripts/device/ep.sh starts them). Every rank builds the same synthetic
// routed-expert layer at DeepSeek-V3's shapes (hidden 7168, expert
// intermediate 2048, top-k 8, E experts from fixed per-expert seeds) and its
// own tokens and routing from per-rank seeds, so any rank can rebuild any
// other rank's inputs. Then, for every contiguous grouped GEMM kernel of the
// artifact:
//
// - EP: each (token, choice) row goes (FP8 values, 1×128 scales, local
//   expert slot) to the rank that owns its expert under
//   ExpertPlacement::contiguous (one variable all-to-all), is grouped by
//   local expert (moe_dispatch with top-k 1), runs through this rank's
//   stacked experts (grouped gate and up GEMMs, swiglu + quantize, grouped
//   down GEMM: the CUDA backend's steps) and comes back as BF16 (a second
//   all-to-all) to be combined in choice order (moe_combine);
// - reference: the rank's own tokens through all E experts on its own GPU
//   (every expert rebuilt from its seeds), the backend's steps unchanged.
//
// Both must agree bit for bit: a row's GEMM output does not depend on the
// other rows of its tile or group, swiglu quantizes each row on its own, and
// combine adds a token's k outputs in choice order on both paths. Outputs
// are poisoned (NaN) first. The receiver also checks every received row
// against the sender's inputs rebuilt from its seeds. Prints one line per
// rank and kernel, a JSON line on rank 0; exits 1 on any mismatch.
//
//===----------------------------------------------------------------------===//

#include "kiln/artifact.h"
#include "kiln/cuda/artifact_kernel.h"
#include "kiln/cuda/driver.h"
#include "kiln/cuda/gemm_launcher.h"
#include "kiln/cuda/model_kernels.h"
#include "kiln/cuda/nccl.h"
#include "kiln/distributed.h"
#include "kiln/error.h"
#include "kiln/expert_placement.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

using namespace kiln;
using namespace kiln::cuda;

namespace {

constexpr int kHidden = 7168;
constexpr int kIntermediate = 2048;
constexpr int kTopK = 8;
constexpr int kBlock = 128;
constexpr int kHiddenBlocks = kHidden / kBlock;
constexpr int kIntermediateBlocks = kIntermediate / kBlock;
/// Scale magnitudes: E4M3 values up to 448 times these give activations of
/// order 1 and expert weights of order 0.05, so every product stays well
/// inside BF16 and FP8 range.
constexpr float kTokenScale = 1.0f / 448;
constexpr float kWeightScale = 0.05f / 448;

/// splitmix64: reproducible host randomness from a seed.
struct Random {
  uint64_t state;
  explicit Random(uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) / double(1ull << 53); }
};

/// Positive scales log-uniform in [s/2, 2s): a dropped or misplaced scale
/// changes the result.
std::vector<float> positiveScales(size_t count, float s, uint64_t seed) {
  Random random(seed);
  std::vector<float> scales(count);
  for (float &x : scales)
    x = s * static_cast<float>(std::exp2(2 * random.uniform() - 1));
  return scales;
}

uint64_t tokenSeed(int rank) { return 1000 + rank; }
uint64_t expertSeed(int expert, int projection) {
  return 100000 + 3 * uint64_t(expert) + projection;
}

template <typename T> void upload(CUdeviceptr to, const std::vector<T> &from) {
  if (!from.empty())
    KILN_CU("upload", cuMemcpyHtoD, to, from.data(), from.size() * sizeof(T));
}
template <typename T> std::vector<T> download(CUdeviceptr from, size_t count) {
  std::vector<T> to(count);
  if (count)
    KILN_CU("download", cuMemcpyDtoH, to.data(), from, count * sizeof(T));
  return to;
}

/// One rank's MoE input (host copies): E4M3 [T, H], scales [H/128][T],
/// distinct expert ids and positive weights [T, k].
struct Tokens {
  int count = 0;
  std::vector<uint8_t> values;
  std::vector<float> scales;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Tokens makeTokens(ModelKernels &kernels, CUstream stream, int rank, int count,
                  int experts) {
  Tokens t;
  t.count = count;
  DeviceBuffer values(size_t(count) * kHidden, "token values");
  kernels.fillRandom(stream, values.get(), int64_t(count) * kHidden,
                     ElementType::F8E4M3, tokenSeed(rank), 448);
  KILN_CU("tokens", cuStreamSynchronize, stream);
  t.values = download<uint8_t>(values.get(), size_t(count) * kHidden);
  t.scales = positiveScales(size_t(kHiddenBlocks) * count, kTokenScale,
                            tokenSeed(rank) + 7777);
  Random random(tokenSeed(rank) + 9999);
  std::vector<int32_t> order(experts);
  for (int i = 0; i < count; ++i) {
    std::iota(order.begin(), order.end(), 0);
    for (int j = 0; j < kTopK; ++j) { // partial Fisher-Yates: distinct ids
      int pick = j + int(random.next() % uint64_t(experts - j));
      std::swap(order[j], order[pick]);
      t.ids.push_back(order[j]);
      t.weights.push_back(static_cast<float>(0.05 + 0.95 * random.uniform()));
    }
  }
  return t;
}

/// One projection of some experts, stacked for the grouped GEMM
/// (gemm-abi.md "Grouped kernels"): [G·N, K] E4M3 and [G·N/128][K/128].
struct Stacked {
  DeviceBuffer data, scales;
};

Stacked stackProjection(ModelKernels &kernels, CUstream stream,
                        const std::vector<int> &experts, int projection, int n,
                        int k) {
  const size_t weight = size_t(n) * k,
               blocks = size_t(n / kBlock) * (k / kBlock);
  Stacked s{DeviceBuffer(weight * experts.size(), "expert weights"),
            DeviceBuffer(blocks * experts.size() * 4, "expert scales")};
  std::vector<float> scales;
  for (size_t g = 0; g < experts.size(); ++g) {
    kernels.fillRandom(stream, s.data.get() + g * weight, int64_t(weight),
                       ElementType::F8E4M3, expertSeed(experts[g], projection),
                       448);
    std::vector<float> e = positiveScales(
        blocks, kWeightScale, expertSeed(experts[g], projection) + 55555);
    scales.insert(scales.end(), e.begin(), e.end());
  }
  KILN_CU("experts", cuStreamSynchronize, stream);
  upload(s.scales.get(), scales);
  return s;
}

/// The routed experts of one rank (or all of them), in stacking order.
struct Experts {
  int count = 0;
  Stacked gate, up, down;
};

Experts makeExperts(ModelKernels &kernels, CUstream stream,
                    const std::vector<int> &experts) {
  return {static_cast<int>(experts.size()),
          stackProjection(kernels, stream, experts, 0, kIntermediate, kHidden),
          stackProjection(kernels, stream, experts, 1, kIntermediate, kHidden),
          stackProjection(kernels, stream, experts, 2, kHidden, kIntermediate)};
}

/// The backend's moe_dispatch → grouped_gemm ×2 → swiglu → grouped_gemm:
/// `rows` routed rows (E4M3 [rows, H], plain scales) with one expert slot
/// each in `ids` ([rows, topK] with topK 1 for received rows) give the
/// experts' BF16 outputs y [rows, H] grouped by expert and `order` (where
/// each input row's output is in y).
struct ExpertOutputs {
  std::vector<uint16_t> y;
  std::vector<int32_t> order;
};

ExpertOutputs runExperts(ModelKernels &kernels, const GemmKernel &gemm,
                         CUstream stream, const Experts &experts,
                         const std::vector<uint8_t> &values,
                         const std::vector<float> &scales,
                         const std::vector<int32_t> &ids, int inputRows,
                         int topK) {
  const int rows = inputRows * topK;
  ExpertOutputs out;
  if (rows == 0)
    return out;
  DeviceBuffer x(values.size(), "x"), xs(scales.size() * 4, "x scales"),
      idBuffer(ids.size() * 4, "ids");
  upload(x.get(), values);
  upload(xs.get(), scales);
  upload(idBuffer.get(), ids);
  DeviceBuffer dq(size_t(rows) * kHidden, "dispatched"),
      ds(size_t(rows) * kHiddenBlocks * 4, "dispatched scales"),
      offsets(size_t(experts.count + 1) * 4, "offsets"),
      order(size_t(rows) * 4, "rows"),
      gate(size_t(rows) * kIntermediate * 2, "gate"),
      up(size_t(rows) * kIntermediate * 2, "up"),
      act(size_t(rows) * kIntermediate, "act"),
      actScales(size_t(rows) * kIntermediateBlocks * 4, "act scales"),
      y(size_t(rows) * kHidden * 2, "y");
  // NaN everywhere a kernel must write.
  KILN_CU("poison", cuMemsetD16Async, gate.get(), 0x7FA5,
          size_t(rows) * kIntermediate, stream);
  KILN_CU("poison", cuMemsetD16Async, up.get(), 0x7FA5,
          size_t(rows) * kIntermediate, stream);
  KILN_CU("poison", cuMemsetD16Async, y.get(), 0x7FA5, size_t(rows) * kHidden,
          stream);
  kernels.moeDispatch(
      stream, {x.get(), xs.get(), inputRows, kHidden}, idBuffer.get(), topK,
      experts.count,
      {dq.get(), ds.get(), rows, kHidden, offsets.get(), experts.count},
      offsets.get(), order.get());
  auto grouped = [&](CUdeviceptr a, CUdeviceptr as, const Stacked &w,
                     CUdeviceptr result, int n, int k) {
    GroupedGemmOperands g;
    g.gemm.a = a;
    g.gemm.scaleA = as;
    g.gemm.b = w.data.get();
    g.gemm.scaleB = w.scales.get();
    g.gemm.out = result;
    g.gemm.m = rows;
    g.gemm.n = n;
    g.gemm.k = k;
    g.groups = offsets.get();
    g.numGroups = experts.count;
    gemm.launchGrouped(g, stream);
  };
  grouped(dq.get(), ds.get(), experts.gate, gate.get(), kIntermediate, kHidden);
  grouped(dq.get(), ds.get(), experts.up, up.get(), kIntermediate, kHidden);
  kernels.swigluQuantize(
      stream,
      {gate.get(), rows, kIntermediate, kIntermediate, ElementType::BF16},
      {up.get(), rows, kIntermediate, kIntermediate, ElementType::BF16},
      {act.get(), actScales.get(), rows, kIntermediate, offsets.get(),
       experts.count});
  grouped(act.get(), actScales.get(), experts.down, y.get(), kHidden,
          kIntermediate);
  KILN_CU("experts", cuStreamSynchronize, stream);
  out.y = download<uint16_t>(y.get(), size_t(rows) * kHidden);
  out.order = download<int32_t>(order.get(), rows);
  return out;
}

/// moe_combine of `y` [T·k, H] (row t·k + j: token t's choice j) with the
/// tokens' weights: f32 [T, H], poisoned first.
std::vector<float> combine(ModelKernels &kernels, CUstream stream,
                           const std::vector<uint16_t> &y,
                           const std::vector<int32_t> &rows,
                           const Tokens &tokens) {
  const int T = tokens.count;
  DeviceBuffer yBuffer(y.size() * 2 + 2, "y"),
      rowBuffer(rows.size() * 4, "rows"),
      weights(tokens.weights.size() * 4, "weights"),
      out(size_t(T) * kHidden * 4, "combined");
  upload(yBuffer.get(), y);
  upload(rowBuffer.get(), rows);
  upload(weights.get(), tokens.weights);
  KILN_CU("poison", cuMemsetD32Async, out.get(), 0x7FA5A5A5u,
          size_t(T) * kHidden, stream);
  kernels.moeCombine(
      stream,
      {yBuffer.get(), int64_t(T) * kTopK, kHidden, kHidden, ElementType::BF16},
      rowBuffer.get(), weights.get(), kTopK,
      {out.get(), T, kHidden, kHidden, ElementType::F32});
  KILN_CU("combine", cuStreamSynchronize, stream);
  return download<float>(out.get(), size_t(T) * kHidden);
}

/// Bytes of one routed row on the wire: E4M3 values, its 1×128 scales and
/// its expert's slot on the receiving rank.
constexpr size_t kRowBytes = kHidden + kHiddenBlocks * 4 + 4;

/// The rows `tokens` sends to `peer`, in (token, choice) order, packed as
/// [n·H values][n·H/128 scales, row by row][n slots].
std::vector<uint8_t> packRows(const Tokens &tokens,
                              const ExpertPlacement &placement, int peer,
                              std::vector<int32_t> *choices) {
  std::vector<int32_t> picked;
  for (int t = 0; t < tokens.count; ++t)
    for (int j = 0; j < kTopK; ++j) {
      int slot = placement.slotFor(tokens.ids[t * kTopK + j], t);
      if (placement.rankOfSlot(slot) == peer)
        picked.push_back(t * kTopK + j);
    }
  const size_t n = picked.size();
  std::vector<uint8_t> block(n * kRowBytes);
  for (size_t i = 0; i < n; ++i) {
    const int t = picked[i] / kTopK;
    std::memcpy(&block[i * kHidden], &tokens.values[size_t(t) * kHidden],
                kHidden);
    for (int b = 0; b < kHiddenBlocks; ++b)
      std::memcpy(&block[n * kHidden + (i * kHiddenBlocks + b) * 4],
                  &tokens.scales[size_t(b) * tokens.count + t], 4);
    int32_t slot =
        placement.slotFor(tokens.ids[picked[i]], t) % placement.slotsPerRank();
    std::memcpy(&block[n * (kHidden + kHiddenBlocks * 4) + i * 4], &slot, 4);
  }
  if (choices)
    *choices = std::move(picked);
  return block;
}

double median(std::vector<float> times) {
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

} // namespace

int main(int argc, char **argv) {
  std::string artifactPath;
  int experts = 64, tokenCount = 256;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--experts" && i + 1 < argc) {
      experts = std::stoi(argv[++i]);
    } else if (arg == "--tokens" && i + 1 < argc) {
      tokenCount = std::stoi(argv[++i]);
    } else if (artifactPath.empty() && !arg.empty() && arg[0] != '-') {
      artifactPath = arg;
    } else {
      std::fprintf(stderr,
                   "usage: kiln-ep-moe-check ARTIFACT.kiln [--experts E] "
                   "[--tokens T per rank]\n"
                   "checks every contiguous grouped GEMM kernel of the "
                   "artifact; ranks come from KILN_RANK/KILN_WORLD_SIZE, "
                   "mpirun or RANK/WORLD_SIZE (kiln/distributed.h)\n");
      return arg == "--help" ? 0 : 2;
    }
  }
  if (artifactPath.empty()) {
    std::fprintf(stderr, "kiln-ep-moe-check: no artifact (see --help)\n");
    return 2;
  }
  try {
    if (experts < kTopK || experts > kMaxGemmGroups || tokenCount < 1)
      throw Error("need " + std::to_string(kTopK) + " to " +
                  std::to_string(kMaxGemmGroups) +
                  " experts and at least one token");
    DistributedEnvironment env = readDistributedEnvironment();
    PrimaryContext context(env.localRank);
    std::unique_ptr<NcclCommunicator> comm = NcclCommunicator::create(env);
    const int ranks = comm->worldSize(), me = comm->rank();
    // A blocking stream: the synchronous host copies order with it.
    CUstream stream = nullptr;
    KILN_CU("kiln-ep-moe-check", cuStreamCreate, &stream, CU_STREAM_DEFAULT);
    ModelKernels kernels;
    Artifact artifact = readArtifact(artifactPath);
    std::vector<std::pair<std::string, GemmKernel>> gemms;
    for (const ArtifactKernel &k : artifact.kernels)
      if (k.grouped == "contiguous")
        gemms.emplace_back(k.name, loadArtifactGemmKernel(k, artifactPath));
    if (gemms.empty())
      throw Error(artifactPath + " has no contiguous grouped GEMM kernel");

    const ExpertPlacement placement =
        ExpertPlacement::contiguous(experts, ranks);
    const int local = placement.slotsPerRank();
    std::vector<int> all(experts), mine(local);
    std::iota(all.begin(), all.end(), 0);
    for (int s = 0; s < local; ++s)
      mine[s] = placement.slotExpert(me * local + s);
    const Tokens tokens = makeTokens(kernels, stream, me, tokenCount, experts);
    const Experts reference = makeExperts(kernels, stream, all);
    const Experts localExperts = makeExperts(kernels, stream, mine);

    // Dispatch: the routed rows to their experts' ranks.
    std::vector<std::vector<int32_t>> sentChoices(ranks);
    std::vector<std::vector<uint8_t>> sendBlocks(ranks);
    std::vector<int64_t> sentRows(ranks);
    for (int p = 0; p < ranks; ++p) {
      sendBlocks[p] = packRows(tokens, placement, p, &sentChoices[p]);
      sentRows[p] = static_cast<int64_t>(sentChoices[p].size());
    }
    const std::vector<int64_t> receivedRows =
        comm->exchangeCounts(sentRows, stream);
    std::vector<size_t> sendBytes(ranks), receiveBytes(ranks);
    for (int p = 0; p < ranks; ++p) {
      sendBytes[p] = sendBlocks[p].size();
      receiveBytes[p] = size_t(receivedRows[p]) * kRowBytes;
    }
    size_t sendTotal = 0, receiveTotal = 0;
    const auto send = packBlocks(sendBytes, &sendTotal);
    const auto receive = packBlocks(receiveBytes, &receiveTotal);
    std::vector<uint8_t> host(sendTotal + 256, 0);
    for (int p = 0; p < ranks; ++p)
      std::copy(sendBlocks[p].begin(), sendBlocks[p].end(),
                host.begin() + send[p].offset);
    DeviceBuffer dispatchSend(sendTotal + 256, "dispatch send"),
        dispatchReceive(receiveTotal + 256, "dispatch receive");
    upload(dispatchSend.get(), host);
    KILN_CU("poison", cuMemsetD8Async, dispatchReceive.get(), 0xA5,
            receiveTotal + 256, stream);
    comm->allToAllV(dispatchSend.get(), send, dispatchReceive.get(), receive,
                    stream);
    KILN_CU("dispatch", cuStreamSynchronize, stream);
    const std::vector<uint8_t> received =
        download<uint8_t>(dispatchReceive.get(), receiveTotal + 256);

    // Unpack into the experts' input (rows in peer order) and check every
    // row against what the peer's rebuilt inputs say it sent.
    size_t inputMismatches = 0;
    const int R = static_cast<int>(
        std::accumulate(receivedRows.begin(), receivedRows.end(), int64_t(0)));
    std::vector<uint8_t> xValues(size_t(R) * kHidden);
    std::vector<float> xScales(size_t(R) * kHiddenBlocks);
    std::vector<int32_t> xSlots(R);
    for (int p = 0, row = 0; p < ranks; ++p) {
      const size_t n = size_t(receivedRows[p]);
      const uint8_t *block = received.data() + receive[p].offset;
      Tokens peer = p == me
                        ? tokens
                        : makeTokens(kernels, stream, p, tokenCount, experts);
      std::vector<uint8_t> expected = packRows(peer, placement, me, nullptr);
      inputMismatches += expected.size() != n * kRowBytes ||
                         std::memcmp(expected.data(), block, n * kRowBytes);
      for (size_t i = 0; i < n; ++i, ++row) {
        std::memcpy(&xValues[size_t(row) * kHidden], block + i * kHidden,
                    kHidden);
        for (int b = 0; b < kHiddenBlocks; ++b)
          std::memcpy(&xScales[size_t(b) * R + row],
                      block + n * kHidden + (i * kHiddenBlocks + b) * 4, 4);
        std::memcpy(&xSlots[row],
                    block + n * (kHidden + kHiddenBlocks * 4) + i * 4, 4);
      }
    }

    std::vector<int32_t> identity(size_t(tokenCount) * kTopK);
    std::iota(identity.begin(), identity.end(), 0);
    size_t failures = inputMismatches;
    std::string json;
    std::vector<float> dispatchTimes, combineTimes;
    size_t combineSendTotal = 0;
    std::vector<size_t> combineSendBytes(ranks), combineReceiveBytes(ranks);
    for (int p = 0; p < ranks; ++p) {
      combineSendBytes[p] = size_t(receivedRows[p]) * kHidden * 2;
      combineReceiveBytes[p] = size_t(sentRows[p]) * kHidden * 2;
    }
    size_t combineReceiveTotal = 0;
    const auto combineSend = packBlocks(combineSendBytes, &combineSendTotal);
    const auto combineReceive =
        packBlocks(combineReceiveBytes, &combineReceiveTotal);
    DeviceBuffer combineSendBuffer(combineSendTotal + 256, "combine send"),
        combineReceiveBuffer(combineReceiveTotal + 256, "combine receive");

    for (const auto &[name, gemm] : gemms) {
      // EP: this rank's experts on the rows it received.
      ExpertOutputs ep = runExperts(kernels, gemm, stream, localExperts,
                                    xValues, xScales, xSlots, R, 1);
      // Un-group (row r's output is at ep.order[r]) and send back.
      std::vector<uint16_t> back((combineSendTotal + 256) / 2, 0);
      for (int p = 0, row = 0; p < ranks; ++p)
        for (int64_t i = 0; i < receivedRows[p]; ++i, ++row)
          std::memcpy(&back[combineSend[p].offset / 2 + size_t(i) * kHidden],
                      &ep.y[size_t(ep.order[row]) * kHidden], kHidden * 2);
      upload(combineSendBuffer.get(), back);
      KILN_CU("poison", cuMemsetD8Async, combineReceiveBuffer.get(), 0xA5,
              combineReceiveTotal + 256, stream);
      comm->allToAllV(combineSendBuffer.get(), combineSend,
                      combineReceiveBuffer.get(), combineReceive, stream);
      KILN_CU("combine", cuStreamSynchronize, stream);
      const std::vector<uint16_t> returned = download<uint16_t>(
          combineReceiveBuffer.get(), (combineReceiveTotal + 256) / 2);
      // Row t·k + j: token t's choice j, as the reference's combine reads.
      std::vector<uint16_t> yEp(size_t(tokenCount) * kTopK * kHidden, 0x7FA5);
      for (int p = 0; p < ranks; ++p)
        for (size_t i = 0; i < sentChoices[p].size(); ++i)
          std::memcpy(&yEp[size_t(sentChoices[p][i]) * kHidden],
                      &returned[combineReceive[p].offset / 2 + i * kHidden],
                      kHidden * 2);
      const std::vector<float> outEp =
          combine(kernels, stream, yEp, identity, tokens);

      // Reference: all experts here.
      ExpertOutputs ref =
          runExperts(kernels, gemm, stream, reference, tokens.values,
                     tokens.scales, tokens.ids, tokenCount, kTopK);
      const std::vector<float> outRef =
          combine(kernels, stream, ref.y, ref.order, tokens);

      size_t equalRows = 0, equalExpertRows = 0, nonFinite = 0;
      double maxDiff = 0, maxRef = 0;
      for (int t = 0; t < tokenCount; ++t) {
        const float *a = &outEp[size_t(t) * kHidden];
        const float *b = &outRef[size_t(t) * kHidden];
        equalRows += std::memcmp(a, b, kHidden * 4) == 0;
        for (int c = 0; c < kHidden; ++c) {
          if (!std::isfinite(a[c]) || !std::isfinite(b[c]))
            ++nonFinite;
          maxDiff = std::max(maxDiff, double(std::fabs(a[c] - b[c])));
          maxRef = std::max(maxRef, double(std::fabs(b[c])));
        }
        for (int j = 0; j < kTopK; ++j)
          equalExpertRows +=
              std::memcmp(&yEp[size_t(t * kTopK + j) * kHidden],
                          &ref.y[size_t(ref.order[t * kTopK + j]) * kHidden],
                          kHidden * 2) == 0;
      }
      const bool ok = equalRows == size_t(tokenCount) && nonFinite == 0 &&
                      inputMismatches == 0;
      failures += !ok;

      std::string sentText, receivedText;
      for (int p = 0; p < ranks; ++p) {
        sentText += (p ? " " : "") + std::to_string(sentRows[p]);
        receivedText += (p ? " " : "") + std::to_string(receivedRows[p]);
      }
      std::printf("rank %d/%d (GPU %d, %s) %s: %d experts (%d here), %d "
                  "tokens x top-%d; rows sent per peer [%s], received [%s]; "
                  "received rows as rebuilt: %s; output rows bitwise equal "
                  "%zu/%d, expert rows %zu/%d, non-finite %zu, max |diff| %.3g "
                  "(max |ref| %.3g): %s\n",
                  me, ranks, env.localRank, comm->version().c_str(),
                  name.c_str(), experts, local, tokenCount, kTopK,
                  sentText.c_str(), receivedText.c_str(),
                  inputMismatches ? "MISMATCH" : "yes", equalRows, tokenCount,
                  equalExpertRows, tokenCount * kTopK, nonFinite, maxDiff,
                  maxRef, ok ? "ok" : "MISMATCH");
      char entry[512];
      std::snprintf(entry, sizeof entry,
                    "%s{\"kernel\": \"%s\", \"bitwise_rows\": %zu, "
                    "\"expert_rows_bitwise\": %zu, \"max_abs_diff\": %.6g}",
                    json.empty() ? "" : ", ", name.c_str(), equalRows,
                    equalExpertRows, maxDiff);
      json += entry;
    }

    // The exchange's time: the two all-to-alls again on the same buffers
    // (their contents no longer matter), median of 20 after 5 warm-ups.
    CUevent start = nullptr, stop = nullptr;
    KILN_CU("event", cuEventCreate, &start, CU_EVENT_DEFAULT);
    KILN_CU("event", cuEventCreate, &stop, CU_EVENT_DEFAULT);
    auto timeOne = [&](bool dispatch) {
      KILN_CU("event", cuEventRecord, start, stream);
      if (dispatch)
        comm->allToAllV(dispatchSend.get(), send, dispatchReceive.get(),
                        receive, stream);
      else
        comm->allToAllV(combineSendBuffer.get(), combineSend,
                        combineReceiveBuffer.get(), combineReceive, stream);
      KILN_CU("event", cuEventRecord, stop, stream);
      KILN_CU("event", cuEventSynchronize, stop);
      float ms = 0;
      KILN_CU("event", cuEventElapsedTime, &ms, start, stop);
      return ms;
    };
    for (int i = 0; i < 25; ++i) {
      float d = timeOne(true), c = timeOne(false);
      if (i >= 5) {
        dispatchTimes.push_back(d);
        combineTimes.push_back(c);
      }
    }
    const double dispatchMs = median(dispatchTimes),
                 combineMs = median(combineTimes);
    // Bytes leaving this GPU: what goes to the other ranks.
    double leaving = 0;
    for (int p = 0; p < ranks; ++p)
      if (p != me)
        leaving += double(sendBytes[p]) + double(combineSendBytes[p]);
    const double gbps = leaving / ((dispatchMs + combineMs) * 1e-3) / 1e9;
    std::printf("rank %d/%d: exchange %.1f KiB out (dispatch %.3f ms, combine "
                "%.3f ms): %.1f GB/s out per GPU\n",
                me, ranks, leaving / 1024, dispatchMs, combineMs, gbps);

    // Every rank's verdict reaches rank 0.
    std::vector<int64_t> verdicts = comm->exchangeCounts(
        std::vector<int64_t>(ranks, int64_t(failures)), stream);
    const int64_t allFailures =
        std::accumulate(verdicts.begin(), verdicts.end(), int64_t(0));
    if (me == 0)
      std::printf("kiln-ep-moe-check: {\"ranks\": %d, \"experts\": %d, "
                  "\"tokens_per_rank\": %d, \"top_k\": %d, \"ok\": %s, "
                  "\"rank0\": [%s], \"dispatch_ms\": %.4f, \"combine_ms\": "
                  "%.4f, \"gb_per_s_per_gpu\": %.2f}\n",
                  ranks, experts, tokenCount, kTopK,
                  allFailures ? "false" : "true", json.c_str(), dispatchMs,
                  combineMs, gbps);
    KILN_CU("event", cuEventDestroy, start);
    KILN_CU("event", cuEventDestroy, stop);
    KILN_CU("stream", cuStreamDestroy, stream);
    return allFailures ? 1 : 0;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "kiln-ep-moe-check: error: %s\n", e.what());
    return 1;
  }
}
