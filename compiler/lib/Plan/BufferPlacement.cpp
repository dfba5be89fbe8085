//===- BufferPlacement.cpp - buffers in one arena -------------------------===//

#include "kiln/Plan/BufferPlacement.h"

#include <algorithm>
#include <numeric>
#include <utility>

namespace kiln {

namespace {

uint64_t alignUp(uint64_t value) {
  return (value + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
}

bool overlapInTime(const BufferInterval &a, const BufferInterval &b) {
  return a.first <= b.last && b.first <= a.last;
}

} // namespace

BufferPlacement
placeBufferIntervals(const std::vector<BufferInterval> &buffers) {
  std::vector<size_t> order(buffers.size());
  std::iota(order.begin(), order.end(), 0);
  // By first use; larger buffers first among those born together, so that
  // small ones fill the gaps.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (buffers[a].first != buffers[b].first)
      return buffers[a].first < buffers[b].first;
    return buffers[a].bytes > buffers[b].bytes;
  });

  BufferPlacement placement;
  placement.offsets.assign(buffers.size(), 0);
  std::vector<size_t> placed;
  std::vector<std::pair<uint64_t, uint64_t>> busy; // [begin, end) in bytes
  for (size_t index : order) {
    const BufferInterval &buffer = buffers[index];
    busy.clear();
    for (size_t other : placed)
      if (overlapInTime(buffer, buffers[other]))
        busy.emplace_back(placement.offsets[other],
                          placement.offsets[other] + buffers[other].bytes);
    std::sort(busy.begin(), busy.end());
    uint64_t offset = 0;
    for (auto [begin, end] : busy) {
      if (offset + buffer.bytes <= begin)
        break;
      offset = std::max(offset, alignUp(end));
    }
    placement.offsets[index] = offset;
    placement.arenaBytes =
        std::max(placement.arenaBytes, alignUp(offset + buffer.bytes));
    placed.push_back(index);
  }
  return placement;
}

} // namespace kiln
