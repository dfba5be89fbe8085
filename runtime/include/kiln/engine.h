//===- kiln/engine.h - loading a model and serving generation requests ----===//
//
// The embedding layer of the runtime, in C++ (kiln.h is the C API over it):
//
// - Model::load opens a model directory (checkpoint, tokenizer, backend
//   weights) with progress reports and cancellation. A Model is immutable
//   and shared (std::shared_ptr) by every Engine that serves it.
// - An Engine owns one scheduler thread doing continuous batching: submitted
//   requests wait in a FIFO queue until a slot (EngineOptions::maxBatch) and
//   their KV reservation (EngineOptions::kvBudgetTokens) are free; each step
//   runs every active sequence once through the backend (the whole prompt
//   on the step a request is admitted, one token after that), so requests
//   join and leave between steps without disturbing each other.
// - A Request delivers its tokens as TokenEvents through a callback (on the
//   engine thread) and/or a queue polled from any thread, and can be
//   cancelled at any time.
//
// Thread safety: Model is immutable after load. Engine::submit, stats and
// every Request function may be called concurrently from any threads,
// callbacks included, except that Request::poll is refused (kiln::Error) for
// a second concurrent poller and, with a nonzero timeout, on any engine
// thread, where waiting could deadlock the engine; the same holds for
// Request::wait. Callbacks run on the engine thread, one at a time, and
// should return quickly: the whole batch waits for them.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_ENGINE_H
#define KILN_ENGINE_H

#include "kiln/backend.h"
#include "kiln/config.h"
#include "kiln/cpu_model.h"
#include "kiln/error.h"
#include "kiln/sampler.h"
#include "kiln/tokenizer.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

//===----------------------------------------------------------------------===//
// Loading
//===----------------------------------------------------------------------===//

enum class LoadStage {
  /// Opening config.json and the shards, checking every tensor header.
  Checkpoint,
  /// Reading tokenizer.json and tokenizer_config.json.
  Tokenizer,
  /// Reading weights into the backend: the bulk of the time.
  Weights,
  /// Loaded; reported once, last.
  Done,
};

/// "checkpoint", "tokenizer", "weights", "done".
const char *loadStageName(LoadStage stage);

struct LoadProgress {
  LoadStage stage = LoadStage::Checkpoint;
  /// Share of the weight values the backend has read, in [0, 1]: 0 until the
  /// Weights stage, 1 at Done. Never decreases.
  double fraction = 0;
};

/// Thrown by Model::load when it was cancelled; everything it had opened or
/// allocated is released by then.
class LoadCancelled : public Error {
public:
  LoadCancelled() : Error("model load cancelled") {}
};

struct ModelLoadOptions {
  /// The CPU backend's options (MLA form, threads, FP8 emulation). loadMtp
  /// is ignored: the engine does not draft with the MTP module yet.
  CpuModelOptions cpu;
  /// A kilnc artifact (.kiln): when set, the model runs on the CUDA backend
  /// (kiln/cuda/cuda_backend.h), which executes it; empty means the CPU
  /// reference. A build without CUDA refuses an artifact with kiln::Error.
  std::filesystem::path artifact;
  /// CUDA device ordinal of the CUDA backend.
  int device = 0;
  /// The CUDA backend's latent KV cache in tokens over all sequences; 0:
  /// the artifact's max_batch × max_seq_len.
  int64_t kvCacheTokens = 0;
  /// Called on the loading thread at the start of each stage and after each
  /// weight tensor; returning false cancels the load.
  std::function<bool(const LoadProgress &)> progress;
  /// Cancels the load when set, from any thread; checked as often as
  /// `progress` is called.
  const std::atomic<bool> *cancel = nullptr;
};

/// CUDA devices the CUDA backend could use: 0 in a build without CUDA, on a
/// machine without a driver or GPU (the reason in `whyNone` if given).
int gpuCount(std::string *whyNone = nullptr);

/// A loaded model: configuration, tokenizer and backend (weights).
class Model {
public:
  /// Loads `modelDir` (config.json, safetensors shards with their index,
  /// tokenizer.json, tokenizer_config.json) on the calling thread. Throws
  /// kiln::Error naming the file for a bad directory, LoadCancelled when
  /// cancelled.
  static std::shared_ptr<Model> load(const std::filesystem::path &modelDir,
                                     const ModelLoadOptions &options = {});

  /// A model over a backend made elsewhere (another device, tests).
  Model(std::unique_ptr<Backend> backend, Tokenizer tokenizer);
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  const ModelConfig &config() const { return modelBackend->config(); }
  const Tokenizer &tokenizer() const { return modelTokenizer; }
  Backend &backend() const { return *modelBackend; }

private:
  std::unique_ptr<Backend> modelBackend;
  Tokenizer modelTokenizer;
};

//===----------------------------------------------------------------------===//
// Requests
//===----------------------------------------------------------------------===//

enum class FinishReason {
  /// Not finished.
  None,
  /// The text reached one of the request's stop strings (left out of it).
  StopString,
  /// The model produced the end-of-sequence token.
  Eos,
  /// maxTokens tokens were generated.
  Length,
  /// Request::cancel, or the engine shut down first.
  Cancelled,
  /// The backend or the sampler failed, or the callback threw; see error().
  Error,
};

/// "none", "stop", "eos", "length", "cancelled", "error".
const char *finishReasonName(FinishReason reason);

/// What a request delivers after each step: one generated token and the
/// text it completes. The last event of a request has a finishReason.
struct TokenEvent {
  /// The token generated, or -1 for a last event that carries none (the
  /// request was cancelled or failed between tokens).
  int32_t token = -1;
  /// Newly completed UTF-8 text that can no longer become part of a stop
  /// string: a token may end inside a character, and text that could be the
  /// start of a stop string is held back until it cannot. Concatenated over
  /// all events it is the request's text(); possibly empty.
  std::string text;
  /// None while more events follow.
  FinishReason finishReason = FinishReason::None;
  /// What went wrong, for FinishReason::Error.
  std::string error;

  bool isLast() const { return finishReason != FinishReason::None; }
};

class Request;

struct GenerationRequest {
  /// The prompt, from exactly one of: `promptTokens` (used as given), or
  /// `messages` (rendered by the chat template, with the assistant prompt
  /// appended), or `prompt` text: a user message of a chat when `chat`,
  /// else plain text, encoded with BOS when the tokenizer config says so
  /// (so an empty text is BOS alone).
  std::string prompt;
  bool chat = false;
  std::vector<ChatMessage> messages;
  std::vector<int32_t> promptTokens;

  SamplingParams sampling;
  /// Generated tokens at most, at least 1. The prompt plus maxTokens must
  /// fit the context (max_position_embeddings) and the engine's KV budget.
  int64_t maxTokens = 64;
  /// Generation stops when the text contains one of these (non-empty).
  std::vector<std::string> stopStrings;

  /// Called on the engine thread with every event, in order, the last one
  /// included. It may call any Engine or Request function except those that
  /// block (see the file comment); an exception it throws finishes the
  /// request with FinishReason::Error.
  std::function<void(Request &, const TokenEvent &)> onToken;
  /// Also queue events for Request::poll when there is a callback (without
  /// one they are always queued).
  bool queueEvents = false;
};

enum class PollResult {
  /// An event was taken.
  Event,
  /// None arrived within the timeout.
  Timeout,
  /// The last event was taken before: nothing more will come.
  End,
};

/// A submitted request, shared by its engine and the submitter. Dropping the
/// submitter's reference does not stop it (the engine holds one while it
/// runs): cancel() does.
class Request {
public:
  ~Request();
  Request(const Request &) = delete;
  Request &operator=(const Request &) = delete;

  /// Unique within the process, increasing in submission order.
  uint64_t id() const;

  /// Stops the request at the next step boundary; its last event then has
  /// FinishReason::Cancelled and the text generated so far is flushed. No
  /// effect once it has finished. Any thread, callbacks included.
  void cancel();

  /// Takes the next queued event, waiting up to `timeout` (negative: no
  /// limit). Events are queued unless the request has a callback without
  /// queueEvents; then poll() only says End once the request has finished.
  /// Throws kiln::Error if another thread is polling this request, or if
  /// called with a nonzero timeout on an engine thread.
  PollResult poll(TokenEvent &event, std::chrono::milliseconds timeout);

  /// Waits up to `timeout` (negative: no limit) for the request to finish,
  /// i.e. for its last event to have been delivered to the callback and
  /// queued. Returns whether it has. Same thread rule as poll().
  bool wait(std::chrono::milliseconds timeout) const;

  bool finished() const;
  FinishReason finishReason() const;
  /// The message of a FinishReason::Error, else "".
  std::string error() const;
  /// Prompt length in tokens.
  int64_t promptTokens() const;
  /// The tokens generated so far (the one that hit a stop included).
  std::vector<int32_t> tokens() const;
  /// The text delivered so far; once finished, the whole response.
  std::string text() const;

  /// Stops calling the request's callback. When it returns, no call is
  /// running or will start, except when called on the engine thread of
  /// another engine while this request's callback is running on its own:
  /// waiting there could deadlock, so that call finishes on its own.
  void detachCallback();

  struct Impl;

private:
  friend class Engine;
  explicit Request(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl;
};

//===----------------------------------------------------------------------===//
// Engine
//===----------------------------------------------------------------------===//

/// Thrown by Engine::submit once the engine is shutting down (from a
/// callback that runs while its destructor cancels the requests).
class EngineStopping : public Error {
public:
  EngineStopping() : Error("request: the engine is shutting down") {}
};

struct EngineOptions {
  /// Sequences decoded together at most; further requests wait in the queue.
  int64_t maxBatch = 8;
  /// KV cache positions the active requests may reserve together. Each
  /// request reserves its prompt length plus maxTokens when admitted and
  /// frees it when it finishes. 0: derived from kvBudgetBytes.
  int64_t kvBudgetTokens = 0;
  /// The same budget in bytes, divided by Backend::kvBytesPerToken() (which
  /// the CPU backend computes with kvCacheValuesPerToken) when
  /// kvBudgetTokens is 0. Both 0: maxBatch * max_position_embeddings.
  int64_t kvBudgetBytes = 0;
};

struct EngineStats {
  int64_t active = 0;
  int64_t waiting = 0;
  int64_t kvReservedTokens = 0;
  int64_t kvBudgetTokens = 0;
  /// The most active requests and KV reservation seen at once.
  int64_t peakActive = 0;
  int64_t peakKvReservedTokens = 0;
  /// Backend steps run.
  int64_t steps = 0;
  /// Requests finished, for any reason.
  int64_t finished = 0;
};

class Engine {
public:
  /// Starts the scheduler thread. Throws kiln::Error for a null model or
  /// bad options (maxBatch < 1, a negative budget).
  explicit Engine(std::shared_ptr<Model> model,
                  const EngineOptions &options = {});
  /// Cancels every request that has not finished (each gets its last event)
  /// and joins the thread. On the engine thread itself (from a callback) it
  /// cannot join: the thread then winds down on its own after the callback.
  ~Engine();
  Engine(const Engine &) = delete;
  Engine &operator=(const Engine &) = delete;

  /// Checks and tokenizes `request` on the calling thread and queues it.
  /// Throws kiln::Error for a bad request (two prompts, an empty one, a
  /// token outside the vocabulary, bad sampling parameters, an empty stop
  /// string, maxTokens < 1, more than the context or the whole KV budget),
  /// EngineStopping during shutdown.
  std::shared_ptr<Request> submit(GenerationRequest request);

  EngineStats stats() const;
  const EngineOptions &options() const;
  const std::shared_ptr<Model> &model() const;
  /// The budget in effect, in positions.
  int64_t kvBudgetTokens() const;

  struct Impl;

private:
  std::shared_ptr<Impl> impl;
};

/// Whether the calling thread is the scheduler thread of some Engine (where
/// blocking calls are refused).
bool onEngineThread();

} // namespace kiln

#endif // KILN_ENGINE_H
