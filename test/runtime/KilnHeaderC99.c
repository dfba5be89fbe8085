/*===- KilnHeaderC99.c - kiln.h is plain C99 -----------------------------===*
 *
 * Built with -std=c99 -pedantic-errors (see CMakeLists.txt): any C++ or
 * post-C99 construct in kiln.h fails the build. CApiTest calls the function.
 *
 *===----------------------------------------------------------------------===*/

#include "kiln/kiln.h"

int kilnHeaderCompilesAsC99(void);

int kilnHeaderCompilesAsC99(void) {
  kiln_request_params params;
  kiln_load_options load;
  kiln_session_options session;
  kiln_token_event event;
  kiln_request_params_init(&params);
  kiln_load_options_init(&load);
  kiln_session_options_init(&session);
  event.token = -1;
  event.finish_reason = KILN_FINISH_NONE;
  (void)event;
  return params.struct_size == sizeof(params) &&
                 load.struct_size == sizeof(load) &&
                 session.struct_size == sizeof(session)
             ? KILN_API_VERSION
             : -1;
}
