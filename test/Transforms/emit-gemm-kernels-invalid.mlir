// A matmul without a tile configuration cannot be emitted.
// RUN: kiln-opt %s --kiln-emit-gemm-kernels -verify-diagnostics -o /dev/null


func.func @unconfigured(%a: tensor<?x128xf8E4M3FN>, %as: tensor<?x1xf32>, %b: tensor<128x128xf8E4M3FN>, %bs: tensor<1x1xf32>) -> tensor<?x128xbf16> {
  // expected-error @+1 {{has no 'gemm_config'; run kiln-select-gemm-config first}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<?x128xf8E4M3FN>, tensor<?x1xf32>, tensor<128x128xf8E4M3FN>, tensor<1x1xf32>) -> tensor<?x128xbf16>
  return %0 : tensor<?x128xbf16>
}
