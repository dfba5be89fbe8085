//===- ArtifactTest.cpp - the .kiln artifact reader and writer ------------===//
//
// Round trips of a realistic artifact, the container layout of
// compiler/docs/artifact.md, every rejection path of the reader and the
// validator (each message names the file and the problem), truncation at
// every offset and byte corruption (always a kiln::Error, never a crash),
// and the model hash.
//
//===----------------------------------------------------------------------===//

#include "kiln/artifact.h"

#include "kiln/config.h"
#include "kiln/error.h"

#include "TestSupport.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>

namespace {

using kiln::testing::errorOf;
using kiln::testing::expectMentions;
using kiln::testing::ScratchDir;
using Json = nlohmann::json;

kiln::ModelConfig tinyConfig() {
  return kiln::loadConfig(KILN_SOURCE_DIR "/examples/tiny");
}

/// Appends a buffer at the next 256-byte boundary of the plan's arena,
/// sized for the plan's maxima.
void addBuffer(kiln::LaunchPlan &plan, const std::string &name,
               const std::string &dtype, const std::string &rows, int64_t cols,
               int64_t rowCount) {
  int64_t element = dtype == "bf16" ? 2 : dtype == "f8e4m3" ? 1 : 4;
  kiln::PlanBuffer buffer{name,
                          dtype,
                          rows,
                          cols,
                          (plan.arenaBytes + 255) / 256 * 256,
                          static_cast<uint64_t>(rowCount * cols * element)};
  plan.arenaBytes = buffer.offset + buffer.bytes;
  plan.buffers.push_back(buffer);
}

kiln::PlanTensor whole(const std::string &buffer) { return {buffer, 0, 0}; }

/// A plan over the tiny model's shapes: embedding, a norm fused with
/// quantization, an FP8 GEMM, MLA on column slices, a routed MoE step, the
/// final row selection and the head.
kiln::LaunchPlan makePlan(int64_t maxTokens, int64_t maxSequences,
                          const std::string &kernel,
                          const std::string &groupedKernel) {
  kiln::LaunchPlan plan;
  plan.maxTokens = maxTokens;
  plan.maxSequences = maxSequences;
  int64_t T = maxTokens, S = maxSequences, R = maxTokens * 4;
  addBuffer(plan, "tokens", "i32", "T", 1, T);
  addBuffer(plan, "positions", "i32", "T", 1, T);
  addBuffer(plan, "last_rows", "i32", "S", 1, S);
  addBuffer(plan, "hidden", "f32", "T", 256, T);
  addBuffer(plan, "x_q", "f8e4m3", "T", 256, T);
  addBuffer(plan, "x_s", "f32", "T", 2, T);
  addBuffer(plan, "kv_a", "bf16", "T", 176, T);
  addBuffer(plan, "latent", "f32", "T", 160, T);
  addBuffer(plan, "q", "bf16", "T", 192, T);
  addBuffer(plan, "attn", "bf16", "T", 128, T);
  addBuffer(plan, "router_logits", "f32", "T", 16, T);
  addBuffer(plan, "expert_ids", "i32", "T", 4, T);
  addBuffer(plan, "expert_weights", "f32", "T", 4, T);
  addBuffer(plan, "routed_q", "f8e4m3", "R", 256, R);
  addBuffer(plan, "routed_s", "f32", "R", 2, R);
  addBuffer(plan, "offsets", "i32", "E1", 1, 17);
  addBuffer(plan, "rows", "i32", "T", 4, T);
  addBuffer(plan, "gate_up", "bf16", "R", 384, R);
  addBuffer(plan, "final", "f32", "S", 256, S);
  addBuffer(plan, "logits", "f32", "S", 129280, S);

  auto step = [&](const std::string &op, std::vector<kiln::PlanTensor> in,
                  std::vector<kiln::PlanTensor> out,
                  std::vector<std::string> weights = {}) -> kiln::PlanStep & {
    kiln::PlanStep s;
    s.op = op;
    s.inputs = std::move(in);
    s.outputs = std::move(out);
    s.weights = std::move(weights);
    plan.steps.push_back(std::move(s));
    return plan.steps.back();
  };
  step("embed", {whole("tokens")}, {whole("hidden")},
       {"model.embed_tokens.weight"});
  step("rms_norm", {whole("hidden")}, {whole("x_q"), whole("x_s")},
       {"model.layers.0.input_layernorm.weight"})
      .attrs.numbers["eps"] = 1e-6;
  step("gemm", {whole("x_q"), whole("x_s")}, {whole("kv_a")},
       {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight"})
      .kernel = kernel;
  step("rms_norm", {{"kv_a", 0, 160}}, {whole("latent")},
       {"model.layers.0.self_attn.kv_a_layernorm.weight"})
      .attrs.numbers["eps"] = 1e-6;
  kiln::PlanStep &mla =
      step("mla_attention", {whole("q"), whole("latent"), {"kv_a", 160, 16}},
           {whole("attn")}, {"model.layers.0.self_attn.kv_b_proj.weight"});
  mla.attrs.numbers = {{"layer", 0},
                       {"heads", 4},
                       {"nope", 32},
                       {"rope", 16},
                       {"v", 32},
                       {"kv_lora", 160},
                       {"softmax_scale", 0.14433756729740643},
                       {"attention_factor", 1.3688829587}};
  mla.attrs.lists["inv_freq"] = {
      1.0,  0.31622776601683794, 0.1,   0.031622776601683791,
      0.01, 0.0031622776,        0.001, 0.00031622776601683794};
  mla.attrs.strings["rope_layout"] = "interleaved";
  kiln::PlanStep &route =
      step("moe_route", {whole("router_logits")},
           {whole("expert_ids"), whole("expert_weights")},
           {"model.layers.1.mlp.gate.e_score_correction_bias"});
  route.attrs.numbers = {{"top_k", 4},
                         {"n_group", 4},
                         {"topk_group", 2},
                         {"routed_scaling_factor", 2.5},
                         {"norm_topk_prob", 1}};
  route.attrs.strings["scoring_func"] = "sigmoid";
  step("moe_dispatch", {whole("x_q"), whole("x_s"), whole("expert_ids")},
       {whole("routed_q"), whole("routed_s"), whole("offsets"), whole("rows")});
  step("grouped_gemm", {whole("routed_q"), whole("routed_s"), whole("offsets")},
       {whole("gate_up")}, {"model.layers.1.mlp.experts.{e}.gate_proj.weight"})
      .kernel = groupedKernel;
  step("select_rows", {whole("hidden"), whole("last_rows")}, {whole("final")});
  step("matmul", {whole("final")}, {whole("logits")}, {"lm_head.weight"});
  plan.arenaBytes = (plan.arenaBytes + 4095) / 4096 * 4096;
  return plan;
}

/// Bytes with NULs and every byte value, as a real ELF image has.
std::string binaryBlob(size_t size, unsigned seed) {
  std::string bytes = std::string("\x7f"
                                  "ELF\0\0\0",
                                  7);
  for (size_t i = bytes.size(); i < size; ++i)
    bytes.push_back(static_cast<char>((i * 131 + seed * 7) & 0xff));
  return bytes;
}

kiln::Artifact realisticArtifact() {
  kiln::ModelConfig config = tinyConfig();
  kiln::Artifact a;
  a.producer = "kilnc 0.1.0";
  a.source = "config.json";
  a.modelType = "deepseek_v3";
  a.modelHash = kiln::modelHash(config);
  a.hiddenSize = config.hiddenSize;
  a.numHiddenLayers = config.numHiddenLayers;
  a.vocabSize = config.vocabSize;
  a.options.maxBatch = 8;
  a.options.prefillChunk = 64;
  a.options.kvCacheDtype = "fp8";
  a.kernels.push_back({"kiln_gemm_m64n64s8c1", 64, 64, 8, 1, 197632, 1,
                       binaryBlob(3001, 1), ".version 8.8\n.target sm_90a\n",
                       "", 1, "", "", "", "", "wait", "min_m"});
  a.kernels.push_back({"kiln_gemm_m128n128s4c2", 128, 128, 4, 2, 0, 2,
                       binaryBlob(700, 2), "", "", 1, "", "", "", "", "", ""});
  a.kernels.push_back({"kiln_gemm_m64n64s8c1_contiguous", 64, 64, 8, 1, 0, 1,
                       binaryBlob(900, 3), "", "contiguous", 1, "", "", "", "",
                       "wait", ""});
  a.kernels.push_back({"kiln_gemm_m128n128s6c2x2", 128, 128, 6, 2, 0, 1,
                       binaryBlob(800, 4), "", "", 2, "", "", "", "", "", ""});
  a.kernels.push_back({"kiln_gemm_m64n128s8c1_contiguous_swiglu", 64, 128, 8, 1,
                       0, 1, binaryBlob(950, 5), "", "contiguous", 1, "swiglu",
                       "", "", "", "", ""});
  a.kernels.push_back({"kiln_gemm_m128n192s4c2_tma", 128, 192, 4, 2, 0, 1,
                       binaryBlob(990, 6), "", "", 1, "", "tma", "", "tma",
                       "wait", ""});
  a.kernels.push_back({"kiln_gemm_m128n128s4c2k4t", 128, 128, 4, 2, 0, 4,
                       binaryBlob(700, 7), "", "", 1, "", "", "tail", "", "",
                       ""});
  a.weights = {
      {"model.embed_tokens.weight", "bf16", {129280, 256}, "none"},
      {"model.layers.0.input_layernorm.weight", "bf16", {256}, "none"},
      {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
       "f8e4m3",
       {176, 256},
       "none"},
      {"model.layers.0.self_attn.kv_a_layernorm.weight", "bf16", {160}, "f32"},
      {"model.layers.0.self_attn.kv_b_proj.weight",
       "f8e4m3",
       {256, 160},
       "bf16"},
      {"model.layers.1.mlp.gate.e_score_correction_bias", "f32", {16}, "none"},
      {"model.layers.1.mlp.experts.{e}.gate_proj.weight",
       "f8e4m3",
       {192, 256},
       "none"},
      {"lm_head.weight", "bf16", {129280, 256}, "none"},
  };
  a.plans["decode"] =
      makePlan(8, 8, "kiln_gemm_m64n64s8c1", "kiln_gemm_m64n64s8c1_contiguous");
  a.plans["prefill"] = makePlan(64, 4, "kiln_gemm_m128n128s4c2",
                                "kiln_gemm_m64n64s8c1_contiguous");
  return a;
}

/// The smallest valid artifact: one kernel, one two-step plan.
kiln::Artifact smallArtifact() {
  kiln::Artifact a;
  a.producer = "kilnc test";
  a.source = "graph.mlir";
  a.kernels.push_back({"k", 64, 64, 4, 1, 0, 1, std::string("c\0b\0n", 5),
                       "ptx", "", 1, "", "", "", "", "", ""});
  a.weights.push_back({"w", "f8e4m3", {128, 128}, "none"});
  kiln::LaunchPlan plan;
  plan.maxTokens = 2;
  plan.maxSequences = 1;
  plan.arenaBytes = 1024;
  plan.buffers = {{"x_q", "f8e4m3", "T", 128, 0, 256},
                  {"x_s", "f32", "T", 1, 256, 256},
                  {"y", "bf16", "T", 128, 512, 512}};
  plan.steps.resize(1);
  plan.steps[0].op = "gemm";
  plan.steps[0].inputs = {whole("x_q"), whole("x_s")};
  plan.steps[0].outputs = {whole("y")};
  plan.steps[0].weights = {"w"};
  plan.steps[0].kernel = "k";
  a.plans["decode"] = plan;
  return a;
}

void expectSameTensors(const std::vector<kiln::PlanTensor> &a,
                       const std::vector<kiln::PlanTensor> &b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].buffer, b[i].buffer);
    EXPECT_EQ(a[i].col, b[i].col);
    EXPECT_EQ(a[i].cols, b[i].cols);
  }
}

void expectSameArtifact(const kiln::Artifact &a, const kiln::Artifact &b) {
  EXPECT_EQ(a.producer, b.producer);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.targetArch, b.targetArch);
  EXPECT_EQ(a.modelType, b.modelType);
  EXPECT_EQ(a.modelHash, b.modelHash);
  EXPECT_EQ(a.hiddenSize, b.hiddenSize);
  EXPECT_EQ(a.numHiddenLayers, b.numHiddenLayers);
  EXPECT_EQ(a.vocabSize, b.vocabSize);
  EXPECT_EQ(a.options.maxBatch, b.options.maxBatch);
  EXPECT_EQ(a.options.maxSeqLen, b.options.maxSeqLen);
  EXPECT_EQ(a.options.prefillChunk, b.options.prefillChunk);
  EXPECT_EQ(a.options.kvCacheDtype, b.options.kvCacheDtype);
  EXPECT_EQ(a.options.kvPageTokens, b.options.kvPageTokens);
  EXPECT_EQ(a.options.expertParallel, b.options.expertParallel);
  ASSERT_EQ(a.kernels.size(), b.kernels.size());
  for (size_t i = 0; i < a.kernels.size(); ++i) {
    const kiln::ArtifactKernel &x = a.kernels[i], &y = b.kernels[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.blockM, y.blockM);
    EXPECT_EQ(x.blockN, y.blockN);
    EXPECT_EQ(x.stages, y.stages);
    EXPECT_EQ(x.consumers, y.consumers);
    EXPECT_EQ(x.sharedMemoryBytes, y.sharedMemoryBytes);
    EXPECT_EQ(x.splitK, y.splitK);
    EXPECT_EQ(x.clusterM, y.clusterM);
    EXPECT_EQ(x.epilogue, y.epilogue);
    EXPECT_EQ(x.store, y.store);
    EXPECT_EQ(x.split, y.split);
    EXPECT_EQ(x.scaleA, y.scaleA);
    EXPECT_EQ(x.griddepcontrol, y.griddepcontrol);
    EXPECT_EQ(x.aBox, y.aBox);
    EXPECT_EQ(x.cubin, y.cubin);
    EXPECT_EQ(x.ptx, y.ptx);
  }
  ASSERT_EQ(a.weights.size(), b.weights.size());
  for (size_t i = 0; i < a.weights.size(); ++i) {
    EXPECT_EQ(a.weights[i].name, b.weights[i].name);
    EXPECT_EQ(a.weights[i].dtype, b.weights[i].dtype);
    EXPECT_EQ(a.weights[i].shape, b.weights[i].shape);
    EXPECT_EQ(a.weights[i].transform, b.weights[i].transform);
  }
  ASSERT_EQ(a.plans.size(), b.plans.size());
  for (const auto &[name, x] : a.plans) {
    SCOPED_TRACE("plan " + name);
    ASSERT_TRUE(b.plans.count(name));
    const kiln::LaunchPlan &y = b.plans.at(name);
    EXPECT_EQ(x.maxTokens, y.maxTokens);
    EXPECT_EQ(x.maxSequences, y.maxSequences);
    EXPECT_EQ(x.arenaBytes, y.arenaBytes);
    ASSERT_EQ(x.buffers.size(), y.buffers.size());
    for (size_t i = 0; i < x.buffers.size(); ++i) {
      EXPECT_EQ(x.buffers[i].name, y.buffers[i].name);
      EXPECT_EQ(x.buffers[i].dtype, y.buffers[i].dtype);
      EXPECT_EQ(x.buffers[i].rows, y.buffers[i].rows);
      EXPECT_EQ(x.buffers[i].cols, y.buffers[i].cols);
      EXPECT_EQ(x.buffers[i].offset, y.buffers[i].offset);
      EXPECT_EQ(x.buffers[i].bytes, y.buffers[i].bytes);
    }
    ASSERT_EQ(x.steps.size(), y.steps.size());
    for (size_t i = 0; i < x.steps.size(); ++i) {
      SCOPED_TRACE("step " + std::to_string(i));
      EXPECT_EQ(x.steps[i].op, y.steps[i].op);
      expectSameTensors(x.steps[i].inputs, y.steps[i].inputs);
      expectSameTensors(x.steps[i].outputs, y.steps[i].outputs);
      EXPECT_EQ(x.steps[i].weights, y.steps[i].weights);
      EXPECT_EQ(x.steps[i].kernel, y.steps[i].kernel);
      EXPECT_EQ(x.steps[i].attrs.numbers, y.steps[i].attrs.numbers);
      EXPECT_EQ(x.steps[i].attrs.strings, y.steps[i].attrs.strings);
      EXPECT_EQ(x.steps[i].attrs.lists, y.steps[i].attrs.lists);
    }
  }
}

uint32_t u32At(const std::string &bytes, size_t at) {
  uint32_t value = 0;
  for (int i = 3; i >= 0; --i)
    value = value << 8 | static_cast<unsigned char>(bytes[at + i]);
  return value;
}

uint64_t u64At(const std::string &bytes, size_t at) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i)
    value = value << 8 | static_cast<unsigned char>(bytes[at + i]);
  return value;
}

Json manifestOf(const std::string &bytes) {
  return Json::parse(bytes.substr(24, u64At(bytes, 16)));
}

/// The container with its manifest edited by `edit`, the blobs where they
/// were: the new manifest is written compactly and padded with spaces
/// (valid JSON whitespace) up to the old first blob.
std::string withManifest(const std::string &bytes,
                         const std::function<void(Json &)> &edit,
                         const std::string &rawManifest = "") {
  Json manifest = manifestOf(bytes);
  uint64_t blobsStart = bytes.size();
  for (const Json &blob : manifest["blobs"])
    blobsStart = std::min<uint64_t>(blobsStart, blob["offset"].get<uint64_t>());
  edit(manifest);
  std::string text = rawManifest.empty() ? manifest.dump() : rawManifest;
  EXPECT_LE(24 + text.size(), blobsStart) << "the edited manifest does not fit";
  text.resize(blobsStart - 24, ' ');
  std::string out = bytes.substr(0, 16);
  for (int i = 0; i < 8; ++i)
    out.push_back(static_cast<char>(text.size() >> (8 * i) & 0xff));
  return out + text + bytes.substr(blobsStart);
}

/// Parses `bytes`; fails the test on any exception but kiln::Error.
void expectErrorOrArtifact(const std::string &bytes, const std::string &what) {
  try {
    kiln::parseArtifact(bytes, "fuzz.kiln");
  } catch (const kiln::Error &error) {
    EXPECT_NE(std::string(error.what()).find("fuzz.kiln"), std::string::npos)
        << what << ": " << error.what();
  } catch (const std::exception &error) {
    ADD_FAILURE() << what << ": not a kiln::Error: " << error.what();
  }
}

//===----------------------------------------------------------------------===//
// Round trips and layout
//===----------------------------------------------------------------------===//

TEST(ArtifactTest, RoundTripKeepsEverything) {
  ScratchDir dir;
  kiln::Artifact original = realisticArtifact();
  ASSERT_NE(original.kernels[0].cubin.find('\0'), std::string::npos);
  kiln::writeArtifact(original, dir / "model.kiln");
  kiln::Artifact read = kiln::readArtifact(dir / "model.kiln");
  expectSameArtifact(original, read);
  // Writing what was read gives the same bytes.
  EXPECT_EQ(kiln::serializeArtifact(read), kiln::serializeArtifact(original));
  // The temporary file was renamed away.
  int files = 0;
  for ([[maybe_unused]] const auto &entry :
       std::filesystem::directory_iterator(dir.path()))
    ++files;
  EXPECT_EQ(files, 1);
  // The accessors on what was read.
  EXPECT_EQ(read.findKernel("kiln_gemm_m128n128s4c2")->splitK, 2);
  EXPECT_EQ(read.findKernel("nope"), nullptr);
  const kiln::LaunchPlan &decode = read.plan("decode");
  EXPECT_EQ(decode.findBuffer("kv_a")->cols, 176);
  EXPECT_EQ(decode.findBuffer("nope"), nullptr);
  const kiln::PlanStep &mla = decode.steps[4];
  EXPECT_EQ(mla.attrs.integer("mla_attention", "kv_lora"), 160);
  EXPECT_DOUBLE_EQ(mla.attrs.number("mla_attention", "softmax_scale"),
                   0.14433756729740643);
  EXPECT_EQ(mla.attrs.list("mla_attention", "inv_freq").size(), 8u);
}

TEST(ArtifactTest, StepsRunOnTheSmallestPlanTheyFit) {
  kiln::Artifact a = realisticArtifact();
  const int64_t decodeTokens = a.plans.at("decode").maxTokens,
                decodeSequences = a.plans.at("decode").maxSequences;
  EXPECT_EQ(a.stepPlanName(1, 1), "decode");
  EXPECT_EQ(a.stepPlanName(decodeTokens, decodeSequences), "decode");
  EXPECT_EQ(a.stepPlanName(decodeTokens + 1, 1), "prefill");
  EXPECT_EQ(a.stepPlanName(1, decodeSequences + 1), "prefill");
  kiln::LaunchPlan small = a.plans.at("decode");
  small.maxTokens = small.maxSequences = 1;
  a.plans["decode_small"] = small;
  EXPECT_EQ(a.stepPlanName(1, 1), "decode_small");
  EXPECT_EQ(a.stepPlanName(2, 1), "decode");
}

TEST(ArtifactTest, OverwritesAnExistingFile) {
  ScratchDir dir;
  dir.write("model.kiln", "old contents");
  kiln::writeArtifact(smallArtifact(), dir / "model.kiln");
  expectSameArtifact(smallArtifact(), kiln::readArtifact(dir / "model.kiln"));
}

TEST(ArtifactTest, ContainerLayoutIsTheDocumentedOne) {
  kiln::Artifact artifact = realisticArtifact();
  std::string bytes = kiln::serializeArtifact(artifact);
  EXPECT_EQ(bytes.substr(0, 8), std::string("KILNART\0", 8));
  EXPECT_EQ(u32At(bytes, 8), kiln::kArtifactFormatVersion);
  EXPECT_EQ(u32At(bytes, 12), 0u);
  Json manifest = manifestOf(bytes);
  EXPECT_EQ(manifest["format"], "kiln-artifact");
  EXPECT_EQ(manifest["format_version"], kiln::kArtifactFormatVersion);
  EXPECT_EQ(manifest["target"]["arch"], "sm_90a");
  EXPECT_EQ(manifest["model"]["hash"], artifact.modelHash);
  EXPECT_EQ(manifest["options"]["kv_cache_dtype"], "fp8");
  EXPECT_EQ(manifest["options"]["ep"], 1);
  // Seven cubins and one PTX, each at a multiple of 256 after the
  // manifest, holding exactly the kernel's bytes.
  ASSERT_EQ(manifest["blobs"].size(), 8u);
  for (const Json &blob : manifest["blobs"]) {
    uint64_t offset = blob["offset"], size = blob["size"];
    EXPECT_EQ(offset % 256, 0u);
    EXPECT_GE(offset, 24 + u64At(bytes, 16));
    EXPECT_LE(offset + size, bytes.size());
  }
  const Json &kernel = manifest["kernels"][0];
  EXPECT_EQ(kernel["block_m"], 64);
  EXPECT_EQ(kernel["split_k"], 1);
  EXPECT_EQ(kernel["shared_memory_bytes"], 197632);
  for (const Json &blob : manifest["blobs"]) {
    if (blob["name"] == kernel["cubin"]) {
      EXPECT_EQ(bytes.substr(blob["offset"], blob["size"]),
                artifact.kernels[0].cubin);
    }
  }
  EXPECT_FALSE(manifest["kernels"][1].contains("ptx"));
  // cluster_m only where it is not 1.
  EXPECT_FALSE(manifest["kernels"][0].contains("cluster_m"));
  EXPECT_EQ(manifest["kernels"][3]["cluster_m"], 2);
  // Slices and attrs as artifact.md writes them.
  const Json &steps = manifest["plans"]["decode"]["steps"];
  EXPECT_EQ(steps[3]["inputs"][0],
            Json({{"buffer", "kv_a"}, {"col", 0}, {"cols", 160}}));
  EXPECT_EQ(steps[1]["inputs"][0], Json({{"buffer", "hidden"}}));
  EXPECT_EQ(steps[1]["attrs"]["eps"], 1e-6);
  EXPECT_EQ(steps[2]["kernel"], "kiln_gemm_m64n64s8c1");
  EXPECT_EQ(manifest["plans"]["decode"]["buffers"][0], Json({{"name", "tokens"},
                                                             {"dtype", "i32"},
                                                             {"rows", "T"},
                                                             {"cols", 1},
                                                             {"offset", 0},
                                                             {"bytes", 32}}));
}

TEST(ArtifactTest, ReadsHandWrittenManifestConventions) {
  // A plan written by hand: a JSON integer as the row count, a boolean flag,
  // no "weights"/"attrs"/"ptx" where there are none.
  std::string bytes =
      withManifest(kiln::serializeArtifact(smallArtifact()), [](Json &m) {
        m["kernels"][0].erase("ptx");
        Json &plan = m["plans"]["decode"];
        plan["buffers"][2]["rows"] = 2;
        plan["buffers"].push_back({{"name", "z"},
                                   {"dtype", "f32"},
                                   {"rows", "T"},
                                   {"cols", 1},
                                   {"offset", 768},
                                   {"bytes", 256}});
        Json z = Json::object({{"buffer", "z"}});
        Json add = Json::object();
        add["op"] = "add";
        add["inputs"] = Json::array({z, z});
        add["outputs"] = Json::array({z});
        add["attrs"] = Json::object({{"in_place", true}});
        plan["steps"].push_back(add);
      });
  kiln::Artifact artifact = kiln::parseArtifact(bytes, "hand.kiln");
  EXPECT_EQ(artifact.kernels[0].ptx, "");
  const kiln::LaunchPlan &plan = artifact.plan("decode");
  EXPECT_EQ(plan.buffers[2].rows, "2");
  EXPECT_TRUE(plan.steps[1].weights.empty());
  EXPECT_EQ(plan.steps[1].attrs.integer("add", "in_place"), 1);
}

//===----------------------------------------------------------------------===//
// Container rejections
//===----------------------------------------------------------------------===//

TEST(ArtifactTest, RejectsBadMagic) {
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  bytes[3] = 'X';
  expectMentions(errorOf([&] { kiln::parseArtifact(bytes, "bad.kiln"); }),
                 {"bad.kiln", "not a Kiln artifact", "magic"});
  ScratchDir dir;
  dir.write("config.json", "{\"hidden_size\": 7168}");
  expectMentions(errorOf([&] { kiln::readArtifact(dir / "config.json"); }),
                 {(dir / "config.json").string(), "magic"});
}

TEST(ArtifactTest, RemembersTheFormatVersionItRead) {
  // A version 6 container (header and manifest) of the same content: read
  // as such, and described with the version it has, not this build's.
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  bytes[8] = 6;
  std::string version = std::to_string(kiln::kArtifactFormatVersion);
  std::string field = "\"format_version\": " + version;
  size_t at = bytes.find(field);
  ASSERT_NE(at, std::string::npos);
  // The same length (the container records the manifest's): "6" padded
  // with JSON whitespace.
  std::string six = std::string(version.size() - 1, ' ') + "6";
  bytes.replace(at + field.size() - version.size(), version.size(), six);
  kiln::Artifact read = kiln::parseArtifact(bytes, "old.kiln");
  EXPECT_EQ(read.formatVersion, 6u);
  expectMentions(kiln::describeArtifact(read), {"format 6"});
  EXPECT_EQ(smallArtifact().formatVersion, kiln::kArtifactFormatVersion);
}

TEST(ArtifactTest, RejectsAnotherFormatVersionNamingItsProducer) {
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  uint32_t next = kiln::kArtifactFormatVersion + 1;
  bytes[8] = static_cast<char>(next);
  std::string version = "version " + std::to_string(next);
  expectMentions(
      errorOf([&] { kiln::parseArtifact(bytes, "new.kiln"); }),
      {"new.kiln", version, "written by kilnc test",
       "reads versions 2 to " + std::to_string(kiln::kArtifactFormatVersion)});
  // A manifest this build cannot read does not hide the version problem.
  std::string garbled = bytes.substr(0, 24) + "{\"produc";
  expectMentions(errorOf([&] { kiln::parseArtifact(garbled, "new.kiln"); }),
                 {"new.kiln", version, "unknown producer"});
}

TEST(ArtifactTest, RejectsANonZeroReservedField) {
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  bytes[13] = 1;
  expectMentions(errorOf([&] { kiln::parseArtifact(bytes, "r.kiln"); }),
                 {"r.kiln", "reserved", "offset 12"});
}

TEST(ArtifactTest, RejectsEveryTruncation) {
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  for (size_t size = 0; size < bytes.size(); ++size) {
    std::string message = errorOf(
        [&] { kiln::parseArtifact(bytes.substr(0, size), "cut.kiln"); });
    EXPECT_NE(message.find("cut.kiln"), std::string::npos)
        << "prefix of " << size << " bytes: " << message;
  }
  expectMentions(
      errorOf([&] { kiln::parseArtifact(bytes.substr(0, 10), "cut.kiln"); }),
      {"truncated at offset 10"});
  expectMentions(
      errorOf([&] { kiln::parseArtifact(bytes.substr(0, 100), "cut.kiln"); }),
      {"truncated at offset 100", "manifest"});
  expectMentions(errorOf([&] {
                   kiln::parseArtifact(bytes.substr(0, bytes.size() - 1),
                                       "cut.kiln");
                 }),
                 {"blob", "runs past the end of the file"});
}

TEST(ArtifactTest, RejectsTruncationOfARealisticArtifact) {
  std::string bytes = kiln::serializeArtifact(realisticArtifact());
  for (size_t size = 0; size < bytes.size(); size += 97)
    EXPECT_FALSE(errorOf([&] {
                   kiln::parseArtifact(bytes.substr(0, size), "cut.kiln");
                 }).empty())
        << size;
}

TEST(ArtifactTest, CorruptBytesGiveErrorsNotCrashes) {
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  for (size_t at = 0; at < bytes.size(); ++at)
    for (unsigned char flip : {0x01, 0x20, 0xff}) {
      std::string corrupt = bytes;
      corrupt[at] = static_cast<char>(corrupt[at] ^ flip);
      expectErrorOrArtifact(corrupt, "byte " + std::to_string(at) + " ^ " +
                                         std::to_string(flip));
    }
}

TEST(ArtifactTest, RejectsABlobPastTheEnd) {
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  std::string edited = withManifest(
      bytes, [](Json &m) { m["blobs"][0]["size"] = uint64_t(1) << 62; });
  expectMentions(
      errorOf([&] { kiln::parseArtifact(edited, "b.kiln"); }),
      {"b.kiln", "blob \"k.cubin\"", "runs past the end of the file"});
  edited = withManifest(bytes, [](Json &m) {
    m["blobs"][0]["offset"] = ~uint64_t(0) / 256 * 256;
  });
  expectMentions(errorOf([&] { kiln::parseArtifact(edited, "b.kiln"); }),
                 {"b.kiln", "runs past the end of the file"});
  edited = withManifest(bytes, [](Json &m) { m["blobs"][0]["offset"] = 300; });
  expectMentions(errorOf([&] { kiln::parseArtifact(edited, "b.kiln"); }),
                 {"b.kiln", "multiple of 256"});
  edited = withManifest(bytes, [](Json &m) { m["blobs"][0]["offset"] = 0; });
  expectMentions(errorOf([&] { kiln::parseArtifact(edited, "b.kiln"); }),
                 {"b.kiln", "overlaps the header or manifest"});
  edited = withManifest(bytes, [](Json &m) { m["kernels"][0]["cubin"] = "x"; });
  expectMentions(
      errorOf([&] { kiln::parseArtifact(edited, "b.kiln"); }),
      {"b.kiln", "kernels[0].cubin", "\"x\"", "not in the \"blobs\""});
}

TEST(ArtifactTest, RejectsAManifestThatIsNotJson) {
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  std::string edited = withManifest(
      bytes, [](Json &) {}, "{\"format\": ");
  expectMentions(errorOf([&] { kiln::parseArtifact(edited, "j.kiln"); }),
                 {"j.kiln", "not valid JSON"});
  edited = withManifest(
      bytes, [](Json &) {}, "[1, 2]");
  expectMentions(errorOf([&] { kiln::parseArtifact(edited, "j.kiln"); }),
                 {"j.kiln", "must be an object"});
}

TEST(ArtifactTest, RejectsMissingAndMistypedFields) {
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  struct Case {
    std::function<void(Json &)> edit;
    std::vector<std::string> mentions;
  };
  std::vector<Case> cases = {
      {[](Json &m) { m.erase("producer"); }, {"\"producer\"", "is missing"}},
      {[](Json &m) { m["model"].erase("hash"); },
       {"\"model.hash\"", "missing"}},
      {[](Json &m) { m["plans"]["decode"]["buffers"][1].erase("cols"); },
       {"\"plans.decode.buffers[1].cols\"", "is missing"}},
      {[](Json &m) { m["plans"]["decode"]["steps"][0]["inputs"] = "x_q"; },
       {"\"plans.decode.steps[0].inputs\"", "must be an array"}},
      {[](Json &m) { m["kernels"][0]["stages"] = 2.5; },
       {"\"kernels[0].stages\"", "must be an integer"}},
      {[](Json &m) { m["plans"]["decode"]["arena_bytes"] = -1; },
       {"\"plans.decode.arena_bytes\"", "must not be negative"}},
      {[](Json &m) {
         m["weights"][0]["shape"] = {128, "x"};
       },
       {"\"weights[0].shape[1]\"", "must be an integer"}},
      {[](Json &m) {
         m["plans"]["decode"]["steps"][0]["attrs"] = {{"a", {1, "b"}}};
       },
       {"\"plans.decode.steps[0].attrs.a\"", "list of numbers"}},
      {[](Json &m) { m["format"] = "zip"; }, {"\"format\"", "kiln-artifact"}},
      {[](Json &m) { m["format_version"] = 2; },
       {"\"format_version\"",
        "header says " + std::to_string(kiln::kArtifactFormatVersion)}},
  };
  for (const Case &c : cases)
    expectMentions(errorOf([&] {
                     kiln::parseArtifact(withManifest(bytes, c.edit), "f.kiln");
                   }),
                   [&] {
                     std::vector<std::string> all = c.mentions;
                     all.push_back("f.kiln");
                     return all;
                   }());
}

TEST(ArtifactTest, ReadingAMissingFileNamesIt) {
  ScratchDir dir;
  expectMentions(errorOf([&] { kiln::readArtifact(dir / "none.kiln"); }),
                 {(dir / "none.kiln").string(), "No such file"});
  expectMentions(errorOf([&] { kiln::readArtifact(dir.path()); }),
                 {dir.path().string(), "not a regular file"});
}

//===----------------------------------------------------------------------===//
// Validation
//===----------------------------------------------------------------------===//

/// The message of validating `artifact` after `edit`; it must also keep
/// serializeArtifact from writing it and parseArtifact from reading it.
std::string invalidBecause(const std::function<void(kiln::Artifact &)> &edit) {
  kiln::Artifact artifact = realisticArtifact();
  edit(artifact);
  EXPECT_FALSE(errorOf([&] { kiln::serializeArtifact(artifact); }).empty());
  return errorOf([&] { kiln::validateArtifact(artifact, "v.kiln"); });
}

TEST(ArtifactTest, RejectsAnUnknownOp) {
  expectMentions(
      invalidBecause(
          [](kiln::Artifact &a) { a.plans["decode"].steps[2].op = "conv2d"; }),
      {"v.kiln", "plan \"decode\"", "step 2", "unknown op \"conv2d\""});
  // Through the file reader too, naming the file.
  std::string bytes =
      withManifest(kiln::serializeArtifact(smallArtifact()), [](Json &m) {
        m["plans"]["decode"]["steps"][0]["op"] = "softmax";
      });
  expectMentions(errorOf([&] { kiln::parseArtifact(bytes, "op.kiln"); }),
                 {"op.kiln", "step 0", "unknown op \"softmax\""});
}

TEST(ArtifactTest, RejectsUnknownBuffersWeightsAndKernels) {
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["prefill"].steps[3].inputs[0].buffer = "kv_b";
                 }),
                 {"plan \"prefill\"", "step 3 (rms_norm)", "input 0",
                  "unknown buffer \"kv_b\""});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[0].outputs[0].buffer = "h";
                 }),
                 {"step 0 (embed)", "output 0", "unknown buffer \"h\""});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[7].weights[0] =
                       "model.layers.1.mlp.experts.{e}.up_proj.weight";
                 }),
                 {"step 7 (grouped_gemm)",
                  "unknown weight \"model.layers.1.mlp.experts.{e}.up_proj."
                  "weight\""});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[2].kernel = "kiln_gemm_x";
                 }),
                 {"step 2 (gemm)", "unknown kernel \"kiln_gemm_x\""});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[2].kernel.clear();
                 }),
                 {"step 2 (gemm)", "names no kernel"});
  // grouped_gemm launches one grouped kernel for all experts; gemm a plain
  // one.
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[7].kernel = "kiln_gemm_m64n64s8c1";
                 }),
                 {"step 7 (grouped_gemm)", "is not grouped",
                  "a contiguous grouped kernel"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[2].kernel =
                       "kiln_gemm_m64n64s8c1_contiguous";
                 }),
                 {"step 2 (gemm)", "is grouped contiguous", "a plain kernel"});
  expectMentions(
      invalidBecause(
          [](kiln::Artifact &a) { a.kernels[2].grouped = "ragged"; }),
      {"kiln_gemm_m64n64s8c1_contiguous", "\"contiguous\"", "ragged"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[0].kernel = "kiln_gemm_m64n64s8c1";
                 }),
                 {"step 0 (embed)", "only"});
}

TEST(ArtifactTest, RejectsSlicesOutsideTheBuffer) {
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[4].inputs[2] = {"kv_a", 160, 17};
                 }),
                 {"step 4 (mla_attention)", "input 2", "slice [160, 160 + 17)",
                  "\"kv_a\"", "176 columns"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[3].inputs[0] = {"kv_a", -1, 10};
                 }),
                 {"step 3", "slice [-1"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[3].inputs[0] = {"kv_a", 5, 0};
                 }),
                 {"step 3", "slice [5, 5 + 0)"});
}

TEST(ArtifactTest, RejectsBuffersOutOfTheArena) {
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].buffers[3].offset += 128;
                 }),
                 {"v.kiln", "plan \"decode\"", "buffer \"hidden\"",
                  "not a multiple of 256"});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) {
        kiln::LaunchPlan &plan = a.plans["prefill"];
        plan.buffers.back().offset = plan.arenaBytes;
      }),
      {"plan \"prefill\"", "buffer \"logits\"", "do not fit the arena"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].buffers[0].offset =
                       ~uint64_t(0) / 256 * 256;
                 }),
                 {"buffer \"tokens\"", "do not fit the arena"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].buffers[3].bytes -= 4;
                 }),
                 {"buffer \"hidden\"", "8 x 256 f32 needs 8192 bytes"});
}

TEST(ArtifactTest, RejectsIllegalBufferAndWeightValues) {
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].buffers[3].dtype = "f16";
                 }),
                 {"buffer \"hidden\"", "dtype \"f16\""});
  for (const char *rows : {"Y", "", "-3", "0", "1e3"})
    expectMentions(invalidBecause([&](kiln::Artifact &a) {
                     a.plans["decode"].buffers[3].rows = rows;
                   }),
                   {"buffer \"hidden\"", "rows \"" + std::string(rows) + "\""});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].buffers[4].name = "hidden";
                 }),
                 {"buffer \"hidden\"", "declared twice"});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.weights[0].dtype = "int4"; }),
      {"weight \"model.embed_tokens.weight\"", "dtype \"int4\""});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.weights[1].transform = "transpose";
                 }),
                 {"transform \"transpose\""});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.weights[1].shape = {256, 0};
                 }),
                 {"shape"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.options.kvCacheDtype = "int8";
                 }),
                 {"kv_cache_dtype \"int8\""});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.modelHash = "md5:123"; }),
      {"model hash \"md5:123\""});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].steps[1].attrs.numbers["eps"] = NAN;
                 }),
                 {"step 1", "\"eps\"", "not finite"});
}

TEST(ArtifactTest, RejectsKernelsWithoutACubin) {
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[1].cubin.clear(); }),
      {"kernel \"kiln_gemm_m128n128s4c2\"", "has no cubin"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.kernels[1].name = a.kernels[0].name;
                 }),
                 {"declared twice"});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[0].splitK = 0; }),
      {"split_k"});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[3].clusterM = 4; }),
      {"kiln_gemm_m128n128s6c2x2", "cluster_m must be 1 or 2, got 4"});
}

TEST(ArtifactTest, WriteLeavesNothingBehindOnFailure) {
  ScratchDir dir;
  kiln::Artifact bad = smallArtifact();
  bad.plans["decode"].steps[0].op = "nop";
  EXPECT_FALSE(
      errorOf([&] { kiln::writeArtifact(bad, dir / "bad.kiln"); }).empty());
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
  expectMentions(errorOf([&] {
                   kiln::writeArtifact(smallArtifact(), dir / "no" / "a.kiln");
                 }),
                 {(dir / "no" / "a.kiln").string(), "cannot write"});
}

TEST(ArtifactTest, AttributeAccessorsNameTheOpAndAttribute) {
  kiln::PlanAttrs attrs;
  attrs.numbers["top_k"] = 8;
  attrs.numbers["eps"] = 1e-6;
  attrs.strings["mode"] = "x";
  attrs.lists["inv_freq"] = {1.0};
  EXPECT_EQ(attrs.integer("moe_route", "top_k"), 8);
  expectMentions(errorOf([&] { attrs.number("moe_route", "n_group"); }),
                 {"moe_route", "\"n_group\"", "missing"});
  expectMentions(errorOf([&] { attrs.integer("rms_norm", "eps"); }),
                 {"rms_norm", "\"eps\"", "integer"});
  expectMentions(errorOf([&] { attrs.number("x", "mode"); }),
                 {"\"mode\"", "a string"});
  expectMentions(errorOf([&] { attrs.list("mla_attention", "top_k"); }),
                 {"mla_attention", "\"top_k\"", "a number"});
  expectMentions(errorOf([&] { attrs.list("mla_attention", "freqs"); }),
                 {"\"freqs\"", "missing"});
  expectMentions(errorOf([&] { realisticArtifact().plan("verify"); }),
                 {"no plan \"verify\"", "decode, prefill"});
}

//===----------------------------------------------------------------------===//
// The model hash and the model check
//===----------------------------------------------------------------------===//

TEST(ArtifactTest, ModelHashIsFnv1aOfTheCanonicalConfig) {
  kiln::ModelConfig config = tinyConfig();
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char byte : kiln::toJson(config))
    hash = (hash ^ byte) * 0x100000001b3ull;
  char expected[32];
  std::snprintf(expected, sizeof expected, "fnv1a64:%016" PRIx64, hash);
  EXPECT_EQ(kiln::modelHash(config), expected);
  EXPECT_EQ(kiln::modelHash(tinyConfig()), kiln::modelHash(config));
}

TEST(ArtifactTest, ModelHashChangesWithAnyField) {
  const kiln::ModelConfig base = tinyConfig();
  const std::string hash = kiln::modelHash(base);
  std::vector<std::pair<std::string, std::function<void(kiln::ModelConfig &)>>>
      edits = {
          {"hidden_size", [](kiln::ModelConfig &c) { c.hiddenSize += 128; }},
          {"rms_norm_eps", [](kiln::ModelConfig &c) { c.rmsNormEps = 1e-5; }},
          {"yarn factor", [](kiln::ModelConfig &c) { c.yarn->factor = 20; }},
          {"norm_topk_prob",
           [](kiln::ModelConfig &c) { c.normTopkProb = false; }},
          {"quantization",
           [](kiln::ModelConfig &c) { c.quantization.reset(); }},
      };
  for (const auto &[name, edit] : edits) {
    kiln::ModelConfig changed = base;
    edit(changed);
    EXPECT_NE(kiln::modelHash(changed), hash) << name;
  }
}

TEST(ArtifactTest, ChecksTheArtifactAgainstTheModel) {
  kiln::Artifact artifact = realisticArtifact();
  kiln::ModelConfig config = tinyConfig();
  kiln::checkArtifactMatchesModel(artifact, config, "m.kiln", "cfg.json");

  kiln::ModelConfig wider = config;
  wider.hiddenSize = 512;
  expectMentions(errorOf([&] {
                   kiln::checkArtifactMatchesModel(artifact, wider, "m.kiln",
                                                   "cfg.json");
                 }),
                 {"m.kiln", "cfg.json",
                  "hidden_size is 256 in the artifact "
                  "but 512 in the config",
                  "model hash"});
  kiln::ModelConfig deeper = config;
  deeper.numHiddenLayers = 61;
  deeper.vocabSize = 1000;
  expectMentions(
      errorOf([&] {
        kiln::checkArtifactMatchesModel(artifact, deeper, "m.kiln", "cfg.json");
      }),
      {"num_hidden_layers is 3", "but 61", "vocab_size is 129280", "but 1000"});
  // Only a field outside the identifying ones differs: the hash says so.
  kiln::ModelConfig eps = config;
  eps.rmsNormEps = 1e-5;
  expectMentions(errorOf([&] {
                   kiln::checkArtifactMatchesModel(artifact, eps, "m.kiln",
                                                   "cfg.json");
                 }),
                 {"m.kiln", "cfg.json", "model hash is " + artifact.modelHash,
                  kiln::modelHash(eps)});
  // A graph compiled without a config is not checked against one.
  kiln::Artifact graph = artifact;
  graph.modelHash.clear();
  kiln::checkArtifactMatchesModel(graph, wider, "g.kiln", "cfg.json");
}

TEST(ArtifactTest, DescribeSummarizesTheArtifact) {
  std::string text = kiln::describeArtifact(realisticArtifact());
  expectMentions(text,
                 {"format " + std::to_string(kiln::kArtifactFormatVersion),
                  "kilnc 0.1.0",
                  "sm_90a",
                  "deepseek_v3",
                  kiln::modelHash(tinyConfig()),
                  "kiln_gemm_m64n64s8c1",
                  "kiln_gemm_m128n128s4c2",
                  "split_k 2",
                  "cubin 3001 B",
                  "grouped contiguous, epilogue swiglu",
                  "kiln_gemm_m128n192s4c2_tma",
                  "store tma",
                  "model.layers.1.mlp.experts.{e}.gate_proj.weight",
                  "plan decode",
                  "plan prefill",
                  "kv_a[:, 160:176]",
                  "mla_attention",
                  "inv_freq=[1, ",
                  "(8 values)",
                  "rope_layout=\"interleaved\"",
                  "logits: f32 [S, 129280]"});
}

} // namespace

//===----------------------------------------------------------------------===//
// Streams, events and micro-batches (format version 3)
//===----------------------------------------------------------------------===//

/// The decode plan with its first rms_norm moved to stream 1 and reading
/// micro-batch 0 of 2 of `hidden`: a fork (record on 0, wait on 1) before
/// it and a join (record on 1, wait on 0) after it. Steps: 0 embed,
/// 1 record, 2 wait, 3 rms_norm, 4 record, 5 wait, ...
void addStreams(kiln::Artifact &artifact) {
  kiln::LaunchPlan &plan = artifact.plans["decode"];
  plan.streams = 2;
  plan.events = 2;
  auto event = [](const char *op, int64_t stream, int64_t id) {
    kiln::PlanStep step;
    step.op = op;
    step.stream = stream;
    step.event = id;
    return step;
  };
  plan.steps[1].stream = 1;
  plan.steps[1].inputs[0].part = 0;
  plan.steps[1].inputs[0].parts = 2;
  plan.steps.insert(plan.steps.begin() + 2,
                    {event("event_record", 1, 1), event("event_wait", 0, 1)});
  plan.steps.insert(plan.steps.begin() + 1,
                    {event("event_record", 0, 0), event("event_wait", 1, 0)});
}

TEST(ArtifactTest, StreamsEventsAndMicroBatchesRoundTrip) {
  kiln::Artifact artifact = realisticArtifact();
  addStreams(artifact);
  kiln::Artifact back =
      kiln::parseArtifact(kiln::serializeArtifact(artifact), "s.kiln");
  const kiln::LaunchPlan &plan = back.plans.at("decode");
  EXPECT_EQ(plan.streams, 2);
  EXPECT_EQ(plan.events, 2);
  ASSERT_EQ(plan.steps.size(), artifact.plans["decode"].steps.size());
  EXPECT_EQ(plan.steps[1].op, "event_record");
  EXPECT_EQ(plan.steps[2].op, "event_wait");
  EXPECT_EQ(plan.steps[2].stream, 1);
  EXPECT_EQ(plan.steps[2].event, 0);
  EXPECT_EQ(plan.steps[3].stream, 1);
  EXPECT_EQ(plan.steps[3].event, -1);
  EXPECT_EQ(plan.steps[3].inputs[0].part, 0);
  EXPECT_EQ(plan.steps[3].inputs[0].parts, 2);
  EXPECT_EQ(plan.steps[4].stream, 1);
  EXPECT_EQ(plan.steps[5].stream, 0);
  // Single-stream plans are written as before (no stream fields).
  Json manifest = manifestOf(kiln::serializeArtifact(realisticArtifact()));
  EXPECT_FALSE(manifest["plans"]["decode"].contains("streams"));
  EXPECT_FALSE(manifest["plans"]["decode"]["steps"][1].contains("stream"));
  std::string described = kiln::describeArtifact(back);
  EXPECT_NE(described.find("2 streams, 2 events"), std::string::npos);
  EXPECT_NE(described.find("rms_norm [stream 1] hidden{micro-batch 0/2}"),
            std::string::npos)
      << described;
}

/// `a` with decode's grouped_gemm (step 7) fused with the SwiGLU epilogue:
/// the swiglu kernel over the experts' gate and up weights.
void fuseSwiGLU(kiln::Artifact &a) {
  a.weights.push_back({"model.layers.1.mlp.experts.{e}.up_proj.weight",
                       "f8e4m3",
                       {192, 256},
                       "none"});
  kiln::PlanStep &step = a.plans["decode"].steps[7];
  step.kernel = "kiln_gemm_m64n128s8c1_contiguous_swiglu";
  step.weights.push_back("model.layers.1.mlp.experts.{e}.up_proj.weight");
}

TEST(ArtifactTest, FusedSwiGLUStepsRoundTrip) {
  kiln::Artifact original = realisticArtifact();
  fuseSwiGLU(original);
  kiln::Artifact read =
      kiln::parseArtifact(kiln::serializeArtifact(original), "f.kiln");
  expectSameArtifact(original, read);
  const kiln::PlanStep &step = read.plans.at("decode").steps[7];
  EXPECT_EQ(read.findKernel(step.kernel)->epilogue, "swiglu");
  EXPECT_EQ(step.weights.size(), 2u);
}

TEST(ArtifactTest, RejectsFusedSwiGLUStepsWithTheWrongWeights) {
  expectMentions(
      invalidBecause([](kiln::Artifact &a) {
        fuseSwiGLU(a);
        a.plans["decode"].steps[7].weights.pop_back();
      }),
      {"step 7 (grouped_gemm)", "reads 2 weights", "gate and up", "names 1"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   fuseSwiGLU(a);
                   a.plans["decode"].steps[7].kernel =
                       "kiln_gemm_m64n64s8c1_contiguous";
                 }),
                 {"step 7 (grouped_gemm)", "reads 1 weight", "names 2"});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[4].epilogue = "gelu"; }),
      {"kiln_gemm_m64n128s8c1_contiguous_swiglu", "\"gelu\"", "block_n 128"});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[4].grouped.clear(); }),
      {"kiln_gemm_m64n128s8c1_contiguous_swiglu", "\"swiglu\"",
       "grouped kernel"});
}

TEST(ArtifactTest, QuantizedSwiGLUStepsWriteCodesAndScales) {
  // Version 7: the kernel's epilogue "swiglu_quantize" writes the down
  // projection's input, two outputs; the reader holds the step to that.
  auto quantized = [](kiln::Artifact &a) {
    fuseSwiGLU(a);
    a.kernels[4].epilogue = "swiglu_quantize";
  };
  expectMentions(invalidBecause(quantized),
                 {"step 7 (grouped_gemm)", "writes 2 outputs",
                  "codes and their scales", "names 1"});
  kiln::Artifact original = realisticArtifact();
  quantized(original);
  kiln::PlanStep &step = original.plans["decode"].steps[7];
  step.outputs.push_back(step.outputs[0]);
  step.outputs[1].buffer = step.inputs[1].buffer; // some f32 scales buffer
  kiln::Artifact read =
      kiln::parseArtifact(kiln::serializeArtifact(original), "f.kiln");
  expectSameArtifact(original, read);
  EXPECT_EQ(read.findKernel(read.plans.at("decode").steps[7].kernel)->epilogue,
            "swiglu_quantize");
}

TEST(ArtifactTest, RejectsSplitTailOnKernelsThatCannotHaveIt) {
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[6].split = "head"; }),
      {"kiln_gemm_m128n128s4c2k4t", "\"head\"", "plain split-K kernel"});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[6].splitK = 1; }),
      {"kiln_gemm_m128n128s4c2k4t", "\"tail\"", "split-K"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.kernels[6].grouped = "contiguous";
                 }),
                 {"kiln_gemm_m128n128s4c2k4t", "\"tail\"", "plain"});
}

TEST(ArtifactTest, RejectsTmaStoreOnKernelsThatCannotHaveIt) {
  expectMentions(
      invalidBecause(
          [](kiln::Artifact &a) { a.kernels[5].store = "stmatrix"; }),
      {"kiln_gemm_m128n192s4c2_tma", "\"stmatrix\"", "is not \"tma\""});
  // Grouped kernels store with TMA from block_n 128 on (the 64-column
  // tiles' single consumer would spill with the staging).
  expectMentions(
      invalidBecause([](kiln::Artifact &a) {
        a.kernels[5].grouped = "contiguous";
        a.kernels[5].blockN = 64;
      }),
      {"kiln_gemm_m128n192s4c2_tma", "\"tma\"", "at least 128 if grouped"});
  // A grouped 128x192 kernel that stores with TMA is what kilnc picks for
  // the prefill's routed down projection.
  kiln::Artifact wide = realisticArtifact();
  wide.kernels[5].grouped = "contiguous";
  EXPECT_NO_THROW(kiln::validateArtifact(wide, "v.kiln"));
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[5].splitK = 2; }),
      {"kiln_gemm_m128n192s4c2_tma", "split_k 1"});
}

TEST(ArtifactTest, KeepsStagedScales) {
  kiln::Artifact read = kiln::parseArtifact(
      kiln::serializeArtifact(realisticArtifact()), "f.kiln");
  EXPECT_EQ(read.findKernel("kiln_gemm_m128n192s4c2_tma")->scaleA, "tma");
  EXPECT_EQ(read.findKernel("kiln_gemm_m128n128s4c2")->scaleA, "");
}

TEST(ArtifactTest, RejectsStagedScalesOnKernelsThatCannotHaveThem) {
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[5].scaleA = "ldg"; }),
      {"kiln_gemm_m128n192s4c2_tma", "scale_a", "\"ldg\"", "\"tma\""});
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[6].scaleA = "tma"; }),
      {"kiln_gemm_m128n128s4c2k4t", "scale_a", "split_k 1"});
}

TEST(ArtifactTest, KeepsGriddepcontrolAndRejectsOtherValues) {
  kiln::Artifact read = kiln::parseArtifact(
      kiln::serializeArtifact(realisticArtifact()), "f.kiln");
  EXPECT_EQ(read.findKernel("kiln_gemm_m64n64s8c1")->griddepcontrol, "wait");
  EXPECT_EQ(read.findKernel("kiln_gemm_m128n128s4c2")->griddepcontrol, "");
  expectMentions(
      invalidBecause(
          [](kiln::Artifact &a) { a.kernels[0].griddepcontrol = "spin"; }),
      {"kiln_gemm_m64n64s8c1", "griddepcontrol", "\"spin\"", "\"wait\""});
}

TEST(ArtifactTest, KeepsTheClampedABoxAndRejectsOtherValues) {
  kiln::Artifact read = kiln::parseArtifact(
      kiln::serializeArtifact(realisticArtifact()), "f.kiln");
  EXPECT_EQ(read.findKernel("kiln_gemm_m64n64s8c1")->aBox, "min_m");
  EXPECT_EQ(read.findKernel("kiln_gemm_m128n128s4c2")->aBox, "");
  expectMentions(
      invalidBecause([](kiln::Artifact &a) { a.kernels[0].aBox = "max_m"; }),
      {"kiln_gemm_m64n64s8c1", "a_box", "\"max_m\"", "\"min_m\""});
}

TEST(ArtifactTest, ReadsVersion2Artifacts) {
  // Version 2 is version 3 without streams: it still loads.
  std::string bytes = kiln::serializeArtifact(smallArtifact());
  bytes = withManifest(bytes, [](Json &m) { m["format_version"] = 2; });
  bytes[8] = 2;
  kiln::Artifact artifact = kiln::parseArtifact(bytes, "old.kiln");
  EXPECT_EQ(artifact.plans.at("decode").streams, 1);
  EXPECT_EQ(artifact.options.overlapMicroBatches, 1);
}

TEST(ArtifactTest, RejectsBadStreamsAndEventsNamingTheStep) {
  auto invalid = [](const std::function<void(kiln::LaunchPlan &)> &edit) {
    return invalidBecause([&](kiln::Artifact &a) {
      addStreams(a);
      edit(a.plans["decode"]);
    });
  };
  expectMentions(invalid([](kiln::LaunchPlan &p) { p.steps[3].stream = 2; }),
                 {"v.kiln", "plan \"decode\"", "step 3 (rms_norm)",
                  "runs on stream 2", "has 2 streams"});
  expectMentions(invalid([](kiln::LaunchPlan &p) { p.steps[6].stream = -1; }),
                 {"step 6", "runs on stream -1"});
  // A wait before any record of its event dangles.
  expectMentions(
      invalid([](kiln::LaunchPlan &p) { p.steps[2].event = 1; }),
      {"step 2 (event_wait)", "waits for event 1", "no earlier step records"});
  expectMentions(invalid([](kiln::LaunchPlan &p) { p.steps[5].event = 7; }),
                 {"step 5 (event_wait)", "event 7", "2 events"});
  expectMentions(invalid([](kiln::LaunchPlan &p) { p.steps[4].event = 0; }),
                 {"step 4 (event_record)", "already recorded by step 1"});
  expectMentions(invalid([](kiln::LaunchPlan &p) { p.steps[2].stream = 0; }),
                 {"step 2 (event_wait)", "recorded on the same stream"});
  // Stream 1 must start with a wait and end joined into stream 0.
  expectMentions(
      invalid([](kiln::LaunchPlan &p) { p.steps.erase(p.steps.begin() + 2); }),
      {"step 2 (rms_norm)", "first step on stream 1", "not an event_wait"});
  expectMentions(
      invalid([](kiln::LaunchPlan &p) { p.steps.erase(p.steps.begin() + 5); }),
      {"step 4 (event_record)", "last on stream 1", "never joined"});
  expectMentions(invalid([](kiln::LaunchPlan &p) { p.steps[6].event = 0; }),
                 {"step 6", "names event 0", "only event_record"});
  expectMentions(invalid([](kiln::LaunchPlan &p) {
                   p.steps[1].inputs.push_back(whole("hidden"));
                 }),
                 {"step 1 (event_record)", "no inputs, outputs or weights"});
  // Micro-batch parts: of a T-row buffer, 0 <= part < parts, parts >= 2.
  expectMentions(
      invalid([](kiln::LaunchPlan &p) { p.steps[3].inputs[0].part = 2; }),
      {"step 3 (rms_norm)", "micro-batch [2, 2]"});
  expectMentions(
      invalid([](kiln::LaunchPlan &p) { p.steps[3].inputs[0].parts = 1; }),
      {"step 3", "micro-batch [0, 1]"});
  expectMentions(invalid([](kiln::LaunchPlan &p) {
                   p.steps[3].inputs[0].buffer = "last_rows";
                 }),
                 {"step 3", "buffer \"last_rows\" has rows \"S\""});
}

TEST(ArtifactTest, MicroBatchRowSymbols) {
  kiln::RowSymbol symbol;
  ASSERT_TRUE(kiln::parseRowSymbol("T.1/2", symbol));
  EXPECT_EQ(symbol.base, "T");
  EXPECT_EQ(symbol.part, 1);
  EXPECT_EQ(symbol.parts, 2);
  ASSERT_TRUE(kiln::parseRowSymbol("R.0/3", symbol));
  EXPECT_EQ(symbol.base, "R");
  ASSERT_TRUE(kiln::parseRowSymbol("X.1/2", symbol));
  EXPECT_EQ(symbol.base, "X");
  EXPECT_EQ(symbol.part, 1);
  ASSERT_TRUE(kiln::parseRowSymbol("E1", symbol));
  EXPECT_EQ(symbol.parts, 0);
  ASSERT_TRUE(kiln::parseRowSymbol("12", symbol));
  EXPECT_EQ(symbol.count, 12);
  for (const char *bad :
       {"T.2/2", "T.0/1", "S.0/2", "T.a/2", "T0/2", "T.0/", "T./2", "Y"})
    EXPECT_FALSE(kiln::parseRowSymbol(bad, symbol)) << bad;
  EXPECT_EQ(kiln::microBatchRowSymbol("R", 1, 2), "R.1/2");
  // Parts cover the rows exactly, in order, at any row count.
  for (int64_t rows : {2, 3, 7, 4096})
    for (int64_t parts : {2, 3}) {
      int64_t next = 0;
      for (int64_t part = 0; part < parts; ++part) {
        EXPECT_EQ(kiln::microBatchBegin(rows, part, parts), next);
        next += kiln::microBatchRows(rows, part, parts);
      }
      EXPECT_EQ(next, rows);
    }
  // A buffer's rows may be a part: checked against the plan's maxima.
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   kiln::LaunchPlan &p = a.plans["decode"];
                   addBuffer(p, "half", "f32", "T.1/2", 256, 1);
                 }),
                 {"buffer \"half\"", "needs"});
  expectMentions(invalidBecause([](kiln::Artifact &a) {
                   a.plans["decode"].buffers[3].rows = "T.2/2";
                 }),
                 {"rows \"T.2/2\"", "micro-batch part"});
}

/// A micro-batch's expert-parallel dispatch exchange (kilnc --ep-steps
/// --overlap-micro-batches 2) appended to the decode plan: R.0/2 rows sent,
/// X.0/2 received, at world size 1 with 16 slots.
void addMicroBatchExchange(kiln::Artifact &artifact) {
  artifact.expertParallel.worldSize = 1;
  artifact.expertParallel.slotsPerRank = 16;
  artifact.expertParallel.placement.clear();
  for (int e = 0; e < 16; ++e)
    artifact.expertParallel.placement.push_back(e);
  kiln::LaunchPlan &plan = artifact.plans["decode"];
  const int64_t routed = plan.maxTokens * 4;
  addBuffer(plan, "send_q", "f8e4m3", "R.0/2", 256, routed);
  addBuffer(plan, "send_s", "f32", "R.0/2", 2, routed);
  addBuffer(plan, "send_offsets", "i32", "17", 1, 17);
  addBuffer(plan, "recv_q", "f8e4m3", "X.0/2", 256, routed);
  addBuffer(plan, "recv_s", "f32", "X.0/2", 2, routed);
  addBuffer(plan, "recv_counts", "i32", "16", 1, 16);
  kiln::PlanStep step;
  step.op = "ep_all_to_all";
  step.attrs.strings["direction"] = "dispatch";
  step.inputs = {whole("send_q"), whole("send_s"), whole("send_offsets")};
  step.outputs = {whole("recv_q"), whole("recv_s"), whole("recv_counts")};
  plan.steps.push_back(step);
}

TEST(ArtifactTest, MicroBatchExchangesKeepOnePart) {
  kiln::Artifact artifact = realisticArtifact();
  addMicroBatchExchange(artifact);
  EXPECT_NO_THROW(kiln::validateArtifact(artifact, "v.kiln"));
  // Rows received for another micro-batch, or for the whole step, than the
  // rows sent are not one exchange.
  for (const char *rows : {"X.1/2", "X"})
    expectMentions(
        invalidBecause([&](kiln::Artifact &a) {
          addMicroBatchExchange(a);
          a.plans["decode"].buffers.end()[-3].rows = rows;
        }),
        {"ep_all_to_all", "buffer \"recv_q\"", "expected \"X.0/2\""});
}
