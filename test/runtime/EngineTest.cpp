//===- EngineTest.cpp - model loading and the continuous-batching engine --===//
//
// Two kinds of model:
// - the tiny DeepSeek-V3 checkpoint on the CPU backend, for what depends on
//   real numerics: the engine's greedy tokens equal the CPU model's, and a
//   request's tokens do not change when others join or leave its batch;
// - a scripted backend that emits chosen tokens, for exact checks of the
//   protocol: stop strings, EOS, UTF-8 held back across tokens, queueing
//   under maxBatch and the KV budget, cancellation, failures, callbacks.
//
//===----------------------------------------------------------------------===//

#include "EngineTestSupport.h"

#include "kiln/backend.h"
#include "kiln/cpu_model.h"
#include "kiln/engine.h"
#include "kiln/sampler.h"
#include "kiln/tokenizer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using kiln::Engine;
using kiln::EngineOptions;
using kiln::FinishReason;
using kiln::GenerationRequest;
using kiln::PollResult;
using kiln::Request;
using kiln::TokenEvent;
using kiln::testing::errorOf;
using kiln::testing::expectMentions;

/// What a request delivered, collected by polling until the end.
struct Outcome {
  std::vector<int32_t> tokens;
  std::string streamed; // the events' texts, concatenated
  std::vector<std::string> pieces;
  FinishReason reason = FinishReason::None;
  std::string text; // Request::text()
  std::string error;
};

/// `taken`: an event the caller polled already.
Outcome drain(Request &request, const TokenEvent *taken = nullptr) {
  Outcome outcome;
  if (taken) {
    if (taken->token >= 0)
      outcome.tokens.push_back(taken->token);
    outcome.streamed += taken->text;
    outcome.pieces.push_back(taken->text);
  }
  TokenEvent event;
  bool sawLast = false;
  while (request.poll(event, -1ms) == PollResult::Event) {
    EXPECT_FALSE(sawLast) << "an event after the last one";
    sawLast = event.isLast();
    if (event.token >= 0)
      outcome.tokens.push_back(event.token);
    outcome.streamed += event.text;
    outcome.pieces.push_back(event.text);
    if (event.isLast()) {
      outcome.reason = event.finishReason;
      outcome.error = event.error;
    }
  }
  EXPECT_TRUE(sawLast) << "no last event";
  EXPECT_TRUE(request.finished());
  EXPECT_EQ(request.finishReason(), outcome.reason);
  EXPECT_EQ(request.tokens(), outcome.tokens);
  outcome.text = request.text();
  EXPECT_EQ(outcome.text, outcome.streamed);
  return outcome;
}

GenerationRequest greedy(std::vector<int32_t> prompt, int64_t maxTokens) {
  GenerationRequest request;
  request.promptTokens = std::move(prompt);
  request.sampling.temperature = 0;
  request.maxTokens = maxTokens;
  return request;
}

//===----------------------------------------------------------------------===//
// The tiny model
//===----------------------------------------------------------------------===//

class EngineOnTinyModel : public kiln::testing::TinyModelTest {
protected:
  /// Greedy tokens straight from the CPU model, without the engine: the
  /// loop of `kiln generate`.
  static std::vector<int32_t> cpuGreedy(const std::vector<int32_t> &prompt,
                                        int64_t maxTokens) {
    kiln::CpuModel &cpu =
        dynamic_cast<kiln::CpuBackend &>(model()->backend()).model();
    const kiln::Tokenizer &tokenizer = model()->tokenizer();
    const int64_t vocab = cpu.config().vocabSize;
    const int64_t textVocab = std::min<int64_t>(vocab, tokenizer.vocabSize());
    kiln::CpuSequence sequence = cpu.newSequence();
    std::vector<float> logits = cpu.forward(sequence, prompt, 0);
    int64_t position = static_cast<int64_t>(prompt.size());
    std::vector<int32_t> tokens;
    while (static_cast<int64_t>(tokens.size()) < maxTokens) {
      const float *last = logits.data() + logits.size() - vocab;
      tokens.push_back(kiln::argmax(last, textVocab));
      if (tokens.back() == tokenizer.eosId())
        break;
      logits = cpu.forward(sequence, {tokens.back()}, position++);
    }
    return tokens;
  }

  static std::vector<int32_t> encode(const std::string &text) {
    const kiln::Tokenizer &tokenizer = model()->tokenizer();
    return tokenizer.encode(text, tokenizer.addBosByDefault());
  }
};

TEST_F(EngineOnTinyModel, GreedyTokensEqualTheCpuModelsAndTransformers) {
  const kiln::Tokenizer &tokenizer = model()->tokenizer();
  const std::vector<kiln::testing::GoldenPrompt> golden =
      kiln::testing::goldenPrompts(tokenizer.vocabSize());
  ASSERT_GE(golden.size(), 2u);
  Engine engine(model(), {4, 0, 0});
  // A text prompt and two golden token prompts, decoded in one batch.
  const std::string prompt = "Kiln compiles 混合专家 models";
  GenerationRequest text;
  text.prompt = prompt;
  text.sampling.temperature = 0;
  text.maxTokens = 12;
  std::shared_ptr<Request> fromText = engine.submit(text);
  std::vector<std::shared_ptr<Request>> fromGolden;
  for (const kiln::testing::GoldenPrompt &entry : golden)
    fromGolden.push_back(engine.submit(
        greedy(entry.tokens, static_cast<int64_t>(entry.greedy.size()))));

  Outcome outcome = drain(*fromText);
  std::vector<int32_t> expected = cpuGreedy(encode(prompt), 12);
  EXPECT_EQ(outcome.tokens, expected);
  EXPECT_EQ(outcome.reason, expected.back() == tokenizer.eosId()
                                ? FinishReason::Eos
                                : FinishReason::Length);
  EXPECT_EQ(outcome.text, tokenizer.decode(expected, /*skipSpecial=*/true));
  EXPECT_EQ(fromText->promptTokens(),
            static_cast<int64_t>(encode(prompt).size()));
  for (size_t i = 0; i < golden.size(); ++i) {
    outcome = drain(*fromGolden[i]);
    EXPECT_EQ(outcome.tokens, golden[i].greedy) << "golden prompt " << i;
    EXPECT_EQ(outcome.tokens, cpuGreedy(golden[i].tokens, 16));
    EXPECT_EQ(outcome.reason, FinishReason::Length);
  }
  EXPECT_EQ(engine.stats().peakActive, 1 + static_cast<int64_t>(golden.size()));
}

TEST_F(EngineOnTinyModel, RequestsJoiningAndLeavingMidGenerationAreUnchanged) {
  // Seeded sampling and greedy, of different lengths.
  std::vector<GenerationRequest> requests(4);
  const std::vector<std::string> prompts = {
      "Once upon a time", "def main():", "1, 2, 3,", "<html>"};
  const std::vector<int64_t> lengths = {5, 14, 9, 6};
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].promptTokens = encode(prompts[i]);
    requests[i].maxTokens = lengths[i];
    requests[i].sampling.temperature = i % 2 ? 0.0f : 0.8f;
    requests[i].sampling.topK = 40;
    requests[i].sampling.seed = 100 + i;
  }

  // Alone: one request at a time.
  std::vector<std::vector<int32_t>> alone;
  {
    Engine engine(model(), {1, 0, 0});
    for (const GenerationRequest &request : requests)
      alone.push_back(drain(*engine.submit(request)).tokens);
  }

  // Together: 0 and 1 start; 2 joins after 1's third token and 3 after its
  // eighth, while 0 (5 tokens) has left. The callbacks run on the engine
  // thread, one at a time, so `order` needs no lock.
  Engine engine(model(), {4, 0, 0});
  std::vector<std::string> order;
  std::vector<std::shared_ptr<Request>> handles(4);
  auto recordAs = [&](int index) {
    return [&, index](Request &, const TokenEvent &event) {
      order.push_back(std::to_string(index) + (event.isLast() ? "$" : ""));
    };
  };
  GenerationRequest zero = requests[0], one = requests[1];
  zero.onToken = recordAs(0);
  zero.queueEvents = true;
  one.queueEvents = true;
  int oneTokens = 0;
  one.onToken = [&](Request &, const TokenEvent &event) {
    order.push_back(std::string("1") + (event.isLast() ? "$" : ""));
    ++oneTokens;
    for (int joiner : {2, 3})
      if (oneTokens == (joiner == 2 ? 3 : 8)) {
        GenerationRequest late = requests[joiner];
        late.onToken = recordAs(joiner);
        late.queueEvents = true;
        handles[joiner] = engine.submit(late); // from the engine thread
      }
  };
  handles[0] = engine.submit(zero);
  handles[1] = engine.submit(one);
  handles[1]->wait(-1ms);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(handles[i]);
    EXPECT_EQ(drain(*handles[i]).tokens, alone[i]) << "request " << i;
  }

  auto at = [&](const std::string &mark) {
    return std::find(order.begin(), order.end(), mark) - order.begin();
  };
  EXPECT_LT(at("0$"), at("1$")) << "0 left while 1 ran";
  EXPECT_LT(at("2"), at("1$")) << "2 joined while 1 ran";
  EXPECT_LT(at("3"), at("1$")) << "3 joined while 1 ran";
  EXPECT_GT(at("3"), at("0$")) << "3 joined after 0 left";
  EXPECT_GE(engine.stats().peakActive, 2);
}

TEST_F(EngineOnTinyModel, ConcurrentSubmittersGetTheirSequentialResults) {
  constexpr int kThreads = 8;
  std::vector<GenerationRequest> requests(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    requests[i].promptTokens = encode("thread " + std::to_string(i) + " says");
    requests[i].maxTokens = 4 + i % 3;
    requests[i].sampling.temperature = i % 2 ? 0.0f : 1.0f;
    requests[i].sampling.seed = i;
  }
  std::vector<Outcome> sequential;
  {
    Engine engine(model(), {1, 0, 0});
    for (const GenerationRequest &request : requests)
      sequential.push_back(drain(*engine.submit(request)));
  }

  // Half the threads stream through a callback, half poll.
  Engine engine(model(), {4, 0, 0});
  std::vector<Outcome> concurrent(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      GenerationRequest request = requests[i];
      std::vector<int32_t> streamedTokens;
      std::string streamedText;
      if (i % 2) {
        request.onToken = [&](Request &, const TokenEvent &event) {
          if (event.token >= 0)
            streamedTokens.push_back(event.token);
          streamedText += event.text;
        };
      }
      ++ready;
      while (ready.load() < kThreads) // submit all at once
        std::this_thread::yield();
      std::shared_ptr<Request> handle = engine.submit(request);
      if (i % 2) {
        handle->wait(-1ms);
        concurrent[i].tokens = streamedTokens;
        concurrent[i].text = streamedText;
        concurrent[i].reason = handle->finishReason();
        EXPECT_EQ(handle->text(), streamedText);
      } else {
        concurrent[i] = drain(*handle);
      }
    });
  for (std::thread &thread : threads)
    thread.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(concurrent[i].tokens, sequential[i].tokens) << "thread " << i;
    EXPECT_EQ(concurrent[i].text, sequential[i].text) << "thread " << i;
    EXPECT_EQ(concurrent[i].reason, sequential[i].reason) << "thread " << i;
  }
  kiln::EngineStats stats = engine.stats();
  EXPECT_EQ(stats.finished, kThreads);
  EXPECT_LE(stats.peakActive, 4);
  EXPECT_EQ(stats.kvReservedTokens, 0);
}

TEST_F(EngineOnTinyModel, LoadReportsProgressAndCanBeCancelled) {
  std::vector<kiln::LoadProgress> reports;
  kiln::ModelLoadOptions options;
  options.cpu.numThreads = 1;
  options.progress = [&](const kiln::LoadProgress &progress) {
    reports.push_back(progress);
    return true;
  };
  std::shared_ptr<kiln::Model> loaded = kiln::Model::load(modelDir(), options);
  ASSERT_GE(reports.size(), 10u); // one per weight tensor, and the stages
  EXPECT_EQ(reports.front().stage, kiln::LoadStage::Checkpoint);
  EXPECT_EQ(reports[1].stage, kiln::LoadStage::Tokenizer);
  EXPECT_EQ(reports[2].stage, kiln::LoadStage::Weights);
  EXPECT_EQ(reports.back().stage, kiln::LoadStage::Done);
  EXPECT_EQ(reports.back().fraction, 1.0);
  for (size_t i = 1; i < reports.size(); ++i) {
    EXPECT_GE(reports[i].fraction, reports[i - 1].fraction);
    EXPECT_GE(reports[i].stage, reports[i - 1].stage);
  }
  // The last weight tensor completes the weights: every byte was counted.
  EXPECT_DOUBLE_EQ(reports[reports.size() - 2].fraction, 1.0);

  // Cancelled half-way through the weights, by the callback and by the
  // flag: nothing stays open or mapped.
  const int filesBefore = kiln::testing::openFileCount();
  ASSERT_EQ(kiln::testing::mappingsUnder(modelDir()), 0);
  for (bool byFlag : {false, true}) {
    std::atomic<bool> cancel{false};
    int calls = 0;
    double lastFraction = 0;
    kiln::ModelLoadOptions cancelling;
    cancelling.cpu.numThreads = 1;
    cancelling.progress = [&](const kiln::LoadProgress &progress) {
      ++calls;
      lastFraction = progress.fraction;
      if (progress.fraction < 0.5)
        return true;
      if (!byFlag)
        return false;
      cancel = true;
      return true;
    };
    cancelling.cancel = &cancel;
    EXPECT_THROW(kiln::Model::load(modelDir(), cancelling),
                 kiln::LoadCancelled);
    EXPECT_GE(lastFraction, 0.5);
    EXPECT_LT(lastFraction, 1.0);
    EXPECT_LT(calls, static_cast<int>(reports.size()));
    EXPECT_EQ(kiln::testing::openFileCount(), filesBefore);
    EXPECT_EQ(kiln::testing::mappingsUnder(modelDir()), 0);
  }

  // Not a model directory; an artifact that does not exist.
  kiln::testing::ScratchDir empty;
  expectMentions(errorOf([&] { kiln::Model::load(empty.path()); }),
                 {(empty.path() / "config.json").string()});
  kiln::ModelLoadOptions withArtifact;
  withArtifact.artifact = "model.kiln";
  expectMentions(errorOf([&] { kiln::Model::load(modelDir(), withArtifact); }),
                 {"model.kiln"});
}

//===----------------------------------------------------------------------===//
// A scripted backend
//===----------------------------------------------------------------------===//

/// Emits `script` token by token after any prompt (then EOS), so the exact
/// events are known. A prompt starting with kPoison gets NaN logits. Records
/// the batch size of each step; throws on step `failAtStep` (if >= 0).
class ScriptedBackend : public kiln::Backend {
public:
  static constexpr int32_t kPoison = 7;

  ScriptedBackend(int64_t vocab, int32_t eos) : eos(eos) {
    modelConfig.vocabSize = vocab;
    modelConfig.maxPositionEmbeddings = 256;
    modelConfig.numHiddenLayers = 1;
  }

  const kiln::ModelConfig &config() const override { return modelConfig; }
  int64_t kvBytesPerToken() const override { return 1000; }
  std::unique_ptr<kiln::BackendSequence> newSequence() override {
    return std::make_unique<Sequence>();
  }

  std::vector<float>
  step(const std::vector<kiln::BackendStepEntry> &entries) override {
    {
      std::lock_guard<std::mutex> lock(mutex);
      batchSizes.push_back(static_cast<int>(entries.size()));
      if (static_cast<int>(batchSizes.size()) - 1 == failAtStep)
        throw kiln::Error("scripted failure");
    }
    const int64_t vocab = modelConfig.vocabSize;
    std::vector<float> logits(entries.size() * vocab, 0.0f);
    for (size_t i = 0; i < entries.size(); ++i) {
      auto &sequence = static_cast<Sequence &>(*entries[i].sequence);
      EXPECT_EQ(entries[i].startPosition, sequence.length);
      if (sequence.length == 0) {
        sequence.promptLength = static_cast<int64_t>(entries[i].tokens.size());
        sequence.poisoned = entries[i].tokens[0] == kPoison;
      }
      sequence.length += static_cast<int64_t>(entries[i].tokens.size());
      const size_t generated = sequence.length - sequence.promptLength;
      float *row = logits.data() + i * vocab;
      if (sequence.poisoned)
        row[0] = std::numeric_limits<float>::quiet_NaN();
      else
        row[generated < script.size() ? script[generated] : eos] = 1.0f;
    }
    return logits;
  }

  std::vector<int> steps() {
    std::lock_guard<std::mutex> lock(mutex);
    return batchSizes;
  }

  /// For the next engines; call while no engine steps.
  void reset(std::vector<int32_t> newScript) {
    std::lock_guard<std::mutex> lock(mutex);
    script = std::move(newScript);
    batchSizes.clear();
    failAtStep = -1;
  }

  int failAtStep = -1;

private:
  struct Sequence : kiln::BackendSequence {
    int64_t cachedTokens() const override { return length; }
    int64_t length = 0, promptLength = 0;
    bool poisoned = false;
  };

  kiln::ModelConfig modelConfig;
  std::vector<int32_t> script;
  int32_t eos;
  std::mutex mutex;
  std::vector<int> batchSizes;
};

class EngineProtocol : public ::testing::Test {
protected:
  /// One tokenizer and model for the suite: loading the tokenizer takes a
  /// good part of a second.
  static void SetUpTestSuite() {
    kiln::Tokenizer loaded = kiln::Tokenizer::load(
        kiln::testing::sourceDir() / ".deps/deepseek-v3-tokenizer");
    auto owned =
        std::make_unique<ScriptedBackend>(loaded.vocabSize(), loaded.eosId());
    backend = owned.get();
    model = std::make_shared<kiln::Model>(std::move(owned), std::move(loaded));
    tokenizer = &model->tokenizer();
    for (int32_t id = 0; id < tokenizer->vocabSize(); ++id)
      if (tokenizer->idToToken(id) && !tokenizer->isSpecial(id) &&
          tokenizer->tokenBytes(id).size() == 1)
        byteToken[static_cast<uint8_t>(tokenizer->tokenBytes(id)[0])] = id;
  }
  static void TearDownTestSuite() {
    model.reset();
    backend = nullptr;
    tokenizer = nullptr;
  }

  /// One token per byte of `text`: pieces split exactly where wanted.
  static std::vector<int32_t> bytesOf(const std::string &text) {
    std::vector<int32_t> ids;
    for (char c : text)
      ids.push_back(byteToken.at(static_cast<uint8_t>(c)));
    return ids;
  }

  /// The model, its backend now emitting `script`.
  static std::shared_ptr<kiln::Model> scripted(std::vector<int32_t> script) {
    backend->reset(std::move(script));
    return model;
  }

  static inline std::shared_ptr<kiln::Model> model;
  static inline ScriptedBackend *backend = nullptr;
  static inline const kiln::Tokenizer *tokenizer = nullptr;
  static inline std::map<uint8_t, int32_t> byteToken;
};

TEST_F(EngineProtocol, StopStringsAreHeldBackAndCutOff) {
  Engine engine(scripted(bytesOf("aSTxSTOPzz")));
  GenerationRequest request = greedy({1, 2, 3}, 20);
  request.stopStrings = {"STOP", "never"};
  Outcome outcome = drain(*engine.submit(request));
  // "S" and "ST" could start "STOP": held back until "x" rules it out; the
  // second "ST" grows into the stop string, which is not delivered.
  EXPECT_EQ(outcome.pieces,
            (std::vector<std::string>{"a", "", "", "STx", "", "", "", ""}));
  EXPECT_EQ(outcome.text, "aSTx");
  EXPECT_EQ(outcome.reason, FinishReason::StopString);
  EXPECT_EQ(outcome.tokens, bytesOf("aSTxSTOP"));

  // The earliest of several stop strings wins; a stop string spanning
  // tokens ("o w") is found when its last piece arrives.
  Engine words(scripted(tokenizer->encode("Hello world, world")));
  request.stopStrings = {"world", "o w"};
  outcome = drain(*words.submit(request));
  EXPECT_EQ(outcome.text, "Hell");
  EXPECT_EQ(outcome.reason, FinishReason::StopString);
}

TEST_F(EngineProtocol, EosLengthAndSplitCharacters) {
  // "😀" is four bytes, one token each: nothing until the character is whole.
  std::vector<int32_t> script = bytesOf("A\xF0\x9F\x98\x80");
  script.push_back(tokenizer->eosId());
  Engine engine(scripted(script));
  Outcome outcome = drain(*engine.submit(greedy({5}, 10)));
  EXPECT_EQ(outcome.pieces, (std::vector<std::string>{"A", "", "", "",
                                                      "\xF0\x9F\x98\x80", ""}));
  EXPECT_EQ(outcome.reason, FinishReason::Eos);
  EXPECT_EQ(outcome.tokens.back(), tokenizer->eosId());
  EXPECT_EQ(outcome.text, "A\xF0\x9F\x98\x80");

  // maxTokens ends it inside the character: the held-back bytes are flushed
  // as decode() would, with U+FFFD.
  outcome = drain(*engine.submit(greedy({5}, 3)));
  EXPECT_EQ(outcome.reason, FinishReason::Length);
  EXPECT_EQ(outcome.tokens.size(), 3u);
  EXPECT_EQ(outcome.text, "A\xEF\xBF\xBD");
}

TEST_F(EngineProtocol, MaxBatchAndKvBudgetMakeRequestsQueue) {
  // Six requests reserving 4 + 6 = 10 positions each.
  auto runSix = [&](const EngineOptions &options) {
    Engine engine(scripted(tokenizer->encode("one two three four five six")),
                  options);
    std::vector<std::shared_ptr<Request>> requests;
    for (int i = 0; i < 6; ++i)
      requests.push_back(engine.submit(greedy({10, 11, 12, 13}, 6)));
    for (auto &request : requests) {
      Outcome outcome = drain(*request);
      EXPECT_EQ(outcome.tokens.size(), 6u);
      EXPECT_EQ(outcome.text, "one two three four five six");
    }
    kiln::EngineStats stats = engine.stats();
    EXPECT_EQ(stats.finished, 6);
    EXPECT_EQ(stats.active, 0);
    EXPECT_EQ(stats.waiting, 0);
    EXPECT_EQ(stats.kvReservedTokens, 0);
    for (int size : backend->steps())
      EXPECT_LE(size, stats.peakActive);
    return stats;
  };
  kiln::EngineStats byBatch = runSix({2, 1000, 0});
  EXPECT_EQ(byBatch.peakActive, 2);
  EXPECT_EQ(byBatch.peakKvReservedTokens, 20);
  kiln::EngineStats byBudget = runSix({8, 25, 0});
  EXPECT_EQ(byBudget.peakActive, 2);
  EXPECT_EQ(byBudget.peakKvReservedTokens, 20);
  EXPECT_EQ(byBudget.kvBudgetTokens, 25);
  // 3 rounds of 6 steps at most two at a time, not one long batch.
  EXPECT_GE(byBudget.steps, 18);

  // A budget in bytes is divided by the backend's KV bytes per token.
  Engine inBytes(scripted({}), {4, 0, 12345});
  EXPECT_EQ(inBytes.kvBudgetTokens(), 12);
  Engine byDefault(scripted({}), {3, 0, 0});
  EXPECT_EQ(byDefault.kvBudgetTokens(), 3 * 256);

  // More than the whole budget can never run: refused at once.
  Engine small(scripted({}), {4, 12, 0});
  expectMentions(errorOf([&] {
                   small.submit(greedy({1, 2, 3}, 10));
                 }),
                 {"KV budget of 12"});
  expectMentions(errorOf([&] {
                   Engine(scripted({}), {0, 0, 0});
                 }),
                 {"maxBatch"});
  expectMentions(errorOf([&] {
                   Engine(scripted({}), {1, 0, 999});
                 }),
                 {"holds no token"});
}

TEST_F(EngineProtocol, CancelStopsAtTheNextStepWhereverTheRequestIs) {
  Engine engine(scripted(bytesOf(std::string(200, 'x'))), {1, 0, 0});
  // Cancelled by its own callback after three tokens.
  GenerationRequest self = greedy({1}, 100);
  int seen = 0;
  self.onToken = [&](Request &request, const TokenEvent &) {
    if (++seen == 3)
      request.cancel();
  };
  self.queueEvents = true;
  std::shared_ptr<Request> first = engine.submit(self);
  // Queued behind it (maxBatch 1), then cancelled before it ran.
  std::shared_ptr<Request> queued = engine.submit(greedy({2}, 100));
  queued->cancel();
  std::shared_ptr<Request> third = engine.submit(greedy({3}, 100));

  Outcome outcome = drain(*first);
  EXPECT_EQ(outcome.reason, FinishReason::Cancelled);
  EXPECT_EQ(outcome.tokens.size(), 3u);
  EXPECT_EQ(outcome.text, "xxx");
  outcome = drain(*queued);
  EXPECT_EQ(outcome.reason, FinishReason::Cancelled);
  EXPECT_TRUE(outcome.tokens.empty());
  EXPECT_EQ(outcome.pieces.size(), 1u);

  // Cancelled mid-stream by the poller.
  TokenEvent event;
  ASSERT_EQ(third->poll(event, -1ms), PollResult::Event);
  third->cancel();
  outcome = drain(*third, &event);
  EXPECT_EQ(outcome.reason, FinishReason::Cancelled);
  EXPECT_LT(third->tokens().size(), 100u);
  third->cancel(); // after the end: no effect
  EXPECT_EQ(third->finishReason(), FinishReason::Cancelled);
  EXPECT_EQ(third->poll(event, 0ms), PollResult::End);
  EXPECT_EQ(engine.stats().kvReservedTokens, 0);

  // Destroying the engine cancels what runs and what waits.
  std::shared_ptr<Request> running, waiting;
  {
    Engine doomed(scripted(bytesOf(std::string(200, 'y'))), {1, 0, 0});
    running = doomed.submit(greedy({1}, 150));
    waiting = doomed.submit(greedy({1}, 150));
    ASSERT_EQ(running->poll(event, -1ms), PollResult::Event);
  }
  EXPECT_EQ(drain(*running, &event).reason, FinishReason::Cancelled);
  EXPECT_EQ(drain(*waiting).reason, FinishReason::Cancelled);
  EXPECT_TRUE(waiting->tokens().empty());
}

TEST_F(EngineProtocol, AnEngineDestroyedInItsOwnCallbackWindsDown) {
  // The destructor cannot join the thread it runs on: the thread cancels
  // what is left and ends on its own, keeping what it uses alive.
  auto engine = std::make_unique<Engine>(scripted(bytesOf("abcdef")),
                                         EngineOptions{1, 0, 0});
  std::promise<void> bothSubmitted;
  std::shared_future<void> submitted = bothSubmitted.get_future().share();
  GenerationRequest request = greedy({1}, 6);
  request.onToken = [&engine, submitted](Request &, const TokenEvent &event) {
    submitted.wait(); // the test thread is done with `engine`
    if (!event.isLast())
      engine.reset();
  };
  request.queueEvents = true;
  std::shared_ptr<Request> running = engine->submit(request);
  std::shared_ptr<Request> queued = engine->submit(greedy({2}, 6));
  bothSubmitted.set_value();
  Outcome outcome = drain(*running);
  EXPECT_EQ(outcome.reason, FinishReason::Cancelled);
  EXPECT_EQ(outcome.text, "a");
  EXPECT_EQ(drain(*queued).reason, FinishReason::Cancelled);
  EXPECT_EQ(engine, nullptr);
}

TEST_F(EngineProtocol, FailuresEndTheRequestsTheyHitAndTheEngineGoesOn) {
  Engine engine(scripted(bytesOf("abcdefgh")), {4, 0, 0});
  // NaN logits fail one request's sampling; its batch mate carries on.
  std::shared_ptr<Request> poisoned =
      engine.submit(greedy({ScriptedBackend::kPoison, 1}, 5));
  std::shared_ptr<Request> healthy = engine.submit(greedy({1, 2}, 5));
  Outcome outcome = drain(*poisoned);
  EXPECT_EQ(outcome.reason, FinishReason::Error);
  expectMentions(outcome.error, {"NaN"});
  EXPECT_EQ(poisoned->error(), outcome.error);
  EXPECT_EQ(drain(*healthy).text, "abcde");

  // A backend failure ends every request of that step.
  backend->failAtStep = static_cast<int>(backend->steps().size()) + 1;
  std::shared_ptr<Request> a = engine.submit(greedy({1}, 5));
  outcome = drain(*a);
  EXPECT_EQ(outcome.reason, FinishReason::Error);
  expectMentions(outcome.error, {"backend step failed", "scripted failure"});
  EXPECT_EQ(outcome.text, "a");
  EXPECT_EQ(drain(*engine.submit(greedy({1}, 2))).text, "ab");

  // A callback that throws ends its request with the exception's message.
  GenerationRequest throwing = greedy({1}, 5);
  throwing.onToken = [](Request &, const TokenEvent &) {
    throw std::runtime_error("callback broke");
  };
  throwing.queueEvents = true;
  outcome = drain(*engine.submit(throwing));
  EXPECT_EQ(outcome.reason, FinishReason::Error);
  expectMentions(outcome.error, {"callback broke"});
  EXPECT_EQ(outcome.tokens.size(), 1u);
  EXPECT_EQ(engine.stats().kvReservedTokens, 0);
}

TEST_F(EngineProtocol, CallbacksMayUseTheEngineButNeverBlockIt) {
  Engine engine(scripted(bytesOf("pqrs")), {2, 0, 0});
  std::vector<std::string> errors;
  std::shared_ptr<Request> child;
  TokenEvent polled;
  GenerationRequest parent = greedy({1}, 3);
  parent.onToken = [&](Request &self, const TokenEvent &event) {
    EXPECT_TRUE(kiln::onEngineThread());
    EXPECT_EQ(self.poll(polled, 0ms), PollResult::Timeout); // not queued
    errors.push_back(errorOf([&] { self.poll(polled, 10ms); }));
    errors.push_back(errorOf([&] { self.wait(-1ms); }));
    if (!child)
      child = engine.submit(greedy({2}, 2));
    self.detachCallback(); // its own: no wait, no more calls
  };
  std::shared_ptr<Request> request = engine.submit(parent);
  ASSERT_TRUE(request->wait(-1ms));
  EXPECT_FALSE(kiln::onEngineThread());
  EXPECT_EQ(request->text(), "pqr");
  ASSERT_EQ(errors.size(), 2u); // detached after the first event
  for (const std::string &error : errors)
    expectMentions(error, {"engine thread", "timeout of 0"});
  ASSERT_TRUE(child);
  EXPECT_EQ(drain(*child).text, "pq");

  // A second concurrent poller is refused. The engine is held in a
  // callback so that `target` (queued behind, maxBatch 1) gets no event and
  // its first poller stays inside poll().
  Engine held(scripted(bytesOf("uvw")), {1, 0, 0});
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  GenerationRequest blocker = greedy({1}, 3);
  blocker.onToken = [released](Request &, const TokenEvent &) {
    released.wait();
  };
  std::shared_ptr<Request> blocking = held.submit(blocker);
  std::shared_ptr<Request> target = held.submit(greedy({2}, 2));
  std::thread poller([&] {
    TokenEvent event;
    for (;;) {
      try {
        if (target->poll(event, -1ms) == PollResult::End)
          return;
      } catch (const kiln::Error &) {
        // Lost the race to the main thread's poll: poll again.
      }
    }
  });
  std::string message;
  for (TokenEvent event; message.empty();) {
    try {
      ASSERT_EQ(target->poll(event, 0ms), PollResult::Timeout);
      std::this_thread::sleep_for(1ms);
    } catch (const kiln::Error &error) {
      message = error.what();
    }
  }
  expectMentions(message, {"another thread is polling"});
  release.set_value();
  poller.join();
  EXPECT_EQ(target->text(), "uv");
  EXPECT_TRUE(blocking->wait(-1ms));
}

TEST_F(EngineProtocol, PromptsAreCheckedAndRendered) {
  std::shared_ptr<kiln::Model> model = scripted(bytesOf("ok"));
  Engine engine(model);
  auto refused = [&](GenerationRequest request) {
    return errorOf([&] { engine.submit(std::move(request)); });
  };
  GenerationRequest twoPrompts = greedy({1}, 2);
  twoPrompts.prompt = "text";
  expectMentions(refused(twoPrompts), {"one prompt"});
  GenerationRequest chatTokens = greedy({1}, 2);
  chatTokens.chat = true;
  expectMentions(refused(chatTokens), {"chat"});
  expectMentions(refused(greedy({1, -4}, 2)), {"prompt token 1 = -4"});
  expectMentions(refused(greedy({tokenizer->vocabSize()}, 2)),
                 {"outside the vocabulary"});
  expectMentions(refused(greedy({1}, 0)), {"maxTokens must be at least 1"});
  expectMentions(refused(greedy(std::vector<int32_t>(200, 1), 100)),
                 {"exceed the context of 256"});
  GenerationRequest badSampling = greedy({1}, 2);
  badSampling.sampling.topP = 0;
  refused(badSampling);
  badSampling.sampling = {};
  badSampling.sampling.temperature = -1;
  refused(badSampling);
  GenerationRequest emptyStop = greedy({1}, 2);
  emptyStop.stopStrings = {""};
  expectMentions(refused(emptyStop), {"empty stop string"});
  GenerationRequest badUtf8;
  badUtf8.prompt = "\xC3";
  refused(badUtf8);
  EXPECT_EQ(engine.stats().waiting + engine.stats().finished, 0);

  // Text, chat text and chat messages go through the tokenizer as
  // documented.
  GenerationRequest text;
  text.prompt = "Hi there";
  text.maxTokens = 2;
  EXPECT_EQ(engine.submit(text)->promptTokens(),
            static_cast<int64_t>(tokenizer->encode("Hi there", true).size()));
  GenerationRequest chat = text;
  chat.chat = true;
  const std::string rendered =
      tokenizer->applyChatTemplate({{"user", "Hi there"}}, true);
  EXPECT_EQ(engine.submit(chat)->promptTokens(),
            static_cast<int64_t>(tokenizer->encode(rendered).size()));
  GenerationRequest messages;
  messages.messages = {{"system", "Be brief."}, {"user", "Hi there"}};
  messages.maxTokens = 2;
  messages.sampling.temperature = 0;
  std::shared_ptr<Request> last = engine.submit(messages);
  EXPECT_EQ(last->promptTokens(),
            static_cast<int64_t>(tokenizer
                                     ->encode(tokenizer->applyChatTemplate(
                                         messages.messages, true))
                                     .size()));
  EXPECT_EQ(drain(*last).text, "ok");
  EXPECT_LT(0u, last->id());
}

} // namespace
