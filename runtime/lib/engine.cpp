//===- engine.cpp - model loading and the continuous-batching scheduler ---===//
//
// Locking, from outermost to innermost: a request's callback mutex (held by
// the engine thread while the callback runs, so the callback may take any
// other lock), then the engine's queue mutex or a request's state mutex,
// which are never held together and never held while calling out. The
// engine thread never sleeps while a request waits or runs, so cancel() is a
// plain flag and needs no wake-up.
//
//===----------------------------------------------------------------------===//

#include "kiln/engine.h"

#include "kiln/artifact.h"
#ifdef KILN_HAVE_CUDA
#include "kiln/cuda/cuda_backend.h"
#include "kiln/cuda/driver.h"
#endif

#include "kiln/checkpoint.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <numeric>
#include <optional>
#include <thread>
#include <utility>

namespace kiln {

namespace {

/// The engine whose scheduler runs on this thread, if any.
thread_local const void *currentEngine = nullptr;

std::atomic<uint64_t> nextRequestId{1};

std::string describeCurrentException() {
  try {
    throw;
  } catch (const std::bad_alloc &) {
    return "out of memory";
  } catch (const std::exception &error) {
    return error.what();
  } catch (...) {
    return "unknown exception";
  }
}

//===----------------------------------------------------------------------===//
// Load progress
//===----------------------------------------------------------------------===//

/// Reports each stage and each tensor, and turns a cancellation into
/// LoadCancelled, which unwinds everything loaded so far.
class LoadReporter {
public:
  explicit LoadReporter(const ModelLoadOptions &options) : options(options) {}

  void report(LoadStage stage, double fraction) {
    fraction = std::clamp(fraction, lastFraction, 1.0);
    lastFraction = fraction;
    if (options.cancel && options.cancel->load())
      throw LoadCancelled();
    if (options.progress && !options.progress({stage, fraction}))
      throw LoadCancelled();
  }

private:
  const ModelLoadOptions &options;
  double lastFraction = 0;
};

/// The checkpoint as the backend reads it, counting the values read.
class ReportingWeights : public WeightSource {
public:
  ReportingWeights(const Checkpoint &checkpoint, LoadReporter &reporter)
      : checkpoint(checkpoint), reporter(reporter) {
    // What CpuBackend loads: every tensor but the MTP layers'.
    const ModelConfig &config = checkpoint.config();
    for (const ExpectedTensor &tensor : expectedTensors(config)) {
      bool isMtp = false;
      for (int64_t layer = config.numHiddenLayers;
           layer < config.numCheckpointLayers(); ++layer)
        isMtp |= tensor.name.rfind(
                     "model.layers." + std::to_string(layer) + ".", 0) == 0;
      if (!isMtp)
        total += std::accumulate(tensor.shape.begin(), tensor.shape.end(), 1.0,
                                 std::multiplies<double>());
    }
  }

  bool contains(const std::string &name) const override {
    return checkpoint.contains(name);
  }

  std::vector<float>
  loadFloat(const std::string &name,
            const std::vector<int64_t> &shape) const override {
    std::vector<float> values = checkpoint.loadFloat(name, shape);
    loaded += static_cast<double>(values.size());
    reporter.report(LoadStage::Weights, total > 0 ? loaded / total : 1.0);
    return values;
  }

private:
  const Checkpoint &checkpoint;
  LoadReporter &reporter;
  double total = 0;
  mutable double loaded = 0;
};

} // namespace

const char *loadStageName(LoadStage stage) {
  switch (stage) {
  case LoadStage::Checkpoint:
    return "checkpoint";
  case LoadStage::Tokenizer:
    return "tokenizer";
  case LoadStage::Weights:
    return "weights";
  case LoadStage::Done:
    return "done";
  }
  return "unknown";
}

const char *finishReasonName(FinishReason reason) {
  switch (reason) {
  case FinishReason::None:
    return "none";
  case FinishReason::StopString:
    return "stop";
  case FinishReason::Eos:
    return "eos";
  case FinishReason::Length:
    return "length";
  case FinishReason::Cancelled:
    return "cancelled";
  case FinishReason::Error:
    return "error";
  }
  return "unknown";
}

bool onEngineThread() { return currentEngine != nullptr; }

//===----------------------------------------------------------------------===//
// Model
//===----------------------------------------------------------------------===//

Model::Model(std::unique_ptr<Backend> backend, Tokenizer tokenizer)
    : modelBackend(std::move(backend)), modelTokenizer(std::move(tokenizer)) {
  if (!modelBackend)
    throw Error("Model: no backend");
}

Model::~Model() = default;

namespace {

/// The artifact of `options`, read before anything else is opened so that a
/// bad one fails fast; a build without CUDA refuses it.
Artifact readGpuArtifact(const ModelLoadOptions &options) {
#ifdef KILN_HAVE_CUDA
  return readArtifact(options.artifact);
#else
  throw Error("model load: " + options.artifact.string() +
              ": this build of Kiln has no CUDA backend (configured without "
              "the CUDA toolkit); load the model without an artifact to use "
              "the CPU reference");
#endif
}

#ifdef KILN_HAVE_CUDA
/// The CUDA backend over `checkpoint`, its upload reported as the Weights
/// stage.
std::unique_ptr<Backend> makeCudaBackend(const Checkpoint &checkpoint,
                                         Artifact artifact,
                                         const ModelLoadOptions &options,
                                         LoadReporter &reporter) {
  cuda::CudaBackendOptions cudaOptions;
  cudaOptions.device = options.device;
  cudaOptions.kvCacheTokens = options.kvCacheTokens;
  cudaOptions.progress = [&](double fraction) {
    try {
      reporter.report(LoadStage::Weights, fraction);
      return true;
    } catch (const LoadCancelled &) {
      return false;
    }
  };
  try {
    return std::make_unique<cuda::CudaBackend>(checkpoint, std::move(artifact),
                                               options.artifact.string(),
                                               cudaOptions);
  } catch (const Error &) {
    // A cancelled upload surfaces as the backend's error; report it as the
    // cancellation it was.
    reporter.report(LoadStage::Weights, 0);
    throw;
  }
}
#endif

} // namespace

int gpuCount(std::string *whyNone) {
#ifdef KILN_HAVE_CUDA
  return cuda::deviceCount(whyNone);
#else
  if (whyNone)
    *whyNone = "this build of Kiln has no CUDA backend";
  return 0;
#endif
}

std::shared_ptr<Model> Model::load(const std::filesystem::path &modelDir,
                                   const ModelLoadOptions &options) {
  LoadReporter reporter(options);
  reporter.report(LoadStage::Checkpoint, 0);
  std::optional<Artifact> artifact;
  if (!options.artifact.empty())
    artifact = readGpuArtifact(options);
  // The checkpoint is only needed while the backend copies the weights out
  // of it; its mappings go when this function returns or throws.
  Checkpoint checkpoint(modelDir);
  reporter.report(LoadStage::Tokenizer, 0);
  Tokenizer tokenizer = Tokenizer::load(modelDir);
  reporter.report(LoadStage::Weights, 0);
  std::unique_ptr<Backend> backend;
#ifdef KILN_HAVE_CUDA
  if (artifact)
    backend =
        makeCudaBackend(checkpoint, std::move(*artifact), options, reporter);
#endif
  if (!backend) {
    ReportingWeights weights(checkpoint, reporter);
    backend =
        std::make_unique<CpuBackend>(checkpoint.config(), weights, options.cpu);
  }
  reporter.report(LoadStage::Done, 1);
  return std::make_shared<Model>(std::move(backend), std::move(tokenizer));
}

//===----------------------------------------------------------------------===//
// Request
//===----------------------------------------------------------------------===//

struct Request::Impl {
  // Set by submit, then read-only.
  uint64_t id = 0;
  const void *engine = nullptr;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int64_t maxTokens = 0;
  std::vector<std::string> stopStrings;
  bool queueEvents = true;
  /// KV positions held while active: prompt plus maxTokens.
  int64_t reservation = 0;
  /// Holds its slot and reservation; guarded by the engine's mutex.
  bool admitted = false;

  std::atomic<bool> cancelRequested{false};

  /// Held by the engine thread while the callback runs; recursive so that a
  /// callback may detach its own request.
  std::recursive_mutex callbackMutex;
  std::function<void(Request &, const TokenEvent &)> callback;
  std::atomic<bool> detached{false};

  std::atomic<bool> polling{false};

  mutable std::mutex mutex;
  mutable std::condition_variable changed;
  // Guarded by `mutex`.
  std::deque<TokenEvent> events;
  bool finished = false;
  FinishReason reason = FinishReason::None;
  std::string error;
  std::vector<int32_t> tokens;
  std::string text;
};

Request::Request(std::unique_ptr<Impl> impl) : impl(std::move(impl)) {}
Request::~Request() = default;

uint64_t Request::id() const { return impl->id; }

void Request::cancel() { impl->cancelRequested.store(true); }

namespace {

/// Blocking calls on an engine thread could wait for that very thread.
void checkMayBlock(std::chrono::milliseconds timeout, const char *function) {
  if (timeout.count() != 0 && onEngineThread())
    throw Error(std::string(function) +
                ": a nonzero timeout on an engine thread (in a callback) "
                "could wait for the engine itself; use a timeout of 0");
}

/// Waits on `changed` until `ready`, for `timeout` (negative: no limit).
template <typename Predicate>
bool waitFor(std::condition_variable &changed,
             std::unique_lock<std::mutex> &lock,
             std::chrono::milliseconds timeout, Predicate ready) {
  // Beyond a year is forever: now + a huge duration would overflow.
  if (timeout.count() < 0 || timeout > std::chrono::hours(24 * 366)) {
    changed.wait(lock, ready);
    return true;
  }
  return changed.wait_for(lock, timeout, ready);
}

} // namespace

PollResult Request::poll(TokenEvent &event, std::chrono::milliseconds timeout) {
  checkMayBlock(timeout, "Request::poll");
  if (impl->polling.exchange(true))
    throw Error("Request::poll: another thread is polling this request");
  struct Release {
    std::atomic<bool> &flag;
    ~Release() { flag.store(false); }
  } release{impl->polling};

  std::unique_lock<std::mutex> lock(impl->mutex);
  waitFor(impl->changed, lock, timeout,
          [&] { return !impl->events.empty() || impl->finished; });
  if (!impl->events.empty()) {
    event = std::move(impl->events.front());
    impl->events.pop_front();
    return PollResult::Event;
  }
  // The last event is queued together with `finished`, so it was taken.
  return impl->finished ? PollResult::End : PollResult::Timeout;
}

bool Request::wait(std::chrono::milliseconds timeout) const {
  checkMayBlock(timeout, "Request::wait");
  std::unique_lock<std::mutex> lock(impl->mutex);
  return waitFor(impl->changed, lock, timeout, [&] { return impl->finished; });
}

bool Request::finished() const {
  std::lock_guard<std::mutex> lock(impl->mutex);
  return impl->finished;
}

FinishReason Request::finishReason() const {
  std::lock_guard<std::mutex> lock(impl->mutex);
  return impl->reason;
}

std::string Request::error() const {
  std::lock_guard<std::mutex> lock(impl->mutex);
  return impl->error;
}

int64_t Request::promptTokens() const {
  return static_cast<int64_t>(impl->prompt.size());
}

std::vector<int32_t> Request::tokens() const {
  std::lock_guard<std::mutex> lock(impl->mutex);
  return impl->tokens;
}

std::string Request::text() const {
  std::lock_guard<std::mutex> lock(impl->mutex);
  return impl->text;
}

void Request::detachCallback() {
  impl->detached.store(true);
  if (currentEngine != nullptr && currentEngine != impl->engine)
    return; // another engine's thread: waiting here could deadlock
  // Elsewhere this waits for a running call; on the request's own engine
  // thread none runs but possibly this very one (the mutex is recursive).
  std::lock_guard<std::recursive_mutex> lock(impl->callbackMutex);
}

//===----------------------------------------------------------------------===//
// Engine
//===----------------------------------------------------------------------===//

namespace {

struct Queued {
  std::shared_ptr<Request> request;
  Request::Impl *state = nullptr;
};

/// A request being decoded: its sequence and decoding state.
struct Active {
  Active(Queued queued, std::unique_ptr<BackendSequence> sequence,
         const Tokenizer &tokenizer)
      : request(std::move(queued.request)), state(queued.state),
        sequence(std::move(sequence)), sampler(state->sampling),
        stops({{tokenizer.eosId()}, state->stopStrings}),
        decoder(tokenizer, /*skipSpecial=*/true), next(state->prompt) {}

  std::shared_ptr<Request> request;
  Request::Impl *state;
  std::unique_ptr<BackendSequence> sequence;
  Sampler sampler;
  StopChecker stops;
  StreamDecoder decoder;
  /// All text decoded so far, and how much of it events have carried.
  std::string text;
  size_t delivered = 0;
  /// The next step's input (the prompt first) and where it starts.
  std::vector<int32_t> next;
  int64_t position = 0;
  int64_t generated = 0;
  bool done = false;
};

} // namespace

struct Engine::Impl {
  Impl(std::shared_ptr<Model> model, const EngineOptions &options)
      : model(std::move(model)), options(options) {}

  std::shared_ptr<Model> model;
  EngineOptions options;
  int64_t budget = 0;
  std::thread thread;

  mutable std::mutex mutex;
  std::condition_variable wake;
  // Guarded by `mutex`.
  std::deque<Queued> waiting;
  bool stopping = false;
  EngineStats stats;

  void run();
  /// One round: admission, cancellations, a step. False once stopped.
  bool iterate(std::vector<Active> &active);
  void forceFinish(Active &active, const std::string &message) noexcept;
  void stepOnce(std::vector<Active> &active);
  void finishActive(Active &active, FinishReason reason, int32_t token,
                    const std::string &error = "");
  /// Hands `event` to the request's callback and queue; returns whether it
  /// was the last (a callback that throws makes it so).
  bool deliver(Request &request, Request::Impl &state, TokenEvent event);
};

bool Engine::Impl::deliver(Request &request, Request::Impl &state,
                           TokenEvent event) {
  // The callback first, the queue and `finished` after: once wait() returns
  // every callback has run.
  std::optional<std::string> callbackFailure;
  {
    std::lock_guard<std::recursive_mutex> lock(state.callbackMutex);
    if (state.callback && !state.detached.load()) {
      try {
        state.callback(request, event);
      } catch (...) {
        callbackFailure =
            "the token callback threw: " + describeCurrentException();
      }
    }
    if (callbackFailure || event.isLast())
      state.callback = nullptr; // frees what it captured, e.g. the request
  }
  if (callbackFailure && !event.isLast()) {
    event.finishReason = FinishReason::Error;
    event.error = *callbackFailure;
  }
  if (event.isLast()) {
    // Before the request reads as finished, so that a client that saw it
    // finish sees its slot and reservation free.
    std::lock_guard<std::mutex> lock(mutex);
    if (state.admitted) {
      stats.kvReservedTokens -= state.reservation;
      --stats.active;
      state.admitted = false;
    }
    ++stats.finished;
  }
  const bool last = event.isLast();
  {
    // One critical section: poll() must never see `finished` without the
    // last event queued.
    std::lock_guard<std::mutex> lock(state.mutex);
    if (event.token >= 0)
      state.tokens.push_back(event.token);
    state.text += event.text;
    if (last) {
      state.finished = true;
      state.reason = event.finishReason;
      state.error = event.error;
    }
    if (state.queueEvents)
      state.events.push_back(std::move(event));
  }
  state.changed.notify_all();
  return last;
}

void Engine::Impl::finishActive(Active &active, FinishReason reason,
                                int32_t token, const std::string &error) {
  TokenEvent event;
  event.token = token;
  event.finishReason = reason;
  event.error = error;
  // Everything generated is final now: flush what was held back for a
  // possible stop string or an unfinished character.
  if (reason != FinishReason::StopString) {
    active.text += active.decoder.finish();
    event.text = active.text.substr(active.delivered);
    active.delivered = active.text.size();
  }
  active.done = true;
  deliver(*active.request, *active.state, std::move(event));
}

void Engine::Impl::stepOnce(std::vector<Active> &active) {
  std::vector<BackendStepEntry> entries;
  entries.reserve(active.size());
  for (Active &a : active)
    entries.push_back({a.sequence.get(), a.next, a.position});
  // The embedding is padded past the tokenizer's vocabulary; ids there have
  // no text and are never sampled.
  const int64_t textVocab = std::min<int64_t>(model->config().vocabSize,
                                              model->tokenizer().vocabSize());
  std::vector<BackendSampling> sampling;
  sampling.reserve(active.size());
  for (Active &a : active)
    sampling.push_back({&a.sampler, textVocab});
  std::vector<SampledToken> sampled;
  try {
    sampled = model->backend().stepAndSample(entries, sampling);
  } catch (...) {
    std::string message = "backend step failed: " + describeCurrentException();
    for (Active &a : active)
      finishActive(a, FinishReason::Error, -1, message);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    ++stats.steps;
  }

  for (size_t i = 0; i < active.size(); ++i) {
    Active &a = active[i];
    a.position += static_cast<int64_t>(a.next.size());
    int32_t token = -1;
    try {
      if (sampled[i].error)
        std::rethrow_exception(sampled[i].error);
      token = sampled[i].token;
      a.text += a.decoder.push(token);
    } catch (...) {
      finishActive(a, FinishReason::Error, token, describeCurrentException());
      continue;
    }
    ++a.generated;
    StopDecision stop = a.stops.check(token, a.text);
    if (stop.reason == StopReason::StopString) {
      TokenEvent event;
      event.token = token;
      event.finishReason = FinishReason::StopString;
      // Text that could start a stop string was held back, so the match
      // begins after everything delivered.
      size_t end = std::max(stop.textLength, a.delivered);
      event.text = a.text.substr(a.delivered, end - a.delivered);
      a.done = true;
      deliver(*a.request, *a.state, std::move(event));
      continue;
    }
    if (stop.reason == StopReason::EosToken) {
      finishActive(a, FinishReason::Eos, token);
      continue;
    }
    if (a.generated >= a.state->maxTokens) {
      finishActive(a, FinishReason::Length, token);
      continue;
    }
    TokenEvent event;
    event.token = token;
    size_t safe = std::max(a.stops.safeTextLength(a.text), a.delivered);
    event.text = a.text.substr(a.delivered, safe - a.delivered);
    a.delivered = safe;
    a.next = {token};
    a.done = deliver(*a.request, *a.state, std::move(event));
  }
}

void Engine::Impl::run() {
  currentEngine = this;
  std::vector<Active> active;
  for (;;) {
    try {
      if (!iterate(active))
        return;
    } catch (...) {
      // Out of memory, or a bug: end what runs rather than the process.
      std::string message;
      try {
        message = "engine failure: " + describeCurrentException();
      } catch (...) {
      }
      for (Active &a : active)
        if (!a.done)
          forceFinish(a, message);
      active.clear();
    }
  }
}

void Engine::Impl::forceFinish(Active &active,
                               const std::string &message) noexcept {
  active.done = true;
  try {
    finishActive(active, FinishReason::Error, -1, message);
    return;
  } catch (...) {
  }
  // Delivering failed too: mark it finished without an event so that no
  // client waits for it forever.
  Request::Impl &state = *active.state;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (state.admitted) {
      stats.kvReservedTokens -= state.reservation;
      --stats.active;
      state.admitted = false;
    }
    ++stats.finished;
  }
  {
    std::lock_guard<std::mutex> lock(state.mutex);
    if (!state.finished) {
      state.finished = true;
      state.reason = FinishReason::Error;
    }
  }
  state.changed.notify_all();
}

bool Engine::Impl::iterate(std::vector<Active> &active) {
  std::vector<Queued> admitted, dropped;
  bool stop = false;
  {
    std::unique_lock<std::mutex> lock(mutex);
    // Nothing to do without a request: a waiting one is always admissible
    // when none is active (submit checked it fits the budget alone).
    if (active.empty())
      wake.wait(lock, [&] { return stopping || !waiting.empty(); });
    stop = stopping;
    // Cancelled requests leave the queue at once, not when they reach
    // its front.
    for (auto it = waiting.begin(); it != waiting.end();) {
      if (stop || it->state->cancelRequested.load()) {
        dropped.push_back(std::move(*it));
        it = waiting.erase(it);
      } else {
        ++it;
      }
    }
    // Strictly first come, first served: a large request at the front is
    // not overtaken by smaller ones, so it cannot starve.
    while (!waiting.empty() && stats.active < options.maxBatch &&
           stats.kvReservedTokens + waiting.front().state->reservation <=
               budget) {
      Request::Impl &state = *waiting.front().state;
      state.admitted = true;
      stats.kvReservedTokens += state.reservation;
      ++stats.active;
      admitted.push_back(std::move(waiting.front()));
      waiting.pop_front();
    }
    stats.waiting = static_cast<int64_t>(waiting.size());
    stats.peakActive = std::max(stats.peakActive, stats.active);
    stats.peakKvReservedTokens =
        std::max(stats.peakKvReservedTokens, stats.kvReservedTokens);
  }

  for (Queued &queued : dropped) {
    TokenEvent event;
    event.finishReason = FinishReason::Cancelled;
    deliver(*queued.request, *queued.state, std::move(event));
  }
  for (Queued &queued : admitted) {
    Request::Impl *state = queued.state;
    std::shared_ptr<Request> request = queued.request;
    try {
      active.emplace_back(std::move(queued), model->backend().newSequence(),
                          model->tokenizer());
    } catch (...) {
      TokenEvent event;
      event.finishReason = FinishReason::Error;
      event.error = "cannot start the request: " + describeCurrentException();
      deliver(*request, *state, std::move(event));
    }
  }
  for (Active &a : active)
    if (stop || a.state->cancelRequested.load())
      finishActive(a, FinishReason::Cancelled, -1);

  auto isDone = [](const Active &a) { return a.done; };
  active.erase(std::remove_if(active.begin(), active.end(), isDone),
               active.end());
  if (!active.empty())
    stepOnce(active);
  active.erase(std::remove_if(active.begin(), active.end(), isDone),
               active.end());
  return !stop;
}

Engine::Engine(std::shared_ptr<Model> model, const EngineOptions &options) {
  if (!model)
    throw Error("Engine: no model");
  if (options.maxBatch < 1)
    throw Error("Engine: maxBatch must be at least 1, got " +
                std::to_string(options.maxBatch));
  if (options.kvBudgetTokens < 0 || options.kvBudgetBytes < 0)
    throw Error("Engine: the KV budget must not be negative");
  impl = std::make_shared<Impl>(std::move(model), options);
  const ModelConfig &config = impl->model->config();
  if (options.kvBudgetTokens > 0) {
    impl->budget = options.kvBudgetTokens;
  } else if (options.kvBudgetBytes > 0) {
    impl->budget =
        options.kvBudgetBytes / impl->model->backend().kvBytesPerToken();
    if (impl->budget < 1)
      throw Error("Engine: a KV budget of " +
                  std::to_string(options.kvBudgetBytes) +
                  " bytes holds no token (" +
                  std::to_string(impl->model->backend().kvBytesPerToken()) +
                  " bytes each)");
  } else {
    impl->budget =
        options.maxBatch * std::max<int64_t>(1, config.maxPositionEmbeddings);
  }
  impl->stats.kvBudgetTokens = impl->budget;
  // The thread shares ownership: an engine destroyed from its own thread
  // (in a callback) cannot join it, and the thread finishes on its own.
  std::shared_ptr<Impl> shared = impl;
  impl->thread = std::thread([shared] { shared->run(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(impl->mutex);
    impl->stopping = true;
  }
  impl->wake.notify_all();
  if (impl->thread.get_id() == std::this_thread::get_id())
    impl->thread.detach();
  else
    impl->thread.join();
}

std::shared_ptr<Request> Engine::submit(GenerationRequest request) {
  const Model &model = *impl->model;
  const Tokenizer &tokenizer = model.tokenizer();
  const ModelConfig &config = model.config();

  auto state = std::make_unique<Request::Impl>();
  const bool hasTokens = !request.promptTokens.empty();
  const bool hasMessages = !request.messages.empty();
  const bool hasText = !request.prompt.empty();
  if (hasTokens + hasMessages + hasText > 1)
    throw Error("request: give one prompt: token ids, chat messages or text");
  if (hasTokens && request.chat)
    throw Error("request: chat renders a text prompt, not token ids");
  if (hasTokens) {
    state->prompt = std::move(request.promptTokens);
  } else if (hasMessages || request.chat) {
    std::vector<ChatMessage> messages = std::move(request.messages);
    if (!hasMessages)
      messages.push_back({"user", request.prompt});
    state->prompt = tokenizer.encode(
        tokenizer.applyChatTemplate(messages, /*addGenerationPrompt=*/true),
        /*addBos=*/false);
  } else {
    state->prompt =
        tokenizer.encode(request.prompt, tokenizer.addBosByDefault());
  }
  if (state->prompt.empty())
    throw Error("request: the prompt is empty");
  for (size_t i = 0; i < state->prompt.size(); ++i)
    if (state->prompt[i] < 0 || state->prompt[i] >= config.vocabSize)
      throw Error("request: prompt token " + std::to_string(i) + " = " +
                  std::to_string(state->prompt[i]) +
                  " is outside the vocabulary [0, " +
                  std::to_string(config.vocabSize) + ")");
  Sampler checkSampling(request.sampling); // throws for bad parameters
  StopChecker checkStops({{}, request.stopStrings});
  if (request.maxTokens < 1)
    throw Error("request: maxTokens must be at least 1, got " +
                std::to_string(request.maxTokens));
  const int64_t promptLength = static_cast<int64_t>(state->prompt.size());
  if (request.maxTokens > std::numeric_limits<int64_t>::max() - promptLength)
    throw Error("request: maxTokens is too large");
  state->reservation = promptLength + request.maxTokens;
  if (config.maxPositionEmbeddings > 0 &&
      state->reservation > config.maxPositionEmbeddings)
    throw Error("request: " + std::to_string(promptLength) +
                " prompt tokens + maxTokens " +
                std::to_string(request.maxTokens) + " exceed the context of " +
                std::to_string(config.maxPositionEmbeddings) + " positions");
  if (state->reservation > impl->budget)
    throw Error(
        "request: " + std::to_string(promptLength) +
        " prompt tokens + maxTokens " + std::to_string(request.maxTokens) +
        " exceed the KV budget of " + std::to_string(impl->budget) + " tokens");

  state->id = nextRequestId.fetch_add(1);
  state->engine = impl.get();
  state->sampling = request.sampling;
  state->maxTokens = request.maxTokens;
  state->stopStrings = std::move(request.stopStrings);
  state->queueEvents = request.queueEvents || !request.onToken;
  state->callback = std::move(request.onToken);

  Request::Impl *raw = state.get();
  std::shared_ptr<Request> handle(new Request(std::move(state)));
  {
    std::lock_guard<std::mutex> lock(impl->mutex);
    if (impl->stopping)
      throw EngineStopping();
    impl->waiting.push_back({handle, raw});
    impl->stats.waiting = static_cast<int64_t>(impl->waiting.size());
  }
  impl->wake.notify_one();
  return handle;
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(impl->mutex);
  return impl->stats;
}

const EngineOptions &Engine::options() const { return impl->options; }
const std::shared_ptr<Model> &Engine::model() const { return impl->model; }
int64_t Engine::kvBudgetTokens() const { return impl->budget; }

} // namespace kiln
