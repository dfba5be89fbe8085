//===- KilnOps.cpp - kiln operations and their verifiers ------------------===//
//
// Every verifier names the operand it rejects, the shape it expected and the
// relation that fixed it ("[M, K/128]"), so that a graph written by hand or by
// a front end is easy to fix. Dynamic dimensions are accepted wherever a
// static one is; relations are checked between the dimensions that are known.
//
//===----------------------------------------------------------------------===//

#include "kiln/Dialect/Kiln/KilnOps.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/TypeUtilities.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/MathExtras.h"

#include <cmath>
#include <limits>
#include <string>
#include <tuple>

using namespace mlir;
using namespace kiln;

namespace {

/// Elements per FP8 scale along each scaled dimension (1×128 tiles, 128×128
/// blocks).
constexpr int64_t kScaleBlock = 128;
/// FP8 rows must be 16-byte aligned for TMA: K in elements.
constexpr int64_t kKAlignment = 16;
constexpr int64_t kDynamic = ShapedType::kDynamic;

bool isDynamic(int64_t dim) { return ShapedType::isDynamic(dim); }

/// Two dimensions that may be equal: equal, or at least one unknown.
bool compatible(int64_t lhs, int64_t rhs) {
  return isDynamic(lhs) || isDynamic(rhs) || lhs == rhs;
}

/// Number of 128-wide scale blocks covering `dim` (unknown stays unknown).
int64_t scaleBlocks(int64_t dim) {
  return isDynamic(dim) ? kDynamic : llvm::divideCeil(dim, kScaleBlock);
}

/// The first known of two dimensions that must agree.
int64_t known(int64_t lhs, int64_t rhs) { return isDynamic(lhs) ? rhs : lhs; }

/// `dim + offset`, unknown if `dim` is.
int64_t plus(int64_t dim, int64_t offset) {
  return isDynamic(dim) ? kDynamic : dim + offset;
}

std::string formatShape(ArrayRef<int64_t> shape) {
  if (shape.empty())
    return "a scalar";
  std::string text;
  for (auto [index, dim] : llvm::enumerate(shape)) {
    if (index)
      text += 'x';
    text += isDynamic(dim) ? std::string("?") : std::to_string(dim);
  }
  return text;
}

/// Checks that `value` is a ranked tensor of rank `rank`; `layout` names its
/// dimensions, e.g. "[M, K]".
LogicalResult verifyRank(Operation *op, StringRef name, Value value,
                         int64_t rank, StringRef layout) {
  auto type = cast<RankedTensorType>(value.getType());
  if (type.getRank() == rank)
    return success();
  return op->emitOpError() << "'" << name << "' must have rank " << rank << " "
                           << layout << ", got " << type;
}

/// Checks that `value` has `expected` as its shape (unknown dimensions match
/// anything); `layout` names the dimensions, e.g. "[M, K/128]".
LogicalResult verifyShape(Operation *op, StringRef name, Value value,
                          ArrayRef<int64_t> expected, StringRef layout) {
  auto type = cast<RankedTensorType>(value.getType());
  ArrayRef<int64_t> shape = type.getShape();
  bool matches = shape.size() == expected.size() &&
                 llvm::all_of(llvm::zip_equal(shape, expected), [](auto dims) {
                   return compatible(std::get<0>(dims), std::get<1>(dims));
                 });
  if (matches)
    return success();
  return op->emitOpError() << "'" << name << "' must have shape " << layout
                           << " = " << formatShape(expected) << ", got "
                           << type;
}

/// Checks the contraction dimension shared by an FP8 operand pair: equal in
/// both operands and a multiple of 16 (the last 128-element scale block may
/// be partial).
LogicalResult verifyContraction(Operation *op, int64_t aK, int64_t bK) {
  if (!compatible(aK, bK))
    return op->emitOpError()
           << "contraction dimensions differ: 'a' has K = " << aK
           << ", 'b' has K = " << bK;
  // A partial last 128-block is zero-padded (the scales are ceil-divided);
  // K only has to give TMA a row stride that is a multiple of 16 bytes.
  int64_t k = known(aK, bK);
  if (!isDynamic(k) && k % kKAlignment != 0)
    return op->emitOpError() << "contraction dimension K = " << k
                             << " must be a multiple of " << kKAlignment;
  return success();
}

Type elementType(Value value) {
  return cast<ShapedType>(value.getType()).getElementType();
}

ArrayRef<int64_t> shapeOf(Value value) {
  return cast<ShapedType>(value.getType()).getShape();
}

/// Types that may stand for each other: same element type, shapes that
/// agree wherever both are known.
bool typesCompatible(Type lhs, Type rhs) {
  if (lhs == rhs)
    return true;
  auto lhsTensor = dyn_cast<RankedTensorType>(lhs);
  auto rhsTensor = dyn_cast<RankedTensorType>(rhs);
  return lhsTensor && rhsTensor &&
         lhsTensor.getElementType() == rhsTensor.getElementType() &&
         succeeded(verifyCompatibleShape(lhsTensor, rhsTensor));
}

} // namespace

//===----------------------------------------------------------------------===//
// Custom assembly directives
//===----------------------------------------------------------------------===//

/// An optional operand introduced by a keyword: ` keyword %value` or nothing
/// (the directive prints its own leading space, so an absent operand leaves
/// none).
/// Unlike an ODS optional group, the keyword then requires its operand, so
/// `bias` alone is an error rather than a silently absent bias.
static ParseResult
parseKeywordOperand(OpAsmParser &parser,
                    std::optional<OpAsmParser::UnresolvedOperand> &operand,
                    StringRef keyword) {
  if (failed(parser.parseOptionalKeyword(keyword)))
    return success();
  OpAsmParser::UnresolvedOperand value;
  if (parser.parseOperand(value))
    return failure();
  operand = value;
  return success();
}

static void printKeywordOperand(OpAsmPrinter &printer, Operation *,
                                Value operand, StringRef keyword) {
  if (operand)
    printer << ' ' << keyword << ' ' << operand;
}

//===----------------------------------------------------------------------===//
// QuantizeOp
//===----------------------------------------------------------------------===//

LogicalResult QuantizeOp::verify() {
  ArrayRef<int64_t> shape = shapeOf(getInput());
  if (failed(verifyShape(*this, "values", getValues(), shape, "of 'input'")))
    return failure();

  SmallVector<int64_t> scales(shape);
  switch (getGranularity()) {
  case ScaleGranularity::Tile1x128:
    if (shape.empty())
      return emitOpError("tile_1x128 quantization needs a tensor of rank >= 1");
    scales.back() = scaleBlocks(scales.back());
    return verifyShape(*this, "scales", getScales(), scales,
                       "[..., ceil(K/128)]");
  case ScaleGranularity::Block128x128:
    if (shape.size() < 2)
      return emitOpError() << "block_128x128 quantization needs a tensor of "
                              "rank >= 2 ([..., N, K]), got "
                           << getInput().getType();
    scales[scales.size() - 2] = scaleBlocks(scales[scales.size() - 2]);
    scales.back() = scaleBlocks(scales.back());
    return verifyShape(*this, "scales", getScales(), scales,
                       "[..., ceil(N/128), ceil(K/128)]");
  }
  llvm_unreachable("unknown scale granularity");
}

//===----------------------------------------------------------------------===//
// ScaledMatmulOp
//===----------------------------------------------------------------------===//

LogicalResult ScaledMatmulOp::verify() {
  if (failed(verifyRank(*this, "a", getA(), 2, "[M, K]")) ||
      failed(verifyRank(*this, "b", getB(), 2, "[N, K]")))
    return failure();
  ArrayRef<int64_t> a = shapeOf(getA()), b = shapeOf(getB());
  int64_t m = a[0], n = b[0];
  if (failed(verifyContraction(*this, a[1], b[1])))
    return failure();
  int64_t kBlocks = scaleBlocks(known(a[1], b[1]));
  if (failed(verifyShape(*this, "a_scales", getAScales(), {m, kBlocks},
                         "[M, K/128]")) ||
      failed(verifyShape(*this, "b_scales", getBScales(),
                         {scaleBlocks(n), kBlocks}, "[ceil(N/128), K/128]")))
    return failure();
  return verifyShape(*this, "result", getResult(), {m, n}, "[M, N]");
}

//===----------------------------------------------------------------------===//
// GroupedScaledMatmulOp
//===----------------------------------------------------------------------===//

LogicalResult GroupedScaledMatmulOp::verify() {
  if (failed(verifyRank(*this, "b", getB(), 3, "[G, N, K]")))
    return failure();
  ArrayRef<int64_t> b = shapeOf(getB());
  int64_t groups = b[0], n = b[1];

  bool masked = getLayout() == GroupLayout::Masked;
  if (failed(verifyRank(*this, "a", getA(), masked ? 3 : 2,
                        masked ? "[G, C, K] in the masked layout"
                               : "[T, K] in the contiguous layout")))
    return failure();
  ArrayRef<int64_t> a = shapeOf(getA());
  if (failed(verifyContraction(*this, a.back(), b[2])))
    return failure();
  int64_t kBlocks = scaleBlocks(known(a.back(), b[2]));

  // Group offsets and counts are i32, which also keeps G + 1 from overflowing.
  if (!isDynamic(groups) && groups > std::numeric_limits<int32_t>::max())
    return emitOpError() << "'b' has " << groups
                         << " groups; at most 2^31 - 1 fit i32 group sizes";
  if (masked && !compatible(a[0], groups))
    return emitOpError() << "group counts differ: 'a' has " << a[0]
                         << " groups, 'b' has " << groups;
  groups = masked ? known(a[0], groups) : groups;

  if (failed(verifyShape(*this, "b_scales", getBScales(),
                         {groups, scaleBlocks(n), kBlocks},
                         "[G, ceil(N/128), K/128]")))
    return failure();

  if (masked) {
    int64_t capacity = a[1];
    if (failed(verifyShape(*this, "a_scales", getAScales(),
                           {groups, capacity, kBlocks}, "[G, C, K/128]")) ||
        failed(verifyShape(*this, "groups", getGroups(), {groups},
                           "[G] (row counts)")))
      return failure();
    return verifyShape(*this, "result", getResult(), {groups, capacity, n},
                       "[G, C, N]");
  }
  int64_t rows = a[0];
  if (failed(verifyShape(*this, "a_scales", getAScales(), {rows, kBlocks},
                         "[T, K/128]")) ||
      failed(verifyShape(*this, "groups", getGroups(), {plus(groups, 1)},
                         "[G+1] (row offsets)")))
    return failure();
  return verifyShape(*this, "result", getResult(), {rows, n}, "[T, N]");
}

//===----------------------------------------------------------------------===//
// MatmulOp, RMSNormOp, SwiGLUOp
//===----------------------------------------------------------------------===//

LogicalResult MatmulOp::verify() {
  if (failed(verifyRank(*this, "a", getA(), 2, "[M, K]")) ||
      failed(verifyRank(*this, "b", getB(), 2, "[N, K]")))
    return failure();
  ArrayRef<int64_t> a = shapeOf(getA()), b = shapeOf(getB());
  if (!compatible(a[1], b[1]))
    return emitOpError() << "contraction dimensions differ: 'a' has K = "
                         << a[1] << ", 'b' has K = " << b[1];
  return verifyShape(*this, "result", getResult(), {a[0], b[0]}, "[M, N]");
}

LogicalResult RMSNormOp::verify() {
  ArrayRef<int64_t> shape = shapeOf(getInput());
  if (shape.empty())
    return emitOpError("'input' must have rank >= 1");
  if (failed(verifyShape(*this, "weight", getWeight(), {shape.back()},
                         "[H] (the last dimension of 'input')")) ||
      failed(verifyShape(*this, "result", getResult(), shape, "of 'input'")))
    return failure();
  float epsilon = getEpsilon().convertToFloat();
  if (!(epsilon > 0.0f) || !std::isfinite(epsilon))
    return emitOpError() << "epsilon must be positive and finite, got "
                         << epsilon;
  return success();
}

LogicalResult SwiGLUOp::verify() {
  ArrayRef<int64_t> shape = shapeOf(getGate());
  if (shape.empty())
    return emitOpError("'gate' must have rank >= 1");
  if (Value up = getUp()) {
    if (failed(verifyShape(*this, "up", up, shape, "of 'gate'")))
      return failure();
    return verifyShape(*this, "result", getResult(), shape, "of 'gate'");
  }
  SmallVector<int64_t> result(shape);
  if (!isDynamic(result.back())) {
    if (result.back() % 2 != 0)
      return emitOpError() << "the last dimension of the fused gate/up input ("
                           << shape.back() << ") must be even: gate and up "
                           << "halves";
    result.back() /= 2;
  }
  return verifyShape(*this, "result", getResult(), result,
                     "of 'gate' with the last dimension halved");
}

//===----------------------------------------------------------------------===//
// AddOp, EmbedOp, SelectRowsOp
//===----------------------------------------------------------------------===//

LogicalResult AddOp::verify() {
  ArrayRef<int64_t> shape = shapeOf(getLhs());
  if (failed(verifyShape(*this, "rhs", getRhs(), shape, "of 'lhs'")))
    return failure();
  return verifyShape(*this, "result", getResult(), shape, "of 'lhs'");
}

LogicalResult EmbedOp::verify() {
  if (failed(verifyRank(*this, "tokens", getTokens(), 1, "[T]")) ||
      failed(verifyRank(*this, "table", getTable(), 2, "[V, H]")))
    return failure();
  return verifyShape(*this, "result", getResult(),
                     {shapeOf(getTokens())[0], shapeOf(getTable())[1]},
                     "[T, H]");
}

LogicalResult SelectRowsOp::verify() {
  if (failed(verifyRank(*this, "input", getInput(), 2, "[T, C]")) ||
      failed(verifyRank(*this, "rows", getRows(), 1, "[S]")))
    return failure();
  if (elementType(getResult()) != elementType(getInput()))
    return emitOpError() << "result element type " << elementType(getResult())
                         << " must match the input's "
                         << elementType(getInput());
  return verifyShape(*this, "result", getResult(),
                     {shapeOf(getRows())[0], shapeOf(getInput())[1]}, "[S, C]");
}

//===----------------------------------------------------------------------===//
// MLAAttentionOp
//===----------------------------------------------------------------------===//

LogicalResult MLAAttentionOp::verify() {
  int64_t heads = getHeads(), nope = getQkNopeHeadDim(),
          rope = getQkRopeHeadDim(), v = getVHeadDim();
  if (static_cast<int64_t>(getLayer()) < 0)
    return emitOpError() << "layer = " << static_cast<int64_t>(getLayer())
                         << " must not be negative";
  if (heads < 1 || nope < 0 || v < 1)
    return emitOpError() << "needs heads >= 1, qk_nope_head_dim >= 0 and "
                            "v_head_dim >= 1, got "
                         << heads << ", " << nope << ", " << v;
  if (rope < 2 || rope % 2 != 0)
    return emitOpError() << "qk_rope_head_dim = " << rope
                         << " must be positive and even (RoPE rotates pairs)";
  if (static_cast<int64_t>(getRopeInvFreq().size()) != rope / 2)
    return emitOpError() << "'rope_inv_freq' has " << getRopeInvFreq().size()
                         << " frequencies; expected qk_rope_head_dim / 2 = "
                         << rope / 2;
  for (float scale : {getSoftmaxScale().convertToFloat(),
                      getAttentionFactor().convertToFloat()})
    if (!(scale > 0.0f) || !std::isfinite(scale))
      return emitOpError() << "softmax_scale and attention_factor must be "
                              "positive and finite, got "
                           << scale;

  for (auto [name, value, layout] :
       {std::make_tuple("q", getQ(), "[T, heads * (nope + rope)]"),
        std::make_tuple("latent", getLatent(), "[T, kv_lora_rank]"),
        std::make_tuple("k_pe", getKPe(), "[T, rope]"),
        std::make_tuple("kv_b", getKvB(),
                        "[heads * (nope + v), kv_lora_rank]")})
    if (failed(verifyRank(*this, name, value, 2, layout)))
      return failure();
  if (failed(verifyRank(*this, "positions", getPositions(), 1, "[T]")))
    return failure();
  int64_t tokens = shapeOf(getQ())[0];
  int64_t kvLora = known(shapeOf(getLatent())[1], shapeOf(getKvB())[1]);
  if (failed(verifyShape(*this, "q", getQ(), {tokens, heads * (nope + rope)},
                         "[T, heads * (nope + rope)]")) ||
      failed(verifyShape(*this, "latent", getLatent(), {tokens, kvLora},
                         "[T, kv_lora_rank]")) ||
      failed(
          verifyShape(*this, "k_pe", getKPe(), {tokens, rope}, "[T, rope]")) ||
      failed(
          verifyShape(*this, "positions", getPositions(), {tokens}, "[T]")) ||
      failed(verifyShape(*this, "kv_b", getKvB(), {heads * (nope + v), kvLora},
                         "[heads * (nope + v), kv_lora_rank]")))
    return failure();
  return verifyShape(*this, "result", getResult(), {tokens, heads * v},
                     "[T, heads * v]");
}

//===----------------------------------------------------------------------===//
// MoERouteOp
//===----------------------------------------------------------------------===//

LogicalResult MoERouteOp::verify() {
  if (failed(verifyRank(*this, "logits", getLogits(), 2, "[T, E]")))
    return failure();
  ArrayRef<int64_t> logits = shapeOf(getLogits());
  int64_t tokens = logits[0], experts = logits[1];
  if (isDynamic(experts))
    return emitOpError("'logits' needs a static expert dimension E");

  int64_t topK = getTopK(), nGroup = getNGroup(), topkGroup = getTopkGroup();
  if (topK < 1 || topK > experts)
    return emitOpError() << "top_k = " << topK << " must be in [1, " << experts
                         << "] (E)";
  if (nGroup < 1 || experts % nGroup != 0)
    return emitOpError() << "n_group = " << nGroup
                         << " must be positive and divide E = " << experts;
  if (topkGroup < 1 || topkGroup > nGroup)
    return emitOpError() << "topk_group = " << topkGroup << " must be in [1, "
                         << nGroup << "] (n_group)";
  int64_t perGroup = experts / nGroup;
  if (getBias() && nGroup > 1 && perGroup < 2)
    return emitOpError() << "groups of " << perGroup
                         << " expert cannot be scored by their top-2 sum; "
                            "need at least 2 experts per group";
  if (topK > topkGroup * perGroup)
    return emitOpError() << "top_k = " << topK << " exceeds the "
                         << topkGroup * perGroup
                         << " experts in the topk_group = " << topkGroup
                         << " kept groups";
  float scale = getRoutedScalingFactor().convertToFloat();
  if (!(scale > 0.0f) || !std::isfinite(scale))
    return emitOpError() << "routed_scaling_factor must be positive and "
                            "finite, got "
                         << scale;

  if (Value bias = getBias())
    if (failed(verifyShape(*this, "bias", bias, {experts}, "[E]")))
      return failure();
  if (failed(verifyShape(*this, "expert_ids", getExpertIds(), {tokens, topK},
                         "[T, top_k]")))
    return failure();
  return verifyShape(*this, "expert_weights", getExpertWeights(),
                     {tokens, topK}, "[T, top_k]");
}

//===----------------------------------------------------------------------===//
// MoEDispatchOp, MoECombineOp
//===----------------------------------------------------------------------===//

namespace {

/// Checks `expert_ids` or `expert_weights` ([T, top_k]) against the token
/// count and the number of experts.
LogicalResult verifyRouting(Operation *op, StringRef name, Value routing,
                            int64_t tokens, ExpertParallelAttr parallel) {
  if (failed(verifyRank(op, name, routing, 2, "[T, top_k]")))
    return failure();
  ArrayRef<int64_t> shape = shapeOf(routing);
  if (!compatible(shape[0], tokens))
    return op->emitOpError() << "'" << name << "' has " << shape[0]
                             << " rows for " << tokens << " tokens";
  if (!isDynamic(shape[1]) &&
      (shape[1] < 1 || shape[1] > parallel.getNumExperts()))
    return op->emitOpError()
           << "'" << name << "' has top_k = " << shape[1] << "; expected 1 to "
           << parallel.getNumExperts() << " (experts)";
  return success();
}

/// Checks the expert-major side of a dispatch or combine: `rows` holds the
/// received rows ([S, C, H] masked, [R, H] contiguous), `source` their
/// origins; returns the row shape without H through `rowShape`.
LogicalResult verifyExpertRows(Operation *op, GroupLayout layout,
                               StringRef name, Value rows, Value source,
                               ExpertParallelAttr parallel, int64_t hidden,
                               SmallVectorImpl<int64_t> &rowShape) {
  bool masked = layout == GroupLayout::Masked;
  if (failed(verifyRank(op, name, rows, masked ? 3 : 2,
                        masked ? "[S, C, H] in the masked layout"
                               : "[R, H] in the contiguous layout")))
    return failure();
  ArrayRef<int64_t> shape = shapeOf(rows);
  rowShape.assign(shape.begin(), shape.end() - 1);
  if (masked) {
    int64_t slots = parallel.getSlotsPerRank();
    if (!compatible(shape[0], slots))
      return op->emitOpError()
             << "'" << name << "' has " << shape[0]
             << " expert slots; the expert-parallel group has slots_per_rank = "
             << slots;
    rowShape[0] = slots;
  }
  SmallVector<int64_t> expected(rowShape.begin(), rowShape.end());
  expected.push_back(hidden);
  if (failed(verifyShape(op, name, rows, expected,
                         masked ? "[S, C, H]" : "[R, H]")))
    return failure();
  return verifyShape(op, "source", source, rowShape, masked ? "[S, C]" : "[R]");
}

} // namespace

LogicalResult MoEDispatchOp::verify() {
  if (failed(verifyRank(*this, "tokens", getTokens(), 2, "[T, H]")))
    return failure();
  ArrayRef<int64_t> tokens = shapeOf(getTokens());
  ExpertParallelAttr parallel = getParallel();
  bool fp8 = isa<Float8E4M3FNType>(elementType(getTokens()));
  if (fp8 != static_cast<bool>(getTokenScales()))
    return emitOpError() << (fp8 ? "FP8 tokens need their 1x128 "
                                   "'token_scales' operand"
                                 : "BF16 tokens take no 'token_scales'");
  if (static_cast<bool>(getTokenScales()) !=
      static_cast<bool>(getExpertScales()))
    return emitOpError() << "'expert_scales' result must be present exactly "
                            "when 'token_scales' is";
  if (elementType(getExpertTokens()) != elementType(getTokens()))
    return emitOpError() << "'expert_tokens' element type "
                         << elementType(getExpertTokens())
                         << " must match the tokens' "
                         << elementType(getTokens());

  int64_t hiddenBlocks = scaleBlocks(tokens[1]);
  if (fp8 && failed(verifyShape(*this, "token_scales", getTokenScales(),
                                {tokens[0], hiddenBlocks}, "[T, ceil(H/128)]")))
    return failure();
  if (failed(verifyRouting(*this, "expert_ids", getExpertIds(), tokens[0],
                           parallel)))
    return failure();

  SmallVector<int64_t> rowShape;
  if (failed(verifyExpertRows(*this, getLayout(), "expert_tokens",
                              getExpertTokens(), getSource(), parallel,
                              tokens[1], rowShape)))
    return failure();
  if (fp8) {
    SmallVector<int64_t> scales(rowShape);
    scales.push_back(hiddenBlocks);
    if (failed(verifyShape(*this, "expert_scales", getExpertScales(), scales,
                           getLayout() == GroupLayout::Masked
                               ? "[S, C, ceil(H/128)]"
                               : "[R, ceil(H/128)]")))
      return failure();
  }
  int64_t slots = parallel.getSlotsPerRank();
  if (getLayout() == GroupLayout::Masked)
    return verifyShape(*this, "group_sizes", getGroupSizes(), {slots},
                       "[S] (row counts)");
  return verifyShape(*this, "group_sizes", getGroupSizes(), {slots + 1},
                     "[S+1] (row offsets)");
}

LogicalResult MoECombineOp::verify() {
  if (failed(verifyRank(*this, "result", getResult(), 2, "[T, H]")))
    return failure();
  ArrayRef<int64_t> result = shapeOf(getResult());
  SmallVector<int64_t> rowShape;
  if (failed(verifyRouting(*this, "expert_weights", getExpertWeights(),
                           result[0], getParallel())))
    return failure();
  return verifyExpertRows(*this, getLayout(), "expert_outputs",
                          getExpertOutputs(), getSource(), getParallel(),
                          result[1], rowShape);
}

//===----------------------------------------------------------------------===//
// MoEPermuteOp, MoEUnpermuteOp
//===----------------------------------------------------------------------===//

LogicalResult MoEPermuteOp::verify() {
  if (failed(verifyRank(*this, "tokens", getTokens(), 2, "[T, H]")) ||
      failed(
          verifyRank(*this, "expert_ids", getExpertIds(), 2, "[T, top_k]")) ||
      failed(verifyRank(*this, "offsets", getOffsets(), 1, "[E+1]")))
    return failure();
  ArrayRef<int64_t> tokens = shapeOf(getTokens());
  bool fp8 = isa<Float8E4M3FNType>(elementType(getTokens()));
  if (fp8 != static_cast<bool>(getTokenScales()))
    return emitOpError() << (fp8 ? "FP8 tokens need their 1x128 "
                                   "'token_scales' operand"
                                 : "BF16 tokens take no 'token_scales'");
  if (static_cast<bool>(getTokenScales()) !=
      static_cast<bool>(getExpertScales()))
    return emitOpError() << "'expert_scales' result must be present exactly "
                            "when 'token_scales' is";
  if (elementType(getExpertTokens()) != elementType(getTokens()))
    return emitOpError() << "'expert_tokens' element type "
                         << elementType(getExpertTokens())
                         << " must match the tokens' "
                         << elementType(getTokens());
  int64_t hiddenBlocks = scaleBlocks(tokens[1]);
  if (fp8 && failed(verifyShape(*this, "token_scales", getTokenScales(),
                                {tokens[0], hiddenBlocks}, "[T, ceil(H/128)]")))
    return failure();
  ArrayRef<int64_t> ids = shapeOf(getExpertIds());
  if (failed(verifyShape(*this, "expert_ids", getExpertIds(),
                         {tokens[0], ids[1]}, "[T, top_k]")))
    return failure();
  int64_t routed =
      isDynamic(tokens[0]) || isDynamic(ids[1]) ? kDynamic : tokens[0] * ids[1];
  if (failed(verifyShape(*this, "expert_tokens", getExpertTokens(),
                         {routed, tokens[1]}, "[T * top_k, H]")))
    return failure();
  if (fp8 &&
      failed(verifyShape(*this, "expert_scales", getExpertScales(),
                         {routed, hiddenBlocks}, "[T * top_k, ceil(H/128)]")))
    return failure();
  int64_t offsets = shapeOf(getOffsets())[0];
  if (!isDynamic(offsets) && offsets < 2)
    return emitOpError() << "'offsets' has " << offsets
                         << " entries; expected E+1 for E >= 1 experts";
  return verifyShape(*this, "rows", getRows(), ids, "of 'expert_ids'");
}

LogicalResult MoEUnpermuteOp::verify() {
  if (failed(verifyRank(*this, "expert_outputs", getExpertOutputs(), 2,
                        "[R, H]")) ||
      failed(verifyRank(*this, "rows", getRows(), 2, "[T, top_k]")))
    return failure();
  ArrayRef<int64_t> rows = shapeOf(getRows());
  ArrayRef<int64_t> outputs = shapeOf(getExpertOutputs());
  if (failed(verifyShape(*this, "weights", getWeights(), rows, "of 'rows'")))
    return failure();
  int64_t routed =
      isDynamic(rows[0]) || isDynamic(rows[1]) ? kDynamic : rows[0] * rows[1];
  if (!compatible(outputs[0], routed))
    return emitOpError() << "'expert_outputs' has " << outputs[0]
                         << " rows; expected T * top_k = " << routed;
  return verifyShape(*this, "result", getResult(), {rows[0], outputs[1]},
                     "[T, H]");
}

//===----------------------------------------------------------------------===//
// OverlapOp, StageOp
//===----------------------------------------------------------------------===//

unsigned OverlapOp::getNumMicroBatches() {
  unsigned perBatch = getBody().getNumArguments();
  return perBatch ? getInputs().size() / perBatch : 0;
}

LogicalResult OverlapOp::verify() {
  Block &body = getBody().front();
  unsigned perBatch = body.getNumArguments();
  if (perBatch == 0)
    return emitOpError("body must take the inputs of one micro-batch as "
                       "block arguments");
  unsigned numInputs = getInputs().size();
  if (numInputs % perBatch != 0 || numInputs / perBatch < 2)
    return emitOpError() << "has " << numInputs << " inputs for " << perBatch
                         << " body arguments; expected " << perBatch
                         << " inputs per micro-batch, for 2 or more "
                            "micro-batches";
  for (auto [index, input] : llvm::enumerate(getInputs())) {
    BlockArgument arg = body.getArgument(index % perBatch);
    if (!typesCompatible(input.getType(), arg.getType()))
      return emitOpError() << "input #" << index << " (micro-batch "
                           << index / perBatch << ") has type "
                           << input.getType() << ", but body argument #"
                           << arg.getArgNumber() << " has type "
                           << arg.getType();
  }
  return success();
}

LogicalResult OverlapOp::verifyRegions() {
  Block &body = getBody().front();
  bool hasCompute = false, hasCommunication = false;
  llvm::StringMap<StageOp> stages;
  for (Operation &op : body.without_terminator()) {
    auto stage = dyn_cast<StageOp>(op);
    if (!stage)
      return op.emitOpError()
             << "is not allowed directly in a 'kiln.overlap' body; put it in "
                "a 'kiln.stage'";
    auto [it, inserted] = stages.try_emplace(stage.getName(), stage);
    if (!inserted) {
      InFlightDiagnostic diag = stage.emitOpError() << "duplicate stage name '"
                                                    << stage.getName() << "'";
      diag.attachNote(it->second.getLoc()) << "first used here";
      return diag;
    }
    hasCompute |= stage.getKind() == StageKind::Compute;
    hasCommunication |= stage.getKind() == StageKind::Communication;
  }
  if (!hasCompute || !hasCommunication)
    return emitOpError("needs at least one 'compute' and one 'communication' "
                       "stage to overlap");

  auto yield = dyn_cast<YieldOp>(body.getTerminator());
  if (!yield)
    return emitOpError("body must end with 'kiln.yield'");
  unsigned perBatch = yield.getValues().size();
  unsigned numBatches = getNumMicroBatches();
  if (getNumResults() != perBatch * numBatches)
    return emitOpError() << "has " << getNumResults() << " results; expected "
                         << perBatch << " yielded values x " << numBatches
                         << " micro-batches = " << perBatch * numBatches;
  for (auto [index, result] : llvm::enumerate(getResults())) {
    Value yielded = yield.getValues()[index % perBatch];
    if (!typesCompatible(result.getType(), yielded.getType()))
      return emitOpError() << "result #" << index << " (micro-batch "
                           << index / perBatch << ") has type "
                           << result.getType() << ", but the body yields "
                           << yielded.getType();
  }
  return success();
}

LogicalResult StageOp::verifyRegions() {
  Block &body = getBody().front();
  if (body.getNumArguments() != getInputs().size())
    return emitOpError() << "stage '" << getName() << "' has "
                         << getInputs().size() << " inputs but its body takes "
                         << body.getNumArguments() << " arguments";
  for (auto [input, arg] : llvm::zip_equal(getInputs(), body.getArguments()))
    if (input.getType() != arg.getType())
      return emitOpError() << "stage '" << getName() << "': input #"
                           << arg.getArgNumber() << " has type "
                           << input.getType() << ", but body argument #"
                           << arg.getArgNumber() << " has type "
                           << arg.getType();

  auto yield = dyn_cast<YieldOp>(body.getTerminator());
  if (!yield)
    return emitOpError() << "stage '" << getName()
                         << "' must end with 'kiln.yield'";
  if (yield.getValues().getTypes() != getResultTypes())
    return emitOpError() << "stage '" << getName() << "' yields ("
                         << yield.getValues().getTypes()
                         << ") but its results are (" << getResultTypes()
                         << ")";

  // Data from other stages must arrive through operands, so that the stage
  // graph is the whole dependence structure the scheduler sees.
  Region *overlapBody = (*this)->getParentRegion();
  bool isCommunication = getKind() == StageKind::Communication;
  bool hasCollective = false;
  WalkResult walk = body.walk([&](Operation *op) {
    for (Value operand : op->getOperands())
      if (operand.getParentRegion() == overlapBody) {
        op->emitOpError() << "in stage '" << getName()
                          << "' uses a value of the enclosing 'kiln.overlap' "
                             "body; pass it as a stage input";
        return WalkResult::interrupt();
      }
    // At one rank dispatch and combine are the local permutation and its
    // inverse: they make a communication stage too, and stay allowed in
    // compute stages.
    if (isa<MoEPermuteOp, MoEUnpermuteOp>(op)) {
      hasCollective = true;
      return WalkResult::advance();
    }
    if (!isa<MoEDispatchOp, MoECombineOp>(op))
      return WalkResult::advance();
    hasCollective = true;
    if (isCommunication)
      return WalkResult::advance();
    op->emitOpError() << "in compute stage '" << getName()
                      << "'; dispatch and combine belong in a "
                         "'communication' stage";
    return WalkResult::interrupt();
  });
  if (walk.wasInterrupted())
    return failure();
  if (isCommunication && !hasCollective)
    return emitOpError() << "communication stage '" << getName()
                         << "' contains no 'kiln.moe_dispatch', "
                            "'kiln.moe_combine', 'kiln.moe_permute' or "
                            "'kiln.moe_unpermute'";
  return success();
}

#define GET_OP_CLASSES
#include "kiln/Dialect/Kiln/KilnOps.cpp.inc"
