//===- GraphConventions.h - what a model graph looks like ------*- C++ -*-===//
//
// A model graph is a module of kiln IR that kilnc lowers to launch plans,
// whoever wrote it (the DeepSeek-V3 front end or a person):
//
// - one `func.func` per kind of step, `@decode` and `@prefill`, each one
//   block of kiln ops (and `tensor.extract_slice` column slices), with
//   static shapes at the step's maxima;
// - step inputs are arguments marked `{kiln.input = "tokens"}` (i32 [T]),
//   `"positions"` (i32 [T]) or `"last_rows"` (i32 [S]);
// - weights are arguments marked `{kiln.weight = "<checkpoint name>"}`, in
//   the type the graph reads them in (kv_b_proj as bf16 although the
//   checkpoint stores FP8: the runtime converts at load); routed experts are
//   one `[E, N, K]` argument whose name has `{e}` for the expert index; an
//   FP8 weight's block scales are a second argument named
//   `<name>_scale_inv`;
// - the single result is the step's logits (f32 [S, vocab]).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_FRONTEND_GRAPHCONVENTIONS_H
#define KILN_FRONTEND_GRAPHCONVENTIONS_H

namespace kiln {

/// Argument attribute naming the checkpoint tensor a weight argument is.
constexpr const char *kWeightAttrName = "kiln.weight";
/// Argument attribute naming the step input an argument is.
constexpr const char *kInputAttrName = "kiln.input";
/// Optional on a weight argument: the checkpoint's dtype ("f8e4m3", "bf16",
/// "f32") where it differs from the argument's element type and no config
/// says it.
constexpr const char *kStoredDtypeAttrName = "kiln.stored_dtype";

/// The step inputs the runtime fills before each step.
constexpr const char *kTokensInput = "tokens";
constexpr const char *kPositionsInput = "positions";
constexpr const char *kLastRowsInput = "last_rows";
/// The buffer holding a plan's result.
constexpr const char *kLogitsBuffer = "logits";

/// Placeholder of the expert index in a routed expert's weight name.
constexpr const char *kExpertPlaceholder = "{e}";

/// Unit attribute on a kiln.swiglu of two contiguous grouped GEMMs over the
/// same rows (the routed experts' gate and up): fuse the three into one
/// grouped kernel with the SwiGLU epilogue. kiln-select-gemm-config gives
/// such a swiglu the kernel's `gemm_config` (`epilogue = swiglu`) where the
/// shapes allow it; launch-plan lowering then writes one `grouped_gemm`.
constexpr const char *kFuseSwiGLUAttrName = "kiln.fuse_swiglu";

/// The `gemm_config` attribute of a GEMM (or of a fused kiln.swiglu).
constexpr const char *kGemmConfigAttrName = "gemm_config";

} // namespace kiln

#endif // KILN_FRONTEND_GRAPHCONVENTIONS_H
