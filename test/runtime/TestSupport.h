//===- TestSupport.h - helpers shared by the runtime unit tests -----------===//

#ifndef KILN_TEST_RUNTIME_TESTSUPPORT_H
#define KILN_TEST_RUNTIME_TESTSUPPORT_H

#include "kiln/error.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

namespace kiln::testing {

/// A fresh directory named after the running test, removed afterwards.
/// Unique per process and instance: CTest runs tests in parallel processes.
class ScratchDir {
public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    const ::testing::TestInfo *test =
        ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name =
        test ? std::string(test->test_suite_name()) + "-" + test->name()
             : "suite";
    dir = std::filesystem::path(::testing::TempDir()) /
          ("kiln-" + name + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(counter++));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  ScratchDir(const ScratchDir &) = delete;
  ScratchDir &operator=(const ScratchDir &) = delete;

  const std::filesystem::path &path() const { return dir; }
  std::filesystem::path operator/(const std::string &name) const {
    return dir / name;
  }
  /// Writes `contents` to the file `name` in the directory.
  void write(const std::string &name, const std::string &contents) const {
    std::ofstream(dir / name, std::ios::binary) << contents;
  }

private:
  std::filesystem::path dir;
};

/// The message of the kiln::Error `action` throws ("" and a test failure if
/// it throws none).
inline std::string errorOf(const std::function<void()> &action) {
  try {
    action();
  } catch (const kiln::Error &error) {
    return error.what();
  }
  ADD_FAILURE() << "expected a kiln::Error";
  return "";
}

/// Expects `message` to contain every one of `parts`.
inline void expectMentions(const std::string &message,
                           const std::vector<std::string> &parts) {
  for (const std::string &part : parts)
    EXPECT_NE(message.find(part), std::string::npos)
        << "message does not mention \"" << part << "\":\n"
        << message;
}

} // namespace kiln::testing

#endif // KILN_TEST_RUNTIME_TESTSUPPORT_H
