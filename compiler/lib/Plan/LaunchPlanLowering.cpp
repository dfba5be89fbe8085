//===- LaunchPlanLowering.cpp - kiln IR to launch plans -------------------===//
//
// One walk over each step function: every op becomes one PlanStep of the op
// table of compiler/docs/artifact.md (rms_norm or swiglu followed by its
// only user, a 1x128 quantize, become one step with two outputs), every
// tensor value one buffer, column slices (tensor.extract_slice) views of
// their source. Then the buffers are placed in one arena (BufferPlacement).
//
// Rows are symbolic: the step inputs fix T (tokens) and S (last_rows), each
// op says how its results' rows follow from its operands', and MoE adds R
// (T * top_k routed rows) and E1 (experts + 1 offsets). Static shapes
// cannot tell T from S when both are 8, so the symbols flow with the data.
//
// A kiln.overlap (scheduled by kiln-schedule-overlap) is first flattened, in
// a copy of the function: its stages are cloned per micro-batch in schedule
// order, tagged with their stream and waits. Micro-batch m of n reads rows
// "T.m/n" of the step's buffers (row views) and writes its part of the
// tensor.concat that joins them. The steps then get event_record /
// event_wait steps for the schedule's waits, a fork into and a join out of
// each overlap region, and every buffer the region touches lives through
// the whole region, so that no buffer's space is reused while another
// stream may still read it.
//
//===----------------------------------------------------------------------===//

#include "kiln/Plan/LaunchPlanLowering.h"

#include "kiln/Dialect/Kiln/KilnOps.h"
#include "kiln/FrontEnd/GraphConventions.h"
#include "kiln/Plan/BufferPlacement.h"
#include "kiln/checkpoint.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/InterleavedRange.h"

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <set>

using namespace mlir;

namespace kiln {

namespace {

/// The ops a plan knows, for the message about one it does not.
constexpr const char *kLowerableOps =
    "kiln.embed, kiln.rms_norm, kiln.quantize, kiln.scaled_matmul, "
    "kiln.grouped_scaled_matmul (contiguous), kiln.matmul, kiln.add, "
    "kiln.swiglu, kiln.mla_attention, kiln.moe_route, kiln.moe_permute, "
    "kiln.moe_unpermute, kiln.select_rows, tensor.extract_slice (column "
    "slices, micro-batch row parts), tensor.concat (of micro-batch parts), "
    "kiln.overlap (scheduled)";

// Attributes of the ops flattened out of a kiln.overlap.
constexpr const char *kRegionAttr = "kiln.overlap_region";
constexpr const char *kEntryAttr = "kiln.overlap_entry";
constexpr const char *kStreamAttr = "kiln.overlap_stream";
constexpr const char *kWaitsAttr = "kiln.overlap_waits";

/// Replaces `overlap` by its stages cloned per micro-batch in the order of
/// its kiln.schedule, each op tagged with the region, its schedule entry,
/// stream and waits; its ops' names get ".mb<m>".
LogicalResult flattenOverlap(OverlapOp overlap, int64_t region) {
  auto schedule = overlap->getAttrOfType<ArrayAttr>("kiln.schedule");
  if (!schedule)
    return overlap.emitOpError("has no kiln.schedule; run "
                               "kiln-schedule-overlap before lowering");
  Block &body = overlap.getBody().front();
  const unsigned perBatch = body.getNumArguments();
  const unsigned batches = overlap.getNumMicroBatches();
  llvm::StringMap<StageOp> stages;
  for (auto stage : body.getOps<StageOp>())
    stages[stage.getName()] = stage;
  SmallVector<IRMapping> mappings(batches);
  for (unsigned m = 0; m < batches; ++m)
    for (unsigned i = 0; i < perBatch; ++i)
      mappings[m].map(body.getArgument(i),
                      overlap.getInputs()[m * perBatch + i]);
  OpBuilder builder(overlap);
  for (auto [index, attr] : llvm::enumerate(schedule)) {
    auto entry = dyn_cast<DictionaryAttr>(attr);
    auto batch = entry ? entry.getAs<IntegerAttr>("micro_batch") : nullptr;
    auto name = entry ? entry.getAs<StringAttr>("stage") : nullptr;
    auto stream = entry ? entry.getAs<IntegerAttr>("stream") : nullptr;
    auto waits = entry ? entry.getAs<DenseI64ArrayAttr>("waits") : nullptr;
    if (!batch || !name || !stream || !waits ||
        batch.getInt() >= static_cast<int64_t>(batches) || batch.getInt() < 0 ||
        !stages.count(name.getValue()) || stream.getInt() < 0 ||
        llvm::any_of(waits.asArrayRef(), [&](int64_t w) {
          return w < 0 || w >= static_cast<int64_t>(index);
        }))
      return overlap.emitOpError("kiln.schedule entry #")
             << index << " is not {micro_batch, stage, stream, waits} of "
             << "this overlap with waits on earlier entries";
    const int64_t m = batch.getInt();
    StageOp stage = stages[name.getValue()];
    IRMapping &mapping = mappings[m];
    Block &stageBody = stage.getBody().front();
    for (auto [arg, input] :
         llvm::zip_equal(stageBody.getArguments(), stage.getInputs())) {
      if (!mapping.contains(input))
        return overlap.emitOpError("kiln.schedule runs stage '")
               << name.getValue() << "' of micro-batch " << m
               << " before a stage it reads";
      mapping.map(arg, mapping.lookup(input));
    }
    for (Operation &op : stageBody.without_terminator()) {
      Operation *clone = builder.clone(op, mapping);
      clone->setAttr(kRegionAttr, builder.getI64IntegerAttr(region));
      clone->setAttr(kEntryAttr, builder.getI64IntegerAttr(index));
      clone->setAttr(kStreamAttr, stream);
      clone->setAttr(kWaitsAttr, waits);
      if (auto loc = dyn_cast<NameLoc>(clone->getLoc()))
        clone->setLoc(
            NameLoc::get(builder.getStringAttr(loc.getName().str() + ".mb" +
                                               std::to_string(m)),
                         loc.getChildLoc()));
    }
    for (auto [result, yielded] : llvm::zip_equal(
             stage.getResults(), stageBody.getTerminator()->getOperands()))
      mapping.map(result, mapping.lookup(yielded));
  }
  Operation *yield = body.getTerminator();
  const unsigned perYield = yield->getNumOperands();
  for (unsigned m = 0; m < batches; ++m)
    for (unsigned j = 0; j < perYield; ++j) {
      Value yielded = yield->getOperand(j);
      if (!mappings[m].contains(yielded))
        return overlap.emitOpError("kiln.schedule does not run every stage "
                                   "of micro-batch ")
               << m;
      overlap.getResult(m * perYield + j)
          .replaceAllUsesWith(mappings[m].lookup(yielded));
    }
  overlap.erase();
  return success();
}

std::string replaceExpert(std::string name, const std::string &by) {
  size_t at = name.find(kExpertPlaceholder);
  if (at != std::string::npos)
    name.replace(at, std::string(kExpertPlaceholder).size(), by);
  return name;
}

std::optional<std::string> dtypeName(Type type) {
  if (type.isF32())
    return "f32";
  if (type.isBF16())
    return "bf16";
  if (isa<Float8E4M3FNType>(type))
    return "f8e4m3";
  if (type.isSignlessInteger(32))
    return "i32";
  return std::nullopt;
}

int64_t dtypeBytes(const std::string &dtype) {
  return dtype == "bf16" ? 2 : dtype == "f8e4m3" ? 1 : 4;
}

/// The checkpoint's tensors by name, from the layout a config implies.
struct CheckpointLayout {
  std::map<std::string, ExpectedTensor> tensors;
  bool quantized = true;

  explicit CheckpointLayout(const ModelConfig &config)
      : quantized(config.quantization.has_value()) {
    for (ExpectedTensor &tensor : expectedTensors(config))
      tensors.emplace(tensor.name, std::move(tensor));
  }

  std::string dtype(const ExpectedTensor &tensor) const {
    switch (tensor.format) {
    case TensorFormat::BF16:
      return "bf16";
    case TensorFormat::F32:
      return "f32";
    case TensorFormat::Linear:
    case TensorFormat::LinearMaybeQuantized:
      return quantized ? "f8e4m3" : "bf16";
    }
    return "bf16";
  }
};

/// The double a reader of `value`'s shortest decimal form gets: 1e-06 for
/// the f32 nearest to 1e-6, not 9.9999999747524271e-07.
double decimal(float value) {
  char text[32];
  for (int digits = 1;; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, value);
    // 9 significant digits identify every float.
    if (digits == 9 || std::strtof(text, nullptr) == value)
      return std::strtod(text, nullptr);
  }
}

PlanStep makeStep(const char *op) {
  PlanStep step;
  step.op = op;
  return step;
}

/// Lowers one step function.
class StepLowering {
public:
  StepLowering(func::FuncOp func, const CheckpointLayout *layout,
               LoweredModel &model,
               std::map<std::string, ArtifactWeight> &weightsByName,
               ExpertParallelAttr expertParallel, int64_t gatherBytes)
      : func(func), layout(layout), model(model), weightsByName(weightsByName),
        expertParallel(expertParallel), gatherBytes(gatherBytes) {}

  FailureOr<LaunchPlan> lower() {
    if (!func.getBody().hasOneBlock())
      return func.emitError("step function @")
             << func.getSymName() << " must have one block";
    if (failed(bindArguments()))
      return failure();
    for (Operation &op : func.getBody().front()) {
      current = &op;
      if (!fused.contains(&op) && failed(lowerOp(&op)))
        return failure();
    }
    if (failed(insertStreamEvents()))
      return failure();
    placeBuffers();
    return plan;
  }

private:
  //===--------------------------------------------------------------------===//
  // Arguments: step inputs and weights
  //===--------------------------------------------------------------------===//

  LogicalResult bindArguments() {
    std::optional<int64_t> tokens, sequences;
    std::vector<std::pair<Value, std::string>> inputs;
    for (BlockArgument arg : func.getArguments()) {
      unsigned index = arg.getArgNumber();
      if (auto name =
              func.getArgAttrOfType<StringAttr>(index, kInputAttrName)) {
        auto type = dyn_cast<RankedTensorType>(arg.getType());
        StringRef input = name.getValue();
        bool known = input == kTokensInput || input == kPositionsInput ||
                     input == kLastRowsInput;
        if (!known)
          return mlir::emitError(arg.getLoc(), "argument #")
                 << index << " of @" << func.getSymName()
                 << " is the unknown step input '" << input
                 << "'; the plans know 'tokens', 'positions' and 'last_rows'";
        if (!type || type.getRank() != 1 || !type.hasStaticShape() ||
            !type.getElementType().isSignlessInteger(32))
          return mlir::emitError(arg.getLoc(), "step input '")
                 << input << "' of @" << func.getSymName()
                 << " must be a static 1-D i32 tensor, got " << arg.getType();
        std::string rows = input == kLastRowsInput ? "S" : "T";
        std::optional<int64_t> &extent =
            input == kLastRowsInput ? sequences : tokens;
        if (extent && *extent != type.getDimSize(0))
          return func.emitError("step inputs of @")
                 << func.getSymName() << " disagree on " << rows << ": "
                 << *extent << " and " << type.getDimSize(0);
        extent = type.getDimSize(0);
        rowSymbols[arg] = rows;
        if (input == kPositionsInput)
          positions = arg;
        inputs.emplace_back(arg, input.str());
        continue;
      }
      if (auto name =
              func.getArgAttrOfType<StringAttr>(index, kWeightAttrName)) {
        weightNames[arg] = name.getValue().str();
        continue;
      }
      return mlir::emitError(arg.getLoc(), "argument #")
             << index << " of @" << func.getSymName() << " (" << arg.getType()
             << ") is neither a step input ('" << kInputAttrName
             << "') nor a weight ('" << kWeightAttrName << "')";
    }
    if (!tokens)
      return func.emitError("step function @")
             << func.getSymName() << " has no '" << kTokensInput
             << "' input (i32 [T], {" << kInputAttrName << " = \""
             << kTokensInput << "\"})";
    plan.maxTokens = *tokens;
    plan.maxSequences = sequences.value_or(*tokens);
    for (auto &[arg, name] : inputs)
      if (failed(newBuffer(arg, name, /*pinned=*/true)))
        return failure();
    return success();
  }

  /// The checkpoint name of weight operand `value` of `op`, recorded in the
  /// weight table; failure if `value` is not a weight argument.
  FailureOr<std::string> weight(Operation *op, Value value, StringRef role) {
    auto it = weightNames.find(value);
    if (it == weightNames.end())
      return op->emitOpError("'")
             << role << "' must be a weight: a function argument with a '"
             << kWeightAttrName << "' attribute";
    if (failed(recordWeight(op, value, it->second)))
      return failure();
    return it->second;
  }

  /// Scales of FP8 weight `weightValue`: an argument named
  /// `<weight>_scale_inv` of the checkpoint's block-scale shape.
  LogicalResult checkScales(Operation *op, Value weightValue, Value scales) {
    auto it = weightNames.find(scales);
    std::string expected = scaleInvName(weightNames.lookup(weightValue));
    if (it == weightNames.end() || it->second != expected)
      return op->emitOpError("'b_scales' must be the weight argument '")
             << expected << "'";
    return success();
  }

  LogicalResult recordWeight(Operation *op, Value value,
                             const std::string &name) {
    auto type = cast<RankedTensorType>(value.getType());
    bool perExpert = name.find(kExpertPlaceholder) != std::string::npos;
    SmallVector<int64_t> shape(type.getShape());
    if (perExpert) {
      if (shape.size() < 2)
        return op->emitOpError("routed-expert weight '")
               << name << "' must be [E, ...], got " << type;
      shape.erase(shape.begin());
    }
    std::optional<std::string> graphDtype = dtypeName(type.getElementType());
    if (!graphDtype)
      return op->emitOpError("weight '")
             << name << "' has an element type no checkpoint stores: " << type;

    ArtifactWeight entry;
    entry.name = name;
    entry.shape.assign(shape.begin(), shape.end());
    entry.dtype = *graphDtype;
    if (layout) {
      auto found = layout->tensors.find(replaceExpert(name, "0"));
      if (found == layout->tensors.end())
        return op->emitOpError("weight '")
               << name << "' is not a tensor of the checkpoint the config "
               << "describes";
      const ExpectedTensor &expected = found->second;
      if (expected.shape != entry.shape)
        return op->emitOpError("weight '")
               << name << "' has shape " << type << " in the graph; the "
               << "checkpoint's is [" << llvm::interleaved(expected.shape)
               << "]" << (perExpert ? " per expert" : "");
      entry.dtype = layout->dtype(expected);
    } else if (auto stored = func.getArgAttrOfType<StringAttr>(
                   cast<BlockArgument>(value).getArgNumber(),
                   kStoredDtypeAttrName)) {
      entry.dtype = stored.getValue().str();
    }
    if (entry.dtype == *graphDtype)
      entry.transform = "none";
    else if (*graphDtype == "bf16" || *graphDtype == "f32")
      entry.transform = *graphDtype;
    else
      return op->emitOpError("weight '")
             << name << "' is stored as " << entry.dtype << " but read as "
             << *graphDtype
             << "; only conversions to bf16 or f32 happen at load";

    auto [it, inserted] = weightsByName.try_emplace(name, entry);
    if (inserted) {
      model.weights.push_back(entry);
    } else if (it->second.dtype != entry.dtype ||
               it->second.shape != entry.shape ||
               it->second.transform != entry.transform) {
      return op->emitOpError("weight '")
             << name << "' is read as " << *graphDtype
             << " here and differently by another step";
    }
    return success();
  }

  //===--------------------------------------------------------------------===//
  // Buffers
  //===--------------------------------------------------------------------===//

  /// A new buffer for `value`; its first use is the step being built.
  LogicalResult newBuffer(Value value, std::string name, bool pinned = false) {
    auto type = dyn_cast<RankedTensorType>(value.getType());
    Operation *where = value.getDefiningOp();
    auto fail = [&]() -> InFlightDiagnostic {
      return where ? where->emitOpError() : func.emitError();
    };
    if (!type || !type.hasStaticShape() || type.getRank() < 1 ||
        type.getRank() > 2)
      return fail() << "cannot hold " << value.getType()
                    << " in a plan buffer: buffers are static 1-D or 2-D "
                       "tensors";
    std::optional<std::string> dtype = dtypeName(type.getElementType());
    if (!dtype)
      return fail() << "cannot hold " << value.getType()
                    << " in a plan buffer: dtypes are f32, bf16, "
                       "f8E4M3FN and i32";
    auto symbol = rowSymbols.find(value);
    if (symbol == rowSymbols.end())
      return fail() << "internal error: no row symbol for a result";
    int64_t rows = rowExtent(symbol->second);
    // The graph is one rank's view: an expert-parallel layer's received
    // rows (X, or a micro-batch's X.m/n) stand where its routed rows (R,
    // R.m/n) are.
    RowSymbol parsedRows;
    const bool exchanged =
        parseRowSymbol(symbol->second, parsedRows) && parsedRows.base == "X" &&
        type.getDimSize(0) ==
            rowExtent(parsedRows.parts
                          ? microBatchRowSymbol("R", parsedRows.part,
                                                parsedRows.parts)
                          : std::string("R"));
    if (rows != type.getDimSize(0) && !exchanged)
      return fail() << "result " << type << " has " << type.getDimSize(0)
                    << " rows, but its rows are " << symbol->second << " = "
                    << rows << " in this step";

    // Names come from the ops' locations; keep them unique.
    std::string unique = name;
    for (int suffix = 1; !bufferNames.insert(unique).second; ++suffix)
      unique = name + "." + std::to_string(suffix);

    PlanBuffer buffer;
    buffer.name = unique;
    buffer.dtype = *dtype;
    buffer.rows = symbol->second;
    buffer.cols = type.getRank() == 2 ? type.getDimSize(1) : 1;
    buffer.bytes =
        static_cast<uint64_t>(rows * buffer.cols * dtypeBytes(*dtype));
    tensors[value] = {unique, 0, 0};
    lifetimes.push_back(
        {pinned ? 0 : static_cast<int64_t>(plan.steps.size()),
         pinned ? kForever : static_cast<int64_t>(plan.steps.size())});
    bufferIndex[unique] = plan.buffers.size();
    plan.buffers.push_back(std::move(buffer));
    return success();
  }

  /// The rows of `symbol` at this plan's maxima.
  int64_t rowExtent(StringRef symbol) {
    RowSymbol parsed;
    if (parseRowSymbol(symbol.str(), parsed) && parsed.parts)
      return microBatchRows(plan.maxTokens, parsed.part, parsed.parts) *
             (parsed.base == "T" ? 1 : topK.value_or(0)) *
             (parsed.base == "X" ? expertParallel.getWorldSize() : 1);
    if (symbol == "S")
      return plan.maxSequences;
    if (symbol == "R")
      return plan.maxTokens * topK.value_or(0);
    if (symbol == "E1")
      return experts.value_or(0) + 1;
    if (symbol == "X")
      return expertParallel.getWorldSize() * plan.maxTokens * topK.value_or(0);
    if (parsed.count)
      return parsed.count;
    return plan.maxTokens;
  }

  /// A buffer no graph value has (the expert-parallel exchange's send and
  /// receive sides and count tables), written by the step being built.
  PlanTensor newPlanBuffer(const std::string &name, const std::string &dtype,
                           const std::string &rows, int64_t cols) {
    std::string unique = name;
    for (int suffix = 1; !bufferNames.insert(unique).second; ++suffix)
      unique = name + "." + std::to_string(suffix);
    PlanBuffer buffer;
    buffer.name = unique;
    buffer.dtype = dtype;
    buffer.rows = rows;
    buffer.cols = cols;
    buffer.bytes =
        static_cast<uint64_t>(rowExtent(rows) * cols * dtypeBytes(dtype));
    lifetimes.push_back({static_cast<int64_t>(plan.steps.size()),
                         static_cast<int64_t>(plan.steps.size())});
    bufferIndex[unique] = plan.buffers.size();
    plan.buffers.push_back(std::move(buffer));
    return {unique, 0, 0};
  }

  /// `tensor` read by the step being built (its lifetime grows to it).
  PlanTensor usePlanBuffer(const PlanTensor &tensor) {
    Lifetime &lifetime = lifetimes[bufferIndex[tensor.buffer]];
    lifetime.last =
        std::max(lifetime.last, static_cast<int64_t>(plan.steps.size()));
    return tensor;
  }

  /// The tensor reference of operand `value`, marked used by this step.
  FailureOr<PlanTensor> use(Operation *op, Value value, StringRef role) {
    auto it = tensors.find(value);
    if (it == tensors.end()) {
      if (weightNames.count(value))
        return op->emitOpError("operand '")
               << role << "' is a weight; the plan reads weights only where "
               << "an op takes one";
      return op->emitOpError("operand '") << role << "' has no buffer";
    }
    Lifetime &lifetime = lifetimes[bufferIndex[it->second.buffer]];
    lifetime.last =
        std::max(lifetime.last, static_cast<int64_t>(plan.steps.size()));
    return it->second;
  }

  /// Names result `index` of `op`: its location's name plus `suffix`, or
  /// the op's name and the step index.
  std::string resultName(Operation *op, StringRef suffix) {
    if (auto name = dyn_cast<NameLoc>(op->getLoc()))
      return name.getName().str() + suffix.str();
    return op->getName().stripDialect().str() + "." +
           std::to_string(plan.steps.size()) + suffix.str();
  }

  /// Creates the buffer of result `value` with rows `rows`, as an output of
  /// the step being built.
  LogicalResult output(PlanStep &step, Value value, Operation *namer,
                       StringRef suffix, const std::string &rows) {
    rowSymbols[value] = rows;
    if (auto [concat, part] = concatPart(value); concat) {
      // Micro-batch `part` writes its rows of the concatenation's buffer.
      Value joined = concat.getResult();
      if (!tensors.count(joined)) {
        rowSymbols[joined] = "T";
        if (failed(newBuffer(joined, resultName(concat, ""))))
          return failure();
      }
      PlanTensor view = tensors[joined];
      view.part = part;
      view.parts = concat.getInputs().size();
      tensors[value] = view;
      Lifetime &lifetime = lifetimes[bufferIndex[view.buffer]];
      lifetime.last =
          std::max(lifetime.last, static_cast<int64_t>(plan.steps.size()));
      step.outputs.push_back(view);
      return success();
    }
    if (failed(newBuffer(value, resultName(namer, suffix))))
      return failure();
    step.outputs.push_back(tensors[value]);
    return success();
  }

  /// The tensor.concat of micro-batch parts that `value` is part `part` of
  /// (its only use, rows "T.part/n" of n operands), or null.
  std::pair<tensor::ConcatOp, int64_t> concatPart(Value value) {
    if (!value.hasOneUse())
      return {};
    OpOperand &use = *value.getUses().begin();
    auto concat = dyn_cast<tensor::ConcatOp>(use.getOwner());
    if (!concat || concat.getDim() != 0)
      return {};
    int64_t part = use.getOperandNumber();
    int64_t parts = concat.getInputs().size();
    if (rowsOf(value) != microBatchRowSymbol("T", part, parts))
      return {};
    return {concat, part};
  }

  LogicalResult lowerConcat(tensor::ConcatOp concat) {
    auto it = tensors.find(concat.getResult());
    int64_t parts = concat.getInputs().size();
    for (auto [part, input] : llvm::enumerate(concat.getInputs())) {
      auto view = tensors.find(input);
      if (it == tensors.end() || view == tensors.end() ||
          view->second.buffer != it->second.buffer ||
          view->second.part != static_cast<int64_t>(part) ||
          view->second.parts != parts)
        return concat.emitOpError("cannot be lowered to a launch plan: "
                                  "plans concatenate only the micro-batch "
                                  "parts (rows T.m/n) of one value, each "
                                  "written by an op whose only user this is");
    }
    return success();
  }

  std::string rowsOf(Value value) { return rowSymbols.lookup(value); }

  //===--------------------------------------------------------------------===//
  // Ops
  //===--------------------------------------------------------------------===//

  LogicalResult lowerOp(Operation *op) {
    return llvm::TypeSwitch<Operation *, LogicalResult>(op)
        .Case<tensor::ExtractSliceOp>(
            [&](auto slice) -> LogicalResult { return lowerSlice(slice); })
        .Case<func::ReturnOp>(
            [&](auto ret) -> LogicalResult { return lowerReturn(ret); })
        .Case<tensor::ConcatOp>(
            [&](auto concat) -> LogicalResult { return lowerConcat(concat); })
        .Case<EmbedOp>([&](EmbedOp embed) -> LogicalResult {
          PlanStep step = makeStep("embed");
          auto tokens = use(op, embed.getTokens(), "tokens");
          auto table = weight(op, embed.getTable(), "table");
          if (failed(tokens) || failed(table))
            return failure();
          step.inputs = {*tokens};
          step.weights = {*table};
          if (failed(output(step, embed.getResult(), op, "",
                            rowsOf(embed.getTokens()))))
            return failure();
          return emit(std::move(step));
        })
        .Case<RMSNormOp>(
            [&](RMSNormOp norm) -> LogicalResult { return lowerRMSNorm(norm); })
        .Case<QuantizeOp>([&](QuantizeOp quantize) -> LogicalResult {
          PlanStep step = makeStep("quantize");
          auto input = use(op, quantize.getInput(), "input");
          if (failed(input) || failed(checkActivationQuantize(quantize)))
            return failure();
          step.inputs = {*input};
          return finishQuantized(std::move(step), quantize,
                                 rowsOf(quantize.getInput()));
        })
        .Case<SwiGLUOp>([&](SwiGLUOp swiglu) -> LogicalResult {
          return lowerSwiGLU(swiglu);
        })
        .Case<ScaledMatmulOp>([&](ScaledMatmulOp gemm) -> LogicalResult {
          return lowerGemm(gemm);
        })
        .Case<GroupedScaledMatmulOp>(
            [&](GroupedScaledMatmulOp gemm) -> LogicalResult {
              return lowerGroupedGemm(gemm);
            })
        .Case<MatmulOp>([&](MatmulOp matmul) -> LogicalResult {
          PlanStep step = makeStep("matmul");
          if (!cast<ShapedType>(matmul.getA().getType())
                   .getElementType()
                   .isF32())
            return op->emitOpError("'a' must be f32 for the plan's matmul "
                                   "(FP32-accumulated, x f32[T,K])");
          auto a = use(op, matmul.getA(), "a");
          auto b = weight(op, matmul.getB(), "b");
          if (failed(a) || failed(b))
            return failure();
          step.inputs = {*a};
          step.weights = {*b};
          if (failed(output(step, matmul.getResult(), op, "",
                            rowsOf(matmul.getA()))))
            return failure();
          return emit(std::move(step));
        })
        .Case<AddOp>([&](AddOp add) -> LogicalResult { return lowerAdd(add); })
        .Case<MLAAttentionOp>([&](MLAAttentionOp attention) -> LogicalResult {
          return lowerAttention(attention);
        })
        .Case<MoERouteOp>([&](MoERouteOp route) -> LogicalResult {
          return lowerRoute(route);
        })
        .Case<MoEPermuteOp>([&](MoEPermuteOp permute) -> LogicalResult {
          return lowerPermute(permute);
        })
        .Case<MoEUnpermuteOp>([&](MoEUnpermuteOp unpermute) -> LogicalResult {
          if (expertParallel && failed(lowerExpertParallelReturn(unpermute)))
            return failure();
          PlanStep step = makeStep("moe_combine");
          auto y =
              expertParallel
                  ? FailureOr<PlanTensor>(
                        usePlanBuffer(exchanges[unpermute.getRows()].back))
                  : use(op, unpermute.getExpertOutputs(), "expert_outputs");
          auto rows = use(op, unpermute.getRows(), "rows");
          auto weights = use(op, unpermute.getWeights(), "weights");
          if (failed(y) || failed(rows) || failed(weights))
            return failure();
          if (!cast<ShapedType>(unpermute.getType()).getElementType().isF32())
            return op->emitOpError("result must be f32 for the plan's "
                                   "moe_combine");
          step.inputs = {*y, *rows, *weights};
          // After a gathered exchange, the send offsets say which rank's
          // block holds each routed row.
          if (expertParallel) {
            const ExpertParallelExchange &e = exchanges[unpermute.getRows()];
            if (e.markGathered(step))
              step.inputs.push_back(usePlanBuffer(e.sendOffsets));
          }
          if (failed(output(step, unpermute.getResult(), op, "",
                            rowsOf(unpermute.getRows()))))
            return failure();
          return emit(std::move(step));
        })
        .Case<SelectRowsOp>([&](SelectRowsOp select) -> LogicalResult {
          PlanStep step = makeStep("select_rows");
          auto input = use(op, select.getInput(), "input");
          auto rows = use(op, select.getRows(), "rows");
          if (failed(input) || failed(rows))
            return failure();
          step.inputs = {*input, *rows};
          if (failed(output(step, select.getResult(), op, "",
                            rowsOf(select.getRows()))))
            return failure();
          return emit(std::move(step));
        })
        .Default([&](Operation *other) {
          return other->emitOpError("cannot be lowered to a launch plan; the "
                                    "plans know ")
                 << kLowerableOps;
        });
  }

  LogicalResult emit(PlanStep step) {
    StepOrigin origin;
    origin.op = current;
    if (auto region = current->getAttrOfType<IntegerAttr>(kRegionAttr)) {
      origin.region = region.getInt();
      origin.entry = current->getAttrOfType<IntegerAttr>(kEntryAttr).getInt();
      step.stream = current->getAttrOfType<IntegerAttr>(kStreamAttr).getInt();
      llvm::append_range(
          origin.waits,
          current->getAttrOfType<DenseI64ArrayAttr>(kWaitsAttr).asArrayRef());
    }
    plan.steps.push_back(std::move(step));
    origins.push_back(std::move(origin));
    return success();
  }

  //===--------------------------------------------------------------------===//
  // Streams and events
  //===--------------------------------------------------------------------===//

  /// Adds the event steps of the overlap regions (see the file comment) and
  /// renumbers the buffers' lifetimes, which the regions first widen.
  LogicalResult insertStreamEvents() {
    const int64_t n = static_cast<int64_t>(plan.steps.size());
    // Each region's steps, and the entries some entry waits for.
    std::map<int64_t, std::pair<int64_t, int64_t>> regions;
    std::set<std::pair<int64_t, int64_t>> waited;
    std::set<std::pair<int64_t, int64_t>> lowered;
    for (int64_t i = 0; i < n; ++i) {
      const StepOrigin &o = origins[i];
      if (o.region < 0)
        continue;
      auto [it, inserted] = regions.try_emplace(o.region, i, i);
      if (!inserted && it->second.second != i - 1)
        return o.op->emitOpError("internal error: the steps of overlap "
                                 "region ")
               << o.region << " are not contiguous";
      it->second.second = i;
      lowered.insert({o.region, o.entry});
      for (int64_t w : o.waits)
        waited.insert({o.region, w});
    }
    if (regions.empty())
      return success();
    for (auto [region, entry] : waited)
      if (!lowered.count({region, entry}))
        return func.emitError("kiln.schedule entry #")
               << entry << " of overlap region " << region
               << " is waited for but lowers to no step";
    for (Lifetime &lifetime : lifetimes)
      for (auto &[region, range] : regions)
        if (lifetime.first <= range.second && lifetime.last >= range.first) {
          lifetime.first = std::min(lifetime.first, range.first);
          if (lifetime.last != kForever)
            lifetime.last = std::max(lifetime.last, range.second);
        }

    std::vector<PlanStep> steps;
    std::vector<int64_t> newIndex(n + 1);
    // The event recorded after each waited-for entry, and its stream.
    std::map<std::pair<int64_t, int64_t>, int64_t> eventOf;
    std::map<int64_t, int64_t> eventStreams, recordedAt;
    std::map<std::pair<int64_t, int64_t>, int64_t> waitedUpTo;
    int64_t events = 0, streams = 1;
    auto eventStep = [&](const char *op, int64_t stream, int64_t event) {
      PlanStep step = makeStep(op);
      step.stream = stream;
      step.event = event;
      steps.push_back(std::move(step));
    };
    std::map<int64_t, std::set<int64_t>> sideStreams;
    for (auto &[region, range] : regions)
      for (int64_t i = range.first; i <= range.second; ++i)
        if (plan.steps[i].stream != 0)
          sideStreams[region].insert(plan.steps[i].stream);
    for (int64_t i = 0; i < n; ++i) {
      const StepOrigin &o = origins[i];
      const bool opens =
          o.region >= 0 && (i == 0 || origins[i - 1].region != o.region);
      const bool entryStarts =
          o.region >= 0 && (opens || origins[i - 1].entry != o.entry);
      if (opens) {
        // Fork: every side stream starts after stream 0's work so far.
        int64_t fork = events++;
        const int64_t forkAt = static_cast<int64_t>(steps.size());
        eventStep("event_record", 0, fork);
        for (int64_t stream : sideStreams[o.region]) {
          waitedUpTo[{stream, 0}] = forkAt;
          eventStep("event_wait", stream, fork);
        }
      }
      if (entryStarts)
        for (int64_t w : o.waits) {
          auto it = eventOf.find({o.region, w});
          if (it == eventOf.end())
            return o.op->emitOpError("internal error: kiln.schedule entry #")
                   << w << " is waited for before it ran";
          // A stream that already waited for a later record of the same
          // stream needs no second wait.
          int64_t stream = plan.steps[i].stream;
          int64_t &seen = waitedUpTo[{stream, eventStreams[it->second]}];
          if (eventStreams[it->second] != stream &&
              recordedAt[it->second] > seen) {
            seen = recordedAt[it->second];
            eventStep("event_wait", stream, it->second);
          }
        }
      newIndex[i] = static_cast<int64_t>(steps.size());
      streams = std::max(streams, plan.steps[i].stream + 1);
      steps.push_back(std::move(plan.steps[i]));
      const bool entryEnds =
          o.region >= 0 && (i + 1 == n || origins[i + 1].region != o.region ||
                            origins[i + 1].entry != o.entry);
      if (entryEnds && waited.count({o.region, o.entry})) {
        eventOf[{o.region, o.entry}] = events;
        eventStreams[events] = steps.back().stream;
        recordedAt[events] = static_cast<int64_t>(steps.size());
        eventStep("event_record", steps.back().stream, events++);
      }
      const bool closes =
          o.region >= 0 && (i + 1 == n || origins[i + 1].region != o.region);
      if (closes)
        // Join: stream 0 goes on after every side stream's work.
        for (int64_t stream : sideStreams[o.region]) {
          int64_t join = events++;
          eventStep("event_record", stream, join);
          eventStep("event_wait", 0, join);
        }
    }
    newIndex[n] = static_cast<int64_t>(steps.size());
    for (Lifetime &lifetime : lifetimes) {
      lifetime.first = newIndex[lifetime.first];
      if (lifetime.last != kForever)
        lifetime.last = newIndex[lifetime.last];
    }
    plan.steps = std::move(steps);
    plan.streams = streams;
    plan.events = events;
    return success();
  }

  /// Micro-batch `part` of n of the rows of a whole buffer of T rows: the
  /// rows [part * T / n, (part + 1) * T / n) at any T.
  LogicalResult lowerRowSlice(tensor::ExtractSliceOp slice) {
    auto source = slice.getSourceType();
    int64_t rows = slice.getStaticSizes()[0];
    int64_t offset = slice.getStaticOffsets()[0];
    auto it = tensors.find(slice.getSource());
    if (it == tensors.end())
      return slice.emitOpError("slices a value that has no buffer");
    const PlanTensor &source_ = it->second;
    bool wholeRows = slice.getStaticOffsets()[1] == 0 &&
                     slice.getStaticSizes()[1] == source.getDimSize(1);
    if (!wholeRows || source_.col || source_.cols || source_.parts ||
        rowsOf(slice.getSource()) != "T" || rows <= 0 ||
        plan.maxTokens % rows != 0 || offset % rows != 0 ||
        plan.maxTokens / rows < 2 ||
        isa_and_nonnull<QuantizeOp>(slice.getSource().getDefiningOp()))
      return slice.emitOpError("cannot be lowered to a launch plan: a row "
                               "slice must be micro-batch m of n equal "
                               "parts of the whole rows of an activation "
                               "of T rows");
    PlanTensor view = source_;
    view.part = offset / rows;
    view.parts = plan.maxTokens / rows;
    tensors[slice.getResult()] = view;
    rowSymbols[slice.getResult()] =
        microBatchRowSymbol("T", view.part, view.parts);
    return success();
  }

  /// A column slice [0, T) x [col, col + width) of a 2-D buffer: a view.
  LogicalResult lowerSlice(tensor::ExtractSliceOp slice) {
    auto source = slice.getSourceType();
    auto result = slice.getResultType();
    if (source.getRank() == 2 && result.getRank() == 2 &&
        result.hasStaticShape() &&
        llvm::none_of(slice.getStaticOffsets(), ShapedType::isDynamic) &&
        !ShapedType::isDynamic(source.getDimSize(0)) &&
        llvm::all_of(slice.getStaticStrides(),
                     [](int64_t stride) { return stride == 1; }) &&
        slice.getStaticSizes()[0] != source.getDimSize(0))
      return lowerRowSlice(slice);
    bool columnSlice =
        source.getRank() == 2 && result.getRank() == 2 &&
        slice.getStaticOffsets().size() == 2 &&
        !ShapedType::isDynamic(slice.getStaticOffsets()[1]) &&
        slice.getStaticOffsets()[0] == 0 &&
        slice.getStaticSizes()[0] == source.getDimSize(0) &&
        llvm::all_of(slice.getStaticStrides(),
                     [](int64_t stride) { return stride == 1; }) &&
        result.hasStaticShape();
    if (!columnSlice)
      return slice.emitOpError("cannot be lowered to a launch plan: only "
                               "static column slices (all rows, unit "
                               "strides) of 2-D tensors are views of a "
                               "buffer");
    auto it = tensors.find(slice.getSource());
    if (it == tensors.end())
      return slice.emitOpError("slices a value that has no buffer");
    PlanTensor view = it->second;
    int64_t width =
        view.cols ? view.cols : plan.buffers[bufferIndex[view.buffer]].cols;
    view.col += slice.getStaticOffsets()[1];
    view.cols = result.getDimSize(1);
    if (view.cols == width && view.col == 0)
      view.cols = 0;
    tensors[slice.getResult()] = view;
    rowSymbols[slice.getResult()] = rowsOf(slice.getSource());
    return success();
  }

  LogicalResult lowerReturn(func::ReturnOp ret) {
    if (ret.getNumOperands() != 1)
      return ret.emitOpError("a step returns one value, the logits; got ")
             << ret.getNumOperands();
    Value logits = ret.getOperand(0);
    auto it = tensors.find(logits);
    if (it == tensors.end() || it->second.col != 0 || it->second.cols != 0 ||
        isa<BlockArgument>(logits))
      return ret.emitOpError("the returned logits must be an op's own "
                             "result, not a slice or an argument");
    PlanBuffer &buffer = plan.buffers[bufferIndex[it->second.buffer]];
    if (buffer.dtype != "f32" || buffer.rows != "S")
      return ret.emitOpError("the logits must be f32 [S, vocab] (one row per "
                             "sequence); got ")
             << logits.getType() << " with rows " << buffer.rows;
    // Rename the buffer, everywhere it is referenced.
    std::string old = buffer.name;
    if (old != kLogitsBuffer) {
      if (bufferNames.count(kLogitsBuffer))
        return ret.emitOpError("another buffer is already named '")
               << kLogitsBuffer << "'";
      for (PlanStep &step : plan.steps)
        for (auto *list : {&step.inputs, &step.outputs})
          for (PlanTensor &tensor : *list)
            if (tensor.buffer == old)
              tensor.buffer = kLogitsBuffer;
      bufferIndex[kLogitsBuffer] = bufferIndex[old];
      buffer.name = kLogitsBuffer;
    }
    lifetimes[bufferIndex[kLogitsBuffer]].last = kForever;
    return success();
  }

  LogicalResult checkActivationQuantize(QuantizeOp quantize) {
    auto type = cast<RankedTensorType>(quantize.getInput().getType());
    if (quantize.getGranularity() != ScaleGranularity::Tile1x128 ||
        type.getRank() != 2)
      return quantize.emitOpError("cannot be lowered to a launch plan: "
                                  "plans quantize 2-D activations per 1x128 "
                                  "tile (weights come quantized)");
    return success();
  }

  /// The quantize that consumes `value` alone, to be fused into its
  /// producer.
  QuantizeOp fusableQuantize(Value value) {
    if (!value.hasOneUse())
      return {};
    auto quantize = dyn_cast<QuantizeOp>(*value.getUsers().begin());
    if (!quantize || failed(checkActivationQuantize(quantize)))
      return {};
    // Ops of different overlap stages are different steps.
    if (value.getDefiningOp()->getAttr(kEntryAttr) !=
        quantize->getAttr(kEntryAttr))
      return {};
    return quantize;
  }

  /// Grouped-gemm offsets that the scales of `quantize` must be laid out
  /// by, if a grouped GEMM reads them; failure if plain and grouped readers
  /// disagree.
  FailureOr<Value> groupedScaleOffsets(QuantizeOp quantize) {
    Value offsets;
    bool plain = false;
    for (Operation *user : quantize.getScales().getUsers()) {
      if (auto grouped = dyn_cast<GroupedScaledMatmulOp>(user)) {
        if (offsets && offsets != grouped.getGroups())
          return quantize.emitOpError(
              "scales are read by grouped GEMMs with different offsets");
        offsets = grouped.getGroups();
      } else {
        plain = true;
      }
    }
    if (offsets && plain)
      return quantize.emitOpError("scales are read both by grouped GEMMs "
                                  "(grouped layout) and by other ops");
    return offsets;
  }

  /// Adds the outputs (q, s) of `quantize` to `step` and emits it.
  LogicalResult finishQuantized(PlanStep step, QuantizeOp quantize,
                                const std::string &rows) {
    if (failed(output(step, quantize.getValues(), quantize, "_q", rows)) ||
        failed(output(step, quantize.getScales(), quantize, "_s", rows)))
      return failure();
    FailureOr<Value> offsets = groupedScaleOffsets(quantize);
    if (failed(offsets))
      return failure();
    if (*offsets) {
      if (step.op != "swiglu" && step.op != "quantize")
        return quantize.emitOpError(
            "writes scales a grouped GEMM reads; only a quantize, a "
            "quantized SwiGLU (or moe_permute) writes the grouped scale "
            "layout");
      auto ref = use(quantize, *offsets, "offsets");
      if (failed(ref))
        return failure();
      step.inputs.push_back(*ref);
      groupedScales.insert(quantize.getScales());
    }
    return emit(std::move(step));
  }

  LogicalResult lowerRMSNorm(RMSNormOp norm) {
    Operation *op = norm;
    auto type = cast<RankedTensorType>(norm.getInput().getType());
    if (type.getRank() != 2)
      return op->emitOpError("plans normalize 2-D activations [T, C]");
    PlanStep step = makeStep("rms_norm");
    auto input = use(op, norm.getInput(), "input");
    auto weightName = weight(op, norm.getWeight(), "weight");
    if (failed(input) || failed(weightName))
      return failure();
    step.inputs = {*input};
    step.weights = {*weightName};
    step.attrs.numbers["eps"] = decimal(norm.getEpsilon().convertToFloat());
    std::string rows = rowsOf(norm.getInput());
    if (QuantizeOp quantize = fusableQuantize(norm.getResult())) {
      fused.insert(quantize);
      return finishQuantized(std::move(step), quantize, rows);
    }
    if (failed(output(step, norm.getResult(), op, "", rows)))
      return failure();
    return emit(std::move(step));
  }

  /// The SwiGLU epilogue configuration of `swiglu`, if
  /// kiln-select-gemm-config fused it into its gate/up grouped GEMMs.
  static GemmConfigAttr fusedSwiGLUConfig(SwiGLUOp swiglu) {
    auto config = swiglu->getAttrOfType<GemmConfigAttr>(kGemmConfigAttrName);
    return config && config.getSwiglu() ? config : GemmConfigAttr();
  }

  /// Whether `gemm` is the gate or up GEMM of a fused SwiGLU: it becomes
  /// part of that swiglu's step.
  static bool feedsFusedSwiGLU(GroupedScaledMatmulOp gemm) {
    if (!gemm->hasOneUse())
      return false;
    auto swiglu = dyn_cast<SwiGLUOp>(*gemm->getUsers().begin());
    return swiglu && fusedSwiGLUConfig(swiglu);
  }

  /// One grouped_gemm with the SwiGLU epilogue for the gate GEMM, the up
  /// GEMM and `swiglu`: weights [gate, up] (the runtime interleaves them at
  /// load), result silu(gate) * up in BF16.
  LogicalResult lowerFusedSwiGLU(SwiGLUOp swiglu) {
    Operation *op = swiglu;
    auto gate = swiglu.getGate().getDefiningOp<GroupedScaledMatmulOp>();
    auto up = swiglu.getUp()
                  ? swiglu.getUp().getDefiningOp<GroupedScaledMatmulOp>()
                  : GroupedScaledMatmulOp();
    if (!gate || !up || gate.getA() != up.getA() ||
        gate.getAScales() != up.getAScales() ||
        gate.getGroups() != up.getGroups() ||
        gate.getB().getType() != up.getB().getType())
      return op->emitOpError("has an 'epilogue = swiglu' gemm_config but its "
                             "gate and up are not grouped GEMMs of the same "
                             "rows, offsets and weight shape");
    if (gate.getLayout() != GroupLayout::Contiguous ||
        !groupedScales.contains(gate.getAScales()))
      return op->emitOpError("fuses grouped GEMMs that must be contiguous "
                             "with 'a_scales' in the grouped layout");
    PlanStep step = makeStep("grouped_gemm");
    auto a = use(op, gate.getA(), "a");
    auto scales = use(op, gate.getAScales(), "a_scales");
    auto offsets = use(op, gate.getGroups(), "groups");
    auto gateWeight = weight(gate, gate.getB(), "b");
    auto upWeight = weight(up, up.getB(), "b");
    auto kernel = kernelOf(op);
    if (failed(a) || failed(scales) || failed(offsets) || failed(gateWeight) ||
        failed(upWeight) || failed(kernel) ||
        failed(checkScales(gate, gate.getB(), gate.getBScales())) ||
        failed(checkScales(up, up.getB(), up.getBScales())) ||
        failed(checkBf16Result(op, swiglu.getResult())))
      return failure();
    for (const std::string *name : {&*gateWeight, &*upWeight})
      if (name->find(kExpertPlaceholder) == std::string::npos)
        return op->emitOpError("fuses GEMMs whose weights must be "
                               "routed-expert weights, named with '")
               << kExpertPlaceholder << "'; got '" << *name << "'";
    step.inputs = {*a, *scales, *offsets};
    step.weights = {*gateWeight, *upWeight};
    step.kernel = *kernel;
    std::string rows = rowsOf(gate.getA());
    if (fusedSwiGLUConfig(swiglu).getQuantize()) {
      // The kernel writes the quantize's codes and scales itself, the
      // scales in the grouped layout of the same offsets (artifact.md
      // "Fused SwiGLU"): the quantize is part of this step.
      QuantizeOp quantize = fusableQuantize(swiglu.getResult());
      FailureOr<Value> scaleOffsets =
          quantize ? groupedScaleOffsets(quantize) : FailureOr<Value>(Value());
      if (!quantize || failed(scaleOffsets) ||
          *scaleOffsets != gate.getGroups())
        return op->emitOpError(
            "has an 'epilogue = swiglu_quantize' gemm_config but its result "
            "is not quantized for grouped GEMMs of the same offsets");
      fused.insert(quantize);
      groupedScales.insert(quantize.getScales());
      if (failed(output(step, quantize.getValues(), quantize, "_q", rows)) ||
          failed(output(step, quantize.getScales(), quantize, "_s", rows)))
        return failure();
      return emit(std::move(step));
    }
    if (failed(output(step, swiglu.getResult(), op, "", rows)))
      return failure();
    return emit(std::move(step));
  }

  LogicalResult lowerSwiGLU(SwiGLUOp swiglu) {
    if (fusedSwiGLUConfig(swiglu))
      return lowerFusedSwiGLU(swiglu);
    Operation *op = swiglu;
    PlanStep step = makeStep("swiglu");
    auto gate = use(op, swiglu.getGate(), "gate");
    if (failed(gate))
      return failure();
    if (Value upValue = swiglu.getUp()) {
      auto up = use(op, upValue, "up");
      if (failed(up))
        return failure();
      step.inputs = {*gate, *up};
    } else {
      // The fused form reads the two halves of one buffer.
      auto type = cast<RankedTensorType>(swiglu.getGate().getType());
      if (type.getRank() != 2)
        return op->emitOpError("plans apply SwiGLU to 2-D activations");
      int64_t half = type.getDimSize(1) / 2;
      PlanTensor first = *gate, second = *gate;
      first.cols = half;
      second.col += half;
      second.cols = half;
      step.inputs = {first, second};
    }
    std::string rows = rowsOf(swiglu.getGate());
    if (QuantizeOp quantize = fusableQuantize(swiglu.getResult())) {
      fused.insert(quantize);
      return finishQuantized(std::move(step), quantize, rows);
    }
    if (failed(output(step, swiglu.getResult(), op, "", rows)))
      return failure();
    return emit(std::move(step));
  }

  FailureOr<std::string> kernelOf(Operation *op) {
    auto config = op->getAttrOfType<GemmConfigAttr>("gemm_config");
    if (!config)
      return op->emitOpError("has no 'gemm_config'; run "
                             "kiln-select-gemm-config first");
    model.gemmConfigs.insert(config);
    return config.getKernelName();
  }

  LogicalResult checkBf16Result(Operation *op, Value result) {
    if (!cast<ShapedType>(result.getType()).getElementType().isBF16())
      return op->emitOpError("result must be bf16: the plan's GEMM kernels "
                             "write BF16");
    return success();
  }

  LogicalResult lowerGemm(ScaledMatmulOp gemm) {
    Operation *op = gemm;
    if (groupedScales.contains(gemm.getAScales()))
      return op->emitOpError("'a_scales' are in the grouped layout of a "
                             "grouped GEMM");
    PlanStep step = makeStep("gemm");
    auto a = use(op, gemm.getA(), "a");
    auto scales = use(op, gemm.getAScales(), "a_scales");
    auto b = weight(op, gemm.getB(), "b");
    auto kernel = kernelOf(op);
    if (failed(a) || failed(scales) || failed(b) || failed(kernel) ||
        failed(checkScales(op, gemm.getB(), gemm.getBScales())) ||
        failed(checkBf16Result(op, gemm.getResult())))
      return failure();
    step.inputs = {*a, *scales};
    step.weights = {*b};
    step.kernel = *kernel;
    if (failed(output(step, gemm.getResult(), op, "", rowsOf(gemm.getA()))))
      return failure();
    return emit(std::move(step));
  }

  LogicalResult lowerGroupedGemm(GroupedScaledMatmulOp gemm) {
    // Its step is the fused SwiGLU's.
    if (feedsFusedSwiGLU(gemm))
      return success();
    Operation *op = gemm;
    if (gemm.getLayout() != GroupLayout::Contiguous)
      return op->emitOpError("cannot be lowered to a launch plan: plans "
                             "run grouped GEMMs in the contiguous layout");
    if (!groupedScales.contains(gemm.getAScales()))
      return op->emitOpError("'a_scales' must be in the grouped layout: "
                             "written by kiln.moe_permute or a quantized "
                             "kiln.swiglu of grouped rows");
    PlanStep step = makeStep("grouped_gemm");
    auto a = use(op, gemm.getA(), "a");
    auto scales = use(op, gemm.getAScales(), "a_scales");
    auto offsets = use(op, gemm.getGroups(), "groups");
    auto b = weight(op, gemm.getB(), "b");
    auto kernel = kernelOf(op);
    if (failed(a) || failed(scales) || failed(offsets) || failed(b) ||
        failed(kernel) ||
        failed(checkScales(op, gemm.getB(), gemm.getBScales())) ||
        failed(checkBf16Result(op, gemm.getResult())))
      return failure();
    if (auto config = op->getAttrOfType<GemmConfigAttr>("gemm_config");
        config && config.getGrouped() != GroupLayout::Contiguous)
      return op->emitOpError("needs a grouped contiguous kernel "
                             "(gemm_config with grouped = contiguous): the "
                             "plan launches one kernel for all experts");
    if (b->find(kExpertPlaceholder) == std::string::npos)
      return op->emitOpError("'b' must be a routed-expert weight, named "
                             "with '")
             << kExpertPlaceholder << "' for the expert index; got '" << *b
             << "'";
    step.inputs = {*a, *scales, *offsets};
    step.weights = {*b};
    step.kernel = *kernel;
    if (failed(output(step, gemm.getResult(), op, "", rowsOf(gemm.getA()))))
      return failure();
    return emit(std::move(step));
  }

  /// `lhs`'s buffer if nothing reads it after `add`: the sum goes in place.
  std::optional<std::string> inPlaceBuffer(AddOp add) {
    auto it = tensors.find(add.getLhs());
    if (it == tensors.end() || it->second.col || it->second.cols ||
        it->second.parts || add.getLhs().getType() != add.getType() ||
        concatPart(add.getResult()).first)
      return std::nullopt;
    const std::string &buffer = it->second.buffer;
    Lifetime &lifetime = lifetimes[bufferIndex[buffer]];
    if (lifetime.last == kForever) // a step input or the logits
      return std::nullopt;
    for (auto &[value, tensor] : tensors)
      if (tensor.buffer == buffer)
        for (Operation *user : value.getUsers())
          if (user != add && !user->isBeforeInBlock(add))
            return std::nullopt;
    return buffer;
  }

  LogicalResult lowerAdd(AddOp add) {
    Operation *op = add;
    PlanStep step = makeStep("add");
    if (!cast<ShapedType>(add.getLhs().getType()).getElementType().isF32() ||
        !cast<ShapedType>(add.getType()).getElementType().isF32())
      return op->emitOpError("plans add into f32: 'lhs' and the result "
                             "must be f32");
    std::optional<std::string> inPlace = inPlaceBuffer(add);
    auto lhs = use(op, add.getLhs(), "lhs");
    auto rhs = use(op, add.getRhs(), "rhs");
    if (failed(lhs) || failed(rhs))
      return failure();
    step.inputs = {*lhs, *rhs};
    std::string rows = rowsOf(add.getLhs());
    if (inPlace) {
      tensors[add.getResult()] = {*inPlace, 0, 0};
      rowSymbols[add.getResult()] = rows;
      step.outputs.push_back(tensors[add.getResult()]);
      return emit(std::move(step));
    }
    if (failed(output(step, add.getResult(), op, "", rows)))
      return failure();
    return emit(std::move(step));
  }

  LogicalResult lowerAttention(MLAAttentionOp attention) {
    Operation *op = attention;
    // The plan's attention reads the `positions` input implicitly.
    if (!positions || attention.getPositions() != positions)
      return op->emitOpError("'positions' must be the step input '")
             << kPositionsInput << "'";
    PlanStep step = makeStep("mla_attention");
    auto q = use(op, attention.getQ(), "q");
    auto latent = use(op, attention.getLatent(), "latent");
    auto kPe = use(op, attention.getKPe(), "k_pe");
    auto kvB = weight(op, attention.getKvB(), "kv_b");
    if (failed(q) || failed(latent) || failed(kPe) || failed(kvB) ||
        failed(use(op, attention.getPositions(), "positions")))
      return failure();
    step.inputs = {*q, *latent, *kPe};
    step.weights = {*kvB};
    PlanAttrs &attrs = step.attrs;
    attrs.numbers["layer"] = static_cast<double>(attention.getLayer());
    attrs.numbers["heads"] = static_cast<double>(attention.getHeads());
    attrs.numbers["nope"] = static_cast<double>(attention.getQkNopeHeadDim());
    attrs.numbers["rope"] = static_cast<double>(attention.getQkRopeHeadDim());
    attrs.numbers["v"] = static_cast<double>(attention.getVHeadDim());
    attrs.numbers["kv_lora"] = static_cast<double>(
        cast<ShapedType>(attention.getLatent().getType()).getDimSize(1));
    attrs.numbers["softmax_scale"] =
        decimal(attention.getSoftmaxScale().convertToFloat());
    attrs.numbers["attention_factor"] =
        decimal(attention.getAttentionFactor().convertToFloat());
    std::vector<double> &invFreq = attrs.lists["inv_freq"];
    for (float frequency : attention.getRopeInvFreq())
      invFreq.push_back(decimal(frequency));
    if (failed(output(step, attention.getResult(), op, "",
                      rowsOf(attention.getQ()))))
      return failure();
    return emit(std::move(step));
  }

  LogicalResult lowerRoute(MoERouteOp route) {
    Operation *op = route;
    PlanStep step = makeStep("moe_route");
    auto logits = use(op, route.getLogits(), "logits");
    if (failed(logits))
      return failure();
    step.inputs = {*logits};
    if (Value bias = route.getBias()) {
      auto name = weight(op, bias, "bias");
      if (failed(name))
        return failure();
      step.weights = {*name};
    }
    PlanAttrs &attrs = step.attrs;
    attrs.numbers["top_k"] = static_cast<double>(route.getTopK());
    attrs.numbers["n_group"] = static_cast<double>(route.getNGroup());
    attrs.numbers["topk_group"] = static_cast<double>(route.getTopkGroup());
    attrs.numbers["routed_scaling_factor"] =
        decimal(route.getRoutedScalingFactor().convertToFloat());
    attrs.numbers["norm_topk_prob"] = route.getNormTopkProb() ? 1 : 0;
    attrs.strings["scoring"] = stringifyRouterScoring(route.getScoring()).str();
    std::string rows = rowsOf(route.getLogits());
    if (failed(output(step, route.getExpertIds(), op, "_ids", rows)) ||
        failed(output(step, route.getExpertWeights(), op, "_weights", rows)))
      return failure();
    return emit(std::move(step));
  }

  LogicalResult lowerPermute(MoEPermuteOp permute) {
    Operation *op = permute;
    if (!permute.getTokenScales())
      return op->emitOpError("plans dispatch FP8 tokens with their scales; "
                             "BF16 tokens cannot be lowered");
    auto ids = cast<RankedTensorType>(permute.getExpertIds().getType());
    auto offsets = cast<RankedTensorType>(permute.getOffsets().getType());
    if (!ids.hasStaticShape() || !offsets.hasStaticShape())
      return op->emitOpError("needs static expert ids and offsets");
    int64_t k = ids.getDimSize(1), e = offsets.getDimSize(0) - 1;
    if ((topK && *topK != k) || (experts && *experts != e))
      return op->emitOpError("routes to top_k = ")
             << k << " of " << e << " experts; an earlier layer of this step "
             << "routes to " << topK.value_or(k) << " of "
             << experts.value_or(e) << " (R and E1 are one size per plan)";
    topK = k;
    experts = e;
    RowSymbol tokenRows;
    std::string rows = rowsOf(permute.getTokens());
    if (!parseRowSymbol(rows, tokenRows) || tokenRows.base != "T")
      return op->emitOpError("dispatches rows ")
             << rows
             << "; plans dispatch the step's tokens (T) or a micro-batch "
                "of them (T.m/n)";
    std::string routedRows =
        tokenRows.parts
            ? microBatchRowSymbol("R", tokenRows.part, tokenRows.parts)
            : "R";
    if (expertParallel)
      return lowerExpertParallelPermute(permute, routedRows);
    PlanStep step = makeStep("moe_dispatch");
    auto tokens = use(op, permute.getTokens(), "tokens");
    auto scales = use(op, permute.getTokenScales(), "token_scales");
    auto idsRef = use(op, permute.getExpertIds(), "expert_ids");
    if (failed(tokens) || failed(scales) || failed(idsRef))
      return failure();
    step.inputs = {*tokens, *scales, *idsRef};
    if (failed(output(step, permute.getExpertTokens(), op, "_q", routedRows)) ||
        failed(output(step, permute.getExpertScales(), op, "_s", routedRows)) ||
        failed(output(step, permute.getOffsets(), op, "_offsets", "E1")) ||
        failed(output(step, permute.getRows(), op, "_rows",
                      rowsOf(permute.getExpertIds()))))
      return failure();
    groupedScales.insert(permute.getExpertScales());
    return emit(std::move(step));
  }

  /// An expert-parallel dispatch (artifact.md "Expert parallelism"): each
  /// routed row's global slot (ep_slots), the rows grouped by slot, so by
  /// destination rank (moe_dispatch over world_size × slots_per_rank
  /// groups), the all-to-all of rows and scales with the per-peer counts
  /// (ep_all_to_all), and the received rows regrouped by this rank's slots
  /// (ep_group): the permute's results, X rows, that the grouped GEMMs read.
  LogicalResult lowerExpertParallelPermute(MoEPermuteOp permute,
                                           const std::string &routedRows) {
    Operation *op = permute;
    // A micro-batch's exchange (R.m/n routed rows) receives X.m/n rows:
    // every rank's routed rows of that micro-batch at the plan's maxima.
    RowSymbol routed;
    parseRowSymbol(routedRows, routed);
    const std::string received =
        routed.parts ? microBatchRowSymbol("X", routed.part, routed.parts)
                     : "X";
    const int64_t ranks = expertParallel.getWorldSize(),
                  slots = expertParallel.getSlotsPerRank();
    const int64_t hidden =
        cast<RankedTensorType>(permute.getTokens().getType()).getDimSize(1);
    const int64_t tiles = llvm::divideCeil(hidden, 128);
    const std::string name = resultName(op, "");
    auto tokens = use(op, permute.getTokens(), "tokens");
    auto scales = use(op, permute.getTokenScales(), "token_scales");
    auto ids = use(op, permute.getExpertIds(), "expert_ids");
    if (failed(tokens) || failed(scales) || failed(ids))
      return failure();

    PlanStep slotStep = makeStep("ep_slots");
    slotStep.inputs = {*ids};
    PlanTensor slotIds = newPlanBuffer(name + "_slots", "i32",
                                       rowsOf(permute.getExpertIds()), *topK);
    slotStep.outputs = {slotIds};
    if (failed(emit(std::move(slotStep))))
      return failure();

    PlanStep dispatch = makeStep("moe_dispatch");
    dispatch.attrs.numbers["groups"] = static_cast<double>(ranks * slots);
    dispatch.inputs = {*use(op, permute.getTokens(), "tokens"),
                       *use(op, permute.getTokenScales(), "token_scales"),
                       usePlanBuffer(slotIds)};
    ExpertParallelExchange exchange;
    exchange.routedRows = routedRows;
    exchange.receivedRows = received;
    exchange.sendQ =
        newPlanBuffer(name + "_send_q", "f8e4m3", routedRows, hidden);
    exchange.sendS = newPlanBuffer(name + "_send_s", "f32", routedRows, tiles);
    exchange.sendOffsets = newPlanBuffer(name + "_send_offsets", "i32",
                                         std::to_string(ranks * slots + 1), 1);
    dispatch.outputs = {exchange.sendQ, exchange.sendS, exchange.sendOffsets};
    if (failed(output(dispatch, permute.getRows(), op, "_rows",
                      rowsOf(permute.getExpertIds()))) ||
        failed(emit(std::move(dispatch))))
      return failure();

    PlanStep send = makeStep("ep_all_to_all");
    send.attrs.strings["direction"] = "dispatch";
    send.inputs = {usePlanBuffer(exchange.sendQ), usePlanBuffer(exchange.sendS),
                   usePlanBuffer(exchange.sendOffsets)};
    exchange.gatherTokens =
        routed.parts ? 0 : gatheredExchangeTokens(ranks, hidden);
    PlanTensor receivedQ =
        newPlanBuffer(name + "_recv_q", "f8e4m3", received, hidden);
    PlanTensor receivedS =
        newPlanBuffer(name + "_recv_s", "f32", received, tiles);
    exchange.counts = newPlanBuffer(name + "_recv_counts", "i32",
                                    std::to_string(ranks * slots), 1);
    send.outputs = {receivedQ, receivedS, exchange.counts};
    if (exchange.markGathered(send)) {
      // Steps of up to gather_tokens tokens exchange every rank's whole
      // send buffer; the ranks' send offsets say where each chunk is.
      exchange.gatheredOffsets =
          newPlanBuffer(name + "_recv_offsets", "i32",
                        std::to_string(ranks * (ranks * slots + 1)), 1);
      send.outputs.push_back(exchange.gatheredOffsets);
    }
    if (failed(emit(std::move(send))))
      return failure();

    PlanStep group = makeStep("ep_group");
    group.inputs = {usePlanBuffer(receivedQ), usePlanBuffer(receivedS),
                    usePlanBuffer(exchange.counts)};
    if (exchange.markGathered(group))
      group.inputs.push_back(usePlanBuffer(exchange.gatheredOffsets));
    PlanTensor q = newPlanBuffer(name + "_q", "f8e4m3", received, hidden);
    PlanTensor qs = newPlanBuffer(name + "_s", "f32", received, tiles);
    PlanTensor offsets =
        newPlanBuffer(name + "_offsets", "i32", std::to_string(slots + 1), 1);
    group.outputs = {q, qs, offsets};
    tensors[permute.getExpertTokens()] = q;
    tensors[permute.getExpertScales()] = qs;
    tensors[permute.getOffsets()] = offsets;
    rowSymbols[permute.getExpertTokens()] = received;
    rowSymbols[permute.getExpertScales()] = received;
    rowSymbols[permute.getOffsets()] = std::to_string(slots + 1);
    groupedScales.insert(permute.getExpertScales());
    exchanges[permute.getRows()] = exchange;
    return emit(std::move(group));
  }

  /// The way back of an expert-parallel layer: the experts' outputs from
  /// slot-major to peer-major order (ep_ungroup) and home to the ranks that
  /// sent the rows (ep_all_to_all), into the dispatch's order, which
  /// moe_combine then reads with the dispatch's rows.
  LogicalResult lowerExpertParallelReturn(MoEUnpermuteOp unpermute) {
    Operation *op = unpermute;
    auto found = exchanges.find(unpermute.getRows());
    if (found == exchanges.end())
      return op->emitOpError("combines rows that no expert-parallel "
                             "kiln.moe_permute of this step dispatched");
    ExpertParallelExchange &exchange = found->second;
    auto y = use(op, unpermute.getExpertOutputs(), "expert_outputs");
    if (failed(y))
      return failure();
    const int64_t hidden =
        cast<RankedTensorType>(unpermute.getExpertOutputs().getType())
            .getDimSize(1);
    const std::string name = resultName(op, "");
    PlanStep ungroup = makeStep("ep_ungroup");
    ungroup.inputs = {*y, usePlanBuffer(exchange.counts)};
    if (exchange.markGathered(ungroup))
      ungroup.inputs.push_back(usePlanBuffer(exchange.gatheredOffsets));
    PlanTensor peerMajor =
        newPlanBuffer(name + "_send_y", "bf16", exchange.receivedRows, hidden);
    ungroup.outputs = {peerMajor};
    if (failed(emit(std::move(ungroup))))
      return failure();
    PlanStep back = makeStep("ep_all_to_all");
    back.attrs.strings["direction"] = "combine";
    const bool gathered = exchange.markGathered(back);
    back.inputs = {usePlanBuffer(peerMajor), usePlanBuffer(exchange.counts),
                   usePlanBuffer(exchange.sendOffsets)};
    // A gathered combine receives one block of R rows from every rank.
    exchange.back = newPlanBuffer(
        name + "_recv_y", "bf16",
        gathered ? exchange.receivedRows : exchange.routedRows, hidden);
    back.outputs = {exchange.back};
    return emit(std::move(back));
  }

  //===--------------------------------------------------------------------===//
  // Placement
  //===--------------------------------------------------------------------===//

  void placeBuffers() {
    std::vector<BufferInterval> intervals;
    for (auto [buffer, lifetime] : llvm::zip_equal(plan.buffers, lifetimes))
      intervals.push_back({buffer.bytes, lifetime.first,
                           lifetime.last == kForever
                               ? static_cast<int64_t>(plan.steps.size())
                               : lifetime.last});
    BufferPlacement placement = placeBufferIntervals(intervals);
    for (auto [buffer, offset] :
         llvm::zip_equal(plan.buffers, placement.offsets))
      buffer.offset = offset;
    plan.arenaBytes = placement.arenaBytes;
  }

  struct Lifetime {
    int64_t first = 0, last = 0;
  };
  /// Where a step came from: its op and, for a step of an overlap region,
  /// the region, its kiln.schedule entry and the entries that entry waits
  /// for (region -1: outside every overlap).
  struct StepOrigin {
    Operation *op = nullptr;
    int64_t region = -1, entry = -1;
    SmallVector<int64_t> waits;
  };
  static constexpr int64_t kForever = std::numeric_limits<int64_t>::max();

  func::FuncOp func;
  const CheckpointLayout *layout;
  LoweredModel &model;
  std::map<std::string, ArtifactWeight> &weightsByName;

  LaunchPlan plan;
  llvm::DenseMap<Value, PlanTensor> tensors;
  llvm::DenseMap<Value, std::string> weightNames;
  llvm::DenseMap<Value, std::string> rowSymbols;
  llvm::DenseSet<Value> groupedScales;
  llvm::DenseSet<Operation *> fused;
  std::vector<Lifetime> lifetimes;
  std::vector<StepOrigin> origins;
  Operation *current = nullptr;
  std::map<std::string, size_t> bufferIndex;
  llvm::StringSet<> bufferNames;
  Value positions;
  std::optional<int64_t> topK, experts;
  /// The module's kiln.expert_parallel (null: single-GPU plans).
  ExpertParallelAttr expertParallel;
  /// An expert-parallel dispatch's buffers its combine reads, by the
  /// permute's rows value.
  struct ExpertParallelExchange {
    PlanTensor sendQ, sendS, sendOffsets, counts, back;
    /// Every rank's send offsets, i32 [W][W·S + 1] (gathered exchanges;
    /// no buffer otherwise).
    PlanTensor gatheredOffsets;
    /// Steps of up to this many tokens exchange gathered (0: never).
    int64_t gatherTokens = 0;
    /// Gives `step`, one of this exchange's, its gather_tokens attribute;
    /// returns whether the exchange is gathered at all.
    bool markGathered(PlanStep &step) const {
      if (gatherTokens > 0)
        step.attrs.numbers["gather_tokens"] = static_cast<double>(gatherTokens);
      return gatherTokens > 0;
    }
    /// R and X, or a micro-batch's R.m/n and X.m/n.
    std::string routedRows, receivedRows;
  };
  llvm::DenseMap<Value, ExpertParallelExchange> exchanges;
  /// kilnc --ep-gather-bytes: the most bytes of FP8 rows a rank may receive
  /// in a gathered exchange (0: none).
  int64_t gatherBytes = 0;

  /// The most tokens of a decode step whose exchanges are gathered
  /// (artifact.md "Gathered exchanges"): the largest bucket (a power of
  /// two, or the plan's maximum) for which every rank's whole send buffer,
  /// ranks x tokens x top_k rows of `hidden` FP8 bytes, fits gatherBytes.
  /// 0 for prefill plans, which run eagerly and would move padding.
  int64_t gatheredExchangeTokens(int64_t ranks, int64_t hidden) {
    if (!func.getSymName().starts_with("decode") || gatherBytes <= 0 || !topK)
      return 0;
    auto fits = [&](int64_t tokens) {
      return ranks * tokens * *topK * hidden <= gatherBytes;
    };
    int64_t best = 0;
    for (int64_t tokens = 1; tokens < plan.maxTokens && fits(tokens);
         tokens *= 2)
      best = tokens;
    if (fits(plan.maxTokens))
      best = plan.maxTokens;
    return best;
  }
};

} // namespace

FailureOr<LoweredModel> lowerToLaunchPlans(ModuleOp module,
                                           const ModelConfig *config) {
  ExpertParallelAttr expertParallel;
  if (Attribute attr = module->getAttr(kExpertParallelModuleAttr)) {
    expertParallel = dyn_cast<ExpertParallelAttr>(attr);
    if (!expertParallel)
      return module.emitError("'")
             << kExpertParallelModuleAttr
             << "' must be a #kiln.expert_parallel attribute";
  }
  int64_t gatherBytes = 0;
  if (Attribute attr = module->getAttr(kExpertParallelGatherModuleAttr)) {
    auto bytes = dyn_cast<IntegerAttr>(attr);
    if (!bytes || bytes.getInt() < 0)
      return module.emitError("'")
             << kExpertParallelGatherModuleAttr
             << "' must be a non-negative integer (bytes)";
    gatherBytes = bytes.getInt();
  }
  std::optional<CheckpointLayout> layout;
  if (config)
    layout.emplace(*config);
  LoweredModel model;
  if (expertParallel) {
    model.expertParallel.worldSize = expertParallel.getWorldSize();
    model.expertParallel.slotsPerRank = expertParallel.getSlotsPerRank();
    for (int64_t slot = 0; slot < expertParallel.getNumSlots(); ++slot)
      model.expertParallel.placement.push_back(
          static_cast<int>(expertParallel.getExpertInSlot(slot)));
  }
  std::map<std::string, ArtifactWeight> weightsByName;
  bool any = false;
  for (auto func : module.getOps<func::FuncOp>()) {
    if (func.isExternal())
      continue;
    any = true;
    // Overlaps are flattened in a copy: the module keeps its IR.
    OwningOpRef<func::FuncOp> flat;
    if (!func.getOps<OverlapOp>().empty()) {
      flat = func.clone();
      int64_t region = 0;
      for (OverlapOp overlap :
           llvm::make_early_inc_range(flat->getOps<OverlapOp>()))
        if (failed(flattenOverlap(overlap, region++)))
          return failure();
    }
    FailureOr<LaunchPlan> plan =
        StepLowering(flat ? *flat : func, layout ? &*layout : nullptr, model,
                     weightsByName, expertParallel, gatherBytes)
            .lower();
    if (failed(plan))
      return failure();
    model.plans[func.getSymName().str()] = std::move(*plan);
  }
  if (!any)
    return module.emitError("the graph has no step function (func.func "
                            "@decode, @prefill)");
  return model;
}

} // namespace kiln
