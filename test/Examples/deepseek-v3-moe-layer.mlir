// The bundled DeepSeek-V3 MoE layer (examples/deepseek-v3/moe_layer.mlir) at
// real shapes: it verifies, prints the same after a second round trip, survives
// the generic form, and canonicalize + CSE keep its collectives and stages.
// RUN: kiln-opt %S/../../examples/deepseek-v3/moe_layer.mlir > %t.mlir
// RUN: kiln-opt %t.mlir > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: kiln-opt %t.mlir --mlir-print-op-generic | kiln-opt > %t.generic.mlir
// RUN: diff %t.mlir %t.generic.mlir
// RUN: FileCheck %s --input-file %t.mlir
// RUN: kiln-opt %t.mlir --canonicalize --cse | FileCheck %s --check-prefix=OPT

// CHECK: #[[EP:ep[0-9]*]] = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>

// CHECK-LABEL: func.func @moe_layer
// CHECK-SAME: tensor<128x7168xbf16>
// CHECK: kiln.rms_norm {{.*}} {epsilon = 9.99999997E-7 : f32}
// CHECK: kiln.matmul {{.*}} -> tensor<128x256xf32>
// CHECK: kiln.moe_route sigmoid {{.*}} {n_group = 8 : i64, routed_scaling_factor = 2.500000e+00 : f32, top_k = 8 : i64, topk_group = 4 : i64} : (tensor<128x256xf32>, tensor<256xf32>) -> (tensor<128x8xi32>, tensor<128x8xf32>)
// CHECK: kiln.quantize {{.*}} tile_1x128 : tensor<128x7168xbf16> -> tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>
// CHECK: kiln.moe_dispatch masked {{.*}} {parallel = #[[EP]]} {{.*}} -> (tensor<32x1024x7168xf8E4M3FN>, tensor<32x1024x56xf32>, tensor<32xi32>, tensor<32x1024xi32>)
// CHECK: kiln.grouped_scaled_matmul masked {{.*}} tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<32xi32>) -> tensor<32x1024x4096xbf16>
// CHECK: kiln.swiglu {{.*}} -> tensor<32x1024x2048xbf16>
// CHECK: kiln.quantize {{.*}} tile_1x128
// CHECK: kiln.grouped_scaled_matmul masked {{.*}} -> tensor<32x1024x7168xbf16>
// CHECK: kiln.moe_combine masked {{.*}} -> tensor<128x7168xbf16>
// CHECK: kiln.scaled_matmul {{.*}} tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>) -> tensor<128x4096xbf16>
// CHECK: kiln.swiglu
// CHECK: kiln.quantize
// CHECK: kiln.scaled_matmul {{.*}} tensor<7168x2048xf8E4M3FN>, tensor<56x16xf32>) -> tensor<128x7168xbf16>
// CHECK: arith.addf
// CHECK: arith.addf
// CHECK: return

// CHECK-LABEL: func.func @moe_layer_overlapped
// CHECK: kiln.overlap {{.*}} -> (tensor<64x7168xbf16>, tensor<64x7168xbf16>)
// CHECK: kiln.stage "route" compute
// CHECK: kiln.stage "dispatch" communication
// CHECK: kiln.moe_dispatch masked
// CHECK: kiln.stage "experts" compute
// CHECK-COUNT-2: kiln.grouped_scaled_matmul masked
// CHECK: kiln.stage "combine" communication
// CHECK: kiln.moe_combine masked
// CHECK: kiln.stage "shared_expert" compute

// Canonicalization and CSE must neither drop nor merge the collectives.
// OPT-LABEL: func.func @moe_layer
// OPT-COUNT-1: kiln.moe_dispatch
// OPT-COUNT-1: kiln.moe_combine
// OPT-LABEL: func.func @moe_layer_overlapped
// OPT-COUNT-5: kiln.stage
