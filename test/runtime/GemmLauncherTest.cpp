//===- GemmLauncherTest.cpp - FP8 GEMM launcher and manifests -------------===//
//
// Manifest parsing, operand checks and error messages need no GPU. The rest
// launches the reference kernel (embedded sm_90a cubin) through the launcher
// on one small ragged shape against a CPU FP64 reference, and skips with "no
// CUDA device" where there is none (CI).
//
//===----------------------------------------------------------------------===//

#include "gemm_reference.h"

#include "kiln/cuda/driver.h"
#include "kiln/cuda/gemm_launcher.h"
#include "kiln/cuda/swiglu_weights.h"
#include "kiln/fp8.h"

#include "HopperTest.h"
#include "TestSupport.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

namespace {

using kiln::testing::errorOf;
using kiln::testing::expectMentions;
using namespace kiln::cuda;
namespace reference = kiln::gemm_reference;

const char *const kManifest = R"({
  "kernel": "kiln_gemm_test", "block_m": 128, "block_n": 128,
  "stages": 4, "consumer_warpgroups": 2, "smem_bytes": 132096
})";

TEST(GemmManifest, ParsesFields) {
  GemmKernelConfig config = parseGemmManifest(kManifest, "test.json");
  EXPECT_EQ(config.kernelName, "kiln_gemm_test");
  EXPECT_EQ(config.blockM, 128);
  EXPECT_EQ(config.blockN, 128);
  EXPECT_EQ(config.stages, 4);
  EXPECT_EQ(config.consumerWarpgroups, 2);
  EXPECT_EQ(config.threadsPerBlock(), 384);
  EXPECT_EQ(config.launchSharedMemoryBytes(), 132096);
  EXPECT_FALSE(config.operandPointers);
  // 4 stages of (128 + 128) rows of 128 bytes, plus 8 mbarriers.
  EXPECT_EQ(config.abiSharedMemoryBytes(), 4 * 256 * 128 + 64);
}

TEST(GemmManifest, ReadsWhatTheCompilerWrites) {
  // compiler/tools/kiln-compile-gemm.py's output, informational keys and all.
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m128n128s6c2", "block_m": 128,
          "block_n": 128, "stages": 6, "consumer_warpgroups": 2,
          "threads": 384, "smem_bytes": 196704, "registers": 168,
          "spill_bytes": 0})",
      "kiln_gemm_fp8_m128n128s6c2.json");
  EXPECT_EQ(config.kernelName, "kiln_gemm_fp8_m128n128s6c2");
  EXPECT_EQ(config.launchSharedMemoryBytes(), 196704);
  EXPECT_EQ(config.abiSharedMemoryBytes(), 196704);
}

TEST(GemmManifest, SharedMemoryDefaultsToTheAbiMinimum) {
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "k", "block_m": 64, "block_n": 256, "stages": 3,
          "consumer_warpgroups": 1, "compiler": "ignored"})",
      "test.json");
  EXPECT_EQ(config.sharedMemoryBytes, 0);
  EXPECT_EQ(config.launchSharedMemoryBytes(), 3 * 320 * 128 + 48);
}

TEST(GemmManifest, RoundTrips) {
  GemmKernelConfig config = parseGemmManifest(kManifest, "test.json");
  GemmKernelConfig again =
      parseGemmManifest(toManifestJson(config), "round trip");
  EXPECT_EQ(again.kernelName, config.kernelName);
  EXPECT_EQ(again.blockM, config.blockM);
  EXPECT_EQ(again.blockN, config.blockN);
  EXPECT_EQ(again.stages, config.stages);
  EXPECT_EQ(again.consumerWarpgroups, config.consumerWarpgroups);
  EXPECT_EQ(again.sharedMemoryBytes, config.sharedMemoryBytes);
}

TEST(GemmManifest, ReferenceManifestMatchesTheKernel) {
  GemmKernelConfig config = loadGemmManifest(
      std::string(KILN_SOURCE_DIR) + "/runtime/tools/gemm_reference.json");
  GemmKernelConfig expected = reference::kernelConfig();
  EXPECT_EQ(config.kernelName, expected.kernelName);
  EXPECT_EQ(config.blockM, expected.blockM);
  EXPECT_EQ(config.blockN, expected.blockN);
  EXPECT_EQ(config.stages, expected.stages);
  EXPECT_EQ(config.consumerWarpgroups, expected.consumerWarpgroups);
  EXPECT_EQ(config.sharedMemoryBytes, expected.sharedMemoryBytes);
  EXPECT_TRUE(config.operandPointers);
}

TEST(GemmManifest, ReportsWhatIsWrong) {
  struct Case {
    const char *json;
    std::vector<std::string> mentions;
  };
  const Case cases[] = {
      {"{", {"bad.json", "not valid JSON"}},
      {"[1]", {"bad.json", "expected a JSON object"}},
      {R"({"block_m": 64, "block_n": 128, "stages": 1,
           "consumer_warpgroups": 1})",
       {"bad.json", "\"kernel\""}},
      {R"({"kernel": "k", "block_n": 128, "stages": 1,
           "consumer_warpgroups": 1})",
       {"bad.json", "\"block_m\"", "missing"}},
      {R"({"kernel": "k", "block_m": "64", "block_n": 128, "stages": 1,
           "consumer_warpgroups": 1})",
       {"\"block_m\"", "integer"}},
      {R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 1,
           "consumer_warpgroups": 1})",
       {"block_m must be 64 per consumer warpgroup (64)", "128"}},
      {R"({"kernel": "k", "block_m": 64, "block_n": 264, "stages": 1,
           "consumer_warpgroups": 1})",
       {"block_n", "264"}},
      {R"({"kernel": "k", "block_m": 64, "block_n": 128, "stages": 0,
           "consumer_warpgroups": 1})",
       {"stages", "0"}},
      {R"({"kernel": "k", "block_m": 64, "block_n": 128, "stages": 4,
           "consumer_warpgroups": 1, "smem_bytes": 4096})",
       {"smem_bytes 4096", "98368"}},
      {R"({"abi_version": 2, "kernel": "k", "block_m": 64, "block_n": 128,
           "stages": 1, "consumer_warpgroups": 1})",
       {"abi_version 2", "version 1"}},
      {R"({"kernel": "k", "block_m": 64, "block_n": 128, "stages": 1,
           "consumer_warpgroups": 1, "operand_pointers": 1})",
       {"operand_pointers"}},
      {R"({"kernel": "k", "block_m": 64, "block_n": 128, "stages": 1,
           "consumer_warpgroups": 1, "threads": 384})",
       {"\"threads\" is 384", "means 256"}},
      {R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 6,
           "consumer_warpgroups": 2, "cluster_m": 3})",
       {"cluster_m must be 1 or 2", "3"}},
      {R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 6,
           "consumer_warpgroups": 2, "split_k": 2, "cluster_m": 2})",
       {"cluster_m = 2 needs split_k = 1"}},
  };
  for (const Case &c : cases)
    expectMentions(errorOf([&] { parseGemmManifest(c.json, "bad.json"); }),
                   c.mentions);
  expectMentions(errorOf([] { loadGemmManifest("/nonexistent/k.json"); }),
                 {"/nonexistent/k.json", "cannot open"});
}

TEST(GemmOperandChecks, NameTheKernelShapeAndRule) {
  GemmKernelConfig config = parseGemmManifest(kManifest, "test.json");
  GemmOperands good{0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 64, 2112, 7168};
  checkGemmOperands(config, good);

  GemmOperands badK = good;
  badK.k = 100;
  expectMentions(errorOf([&] { checkGemmOperands(config, badK); }),
                 {"kiln_gemm_test", "M=64 N=2112 K=100", "multiple of 16"});
  GemmOperands noRows = good;
  noRows.m = 0;
  expectMentions(errorOf([&] { checkGemmOperands(config, noRows); }),
                 {"M and N must be at least 1"});
  GemmOperands unalignedA = good;
  unalignedA.a += 8;
  expectMentions(errorOf([&] { checkGemmOperands(config, unalignedA); }),
                 {"16-byte aligned", "TMA"});
  GemmOperands nullOut = good;
  nullOut.out = 0;
  expectMentions(errorOf([&] { checkGemmOperands(config, nullOut); }),
                 {"out is a null pointer"});
}

TEST(GemmOperandChecks, GridIsPersistent) {
  GemmKernelConfig config = parseGemmManifest(kManifest, "test.json");
  EXPECT_EQ(gemmTileCount(config, 4096, 7168), 32 * 56);
  EXPECT_EQ(gemmGridSize(config, 4096, 7168, 132), 132u);
  // Partial tiles count: 1 row, 129 columns is 1 x 2 tiles.
  EXPECT_EQ(gemmTileCount(config, 1, 129), 2);
  EXPECT_EQ(gemmGridSize(config, 1, 129, 132), 2u);
}

TEST(GemmOperandChecks, ClusterGridIsWholeClusters) {
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 6,
          "consumer_warpgroups": 2, "cluster_m": 2})",
      "cluster.json");
  EXPECT_EQ(config.clusterM, 2);
  EXPECT_NE(toManifestJson(config).find("\"cluster_m\": 2"), std::string::npos);
  // 32 x 56 tiles are 16 x 56 units of two: 66 clusters of 2 blocks.
  EXPECT_EQ(gemmGridSize(config, 4096, 7168, 132), 132u);
  // 3 tile rows round up to 2 units per column; 2 columns: 4 clusters.
  EXPECT_EQ(gemmGridSize(config, 300, 256, 132), 8u);
  // An odd SM count leaves one SM out rather than splitting a cluster.
  EXPECT_EQ(gemmGridSize(config, 4096, 7168, 131), 130u);
}

TEST(GemmOperandChecks, SplitTailGridAndWorkspace) {
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m128n128s4c2k8t", "block_m": 128,
          "block_n": 128, "stages": 4, "consumer_warpgroups": 2,
          "split_k": 8, "split": "tail"})",
      "tail.json");
  EXPECT_TRUE(config.splitTail);
  EXPECT_NE(toManifestJson(config).find("\"split\": \"tail\""),
            std::string::npos);
  size_t record = 256 + 8 * 128 * 128 * 4;
  // 4096 x 2112: 544 tiles, whole waves on all 132 SMs; the tail (16 tiles)
  // and any smaller M's fit in min(tiles, grid) records.
  EXPECT_EQ(gemmGridSize(config, 4096, 2112, 132), 132u);
  EXPECT_EQ(gemmWorkspaceBytes(config, 4096, 2112, 132), 132 * record);
  // Fewer tiles than SMs: every tile split, up to a unit per SM.
  EXPECT_EQ(gemmGridSize(config, 300, 200, 132), 48u);
  EXPECT_EQ(gemmWorkspaceBytes(config, 300, 200, 132), 6 * record);
  // Without the SM count: at most kMaxSplitTailRecords records.
  EXPECT_EQ(gemmWorkspaceBytes(config, 4096, 2112),
            size_t(kMaxSplitTailRecords) * record);
  // Only plain split-K kernels without the TMA store.
  for (const char *bad :
       {R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 4,
            "consumer_warpgroups": 2, "split": "tail"})",
        R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 4,
            "consumer_warpgroups": 2, "split_k": 4, "split": "tail",
            "store": "tma"})"})
    expectMentions(errorOf([&] { parseGemmManifest(bad, "bad.json"); }),
                   {"bad.json", "split tail", "split_k > 1"});
  expectMentions(errorOf([] {
                   parseGemmManifest(
                       R"({"kernel": "k", "block_m": 128, "block_n": 128,
                           "stages": 4, "consumer_warpgroups": 2,
                           "split_k": 4, "split": "head"})",
                       "bad.json");
                 }),
                 {"bad.json", "\"split\"", "tail", "head"});
}

TEST(TmaStoreGemm, ManifestReadsTheStoreAndOperandsNeedAlignedRows) {
  // kiln-compile-gemm.py's manifest of a TMA-store kernel.
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m128n192s4c2_tma", "block_m": 128,
          "block_n": 192, "stages": 4, "consumer_warpgroups": 2,
          "split_k": 1, "threads": 384, "smem_bytes": 214080,
          "store": "tma"})",
      "tma.json");
  EXPECT_TRUE(config.tmaStore);
  EXPECT_NE(toManifestJson(config).find("\"store\": \"tma\""),
            std::string::npos);
  GemmKernelConfig again = parseGemmManifest(toManifestJson(config), "again");
  EXPECT_TRUE(again.tmaStore);

  GemmOperands good{0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 300, 200, 1024};
  checkGemmOperands(config, good);
  GemmOperands ragged = good;
  ragged.n = 129;
  expectMentions(errorOf([&] { checkGemmOperands(config, ragged); }),
                 {"kiln_gemm_fp8_m128n192s4c2_tma", "N=129",
                  "N a multiple of 8", "without store = tma"});
  GemmOperands unaligned = good;
  unaligned.out += 8;
  expectMentions(errorOf([&] { checkGemmOperands(config, unaligned); }),
                 {"out 16-byte aligned"});
  // The same operands are fine for a kernel with plain stores.
  config.tmaStore = false;
  checkGemmOperands(config, ragged);
  checkGemmOperands(config, unaligned);
}

TEST(TmaStoreGemm, OnlyUnsplitKernelsStoreWithTma) {
  const std::pair<const char *, const char *> cases[] = {
      {R"({"kernel": "k", "block_m": 128, "block_n": 64, "stages": 4,
           "consumer_warpgroups": 2, "store": "tma", "grouped": "masked"})",
       "store tma in a grouped kernel needs block_n >= 128"},
      {R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 4,
           "consumer_warpgroups": 2, "store": "tma", "grouped": "contiguous",
           "epilogue": "swiglu"})",
       "no epilogue"},
      {R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 4,
           "consumer_warpgroups": 2, "store": "tma", "split_k": 2})",
       "split_k 1"},
      {R"({"kernel": "k", "block_m": 64, "block_n": 32, "stages": 4,
           "consumer_warpgroups": 1, "store": "tma"})",
       "multiple of 64"},
      {R"({"kernel": "k", "block_m": 64, "block_n": 64, "stages": 4,
           "consumer_warpgroups": 1, "store": "stmatrix"})",
       "\"store\" must be \"tma\""},
  };
  for (const auto &[json, rule] : cases)
    expectMentions(errorOf([&] { parseGemmManifest(json, "bad.json"); }),
                   {"bad.json", rule});
  // A grouped 128x128 kernel may (gemm-abi.md "TMA store").
  GemmKernelConfig grouped = parseGemmManifest(
      R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 4,
          "consumer_warpgroups": 2, "store": "tma", "grouped": "contiguous"})",
      "grouped.json");
  EXPECT_TRUE(grouped.tmaStore);
  EXPECT_EQ(grouped.grouping, GemmGrouping::Contiguous);
  // So may a grouped 128x192 one (gemm-kernels.md "Session 11").
  GemmKernelConfig wide = parseGemmManifest(
      R"({"kernel": "k", "block_m": 128, "block_n": 192, "stages": 4,
          "consumer_warpgroups": 2, "store": "tma", "grouped": "masked"})",
      "wide.json");
  EXPECT_TRUE(wide.tmaStore);
  EXPECT_EQ(wide.blockN, 192);
  EXPECT_EQ(wide.grouping, GemmGrouping::Masked);
}

TEST(StagedScalesGemm, ManifestReadsScaleAAndOnlyUnsplitKernelsHaveIt) {
  // kiln-compile-gemm.py's manifest of a staged-scale kernel.
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m128n192s4c2_tma", "block_m": 128,
          "block_n": 192, "stages": 4, "consumer_warpgroups": 2,
          "split_k": 1, "threads": 384, "smem_bytes": 218304,
          "store": "tma", "scale_a": "tma"})",
      "staged.json");
  EXPECT_TRUE(config.stagedScales);
  EXPECT_TRUE(config.tmaStore);
  EXPECT_NE(toManifestJson(config).find("\"scale_a\": \"tma\""),
            std::string::npos);
  EXPECT_TRUE(parseGemmManifest(toManifestJson(config), "again").stagedScales);
  EXPECT_FALSE(parseGemmManifest(R"({"kernel": "k", "block_m": 64,
                                     "block_n": 64, "stages": 4,
                                     "consumer_warpgroups": 1})",
                                 "plain.json")
                   .stagedScales);
  const std::pair<const char *, const char *> cases[] = {
      {R"({"kernel": "k", "block_m": 64, "block_n": 64, "stages": 4,
           "consumer_warpgroups": 1, "scale_a": "ldg"})",
       "\"scale_a\" must be \"tma\""},
      {R"({"kernel": "k", "block_m": 64, "block_n": 64, "stages": 4,
           "consumer_warpgroups": 1, "scale_a": "tma", "split_k": 2})",
       "scale_a tma needs split_k 1"},
      {R"({"kernel": "k", "block_m": 64, "block_n": 64, "stages": 4,
           "consumer_warpgroups": 1, "scale_a": "tma",
           "operand_pointers": true})",
       "no operand_pointers"},
  };
  for (const auto &[json, rule] : cases)
    expectMentions(errorOf([&] { parseGemmManifest(json, "bad.json"); }),
                   {"bad.json", rule});
}

TEST(DependentLaunch, ManifestReadsGriddepcontrolWait) {
  // kiln-compile-gemm.py writes "griddepcontrol": "wait" for every kernel;
  // the nvcc-built reference kernel's manifest has none and is launched
  // without programmatic serialization.
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m64n64s8c1", "block_m": 64, "block_n": 64,
          "stages": 8, "consumer_warpgroups": 1, "griddepcontrol": "wait"})",
      "waits.json");
  EXPECT_TRUE(config.gridDependencyWait);
  EXPECT_NE(toManifestJson(config).find("\"griddepcontrol\": \"wait\""),
            std::string::npos);
  EXPECT_TRUE(
      parseGemmManifest(toManifestJson(config), "again").gridDependencyWait);
  GemmKernelConfig plain = parseGemmManifest(
      R"({"kernel": "k", "block_m": 64, "block_n": 64, "stages": 4,
          "consumer_warpgroups": 1})",
      "plain.json");
  EXPECT_FALSE(plain.gridDependencyWait);
  EXPECT_EQ(toManifestJson(plain).find("griddepcontrol"), std::string::npos);
  expectMentions(errorOf([] {
                   parseGemmManifest(
                       R"({"kernel": "k", "block_m": 64, "block_n": 64,
                           "stages": 4, "consumer_warpgroups": 1,
                           "griddepcontrol": true})",
                       "bad.json");
                 }),
                 {"bad.json", "\"griddepcontrol\" must be \"wait\""});
}

TEST(ClampedABox, ManifestReadsItAndTheBoxFollowsM) {
  // kiln-compile-gemm.py writes "a_box": "min_m" for every plain kernel: its
  // stages count min(BLOCK_M, M) rows of A, so the launcher's box must be
  // that many rows (a BLOCK_M box would leave the barrier waiting on bytes
  // that never come, a smaller one on a kernel without it the reverse).
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m128n64s8c2_tma", "block_m": 128,
          "block_n": 64, "stages": 8, "consumer_warpgroups": 2,
          "a_box": "min_m"})",
      "clamped.json");
  EXPECT_TRUE(config.clampedABox);
  EXPECT_TRUE(parseGemmManifest(toManifestJson(config), "again").clampedABox);
  EXPECT_EQ(gemmBoxRowsA(config, 1), 1);
  EXPECT_EQ(gemmBoxRowsA(config, 100), 100);
  EXPECT_EQ(gemmBoxRowsA(config, 128), 128);
  EXPECT_EQ(gemmBoxRowsA(config, 300), 128);
  GemmKernelConfig plain = parseGemmManifest(
      R"({"kernel": "k", "block_m": 128, "block_n": 64, "stages": 4,
          "consumer_warpgroups": 2})",
      "plain.json");
  EXPECT_FALSE(plain.clampedABox);
  EXPECT_EQ(toManifestJson(plain).find("a_box"), std::string::npos);
  EXPECT_EQ(gemmBoxRowsA(plain, 1), 128);
  expectMentions(errorOf([] {
                   parseGemmManifest(
                       R"({"kernel": "k", "block_m": 64, "block_n": 64,
                           "stages": 4, "consumer_warpgroups": 1,
                           "a_box": "block_m"})",
                       "bad.json");
                 }),
                 {"bad.json", "\"a_box\" must be \"min_m\""});
  // Grouped kernels too: M is R (contiguous) or a slab's rows (masked).
  GemmKernelConfig masked = parseGemmManifest(
      R"({"kernel": "k", "block_m": 64, "block_n": 64, "stages": 4,
          "consumer_warpgroups": 1, "grouped": "masked", "a_box": "min_m"})",
      "grouped.json");
  EXPECT_TRUE(masked.clampedABox);
  EXPECT_EQ(gemmBoxRowsA(masked, 8), 8);
}

TEST(GroupedGemm, ManifestReadsTheLayout) {
  // kiln-compile-gemm.py's manifest of a grouped kernel.
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m64n64s8c1k2_contiguous", "block_m": 64,
          "block_n": 64, "stages": 8, "consumer_warpgroups": 1,
          "split_k": 2, "threads": 256, "smem_bytes": 144524,
          "grouped": "contiguous"})",
      "grouped.json");
  EXPECT_EQ(config.grouping, GemmGrouping::Contiguous);
  EXPECT_EQ(config.splitK, 2);
  // The ring, the mbarriers and three group tables of 1025 int32.
  EXPECT_EQ(config.abiSharedMemoryBytes(), 8 * 128 * 128 + 128 + 12300);
  GemmKernelConfig again =
      parseGemmManifest(toManifestJson(config), "round trip");
  EXPECT_EQ(again.grouping, GemmGrouping::Contiguous);
  config.grouping = GemmGrouping::Masked;
  EXPECT_EQ(parseGemmManifest(toManifestJson(config), "round trip").grouping,
            GemmGrouping::Masked);
  EXPECT_EQ(parseGemmManifest(kManifest, "plain.json").grouping,
            GemmGrouping::None);
  expectMentions(errorOf([] {
                   parseGemmManifest(
                       R"({"kernel": "k", "block_m": 64, "block_n": 64,
                           "stages": 2, "consumer_warpgroups": 1,
                           "grouped": "ragged"})",
                       "bad.json");
                 }),
                 {"bad.json", "\"grouped\"", "contiguous", "ragged"});
}

TEST(GroupedGemm, GridAndWorkspaceHoldAnyGroupSizes) {
  GemmKernelConfig config = parseGemmManifest(kManifest, "test.json");
  config.grouping = GemmGrouping::Contiguous;
  // 300 rows in 8 groups: at most 300/128 = 2 full tiles' worth plus one
  // partial tile per group with rows, over 2112/128 = 17 column tiles
  // (e.g. 7 groups of 1 row and one of 293: 7 + 3 = 10 <= 2 + 8).
  EXPECT_EQ(groupedGemmTileBound(config, 300, 8, 2112), (2 + 8) * 17);
  // More groups than rows: at most one per row.
  EXPECT_EQ(groupedGemmTileBound(config, 5, 256, 2112), (0 + 5) * 17);
  EXPECT_EQ(groupedGemmGridSize(config, 300, 8, 2112, 132), 132u);
  EXPECT_EQ(groupedGemmGridSize(config, 1, 8, 128, 132), 1u);
  EXPECT_EQ(groupedGemmWorkspaceBytes(config, 300, 8, 2112), 0u);
  config.splitK = 2;
  EXPECT_EQ(groupedGemmWorkspaceBytes(config, 1, 8, 128),
            256 + 2 * 128 * 128 * 4u);
  config.grouping = GemmGrouping::Masked;
  // Masked: G slabs of maxRows.
  EXPECT_EQ(groupedGemmTileBound(config, 130, 4, 2112), 4 * 2 * 17);
  EXPECT_EQ(groupedGemmGridSize(config, 130, 4, 2112, 132), 132u);
}

TEST(SwigluGemm, ManifestReadsTheEpilogue) {
  // kiln-compile-gemm.py's manifest of a SwiGLU kernel.
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu",
          "block_m": 128, "block_n": 128, "stages": 4,
          "consumer_warpgroups": 2, "split_k": 1, "threads": 384,
          "smem_bytes": 162892, "grouped": "contiguous",
          "epilogue": "swiglu"})",
      "swiglu.json");
  EXPECT_EQ(config.epilogue, GemmEpilogue::Swiglu);
  EXPECT_EQ(parseGemmManifest(toManifestJson(config), "round trip").epilogue,
            GemmEpilogue::Swiglu);
  EXPECT_EQ(parseGemmManifest(kManifest, "plain.json").epilogue,
            GemmEpilogue::Store);
  expectMentions(errorOf([] {
                   parseGemmManifest(
                       R"({"kernel": "k", "block_m": 128, "block_n": 128,
                           "stages": 4, "consumer_warpgroups": 2,
                           "grouped": "masked", "epilogue": "gelu"})",
                       "bad.json");
                 }),
                 {"bad.json", "\"epilogue\"", "swiglu", "gelu"});
  // The tile's two halves are gate and up: only 128-wide grouped tiles
  // without split-K.
  for (const char *bad :
       {R"({"kernel": "k", "block_m": 128, "block_n": 128, "stages": 4,
            "consumer_warpgroups": 2, "epilogue": "swiglu"})",
        R"({"kernel": "k", "block_m": 128, "block_n": 64, "stages": 4,
            "consumer_warpgroups": 2, "grouped": "masked",
            "epilogue": "swiglu"})",
        R"({"kernel": "k", "block_m": 64, "block_n": 128, "stages": 4,
            "consumer_warpgroups": 1, "grouped": "masked", "split_k": 2,
            "epilogue": "swiglu"})"})
    expectMentions(errorOf([&] { parseGemmManifest(bad, "bad.json"); }),
                   {"bad.json", "swiglu", "block_n 128", "split_k 1"});
}

TEST(SwigluGemm, ManifestReadsTheQuantizedEpilogue) {
  // kiln-compile-gemm.py's manifest of a quantized SwiGLU kernel: the
  // epilogue round-trips; it has SwiGLU's constraints.
  GemmKernelConfig config = parseGemmManifest(
      R"({"kernel": "kiln_gemm_fp8_m128n128s4c2_contiguous_swiglu_quantize",
          "block_m": 128, "block_n": 128, "stages": 4,
          "consumer_warpgroups": 2, "split_k": 1, "threads": 384,
          "smem_bytes": 162892, "grouped": "contiguous",
          "epilogue": "swiglu_quantize"})",
      "swiglu_quantize.json");
  EXPECT_EQ(config.epilogue, GemmEpilogue::SwigluQuantize);
  EXPECT_EQ(parseGemmManifest(toManifestJson(config), "round trip").epilogue,
            GemmEpilogue::SwigluQuantize);
  expectMentions(errorOf([] {
                   parseGemmManifest(
                       R"({"kernel": "k", "block_m": 128, "block_n": 128,
                           "stages": 4, "consumer_warpgroups": 2,
                           "epilogue": "swiglu_quantize"})",
                       "bad.json");
                 }),
                 {"bad.json", "swiglu_quantize", "grouped", "block_n 128"});
}

TEST(SwigluWeights, InterleavesGateAndUpInBlocksOf64Rows) {
  // Two experts, I = 128, rows of 3 bytes: byte 0 names the expert, bytes
  // 1-2 the checkpoint row (gate rows 0-127, up rows 128-255).
  const int64_t experts = 2, intermediate = 128;
  const size_t rowBytes = 3, rows = 2 * intermediate;
  std::vector<uint8_t> src(experts * rows * rowBytes), dst(src.size(), 0xEE);
  for (int64_t e = 0; e < experts; ++e)
    for (size_t r = 0; r < rows; ++r) {
      uint8_t *row = &src[(e * rows + r) * rowBytes];
      row[0] = uint8_t(e);
      row[1] = uint8_t(r & 0xFF);
      row[2] = uint8_t(r >> 8);
    }
  interleaveGateUp(src.data(), dst.data(), experts, intermediate, rowBytes);
  for (int64_t e = 0; e < experts; ++e)
    for (size_t r = 0; r < rows; ++r) {
      // Tile t = r / 128: gate rows 64t.., then up rows I + 64t...
      size_t tile = r / 128, inTile = r % 128;
      size_t expected = inTile < 64 ? 64 * tile + inTile
                                    : intermediate + 64 * tile + inTile - 64;
      const uint8_t *row = &dst[(e * rows + r) * rowBytes];
      ASSERT_EQ(row[0], e) << "row " << r;
      ASSERT_EQ(row[1] | row[2] << 8, int(expected)) << "row " << r;
      EXPECT_EQ(swigluInterleavedRow(int64_t(expected), intermediate),
                int64_t(r));
    }
  expectMentions(errorOf([&] {
                   interleaveGateUp(src.data(), dst.data(), 1, 96, rowBytes);
                 }),
                 {"intermediate size 96", "multiple of 64"});
}

TEST(CudaErrors, NameTheCallAndContext) {
  try {
    check(CUDA_ERROR_INVALID_VALUE, "cuTensorMapEncodeTiled",
          "kernel kiln_gemm_test (M=1 N=2 K=128), tensor map A");
    FAIL() << "expected a CudaError";
  } catch (const CudaError &error) {
    EXPECT_EQ(error.result(), CUDA_ERROR_INVALID_VALUE);
    // The error's name needs the driver; its number is always there.
    expectMentions(error.what(),
                   {"cuTensorMapEncodeTiled failed for kernel kiln_gemm_test",
                    "M=1 N=2 K=128", "error 1"});
  }
  check(CUDA_SUCCESS, "cuInit", "nothing");
}

/// Tests that need a Hopper GPU: they hold its primary context.
class GemmLauncherOnGpu : public kiln::testing::HopperTest {
protected:
  GemmKernel loadReference(GemmKernelConfig config) {
    std::string_view image = reference::cubin();
    return GemmKernel(image.data(), image.size(), std::move(config));
  }
};

TEST_F(GemmLauncherOnGpu, ReferenceKernelMatchesTheCpu) {
  // Two M tiles (the second partial), two N tiles (partial), two K blocks,
  // and an N whose scale blocks are partial too.
  const int m = 70, n = 200, k = 256, blocksK = k / 128;
  const int scaleRowsB = (n + 127) / 128;
  std::mt19937 random(7);
  std::normal_distribution<float> normal(0.0f, 112.0f);
  std::uniform_real_distribution<float> factor(0.5f, 2.0f);
  std::vector<uint8_t> a(size_t(m) * k), b(size_t(n) * k);
  for (uint8_t &value : a)
    value = kiln::encodeE4M3(normal(random));
  for (uint8_t &value : b)
    value = kiln::encodeE4M3(normal(random));
  std::vector<float> scaleA(size_t(blocksK) * m), scaleB(scaleRowsB * blocksK);
  for (float &scale : scaleA)
    scale = factor(random) / 128;
  for (float &scale : scaleB)
    scale = factor(random) / 1024;

  // Rows past M: a guard that must keep the poison.
  const size_t outElements = size_t(m) * n, guardElements = 64 * size_t(n);
  DeviceBuffer deviceA(a.size(), "A"), deviceB(b.size(), "B");
  DeviceBuffer deviceScaleA(scaleA.size() * 4, "scaleA");
  DeviceBuffer deviceScaleB(scaleB.size() * 4, "scaleB");
  DeviceBuffer deviceOut((outElements + guardElements) * 2, "out");
  KILN_CU("test", cuMemcpyHtoD, deviceA.get(), a.data(), a.size());
  KILN_CU("test", cuMemcpyHtoD, deviceB.get(), b.data(), b.size());
  KILN_CU("test", cuMemcpyHtoD, deviceScaleA.get(), scaleA.data(),
          scaleA.size() * 4);
  KILN_CU("test", cuMemcpyHtoD, deviceScaleB.get(), scaleB.data(),
          scaleB.size() * 4);
  KILN_CU("test", cuMemsetD16Async, deviceOut.get(), reference::kPoisonBF16,
          outElements + guardElements, nullptr);

  GemmKernel kernel = loadReference(reference::kernelConfig());
  GemmOperands operands{deviceA.get(),
                        deviceB.get(),
                        deviceScaleA.get(),
                        deviceScaleB.get(),
                        deviceOut.get(),
                        m,
                        n,
                        k};
  GemmLaunch launch = kernel.prepare(operands);
  EXPECT_EQ(launch.gridSize,
            std::min<unsigned>(2 * 2, kernel.multiprocessorCount()));
  kernel.launch(launch, nullptr);
  KILN_CU("test", cuCtxSynchronize);
  std::vector<uint16_t> out(outElements + guardElements);
  KILN_CU("test", cuMemcpyDtoH, out.data(), deviceOut.get(), out.size() * 2);

  double squaredError = 0, squaredReference = 0;
  for (int row = 0; row < m; ++row)
    for (int col = 0; col < n; ++col) {
      double expected = 0;
      for (int kk = 0; kk < k; ++kk)
        expected += double(kiln::decodeE4M3(a[size_t(row) * k + kk])) *
                    scaleA[size_t(kk / 128) * m + row] *
                    double(kiln::decodeE4M3(b[size_t(col) * k + kk])) *
                    scaleB[size_t(col / 128) * blocksK + kk / 128];
      uint16_t bits = out[size_t(row) * n + col];
      ASSERT_NE(bits, reference::kPoisonBF16)
          << "unwritten at row " << row << ", col " << col;
      double value = kiln::decodeBF16(bits);
      ASSERT_TRUE(std::isfinite(value)) << "row " << row << ", col " << col;
      squaredError += (value - expected) * (value - expected);
      squaredReference += expected * expected;
    }
  EXPECT_LE(std::sqrt(squaredError / squaredReference), 5e-3);
  for (size_t i = outElements; i < out.size(); ++i)
    ASSERT_EQ(out[i], reference::kPoisonBF16) << "written past out at " << i;
}

TEST_F(GemmLauncherOnGpu, InterleavesSeparateGateAndUpStacks) {
  // What the CUDA backend does at load for a fused SwiGLU grouped_gemm:
  // the stacked gate and up weights ([E·I, K] each) and their scales
  // ([E·I/128][K/128] each) into the kernel's layout, compared with the
  // host interleave of each expert's [gate; up].
  const int64_t experts = 3, intermediate = 256, k = 384;
  const size_t weightBytes = experts * intermediate * k;
  const size_t expertScaleBytes = intermediate / 128 * (k / 128) * 4;
  std::mt19937 random(std::random_device{}());
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<uint8_t> gate(weightBytes), up(weightBytes);
  std::vector<uint8_t> gateScales(experts * expertScaleBytes),
      upScales(gateScales.size());
  for (auto *v : {&gate, &up, &gateScales, &upScales})
    for (uint8_t &b : *v)
      b = uint8_t(byte(random));
  std::vector<uint8_t> stacked, stackedScales;
  for (int64_t e = 0; e < experts; ++e) {
    size_t rows = intermediate * k, scales = expertScaleBytes;
    stacked.insert(stacked.end(), gate.begin() + e * rows,
                   gate.begin() + (e + 1) * rows);
    stacked.insert(stacked.end(), up.begin() + e * rows,
                   up.begin() + (e + 1) * rows);
    stackedScales.insert(stackedScales.end(), gateScales.begin() + e * scales,
                         gateScales.begin() + (e + 1) * scales);
    stackedScales.insert(stackedScales.end(), upScales.begin() + e * scales,
                         upScales.begin() + (e + 1) * scales);
  }
  std::vector<uint8_t> expected(stacked.size());
  interleaveGateUp(stacked.data(), expected.data(), experts, intermediate, k);

  auto upload = [](const std::vector<uint8_t> &v) {
    DeviceBuffer buffer(v.size(), "test");
    KILN_CU("test", cuMemcpyHtoD, buffer.get(), v.data(), v.size());
    return buffer;
  };
  DeviceBuffer dGate = upload(gate), dUp = upload(up);
  DeviceBuffer dGateScales = upload(gateScales), dUpScales = upload(upScales);
  DeviceBuffer out(stacked.size(), "out"), outScales(stackedScales.size(), "s");
  KILN_CU("test", cuMemsetD8Async, out.get(), 0xEE, out.size(), nullptr);
  KILN_CU("test", cuMemsetD8Async, outScales.get(), 0xEE, outScales.size(),
          nullptr);
  interleaveBlocksAsync(dGate.get(), dUp.get(), out.get(),
                        experts * intermediate / kSwigluInterleaveRows,
                        kSwigluInterleaveRows * k, nullptr);
  interleaveBlocksAsync(dGateScales.get(), dUpScales.get(), outScales.get(),
                        experts, expertScaleBytes, nullptr);
  KILN_CU("test", cuCtxSynchronize);
  std::vector<uint8_t> got(out.size()), gotScales(outScales.size());
  KILN_CU("test", cuMemcpyDtoH, got.data(), out.get(), got.size());
  KILN_CU("test", cuMemcpyDtoH, gotScales.data(), outScales.get(),
          gotScales.size());
  EXPECT_TRUE(got == expected);
  EXPECT_TRUE(gotScales == stackedScales);
}

TEST_F(GemmLauncherOnGpu, BadCubinNamesTheCall) {
  const char garbage[] = "not a cubin";
  GemmKernelConfig config = reference::kernelConfig();
  expectMentions(errorOf([&] { GemmKernel(garbage, sizeof(garbage), config); }),
                 {"cuModuleLoadDataEx failed for kernel kiln_gemm_reference",
                  "CUDA_ERROR_"});
}

TEST_F(GemmLauncherOnGpu, MissingKernelNamesTheSymbol) {
  GemmKernelConfig config = reference::kernelConfig();
  config.kernelName = "kiln_gemm_absent";
  expectMentions(errorOf([&] { loadReference(config); }),
                 {"cuModuleGetFunction failed for kernel kiln_gemm_absent",
                  "CUDA_ERROR_NOT_FOUND"});
}

TEST_F(GemmLauncherOnGpu, GroupedKernelsTakeGroupsAndCount) {
  // A grouped configuration expects the group pointer and G after K.
  GemmKernelConfig config = reference::kernelConfig();
  config.operandPointers = false;
  config.grouping = GemmGrouping::Contiguous;
  expectMentions(errorOf([&] { loadReference(config); }),
                 {"kiln_gemm_reference", "(128, 128, 8, 8, 8, 4, 4, 4, 8, 4)",
                  "groups, G (grouped)"});
  // A plain kernel is not launched as a grouped one, nor the reverse.
  GemmKernel plain = loadReference(reference::kernelConfig());
  GroupedGemmOperands grouped;
  grouped.gemm = {0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 64, 128, 128};
  grouped.groups = 0x6000;
  grouped.numGroups = 2;
  expectMentions(errorOf([&] { plain.prepareGrouped(grouped); }),
                 {"not a grouped kernel", "prepare()"});
}

TEST_F(GemmLauncherOnGpu, ParametersAreCheckedAgainstTheAbi) {
  // The reference kernel takes two more parameters than the plain ABI.
  GemmKernelConfig config = reference::kernelConfig();
  config.operandPointers = false;
  expectMentions(errorOf([&] { loadReference(config); }),
                 {"kiln_gemm_reference", "parameter sizes are (128, 128, 8, "
                                         "8, 8, 4, 4, 4, 8, 8)"});
}

TEST_F(GemmLauncherOnGpu, StagedScalesNeedTheTwoScaleMaps) {
  // A staged-scale configuration expects two tensor maps after the rest.
  GemmKernelConfig config = reference::kernelConfig();
  config.operandPointers = false;
  config.stagedScales = true;
  expectMentions(errorOf([&] { loadReference(config); }),
                 {"kiln_gemm_reference",
                  "(128, 128, 8, 8, 8, 4, 4, 4, 128, 128)",
                  "tmScaleA, tmScaleB (scale_a tma)"});
}

TEST_F(GemmLauncherOnGpu, SharedMemoryBeyondTheDeviceIsRefused) {
  GemmKernelConfig config = reference::kernelConfig();
  config.sharedMemoryBytes = 1 << 20;
  expectMentions(
      errorOf([&] { loadReference(config); }),
      {"kiln_gemm_reference", "1048576 bytes of dynamic", "exceed the device"});
}

} // namespace
