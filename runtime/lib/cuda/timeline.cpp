//===- timeline.cpp - per-op timing of plan steps -------------------------===//

#include "kiln/cuda/timeline.h"

#include "kiln/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>

namespace kiln::cuda {

std::string chromeTraceJson(const Timeline &timeline) {
  nlohmann::json events = nlohmann::json::array();
  for (auto [row, name] : {std::pair{TimelineRow::Gpu, "GPU stream"},
                           std::pair{TimelineRow::Host, "host enqueue"}})
    events.push_back({{"name", "thread_name"},
                      {"ph", "M"},
                      {"pid", 1},
                      {"tid", static_cast<int>(row)},
                      {"args", {{"name", name}}}});
  for (const TimelineEvent &e : timeline.events) {
    std::string name = e.op + " #" + std::to_string(e.step);
    if (!e.kernel.empty())
      name += " " + e.kernel;
    nlohmann::json args = {
        {"op", e.op}, {"step", e.step}, {"plan", e.plan}, {"tokens", e.tokens}};
    if (!e.kernel.empty())
      args["kernel"] = e.kernel;
    events.push_back({{"name", name},
                      {"cat", e.op},
                      {"ph", "X"},
                      {"pid", 1},
                      {"tid", static_cast<int>(e.row)},
                      {"ts", e.startUs},
                      {"dur", e.durationUs},
                      {"args", args}});
  }
  nlohmann::json trace = {{"traceEvents", events},
                          {"displayTimeUnit", "ns"},
                          {"otherData", {{"runs", timeline.runs}}}};
  return trace.dump(1);
}

void writeChromeTrace(const Timeline &timeline, const std::string &path) {
  std::ofstream file(path);
  if (!file)
    throw Error(path + ": cannot write the timeline");
  file << chromeTraceJson(timeline) << '\n';
  if (!file.flush())
    throw Error(path + ": cannot write the timeline");
}

std::vector<OpTime> opBreakdown(const Timeline &timeline) {
  std::map<std::string, OpTime> byOp;
  for (const TimelineEvent &e : timeline.events) {
    OpTime &t = byOp[e.op];
    t.op = e.op;
    if (e.row == TimelineRow::Gpu) {
      ++t.count;
      t.gpuUs += e.durationUs;
    } else {
      t.hostUs += e.durationUs;
    }
  }
  std::vector<OpTime> rows;
  for (auto &[op, t] : byOp)
    rows.push_back(t);
  std::stable_sort(
      rows.begin(), rows.end(),
      [](const OpTime &a, const OpTime &b) { return a.gpuUs > b.gpuUs; });
  return rows;
}

std::string formatOpBreakdown(const Timeline &timeline) {
  std::vector<OpTime> rows = opBreakdown(timeline);
  const double runs = timeline.runs > 0 ? double(timeline.runs) : 1.0;
  double gpu = 0, host = 0;
  int64_t count = 0;
  for (const OpTime &t : rows) {
    gpu += t.gpuUs;
    host += t.hostUs;
    count += t.count;
  }
  std::string out =
      "| op | steps per run | GPU us per run | % of GPU | host us per run "
      "|\n"
      "| --- | --- | --- | --- | --- |\n";
  char line[256];
  auto add = [&](const std::string &op, double n, double g, double h) {
    std::snprintf(line, sizeof line, "| %s | %.4g | %.1f | %.1f | %.1f |\n",
                  op.c_str(), n / runs, g / runs, gpu > 0 ? 100.0 * g / gpu : 0,
                  h / runs);
    out += line;
  };
  for (const OpTime &t : rows)
    add(t.op, double(t.count), t.gpuUs, t.hostUs);
  add("total", double(count), gpu, host);
  return out;
}

} // namespace kiln::cuda
