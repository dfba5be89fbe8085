//===- kiln/kiln.hpp - C++ RAII wrapper over the Kiln C API ---------------===//
//
// Header-only C++17 classes over kiln.h: handles are freed by destructors
// and failures throw kiln::embed::Error carrying the kiln_status and
// kiln_last_error()'s message. Because only the C ABI crosses the library
// boundary, a program built with this header works with any build of the
// Kiln library of the same KILN_API_VERSION.
//
//   kiln::embed::Model model("path/to/model");
//   kiln::embed::Session session(model);
//   kiln::embed::RequestParams params;
//   params.prompt = "Hello";
//   params.temperature = 0; // greedy
//   kiln::embed::Request request = session.submit(params);
//   while (std::optional<kiln::embed::Event> event = request.next())
//     std::cout << event->text << std::flush;
//
// The thread-safety rules are kiln.h's: a Session may be shared by threads
// (submit concurrently); a Request is polled by one thread at a time;
// callbacks run on the engine thread and must not destroy their Session.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_KILN_HPP
#define KILN_KILN_HPP

#include "kiln/kiln.h"

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kiln::embed {

/// A failed Kiln call: its status and message.
class Error : public std::runtime_error {
public:
  Error(kiln_status status, const std::string &message)
      : std::runtime_error(message), errorStatus(status) {}
  kiln_status status() const { return errorStatus; }

private:
  kiln_status errorStatus;
};

/// Throws Error for a failing status; returns non-error ones (KILN_OK,
/// KILN_TIMEOUT, KILN_END).
inline kiln_status check(kiln_status status) {
  if (status < 0)
    throw Error(status, std::string(kiln_status_name(status)) + ": " +
                            kiln_last_error());
  return status;
}

//===----------------------------------------------------------------------===//
// Model
//===----------------------------------------------------------------------===//

struct LoadOptions {
  int numThreads = 0; // 0: one per core
  kiln_mla_form mlaForm = KILN_MLA_ABSORBED;
  bool emulateFp8Activations = false;
  /// Called at each stage and after each weight tensor with the share of
  /// weights read; return false to cancel (the constructor then throws
  /// Error with KILN_ERROR_CANCELLED). An exception it throws cancels the
  /// load and is rethrown by the constructor.
  std::function<bool(kiln_load_stage stage, double fraction)> progress;
};

class Model {
public:
  explicit Model(const std::string &modelDir, const LoadOptions &options = {}) {
    kiln_load_options cOptions;
    kiln_load_options_init(&cOptions);
    cOptions.num_threads = options.numThreads;
    cOptions.mla_form = options.mlaForm;
    cOptions.emulate_fp8_activations = options.emulateFp8Activations;
    ProgressState state{&options.progress, nullptr};
    if (options.progress) {
      cOptions.progress = &Model::onProgress;
      cOptions.progress_user_data = &state;
    }
    kiln_status status =
        kiln_model_load(modelDir.c_str(), nullptr, &cOptions, &handle);
    if (state.error)
      std::rethrow_exception(state.error);
    check(status);
  }
  ~Model() { kiln_model_free(handle); }
  Model(Model &&other) noexcept
      : handle(std::exchange(other.handle, nullptr)) {}
  Model &operator=(Model &&other) noexcept {
    std::swap(handle, other.handle);
    return *this;
  }
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  kiln_model *get() const { return handle; }

  kiln_model_info info() const {
    kiln_model_info result;
    check(kiln_model_get_info(handle, &result));
    return result;
  }

private:
  struct ProgressState {
    const std::function<bool(kiln_load_stage, double)> *progress;
    std::exception_ptr error;
  };

  static int onProgress(void *userData, kiln_load_stage stage,
                        double fraction) {
    auto *state = static_cast<ProgressState *>(userData);
    try {
      return (*state->progress)(stage, fraction) ? 0 : 1;
    } catch (...) { // an exception must not unwind through the C library
      state->error = std::current_exception();
      return 1;
    }
  }

  kiln_model *handle = nullptr;
};

//===----------------------------------------------------------------------===//
// Requests
//===----------------------------------------------------------------------===//

/// A kiln_token_event with owned strings.
struct Event {
  int32_t token = -1;
  std::string text;
  kiln_finish_reason finishReason = KILN_FINISH_NONE;
  std::string error;

  bool isLast() const { return finishReason != KILN_FINISH_NONE; }

  static Event from(const kiln_token_event &event) {
    return {event.token, std::string(event.text, event.text_length),
            event.finish_reason, event.error};
  }
};

struct Result {
  kiln_finish_reason finishReason = KILN_FINISH_NONE;
  int64_t promptTokens = 0;
  std::vector<int32_t> tokens;
  std::string text;
  std::string error;
};

struct ChatMessage {
  std::string role;
  std::string content;
};

/// What kiln_request_params holds, with owned strings. The prompt is
/// `promptTokens` if not empty, else `messages` if not empty, else `prompt`
/// (a user message of a chat when `chat`).
struct RequestParams {
  std::string prompt;
  bool chat = false;
  std::vector<ChatMessage> messages;
  std::vector<int32_t> promptTokens;

  float temperature = 1.0f; // 0: greedy
  int64_t topK = 0;
  float topP = 1.0f;
  uint64_t seed = 0;
  int64_t maxTokens = 64;
  std::vector<std::string> stopStrings;

  /// Called on the engine thread with every event (see kiln.h). An
  /// exception it throws cancels the request and is rethrown by
  /// Request::wait and Request::result.
  std::function<void(const Event &)> onToken;
  /// Also queue events for Request::poll when there is a callback.
  bool queueEvents = false;
};

enum class Poll { Event, Timeout, End };

class Request {
public:
  Request(Request &&other) noexcept
      : handle(std::exchange(other.handle, nullptr)),
        callback(std::move(other.callback)) {}
  Request &operator=(Request &&other) noexcept {
    std::swap(handle, other.handle);
    std::swap(callback, other.callback);
    return *this;
  }
  Request(const Request &) = delete;
  Request &operator=(const Request &) = delete;
  /// Cancels the request if it still runs; no callback runs after this.
  ~Request() { kiln_request_free(handle); }

  kiln_request *get() const { return handle; }

  void cancel() { check(kiln_request_cancel(handle)); }

  /// The next event within `timeout` (negative: no limit).
  Poll poll(Event &event, std::chrono::milliseconds timeout) {
    kiln_token_event cEvent;
    kiln_status status =
        check(kiln_request_poll(handle, timeout.count(), &cEvent));
    if (status == KILN_TIMEOUT)
      return Poll::Timeout;
    if (status == KILN_END)
      return Poll::End;
    event = Event::from(cEvent);
    return Poll::Event;
  }

  /// The next event, waiting as long as it takes; nullopt after the last.
  std::optional<Event> next() {
    Event event;
    if (poll(event, std::chrono::milliseconds(-1)) == Poll::End)
      return std::nullopt;
    return event;
  }

  /// Waits up to `timeout` (negative: no limit) for the request to finish.
  bool wait(std::chrono::milliseconds timeout = std::chrono::milliseconds(-1)) {
    bool done = check(kiln_request_wait(handle, timeout.count())) == KILN_OK;
    if (done && callback && callback->error)
      std::rethrow_exception(callback->error);
    return done;
  }

  /// The outcome once finished (waits for it).
  Result result() {
    wait();
    kiln_request_result cResult;
    check(kiln_request_get_result(handle, &cResult));
    Result out;
    out.finishReason = cResult.finish_reason;
    out.promptTokens = cResult.prompt_tokens;
    out.tokens.assign(cResult.tokens, cResult.tokens + cResult.num_tokens);
    out.text.assign(cResult.text, cResult.text_length);
    out.error = cResult.error;
    return out;
  }

private:
  friend class Session;

  /// Lives on the heap so that its address, the C callback's user data,
  /// survives moves of the Request.
  struct Callback {
    std::function<void(const Event &)> function;
    std::exception_ptr error; // written on the engine thread, read after
                              // kiln_request_wait, which orders the two
  };

  static void onToken(void *userData, kiln_request *request,
                      const kiln_token_event *event) {
    auto *callback = static_cast<Callback *>(userData);
    try {
      callback->function(Event::from(*event));
    } catch (...) { // must not unwind through the C library
      if (!callback->error)
        callback->error = std::current_exception();
      kiln_request_cancel(request);
    }
  }

  Request(kiln_request *handle, std::unique_ptr<Callback> callback)
      : handle(handle), callback(std::move(callback)) {}

  kiln_request *handle = nullptr;
  std::unique_ptr<Callback> callback;
};

//===----------------------------------------------------------------------===//
// Session
//===----------------------------------------------------------------------===//

struct SessionOptions {
  int64_t maxBatch = 8;
  int64_t kvBudgetTokens = 0; // 0: from kvBudgetBytes, or the default
  int64_t kvBudgetBytes = 0;
};

class Session {
public:
  explicit Session(const Model &model, const SessionOptions &options = {}) {
    kiln_session_options cOptions;
    kiln_session_options_init(&cOptions);
    cOptions.max_batch = options.maxBatch;
    cOptions.kv_budget_tokens = options.kvBudgetTokens;
    cOptions.kv_budget_bytes = options.kvBudgetBytes;
    check(kiln_session_create(model.get(), &cOptions, &handle));
  }
  /// Cancels unfinished requests and stops the engine thread. Must not run
  /// in a token callback (kiln_session_free refuses, and a destructor cannot
  /// report it: the session would stay alive).
  ~Session() { kiln_session_free(handle); }
  Session(Session &&other) noexcept
      : handle(std::exchange(other.handle, nullptr)) {}
  Session &operator=(Session &&other) noexcept {
    std::swap(handle, other.handle);
    return *this;
  }
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  kiln_session *get() const { return handle; }

  Request submit(const RequestParams &params) {
    kiln_request_params cParams;
    kiln_request_params_init(&cParams);
    // The text prompt is passed when it is the one given, or when none is
    // (empty text: BOS alone); two given are refused by the library.
    if (!params.prompt.empty() ||
        (params.messages.empty() && params.promptTokens.empty()))
      cParams.prompt = params.prompt.c_str();
    cParams.chat = params.chat;
    std::vector<kiln_chat_message> messages;
    for (const ChatMessage &message : params.messages)
      messages.push_back({message.role.c_str(), message.content.c_str()});
    cParams.messages = messages.data();
    cParams.num_messages = messages.size();
    cParams.prompt_tokens = params.promptTokens.data();
    cParams.num_prompt_tokens = params.promptTokens.size();
    cParams.sampling.temperature = params.temperature;
    cParams.sampling.top_k = params.topK;
    cParams.sampling.top_p = params.topP;
    cParams.sampling.seed = params.seed;
    cParams.max_tokens = params.maxTokens;
    std::vector<const char *> stops;
    for (const std::string &stop : params.stopStrings)
      stops.push_back(stop.c_str());
    cParams.stop_strings = stops.data();
    cParams.num_stop_strings = stops.size();

    std::unique_ptr<Request::Callback> callback;
    if (params.onToken) {
      callback.reset(new Request::Callback{params.onToken, nullptr});
      cParams.on_token = &Request::onToken;
      cParams.user_data = callback.get();
      cParams.queue_events = params.queueEvents;
    }
    kiln_request *request = nullptr;
    check(kiln_session_submit(handle, &cParams, &request));
    return Request(request, std::move(callback));
  }

  kiln_session_stats stats() const {
    kiln_session_stats result;
    check(kiln_session_get_stats(handle, &result));
    return result;
  }

private:
  kiln_session *handle = nullptr;
};

/// Throws Error unless the library linked implements this header's API.
inline void checkApiVersion() {
  if (kiln_api_version() != KILN_API_VERSION)
    throw Error(KILN_ERROR_UNSUPPORTED,
                "the Kiln library implements API version " +
                    std::to_string(kiln_api_version()) +
                    ", this program was built for " +
                    std::to_string(KILN_API_VERSION));
}

} // namespace kiln::embed

#endif // KILN_KILN_HPP
