//===- model_kernels_checks.h - host-side checks of the model kernels -----===//
//
// What ModelKernels checks before it launches anything, as free functions
// that need neither a GPU nor a driver: the tests exercise every rule on
// machines without one. Each throws kiln::Error "model kernel <name>: ..."
// naming the operand and the rule it breaks. Internal to kiln_cuda (and its
// tests); the public API is kiln/cuda/model_kernels.h.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CUDA_MODEL_KERNELS_CHECKS_H
#define KILN_CUDA_MODEL_KERNELS_CHECKS_H

#include "kiln/cuda/model_kernels.h"

#include <cstddef>

namespace kiln::cuda::detail {

void checkEmbed(CUdeviceptr tokens, int64_t T, CUdeviceptr table, int64_t vocab,
                const DeviceMatrix &out);
void checkRmsNorm(const DeviceMatrix &x, CUdeviceptr weight, float eps,
                  const DeviceMatrix &out);
void checkRmsNormQuantize(const DeviceMatrix &x, CUdeviceptr weight, float eps,
                          const QuantizedMatrix &out);
void checkQuantize(const DeviceMatrix &x, const QuantizedMatrix &out);
void checkMatmulF32(const DeviceMatrix &x, CUdeviceptr weight, int64_t n,
                    const DeviceMatrix &out);
/// Whether matmulF32 may use 16-byte loads: K % 8 == 0 and 16-byte aligned
/// rows of x and W.
bool matmulVectorizable(const DeviceMatrix &x, CUdeviceptr weight);
void checkAdd(const DeviceMatrix &a, const DeviceMatrix &b,
              const DeviceMatrix &out);
void checkMlaAttention(const MlaAttentionArgs &args);
/// Whether mlaAttention takes the tensor-core path (model_kernels.h).
bool mlaAttentionOnTensorCores(const MlaAttentionArgs &args);
/// Whether mlaAttention takes the decompressed prefill path (model_kernels.h).
bool mlaPrefillDecompressed(const MlaAttentionArgs &args);
/// Dynamic shared memory of the attention kernel for `args`' shapes.
size_t mlaAttentionSharedBytes(const MlaAttentionArgs &args);
void checkMoeRoute(const MoeRouteArgs &args);
void checkMoeDispatch(const QuantizedMatrix &in, CUdeviceptr expertIds,
                      int topK, int experts, const QuantizedMatrix &out,
                      CUdeviceptr offsets, CUdeviceptr rows);
void checkSwiglu(const DeviceMatrix &gate, const DeviceMatrix &up,
                 const DeviceMatrix &out);
void checkSwigluQuantize(const DeviceMatrix &gate, const DeviceMatrix &up,
                         const QuantizedMatrix &out);
void checkMoeCombine(const DeviceMatrix &y, CUdeviceptr rows,
                     CUdeviceptr weights, int topK, const DeviceMatrix &out);
void checkSelectRows(const DeviceMatrix &x, CUdeviceptr rows, int64_t count,
                     const DeviceMatrix &out);
void checkSample(const DeviceMatrix &logits,
                 const std::vector<SamplingRow> &rows, CUdeviceptr rowsBuffer,
                 size_t rowsBufferBytes, CUdeviceptr tokens);

} // namespace kiln::cuda::detail

#endif // KILN_CUDA_MODEL_KERNELS_CHECKS_H
