/*===- main.c - generating text with Kiln from C ---------------------------===*
 *
 * Loads a model directory, opens a session and streams one greedy
 * continuation of a prompt to stdout through the token callback; progress
 * and a summary go to stderr.
 *
 *   embed-c MODEL_DIR [PROMPT] [MAX_TOKENS]
 *
 *===----------------------------------------------------------------------===*/

#include <kiln/kiln.h>

#include <stdio.h>
#include <stdlib.h>

/* Prints the share of weights loaded when it reaches another whole percent;
 * `user_data` holds the last one printed. */
static int show_progress(void *user_data, kiln_load_stage stage,
                         double fraction) {
  int *shown = (int *)user_data;
  int percent = (int)(fraction * 100.0);
  if (percent != *shown || stage == KILN_LOAD_DONE) {
    fprintf(stderr, "\rembed-c: loading weights %3d%%", percent);
    if (stage == KILN_LOAD_DONE)
      fputc('\n', stderr);
    *shown = percent;
  }
  return 0; /* nonzero would cancel the load */
}

/* Runs on the session's engine thread: print and return quickly. */
static void print_text(void *user_data, kiln_request *request,
                       const kiln_token_event *event) {
  (void)user_data;
  (void)request;
  fwrite(event->text, 1, event->text_length, stdout);
  fflush(stdout);
}

static int fail(const char *what, kiln_status status) {
  fprintf(stderr, "embed-c: %s: %s: %s\n", what, kiln_status_name(status),
          kiln_last_error());
  return 1;
}

int main(int argc, char **argv) {
  const char *prompt = argc > 2 ? argv[2] : "Hello";
  long max_tokens = argc > 3 ? strtol(argv[3], NULL, 10) : 32;
  kiln_load_options load_options;
  kiln_model *model = NULL;
  kiln_session *session = NULL;
  kiln_request *request = NULL;
  kiln_request_params params;
  kiln_request_result result;
  kiln_status status;
  int exit_code = 0;
  int shown_percent = -1;

  if (argc < 2) {
    fprintf(stderr, "usage: embed-c MODEL_DIR [PROMPT] [MAX_TOKENS]\n");
    return 2;
  }
  if (kiln_api_version() != KILN_API_VERSION) {
    fprintf(stderr, "embed-c: built for Kiln API %d, the library has %d\n",
            KILN_API_VERSION, kiln_api_version());
    return 1;
  }

  kiln_load_options_init(&load_options);
  load_options.progress = show_progress;
  load_options.progress_user_data = &shown_percent;
  status = kiln_model_load(argv[1], NULL, &load_options, &model);
  if (status != KILN_OK)
    return fail("loading the model", status);

  status = kiln_session_create(model, NULL, &session);
  if (status != KILN_OK) {
    exit_code = fail("creating a session", status);
    goto free_model;
  }

  kiln_request_params_init(&params);
  params.prompt = prompt;
  params.sampling.temperature = 0; /* greedy */
  params.max_tokens = max_tokens;
  params.on_token = print_text;
  status = kiln_session_submit(session, &params, &request);
  if (status != KILN_OK) {
    exit_code = fail("submitting the request", status);
    goto free_session;
  }

  kiln_request_wait(request, -1);
  fputc('\n', stdout);
  if (kiln_request_get_result(request, &result) == KILN_OK)
    fprintf(stderr,
            "embed-c: %lld prompt tokens, %zu generated, finished: %s\n",
            (long long)result.prompt_tokens, result.num_tokens,
            kiln_finish_reason_name(result.finish_reason));
  kiln_request_free(request);
free_session:
  kiln_session_free(session);
free_model:
  kiln_model_free(model);
  return exit_code;
}
