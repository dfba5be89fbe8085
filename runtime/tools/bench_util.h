//===- bench_util.h - what the GPU benchmarks share -----------------------===//
//
// Header-only helpers of the benchmark and check tools in runtime/tools (no
// CUDA here: event_timer.h has the GPU timing).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TOOLS_BENCH_UTIL_H
#define KILN_TOOLS_BENCH_UTIL_H

#include <sstream>
#include <string>
#include <vector>

namespace kiln::bench {

/// "1,8,32" → {1, 8, 32}; std::stoi throws on anything else.
inline std::vector<int> parseIntList(const std::string &text) {
  std::vector<int> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ','))
    values.push_back(std::stoi(item));
  return values;
}

} // namespace kiln::bench

#endif // KILN_TOOLS_BENCH_UTIL_H
