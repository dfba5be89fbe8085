//===- serve.h - `kiln serve`: an OpenAI-compatible HTTP server -*- C++ -*-===//
//
// The HTTP front end over kiln::Engine (cpp-httplib from Debian). Kept out of
// kiln_runtime so that embedders do not inherit an HTTP dependency.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CLI_SERVE_H
#define KILN_CLI_SERVE_H

#include "kiln/cpu_model.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln {

struct ServeOptions {
  std::string modelDir;
  std::string host = "127.0.0.1";
  int port = 8080;
  int64_t maxBatch = 8;
  /// 0: the engine's default budget.
  int64_t kvBudgetTokens = 0;
  size_t maxBodyBytes = 1 << 20;
  CpuModelOptions cpu;
  /// A kilnc artifact: run on the CUDA backend (empty: the CPU reference).
  std::string artifact;
  int device = 0;
};

/// Loads the model, serves until SIGINT or SIGTERM, and returns the exit
/// code. Throws kiln::Error for a bad model or options.
int runServe(const ServeOptions &options);

} // namespace kiln

#endif // KILN_CLI_SERVE_H
