//===- kiln/cuda/driver.h - the CUDA driver API, loaded at run time -------===//
//
// The driver (libcuda.so.1) comes with the GPU's kernel module, not with the
// toolkit: a machine without a GPU has none, and a program linked against it
// does not even start there. Kiln loads it with dlopen on first use instead,
// so every binary built with CUDA still runs (and its tests still skip
// cleanly) on CPU-only machines, and a missing driver is a kiln::Error like
// any other bad input.
//
// Every call goes through `driver()` and is checked: `KILN_CU(context, fn,
// args...)` throws a CudaError naming the call, the context (kernel, shape)
// and the driver's error name and text.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_DRIVER_H
#define KILN_CUDA_DRIVER_H

#include "kiln/error.h"

#include <cuda.h>

#include <cstddef>
#include <string>

namespace kiln::cuda {

/// A failed driver call. `result()` tells sticky faults (the context is lost,
/// e.g. after an illegal address) from errors the caller may recover from.
class CudaError : public Error {
public:
  CudaError(const std::string &message, CUresult result)
      : Error(message), code(result) {}
  CUresult result() const { return code; }

private:
  CUresult code;
};

// The driver entry points Kiln uses. cuda.h maps several names to versioned
// symbols (cuMemAlloc -> cuMemAlloc_v2); the table uses the same mapping, so
// `driver().cuMemAlloc` is the function a direct call would bind to.
#define KILN_CUDA_DRIVER_FUNCTIONS(X)                                          \
  X(cuGetErrorName)                                                            \
  X(cuGetErrorString)                                                          \
  X(cuInit)                                                                    \
  X(cuDriverGetVersion)                                                        \
  X(cuDeviceGetCount)                                                          \
  X(cuDeviceGet)                                                               \
  X(cuDeviceGetName)                                                           \
  X(cuDeviceGetAttribute)                                                      \
  X(cuDeviceTotalMem)                                                          \
  X(cuDevicePrimaryCtxRetain)                                                  \
  X(cuDevicePrimaryCtxRelease)                                                 \
  X(cuCtxSetCurrent)                                                           \
  X(cuCtxGetCurrent)                                                           \
  X(cuCtxGetDevice)                                                            \
  X(cuCtxSynchronize)                                                          \
  X(cuModuleLoadDataEx)                                                        \
  X(cuModuleUnload)                                                            \
  X(cuModuleGetFunction)                                                       \
  X(cuFuncGetAttribute)                                                        \
  X(cuFuncSetAttribute)                                                        \
  X(cuFuncGetParamInfo)                                                        \
  X(cuOccupancyMaxActiveBlocksPerMultiprocessor)                               \
  X(cuTensorMapEncodeTiled)                                                    \
  X(cuLaunchKernel)                                                            \
  X(cuLaunchKernelEx)                                                          \
  X(cuLaunchHostFunc)                                                          \
  X(cuMemAlloc)                                                                \
  X(cuMemFree)                                                                 \
  X(cuMemGetInfo)                                                              \
  X(cuMemcpyHtoD)                                                              \
  X(cuMemcpyDtoH)                                                              \
  X(cuMemcpyHtoDAsync)                                                         \
  X(cuMemcpyDtoDAsync)                                                         \
  X(cuMemsetD32Async)                                                          \
  X(cuMemsetD16Async)                                                          \
  X(cuMemsetD8Async)                                                           \
  X(cuStreamCreate)                                                            \
  X(cuStreamDestroy)                                                           \
  X(cuStreamSynchronize)                                                       \
  X(cuStreamWaitEvent)                                                         \
  X(cuEventCreate)                                                             \
  X(cuEventDestroy)                                                            \
  X(cuEventRecord)                                                             \
  X(cuEventQuery)                                                              \
  X(cuEventSynchronize)                                                        \
  X(cuEventElapsedTime)                                                        \
  X(cuStreamBeginCapture)                                                      \
  X(cuStreamEndCapture)                                                        \
  X(cuGraphInstantiate)                                                        \
  X(cuGraphLaunch)                                                             \
  X(cuGraphDestroy)                                                            \
  X(cuGraphExecDestroy)

/// Function pointers into libcuda.so.1.
struct Driver {
#define KILN_CUDA_DRIVER_MEMBER(fn) decltype(&::fn) fn = nullptr;
  KILN_CUDA_DRIVER_FUNCTIONS(KILN_CUDA_DRIVER_MEMBER)
#undef KILN_CUDA_DRIVER_MEMBER
};

/// The driver, loaded and initialized (cuInit) on first use. Throws
/// kiln::Error when libcuda.so.1 cannot be loaded or lacks an entry point, and
/// CudaError when cuInit fails (e.g. no device, or a driver older than the
/// CUDA 13 this was built for); later calls rethrow the same error.
const Driver &driver();

/// "CUDA_ERROR_X (code): text" for a driver result; works without a driver
/// (then the code alone).
std::string describe(CUresult result);

/// Throws CudaError "`call` failed for `context`: CUDA_ERROR_X (code): text"
/// unless `result` is CUDA_SUCCESS.
void check(CUresult result, const char *call, const std::string &context);

/// Calls `driver().fn(args...)` and checks it, naming `fn` as written.
#define KILN_CU(context, fn, ...)                                              \
  ::kiln::cuda::check(::kiln::cuda::driver().fn(__VA_ARGS__), #fn, (context))

/// Whether kernels that wait on their grid dependencies are launched with
/// programmatic stream serialization, so that a launch and its prologue
/// overlap the previous kernel's tail in the stream (or graph): on unless
/// the environment sets KILN_DEPENDENT_LAUNCH=0 (read once).
bool dependentLaunchEnabled();

/// A kernel launch of `blockX` threads per block: cuLaunchKernel, or, when
/// `waitsOnGrid` (every thread executes `griddepcontrol.wait` before it
/// touches global memory) and dependentLaunchEnabled(), cuLaunchKernelEx
/// with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION. Returns the
/// driver's result for the caller to check with its own context.
CUresult launchKernel(CUfunction function, unsigned gridX, unsigned gridY,
                      unsigned blockX, unsigned sharedBytes, CUstream stream,
                      void **parameters, bool waitsOnGrid);

/// Number of CUDA devices; 0 when the driver is missing or cuInit fails (the
/// reason in `whyNone` if given), so that callers can skip GPU work.
int deviceCount(std::string *whyNone = nullptr);

/// Retains a device's primary context and makes it current on this thread for
/// the object's lifetime (the context the CUDA runtime would use too).
class PrimaryContext {
public:
  explicit PrimaryContext(int ordinal = 0);
  ~PrimaryContext();
  PrimaryContext(const PrimaryContext &) = delete;
  PrimaryContext &operator=(const PrimaryContext &) = delete;

  CUdevice device() const { return dev; }
  CUcontext context() const { return ctx; }
  int attribute(CUdevice_attribute attribute) const;
  std::string name() const;

private:
  CUdevice dev = 0;
  CUcontext ctx = nullptr;
};

/// Device memory freed on destruction. Holds no context: destroy it while the
/// context that allocated it is alive.
class DeviceBuffer {
public:
  DeviceBuffer() = default;
  /// Allocates `bytes` (256-byte aligned, as cuMemAlloc guarantees);
  /// `purpose` names the buffer in errors.
  DeviceBuffer(size_t bytes, const std::string &purpose);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer &&other) noexcept;
  DeviceBuffer &operator=(DeviceBuffer &&other) noexcept;
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;

  CUdeviceptr get() const { return pointer; }
  size_t size() const { return bytes; }

private:
  CUdeviceptr pointer = 0;
  size_t bytes = 0;
};

} // namespace kiln::cuda

#endif // KILN_CUDA_DRIVER_H
