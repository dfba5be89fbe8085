//===- KilnDialect.td - the kiln graph-level dialect --------*- tablegen -*-===//
//
// The graph level of Kiln: tensors, tile-scaled FP8 matmuls, MoE routing,
// dispatch and combine, and two-micro-batch computation/communication overlap.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_DIALECT_KILN_KILNDIALECT_TD
#define KILN_DIALECT_KILN_KILNDIALECT_TD

include "mlir/IR/OpBase.td"

def Kiln_Dialect : Dialect {
  let name = "kiln";
  let cppNamespace = "::kiln";
  let summary = "Graph-level ops for FP8 mixture-of-experts models on Hopper";
  let description = [{
    The `kiln` dialect describes a DeepSeek-V3-style model at the level of
    whole tensors. Its ops follow the DeepSeek-V3 FP8 recipe:

    * activations are quantized to `f8E4M3FN` per 1×128 tile along the
      contracted dimension, weights per 128×128 block, each tile or block
      with one `f32` scale (`x ≈ q * scale`); scale shapes are ceil-divided;
    * FP8 matmuls contract a K-major left operand with a K-major (N×K) right
      operand and accumulate in FP32, applying both scales every 128 K;
    * mixture-of-experts layers route tokens with `kiln.moe_route`, move them
      to expert-major buffers with `kiln.moe_dispatch`, run grouped FP8 GEMMs
      and bring the results back with `kiln.moe_combine`;
    * `kiln.overlap` runs the same sequence of stages for several
      micro-batches so that one micro-batch's communication stages can run
      beside another's compute stages.

    Ops work on ranked tensors; any dimension may be dynamic (`?`), and the
    verifiers check every shape relation that is known statically.
  }];
  let useDefaultAttributePrinterParser = 1;
  let extraClassDeclaration = [{
    void registerAttributes();
  }];
}

class Kiln_Op<string mnemonic, list<Trait> traits = []>
    : Op<Kiln_Dialect, mnemonic, traits>;

#endif // KILN_DIALECT_KILN_KILNDIALECT_TD
