/*===- kiln/kiln.h - the Kiln C API -------------------------------------===*
 *
 * Text generation with DeepSeek-V3 models from C (C99) or any language with
 * a C FFI. A program loads a model, opens a session (a scheduler thread
 * doing continuous batching over the model), submits requests and receives
 * their tokens through a callback or by polling:
 *
 *   kiln_model *model;
 *   kiln_session *session;
 *   kiln_request *request;
 *   kiln_request_params params;
 *   kiln_token_event event;
 *   if (kiln_model_load("DIR", NULL, NULL, &model) != KILN_OK) {
 *     fprintf(stderr, "%s\n", kiln_last_error());
 *     return 1;
 *   }
 *   kiln_session_create(model, NULL, &session);
 *   kiln_request_params_init(&params);
 *   params.prompt = "Hello";
 *   kiln_session_submit(session, &params, &request);
 *   while (kiln_request_poll(request, -1, &event) == KILN_OK)
 *     fwrite(event.text, 1, event.text_length, stdout);
 *   kiln_request_free(request);
 *   kiln_session_free(session);
 *   kiln_model_free(model);
 *
 * Errors: every function that can fail returns a kiln_status; on failure
 * kiln_last_error() describes it (naming the file, field or parameter).
 * No C++ exception ever leaves this API.
 *
 * Thread safety:
 * - Every function may be called from any thread. A handle must not be used
 *   after, or concurrently with, the call that frees it.
 * - A kiln_model is immutable: share it between threads and sessions. It
 *   may be freed while sessions use it; they keep the weights alive.
 * - kiln_session_submit and kiln_session_stats may be called concurrently
 *   on one session; kiln_request_cancel, kiln_request_wait and
 *   kiln_request_result concurrently on one request; kiln_request_poll by
 *   one thread at a time per request (a second concurrent poller gets
 *   KILN_ERROR_INVALID_STATE).
 * - Token callbacks run on the session's engine thread, one at a time, in
 *   token order per request; the whole batch waits while one runs, so they
 *   should return quickly. They may call kiln_session_submit,
 *   kiln_session_stats, kiln_request_cancel, kiln_request_free (of any
 *   request, their own included), kiln_request_result and kiln_request_poll
 *   or kiln_request_wait with a zero timeout. Calls that would block on an
 *   engine thread are refused with KILN_ERROR_WRONG_THREAD instead of risking
 *   a deadlock: kiln_model_load, kiln_session_free, and kiln_request_poll or
 *   kiln_request_wait with a nonzero timeout.
 * - After kiln_request_free returns, that request's callback is not running
 *   and is never called again (except when freed from a callback of another
 *   session while its own callback runs: that call then completes on its
 *   own). After kiln_session_free returns, none of its callbacks runs again.
 *
 *===----------------------------------------------------------------------===*/

#ifndef KILN_KILN_H
#define KILN_KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*===--- Versions --------------------------------------------------------===*/

/* The version of this header; kiln_version() gives the library's. */
#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0
#define KILN_VERSION_STRING "0.1.0"
/* Incremented whenever a function, struct or enum of this API changes. A
 * program should check kiln_api_version() == KILN_API_VERSION at start-up. */
#define KILN_API_VERSION 1

/* "MAJOR.MINOR.PATCH" of the library linked. */
const char *kiln_version(void);
/* KILN_API_VERSION of the header the library was built with. */
int kiln_api_version(void);

/*===--- Status and errors -----------------------------------------------===*/

typedef enum kiln_status {
  KILN_OK = 0,
  /* kiln_request_poll / kiln_request_wait: nothing within the timeout. */
  KILN_TIMEOUT = 1,
  /* kiln_request_poll: the last event was taken already. */
  KILN_END = 2,
  /* A NULL handle or pointer, a bad parameter or request. */
  KILN_ERROR_INVALID_ARGUMENT = -1,
  /* The model directory or one of its files is missing or invalid. */
  KILN_ERROR_MODEL = -2,
  /* kiln_model_load was cancelled through its progress callback. */
  KILN_ERROR_CANCELLED = -3,
  KILN_ERROR_OUT_OF_MEMORY = -4,
  /* A blocking call on an engine thread (inside a callback). */
  KILN_ERROR_WRONG_THREAD = -5,
  /* Not now: the request has not finished, another thread polls it, the
   * session is shutting down. */
  KILN_ERROR_INVALID_STATE = -6,
  /* Not supported by this build or backend. */
  KILN_ERROR_UNSUPPORTED = -7,
  /* A bug in Kiln; the message says more. */
  KILN_ERROR_INTERNAL = -8
} kiln_status;

/* "ok", "timeout", "end", "invalid argument", ... */
const char *kiln_status_name(kiln_status status);

/* The message of the most recent call that failed on this thread ("" if
 * none did). Valid until the next failing call on this thread. */
const char *kiln_last_error(void);

/*===--- Handles ---------------------------------------------------------===*/

typedef struct kiln_model kiln_model;
typedef struct kiln_session kiln_session;
typedef struct kiln_request kiln_request;

/*===--- Models ----------------------------------------------------------===*/

typedef enum kiln_load_stage {
  KILN_LOAD_CHECKPOINT = 0, /* opening and checking the shards */
  KILN_LOAD_TOKENIZER = 1,
  KILN_LOAD_WEIGHTS = 2, /* the bulk of the time */
  KILN_LOAD_DONE = 3
} kiln_load_stage;

/* Called on the loading thread at the start of each stage and after each
 * weight tensor. `fraction` is the share of weights read, 0 before
 * KILN_LOAD_WEIGHTS, 1 at KILN_LOAD_DONE, never decreasing. Return nonzero to
 * cancel: kiln_model_load then frees everything and returns
 * KILN_ERROR_CANCELLED. */
typedef int (*kiln_progress_callback)(void *user_data, kiln_load_stage stage,
                                      double fraction);

typedef enum kiln_mla_form {
  KILN_MLA_ABSORBED = 0, /* caches the 576-value latent per token and layer */
  KILN_MLA_NAIVE = 1     /* materializes keys and values (HF's form) */
} kiln_mla_form;

typedef struct kiln_load_options {
  size_t struct_size; /* sizeof(kiln_load_options), set by _init */
  int num_threads;    /* CPU backend threads; 0: one per core */
  kiln_mla_form mla_form;
  int emulate_fp8_activations;     /* the GPU's 1x128 activation rounding */
  kiln_progress_callback progress; /* may be NULL */
  void *progress_user_data;
} kiln_load_options;

/* Defaults: all cores, absorbed MLA, no FP8 emulation, no callback. */
void kiln_load_options_init(kiln_load_options *options);

/* Loads a Hugging Face model directory (config.json, safetensors shards and
 * their index, tokenizer.json, tokenizer_config.json) on the calling thread.
 * With `artifact_path` (a kilnc artifact, .kiln) the model runs on the CUDA
 * backend, which executes it on GPU 0; NULL runs the CPU reference (a build
 * without CUDA refuses an artifact with KILN_ERROR_MODEL and a message that
 * says so). `options` may be NULL for the defaults. On success *out_model is a
 * new model; on failure it is NULL and the status says why
 * (KILN_ERROR_MODEL with a message naming the file, KILN_ERROR_CANCELLED,
 * ...). */
kiln_status kiln_model_load(const char *model_dir, const char *artifact_path,
                            const kiln_load_options *options,
                            kiln_model **out_model);

/* Drops the caller's reference; sessions keep the model alive. NULL is a
 * no-op. */
void kiln_model_free(kiln_model *model);

typedef struct kiln_model_info {
  int64_t vocab_size;   /* rows of the logits */
  int64_t context_size; /* max_position_embeddings */
  int64_t num_layers;
  int64_t kv_bytes_per_token; /* KV cache of one position, all layers */
  int32_t bos_token;
  int32_t eos_token;
} kiln_model_info;

kiln_status kiln_model_get_info(const kiln_model *model, kiln_model_info *info);

/*===--- Sessions --------------------------------------------------------===*/

typedef struct kiln_session_options {
  size_t struct_size; /* sizeof(kiln_session_options), set by _init */
  /* Requests decoded together at most; more wait in a FIFO queue. */
  int64_t max_batch;
  /* KV cache positions the active requests may reserve together; each
   * reserves its prompt length + max_tokens while it runs. 0: derived from
   * kv_budget_bytes, or max_batch * context_size when that is 0 too. */
  int64_t kv_budget_tokens;
  int64_t kv_budget_bytes;
} kiln_session_options;

/* Defaults: max_batch 8, budget max_batch * context_size. */
void kiln_session_options_init(kiln_session_options *options);

/* Starts a session (its engine thread) over `model`; `options` may be NULL. */
kiln_status kiln_session_create(kiln_model *model,
                                const kiln_session_options *options,
                                kiln_session **out_session);

/* Cancels every unfinished request (each gets its last event, with
 * KILN_FINISH_CANCELLED) and stops the engine thread. Requests stay valid
 * until freed. KILN_ERROR_WRONG_THREAD on an engine thread (the session is
 * then left as it was). NULL is a no-op. */
kiln_status kiln_session_free(kiln_session *session);

typedef struct kiln_session_stats {
  int64_t active;  /* requests being decoded */
  int64_t waiting; /* requests queued */
  int64_t kv_reserved_tokens;
  int64_t kv_budget_tokens;
  int64_t peak_active;
  int64_t peak_kv_reserved_tokens;
  int64_t steps;    /* batched forward passes run */
  int64_t finished; /* requests finished, for any reason */
} kiln_session_stats;

kiln_status kiln_session_get_stats(const kiln_session *session,
                                   kiln_session_stats *stats);

/*===--- Requests --------------------------------------------------------===*/

typedef enum kiln_finish_reason {
  KILN_FINISH_NONE = 0,        /* more events follow */
  KILN_FINISH_STOP_STRING = 1, /* reached a stop string (not in the text) */
  KILN_FINISH_EOS = 2,         /* the model ended the sequence */
  KILN_FINISH_LENGTH = 3,      /* max_tokens generated */
  KILN_FINISH_CANCELLED = 4,   /* cancelled, or the session was freed */
  KILN_FINISH_ERROR = 5        /* see the event's or the result's error */
} kiln_finish_reason;

/* "none", "stop", "eos", "length", "cancelled", "error". */
const char *kiln_finish_reason_name(kiln_finish_reason reason);

typedef struct kiln_sampling_params {
  float temperature; /* 0: greedy (argmax); default 1 */
  int64_t top_k;     /* keep the k most probable tokens; 0: all */
  float top_p;       /* nucleus, in (0, 1]; 1: all */
  uint64_t seed;     /* the request's own PRNG: same seed, same tokens */
} kiln_sampling_params;

typedef struct kiln_chat_message {
  const char *role; /* "system", "user", "assistant" or "tool" */
  const char *content;
} kiln_chat_message;

/* One step's output for one request. */
typedef struct kiln_token_event {
  /* The token generated, or -1 for a last event without one. */
  int32_t token;
  /* Newly completed UTF-8 text, NUL-terminated, possibly empty; text that
   * might still become a stop string or that ends inside a character is
   * held back. All events' texts together are the response. */
  const char *text;
  size_t text_length;
  /* KILN_FINISH_NONE while more events follow. */
  kiln_finish_reason finish_reason;
  /* For KILN_FINISH_ERROR, what failed; otherwise "". */
  const char *error;
} kiln_token_event;

/* The event's pointers are valid during the call only. */
typedef void (*kiln_token_callback)(void *user_data, kiln_request *request,
                                    const kiln_token_event *event);

typedef struct kiln_request_params {
  size_t struct_size; /* sizeof(kiln_request_params), set by _init */
  /* The prompt, exactly one of: UTF-8 text (a user message of a chat when
   * `chat` is nonzero, else plain text with BOS as the tokenizer config
   * says), chat messages (rendered with the assistant prompt appended), or
   * token ids. */
  const char *prompt;
  int chat;
  const kiln_chat_message *messages;
  size_t num_messages;
  const int32_t *prompt_tokens;
  size_t num_prompt_tokens;

  kiln_sampling_params sampling;
  /* At least 1; prompt + max_tokens must fit the context and the session's
   * KV budget. Default 64. */
  int64_t max_tokens;
  /* Generation stops when the text contains one of these (non-empty). */
  const char *const *stop_strings;
  size_t num_stop_strings;

  /* Called with every event, the last included, on the engine thread. May
   * be NULL: events are then queued for kiln_request_poll. */
  kiln_token_callback on_token;
  void *user_data;
  /* Nonzero: queue events for kiln_request_poll even with a callback. */
  int queue_events;
} kiln_request_params;

/* Defaults: no prompt, sampling at temperature 1 (top_k 0, top_p 1, seed 0),
 * max_tokens 64, no stop strings, no callback. */
void kiln_request_params_init(kiln_request_params *params);

/* Checks and tokenizes the request on the calling thread and queues it. All
 * strings and arrays are copied before it returns. Fails with
 * KILN_ERROR_INVALID_ARGUMENT for a bad request (no prompt or two, a token
 * outside the vocabulary, bad sampling parameters, an empty stop string,
 * too long for the context or the KV budget), KILN_ERROR_INVALID_STATE while
 * the session shuts down. */
kiln_status kiln_session_submit(kiln_session *session,
                                const kiln_request_params *params,
                                kiln_request **out_request);

/* Takes the next queued event into *event, waiting up to timeout_ms (0:
 * just look; negative: no limit). KILN_OK with an event, KILN_TIMEOUT, or
 * KILN_END when the last event was taken. The event's pointers are valid
 * until the next poll of this request or its free. */
kiln_status kiln_request_poll(kiln_request *request, int64_t timeout_ms,
                              kiln_token_event *event);

/* Asks the engine to stop the request at the next step; its last event then
 * has KILN_FINISH_CANCELLED (unless it finished before). Any time. */
kiln_status kiln_request_cancel(kiln_request *request);

/* Waits up to timeout_ms (negative: no limit) for the request to finish:
 * KILN_OK or KILN_TIMEOUT. */
kiln_status kiln_request_wait(kiln_request *request, int64_t timeout_ms);

typedef struct kiln_request_result {
  kiln_finish_reason finish_reason;
  int64_t prompt_tokens;
  const int32_t *tokens; /* the tokens generated */
  size_t num_tokens;
  const char *text; /* the response, NUL-terminated */
  size_t text_length;
  const char *error; /* for KILN_FINISH_ERROR; otherwise "" */
} kiln_request_result;

/* The outcome of a finished request (KILN_ERROR_INVALID_STATE before). The
 * pointers are valid until the request is freed. */
kiln_status kiln_request_get_result(kiln_request *request,
                                    kiln_request_result *result);

/* Cancels the request if it is still running, stops its callback and frees
 * the handle. NULL is a no-op. */
void kiln_request_free(kiln_request *request);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KILN_KILN_H */
