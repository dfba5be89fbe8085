//===- kiln/cuda/timeline.h - per-op timing of plan steps ------*- C++ -*-===//
//
// A timeline of the plan steps a backend ran: for each step the GPU time
// between CUDA events recorded around it on the stream, and the host time
// spent enqueueing it. Written as a Chrome trace (chrome://tracing,
// ui.perfetto.dev: one "X" event per step on the row of the GPU stream it
// ran on and on a host row) and summarized as a per-op-kind table and, for
// plans on several streams, the time the streams were busy together. Plain C++:
// the backend fills it, this file formats it (and is tested without a GPU).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_TIMELINE_H
#define KILN_CUDA_TIMELINE_H

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::cuda {

/// The trace rows ("threads") events go on.
enum class TimelineRow { Gpu = 1, Host = 2 };

/// One plan step on one row.
struct TimelineEvent {
  /// The step's op ("gemm", "mla_attention", ...).
  std::string op;
  /// Index of the step in its plan, the plan's name, the GEMM kernel (empty
  /// for other ops) and the chunk's tokens.
  int64_t step = 0;
  std::string plan;
  std::string kernel;
  int64_t tokens = 0;
  TimelineRow row = TimelineRow::Gpu;
  /// The plan stream the step ran on (artifact.md "Streams and
  /// micro-batches"); GPU events of stream s > 0 go on their own row.
  int64_t stream = 0;
  /// Microseconds since the timeline started, and the duration.
  double startUs = 0;
  double durationUs = 0;
};

struct Timeline {
  std::vector<TimelineEvent> events;
  /// Plan executions recorded (the per-step averages divide by it).
  int64_t runs = 0;
};

/// The Chrome trace event format (JSON object with "traceEvents"): one
/// complete ("X") event per TimelineEvent named "op #step kernel", tid =
/// its row (GPU stream 0: 1, host: 2, GPU stream s > 0: 2 + s), ts/dur in
/// µs, the fields in "args"; thread-name metadata for the rows.
std::string chromeTraceJson(const Timeline &timeline);
/// Writes chromeTraceJson to `path`; throws kiln::Error when it cannot.
void writeChromeTrace(const Timeline &timeline, const std::string &path);

/// Time per op kind over the whole timeline.
struct OpTime {
  std::string op;
  /// Steps of this op (all runs together).
  int64_t count = 0;
  double gpuUs = 0;
  double hostUs = 0;
};
/// One row per op kind, the largest GPU time first.
std::vector<OpTime> opBreakdown(const Timeline &timeline);
/// A Markdown table of opBreakdown: op, steps per run, GPU µs per run, % of
/// the GPU time, host µs per run; a total row last.
std::string formatOpBreakdown(const Timeline &timeline);

/// How much the GPU streams' steps ran at the same time (all runs
/// together, from the GPU events' intervals).
struct StreamOverlap {
  /// Time stream 0 was busy, other streams were busy, both were, and any
  /// was (the union), in µs.
  double computeUs = 0;
  double otherUs = 0;
  double bothUs = 0;
  double anyUs = 0;
};
StreamOverlap streamOverlap(const Timeline &timeline);
/// "streams: 0 busy X us, others Y us, both Z us (W% of the busy time,
/// V% of the other streams' time)".
std::string formatStreamOverlap(const Timeline &timeline);

} // namespace kiln::cuda

#endif // KILN_CUDA_TIMELINE_H
