//===- TimelineTest.cpp - the per-op timeline's trace and table -----------===//

#include "kiln/cuda/timeline.h"
#include "kiln/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

using namespace kiln::cuda;

namespace {

/// A timeline of `runs` runs of a random plan, with random durations.
Timeline randomTimeline(std::mt19937 &random, int runs, int steps) {
  const char *ops[] = {"gemm", "rms_norm", "mla_attention", "moe_route",
                       "swiglu"};
  std::uniform_int_distribution<int> pick(0, 4);
  std::uniform_real_distribution<double> micros(0.5, 400.0);
  std::vector<int> plan(steps);
  for (int &op : plan)
    op = pick(random);
  Timeline t;
  double now = 0;
  for (int r = 0; r < runs; ++r) {
    for (int s = 0; s < steps; ++s) {
      TimelineEvent gpu;
      gpu.op = ops[plan[s]];
      gpu.step = s;
      gpu.plan = "decode";
      gpu.kernel = gpu.op == "gemm" ? "kiln_gemm_\"q\\a\"" : "";
      gpu.tokens = 1 + r;
      gpu.startUs = now;
      gpu.durationUs = micros(random);
      TimelineEvent host = gpu;
      host.row = TimelineRow::Host;
      host.durationUs = micros(random);
      now += gpu.durationUs;
      t.events.push_back(gpu);
      t.events.push_back(host);
    }
    ++t.runs;
  }
  return t;
}

TEST(TimelineTest, ChromeTraceHasOneCompleteEventPerStep) {
  std::mt19937 random(std::random_device{}());
  Timeline t = randomTimeline(random, 3, 17);
  nlohmann::json trace = nlohmann::json::parse(chromeTraceJson(t));
  ASSERT_TRUE(trace.contains("traceEvents"));
  const nlohmann::json &events = trace["traceEvents"];
  size_t complete = 0, metadata = 0;
  for (const nlohmann::json &e : events) {
    if (e["ph"] == "M") {
      ++metadata;
      EXPECT_EQ(e["name"], "thread_name");
      continue;
    }
    ASSERT_EQ(e["ph"], "X");
    const TimelineEvent &want = t.events[complete++];
    std::string name = want.op + " #" + std::to_string(want.step);
    if (!want.kernel.empty())
      name += " " + want.kernel;
    EXPECT_EQ(e["name"], name); // quotes and backslashes survive escaping
    EXPECT_EQ(e["cat"], want.op);
    EXPECT_EQ(e["tid"].get<int>(), static_cast<int>(want.row));
    EXPECT_DOUBLE_EQ(e["ts"].get<double>(), want.startUs);
    EXPECT_DOUBLE_EQ(e["dur"].get<double>(), want.durationUs);
    EXPECT_EQ(e["args"]["step"].get<int64_t>(), want.step);
    EXPECT_EQ(e["args"]["tokens"].get<int64_t>(), want.tokens);
    EXPECT_EQ(e["args"]["plan"], "decode");
    EXPECT_EQ(e["args"].contains("kernel"), !want.kernel.empty());
  }
  EXPECT_EQ(complete, t.events.size());
  EXPECT_EQ(metadata, 2u);
  EXPECT_EQ(trace["otherData"]["runs"].get<int64_t>(), 3);
}

TEST(TimelineTest, WriteChromeTraceRoundTripsAndReportsBadPaths) {
  std::mt19937 random(std::random_device{}());
  Timeline t = randomTimeline(random, 1, 5);
  auto path = std::filesystem::temp_directory_path() /
              ("kiln-timeline-" + std::to_string(random()) + ".json");
  writeChromeTrace(t, path.string());
  std::ifstream file(path);
  nlohmann::json trace = nlohmann::json::parse(file);
  EXPECT_EQ(trace["traceEvents"].size(), t.events.size() + 2);
  std::filesystem::remove(path);
  EXPECT_THROW(writeChromeTrace(t, "/nonexistent-dir/x/trace.json"),
               kiln::Error);
}

TEST(TimelineTest, BreakdownSumsPerOpKind) {
  std::mt19937 random(std::random_device{}());
  const int runs = 4;
  Timeline t = randomTimeline(random, runs, 23);
  // Reference sums in double, in a different order (by op, then event).
  std::map<std::string, std::pair<double, double>> want;
  std::map<std::string, int64_t> counts;
  for (auto it = t.events.rbegin(); it != t.events.rend(); ++it) {
    auto &w = want[it->op];
    (it->row == TimelineRow::Gpu ? w.first : w.second) += it->durationUs;
    counts[it->op] += it->row == TimelineRow::Gpu;
  }
  std::vector<OpTime> rows = opBreakdown(t);
  ASSERT_EQ(rows.size(), want.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i > 0) {
      EXPECT_GE(rows[i - 1].gpuUs, rows[i].gpuUs);
    }
    EXPECT_NEAR(rows[i].gpuUs, want[rows[i].op].first,
                1e-9 * want[rows[i].op].first);
    EXPECT_NEAR(rows[i].hostUs, want[rows[i].op].second,
                1e-9 * want[rows[i].op].second);
    EXPECT_EQ(rows[i].count, counts[rows[i].op]);
  }
  std::string table = formatOpBreakdown(t);
  // A header, a separator, one row per op and the total, per-run numbers.
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'),
            static_cast<long>(rows.size() + 3));
  EXPECT_NE(table.find("| " + rows[0].op + " | "), std::string::npos);
  double total = 0;
  for (const OpTime &r : rows)
    total += r.gpuUs;
  char cell[64];
  std::snprintf(cell, sizeof cell, "| total | 23 | %.1f | 100.0 |",
                total / runs);
  EXPECT_NE(table.find(cell), std::string::npos) << table;
}

} // namespace

/// Random intervals on two streams; the overlap of their unions computed
/// on a 0.5 us grid (the intervals' ends lie on it) must match the sweep.
TEST(TimelineTest, StreamOverlapIsTheIntersectionOfTheStreamsBusyTime) {
  std::mt19937 random(7);
  std::uniform_int_distribution<int> slot(0, 2000), length(1, 200);
  Timeline t;
  std::vector<int> busy[2];
  for (auto &b : busy)
    b.assign(2400, 0);
  for (int i = 0; i < 300; ++i) {
    TimelineEvent e;
    e.op = "op";
    e.stream = i % 3 == 0 ? 1 : 0;
    int from = slot(random), to = from + length(random);
    e.startUs = from * 0.5;
    e.durationUs = (to - from) * 0.5;
    for (int s = from; s < to; ++s)
      busy[e.stream][s] = 1;
    t.events.push_back(e);
    e.row = TimelineRow::Host; // host rows do not count
    e.startUs = 0;
    e.durationUs = 5000;
    t.events.push_back(e);
  }
  t.runs = 1;
  double compute = 0, other = 0, both = 0, any = 0;
  for (int s = 0; s < 2400; ++s) {
    compute += busy[0][s] * 0.5;
    other += busy[1][s] * 0.5;
    both += busy[0][s] * busy[1][s] * 0.5;
    any += (busy[0][s] | busy[1][s]) * 0.5;
  }
  StreamOverlap o = streamOverlap(t);
  EXPECT_NEAR(o.computeUs, compute, 1e-6);
  EXPECT_NEAR(o.otherUs, other, 1e-6);
  EXPECT_NEAR(o.bothUs, both, 1e-6);
  EXPECT_NEAR(o.anyUs, any, 1e-6);
  EXPECT_GT(o.bothUs, 0);
  EXPECT_NE(formatStreamOverlap(t).find("both"), std::string::npos);

  // One trace row per stream: stream 1 on tid 3, named.
  nlohmann::json trace = nlohmann::json::parse(chromeTraceJson(t));
  std::map<int, std::string> names;
  int onStream1 = 0;
  for (const auto &e : trace["traceEvents"]) {
    if (e["ph"] == "M")
      names[e["tid"].get<int>()] = e["args"]["name"].get<std::string>();
    else if (e["args"]["stream"] == 1 && e["tid"] == 3)
      ++onStream1;
  }
  EXPECT_EQ(names[1], "GPU stream 0");
  EXPECT_EQ(names[2], "host enqueue");
  EXPECT_EQ(names[3], "GPU stream 1");
  EXPECT_EQ(onStream1, 100);
}
