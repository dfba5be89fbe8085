//===- c_api.cpp - the C API (kiln.h) over the engine ---------------------===//
//
// Every entry point catches everything: a C++ exception never unwinds into
// C frames. Errors become a kiln_status plus a thread-local message.
//
//===----------------------------------------------------------------------===//

#include "kiln/kiln.h"

#include "kiln/engine.h"
#include "kiln/error.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

// The header's version and the project's (CMake) must not drift apart.
#if !defined(KILN_PROJECT_VERSION_MAJOR) ||                                    \
    KILN_PROJECT_VERSION_MAJOR != KILN_VERSION_MAJOR ||                        \
    KILN_PROJECT_VERSION_MINOR != KILN_VERSION_MINOR ||                        \
    KILN_PROJECT_VERSION_PATCH != KILN_VERSION_PATCH
#error "KILN_VERSION_* in kiln.h differ from project(Kiln VERSION ...)"
#endif

struct kiln_model {
  std::shared_ptr<kiln::Model> model;
};

struct kiln_session {
  std::unique_ptr<kiln::Engine> engine;
};

struct kiln_request {
  std::shared_ptr<kiln::Request> request;

  /// One kiln_request_poll at a time, as `polled` backs the event it returns.
  std::atomic<bool> polling{false};
  kiln::TokenEvent polled;

  std::mutex resultMutex;
  bool resultReady = false;
  std::string resultText, resultError;
  std::vector<int32_t> resultTokens;
  kiln_finish_reason resultReason = KILN_FINISH_NONE;
};

namespace {

thread_local std::string lastError;
/// Set when even the message could not be stored.
thread_local bool lastErrorLost = false;

kiln_status fail(kiln_status status, const char *message) noexcept {
  try {
    lastError = message;
    lastErrorLost = false;
  } catch (...) {
    lastErrorLost = true;
  }
  return status;
}

kiln_status fail(kiln_status status, const std::string &message) noexcept {
  return fail(status, message.c_str());
}

/// Runs `body`, turning whatever it throws into a status: kiln::Error into
/// `errorStatus` (what bad input means for this call).
template <typename Body>
kiln_status guarded(kiln_status errorStatus, Body &&body) noexcept {
  try {
    return body();
  } catch (const kiln::LoadCancelled &error) {
    return fail(KILN_ERROR_CANCELLED, error.what());
  } catch (const kiln::EngineStopping &error) {
    return fail(KILN_ERROR_INVALID_STATE, error.what());
  } catch (const kiln::Error &error) {
    return fail(errorStatus, error.what());
  } catch (const std::bad_alloc &) {
    return fail(KILN_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception &error) {
    return fail(KILN_ERROR_INTERNAL, error.what());
  } catch (...) {
    return fail(KILN_ERROR_INTERNAL, "unknown exception");
  }
}

kiln_status nullArgument(const char *function, const char *argument) {
  return fail(KILN_ERROR_INVALID_ARGUMENT,
              std::string(function) + ": " + argument + " is NULL");
}

template <typename Struct>
kiln_status checkStructSize(const Struct *value, const char *function,
                            const char *type) {
  if (value->struct_size == sizeof(Struct))
    return KILN_OK;
  return fail(KILN_ERROR_INVALID_ARGUMENT,
              std::string(function) + ": " + type + ".struct_size is " +
                  std::to_string(value->struct_size) + ", expected " +
                  std::to_string(sizeof(Struct)) + " (initialize it with " +
                  type + "_init)");
}

kiln_status wrongThread(const char *function) {
  return fail(KILN_ERROR_WRONG_THREAD,
              std::string(function) +
                  ": called on an engine thread (in a token callback), where "
                  "it would block the engine it may be waiting for");
}

kiln_finish_reason toC(kiln::FinishReason reason) {
  switch (reason) {
  case kiln::FinishReason::None:
    return KILN_FINISH_NONE;
  case kiln::FinishReason::StopString:
    return KILN_FINISH_STOP_STRING;
  case kiln::FinishReason::Eos:
    return KILN_FINISH_EOS;
  case kiln::FinishReason::Length:
    return KILN_FINISH_LENGTH;
  case kiln::FinishReason::Cancelled:
    return KILN_FINISH_CANCELLED;
  case kiln::FinishReason::Error:
    return KILN_FINISH_ERROR;
  }
  return KILN_FINISH_ERROR;
}

kiln_token_event toC(const kiln::TokenEvent &event) {
  kiln_token_event out;
  out.token = event.token;
  out.text = event.text.c_str();
  out.text_length = event.text.size();
  out.finish_reason = toC(event.finishReason);
  out.error = event.error.c_str();
  return out;
}

std::chrono::milliseconds toTimeout(int64_t timeoutMs) {
  return std::chrono::milliseconds(timeoutMs < 0 ? -1 : timeoutMs);
}

static_assert(
    static_cast<int>(kiln::LoadStage::Checkpoint) == KILN_LOAD_CHECKPOINT &&
        static_cast<int>(kiln::LoadStage::Tokenizer) == KILN_LOAD_TOKENIZER &&
        static_cast<int>(kiln::LoadStage::Weights) == KILN_LOAD_WEIGHTS &&
        static_cast<int>(kiln::LoadStage::Done) == KILN_LOAD_DONE,
    "kiln_load_stage mirrors kiln::LoadStage");

/// Makes the engine thread's first callback wait until kiln_session_submit
/// has stored the request in its handle, which the callback receives.
struct SubmitGate {
  std::mutex mutex;
};

} // namespace

extern "C" {

const char *kiln_version(void) { return KILN_VERSION_STRING; }

int kiln_api_version(void) { return KILN_API_VERSION; }

const char *kiln_status_name(kiln_status status) {
  switch (status) {
  case KILN_OK:
    return "ok";
  case KILN_TIMEOUT:
    return "timeout";
  case KILN_END:
    return "end";
  case KILN_ERROR_INVALID_ARGUMENT:
    return "invalid argument";
  case KILN_ERROR_MODEL:
    return "bad model";
  case KILN_ERROR_CANCELLED:
    return "cancelled";
  case KILN_ERROR_OUT_OF_MEMORY:
    return "out of memory";
  case KILN_ERROR_WRONG_THREAD:
    return "wrong thread";
  case KILN_ERROR_INVALID_STATE:
    return "invalid state";
  case KILN_ERROR_UNSUPPORTED:
    return "unsupported";
  case KILN_ERROR_INTERNAL:
    return "internal error";
  }
  return "unknown status";
}

const char *kiln_last_error(void) {
  return lastErrorLost ? "out of memory (the error message was lost)"
                       : lastError.c_str();
}

//===----------------------------------------------------------------------===//
// Models
//===----------------------------------------------------------------------===//

void kiln_load_options_init(kiln_load_options *options) {
  if (!options)
    return;
  std::memset(options, 0, sizeof(*options));
  options->struct_size = sizeof(*options);
  options->mla_form = KILN_MLA_ABSORBED;
}

kiln_status kiln_model_load(const char *model_dir, const char *artifact_path,
                            const kiln_load_options *options,
                            kiln_model **out_model) {
  if (!out_model)
    return nullArgument("kiln_model_load", "out_model");
  *out_model = nullptr;
  if (!model_dir)
    return nullArgument("kiln_model_load", "model_dir");
  if (kiln::onEngineThread())
    return wrongThread("kiln_model_load");
  kiln_load_options defaults;
  kiln_load_options_init(&defaults);
  if (!options)
    options = &defaults;
  if (kiln_status status =
          checkStructSize(options, "kiln_model_load", "kiln_load_options"))
    return status;
  if (options->num_threads < 0)
    return fail(KILN_ERROR_INVALID_ARGUMENT,
                "kiln_model_load: num_threads must not be negative, got " +
                    std::to_string(options->num_threads));
  if (options->mla_form != KILN_MLA_ABSORBED &&
      options->mla_form != KILN_MLA_NAIVE)
    return fail(KILN_ERROR_INVALID_ARGUMENT,
                "kiln_model_load: mla_form must be KILN_MLA_ABSORBED or "
                "KILN_MLA_NAIVE, got " +
                    std::to_string(static_cast<int>(options->mla_form)));

  return guarded(KILN_ERROR_MODEL, [&] {
    kiln::ModelLoadOptions loadOptions;
    if (artifact_path)
      loadOptions.artifact = artifact_path;
    loadOptions.cpu.numThreads = options->num_threads;
    loadOptions.cpu.mlaForm = options->mla_form == KILN_MLA_NAIVE
                                  ? kiln::MlaForm::Naive
                                  : kiln::MlaForm::Absorbed;
    loadOptions.cpu.emulateFp8Activations =
        options->emulate_fp8_activations != 0;
    if (kiln_progress_callback progress = options->progress) {
      void *userData = options->progress_user_data;
      loadOptions.progress = [progress,
                              userData](const kiln::LoadProgress &report) {
        return progress(userData, static_cast<kiln_load_stage>(report.stage),
                        report.fraction) == 0;
      };
    }
    auto model = std::make_unique<kiln_model>();
    model->model = kiln::Model::load(model_dir, loadOptions);
    *out_model = model.release();
    return KILN_OK;
  });
}

void kiln_model_free(kiln_model *model) { delete model; }

kiln_status kiln_model_get_info(const kiln_model *model,
                                kiln_model_info *info) {
  if (!model)
    return nullArgument("kiln_model_get_info", "model");
  if (!info)
    return nullArgument("kiln_model_get_info", "info");
  return guarded(KILN_ERROR_INTERNAL, [&] {
    const kiln::ModelConfig &config = model->model->config();
    const kiln::Tokenizer &tokenizer = model->model->tokenizer();
    info->vocab_size = config.vocabSize;
    info->context_size = config.maxPositionEmbeddings;
    info->num_layers = config.numHiddenLayers;
    info->kv_bytes_per_token = model->model->backend().kvBytesPerToken();
    info->bos_token = tokenizer.bosId();
    info->eos_token = tokenizer.eosId();
    return KILN_OK;
  });
}

//===----------------------------------------------------------------------===//
// Sessions
//===----------------------------------------------------------------------===//

void kiln_session_options_init(kiln_session_options *options) {
  if (!options)
    return;
  std::memset(options, 0, sizeof(*options));
  options->struct_size = sizeof(*options);
  options->max_batch = kiln::EngineOptions().maxBatch;
}

kiln_status kiln_session_create(kiln_model *model,
                                const kiln_session_options *options,
                                kiln_session **out_session) {
  if (!out_session)
    return nullArgument("kiln_session_create", "out_session");
  *out_session = nullptr;
  if (!model)
    return nullArgument("kiln_session_create", "model");
  kiln_session_options defaults;
  kiln_session_options_init(&defaults);
  if (!options)
    options = &defaults;
  if (kiln_status status = checkStructSize(options, "kiln_session_create",
                                           "kiln_session_options"))
    return status;
  return guarded(KILN_ERROR_INVALID_ARGUMENT, [&] {
    kiln::EngineOptions engineOptions;
    engineOptions.maxBatch = options->max_batch;
    engineOptions.kvBudgetTokens = options->kv_budget_tokens;
    engineOptions.kvBudgetBytes = options->kv_budget_bytes;
    auto session = std::make_unique<kiln_session>();
    session->engine =
        std::make_unique<kiln::Engine>(model->model, engineOptions);
    *out_session = session.release();
    return KILN_OK;
  });
}

kiln_status kiln_session_free(kiln_session *session) {
  if (!session)
    return KILN_OK;
  if (kiln::onEngineThread())
    return wrongThread("kiln_session_free");
  return guarded(KILN_ERROR_INTERNAL, [&] {
    delete session;
    return KILN_OK;
  });
}

kiln_status kiln_session_get_stats(const kiln_session *session,
                                   kiln_session_stats *stats) {
  if (!session)
    return nullArgument("kiln_session_get_stats", "session");
  if (!stats)
    return nullArgument("kiln_session_get_stats", "stats");
  return guarded(KILN_ERROR_INTERNAL, [&] {
    kiln::EngineStats engineStats = session->engine->stats();
    stats->active = engineStats.active;
    stats->waiting = engineStats.waiting;
    stats->kv_reserved_tokens = engineStats.kvReservedTokens;
    stats->kv_budget_tokens = engineStats.kvBudgetTokens;
    stats->peak_active = engineStats.peakActive;
    stats->peak_kv_reserved_tokens = engineStats.peakKvReservedTokens;
    stats->steps = engineStats.steps;
    stats->finished = engineStats.finished;
    return KILN_OK;
  });
}

//===----------------------------------------------------------------------===//
// Requests
//===----------------------------------------------------------------------===//

const char *kiln_finish_reason_name(kiln_finish_reason reason) {
  switch (reason) {
  case KILN_FINISH_NONE:
    return "none";
  case KILN_FINISH_STOP_STRING:
    return "stop";
  case KILN_FINISH_EOS:
    return "eos";
  case KILN_FINISH_LENGTH:
    return "length";
  case KILN_FINISH_CANCELLED:
    return "cancelled";
  case KILN_FINISH_ERROR:
    return "error";
  }
  return "unknown";
}

void kiln_request_params_init(kiln_request_params *params) {
  if (!params)
    return;
  std::memset(params, 0, sizeof(*params));
  params->struct_size = sizeof(*params);
  kiln::SamplingParams sampling;
  params->sampling.temperature = sampling.temperature;
  params->sampling.top_k = sampling.topK;
  params->sampling.top_p = sampling.topP;
  params->sampling.seed = sampling.seed;
  params->max_tokens = kiln::GenerationRequest().maxTokens;
}

kiln_status kiln_session_submit(kiln_session *session,
                                const kiln_request_params *params,
                                kiln_request **out_request) {
  const char *function = "kiln_session_submit";
  if (!out_request)
    return nullArgument(function, "out_request");
  *out_request = nullptr;
  if (!session)
    return nullArgument(function, "session");
  if (!params)
    return nullArgument(function, "params");
  if (kiln_status status =
          checkStructSize(params, function, "kiln_request_params"))
    return status;
  if (params->num_prompt_tokens > 0 && !params->prompt_tokens)
    return nullArgument(function, "params->prompt_tokens");
  if (params->num_messages > 0 && !params->messages)
    return nullArgument(function, "params->messages");
  if (params->num_stop_strings > 0 && !params->stop_strings)
    return nullArgument(function, "params->stop_strings");
  const int prompts = (params->prompt != nullptr) + (params->num_messages > 0) +
                      (params->num_prompt_tokens > 0);
  if (prompts != 1)
    return fail(KILN_ERROR_INVALID_ARGUMENT,
                std::string(function) +
                    (prompts == 0 ? ": no prompt: set"
                                  : ": two prompts: set "
                                    "one of") +
                    " params->prompt, messages or prompt_tokens");

  return guarded(KILN_ERROR_INVALID_ARGUMENT, [&] {
    kiln::GenerationRequest request;
    if (params->prompt)
      request.prompt = params->prompt;
    request.chat = params->chat != 0;
    for (size_t i = 0; i < params->num_messages; ++i) {
      const kiln_chat_message &message = params->messages[i];
      if (!message.role || !message.content)
        return fail(KILN_ERROR_INVALID_ARGUMENT,
                    "kiln_session_submit: params->messages[" +
                        std::to_string(i) + "] has a NULL role or content");
      request.messages.push_back({message.role, message.content});
    }
    request.promptTokens.assign(params->prompt_tokens,
                                params->prompt_tokens +
                                    params->num_prompt_tokens);
    request.sampling.temperature = params->sampling.temperature;
    request.sampling.topK = params->sampling.top_k;
    request.sampling.topP = params->sampling.top_p;
    request.sampling.seed = params->sampling.seed;
    request.maxTokens = params->max_tokens;
    for (size_t i = 0; i < params->num_stop_strings; ++i) {
      if (!params->stop_strings[i])
        return fail(KILN_ERROR_INVALID_ARGUMENT,
                    "kiln_session_submit: params->stop_strings[" +
                        std::to_string(i) + "] is NULL");
      request.stopStrings.push_back(params->stop_strings[i]);
    }

    auto handle = std::make_unique<kiln_request>();
    auto gate = std::make_shared<SubmitGate>();
    std::unique_lock<std::mutex> gateLock(gate->mutex);
    if (kiln_token_callback callback = params->on_token) {
      void *userData = params->user_data;
      kiln_request *raw = handle.get();
      // Reads nothing from the handle: after a kiln_request_free that could
      // not wait (see kiln.h) it may be gone.
      request.onToken = [callback, userData, raw,
                         gate](kiln::Request &, const kiln::TokenEvent &event) {
        { std::lock_guard<std::mutex> submitted(gate->mutex); }
        kiln_token_event cEvent = toC(event);
        callback(userData, raw, &cEvent);
      };
      request.queueEvents = params->queue_events != 0;
    }
    handle->request = session->engine->submit(std::move(request));
    gateLock.unlock();
    *out_request = handle.release();
    return KILN_OK;
  });
}

kiln_status kiln_request_poll(kiln_request *request, int64_t timeout_ms,
                              kiln_token_event *event) {
  if (!request)
    return nullArgument("kiln_request_poll", "request");
  if (!event)
    return nullArgument("kiln_request_poll", "event");
  if (timeout_ms != 0 && kiln::onEngineThread())
    return wrongThread("kiln_request_poll with a nonzero timeout");
  if (request->polling.exchange(true))
    return fail(KILN_ERROR_INVALID_STATE,
                "kiln_request_poll: another thread is polling this request");
  kiln_status status = guarded(KILN_ERROR_INVALID_STATE, [&] {
    switch (request->request->poll(request->polled, toTimeout(timeout_ms))) {
    case kiln::PollResult::Event:
      *event = toC(request->polled);
      return KILN_OK;
    case kiln::PollResult::Timeout:
      return KILN_TIMEOUT;
    case kiln::PollResult::End:
      break;
    }
    return KILN_END;
  });
  request->polling.store(false);
  return status;
}

kiln_status kiln_request_cancel(kiln_request *request) {
  if (!request)
    return nullArgument("kiln_request_cancel", "request");
  request->request->cancel();
  return KILN_OK;
}

kiln_status kiln_request_wait(kiln_request *request, int64_t timeout_ms) {
  if (!request)
    return nullArgument("kiln_request_wait", "request");
  if (timeout_ms != 0 && kiln::onEngineThread())
    return wrongThread("kiln_request_wait with a nonzero timeout");
  return guarded(KILN_ERROR_INTERNAL, [&] {
    return request->request->wait(toTimeout(timeout_ms)) ? KILN_OK
                                                         : KILN_TIMEOUT;
  });
}

kiln_status kiln_request_get_result(kiln_request *request,
                                    kiln_request_result *result) {
  if (!request)
    return nullArgument("kiln_request_get_result", "request");
  if (!result)
    return nullArgument("kiln_request_get_result", "result");
  return guarded(KILN_ERROR_INTERNAL, [&] {
    std::lock_guard<std::mutex> lock(request->resultMutex);
    if (!request->resultReady) {
      const kiln::Request &r = *request->request;
      if (!r.finished())
        return fail(KILN_ERROR_INVALID_STATE,
                    "kiln_request_get_result: the request has not finished");
      request->resultText = r.text();
      request->resultTokens = r.tokens();
      request->resultError = r.error();
      request->resultReason = toC(r.finishReason());
      request->resultReady = true;
    }
    result->finish_reason = request->resultReason;
    result->prompt_tokens = request->request->promptTokens();
    result->tokens = request->resultTokens.data();
    result->num_tokens = request->resultTokens.size();
    result->text = request->resultText.c_str();
    result->text_length = request->resultText.size();
    result->error = request->resultError.c_str();
    return KILN_OK;
  });
}

void kiln_request_free(kiln_request *request) {
  if (!request)
    return;
  try {
    request->request->cancel();
    request->request->detachCallback();
  } catch (...) {
    // detachCallback only locks a mutex; nothing to report from a void call.
  }
  delete request;
}

} // extern "C"
