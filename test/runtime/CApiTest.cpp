//===- CApiTest.cpp - the C API (kiln.h) and its C++ wrapper (kiln.hpp) ---===//
//
// Error paths need no model; generation runs on the tiny checkpoint and is
// compared with the C++ engine's (EngineTest checks that one against the
// CPU model).
//
//===----------------------------------------------------------------------===//

#include "EngineTestSupport.h"

#include "kiln/engine.h"
#include "kiln/kiln.h"
#include "kiln/kiln.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <limits>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using kiln::testing::expectMentions;

/// Expects `status` with a last error that mentions every one of `parts`.
void expectFailure(kiln_status status, kiln_status expected,
                   const std::vector<std::string> &parts) {
  EXPECT_EQ(status, expected)
      << kiln_status_name(status) << ": " << kiln_last_error();
  expectMentions(kiln_last_error(), parts);
}

/// Everything a request delivered, collected by polling.
struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  kiln_finish_reason reason = KILN_FINISH_NONE;
  std::string error;
};

Collected pollAll(kiln_request *request) {
  Collected collected;
  kiln_token_event event;
  kiln_status status;
  while ((status = kiln_request_poll(request, -1, &event)) == KILN_OK) {
    EXPECT_EQ(collected.reason, KILN_FINISH_NONE) << "event after the last";
    if (event.token >= 0)
      collected.tokens.push_back(event.token);
    EXPECT_EQ(std::strlen(event.text), event.text_length);
    collected.text.append(event.text, event.text_length);
    collected.reason = event.finish_reason;
    collected.error = event.error;
  }
  EXPECT_EQ(status, KILN_END) << kiln_last_error();
  return collected;
}

kiln_request_params greedyParams(const char *prompt, int64_t maxTokens) {
  kiln_request_params params;
  kiln_request_params_init(&params);
  params.prompt = prompt;
  params.sampling.temperature = 0;
  params.max_tokens = maxTokens;
  return params;
}

//===----------------------------------------------------------------------===//
// Without a model
//===----------------------------------------------------------------------===//

extern "C" int kilnHeaderCompilesAsC99(void);

TEST(CApi, HeaderCompilesAsC99) {
  // KilnHeaderC99.c is built with -std=c99 -pedantic-errors.
  EXPECT_EQ(kilnHeaderCompilesAsC99(), KILN_API_VERSION);
}

TEST(CApi, VersionsAndNames) {
  EXPECT_STREQ(kiln_version(), KILN_VERSION_STRING);
  EXPECT_EQ(kiln_api_version(), KILN_API_VERSION);
  EXPECT_STREQ(kiln_status_name(KILN_ERROR_WRONG_THREAD), "wrong thread");
  EXPECT_STREQ(kiln_status_name(static_cast<kiln_status>(99)),
               "unknown status");
  EXPECT_STREQ(kiln_finish_reason_name(KILN_FINISH_STOP_STRING), "stop");
  std::thread([] { EXPECT_STREQ(kiln_last_error(), ""); }).join();
  kiln::embed::checkApiVersion();
}

TEST(CApi, NullArgumentsAreRefusedAndNamed) {
  kiln_model *model = reinterpret_cast<kiln_model *>(1);
  expectFailure(kiln_model_load(nullptr, nullptr, nullptr, &model),
                KILN_ERROR_INVALID_ARGUMENT, {"model_dir is NULL"});
  EXPECT_EQ(model, nullptr);
  expectFailure(kiln_model_load("dir", nullptr, nullptr, nullptr),
                KILN_ERROR_INVALID_ARGUMENT, {"out_model"});
  kiln_model_info info;
  expectFailure(kiln_model_get_info(nullptr, &info),
                KILN_ERROR_INVALID_ARGUMENT, {"kiln_model_get_info", "model"});
  kiln_session *session = nullptr;
  expectFailure(kiln_session_create(nullptr, nullptr, &session),
                KILN_ERROR_INVALID_ARGUMENT, {"kiln_session_create", "model"});
  kiln_session_stats stats;
  expectFailure(kiln_session_get_stats(nullptr, &stats),
                KILN_ERROR_INVALID_ARGUMENT, {"session"});
  kiln_request_params params = greedyParams("x", 1);
  kiln_request *request = nullptr;
  expectFailure(kiln_session_submit(nullptr, &params, &request),
                KILN_ERROR_INVALID_ARGUMENT, {"session is NULL"});
  kiln_token_event event;
  expectFailure(kiln_request_poll(nullptr, 0, &event),
                KILN_ERROR_INVALID_ARGUMENT, {"kiln_request_poll", "request"});
  expectFailure(kiln_request_cancel(nullptr), KILN_ERROR_INVALID_ARGUMENT,
                {"request"});
  expectFailure(kiln_request_wait(nullptr, 0), KILN_ERROR_INVALID_ARGUMENT,
                {"request"});
  kiln_request_result result;
  expectFailure(kiln_request_get_result(nullptr, &result),
                KILN_ERROR_INVALID_ARGUMENT, {"request"});
  // Frees and initializers accept NULL.
  kiln_model_free(nullptr);
  EXPECT_EQ(kiln_session_free(nullptr), KILN_OK);
  kiln_request_free(nullptr);
  kiln_request_params_init(nullptr);
  kiln_load_options_init(nullptr);
  kiln_session_options_init(nullptr);
  // The message is per thread.
  std::thread([] { EXPECT_STREQ(kiln_last_error(), ""); }).join();
}

TEST(CApi, BadModelDirectoriesNameTheFile) {
  kiln::testing::ScratchDir scratch;
  kiln_model *model = nullptr;
  const fs::path missing = scratch / "missing";
  expectFailure(kiln_model_load(missing.c_str(), nullptr, nullptr, &model),
                KILN_ERROR_MODEL,
                {(missing / "config.json").string(), "cannot open"});
  EXPECT_EQ(model, nullptr);
  fs::create_directories(scratch / "config-only");
  fs::copy_file(kiln::testing::sourceDir() / "examples/tiny/config.json",
                scratch / "config-only/config.json");
  expectFailure(kiln_model_load((scratch / "config-only").c_str(), nullptr,
                                nullptr, &model),
                KILN_ERROR_MODEL,
                {"config-only", "model.safetensors.index.json"});
  fs::create_directories(scratch / "bad");
  scratch.write("bad/config.json", "{\"model_type\": \"llama\"}");
  expectFailure(
      kiln_model_load((scratch / "bad").c_str(), nullptr, nullptr, &model),
      KILN_ERROR_MODEL, {(scratch / "bad/config.json").string()});

  expectFailure(kiln_model_load(missing.c_str(), "model.kiln", nullptr, &model),
                KILN_ERROR_MODEL, {"model.kiln"});
  kiln_load_options options;
  kiln_load_options_init(&options);
  options.num_threads = -2;
  expectFailure(kiln_model_load(missing.c_str(), nullptr, &options, &model),
                KILN_ERROR_INVALID_ARGUMENT, {"num_threads", "-2"});
  kiln_load_options_init(&options);
  options.struct_size = 8;
  expectFailure(kiln_model_load(missing.c_str(), nullptr, &options, &model),
                KILN_ERROR_INVALID_ARGUMENT,
                {"struct_size is 8", "kiln_load_options_init"});
  EXPECT_EQ(model, nullptr);

  // The C++ wrapper throws the same.
  try {
    kiln::embed::Model bad(missing.string());
    ADD_FAILURE() << "loaded a missing directory";
  } catch (const kiln::embed::Error &error) {
    EXPECT_EQ(error.status(), KILN_ERROR_MODEL);
    expectMentions(error.what(), {"bad model", "config.json"});
  }
}

//===----------------------------------------------------------------------===//
// On the tiny model
//===----------------------------------------------------------------------===//

class CApiOnTinyModel : public kiln::testing::TinyModelTest {
protected:
  void TearDown() override { kiln_model_free(model); }

  /// Loads the model through the C API into `model`.
  void load() {
    kiln_load_options options;
    kiln_load_options_init(&options);
    options.num_threads = 2;
    ASSERT_EQ(kiln_model_load(modelDir().c_str(), nullptr, &options, &model),
              KILN_OK)
        << kiln_last_error();
  }

  kiln_session *newSession(int64_t maxBatch) {
    kiln_session_options options;
    kiln_session_options_init(&options);
    options.max_batch = maxBatch;
    kiln_session *session = nullptr;
    EXPECT_EQ(kiln_session_create(model, &options, &session), KILN_OK)
        << kiln_last_error();
    return session;
  }

  /// HF transformers' greedy continuations (see goldenPrompts).
  static std::vector<kiln::testing::GoldenPrompt> golden() {
    std::vector<kiln::testing::GoldenPrompt> prompts =
        kiln::testing::goldenPrompts(128815); // the tokenizer's vocabulary
    EXPECT_GE(prompts.size(), 2u);
    return prompts;
  }

  kiln_model *model = nullptr;
};

struct Streamed {
  std::vector<int32_t> tokens;
  std::string text;
  int events = 0;
  kiln_finish_reason reason = KILN_FINISH_NONE;
};

void streamInto(void *userData, kiln_request *, const kiln_token_event *event) {
  auto *streamed = static_cast<Streamed *>(userData);
  ++streamed->events;
  if (event->token >= 0)
    streamed->tokens.push_back(event->token);
  streamed->text.append(event->text, event->text_length);
  streamed->reason = event->finish_reason;
}

TEST_F(CApiOnTinyModel, GeneratesByPollingAndByCallback) {
  load();
  kiln_model_info info;
  ASSERT_EQ(kiln_model_get_info(model, &info), KILN_OK);
  EXPECT_EQ(info.vocab_size, 129280);
  EXPECT_EQ(info.context_size, 2560);
  EXPECT_EQ(info.num_layers, 3);
  EXPECT_EQ(info.kv_bytes_per_token, (160 + 16) * 3 * 4); // absorbed MLA
  EXPECT_EQ(info.bos_token, 0);
  EXPECT_EQ(info.eos_token, 1);

  // Two golden prompts in one batch, one polled, one streamed.
  const std::vector<kiln::testing::GoldenPrompt> prompts = golden();
  kiln_session *session = newSession(4);
  kiln_request_params polled = greedyParams(nullptr, 16);
  polled.prompt_tokens = prompts[0].tokens.data();
  polled.num_prompt_tokens = prompts[0].tokens.size();
  kiln_request *first = nullptr;
  ASSERT_EQ(kiln_session_submit(session, &polled, &first), KILN_OK);
  Streamed streamed;
  kiln_request_params callback = greedyParams(nullptr, 16);
  callback.prompt_tokens = prompts[1].tokens.data();
  callback.num_prompt_tokens = prompts[1].tokens.size();
  callback.on_token = streamInto;
  callback.user_data = &streamed;
  kiln_request *second = nullptr;
  ASSERT_EQ(kiln_session_submit(session, &callback, &second), KILN_OK);

  Collected collected = pollAll(first);
  EXPECT_EQ(collected.tokens, prompts[0].greedy);
  EXPECT_EQ(collected.reason, KILN_FINISH_LENGTH);
  ASSERT_EQ(kiln_request_wait(second, -1), KILN_OK);
  EXPECT_EQ(streamed.tokens, prompts[1].greedy);
  EXPECT_EQ(streamed.events, 16);
  EXPECT_EQ(streamed.reason, KILN_FINISH_LENGTH);
  kiln_token_event event;
  EXPECT_EQ(kiln_request_poll(second, 0, &event), KILN_END); // not queued

  kiln_request_result result;
  ASSERT_EQ(kiln_request_get_result(first, &result), KILN_OK);
  EXPECT_EQ(result.finish_reason, KILN_FINISH_LENGTH);
  EXPECT_EQ(
      std::vector<int32_t>(result.tokens, result.tokens + result.num_tokens),
      collected.tokens);
  EXPECT_EQ(std::string(result.text, result.text_length), collected.text);
  EXPECT_STREQ(result.error, "");
  EXPECT_EQ(result.prompt_tokens,
            static_cast<int64_t>(prompts[0].tokens.size()));
  ASSERT_EQ(kiln_request_get_result(second, &result), KILN_OK);
  EXPECT_EQ(std::string(result.text), streamed.text);

  kiln_session_stats stats;
  ASSERT_EQ(kiln_session_get_stats(session, &stats), KILN_OK);
  EXPECT_EQ(stats.finished, 2);
  EXPECT_EQ(stats.peak_active, 2);
  EXPECT_EQ(stats.kv_budget_tokens, 4 * 2560);
  EXPECT_EQ(stats.kv_reserved_tokens, 0);
  EXPECT_GE(stats.steps, 16);

  // Chat messages and token prompts; stop strings; freeing a session
  // cancels what is still running, and its requests stay readable.
  kiln_chat_message messages[] = {{"system", "Be brief."}, {"user", "Hello!"}};
  kiln_request_params chat = greedyParams(nullptr, 2000);
  chat.messages = messages;
  chat.num_messages = 2;
  const char *stops[] = {"never appears \x01"};
  chat.stop_strings = stops;
  chat.num_stop_strings = 1;
  kiln_request *long_running = nullptr;
  ASSERT_EQ(kiln_session_submit(session, &chat, &long_running), KILN_OK);
  ASSERT_EQ(kiln_request_poll(long_running, -1, &event), KILN_OK);
  EXPECT_EQ(kiln_session_free(session), KILN_OK);
  Collected rest = pollAll(long_running);
  EXPECT_EQ(rest.reason, KILN_FINISH_CANCELLED);
  ASSERT_EQ(kiln_request_get_result(long_running, &result), KILN_OK);
  EXPECT_EQ(result.finish_reason, KILN_FINISH_CANCELLED);
  EXPECT_LT(result.num_tokens, 2000u);
  kiln_request_free(long_running);
  kiln_request_free(first);
  kiln_request_free(second);
}

int cancelHalfway(void *userData, kiln_load_stage stage, double fraction) {
  auto *calls = static_cast<std::vector<std::pair<int, double>> *>(userData);
  calls->push_back({stage, fraction});
  return fraction >= 0.5;
}

int countProgress(void *userData, kiln_load_stage stage, double fraction) {
  auto *calls = static_cast<std::vector<std::pair<int, double>> *>(userData);
  calls->push_back({stage, fraction});
  return 0;
}

TEST_F(CApiOnTinyModel, LoadReportsProgressAndHonoursCancellation) {
  std::vector<std::pair<int, double>> calls;
  kiln_load_options options;
  kiln_load_options_init(&options);
  options.num_threads = 1;
  options.progress = countProgress;
  options.progress_user_data = &calls;
  kiln_model *again = nullptr;
  ASSERT_EQ(kiln_model_load(modelDir().c_str(), nullptr, &options, &again),
            KILN_OK);
  kiln_model_free(again);
  ASSERT_GT(calls.size(), 10u);
  EXPECT_EQ(calls.front(), (std::pair<int, double>{KILN_LOAD_CHECKPOINT, 0}));
  EXPECT_EQ(calls.back(), (std::pair<int, double>{KILN_LOAD_DONE, 1}));
  const size_t fullCalls = calls.size();

  calls.clear();
  const int files = kiln::testing::openFileCount();
  const int mappings = kiln::testing::mappingsUnder(modelDir());
  options.progress = cancelHalfway;
  again = reinterpret_cast<kiln_model *>(1);
  expectFailure(kiln_model_load(modelDir().c_str(), nullptr, &options, &again),
                KILN_ERROR_CANCELLED, {"cancelled"});
  EXPECT_EQ(again, nullptr);
  EXPECT_EQ(calls.back().first, KILN_LOAD_WEIGHTS);
  EXPECT_GE(calls.back().second, 0.5);
  EXPECT_LT(calls.size(), fullCalls);
  EXPECT_EQ(kiln::testing::openFileCount(), files);
  EXPECT_EQ(kiln::testing::mappingsUnder(modelDir()), mappings);

  // Through kiln.hpp: an exception thrown by the progress function cancels
  // the load and comes back out of the constructor.
  kiln::embed::LoadOptions hppOptions;
  hppOptions.progress = [](kiln_load_stage stage, double) -> bool {
    if (stage == KILN_LOAD_WEIGHTS)
      throw std::runtime_error("stop loading");
    return true;
  };
  try {
    kiln::embed::Model failing(modelDir().string(), hppOptions);
    ADD_FAILURE() << "the load went on";
  } catch (const std::runtime_error &error) {
    EXPECT_STREQ(error.what(), "stop loading");
  }
}

TEST_F(CApiOnTinyModel, BadRequestsAreRefusedWithTheirReason) {
  load();
  kiln_session *session = newSession(2);
  kiln_request *request = reinterpret_cast<kiln_request *>(1);
  auto refuse = [&](kiln_request_params params,
                    const std::vector<std::string> &parts) {
    expectFailure(kiln_session_submit(session, &params, &request),
                  KILN_ERROR_INVALID_ARGUMENT, parts);
    EXPECT_EQ(request, nullptr);
  };
  kiln_request_params params = greedyParams("x", 4);
  params.sampling.top_p = 0;
  refuse(params, {"topP"});
  params = greedyParams("x", 4);
  params.sampling.temperature = std::numeric_limits<float>::quiet_NaN();
  refuse(params, {"temperature"});
  params = greedyParams("x", 4);
  params.sampling.top_k = -3;
  refuse(params, {"topK"});
  refuse(greedyParams("x", 0), {"maxTokens must be at least 1"});
  refuse(greedyParams("x", 5000), {"exceed the context of 2560"});
  refuse(greedyParams(nullptr, 4), {"no prompt"});
  params = greedyParams("x", 4);
  int32_t tokens[] = {5, 129280};
  params.prompt = nullptr;
  params.prompt_tokens = tokens;
  params.num_prompt_tokens = 2;
  refuse(params, {"prompt token 1 = 129280", "outside the vocabulary"});
  params.prompt = "";
  refuse(params, {"two prompts"});
  params = greedyParams("x", 4);
  params.num_prompt_tokens = 1;
  refuse(params, {"prompt_tokens is NULL"});
  params = greedyParams("x", 4);
  const char *stops[] = {"ok", ""};
  params.stop_strings = stops;
  params.num_stop_strings = 2;
  refuse(params, {"empty stop string"});
  const char *nullStops[] = {"ok", nullptr};
  params.stop_strings = nullStops;
  refuse(params, {"stop_strings[1] is NULL"});
  params = greedyParams(nullptr, 4);
  kiln_chat_message messages[] = {{"user", nullptr}};
  params.messages = messages;
  params.num_messages = 1;
  refuse(params, {"messages[0]"});
  kiln_chat_message unknownRole[] = {{"narrator", "hi"}};
  params.messages = unknownRole;
  refuse(params, {"narrator"});
  refuse(greedyParams("\xff\xfe", 4), {"UTF-8"});
  params = greedyParams("x", 4);
  params.struct_size = sizeof(params) - 8;
  refuse(params, {"struct_size", "kiln_request_params_init"});

  kiln_session_options options;
  kiln_session_options_init(&options);
  options.max_batch = 0;
  kiln_session *bad = reinterpret_cast<kiln_session *>(1);
  expectFailure(kiln_session_create(model, &options, &bad),
                KILN_ERROR_INVALID_ARGUMENT, {"maxBatch"});
  EXPECT_EQ(bad, nullptr);
  kiln_session_options_init(&options);
  options.kv_budget_tokens = 10;
  params = greedyParams("x", 10);
  ASSERT_EQ(kiln_session_create(model, &options, &bad), KILN_OK);
  expectFailure(kiln_session_submit(bad, &params, &request),
                KILN_ERROR_INVALID_ARGUMENT, {"KV budget of 10"});
  EXPECT_EQ(kiln_session_free(bad), KILN_OK);

  // Polling, waiting and results follow the request's state.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  params = greedyParams("x", 2);
  params.on_token = [](void *userData, kiln_request *,
                       const kiln_token_event *) {
    static_cast<std::shared_future<void> *>(userData)->wait();
  };
  params.user_data = &released;
  params.queue_events = 1;
  kiln_request *held = nullptr;
  ASSERT_EQ(kiln_session_submit(session, &params, &held), KILN_OK);
  kiln_request_result result;
  expectFailure(kiln_request_get_result(held, &result),
                KILN_ERROR_INVALID_STATE, {"not finished"});
  EXPECT_EQ(kiln_request_wait(held, 20), KILN_TIMEOUT);
  kiln_token_event event;
  EXPECT_EQ(kiln_request_poll(held, 0, &event), KILN_TIMEOUT);
  release.set_value();
  EXPECT_EQ(pollAll(held).tokens.size(), 2u);
  EXPECT_EQ(kiln_request_get_result(held, &result), KILN_OK);
  kiln_request_free(held);
  EXPECT_EQ(kiln_session_free(session), KILN_OK);
}

/// What the thread-rules callback saw, on the engine thread.
struct ThreadRules {
  kiln_session *session = nullptr;
  kiln_model *model = nullptr;
  const char *modelDir = nullptr;
  std::vector<kiln_status> statuses;
  std::vector<std::string> messages;
  kiln_request *submitted = nullptr;
  int calls = 0;
};

void probeThreadRules(void *userData, kiln_request *self,
                      const kiln_token_event *) {
  auto *rules = static_cast<ThreadRules *>(userData);
  ++rules->calls;
  kiln_token_event event;
  auto record = [&](kiln_status status) {
    rules->statuses.push_back(status);
    rules->messages.push_back(kiln_last_error());
  };
  record(kiln_request_poll(self, 10, &event));
  record(kiln_request_wait(self, -1));
  record(kiln_session_free(rules->session));
  kiln_model *other = nullptr;
  record(kiln_model_load(rules->modelDir, nullptr, nullptr, &other));
  // Allowed: a zero-timeout poll, cancel, submit, free of this request.
  record(kiln_request_poll(self, 0, &event));
  kiln_request_params params = greedyParams("y", 2);
  record(kiln_session_submit(rules->session, &params, &rules->submitted));
  record(kiln_request_cancel(self));
  kiln_request_free(self); // its own: no more calls after this one
}

TEST_F(CApiOnTinyModel, CallbacksMayNotBlockTheEngine) {
  load();
  ThreadRules rules;
  rules.session = newSession(2);
  rules.model = model;
  const std::string dir = modelDir().string();
  rules.modelDir = dir.c_str();
  kiln_request_params params = greedyParams("x", 50);
  params.on_token = probeThreadRules;
  params.user_data = &rules;
  kiln_request *request = nullptr;
  ASSERT_EQ(kiln_session_submit(rules.session, &params, &request), KILN_OK);
  // The callback frees its own handle, so nothing here can wait on it: the
  // session's count of finished requests says when it and the request it
  // submitted are done (and orders what the callback wrote before it).
  kiln_session_stats stats;
  do {
    std::this_thread::sleep_for(1ms);
    ASSERT_EQ(kiln_session_get_stats(rules.session, &stats), KILN_OK);
  } while (stats.finished < 2);
  EXPECT_EQ(rules.calls, 1);
  ASSERT_EQ(rules.statuses.size(), 7u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(rules.statuses[i], KILN_ERROR_WRONG_THREAD) << "call " << i;
    expectMentions(rules.messages[i], {"engine thread"});
  }
  EXPECT_EQ(rules.statuses[4], KILN_TIMEOUT); // nothing queued: a callback
  EXPECT_EQ(rules.statuses[5], KILN_OK);
  EXPECT_EQ(rules.statuses[6], KILN_OK);
  ASSERT_NE(rules.submitted, nullptr);
  Collected submitted = pollAll(rules.submitted);
  EXPECT_EQ(submitted.tokens.size(), 2u);
  kiln_request_free(rules.submitted);

  // From another thread, kiln_request_free waits for a running callback:
  // once it returns none runs and none starts.
  struct Slow {
    std::atomic<bool> inside{false};
    std::atomic<int> calls{0};
  } slow;
  kiln_request_params slowParams = greedyParams("z", 200);
  slowParams.on_token = [](void *userData, kiln_request *,
                           const kiln_token_event *) {
    auto *state = static_cast<Slow *>(userData);
    state->inside = true;
    std::this_thread::sleep_for(5ms);
    ++state->calls;
    state->inside = false;
  };
  slowParams.user_data = &slow;
  kiln_request *slowRequest = nullptr;
  ASSERT_EQ(kiln_session_submit(rules.session, &slowParams, &slowRequest),
            KILN_OK);
  while (slow.calls < 2)
    std::this_thread::sleep_for(1ms);
  kiln_request_free(slowRequest);
  EXPECT_FALSE(slow.inside);
  const int callsAtFree = slow.calls;
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(slow.calls, callsAtFree);
  EXPECT_LT(callsAtFree, 200);
  EXPECT_EQ(kiln_session_free(rules.session), KILN_OK);
}

TEST_F(CApiOnTinyModel, EightThreadsGetTheirSequentialResults) {
  load();
  constexpr int kThreads = 8;
  auto paramsFor = [](int i, std::string &prompt) {
    prompt = "request " + std::to_string(i) + ":";
    kiln_request_params params = greedyParams(prompt.c_str(), 3 + i % 3);
    params.sampling.temperature = i % 2 ? 0.7f : 0.0f;
    params.sampling.seed = 1000 + i;
    return params;
  };
  std::vector<Collected> sequential(kThreads);
  kiln_session *one = newSession(1);
  for (int i = 0; i < kThreads; ++i) {
    std::string prompt;
    kiln_request_params params = paramsFor(i, prompt);
    kiln_request *request = nullptr;
    ASSERT_EQ(kiln_session_submit(one, &params, &request), KILN_OK);
    sequential[i] = pollAll(request);
    kiln_request_free(request);
  }
  EXPECT_EQ(kiln_session_free(one), KILN_OK);

  kiln_session *session = newSession(4);
  std::vector<Collected> concurrent(kThreads);
  std::vector<Streamed> streamed(kThreads);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      std::string prompt;
      kiln_request_params params = paramsFor(i, prompt);
      if (i % 2) {
        params.on_token = streamInto;
        params.user_data = &streamed[i];
      }
      ++ready;
      while (ready.load() < kThreads)
        std::this_thread::yield();
      kiln_request *request = nullptr;
      ASSERT_EQ(kiln_session_submit(session, &params, &request), KILN_OK);
      if (i % 2) {
        ASSERT_EQ(kiln_request_wait(request, -1), KILN_OK);
        concurrent[i].tokens = streamed[i].tokens;
        concurrent[i].text = streamed[i].text;
        concurrent[i].reason = streamed[i].reason;
      } else {
        concurrent[i] = pollAll(request);
      }
      kiln_request_free(request);
    });
  for (std::thread &thread : threads)
    thread.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(concurrent[i].tokens, sequential[i].tokens) << "thread " << i;
    EXPECT_EQ(concurrent[i].text, sequential[i].text) << "thread " << i;
    EXPECT_EQ(concurrent[i].reason, sequential[i].reason) << "thread " << i;
  }
  kiln_session_stats stats;
  ASSERT_EQ(kiln_session_get_stats(session, &stats), KILN_OK);
  EXPECT_EQ(stats.finished, kThreads);
  EXPECT_LE(stats.peak_active, 4);
  EXPECT_EQ(kiln_session_free(session), KILN_OK);
}

TEST_F(CApiOnTinyModel, CppWrapper) {
  kiln::embed::Model loaded(modelDir().string());
  EXPECT_EQ(loaded.info().vocab_size, 129280);
  kiln::embed::Session session(loaded, {2, 0, 0});

  const kiln::testing::GoldenPrompt prompt = golden()[0];
  kiln::embed::RequestParams params;
  params.promptTokens = prompt.tokens;
  params.temperature = 0;
  params.maxTokens = 16;
  kiln::embed::Request polled = session.submit(params);
  std::vector<int32_t> tokens;
  std::string text;
  while (std::optional<kiln::embed::Event> event = polled.next()) {
    if (event->token >= 0)
      tokens.push_back(event->token);
    text += event->text;
  }
  EXPECT_EQ(tokens, prompt.greedy);
  kiln::embed::Result result = polled.result();
  EXPECT_EQ(result.tokens, tokens);
  EXPECT_EQ(result.text, text);
  EXPECT_EQ(result.finishReason, KILN_FINISH_LENGTH);

  // A callback, moved handles, and an exception thrown by the callback.
  std::string streamed;
  params.onToken = [&](const kiln::embed::Event &event) {
    streamed += event.text;
  };
  kiln::embed::Request moved = session.submit(params);
  kiln::embed::Request streaming = std::move(moved);
  EXPECT_EQ(streaming.result().text, text);
  EXPECT_EQ(streamed, text);

  params.onToken = [](const kiln::embed::Event &) {
    throw std::logic_error("callback failed");
  };
  params.maxTokens = 500;
  kiln::embed::Request throwing = session.submit(params);
  EXPECT_THROW(throwing.wait(), std::logic_error);

  params.onToken = nullptr;
  params.topP = 2;
  try {
    session.submit(params);
    ADD_FAILURE() << "top_p 2 was accepted";
  } catch (const kiln::embed::Error &error) {
    EXPECT_EQ(error.status(), KILN_ERROR_INVALID_ARGUMENT);
    expectMentions(error.what(), {"topP"});
  }
  EXPECT_EQ(session.stats().finished, 3);
}

} // namespace
