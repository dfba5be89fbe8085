// Matmuls the emitter refuses: no tile configuration, or a grouped one that
// does not match the op.
// RUN: kiln-opt %s --split-input-file --kiln-emit-gemm-kernels -verify-diagnostics -o /dev/null


func.func @unconfigured(%a: tensor<?x128xf8E4M3FN>, %as: tensor<?x1xf32>, %b: tensor<128x128xf8E4M3FN>, %bs: tensor<1x1xf32>) -> tensor<?x128xbf16> {
  // expected-error @+1 {{has no 'gemm_config'; run kiln-select-gemm-config first}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<?x128xf8E4M3FN>, tensor<?x1xf32>, tensor<128x128xf8E4M3FN>, tensor<1x1xf32>) -> tensor<?x128xbf16>
  return %0 : tensor<?x128xbf16>
}

// -----

// A grouped GEMM needs the grouped kernel of its layout.
func.func @plain_config(%a: tensor<4x128xf8E4M3FN>, %as: tensor<4x1xf32>, %b: tensor<2x128x128xf8E4M3FN>, %bs: tensor<2x1x1xf32>, %o: tensor<3xi32>) -> tensor<4x128xbf16> {
  // expected-error @+1 {{needs a gemm_config with grouped = contiguous, got #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1>}}
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %o {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1>} : (tensor<4x128xf8E4M3FN>, tensor<4x1xf32>, tensor<2x128x128xf8E4M3FN>, tensor<2x1x1xf32>, tensor<3xi32>) -> tensor<4x128xbf16>
  return %0 : tensor<4x128xbf16>
}

// -----

func.func @wrong_layout(%a: tensor<4x128xf8E4M3FN>, %as: tensor<4x1xf32>, %b: tensor<2x128x128xf8E4M3FN>, %bs: tensor<2x1x1xf32>, %o: tensor<3xi32>) -> tensor<4x128xbf16> {
  // expected-error @+1 {{needs a gemm_config with grouped = contiguous, got #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = masked>}}
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %o {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = masked>} : (tensor<4x128xf8E4M3FN>, tensor<4x1xf32>, tensor<2x128x128xf8E4M3FN>, tensor<2x1x1xf32>, tensor<3xi32>) -> tensor<4x128xbf16>
  return %0 : tensor<4x128xbf16>
}

// -----

// A plain matmul cannot take a grouped kernel.
func.func @grouped_config(%a: tensor<?x128xf8E4M3FN>, %as: tensor<?x1xf32>, %b: tensor<128x128xf8E4M3FN>, %bs: tensor<1x1xf32>) -> tensor<?x128xbf16> {
  // expected-error @+1 {{needs a gemm_config with no 'grouped', got}}
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = contiguous>} : (tensor<?x128xf8E4M3FN>, tensor<?x1xf32>, tensor<128x128xf8E4M3FN>, tensor<1x1xf32>) -> tensor<?x128xbf16>
  return %0 : tensor<?x128xbf16>
}
