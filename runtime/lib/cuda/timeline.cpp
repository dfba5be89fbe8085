//===- timeline.cpp - per-op timing of plan steps -------------------------===//

#include "kiln/cuda/timeline.h"

#include "kiln/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>

namespace kiln::cuda {

namespace {

int traceThread(const TimelineEvent &e) {
  if (e.row == TimelineRow::Host || e.stream == 0)
    return static_cast<int>(e.row);
  return static_cast<int>(TimelineRow::Host) + static_cast<int>(e.stream);
}

} // namespace

std::string chromeTraceJson(const Timeline &timeline) {
  nlohmann::json events = nlohmann::json::array();
  std::map<int, std::string> rows = {
      {static_cast<int>(TimelineRow::Gpu), "GPU stream"},
      {static_cast<int>(TimelineRow::Host), "host enqueue"}};
  for (const TimelineEvent &e : timeline.events)
    if (e.row == TimelineRow::Gpu && e.stream > 0)
      rows[traceThread(e)] = "GPU stream " + std::to_string(e.stream);
  if (rows.size() > 2)
    rows[static_cast<int>(TimelineRow::Gpu)] = "GPU stream 0";
  for (const auto &[tid, name] : rows)
    events.push_back({{"name", "thread_name"},
                      {"ph", "M"},
                      {"pid", 1},
                      {"tid", tid},
                      {"args", {{"name", name}}}});
  for (const TimelineEvent &e : timeline.events) {
    std::string name = e.op + " #" + std::to_string(e.step);
    if (!e.kernel.empty())
      name += " " + e.kernel;
    nlohmann::json args = {{"op", e.op},
                           {"step", e.step},
                           {"plan", e.plan},
                           {"tokens", e.tokens},
                           {"stream", e.stream}};
    if (!e.kernel.empty())
      args["kernel"] = e.kernel;
    events.push_back({{"name", name},
                      {"cat", e.op},
                      {"ph", "X"},
                      {"pid", 1},
                      {"tid", traceThread(e)},
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

namespace kiln::cuda {

StreamOverlap streamOverlap(const Timeline &timeline) {
  // Sweep the GPU intervals' ends in time order, counting the busy
  // intervals of stream 0 and of the others.
  struct Edge {
    double at;
    bool compute;
    int delta;
  };
  std::vector<Edge> edges;
  for (const TimelineEvent &e : timeline.events)
    if (e.row == TimelineRow::Gpu && e.durationUs > 0) {
      edges.push_back({e.startUs, e.stream == 0, +1});
      edges.push_back({e.startUs + e.durationUs, e.stream == 0, -1});
    }
  // Ends before starts at the same instant: touching intervals do not
  // overlap.
  std::sort(edges.begin(), edges.end(), [](const Edge &a, const Edge &b) {
    return a.at != b.at ? a.at < b.at : a.delta < b.delta;
  });
  StreamOverlap out;
  int compute = 0, other = 0;
  for (size_t i = 0; i < edges.size(); ++i) {
    if (i > 0) {
      double span = edges[i].at - edges[i - 1].at;
      if (compute > 0)
        out.computeUs += span;
      if (other > 0)
        out.otherUs += span;
      if (compute > 0 && other > 0)
        out.bothUs += span;
      if (compute > 0 || other > 0)
        out.anyUs += span;
    }
    (edges[i].compute ? compute : other) += edges[i].delta;
  }
  return out;
}

std::string formatStreamOverlap(const Timeline &timeline) {
  StreamOverlap o = streamOverlap(timeline);
  const double runs = timeline.runs > 0 ? double(timeline.runs) : 1.0;
  char text[320];
  std::snprintf(text, sizeof text,
                "streams per run: stream 0 busy %.1f us, other streams %.1f "
                "us, both %.1f us (%.1f%% of the %.1f us any stream was "
                "busy, %.1f%% of the other streams' time)",
                o.computeUs / runs, o.otherUs / runs, o.bothUs / runs,
                o.anyUs > 0 ? 100.0 * o.bothUs / o.anyUs : 0.0, o.anyUs / runs,
                o.otherUs > 0 ? 100.0 * o.bothUs / o.otherUs : 0.0);
  return text;
}

} // namespace kiln::cuda
