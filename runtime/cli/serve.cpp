//===- serve.cpp - `kiln serve`: an OpenAI-compatible HTTP server ---------===//
//
// POST /v1/completions and /v1/chat/completions (one JSON response, or
// server-sent events when "stream" is true), GET /v1/models, /health and
// /metrics (Prometheus text). Every HTTP worker thread submits to one shared
// Engine, so concurrent clients are batched together by its scheduler.
//
// Lifetimes: a streamed request is polled by the worker thread that writes
// it; when a write fails (the client went away) the request is cancelled so
// its KV reservation and batch slot are freed at the next engine step.
// SIGINT/SIGTERM are taken by a dedicated thread (sigwait), which cancels
// every request in flight and stops the listener, so that no worker is left
// waiting on generation while the server shuts down.
//
//===----------------------------------------------------------------------===//

#include "serve.h"

#include "kiln/engine.h"
#include "kiln/error.h"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <pthread.h>
#include <random>
#include <set>
#include <sys/socket.h>
#include <thread>
#include <utility>
#include <vector>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace kiln {
namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

//===----------------------------------------------------------------------===//
// Errors
//===----------------------------------------------------------------------===//

/// A request error reported to the client as an OpenAI error object.
struct HttpError {
  HttpError(int status, std::string message,
            std::string type = "invalid_request_error", std::string param = "",
            std::string code = "")
      : status(status), message(std::move(message)), type(std::move(type)),
        param(std::move(param)), code(std::move(code)) {}

  int status;
  std::string message;
  std::string type;
  std::string param;
  std::string code;
};

std::string dumpJson(const json &value) {
  // Generated text may hold bytes that are not valid UTF-8 (a model can emit
  // any byte token); replace them rather than fail the whole response.
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json errorJson(const HttpError &error) {
  auto nullable = [](const std::string &text) {
    return text.empty() ? json(nullptr) : json(text);
  };
  return {{"error",
           {{"message", error.message},
            {"type", error.type},
            {"param", nullable(error.param)},
            {"code", nullable(error.code)}}}};
}

void sendError(httplib::Response &res, const HttpError &error) {
  res.status = error.status;
  res.set_content(dumpJson(errorJson(error)), "application/json");
}

//===----------------------------------------------------------------------===//
// Metrics
//===----------------------------------------------------------------------===//

/// A Prometheus histogram with fixed buckets (seconds).
class Histogram {
public:
  Histogram()
      : bounds{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
               1,     2.5,  5,     10,   30,  60,   120},
        counts(bounds.size() + 1, 0) {}

  void observe(double value) {
    size_t bucket =
        std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
    ++counts[bucket];
    sum += value;
    ++count;
  }

  void render(std::string &out, const std::string &name,
              const std::string &help) const {
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds.size(); ++i) {
      cumulative += counts[i];
      char le[32];
      std::snprintf(le, sizeof(le), "%g", bounds[i]);
      out += name + "_bucket{le=\"" + le + "\"} " + std::to_string(cumulative) +
             "\n";
    }
    out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count) + "\n";
    char total[64];
    std::snprintf(total, sizeof(total), "%.6f", sum);
    out += name + "_sum " + total + "\n";
    out += name + "_count " + std::to_string(count) + "\n";
  }

private:
  std::vector<double> bounds;
  std::vector<uint64_t> counts;
  double sum = 0;
  uint64_t count = 0;
};

class Metrics {
public:
  void httpRequest(const std::string &route, int status) {
    std::lock_guard<std::mutex> lock(mutex);
    ++httpRequests[{route, status}];
  }

  void firstToken(double seconds) {
    std::lock_guard<std::mutex> lock(mutex);
    timeToFirstToken.observe(seconds);
  }

  void finished(const std::string &reason, int64_t prompt, int64_t generated,
                double seconds) {
    std::lock_guard<std::mutex> lock(mutex);
    ++finishReasons[reason];
    promptTokens += prompt;
    generatedTokens += generated;
    requestLatency.observe(seconds);
  }

  std::string render(const EngineStats &stats, int64_t inFlight) const {
    std::lock_guard<std::mutex> lock(mutex);
    std::string out;
    out += "# HELP kiln_http_requests_total HTTP requests answered, by route "
           "and status code.\n# TYPE kiln_http_requests_total counter\n";
    for (const auto &[key, count] : httpRequests)
      out += "kiln_http_requests_total{route=\"" + key.first + "\",code=\"" +
             std::to_string(key.second) + "\"} " + std::to_string(count) + "\n";
    out += "# HELP kiln_generation_requests_total Generation requests "
           "finished, by finish reason.\n# TYPE "
           "kiln_generation_requests_total counter\n";
    for (const auto &[reason, count] : finishReasons)
      out += "kiln_generation_requests_total{finish_reason=\"" + reason +
             "\"} " + std::to_string(count) + "\n";
    auto scalar = [&](const char *name, const char *type, const char *help,
                      int64_t value) {
      out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name +
             " " + type + "\n" + name + " " + std::to_string(value) + "\n";
    };
    scalar("kiln_prompt_tokens_total", "counter",
           "Prompt tokens of finished generation requests.", promptTokens);
    scalar("kiln_generated_tokens_total", "counter",
           "Tokens generated by finished generation requests.",
           generatedTokens);
    scalar("kiln_requests_in_flight", "gauge",
           "Generation requests submitted and not yet answered.", inFlight);
    scalar("kiln_active_sequences", "gauge",
           "Sequences in the engine's running batch.", stats.active);
    scalar("kiln_waiting_sequences", "gauge",
           "Sequences queued for a batch slot or KV budget.", stats.waiting);
    scalar("kiln_kv_reserved_tokens", "gauge",
           "KV cache positions reserved by active sequences.",
           stats.kvReservedTokens);
    scalar("kiln_kv_budget_tokens", "gauge",
           "KV cache positions the engine may reserve.", stats.kvBudgetTokens);
    scalar("kiln_peak_active_sequences", "gauge",
           "The most sequences batched at once.", stats.peakActive);
    scalar("kiln_engine_steps_total", "counter", "Batched backend steps run.",
           stats.steps);
    timeToFirstToken.render(out, "kiln_time_to_first_token_seconds",
                            "Time from a request's arrival to its first "
                            "generated token.");
    requestLatency.render(out, "kiln_request_duration_seconds",
                          "Time from a request's arrival to its last token.");
    return out;
  }

private:
  mutable std::mutex mutex;
  std::map<std::pair<std::string, int>, uint64_t> httpRequests;
  std::map<std::string, uint64_t> finishReasons;
  int64_t promptTokens = 0;
  int64_t generatedTokens = 0;
  Histogram timeToFirstToken;
  Histogram requestLatency;
};

//===----------------------------------------------------------------------===//
// Request parsing
//===----------------------------------------------------------------------===//

enum class Endpoint { Completions, Chat };

struct ParsedRequest {
  GenerationRequest generation;
  bool stream = false;
  bool includeUsage = false;
};

HttpError badField(const std::string &param, const std::string &message) {
  return {400, message, "invalid_request_error", param, ""};
}

double numberField(const json &body, const char *name, double fallback,
                   double low, double high) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null())
    return fallback;
  if (!it->is_number())
    throw badField(name, std::string("'") + name + "' must be a number");
  double value = it->get<double>();
  if (!(value >= low && value <= high))
    throw badField(name, std::string("'") + name + "' must be in [" +
                             std::to_string(low) + ", " + std::to_string(high) +
                             "], got " + std::to_string(value));
  return value;
}

int64_t integerField(const json &body, const char *name, int64_t fallback,
                     int64_t low) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null())
    return fallback;
  if (!it->is_number_integer())
    throw badField(name, std::string("'") + name + "' must be an integer");
  // Unsigned JSON integers above INT64_MAX would wrap in get<int64_t>.
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw badField(name, std::string("'") + name + "' is too large");
  int64_t value = it->get<int64_t>();
  if (value < low)
    throw badField(name, std::string("'") + name + "' must be at least " +
                             std::to_string(low) + ", got " +
                             std::to_string(value));
  return value;
}

std::vector<int32_t> tokenArray(const json &array) {
  std::vector<int32_t> tokens;
  for (const json &item : array) {
    if (!item.is_number_integer() || item.get<int64_t>() < 0 ||
        item.get<int64_t>() > std::numeric_limits<int32_t>::max())
      throw badField("prompt", "'prompt' token ids must be non-negative "
                               "integers");
    tokens.push_back(static_cast<int32_t>(item.get<int64_t>()));
  }
  return tokens;
}

std::string messageContent(const json &content, size_t index) {
  std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_null())
    return "";
  if (content.is_string())
    return content.get<std::string>();
  // The array form of OpenAI's content: text parts only (no images here).
  if (content.is_array()) {
    std::string text;
    for (const json &part : content) {
      if (!part.is_object() || part.value("type", "") != "text" ||
          !part.contains("text") || !part["text"].is_string())
        throw badField(param, "'" + param +
                                  "' parts must be {\"type\": \"text\", "
                                  "\"text\": ...}");
      text += part["text"].get<std::string>();
    }
    return text;
  }
  throw badField(param, "'" + param + "' must be a string or text parts");
}

ParsedRequest parseRequest(Endpoint endpoint, const std::string &body,
                           const std::string &modelId, std::mt19937_64 &seeds,
                           std::mutex &seedsMutex) {
  json request = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded())
    throw HttpError{400, "the request body is not valid JSON",
                    "invalid_request_error", "", "invalid_json"};
  if (!request.is_object())
    throw HttpError{400, "the request body must be a JSON object",
                    "invalid_request_error", "", ""};

  if (request.contains("model") && !request["model"].is_null()) {
    if (!request["model"].is_string())
      throw badField("model", "'model' must be a string");
    if (request["model"].get<std::string>() != modelId)
      throw HttpError{404,
                      "the model '" + request["model"].get<std::string>() +
                          "' does not exist; this server serves '" + modelId +
                          "'",
                      "invalid_request_error", "model", "model_not_found"};
  }

  ParsedRequest parsed;
  GenerationRequest &generation = parsed.generation;
  if (endpoint == Endpoint::Completions) {
    auto it = request.find("prompt");
    if (it == request.end())
      throw badField("prompt", "'prompt' is required");
    const json *prompt = &*it;
    // A batch of one is accepted; larger batches would need n responses.
    if (prompt->is_array() && prompt->size() == 1 &&
        ((*prompt)[0].is_string() || (*prompt)[0].is_array()))
      prompt = &(*prompt)[0];
    if (prompt->is_string())
      generation.prompt = prompt->get<std::string>();
    else if (prompt->is_array() &&
             std::all_of(prompt->begin(), prompt->end(),
                         [](const json &item) { return item.is_number(); }))
      generation.promptTokens = tokenArray(*prompt);
    else
      throw badField("prompt", "'prompt' must be a string or an array of "
                               "token ids (one prompt per request)");
    if (generation.promptTokens.empty() && prompt->is_array())
      throw badField("prompt", "'prompt' is empty");
    for (const char *unsupported : {"echo", "logprobs"})
      if (request.contains(unsupported) && !request[unsupported].is_null() &&
          request[unsupported] != false && request[unsupported] != 0)
        throw badField(unsupported,
                       std::string("'") + unsupported + "' is not supported");
    if (integerField(request, "best_of", 1, 1) != 1)
      throw badField("best_of", "'best_of' must be 1");
  } else {
    auto it = request.find("messages");
    if (it == request.end() || !it->is_array() || it->empty())
      throw badField("messages", "'messages' must be a non-empty array");
    for (size_t i = 0; i < it->size(); ++i) {
      const json &message = (*it)[i];
      std::string param = "messages[" + std::to_string(i) + "]";
      if (!message.is_object() || !message.contains("role") ||
          !message["role"].is_string())
        throw badField(param, "'" + param +
                                  "' must be an object with a "
                                  "string 'role'");
      std::string role = message["role"].get<std::string>();
      // OpenAI's newer name for the system role.
      if (role == "developer")
        role = "system";
      if (role != "system" && role != "user" && role != "assistant" &&
          role != "tool")
        throw badField(param + ".role", "'" + param +
                                            ".role' must be "
                                            "system, user, "
                                            "assistant or tool");
      generation.messages.push_back(
          {role, messageContent(message.contains("content") ? message["content"]
                                                            : json(nullptr),
                                i)});
    }
    if (request.contains("logprobs") && request["logprobs"] == true)
      throw badField("logprobs", "'logprobs' is not supported");
  }

  if (integerField(request, "n", 1, 1) != 1)
    throw badField("n", "'n' must be 1");

  // OpenAI's defaults: 16 tokens for completions. Chat has no limit there,
  // but every request reserves prompt + max_tokens KV positions, so an
  // unbounded default would serialize the batch; 256 is the compromise.
  int64_t maxTokens = integerField(
      request, "max_tokens", endpoint == Endpoint::Completions ? 16 : 256, 1);
  if (endpoint == Endpoint::Chat)
    maxTokens = integerField(request, "max_completion_tokens", maxTokens, 1);
  generation.maxTokens = maxTokens;

  SamplingParams &sampling = generation.sampling;
  sampling.temperature =
      static_cast<float>(numberField(request, "temperature", 1.0, 0, 100));
  sampling.topP = static_cast<float>(numberField(request, "top_p", 1.0, 0, 1));
  if (sampling.topP <= 0)
    throw badField("top_p", "'top_p' must be in (0, 1]");
  // -1 disables top-k in vLLM's extension; 0 does here.
  int64_t topK = integerField(request, "top_k", 0, -1);
  sampling.topK = topK < 0 ? 0 : topK;
  if (request.contains("seed") && !request["seed"].is_null()) {
    if (!request["seed"].is_number_integer())
      throw badField("seed", "'seed' must be an integer");
    sampling.seed = request["seed"].get<uint64_t>();
  } else {
    // Without a seed, sampled responses differ between requests, as with
    // OpenAI; the engine's own default seed would repeat them.
    std::lock_guard<std::mutex> lock(seedsMutex);
    sampling.seed = seeds();
  }

  if (request.contains("stop") && !request["stop"].is_null()) {
    const json &stop = request["stop"];
    std::vector<json> items;
    if (stop.is_string())
      items.push_back(stop);
    else if (stop.is_array())
      items.assign(stop.begin(), stop.end());
    else
      throw badField("stop", "'stop' must be a string or an array of strings");
    for (const json &item : items) {
      if (!item.is_string() || item.get<std::string>().empty())
        throw badField("stop", "'stop' entries must be non-empty strings");
      generation.stopStrings.push_back(item.get<std::string>());
    }
  }

  if (request.contains("stream") && !request["stream"].is_null()) {
    if (!request["stream"].is_boolean())
      throw badField("stream", "'stream' must be a boolean");
    parsed.stream = request["stream"].get<bool>();
  }
  if (request.contains("stream_options") &&
      request["stream_options"].is_object())
    parsed.includeUsage =
        request["stream_options"].value("include_usage", false);
  return parsed;
}

/// OpenAI has two finish reasons for a completed request.
const char *openAiFinishReason(FinishReason reason) {
  return reason == FinishReason::Length ? "length" : "stop";
}

//===----------------------------------------------------------------------===//
// The server
//===----------------------------------------------------------------------===//

class Server {
public:
  Server(std::shared_ptr<Engine> engine, std::string modelId,
         const ServeOptions &options)
      : engine(std::move(engine)), modelId(std::move(modelId)),
        seeds(std::random_device{}()) {
    // Streams hold a worker for their whole duration and idle keep-alive
    // connections hold one too, so the pool is sized well past the batch:
    // requests beyond it still queue, they are only admitted later.
    size_t workers =
        static_cast<size_t>(std::max<int64_t>(64, 4 * options.maxBatch + 16));
    http.new_task_queue = [workers] {
      return new httplib::ThreadPool(workers);
    };
    http.set_payload_max_length(options.maxBodyBytes);
    // cpp-httplib's default also sets SO_REUSEPORT, with which a second
    // server on the same port binds silently and steals half the clients.
    http.set_socket_options([](socket_t socket) {
      int on = 1;
      setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    });
    // cpp-httplib 0.11 only notices stop() in an idle keep-alive connection
    // when its timeout runs out, so this bounds how long shutdown can take.
    http.set_keep_alive_timeout(2);
    routes();
  }

  void listen(const std::string &host, int port) {
    // Port 0 takes any free port; the log line then says which one.
    int bound = port;
    if (port == 0)
      bound = http.bind_to_any_port(host);
    if (bound <= 0 || (port != 0 && !http.bind_to_port(host, port)))
      throw Error("serve: cannot listen on " + host + ":" +
                  std::to_string(port));
    std::fprintf(stderr, "kiln: serving %s on http://%s:%d\n", modelId.c_str(),
                 host.c_str(), bound);
    http.listen_after_bind();
  }

  /// Cancels every request in flight and stops the listener; any thread.
  void stop() {
    std::unique_lock<std::mutex> lock(inFlightMutex);
    stopping = true;
    for (const auto &request : inFlight)
      request->cancel();
    // cpp-httplib ends open streams abruptly once stopped; a short grace
    // lets each cancelled stream send its error event and [DONE] first.
    inFlightEmpty.wait_for(lock, std::chrono::seconds(2),
                           [&] { return inFlight.empty(); });
    lock.unlock();
    http.stop();
  }

private:
  struct Generation {
    std::shared_ptr<Request> request;
    Endpoint endpoint;
    std::string id;
    int64_t created;
    Clock::time_point start;
    bool includeUsage = false;
    bool firstToken = false;
    bool accounted = false;
    Clock::time_point lastWrite;
  };

  void routes() {
    http.set_pre_routing_handler(
        [this](const httplib::Request &req, httplib::Response &res) {
          return preRoute(req, res);
        });
    http.Get("/health", [](const httplib::Request &, httplib::Response &res) {
      res.set_content("{\"status\":\"ok\"}", "application/json");
    });
    http.Get(
        "/v1/models", [this](const httplib::Request &, httplib::Response &res) {
          json model = {{"id", modelId},
                        {"object", "model"},
                        {"created", startTime},
                        {"owned_by", "kiln"}};
          res.set_content(dumpJson({{"object", "list"}, {"data", {model}}}),
                          "application/json");
        });
    http.Get("/metrics",
             [this](const httplib::Request &, httplib::Response &res) {
               res.set_content(metrics.render(engine->stats(), inFlightCount()),
                               "text/plain; version=0.0.4");
             });
    http.Post("/v1/completions",
              [this](const httplib::Request &req, httplib::Response &res) {
                generate(Endpoint::Completions, req, res);
              });
    http.Post("/v1/chat/completions",
              [this](const httplib::Request &req, httplib::Response &res) {
                generate(Endpoint::Chat, req, res);
              });
    // Every status >= 400 passes here: give the ones cpp-httplib makes
    // itself (413 for a large body, 400 for a bad request line) a JSON body.
    http.set_error_handler(httplib::Server::HandlerWithResponse(
        [](const httplib::Request &, httplib::Response &res) {
          if (!res.body.empty())
            return httplib::Server::HandlerResponse::Unhandled;
          HttpError error{res.status,
                          "HTTP error " + std::to_string(res.status)};
          if (res.status == 413) {
            error.message = "the request body is too large";
            error.code = "request_too_large";
          } else if (res.status >= 500) {
            error.type = "server_error";
          }
          sendError(res, error);
          return httplib::Server::HandlerResponse::Handled;
        }));
    http.set_exception_handler([](const httplib::Request &,
                                  httplib::Response &res,
                                  std::exception_ptr exception) {
      HttpError error{500, "internal error", "server_error"};
      try {
        std::rethrow_exception(exception);
      } catch (const std::exception &e) {
        error.message = e.what();
      } catch (...) {
      }
      sendError(res, error);
    });
    http.set_logger(
        [this](const httplib::Request &req, const httplib::Response &res) {
          metrics.httpRequest(knownRoute(req.path) ? req.path : "other",
                              res.status);
        });
  }

  static bool knownRoute(const std::string &path) {
    return allowedMethod(path) != nullptr;
  }

  static const char *allowedMethod(const std::string &path) {
    if (path == "/v1/completions" || path == "/v1/chat/completions")
      return "POST";
    if (path == "/health" || path == "/v1/models" || path == "/metrics")
      return "GET";
    return nullptr;
  }

  /// 404 and 405 before cpp-httplib reads a body nobody will use.
  httplib::Server::HandlerResponse preRoute(const httplib::Request &req,
                                            httplib::Response &res) {
    const char *method = allowedMethod(req.path);
    if (!method) {
      sendError(res, {404, "no route " + req.method + " " + req.path,
                      "invalid_request_error", "", "not_found"});
      return httplib::Server::HandlerResponse::Handled;
    }
    bool head = req.method == "HEAD" && std::string(method) == "GET";
    if (req.method != method && !head) {
      res.set_header("Allow", method);
      sendError(res,
                {405, req.path + " accepts " + method + ", not " + req.method,
                 "invalid_request_error", "", "method_not_allowed"});
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  }

  int64_t inFlightCount() {
    std::lock_guard<std::mutex> lock(inFlightMutex);
    return static_cast<int64_t>(inFlight.size());
  }

  /// Registers a submitted request so that stop() can cancel it; a request
  /// submitted while stopping is cancelled at once.
  void track(const std::shared_ptr<Request> &request) {
    std::lock_guard<std::mutex> lock(inFlightMutex);
    if (stopping)
      request->cancel();
    else
      inFlight.insert(request);
  }

  /// Records a finished (or abandoned) request once.
  void account(Generation &generation, const std::string &reason) {
    if (generation.accounted)
      return;
    generation.accounted = true;
    {
      std::lock_guard<std::mutex> lock(inFlightMutex);
      inFlight.erase(generation.request);
      if (inFlight.empty())
        inFlightEmpty.notify_all();
    }
    metrics.finished(reason, generation.request->promptTokens(),
                     static_cast<int64_t>(generation.request->tokens().size()),
                     secondsSince(generation.start));
  }

  void noteToken(Generation &generation, const TokenEvent &event) {
    if (event.token >= 0 && !generation.firstToken) {
      generation.firstToken = true;
      metrics.firstToken(secondsSince(generation.start));
    }
  }

  json usage(const Request &request) const {
    int64_t prompt = request.promptTokens();
    int64_t completion = static_cast<int64_t>(request.tokens().size());
    return {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion}};
  }

  void generate(Endpoint endpoint, const httplib::Request &req,
                httplib::Response &res) {
    auto generation = std::make_shared<Generation>();
    generation->start = Clock::now();
    generation->lastWrite = generation->start;
    generation->endpoint = endpoint;
    generation->created = static_cast<int64_t>(std::time(nullptr));
    ParsedRequest parsed;
    try {
      parsed = parseRequest(endpoint, req.body, modelId, seeds, seedsMutex);
      generation->request = engine->submit(std::move(parsed.generation));
    } catch (const HttpError &error) {
      return sendError(res, error);
    } catch (const EngineStopping &error) {
      return sendError(res, {503, error.what(), "server_error"});
    } catch (const Error &error) {
      // submit's checks: too long, a token outside the vocabulary, ...
      return sendError(res, {400, error.what()});
    } catch (const json::exception &error) {
      // A field of an unexpected JSON type that the checks above missed.
      return sendError(res, {400, error.what()});
    }
    track(generation->request);
    generation->id =
        std::string(endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-") +
        std::to_string(generation->request->id());
    generation->includeUsage = parsed.includeUsage;
    if (parsed.stream)
      stream(generation, res);
    else
      respond(*generation, res);
  }

  void respond(Generation &generation, httplib::Response &res) {
    Request &request = *generation.request;
    TokenEvent event;
    // Events are only drained here (the text comes from request.text()),
    // to time the first token and to keep the queue from growing.
    while (request.poll(event, std::chrono::milliseconds(-1)) ==
           PollResult::Event)
      noteToken(generation, event);
    FinishReason reason = request.finishReason();
    account(generation, finishReasonName(reason));
    if (reason == FinishReason::Cancelled)
      return sendError(res,
                       {503, "the server is shutting down", "server_error"});
    if (reason == FinishReason::Error)
      return sendError(
          res, {500, "generation failed: " + request.error(), "server_error"});
    json choice = {{"index", 0},
                   {"logprobs", nullptr},
                   {"finish_reason", openAiFinishReason(reason)}};
    bool chat = generation.endpoint == Endpoint::Chat;
    if (chat)
      choice["message"] = {{"role", "assistant"}, {"content", request.text()}};
    else
      choice["text"] = request.text();
    json body = {{"id", generation.id},
                 {"object", chat ? "chat.completion" : "text_completion"},
                 {"created", generation.created},
                 {"model", modelId},
                 {"choices", json::array({choice})},
                 {"usage", usage(request)}};
    res.set_content(dumpJson(body), "application/json");
  }

  /// One SSE event with one choice in OpenAI's chunk format.
  std::string chunk(const Generation &generation, const std::string &text,
                    const char *finishReason, bool role) const {
    json choice = {{"index", 0}, {"logprobs", nullptr}};
    choice["finish_reason"] = finishReason ? json(finishReason) : json(nullptr);
    bool chat = generation.endpoint == Endpoint::Chat;
    if (chat) {
      json delta = json::object();
      if (role)
        delta["role"] = "assistant";
      if (role || !text.empty())
        delta["content"] = text;
      choice["delta"] = delta;
    } else {
      choice["text"] = text;
    }
    json body = {{"id", generation.id},
                 {"object", chat ? "chat.completion.chunk" : "text_completion"},
                 {"created", generation.created},
                 {"model", modelId},
                 {"choices", json::array({choice})}};
    return "data: " + dumpJson(body) + "\n\n";
  }

  void stream(const std::shared_ptr<Generation> &generation,
              httplib::Response &res) {
    res.set_header("Cache-Control", "no-cache");
    auto started = std::make_shared<bool>(false);
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, generation, started](size_t, httplib::DataSink &sink) {
          std::string out;
          if (!*started && generation->endpoint == Endpoint::Chat)
            out += chunk(*generation, "", nullptr, /*role=*/true);
          *started = true;
          Request &request = *generation->request;
          // Wait briefly for an event, then take all that are queued, so
          // one write carries what a batch step produced. Returning without
          // data just gets this provider called again.
          TokenEvent event;
          std::chrono::milliseconds timeout(100);
          bool last = false;
          while (!last && request.poll(event, timeout) == PollResult::Event) {
            timeout = std::chrono::milliseconds(0);
            noteToken(*generation, event);
            last = event.isLast();
            if (last) {
              if (event.finishReason == FinishReason::Cancelled ||
                  event.finishReason == FinishReason::Error) {
                // The text so far goes out before the error object.
                if (!event.text.empty())
                  out += chunk(*generation, event.text, nullptr, false);
                HttpError error{500, "generation failed: " + event.error,
                                "server_error"};
                if (event.finishReason == FinishReason::Cancelled)
                  error = {503, "the server is shutting down", "server_error"};
                out += "data: " + dumpJson(errorJson(error)) + "\n\n";
              } else {
                out += chunk(*generation, event.text,
                             openAiFinishReason(event.finishReason), false);
                if (generation->includeUsage) {
                  json body = {{"id", generation->id},
                               {"object", generation->endpoint == Endpoint::Chat
                                              ? "chat.completion.chunk"
                                              : "text_completion"},
                               {"created", generation->created},
                               {"model", modelId},
                               {"choices", json::array()},
                               {"usage", usage(request)}};
                  out += "data: " + dumpJson(body) + "\n\n";
                }
              }
              out += "data: [DONE]\n\n";
            } else if (!event.text.empty()) {
              out += chunk(*generation, event.text, nullptr, false);
            }
          }
          // A request waiting for a batch slot writes nothing, and a closed
          // connection only shows when writes fail: an SSE comment (which
          // clients ignore) every second finds clients that left the queue.
          if (out.empty() && secondsSince(generation->lastWrite) >= 1.0)
            out = ": waiting\n\n";
          if (!out.empty())
            generation->lastWrite = Clock::now();
          if (!out.empty() && !sink.write(out.data(), out.size())) {
            // The client is gone: free the batch slot and KV reservation.
            request.cancel();
            account(*generation, "disconnected");
            return false;
          }
          if (last) {
            account(*generation, finishReasonName(request.finishReason()));
            sink.done();
          }
          return true;
        },
        // Runs when the response is destroyed, also when the stream never
        // finished (the server stopped, the connection failed before the
        // first write): nothing may keep generating for nobody.
        [this, generation](bool) {
          generation->request->cancel();
          account(*generation, "disconnected");
        });
  }

  std::shared_ptr<Engine> engine;
  std::string modelId;
  int64_t startTime = static_cast<int64_t>(std::time(nullptr));
  httplib::Server http;
  Metrics metrics;
  std::mt19937_64 seeds;
  std::mutex seedsMutex;
  std::mutex inFlightMutex;
  std::condition_variable inFlightEmpty;
  bool stopping = false;
  std::set<std::shared_ptr<Request>> inFlight;
};

std::string modelIdOf(const std::string &dir) {
  std::error_code error;
  fs::path path = fs::weakly_canonical(dir, error);
  if (error)
    path = fs::path(dir).lexically_normal();
  if (path.filename().empty())
    path = path.parent_path();
  std::string id = path.filename().string();
  return id.empty() ? "kiln" : id;
}

} // namespace

int runServe(const ServeOptions &options) {
  if (options.port < 0 || options.port > 65535)
    throw Error("--port must be in [0, 65535]");
  if (options.maxBatch < 1)
    throw Error("--max-batch must be at least 1");
  if (options.kvBudgetTokens < 0)
    throw Error("--kv-budget-tokens must not be negative");
  if (options.maxBodyBytes < 1)
    throw Error("--max-body-bytes must be at least 1");

  // Block the stop signals before any thread starts (engine, loader, HTTP
  // workers inherit the mask) so that only the sigwait thread below sees
  // them and can stop the server outside of a signal handler. A client
  // that vanishes must not kill the process with SIGPIPE either.
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGINT);
  sigaddset(&stopSignals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  ModelLoadOptions loadOptions;
  loadOptions.cpu = options.cpu;
  loadOptions.cpu.loadMtp = false;
  loadOptions.artifact = options.artifact;
  loadOptions.device = options.device;
  auto loadStart = Clock::now();
  std::shared_ptr<Model> model = Model::load(options.modelDir, loadOptions);
  std::fprintf(stderr, "kiln: loaded %s in %.2f s\n", options.modelDir.c_str(),
               secondsSince(loadStart));
  EngineOptions engineOptions;
  engineOptions.maxBatch = options.maxBatch;
  engineOptions.kvBudgetTokens = options.kvBudgetTokens;
  auto engine = std::make_shared<Engine>(model, engineOptions);

  Server server(engine, modelIdOf(options.modelDir), options);
  // A signal can arrive before the listener runs (stop() is then a no-op in
  // cpp-httplib), so the signal thread keeps stopping until listen returns.
  std::atomic<bool> serving{true};
  std::atomic<bool> signalled{false};
  std::thread signals([&] {
    int signal = 0;
    sigwait(&stopSignals, &signal);
    signalled = true;
    if (serving)
      std::fprintf(stderr, "kiln: %s, stopping\n",
                   signal == SIGINT ? "SIGINT" : "SIGTERM");
    while (serving) {
      server.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  auto finishSignals = [&] {
    serving = false;
    // Without a signal the thread still waits in sigwait: wake it.
    if (!signalled)
      pthread_kill(signals.native_handle(), SIGTERM);
    signals.join();
  };
  try {
    server.listen(options.host, options.port);
  } catch (...) {
    finishSignals();
    throw;
  }
  finishSignals();
  std::fprintf(stderr, "kiln: server stopped\n");
  return 0;
}

} // namespace kiln
