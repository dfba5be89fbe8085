//===- driver.cpp - the CUDA driver API, loaded at run time ---------------===//

#include "kiln/cuda/driver.h"

#include <dlfcn.h>

#include <cstdlib>
#include <exception>
#include <mutex>
#include <utility>

namespace kiln::cuda {

namespace {

// Expands a name first, so that the dlsym name is the versioned symbol cuda.h
// maps it to ("cuMemAlloc" -> "cuMemAlloc_v2").
#define KILN_CUDA_STRINGIFY_EXPANDED(name) KILN_CUDA_STRINGIFY(name)
#define KILN_CUDA_STRINGIFY(name) #name

constexpr const char *kDriverLibrary = "libcuda.so.1";

/// Loads libcuda.so.1 and resolves every entry point. Never unloaded: the
/// driver must outlive every context, including ones released at exit.
Driver loadDriver() {
  dlerror();
  void *library = dlopen(kDriverLibrary, RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    const char *reason = dlerror();
    throw Error(std::string("CUDA driver not available: cannot load ") +
                kDriverLibrary + " (" + (reason ? reason : "unknown reason") +
                "); is an NVIDIA driver installed on this machine?");
  }
  Driver loaded;
#define KILN_CUDA_RESOLVE(fn)                                                  \
  loaded.fn = reinterpret_cast<decltype(loaded.fn)>(                           \
      dlsym(library, KILN_CUDA_STRINGIFY_EXPANDED(fn)));                       \
  if (!loaded.fn)                                                              \
    throw Error(std::string("CUDA driver ") + kDriverLibrary + " lacks " +     \
                KILN_CUDA_STRINGIFY_EXPANDED(fn) +                             \
                "; the driver is older than the CUDA " +                       \
                std::to_string(CUDA_VERSION / 1000) +                          \
                " toolkit Kiln was built with");
  KILN_CUDA_DRIVER_FUNCTIONS(KILN_CUDA_RESOLVE)
#undef KILN_CUDA_RESOLVE
  return loaded;
}

/// The loaded driver, or the error that loading or cuInit gave (rethrown on
/// every later call, so the first failure's reason is never lost).
struct DriverState {
  Driver functions;
  std::exception_ptr failure;
  bool loaded = false;
};

DriverState &state() {
  static DriverState instance;
  static std::once_flag once;
  std::call_once(once, [] {
    try {
      instance.functions = loadDriver();
      instance.loaded = true;
      CUresult result = instance.functions.cuInit(0);
      if (result != CUDA_SUCCESS)
        throw CudaError("cuInit failed: " + describe(result), result);
    } catch (...) {
      instance.failure = std::current_exception();
    }
  });
  return instance;
}

} // namespace

const Driver &driver() {
  DriverState &current = state();
  if (current.failure)
    std::rethrow_exception(current.failure);
  return current.functions;
}

std::string describe(CUresult result) {
  std::string code = "error " + std::to_string(static_cast<int>(result));
  DriverState &current = state();
  // The names come from the driver itself; without one, the number alone.
  if (!current.loaded)
    return code;
  const char *name = nullptr, *text = nullptr;
  current.functions.cuGetErrorName(result, &name);
  current.functions.cuGetErrorString(result, &text);
  std::string described = name ? std::string(name) + " (" + code + ")" : code;
  if (text)
    described += ": " + std::string(text);
  return described;
}

void check(CUresult result, const char *call, const std::string &context) {
  if (result == CUDA_SUCCESS)
    return;
  throw CudaError(std::string(call) + " failed for " + context + ": " +
                      describe(result),
                  result);
}

bool dependentLaunchEnabled() {
  static const bool enabled = [] {
    const char *value = std::getenv("KILN_DEPENDENT_LAUNCH");
    return !(value && std::string(value) == "0");
  }();
  return enabled;
}

CUresult launchKernel(CUfunction function, unsigned gridX, unsigned gridY,
                      unsigned blockX, unsigned sharedBytes, CUstream stream,
                      void **parameters, bool waitsOnGrid) {
  if (!waitsOnGrid || !dependentLaunchEnabled())
    return driver().cuLaunchKernel(function, gridX, gridY, 1, blockX, 1, 1,
                                   sharedBytes, stream, parameters, nullptr);
  CUlaunchAttribute attribute{};
  attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
  attribute.value.programmaticStreamSerializationAllowed = 1;
  CUlaunchConfig config{};
  config.gridDimX = gridX;
  config.gridDimY = gridY;
  config.gridDimZ = 1;
  config.blockDimX = blockX;
  config.blockDimY = 1;
  config.blockDimZ = 1;
  config.sharedMemBytes = sharedBytes;
  config.hStream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return driver().cuLaunchKernelEx(&config, function, parameters, nullptr);
}

int deviceCount(std::string *whyNone) {
  try {
    int count = 0;
    KILN_CU("device discovery", cuDeviceGetCount, &count);
    if (count == 0 && whyNone)
      *whyNone = "the CUDA driver reports no device";
    return count;
  } catch (const Error &error) {
    if (whyNone)
      *whyNone = error.what();
    return 0;
  }
}

PrimaryContext::PrimaryContext(int ordinal) {
  std::string what = "CUDA device " + std::to_string(ordinal);
  KILN_CU(what, cuDeviceGet, &dev, ordinal);
  KILN_CU(what, cuDevicePrimaryCtxRetain, &ctx, dev);
  try {
    KILN_CU(what, cuCtxSetCurrent, ctx);
  } catch (...) {
    driver().cuDevicePrimaryCtxRelease(dev);
    throw;
  }
}

PrimaryContext::~PrimaryContext() {
  // Errors here cannot be reported (destructor) and leave nothing to undo.
  driver().cuCtxSetCurrent(nullptr);
  driver().cuDevicePrimaryCtxRelease(dev);
}

int PrimaryContext::attribute(CUdevice_attribute attribute) const {
  int value = 0;
  KILN_CU("device attribute " + std::to_string(attribute), cuDeviceGetAttribute,
          &value, attribute, dev);
  return value;
}

std::string PrimaryContext::name() const {
  char buffer[256] = {};
  KILN_CU("device name", cuDeviceGetName, buffer, sizeof(buffer) - 1, dev);
  return buffer;
}

DeviceBuffer::DeviceBuffer(size_t size, const std::string &purpose) {
  KILN_CU(purpose + " (" + std::to_string(size) + " bytes)", cuMemAlloc,
          &pointer, size);
  bytes = size;
}

DeviceBuffer::~DeviceBuffer() {
  if (pointer)
    driver().cuMemFree(pointer);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer &&other) noexcept
    : pointer(std::exchange(other.pointer, 0)),
      bytes(std::exchange(other.bytes, 0)) {}

DeviceBuffer &DeviceBuffer::operator=(DeviceBuffer &&other) noexcept {
  if (this != &other) {
    if (pointer)
      driver().cuMemFree(pointer);
    pointer = std::exchange(other.pointer, 0);
    bytes = std::exchange(other.bytes, 0);
  }
  return *this;
}

} // namespace kiln::cuda
