//===- BufferPlacement.h - buffers in one arena ----------------*- C++ -*-===//
//
// Places buffers with known lifetimes (step intervals) in one arena so that
// buffers alive at the same time never overlap and the others may share
// space.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_PLAN_BUFFERPLACEMENT_H
#define KILN_PLAN_BUFFERPLACEMENT_H

#include <cstdint>
#include <vector>

namespace kiln {

/// Buffer offsets are multiples of this (artifact.md).
constexpr uint64_t kBufferAlignment = 256;

/// A buffer alive from the step that writes it first to the step that
/// reads it last, both included.
struct BufferInterval {
  uint64_t bytes = 0;
  int64_t first = 0;
  int64_t last = 0;
};

struct BufferPlacement {
  /// One offset per interval, in their order.
  std::vector<uint64_t> offsets;
  /// The arena's size: the end of the highest buffer, aligned.
  uint64_t arenaBytes = 0;
};

/// Linear scan in order of first use; each buffer goes to the lowest
/// aligned offset where it overlaps no buffer that is alive at the same
/// time (first fit).
BufferPlacement
placeBufferIntervals(const std::vector<BufferInterval> &buffers);

} // namespace kiln

#endif // KILN_PLAN_BUFFERPLACEMENT_H
