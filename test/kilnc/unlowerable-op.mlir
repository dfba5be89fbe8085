// A graph with an op that no launch-plan op implements: kilnc names the op
// and its location (this file is the graph).
// RUN: not kilnc %s --emit=plan -q 2>&1 | FileCheck %s

func.func @decode(%tokens: tensor<4xi32> {kiln.input = "tokens"},
                  %last_rows: tensor<4xi32> {kiln.input = "last_rows"},
                  %embed: tensor<1024x128xbf16> {kiln.weight = "model.embed_tokens.weight"},
                  %head: tensor<1024x128xbf16> {kiln.weight = "lm_head.weight"})
    -> tensor<4x1024xf32> {
  %h = kiln.embed %tokens, %embed : (tensor<4xi32>, tensor<1024x128xbf16>) -> tensor<4x128xf32>
  // CHECK: unlowerable-op.mlir:[[@LINE+1]]:{{[0-9]+}}: error: 'arith.addf' op cannot be lowered to a launch plan; the plans know kiln.embed, kiln.rms_norm,
  %twice = arith.addf %h, %h : tensor<4x128xf32>
  %last = kiln.select_rows %twice, %last_rows : (tensor<4x128xf32>, tensor<4xi32>) -> tensor<4x128xf32>
  %logits = kiln.matmul %last, %head : (tensor<4x128xf32>, tensor<1024x128xbf16>) -> tensor<4x1024xf32>
  return %logits : tensor<4x1024xf32>
}
