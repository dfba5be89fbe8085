//===- event_timer.h - CUDA-event timing for the GPU benchmarks -----------===//

#ifndef KILN_TOOLS_EVENT_TIMER_H
#define KILN_TOOLS_EVENT_TIMER_H

#include "kiln/cuda/driver.h"

#include <algorithm>

namespace kiln::bench {

/// Times launches on the legacy stream with a pair of CUDA events.
class EventTimer {
public:
  EventTimer() {
    KILN_CU("bench", cuEventCreate, &start, 0);
    KILN_CU("bench", cuEventCreate, &stop, 0);
  }
  ~EventTimer() {
    cuda::driver().cuEventDestroy(start);
    cuda::driver().cuEventDestroy(stop);
  }
  EventTimer(const EventTimer &) = delete;
  EventTimer &operator=(const EventTimer &) = delete;

  /// Seconds per call of `launch`: one warm-up call, one timed call to size
  /// the run, then as many calls as fit in about `budgetMs` (between
  /// `minRepeats` and `maxRepeats`), timed together.
  template <typename Launch>
  double secondsPerCall(Launch launch, double budgetMs, int minRepeats,
                        int maxRepeats) {
    launch();
    const double once = elapsedMs(launch, 1);
    const int repeats =
        std::clamp(static_cast<int>(budgetMs / once), minRepeats, maxRepeats);
    return elapsedMs(launch, repeats) / 1e3 / repeats;
  }

private:
  template <typename Launch> double elapsedMs(Launch &launch, int repeats) {
    KILN_CU("bench", cuEventRecord, start, nullptr);
    for (int i = 0; i < repeats; ++i)
      launch();
    KILN_CU("bench", cuEventRecord, stop, nullptr);
    KILN_CU("bench", cuEventSynchronize, stop);
    float ms = 0;
    KILN_CU("bench", cuEventElapsedTime, &ms, start, stop);
    return ms;
  }

  CUevent start = nullptr, stop = nullptr;
};

} // namespace kiln::bench

#endif // KILN_TOOLS_EVENT_TIMER_H
