//===- main.cpp - generating text with Kiln from C++ (kiln.hpp) -----------===//
//
// Loads a model, opens one session and runs two requests at once: the
// engine batches them. The first streams through a callback (on the
// engine thread), the second is polled here; each answer is then printed on
// its own line, the first first.
//
//   embed-cpp MODEL_DIR [PROMPT1] [PROMPT2] [MAX_TOKENS]
//
//===----------------------------------------------------------------------===//

#include <kiln/kiln.hpp>

#include <cstdio>
#include <iostream>
#include <mutex>
#include <string>

int main(int argc, char **argv) {
  if (argc < 2) {
    std::cerr << "usage: embed-cpp MODEL_DIR [PROMPT1] [PROMPT2] "
                 "[MAX_TOKENS]\n";
    return 2;
  }
  try {
    kiln::embed::checkApiVersion();
    kiln::embed::LoadOptions loadOptions;
    int shownPercent = -1;
    loadOptions.progress = [&shownPercent](kiln_load_stage stage,
                                           double fraction) {
      int percent = static_cast<int>(fraction * 100.0);
      if (percent != shownPercent || stage == KILN_LOAD_DONE) {
        std::fprintf(stderr, "\rembed-cpp: loading weights %3d%%", percent);
        if (stage == KILN_LOAD_DONE)
          std::fputc('\n', stderr);
        shownPercent = percent;
      }
      return true; // false would cancel the load
    };
    kiln::embed::Model model(argv[1], loadOptions);
    kiln::embed::Session session(model, {/*maxBatch=*/2, 0, 0});

    kiln::embed::RequestParams first;
    first.prompt = argc > 2 ? argv[2] : "Hello";
    first.temperature = 0; // greedy
    first.maxTokens = argc > 4 ? std::stoll(argv[4]) : 32;
    kiln::embed::RequestParams second = first;
    second.prompt = argc > 3 ? argv[3] : "The quick brown fox";

    // The callback runs on the engine thread; the text is read here only
    // after wait(), which orders the two.
    std::string streamed;
    first.onToken = [&streamed](const kiln::embed::Event &event) {
      streamed += event.text;
    };
    kiln::embed::Request streaming = session.submit(first);
    kiln::embed::Request polled = session.submit(second);

    std::string answer;
    while (std::optional<kiln::embed::Event> event = polled.next())
      answer += event->text;
    streaming.wait();

    std::cout << streamed << '\n' << answer << '\n';
    kiln_session_stats stats = session.stats();
    std::cerr << "embed-cpp: " << stats.finished << " requests, " << stats.steps
              << " batched steps, at most " << stats.peak_active
              << " at once\n";
    return 0;
  } catch (const kiln::embed::Error &error) {
    std::cerr << "embed-cpp: " << error.what() << '\n';
    return 1;
  }
}
