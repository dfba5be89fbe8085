//===- kilnc.cpp - the Kiln ahead-of-time compiler ------------------------===//
//
// kilnc CONFIG.json|MODEL_DIR|GRAPH.mlir -o OUT.kiln: the model's kiln IR
// (from the DeepSeek-V3 front end or a hand-written graph), GEMM
// configurations, launch plans with their buffer arenas, the GEMM kernels
// compiled to PTX and sm_90a cubins, all written as one artifact
// (compiler/docs/artifact.md). --emit stops early and prints what there is.
//
//===----------------------------------------------------------------------===//

#include "kiln/Dialect/Kiln/KilnDialect.h"
#include "kiln/FrontEnd/ModelGraph.h"
#include "kiln/Kernels/GemmKernelCompiler.h"
#include "kiln/Plan/LaunchPlanLowering.h"
#include "kiln/Transforms/Passes.h"
#include "kiln/artifact.h"
#include "kiln/config.h"
#include "kiln/error.h"
#include "kiln/expert_placement.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>

using namespace mlir;
namespace cl = llvm::cl;

namespace {

constexpr const char *kVersion = "0.1.0";

enum class Emit { Kiln, Plan, Kernels, Artifact };

cl::OptionCategory kilncCategory("kilnc options");

cl::opt<std::string>
    inputPath(cl::Positional, cl::Required,
              cl::desc("<config.json | model dir | graph.mlir>"),
              cl::cat(kilncCategory));
cl::opt<std::string>
    outputPath("o", cl::value_desc("path"),
               cl::desc("Output: the artifact (--emit=artifact, required), a "
                        "directory (--emit=kernels, required), or a file for "
                        "--emit=kiln|plan (default: stdout)"),
               cl::cat(kilncCategory));
cl::opt<int64_t> maxBatch("max-batch", cl::init(8),
                          cl::desc("Sequences per decode step (default 8)"),
                          cl::cat(kilncCategory));
cl::opt<int64_t> maxSeqLen("max-seq-len", cl::init(4096),
                           cl::desc("Longest sequence the KV cache holds "
                                    "(default 4096)"),
                           cl::cat(kilncCategory));
cl::opt<int64_t> prefillChunk("prefill-chunk", cl::init(256),
                              cl::desc("Tokens per prefill step (default 256)"),
                              cl::cat(kilncCategory));
cl::opt<std::string>
    kvCacheDtype("kv-cache-dtype", cl::init("bf16"),
                 cl::desc("KV cache element type: bf16 or fp8 (default bf16)"),
                 cl::cat(kilncCategory));
cl::opt<int64_t> kvPageTokens("kv-page-tokens", cl::init(64),
                              cl::desc("Tokens per KV cache page (default 64)"),
                              cl::cat(kilncCategory));
cl::opt<int64_t> expertParallel(
    "ep", cl::init(1),
    cl::desc("Expert-parallel ranks, 1 to 8 (default 1): above 1, every MoE "
             "layer exchanges its routed rows over NCCL (one process per "
             "GPU; kilnc.md \"Expert parallelism\")"),
    cl::cat(kilncCategory));
cl::opt<std::string> expertPlacement(
    "ep-placement", cl::init("contiguous"), cl::value_desc("contiguous|FILE"),
    cl::desc("Routed experts on the --ep ranks: contiguous (default: expert "
             "e on rank e / (E / ep)), or an EPLB placement balanced for the "
             "per-expert loads in FILE (JSON array of E numbers)"),
    cl::cat(kilncCategory));
cl::opt<int64_t> expertSlotsPerRank(
    "ep-slots-per-rank", cl::init(0),
    cl::desc("Expert slots per rank with --ep-placement FILE (default E / ep "
             "+ 1: one redundant expert per rank)"),
    cl::cat(kilncCategory));
cl::opt<bool> expertParallelSteps(
    "ep-steps",
    cl::desc("Write the expert-parallel steps also at --ep 1 (the exchange "
             "is then a local copy): tests the EP path on one GPU"),
    cl::cat(kilncCategory));
cl::opt<int64_t> expertGatherBytes(
    "ep-gather-bytes", cl::init(2 << 20),
    cl::desc("Decode steps whose exchange of every rank's whole send buffer "
             "receives at most this many bytes of FP8 rows per rank gather "
             "it: fixed sizes, so they run as CUDA Graphs (default 2 MiB; "
             "0: every exchange sends only the routed rows and reads its "
             "counts on the host; kilnc.md \"Expert parallelism\")"),
    cl::cat(kilncCategory));
cl::opt<int64_t> overlapMicroBatches(
    "overlap-micro-batches", cl::init(1),
    cl::desc("Split each MoE layer of the prefill plan into this many "
             "micro-batches whose dispatch and combine run on a second "
             "stream beside the other micro-batches' GEMMs (default 1: "
             "off)"),
    cl::cat(kilncCategory));
cl::opt<Emit> emit(
    "emit", cl::init(Emit::Artifact), cl::desc("What to produce:"),
    cl::values(
        clEnumValN(Emit::Kiln, "kiln",
                   "the model's kiln IR, GEMM configurations chosen"),
        clEnumValN(Emit::Plan, "plan",
                   "the launch plans, weights and kernels as JSON"),
        clEnumValN(Emit::Kernels, "kernels",
                   "NAME.ptx, NAME.cubin and NAME.json per GEMM kernel in "
                   "the -o directory"),
        clEnumValN(Emit::Artifact, "artifact", "the .kiln artifact (default)")),
    cl::cat(kilncCategory));
cl::opt<std::string> ptxasPath(
    "ptxas", cl::value_desc("path"),
    cl::desc("ptxas to assemble the kernels with (default: $KILN_PTXAS, "
             "ptxas on the PATH, /usr/local/cuda/bin/ptxas)"),
    cl::cat(kilncCategory));
cl::opt<bool> noCubin("no-cubin",
                      cl::desc("Stop at PTX: do not run ptxas (kernels "
                               "without cubins; no artifact can hold them)"),
                      cl::cat(kilncCategory));
cl::opt<bool> quiet("quiet", cl::desc("No progress lines on stderr"),
                    cl::cat(kilncCategory));
cl::alias quietShort("q", cl::aliasopt(quiet), cl::desc("Alias for --quiet"),
                     cl::cat(kilncCategory));

/// "kilnc: error: ..." on stderr; returns the exit status for bad input.
int fail(const llvm::Twine &message) {
  llvm::errs() << "kilnc: error: " << message << "\n";
  return 1;
}

/// Progress lines: "kilnc: [3/6] compiling 2 GEMM kernels ...".
class Progress {
public:
  explicit Progress(int total) : total(total) {}
  void step(const llvm::Twine &what) {
    if (!quiet)
      llvm::errs() << "kilnc: [" << ++current << "/" << total << "] " << what
                   << "\n";
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                         start)
        .count();
  }

private:
  int total, current = 0;
  std::chrono::steady_clock::time_point start =
      std::chrono::steady_clock::now();
};

bool isGraph(llvm::StringRef path) { return path.ends_with(".mlir"); }

/// Writes `text` to -o, or stdout without one.
int writeText(llvm::StringRef text) {
  std::string error;
  std::unique_ptr<llvm::ToolOutputFile> out = openOutputFile(
      outputPath.empty() ? std::string("-") : outputPath.getValue(), &error);
  if (!out)
    return fail(error);
  out->os() << text;
  out->keep();
  return 0;
}

llvm::json::Value tensorJson(const kiln::PlanTensor &tensor) {
  llvm::json::Object object{{"buffer", tensor.buffer}};
  if (tensor.col || tensor.cols) {
    object["col"] = tensor.col;
    object["cols"] = tensor.cols;
  }
  if (tensor.parts)
    object["micro_batch"] = llvm::json::Array{tensor.part, tensor.parts};
  return object;
}

std::string compact(llvm::json::Value value) {
  return llvm::formatv("{0}", value).str();
}

/// `{"k1": v1, "k2": v2}` with the keys in the given order (llvm::json sorts
/// them), values compact.
std::string orderedObject(
    llvm::ArrayRef<std::pair<llvm::StringRef, llvm::json::Value>> fields) {
  std::string text = "{";
  for (auto [index, field] : llvm::enumerate(fields))
    text += (index ? ", " : "") + compact(field.first.str()) + ": " +
            compact(field.second);
  return text + "}";
}

/// The shortest decimal that reads back as `value` (llvm::json prints 17
/// digits: 9.9999999999999995e-07 for 1e-06).
std::string number(double value) {
  char text[32];
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    std::snprintf(text, sizeof text, "%lld", static_cast<long long>(value));
    return text;
  }
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value)
      break;
  }
  return text;
}

/// A step's attributes, keys in order, numbers as short as they read back.
std::string attrsJson(const kiln::PlanAttrs &attrs) {
  std::map<std::string, std::string> fields;
  for (const auto &[key, value] : attrs.numbers)
    fields[key] = number(value);
  for (const auto &[key, value] : attrs.strings)
    fields[key] = compact(value);
  for (const auto &[key, values] : attrs.lists) {
    std::string list = "[";
    for (auto [index, value] : llvm::enumerate(values))
      list += (index ? "," : "") + number(value);
    fields[key] = list + "]";
  }
  std::string text = "{";
  for (auto [index, field] : llvm::enumerate(fields))
    text += (index ? "," : "") + compact(field.first) + ":" + field.second;
  return text + "}";
}

/// `"name": [` one element per line `]`.
void printArray(llvm::raw_ostream &os, llvm::StringRef indent,
                llvm::StringRef name, llvm::ArrayRef<std::string> lines,
                bool last) {
  os << indent << compact(name.str()) << ": [\n";
  for (auto [index, line] : llvm::enumerate(lines))
    os << indent << " " << line << (index + 1 < lines.size() ? ",\n" : "\n");
  os << indent << "]" << (last ? "\n" : ",\n");
}

/// The plans, weights and kernels in the manifest's JSON form (artifact.md),
/// one kernel, weight, buffer or step per line.
std::string planJson(const kiln::LoweredModel &model) {
  std::vector<std::string> kernels, weights;
  for (kiln::GemmConfigAttr config : model.gemmConfigs) {
    std::vector<std::pair<llvm::StringRef, llvm::json::Value>> fields = {
        {"name", config.getKernelName()},     {"block_m", config.getBlockM()},
        {"block_n", config.getBlockN()},      {"stages", config.getStages()},
        {"consumers", config.getConsumers()}, {"split_k", config.getSplitK()}};
    if (config.getClusterM() != 1)
      fields.emplace_back("cluster_m", config.getClusterM());
    if (config.getGrouped())
      fields.emplace_back("grouped",
                          kiln::stringifyGroupLayout(*config.getGrouped()));
    if (config.getSwiglu())
      fields.emplace_back("epilogue",
                          config.getQuantize() ? "swiglu_quantize" : "swiglu");
    if (config.getTmaStore())
      fields.emplace_back("store", "tma");
    if (config.getSplitTail())
      fields.emplace_back("split", "tail");
    if (config.getStagedScales())
      fields.emplace_back("scale_a", "tma");
    // Every kernel this compiler emits waits on its grid dependencies
    // (EmitGemmKernels, gemm-abi.md "Dependent launch") and counts
    // min(block_m, M) rows of A per stage (gemm-abi.md "The clamped A box").
    fields.emplace_back("griddepcontrol", "wait");
    fields.emplace_back("a_box", "min_m");
    fields.emplace_back("shared_memory_bytes", config.getSharedMemoryBytes());
    kernels.push_back(orderedObject(fields));
  }
  for (const kiln::ArtifactWeight &weight : model.weights)
    weights.push_back(orderedObject({{"name", weight.name},
                                     {"dtype", weight.dtype},
                                     {"shape", llvm::json::Array(weight.shape)},
                                     {"transform", weight.transform}}));
  std::string text;
  llvm::raw_string_ostream os(text);
  os << "{\n";
  printArray(os, " ", "kernels", kernels, false);
  printArray(os, " ", "weights", weights, false);
  if (model.expertParallel.enabled())
    os << " \"expert_parallel\": "
       << orderedObject({{"world_size", model.expertParallel.worldSize},
                         {"slots_per_rank", model.expertParallel.slotsPerRank},
                         {"placement",
                          llvm::json::Array(model.expertParallel.placement)}})
       << ",\n";
  os << " \"plans\": {\n";
  for (auto [index, entry] : llvm::enumerate(model.plans)) {
    const kiln::LaunchPlan &plan = entry.second;
    std::vector<std::string> buffers, steps;
    for (const kiln::PlanBuffer &buffer : plan.buffers)
      buffers.push_back(orderedObject({{"name", buffer.name},
                                       {"dtype", buffer.dtype},
                                       {"rows", buffer.rows},
                                       {"cols", buffer.cols},
                                       {"offset", buffer.offset},
                                       {"bytes", buffer.bytes}}));
    for (const kiln::PlanStep &step : plan.steps) {
      llvm::json::Array inputs, outputs;
      for (const kiln::PlanTensor &tensor : step.inputs)
        inputs.push_back(tensorJson(tensor));
      for (const kiln::PlanTensor &tensor : step.outputs)
        outputs.push_back(tensorJson(tensor));
      std::vector<std::pair<llvm::StringRef, llvm::json::Value>> fields = {
          {"op", step.op}};
      if (plan.streams > 1)
        fields.emplace_back("stream", step.stream);
      if (step.event >= 0)
        fields.emplace_back("event", step.event);
      fields.emplace_back("inputs", std::move(inputs));
      fields.emplace_back("outputs", std::move(outputs));
      fields.emplace_back("weights", llvm::json::Array(step.weights));
      if (!step.kernel.empty())
        fields.emplace_back("kernel", step.kernel);
      std::string line = orderedObject(fields);
      line.pop_back();
      steps.push_back(line + ", \"attrs\": " + attrsJson(step.attrs) + "}");
    }
    os << "  " << compact(entry.first)
       << ": {\"max_tokens\": " << plan.maxTokens
       << ", \"max_sequences\": " << plan.maxSequences
       << ", \"arena_bytes\": " << plan.arenaBytes;
    if (plan.streams > 1)
      os << ", \"streams\": " << plan.streams
         << ", \"events\": " << plan.events;
    os << ",\n";
    printArray(os, "   ", "buffers", buffers, false);
    printArray(os, "   ", "steps", steps, true);
    os << "  }" << (index + 1 < model.plans.size() ? ",\n" : "\n");
  }
  os << " }\n}\n";
  return text;
}

/// The launch manifest of gemm-abi.md, beside each kernel of --emit=kernels.
std::string kernelManifest(const kiln::ArtifactKernel &kernel,
                           const kiln::AssembledKernel *assembled) {
  llvm::json::Object manifest{{"kernel", kernel.name},
                              {"abi_version", 1},
                              {"block_m", kernel.blockM},
                              {"block_n", kernel.blockN},
                              {"stages", kernel.stages},
                              {"consumer_warpgroups", kernel.consumers},
                              {"split_k", kernel.splitK},
                              {"threads", 128 * (1 + kernel.consumers)},
                              {"smem_bytes", kernel.sharedMemoryBytes}};
  if (!kernel.grouped.empty())
    manifest["grouped"] = kernel.grouped;
  if (kernel.clusterM != 1)
    manifest["cluster_m"] = kernel.clusterM;
  if (!kernel.epilogue.empty())
    manifest["epilogue"] = kernel.epilogue;
  if (!kernel.store.empty())
    manifest["store"] = kernel.store;
  if (!kernel.split.empty())
    manifest["split"] = kernel.split;
  if (!kernel.scaleA.empty())
    manifest["scale_a"] = kernel.scaleA;
  if (!kernel.griddepcontrol.empty())
    manifest["griddepcontrol"] = kernel.griddepcontrol;
  if (!kernel.aBox.empty())
    manifest["a_box"] = kernel.aBox;
  if (assembled) {
    manifest["registers"] = assembled->registers;
    manifest["spill_bytes"] = assembled->spillBytes;
  }
  return llvm::formatv("{0:1}\n", llvm::json::Value(std::move(manifest))).str();
}

int writeFile(const std::string &path, llvm::StringRef bytes) {
  std::error_code ec;
  llvm::raw_fd_ostream os(path, ec, llvm::sys::fs::OF_None);
  if (ec)
    return fail("cannot write '" + path + "': " + ec.message());
  os << bytes;
  return 0;
}

int checkOptions() {
  for (auto [name, value] :
       {std::pair<const char *, int64_t>{"--max-batch", maxBatch},
        {"--max-seq-len", maxSeqLen},
        {"--prefill-chunk", prefillChunk},
        {"--kv-page-tokens", kvPageTokens},
        {"--ep", expertParallel},
        {"--overlap-micro-batches", overlapMicroBatches}})
    if (value < 1)
      return fail(llvm::Twine(name) + " must be positive, got " +
                  llvm::Twine(value));
  if (kvCacheDtype != "bf16" && kvCacheDtype != "fp8")
    return fail("--kv-cache-dtype must be bf16 or fp8, got '" + kvCacheDtype +
                "'");
  if (expertParallel > 8)
    return fail("--ep " + llvm::Twine(expertParallel.getValue()) +
                ": at most 8 expert-parallel ranks (one host's GPUs)");
  const bool ep = expertParallel > 1 || expertParallelSteps ||
                  expertPlacement != "contiguous" ||
                  expertSlotsPerRank.getNumOccurrences();
  if (ep && isGraph(inputPath))
    return fail("--ep, --ep-steps and --ep-placement apply to a config's "
                "model graph; a hand-written graph sets its own "
                "kiln.expert_parallel module attribute");
  if (expertGatherBytes < 0)
    return fail("--ep-gather-bytes must be at least 0, got " +
                std::to_string(expertGatherBytes));
  if (overlapMicroBatches > 1 && isGraph(inputPath))
    return fail("--overlap-micro-batches applies to a config's model graph; "
                "a hand-written graph writes its own kiln.overlap ops");
  if ((emit == Emit::Artifact || emit == Emit::Kernels) && outputPath.empty())
    return fail(llvm::Twine("-o is required for --emit=") +
                (emit == Emit::Artifact ? "artifact" : "kernels"));
  return 0;
}

/// A graph fixes its own step sizes: --max-batch and --prefill-chunk
/// default to them and must agree with them when given.
LogicalResult takeStepSizesFromGraph(const kiln::LoweredModel &model) {
  for (auto [planName, option, extent] :
       {std::make_tuple("decode", &maxBatch, &kiln::LaunchPlan::maxSequences),
        std::make_tuple("prefill", &prefillChunk,
                        &kiln::LaunchPlan::maxTokens)}) {
    auto it = model.plans.find(planName);
    if (it == model.plans.end())
      continue;
    int64_t size = it->second.*extent;
    if (option->getNumOccurrences() && *option != size) {
      fail(llvm::formatv("--{0} {1} disagrees with the graph: @{2} is built "
                         "for {3}",
                         option->ArgStr, option->getValue(), planName, size)
               .str());
      return failure();
    }
    *option = size;
  }
  return success();
}

/// The placement of --ep, --ep-placement and --ep-slots-per-rank as the
/// module attribute the plan lowering reads; kiln::Error on bad input.
kiln::ExpertParallelAttr expertParallelAttr(MLIRContext &context,
                                            const kiln::ModelConfig &config) {
  const int experts = static_cast<int>(config.nRoutedExperts);
  const int ranks = static_cast<int>(expertParallel);
  if (experts < 1)
    throw kiln::Error("--ep: the config has no routed experts");
  std::optional<kiln::ExpertPlacement> placement;
  if (expertPlacement == "contiguous") {
    if (expertSlotsPerRank.getNumOccurrences())
      throw kiln::Error("--ep-slots-per-rank applies to --ep-placement FILE "
                        "(the contiguous placement has E / ep slots)");
    if (experts % ranks)
      throw kiln::Error("--ep " + std::to_string(ranks) + " does not divide " +
                        std::to_string(experts) +
                        " routed experts: the contiguous placement needs it "
                        "(or give --ep-placement LOADS.json)");
    placement.emplace(kiln::ExpertPlacement::contiguous(experts, ranks));
  } else {
    auto file = llvm::MemoryBuffer::getFile(expertPlacement, /*IsText=*/true);
    if (!file)
      throw kiln::Error("--ep-placement: cannot read '" + expertPlacement +
                        "': " + file.getError().message());
    llvm::Expected<llvm::json::Value> json =
        llvm::json::parse((*file)->getBuffer());
    const llvm::json::Array *array = json ? json->getAsArray() : nullptr;
    if (!json)
      llvm::consumeError(json.takeError());
    std::vector<double> loads;
    for (size_t i = 0; array && i < array->size(); ++i) {
      std::optional<double> load = (*array)[i].getAsNumber();
      if (!load)
        throw kiln::Error("--ep-placement " + expertPlacement + ": entry " +
                          std::to_string(i) + " is not a number");
      loads.push_back(*load);
    }
    if (!array || static_cast<int>(loads.size()) != experts)
      throw kiln::Error("--ep-placement " + expertPlacement +
                        ": expected a JSON array of " +
                        std::to_string(experts) +
                        " per-expert loads (one per routed expert)");
    const int slots = expertSlotsPerRank > 0
                          ? static_cast<int>(expertSlotsPerRank)
                          : (experts + ranks - 1) / ranks + 1;
    placement.emplace(kiln::ExpertPlacement::balanced(loads, ranks, slots));
  }
  std::vector<int64_t> slots;
  for (int slot = 0; slot < placement->ranks() * placement->slotsPerRank();
       ++slot) {
    // A slot the loads left unused (nothing left to relieve) holds one more
    // replica, so that every slot names an expert as the attribute wants.
    int expert = placement->slotExpert(slot);
    slots.push_back(expert >= 0 ? expert : slot % experts);
  }
  return kiln::ExpertParallelAttr::get(&context, ranks, experts,
                                       placement->slotsPerRank(), slots);
}

int run() {
  if (int status = checkOptions())
    return status;
  int total = emit == Emit::Kiln      ? 3
              : emit == Emit::Plan    ? 4
              : emit == Emit::Kernels ? 5
                                      : 6;
  Progress progress(total);

  DialectRegistry registry;
  kiln::registerGemmKernelDialects(registry);
  registry.insert<tensor::TensorDialect>();
  MLIRContext context(registry);
  context.loadAllAvailableDialects();
  // Errors name the op and its location; the op's text adds nothing.
  context.printOpOnDiagnostic(false);
  llvm::SourceMgr sourceMgr;
  SourceMgrDiagnosticHandler diagnostics(sourceMgr, &context);

  // 1. The model: a config (the DeepSeek-V3 front end) or a graph.
  std::optional<kiln::ModelConfig> config;
  OwningOpRef<ModuleOp> module;
  std::string source = llvm::sys::path::filename(inputPath).str();
  progress.step("reading " + inputPath);
  if (isGraph(inputPath)) {
    std::string error;
    std::unique_ptr<llvm::MemoryBuffer> file = openInputFile(inputPath, &error);
    if (!file)
      return fail(error);
    sourceMgr.AddNewSourceBuffer(std::move(file), llvm::SMLoc());
    module = parseSourceFile<ModuleOp>(sourceMgr, &context);
    if (!module)
      return 1; // the parser has reported where
    progress.step("checking the graph");
  } else {
    try {
      std::filesystem::path path(inputPath.getValue());
      if (std::filesystem::is_directory(path)) {
        config = kiln::loadConfig(path);
        source = "config.json";
      } else {
        auto file = llvm::MemoryBuffer::getFile(inputPath, /*IsText=*/true);
        if (!file)
          return fail("cannot read '" + inputPath +
                      "': " + file.getError().message());
        config = kiln::parseConfig((*file)->getBuffer().str(), inputPath);
      }
      progress.step(llvm::formatv("building the model graph ({0} layers, "
                                  "decode {1} tokens, prefill {2} tokens)",
                                  config->numHiddenLayers, maxBatch.getValue(),
                                  prefillChunk.getValue())
                        .str());
      module = kiln::buildModelGraph(
          context, *config,
          kiln::defaultModelSteps(maxBatch, prefillChunk, overlapMicroBatches),
          inputPath);
    } catch (const kiln::Error &error) {
      return fail(error.what());
    }
  }
  const bool ep = expertParallel > 1 || expertParallelSteps ||
                  expertPlacement != "contiguous" ||
                  expertSlotsPerRank.getNumOccurrences();
  if (ep) {
    try {
      (*module)->setAttr(kiln::kExpertParallelModuleAttr,
                         expertParallelAttr(context, *config));
      (*module)->setAttr(kiln::kExpertParallelGatherModuleAttr,
                         IntegerAttr::get(IntegerType::get(&context, 64),
                                          expertGatherBytes.getValue()));
    } catch (const kiln::Error &error) {
      return fail(error.what());
    }
  }
  if (failed(verify(*module)))
    return 1;

  // 2. GEMM configurations, and the two-stream schedule of every
  // kiln.overlap (launch-plan lowering turns it into streams and events).
  progress.step("selecting GEMM configurations");
  PassManager selection(&context);
  selection.addPass(kiln::createKilnSelectGemmConfig());
  selection.addPass(kiln::createKilnScheduleOverlap());
  if (failed(selection.run(*module)))
    return 1;
  if (emit == Emit::Kiln) {
    std::string text;
    llvm::raw_string_ostream os(text);
    module->print(os, OpPrintingFlags().enableDebugInfo(false));
    os << "\n";
    return writeText(text);
  }

  // 3. Launch plans.
  progress.step("lowering the step functions to launch plans");
  FailureOr<kiln::LoweredModel> lowered =
      kiln::lowerToLaunchPlans(*module, config ? &*config : nullptr);
  if (failed(lowered))
    return 1;
  if (!config && failed(takeStepSizesFromGraph(*lowered)))
    return 1;
  if (emit == Emit::Plan)
    return writeText(planJson(*lowered));

  // 4. Kernels: PTX in process, then ptxas.
  std::optional<std::string> ptxas;
  if (!noCubin) {
    ptxas = kiln::findPtxas(ptxasPath);
    if (!ptxas)
      return fail("no ptxas: pass --ptxas PATH or set KILN_PTXAS (CUDA 13's "
                  "ptxas assembles the kernels; --no-cubin stops at PTX)");
  }
  size_t numKernels = lowered->gemmConfigs.size();
  progress.step(llvm::formatv("compiling {0} GEMM kernel{1} ({2})", numKernels,
                              numKernels == 1 ? "" : "s",
                              noCubin ? "PTX only" : "PTX, ptxas " + *ptxas)
                    .str());
  std::vector<kiln::ArtifactKernel> kernels;
  std::vector<std::optional<kiln::AssembledKernel>> assembled;
  for (kiln::GemmConfigAttr gemm : lowered->gemmConfigs) {
    kiln::ArtifactKernel kernel;
    kernel.name = gemm.getKernelName();
    kernel.blockM = gemm.getBlockM();
    kernel.blockN = gemm.getBlockN();
    kernel.stages = gemm.getStages();
    kernel.consumers = gemm.getConsumers();
    kernel.splitK = gemm.getSplitK();
    kernel.clusterM = gemm.getClusterM();
    if (gemm.getGrouped())
      kernel.grouped = kiln::stringifyGroupLayout(*gemm.getGrouped()).str();
    if (gemm.getSwiglu())
      kernel.epilogue = gemm.getQuantize() ? "swiglu_quantize" : "swiglu";
    if (gemm.getTmaStore())
      kernel.store = "tma";
    if (gemm.getSplitTail())
      kernel.split = "tail";
    if (gemm.getStagedScales())
      kernel.scaleA = "tma";
    kernel.griddepcontrol = "wait";
    kernel.aBox = "min_m";
    kernel.sharedMemoryBytes = gemm.getSharedMemoryBytes();
    llvm::Expected<std::string> ptx =
        kiln::compileGemmKernelToPtx(context, gemm);
    if (!ptx)
      return fail(llvm::toString(ptx.takeError()));
    kernel.ptx = std::move(*ptx);
    assembled.emplace_back();
    if (ptxas) {
      llvm::Expected<kiln::AssembledKernel> cubin =
          kiln::assemblePtx(*ptxas, kernel.ptx, kernel.name);
      if (!cubin)
        return fail(llvm::toString(cubin.takeError()));
      if (cubin->spillBytes)
        return fail(llvm::formatv("kernel {0} spills {1} bytes of registers "
                                  "(ptxas -v):\n{2}",
                                  kernel.name, cubin->spillBytes, cubin->log)
                        .str());
      if (cubin->serializedWgmma)
        return fail(llvm::formatv("ptxas serializes the wgmmas of kernel {0} "
                                  "(ptxas -v):\n{1}",
                                  kernel.name, cubin->log)
                        .str());
      kernel.cubin = cubin->cubin;
      if (!quiet)
        llvm::errs() << llvm::formatv(
            "kilnc:       {0}: {1} registers, {2} B shared memory, "
            "{3} B cubin\n",
            kernel.name, cubin->registers, kernel.sharedMemoryBytes,
            kernel.cubin.size());
      assembled.back() = std::move(*cubin);
    }
    kernels.push_back(std::move(kernel));
  }
  if (emit == Emit::Kernels) {
    progress.step("writing the kernels to " + outputPath);
    if (std::error_code ec = llvm::sys::fs::create_directories(outputPath))
      return fail("cannot create '" + outputPath + "': " + ec.message());
    for (auto [kernel, cubin] : llvm::zip_equal(kernels, assembled)) {
      std::string base = outputPath + "/" + kernel.name;
      if (int status = writeFile(base + ".ptx", kernel.ptx))
        return status;
      if (cubin && writeFile(base + ".cubin", kernel.cubin))
        return 1;
      if (writeFile(base + ".json",
                    kernelManifest(kernel, cubin ? &*cubin : nullptr)))
        return 1;
    }
    return 0;
  }

  // 5. The artifact.
  progress.step("writing " + outputPath);
  kiln::Artifact artifact;
  artifact.producer = std::string("kilnc ") + kVersion;
  artifact.source = source;
  artifact.targetArch = kiln::kGemmTargetChip;
  if (config) {
    artifact.modelType = "deepseek_v3";
    artifact.modelHash = kiln::modelHash(*config);
    artifact.hiddenSize = config->hiddenSize;
    artifact.numHiddenLayers = config->numHiddenLayers;
    artifact.vocabSize = config->vocabSize;
  }
  artifact.options.maxBatch = maxBatch;
  artifact.options.maxSeqLen = maxSeqLen;
  artifact.options.prefillChunk = prefillChunk;
  artifact.options.kvCacheDtype = kvCacheDtype;
  artifact.options.kvPageTokens = kvPageTokens;
  artifact.options.expertParallel =
      lowered->expertParallel.enabled() ? lowered->expertParallel.worldSize : 1;
  artifact.expertParallel = lowered->expertParallel;
  artifact.options.overlapMicroBatches = overlapMicroBatches;
  artifact.kernels = std::move(kernels);
  artifact.weights = std::move(lowered->weights);
  artifact.plans = std::move(lowered->plans);
  try {
    kiln::writeArtifact(artifact, outputPath.getValue());
  } catch (const kiln::Error &error) {
    return fail(llvm::Twine(error.what()) +
                (noCubin ? " (--no-cubin: an artifact needs the cubins; use "
                           "--emit=kernels or --emit=plan without ptxas)"
                         : ""));
  }
  uint64_t bytes = 0;
  llvm::sys::fs::file_size(outputPath, bytes);
  if (!quiet)
    llvm::errs() << llvm::formatv(
        "kilnc: wrote {0}: {1} kernels, {2} plans, {3} weights, {4} bytes, "
        "in {5:f1} s\n",
        outputPath, artifact.kernels.size(), artifact.plans.size(),
        artifact.weights.size(), bytes, progress.seconds());
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  cl::HideUnrelatedOptions(kilncCategory);
  cl::SetVersionPrinter([](llvm::raw_ostream &os) {
    os << "kilnc " << kVersion << " (Kiln ahead-of-time compiler, target "
       << kiln::kGemmTargetChip << ")\n";
  });
  cl::ParseCommandLineOptions(
      argc, argv,
      "kilnc: the Kiln ahead-of-time compiler\n\n"
      "  kilnc CONFIG.json|MODEL_DIR|GRAPH.mlir -o OUT.kiln [options]\n\n"
      "Compiles a DeepSeek-V3 config.json (or a hand-written kiln graph) to a "
      ".kiln artifact:\nkiln IR, GEMM kernels (PTX, sm_90a cubins), decode "
      "and prefill launch plans.\nExit status: 0 on success, 1 on bad input "
      "or a failed compilation.\n");
  return run();
}
