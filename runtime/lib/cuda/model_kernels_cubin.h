//===- model_kernels_cubin.h - the embedded model kernels cubin -----------===//

#ifndef KILN_CUDA_MODEL_KERNELS_CUBIN_H
#define KILN_CUDA_MODEL_KERNELS_CUBIN_H

#include <string_view>

namespace kiln::cuda {

/// kernels/model_kernels.cu built by nvcc for sm_90a, embedded at build time
/// (runtime/CMakeLists.txt, tools/embed_file.cmake).
std::string_view modelKernelsCubin();

} // namespace kiln::cuda

#endif // KILN_CUDA_MODEL_KERNELS_CUBIN_H
