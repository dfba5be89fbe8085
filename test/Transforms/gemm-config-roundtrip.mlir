// #kiln.gemm_config prints and parses back, the optional split_k,
// cluster_m, grouped, epilogue and store keys only when set (in any order when
// parsed).
// RUN: kiln-opt %s | kiln-opt | FileCheck %s
// RUN: kiln-opt %s --mlir-print-op-generic | kiln-opt | FileCheck %s

// CHECK-DAG: plain = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2>
// CHECK-DAG: split = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 4>
// CHECK-DAG: contiguous = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = contiguous>
// CHECK-DAG: masked = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 8, consumers = 2, split_k = 2, grouped = masked>
// CHECK-DAG: cluster = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2, cluster_m = 2>
// CHECK-DAG: reordered = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 2, grouped = masked>
// CHECK-DAG: swiglu = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = swiglu>
// CHECK-DAG: tma = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, store = tma>
// CHECK-DAG: tma_cluster = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, cluster_m = 2, store = tma>
// CHECK-DAG: swiglu_masked = #kiln.gemm_config<block_m = 64, block_n = 128, stages = 8, consumers = 1, grouped = masked, epilogue = swiglu>
// CHECK-DAG: tail = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split_k = 8, split = tail>
// CHECK-DAG: swiglu_quantize = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = swiglu_quantize>
// split_k = 1 is the default and is not printed.
// CHECK-DAG: default_split = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = masked>
func.func private @f() attributes {
  plain = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2>,
  split = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 4>,
  contiguous = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = contiguous>,
  masked = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 8, consumers = 2, split_k = 2, grouped = masked>,
  cluster = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2, cluster_m = 2>,
  reordered = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = masked, split_k = 2>,
  default_split = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 1, grouped = masked>,
  swiglu = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = swiglu>,
  swiglu_masked = #kiln.gemm_config<block_m = 64, block_n = 128, stages = 8, consumers = 1, epilogue = swiglu, grouped = masked>,
  tail = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split = tail, split_k = 8>,
  swiglu_quantize = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, epilogue = swiglu_quantize, grouped = contiguous>,
  tma = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, store = tma>,
  tma_cluster = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, store = tma, cluster_m = 2>}
