//===- model_kernels.cu - the CUDA backend's non-GEMM kernels -------------===//
//
// One translation unit, so that nvcc emits one sm_90a cubin for
// ModelKernels (kiln/cuda/model_kernels.h) to embed and load. Every kernel is
// extern "C" (unmangled names for cuModuleGetFunction) and takes one
// parameter block of model_kernels_params.h by value.
//
//===----------------------------------------------------------------------===//

#include "dense.cuh"
#include "mla_attention.cuh"
#include "mla_attention_mma.cuh"
#include "mla_prefill_mma.cuh"
#include "moe.cuh"
#include "sampling.cuh"
