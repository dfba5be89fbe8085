//===- ModelGraph.cpp - DeepSeek-V3 config.json to kiln IR ----------------===//
//
// Mirrors CpuModel::Impl::runBlock and its helpers: the residual stream is
// FP32; every linear that DeepSeek-V3 stores in FP8 reads its input
// quantized per 1x128 tile; the router, the output head and the norms stay
// high precision. Ops are named (NameLoc) after what they compute, per
// layer ("l3.q_a"): the plan's buffers take these names.
//
//===----------------------------------------------------------------------===//

#include "kiln/FrontEnd/ModelGraph.h"

#include "kiln/Dialect/Kiln/KilnOps.h"
#include "kiln/FrontEnd/GraphConventions.h"
#include "kiln/checkpoint.h"
#include "kiln/cpu_model.h"
#include "kiln/error.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "llvm/Support/MathExtras.h"

#include <algorithm>
#include <map>

using namespace mlir;

namespace kiln {

namespace {

/// HF builds q_a_layernorm and kv_a_layernorm with the default eps, not
/// rms_norm_eps (see cpu_model.cpp).
constexpr float kLatentNormEps = 1e-6f;
constexpr int64_t kScaleBlock = 128;

int64_t scaleBlocks(int64_t dim) { return llvm::divideCeil(dim, kScaleBlock); }

/// Builds one step function.
class StepBuilder {
public:
  StepBuilder(MLIRContext &context, const ModelConfig &config,
              const RopeParameters &rope, Location origin)
      : context(context), c(config), rope(rope), origin(origin),
        builder(&context) {
    f32 = builder.getF32Type();
    bf16 = builder.getBF16Type();
    f8 = builder.getType<Float8E4M3FNType>();
    i32 = builder.getI32Type();
  }

  func::FuncOp build(ModuleOp module, const ModelStep &step) {
    tokens = step.maxTokens;
    sequences = step.maxSequences;
    microBatches = std::max<int64_t>(1, step.overlapMicroBatches);
    fuseExpertSwiGLU = step.fuseExpertSwiGLU;
    if (microBatches > 1 && tokens % microBatches != 0)
      throw Error("step '" + step.name + "' of " + std::to_string(tokens) +
                  " tokens cannot be split into " +
                  std::to_string(microBatches) +
                  " equal micro-batches; choose a chunk they divide");
    builder.setInsertionPointToEnd(module.getBody());
    auto func = func::FuncOp::create(builder, origin, step.name,
                                     builder.getFunctionType({}, {}));
    body = func.addEntryBlock();
    builder.setInsertionPointToStart(body);

    Value tokenIds = input(kTokensInput, tokens);
    positions = input(kPositionsInput, tokens);
    Value lastRows = input(kLastRowsInput, sequences);

    Value hidden = EmbedOp::create(
        builder, at("hidden"), tensor({tokens, c.hiddenSize}, f32), tokenIds,
        weight("model.embed_tokens.weight", {c.vocabSize, c.hiddenSize}, bf16));
    for (int64_t layer = 0; layer < c.numHiddenLayers; ++layer)
      hidden = decoderLayer(layer, hidden);

    Value normed = rmsNorm(hidden, "model.norm.weight",
                           static_cast<float>(c.rmsNormEps), f32, "final_norm");
    Value last = SelectRowsOp::create(builder, at("last_hidden"),
                                      tensor({sequences, c.hiddenSize}, f32),
                                      normed, lastRows);
    Value head = weight(c.tieWordEmbeddings ? "model.embed_tokens.weight"
                                            : "lm_head.weight",
                        {c.vocabSize, c.hiddenSize}, bf16);
    Value logits =
        MatmulOp::create(builder, at(kLogitsBuffer),
                         tensor({sequences, c.vocabSize}, f32), last, head);
    func::ReturnOp::create(builder, origin, logits);

    func.setType(
        builder.getFunctionType(body->getArgumentTypes(), {logits.getType()}));
    for (auto [index, attrs] : llvm::enumerate(argAttrs))
      func.setArgAttrs(index, attrs);
    return func;
  }

private:
  RankedTensorType tensor(ArrayRef<int64_t> shape, Type element) {
    return RankedTensorType::get(shape, element);
  }

  Location at(const std::string &name) {
    return NameLoc::get(builder.getStringAttr(name), origin);
  }

  Value input(const char *name, int64_t rows) {
    Value arg = body->addArgument(tensor({rows}, i32), at(name));
    argAttrs.push_back(builder.getDictionaryAttr(
        builder.getNamedAttr(kInputAttrName, builder.getStringAttr(name))));
    return arg;
  }

  /// The argument holding checkpoint tensor `name` (one per name).
  Value weight(const std::string &name, ArrayRef<int64_t> shape, Type element) {
    auto [it, inserted] = weights.try_emplace(name);
    if (!inserted)
      return it->second;
    it->second = body->addArgument(tensor(shape, element), at(name));
    argAttrs.push_back(builder.getDictionaryAttr(
        builder.getNamedAttr(kWeightAttrName, builder.getStringAttr(name))));
    return it->second;
  }

  /// An FP8 linear weight [n, k] and its 128x128 block scales.
  std::pair<Value, Value> linearWeight(const std::string &name, int64_t n,
                                       int64_t k) {
    return {weight(name, {n, k}, f8),
            weight(scaleInvName(name), {scaleBlocks(n), scaleBlocks(k)}, f32)};
  }

  /// All routed experts' weights [E, n, k] of `pattern` (with "{e}").
  std::pair<Value, Value> expertWeights(const std::string &pattern, int64_t n,
                                        int64_t k) {
    int64_t experts = c.nRoutedExperts;
    return {weight(pattern, {experts, n, k}, f8),
            weight(scaleInvName(pattern),
                   {experts, scaleBlocks(n), scaleBlocks(k)}, f32)};
  }

  Value rmsNorm(Value x, const std::string &weightName, float eps, Type element,
                const std::string &name) {
    auto type = cast<RankedTensorType>(x.getType());
    int64_t size = type.getDimSize(1);
    return RMSNormOp::create(
        builder, at(name), tensor(type.getShape(), element), x,
        weight(weightName, {size}, bf16), builder.getF32FloatAttr(eps));
  }

  /// 1x128 quantization; the results are buffers `name`_q and `name`_s.
  std::pair<Value, Value> quantize(Value x, const std::string &name) {
    auto type = cast<RankedTensorType>(x.getType());
    int64_t rows = type.getDimSize(0), cols = type.getDimSize(1);
    auto op = QuantizeOp::create(builder, at(name), tensor({rows, cols}, f8),
                                 tensor({rows, scaleBlocks(cols)}, f32), x,
                                 ScaleGranularity::Tile1x128);
    return {op.getValues(), op.getScales()};
  }

  Value gemm(std::pair<Value, Value> input, const std::string &weightName,
             int64_t n, const std::string &name) {
    auto type = cast<RankedTensorType>(input.first.getType());
    auto [w, ws] = linearWeight(weightName, n, type.getDimSize(1));
    return ScaledMatmulOp::create(builder, at(name),
                                  tensor({type.getDimSize(0), n}, bf16),
                                  input.first, input.second, w, ws);
  }

  Value groupedGemm(std::pair<Value, Value> input, Value offsets,
                    const std::string &pattern, int64_t n,
                    const std::string &name) {
    auto type = cast<RankedTensorType>(input.first.getType());
    auto [w, ws] = expertWeights(pattern, n, type.getDimSize(1));
    return GroupedScaledMatmulOp::create(
        builder, at(name), tensor({type.getDimSize(0), n}, bf16),
        GroupLayout::Contiguous, input.first, input.second, w, ws, offsets);
  }

  Value columns(Value x, int64_t first, int64_t count,
                const std::string &name) {
    int64_t rows = cast<RankedTensorType>(x.getType()).getDimSize(0);
    SmallVector<OpFoldResult> offsets = {builder.getIndexAttr(0),
                                         builder.getIndexAttr(first)};
    SmallVector<OpFoldResult> sizes = {builder.getIndexAttr(rows),
                                       builder.getIndexAttr(count)};
    SmallVector<OpFoldResult> strides = {builder.getIndexAttr(1),
                                         builder.getIndexAttr(1)};
    return tensor::ExtractSliceOp::create(builder, at(name), x, offsets, sizes,
                                          strides);
  }

  static int64_t rowsOf(Value x) {
    return cast<RankedTensorType>(x.getType()).getDimSize(0);
  }

  Value add(Value lhs, Value rhs, const std::string &name) {
    return AddOp::create(builder, at(name), lhs.getType(), lhs, rhs);
  }

  /// SwiGLU of two projections, quantized for the next FP8 GEMM.
  std::pair<Value, Value> swigluQuantized(Value gate, Value up,
                                          const std::string &name) {
    auto type = cast<RankedTensorType>(gate.getType());
    Value act = SwiGLUOp::create(builder, at(name + "_act"),
                                 tensor(type.getShape(), f32), gate, up);
    return quantize(act, name);
  }

  Value attention(int64_t layer, std::pair<Value, Value> x,
                  const std::string &p, const std::string &n) {
    const std::string attn = p + "self_attn.";
    const int64_t heads = c.numAttentionHeads;
    Value q;
    if (c.qLoraRank > 0) {
      Value qa = gemm(x, attn + "q_a_proj.weight", c.qLoraRank, n + "q_a");
      Value qaNormed = rmsNorm(qa, attn + "q_a_layernorm.weight",
                               kLatentNormEps, f32, n + "q_a_norm");
      q = gemm(quantize(qaNormed, n + "q_a_normed"), attn + "q_b_proj.weight",
               heads * c.qkHeadDim(), n + "q");
    } else {
      q = gemm(x, attn + "q_proj.weight", heads * c.qkHeadDim(), n + "q");
    }
    Value kv = gemm(x, attn + "kv_a_proj_with_mqa.weight",
                    c.kvLoraRank + c.qkRopeHeadDim, n + "kv_a");
    Value latent = rmsNorm(columns(kv, 0, c.kvLoraRank, n + "kv_a_latent"),
                           attn + "kv_a_layernorm.weight", kLatentNormEps, bf16,
                           n + "latent");
    Value kPe = columns(kv, c.kvLoraRank, c.qkRopeHeadDim, n + "k_pe");
    Value kvB =
        weight(attn + "kv_b_proj.weight",
               {heads * (c.qkNopeHeadDim + c.vHeadDim), c.kvLoraRank}, bf16);
    Value attended = MLAAttentionOp::create(
        builder, at(n + "attn"), tensor({tokens, heads * c.vHeadDim}, bf16), q,
        latent, kPe, positions, kvB, builder.getI64IntegerAttr(layer),
        builder.getI64IntegerAttr(heads),
        builder.getI64IntegerAttr(c.qkNopeHeadDim),
        builder.getI64IntegerAttr(c.qkRopeHeadDim),
        builder.getI64IntegerAttr(c.vHeadDim),
        builder.getF32FloatAttr(rope.softmaxScale),
        builder.getF32FloatAttr(rope.attentionFactor),
        builder.getDenseF32ArrayAttr(rope.invFreq));
    return gemm(quantize(attended, n + "attn_out"), attn + "o_proj.weight",
                c.hiddenSize, n + "o_proj");
  }

  Value denseMlp(Value hidden, const std::string &p, const std::string &n) {
    auto x =
        quantize(rmsNorm(hidden, p + "post_attention_layernorm.weight",
                         static_cast<float>(c.rmsNormEps), f32, n + "mlp_norm"),
                 n + "mlp_in");
    Value gate =
        gemm(x, p + "mlp.gate_proj.weight", c.intermediateSize, n + "gate");
    Value up = gemm(x, p + "mlp.up_proj.weight", c.intermediateSize, n + "up");
    return gemm(swigluQuantized(gate, up, n + "mlp_act"),
                p + "mlp.down_proj.weight", c.hiddenSize, n + "down");
  }

  /// The router's choices and the layer's quantized input.
  struct MoERouting {
    std::pair<Value, Value> x;
    Value expertIds, expertWeights;
  };

  MoERouting moeRoute(Value hidden, const std::string &p,
                      const std::string &n) {
    const int64_t experts = c.nRoutedExperts, topK = c.numExpertsPerTok;
    Value normed =
        rmsNorm(hidden, p + "post_attention_layernorm.weight",
                static_cast<float>(c.rmsNormEps), f32, n + "mlp_norm");
    Value logits = MatmulOp::create(
        builder, at(n + "router"), tensor({tokens, experts}, f32), normed,
        weight(p + "mlp.gate.weight", {experts, c.hiddenSize}, bf16));
    Value bias;
    if (c.topkMethod == "noaux_tc")
      bias = weight(p + "mlp.gate.e_score_correction_bias", {experts}, f32);
    // "greedy" ignores the groups; the others rank them (moe_route).
    bool grouped = c.topkMethod != "greedy";
    auto route = MoERouteOp::create(
        builder, at(n + "route"), tensor({tokens, topK}, i32),
        tensor({tokens, topK}, f32),
        RouterScoringAttr::get(&context, c.scoringFunc == "softmax"
                                             ? RouterScoring::Softmax
                                             : RouterScoring::Sigmoid),
        logits, bias, builder.getI64IntegerAttr(topK),
        builder.getI64IntegerAttr(grouped ? c.nGroup : 1),
        builder.getI64IntegerAttr(grouped ? c.topkGroup : 1),
        builder.getF32FloatAttr(static_cast<float>(c.routedScalingFactor)),
        builder.getBoolAttr(c.normTopkProb));
    return {quantize(normed, n + "mlp_in"), route.getExpertIds(),
            route.getExpertWeights()};
  }

  /// The tokens' rows grouped by expert (tokens, scales, offsets, rows).
  MoEPermuteOp moePermute(std::pair<Value, Value> x, Value expertIds,
                          const std::string &n) {
    const int64_t experts = c.nRoutedExperts, topK = c.numExpertsPerTok;
    const int64_t routed = tokens * topK;
    return MoEPermuteOp::create(
        builder, at(n + "experts_in"), tensor({routed, c.hiddenSize}, f8),
        tensor({routed, scaleBlocks(c.hiddenSize)}, f32),
        tensor({experts + 1}, i32), tensor({tokens, topK}, i32), x.first,
        x.second, expertIds);
  }

  /// The routed experts' outputs, one row per routed token.
  Value routedExperts(std::pair<Value, Value> routedIn, Value offsets,
                      const std::string &p, const std::string &n) {
    const std::string expert = p + "mlp.experts." + kExpertPlaceholder + ".";
    const int64_t inter = c.moeIntermediateSize;
    Value gate = groupedGemm(routedIn, offsets, expert + "gate_proj.weight",
                             inter, n + "experts_gate");
    Value up = groupedGemm(routedIn, offsets, expert + "up_proj.weight", inter,
                           n + "experts_up");
    std::pair<Value, Value> act;
    // The SwiGLU epilogue pairs 64 gate and 64 up columns of 128x128 scale
    // blocks per tile: I must be whole scale blocks.
    if (fuseExpertSwiGLU && inter % kScaleBlock == 0) {
      auto swiglu =
          SwiGLUOp::create(builder, at(n + "experts_act_act"),
                           tensor({rowsOf(gate), inter}, bf16), gate, up);
      swiglu->setAttr(kFuseSwiGLUAttrName, builder.getUnitAttr());
      act = quantize(swiglu, n + "experts_act");
    } else {
      act = swigluQuantized(gate, up, n + "experts_act");
    }
    return groupedGemm(act, offsets, expert + "down_proj.weight", c.hiddenSize,
                       n + "experts_down");
  }

  Value unpermute(Value down, Value rows, Value expertWeights,
                  const std::string &n) {
    return MoEUnpermuteOp::create(builder, at(n + "routed"),
                                  tensor({tokens, c.hiddenSize}, f32), down,
                                  rows, expertWeights);
  }

  /// The shared experts' output, or null without shared experts.
  Value sharedExpert(std::pair<Value, Value> x, const std::string &p,
                     const std::string &n) {
    if (c.nSharedExperts == 0)
      return {};
    const std::string shared = p + "mlp.shared_experts.";
    const int64_t sharedInter = c.moeIntermediateSize * c.nSharedExperts;
    Value sharedGate =
        gemm(x, shared + "gate_proj.weight", sharedInter, n + "shared_gate");
    Value sharedUp =
        gemm(x, shared + "up_proj.weight", sharedInter, n + "shared_up");
    return gemm(swigluQuantized(sharedGate, sharedUp, n + "shared_act"),
                shared + "down_proj.weight", c.hiddenSize, n + "shared_down");
  }

  Value moe(Value hidden, const std::string &p, const std::string &n) {
    MoERouting routing = moeRoute(hidden, p, n);
    MoEPermuteOp permute = moePermute(routing.x, routing.expertIds, n);
    Value down =
        routedExperts({permute.getExpertTokens(), permute.getExpertScales()},
                      permute.getOffsets(), p, n);
    Value out = unpermute(down, permute.getRows(), routing.expertWeights, n);
    Value shared = sharedExpert(routing.x, p, n);
    return shared ? add(out, shared, n + "moe_out") : out;
  }

  /// A kiln.stage named `name` whose body `build` makes from the block
  /// arguments standing for `inputs`; its results.
  SmallVector<Value>
  stage(StringRef name, StageKind kind, ValueRange inputs,
        llvm::function_ref<SmallVector<Value>(ValueRange)> build) {
    auto *block = new Block();
    for (Value input : inputs)
      block->addArgument(input.getType(), input.getLoc());
    SmallVector<Value> results;
    {
      OpBuilder::InsertionGuard guard(builder);
      builder.setInsertionPointToEnd(block);
      results = build(block->getArguments());
      YieldOp::create(builder, origin, results);
    }
    auto op = StageOp::create(builder, origin, ValueRange(results).getTypes(),
                              name, kind, inputs);
    op.getBody().push_back(block);
    return SmallVector<Value>(op.getResults());
  }

  /// hidden + moe(hidden), the step's tokens split into micro-batches of a
  /// kiln.overlap (ModelStep::overlapMicroBatches) and joined again by a
  /// tensor.concat. Per micro-batch: route (compute), dispatch
  /// (communication), routed and shared experts (compute), combine
  /// (communication), the residual adds (compute). The ops are the ones
  /// moe() and decoderLayer() make, in the same order per micro-batch.
  Value overlappedMoE(Value hidden, const std::string &p,
                      const std::string &n) {
    const int64_t parts = microBatches, rows = tokens / parts;
    auto partType = tensor({rows, c.hiddenSize}, f32);
    SmallVector<Value> inputs;
    for (int64_t part = 0; part < parts; ++part) {
      SmallVector<OpFoldResult> offsets = {builder.getIndexAttr(part * rows),
                                           builder.getIndexAttr(0)};
      SmallVector<OpFoldResult> sizes = {builder.getIndexAttr(rows),
                                         builder.getIndexAttr(c.hiddenSize)};
      SmallVector<OpFoldResult> strides = {builder.getIndexAttr(1),
                                           builder.getIndexAttr(1)};
      inputs.push_back(tensor::ExtractSliceOp::create(
          builder, at(n + "micro_batch"), partType, hidden, offsets, sizes,
          strides));
    }
    auto overlap =
        OverlapOp::create(builder, at(n + "moe_overlap"),
                          SmallVector<Type>(parts, partType), inputs);
    auto *body = new Block();
    overlap.getBody().push_back(body);
    Value x = body->addArgument(partType, at(n + "micro_batch"));
    {
      OpBuilder::InsertionGuard guard(builder);
      builder.setInsertionPointToEnd(body);
      const int64_t chunkTokens = tokens;
      tokens = rows;
      const bool hasShared = c.nSharedExperts != 0;
      auto routing =
          stage("route", StageKind::Compute, {x}, [&](ValueRange in) {
            MoERouting r = moeRoute(in[0], p, n);
            return SmallVector<Value>{r.x.first, r.x.second, r.expertIds,
                                      r.expertWeights};
          });
      auto dispatched =
          stage("dispatch", StageKind::Communication,
                {routing[0], routing[1], routing[2]}, [&](ValueRange in) {
                  MoEPermuteOp permute = moePermute({in[0], in[1]}, in[2], n);
                  return SmallVector<Value>(permute.getResults());
                });
      auto experts = stage(
          "experts", StageKind::Compute,
          {dispatched[0], dispatched[1], dispatched[2], routing[0], routing[1]},
          [&](ValueRange in) {
            SmallVector<Value> out = {
                routedExperts({in[0], in[1]}, in[2], p, n)};
            if (hasShared)
              out.push_back(sharedExpert({in[3], in[4]}, p, n));
            return out;
          });
      auto combined =
          stage("combine", StageKind::Communication,
                {experts[0], dispatched[3], routing[3]}, [&](ValueRange in) {
                  return SmallVector<Value>{unpermute(in[0], in[1], in[2], n)};
                });
      SmallVector<Value> residualInputs = {x, combined[0]};
      if (hasShared)
        residualInputs.push_back(experts[1]);
      auto residual = stage(
          "residual", StageKind::Compute, residualInputs, [&](ValueRange in) {
            Value mlp = hasShared ? add(in[1], in[2], n + "moe_out") : in[1];
            return SmallVector<Value>{add(in[0], mlp, n + "mlp_residual")};
          });
      YieldOp::create(builder, origin, residual);
      tokens = chunkTokens;
    }
    return tensor::ConcatOp::create(builder, at(n + "mlp_residual"), 0,
                                    overlap.getResults());
  }

  Value decoderLayer(int64_t layer, Value hidden) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    const std::string n = "l" + std::to_string(layer) + ".";
    auto x = quantize(rmsNorm(hidden, p + "input_layernorm.weight",
                              static_cast<float>(c.rmsNormEps), f32,
                              n + "attn_norm"),
                      n + "attn_in");
    hidden = add(hidden, attention(layer, x, p, n), n + "attn_residual");
    if (c.isMoELayer(layer) && microBatches > 1)
      return overlappedMoE(hidden, p, n);
    Value mlp =
        c.isMoELayer(layer) ? moe(hidden, p, n) : denseMlp(hidden, p, n);
    return add(hidden, mlp, n + "mlp_residual");
  }

  MLIRContext &context;
  const ModelConfig &c;
  const RopeParameters &rope;
  Location origin;
  OpBuilder builder;
  Type f32, bf16, f8, i32;

  int64_t tokens = 0, sequences = 0, microBatches = 1;
  bool fuseExpertSwiGLU = false;
  Block *body = nullptr;
  Value positions;
  std::map<std::string, Value> weights;
  SmallVector<DictionaryAttr> argAttrs;
};

} // namespace

std::vector<ModelStep> defaultModelSteps(int64_t maxBatch, int64_t prefillChunk,
                                         int64_t overlapMicroBatches) {
  // Every step fuses the routed experts' SwiGLU into their gate/up GEMM:
  // 2-7% faster at prefill, neutral at decode (bench/results/
  // swiglu-epilogue-h100.md), and a step that did not would keep the
  // separate gate and up weight stacks alive beside the interleaved one
  // (+7.5 GB per MoE layer at DeepSeek-V3 width).
  std::vector<ModelStep> steps = {
      {"decode", maxBatch, maxBatch, 1, /*fuseExpertSwiGLU=*/true}};
  if (maxBatch > kSmallDecodeTokens)
    steps.push_back({"decode_small", kSmallDecodeTokens, kSmallDecodeTokens, 1,
                     /*fuseExpertSwiGLU=*/true});
  steps.push_back({"prefill", prefillChunk, std::min(maxBatch, prefillChunk),
                   overlapMicroBatches, /*fuseExpertSwiGLU=*/true});
  return steps;
}

OwningOpRef<ModuleOp> buildModelGraph(MLIRContext &context,
                                      const ModelConfig &config,
                                      ArrayRef<ModelStep> steps,
                                      StringRef origin) {
  if (!config.quantization)
    throw Error(origin.str() +
                ": a BF16 checkpoint (no quantization_config) cannot be "
                "compiled: the plans run FP8 GEMMs on block-scaled E4M3 "
                "weights");
  RopeParameters rope = computeRopeParameters(config);
  context.loadDialect<KilnDialect, func::FuncDialect, tensor::TensorDialect>();
  Location location = FileLineColLoc::get(&context, origin, 1, 1);
  OwningOpRef<ModuleOp> module = ModuleOp::create(location);
  for (const ModelStep &step : steps)
    StepBuilder(context, config, rope, location).build(*module, step);
  return module;
}

} // namespace kiln
