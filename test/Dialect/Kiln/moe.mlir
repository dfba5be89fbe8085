// Round trip of the MoE ops and the expert-parallel attribute.
// RUN: kiln-opt %s | kiln-opt | FileCheck %s
// RUN: kiln-opt %s --mlir-print-op-generic | kiln-opt | FileCheck %s

// Printed once each, under the dialect's alias.
// CHECK-DAG: #[[EP8:ep[0-9]*]] = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
// CHECK-DAG: #[[EPLB:ep[0-9]*]] = #kiln.expert_parallel<world_size = 2, experts = 6, slots_per_rank = 4, placement = [0, 1, 2, 0, 3, 4, 5, 5]>
#ep8 = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 32>
// Two redundant copies (experts 0 and 5) in 2 x 4 slots for 6 experts.
#eplb = #kiln.expert_parallel<world_size = 2, experts = 6, slots_per_rank = 4, placement = [0, 1, 2, 0, 3, 4, 5, 5]>

// CHECK-LABEL: func.func @route
func.func @route(%logits: tensor<?x256xf32>, %bias: tensor<256xf32>, %v2: tensor<16x160xf32>)
    -> (tensor<?x8xi32>, tensor<?x8xf32>, tensor<16x6xi32>, tensor<16x6xf32>) {
  // DeepSeek-V3: sigmoid, correction bias, 8 groups of 32, 4 kept, top-8.
  // CHECK: kiln.moe_route sigmoid %{{.*}} bias %{{.*}} {n_group = 8 : i64, routed_scaling_factor = 2.500000e+00 : f32, top_k = 8 : i64, topk_group = 4 : i64} : (tensor<?x256xf32>, tensor<256xf32>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
  %ids, %weights = kiln.moe_route sigmoid %logits bias %bias
      {top_k = 8, n_group = 8, topk_group = 4, routed_scaling_factor = 2.5 : f32}
      : (tensor<?x256xf32>, tensor<256xf32>) -> (tensor<?x8xi32>, tensor<?x8xf32>)
  // DeepSeek-V2 style: softmax, no bias, unnormalized weights.
  // CHECK: kiln.moe_route softmax %{{.*}} {n_group = 8 : i64, norm_topk_prob = false, routed_scaling_factor = 1.600000e+01 : f32, top_k = 6 : i64, topk_group = 3 : i64} : (tensor<16x160xf32>) -> (tensor<16x6xi32>, tensor<16x6xf32>)
  %ids2, %weights2 = kiln.moe_route softmax %v2
      {top_k = 6, n_group = 8, topk_group = 3, routed_scaling_factor = 16.0 : f32, norm_topk_prob = false}
      : (tensor<16x160xf32>) -> (tensor<16x6xi32>, tensor<16x6xf32>)
  return %ids, %weights, %ids2, %weights2 : tensor<?x8xi32>, tensor<?x8xf32>, tensor<16x6xi32>, tensor<16x6xf32>
}

// CHECK-LABEL: func.func @dispatch_combine_masked_fp8
func.func @dispatch_combine_masked_fp8(%q: tensor<128x7168xf8E4M3FN>, %s: tensor<128x56xf32>,
                                       %ids: tensor<128x8xi32>, %w: tensor<128x8xf32>,
                                       %out: tensor<32x1024x7168xbf16>) -> tensor<128x7168xbf16> {
  // CHECK: kiln.moe_dispatch masked %{{.*}} scales %{{.*}} experts %{{.*}} {parallel = #[[EP8]]} : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>) -> (tensor<32x1024x7168xf8E4M3FN>, tensor<32x1024x56xf32>, tensor<32xi32>, tensor<32x1024xi32>)
  %xq, %xs, %counts, %src = kiln.moe_dispatch masked %q scales %s experts %ids {parallel = #ep8}
      : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<128x8xi32>)
      -> (tensor<32x1024x7168xf8E4M3FN>, tensor<32x1024x56xf32>, tensor<32xi32>, tensor<32x1024xi32>)
  // CHECK: kiln.moe_combine masked %{{.*}} source %{{.*}} weights %{{.*}} {parallel = #[[EP8]]} : (tensor<32x1024x7168xbf16>, tensor<32x1024xi32>, tensor<128x8xf32>) -> tensor<128x7168xbf16>
  %y = kiln.moe_combine masked %out source %src weights %w {parallel = #ep8}
      : (tensor<32x1024x7168xbf16>, tensor<32x1024xi32>, tensor<128x8xf32>) -> tensor<128x7168xbf16>
  return %y : tensor<128x7168xbf16>
}

// CHECK-LABEL: func.func @dispatch_combine_contiguous_bf16
func.func @dispatch_combine_contiguous_bf16(%x: tensor<?x7168xbf16>, %ids: tensor<?x2xi32>,
                                            %w: tensor<?x2xf32>, %out: tensor<?x7168xf32>)
    -> tensor<?x7168xf32> {
  // BF16 tokens carry no scales; redundant experts in the placement.
  // CHECK: kiln.moe_dispatch contiguous %{{.*}} experts %{{.*}} {parallel = #[[EPLB]]} : (tensor<?x7168xbf16>, tensor<?x2xi32>) -> (tensor<?x7168xbf16>, tensor<5xi32>, tensor<?xi32>)
  %rows, %offsets, %src = kiln.moe_dispatch contiguous %x experts %ids {parallel = #eplb}
      : (tensor<?x7168xbf16>, tensor<?x2xi32>) -> (tensor<?x7168xbf16>, tensor<5xi32>, tensor<?xi32>)
  // CHECK: kiln.moe_combine contiguous %{{.*}} source %{{.*}} weights %{{.*}} {parallel = #[[EPLB]]} : (tensor<?x7168xf32>, tensor<?xi32>, tensor<?x2xf32>) -> tensor<?x7168xf32>
  %y = kiln.moe_combine contiguous %out source %src weights %w {parallel = #eplb}
      : (tensor<?x7168xf32>, tensor<?xi32>, tensor<?x2xf32>) -> tensor<?x7168xf32>
  return %y : tensor<?x7168xf32>
}
