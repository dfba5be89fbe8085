// The C shim bench/gemm_interleaved.py loads (bench/kiln_gemm_shim.cpp):
// its entry points are exported with C names, and a bad cubin or manifest
// is an error that names the file, not a crash. Loaded with dlopen, as
// Python's ctypes does; none of this needs a GPU.

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace {

using ErrorFn = const char *(*)();
using OpenFn = int (*)(const char *, const char *, void **);

/// The shim beside this binary's libraries (lib/ next to bin/, as the
/// build tree and scripts/device/stage.sh lay them out), else where the
/// build put it.
std::string shimPath() {
  std::filesystem::path staged =
      std::filesystem::read_symlink("/proc/self/exe").parent_path() /
      "../lib/libkiln_gemm_shim.so";
  return std::filesystem::exists(staged) ? staged.string()
                                         : KILN_GEMM_SHIM_PATH;
}

struct Shim {
  void *library = dlopen(shimPath().c_str(), RTLD_NOW | RTLD_LOCAL);
  ~Shim() {
    if (library)
      dlclose(library);
  }
  template <typename Fn> Fn get(const char *name) const {
    return reinterpret_cast<Fn>(dlsym(library, name));
  }
};

TEST(GemmShim, ExportsItsEntryPoints) {
  Shim shim;
  ASSERT_NE(shim.library, nullptr) << dlerror();
  for (const char *name :
       {"kiln_shim_error", "kiln_shim_open", "kiln_shim_prepare",
        "kiln_shim_launch", "kiln_shim_close"})
    EXPECT_NE(dlsym(shim.library, name), nullptr) << name;
}

TEST(GemmShim, MissingCubinNamesIt) {
  Shim shim;
  ASSERT_NE(shim.library, nullptr) << dlerror();
  void *handle = reinterpret_cast<void *>(0x1);
  EXPECT_EQ(shim.get<OpenFn>("kiln_shim_open")("/nonexistent/k.cubin",
                                               "/nonexistent/k.json", &handle),
            -1);
  EXPECT_EQ(handle, reinterpret_cast<void *>(0x1)) << "left untouched";
  EXPECT_NE(std::string(shim.get<ErrorFn>("kiln_shim_error")())
                .find("/nonexistent/k.cubin: cannot open"),
            std::string::npos);
}

TEST(GemmShim, BadManifestNamesIt) {
  Shim shim;
  ASSERT_NE(shim.library, nullptr) << dlerror();
  std::string dir = ::testing::TempDir();
  std::string cubin = dir + "shim_test.cubin";
  std::string manifest = dir + "shim_test.json";
  std::ofstream(cubin) << "not a cubin";
  std::ofstream(manifest) << "{\"kernel\": 3}";
  void *handle = nullptr;
  EXPECT_EQ(shim.get<OpenFn>("kiln_shim_open")(cubin.c_str(), manifest.c_str(),
                                               &handle),
            -1);
  EXPECT_EQ(handle, nullptr);
  EXPECT_NE(std::string(shim.get<ErrorFn>("kiln_shim_error")()).find(manifest),
            std::string::npos)
      << shim.get<ErrorFn>("kiln_shim_error")();
  std::remove(cubin.c_str());
  std::remove(manifest.c_str());
}

} // namespace
