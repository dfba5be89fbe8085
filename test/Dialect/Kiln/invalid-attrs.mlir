// Every rule of the #kiln.expert_parallel verifier.
// RUN: kiln-opt %s -split-input-file -verify-diagnostics

// expected-error @+1 {{expert_parallel: world_size must be positive, got 0}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 0, experts = 8, slots_per_rank = 1>}

// -----

// expected-error @+1 {{expert_parallel: experts must be positive, got -3}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 1, experts = -3, slots_per_rank = 1>}

// -----

// expected-error @+1 {{expert_parallel: slots_per_rank must be positive, got 0}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 8, experts = 8, slots_per_rank = 0>}

// -----

// expected-error @+1 {{expert_parallel: world_size * slots_per_rank must be at most 2^31 - 1 (slots are indexed in i32)}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 4294967296, experts = 8, slots_per_rank = 4294967296>}

// -----

// expected-error @+1 {{expert_parallel: world_size * slots_per_rank must be at most 2^31 - 1 (slots are indexed in i32)}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 1, experts = 9223372036854775807, slots_per_rank = 9223372036854775807>}

// -----

// expected-error @+1 {{expert_parallel: without a placement, world_size * slots_per_rank (288) must equal experts (256); give a placement to hold redundant experts}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 8, experts = 256, slots_per_rank = 36>}

// -----

// expected-error @+1 {{expert_parallel: placement has 3 entries, expected world_size * slots_per_rank = 4}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 2, experts = 3, slots_per_rank = 2, placement = [0, 1, 2]>}

// -----

// expected-error @+1 {{expert_parallel: 5 experts do not fit in 4 slots}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 2, experts = 5, slots_per_rank = 2, placement = [0, 1, 2, 3]>}

// -----

// expected-error @+1 {{expert_parallel: placement[2] = 7 is not an expert in [0, 3)}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 2, experts = 3, slots_per_rank = 2, placement = [0, 1, 7, 2]>}

// -----

// expected-error @+1 {{expert_parallel: expert 1 has no slot in the placement}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 2, experts = 3, slots_per_rank = 2, placement = [0, 2, 0, 2]>}

// -----

// expected-error @+1 {{expected ','}}
func.func private @f() attributes {ep = #kiln.expert_parallel<world_size = 2, experts = 3>}

// -----

// expected-error @+1 {{gemm_config: consumers must be 1 or 2, got 3}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 192, block_n = 128, stages = 4, consumers = 3>}

// -----

// expected-error @+1 {{gemm_config: block_m must be 64 per consumer warpgroup (128), got 64}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 64, block_n = 128, stages = 4, consumers = 2>}

// -----

// expected-error @+1 {{gemm_config: block_n must divide 128 and be a multiple of 8, or be 192 or 256, got 96}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 96, stages = 4, consumers = 2>}

// -----

// expected-error @+1 {{gemm_config: stages must be in [2, 16], got 1}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 1, consumers = 2>}

// -----

// expected-error @+1 {{gemm_config: 281728 bytes of shared memory exceed the 232448 of an sm_90 block}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 8, consumers = 2>}

// -----

// expected-error @+1 {{gemm_config: split_k must be in [1, 16], got 0}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 0>}

// -----

// expected-error @+1 {{grouped must be 'contiguous' or 'masked', got 'ragged'}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = ragged>}

// -----

// expected-error @+1 {{expected 'split_k = N', 'split = tail', 'cluster_m = N', 'grouped = contiguous|masked', 'epilogue = swiglu|swiglu_quantize' or 'store = tma', each at most once}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 2, split_k = 2>}

// -----

// expected-error @+1 {{gemm_config: cluster_m must be 1 or 2, got 4}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2, cluster_m = 4>}

// -----

// A cluster shares B between two tiles of one unit; split-K units would
// give its blocks different K slices.
// expected-error @+1 {{gemm_config: cluster_m = 2 needs split_k = 1, no 'grouped' and block_n a multiple of 16}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2, split_k = 2, cluster_m = 2>}

// -----

// expected-error @+1 {{gemm_config: cluster_m = 2 needs split_k = 1, no 'grouped' and block_n a multiple of 16}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 6, consumers = 2, grouped = contiguous, cluster_m = 2>}

// -----

// The group tables (12300 bytes) count against shared memory: 13 stages of
// 64x64 fit a plain kernel (223440 bytes with the epilogue's 9216), not a
// grouped one.
// expected-error @+1 {{gemm_config: 235740 bytes of shared memory exceed the 232448 of an sm_90 block}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 13, consumers = 1, grouped = contiguous>}

// -----

// expected-error @+1 {{epilogue must be 'swiglu' or 'swiglu_quantize', got 'gelu'}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, epilogue = gelu>}

// -----

// The SwiGLU epilogue pairs the gate and up halves of a 128-wide tile.
// expected-error @+1 {{gemm_config: epilogue = swiglu needs block_n = 128, 'grouped' and split_k = 1}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 8, consumers = 2, grouped = contiguous, epilogue = swiglu>}

// -----

// Only the grouped MoE GEMM has a gate/up weight.
// expected-error @+1 {{gemm_config: epilogue = swiglu needs block_n = 128, 'grouped' and split_k = 1}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, epilogue = swiglu>}

// -----

// expected-error @+1 {{gemm_config: epilogue = swiglu needs block_n = 128, 'grouped' and split_k = 1}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 64, block_n = 128, stages = 8, consumers = 1, split_k = 2, grouped = masked, epilogue = swiglu>}

// -----

// Grouped 192-wide tiles run unsplit (no split-K grouped wide kernel).
// expected-error @+1 {{gemm_config: block_n = 192 in a grouped kernel needs split_k = 1}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, split_k = 2, grouped = contiguous>}

// -----

// 4 stages of 48 KB, the plain stores' staging and the group tables exceed
// shared memory; with 2 stages it would fit, but would not pay.
// expected-error @+1 {{gemm_config: block_n = 256 is for plain kernels (no 'grouped')}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 256, stages = 4, consumers = 2, grouped = masked>}

// -----

// A 256-wide tile's final accumulator (128 registers) and one half's
// partial (64) leave no room for the split-K reduction's partials.
// expected-error @+1 {{gemm_config: block_n = 256 needs split_k = 1}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 256, stages = 4, consumers = 2, split_k = 2>}

// -----

// 4 stages of 48 KB and the 64 KB TMA staging of a 128x256 tile.
// expected-error @+1 {{gemm_config: 263232 bytes of shared memory exceed the 232448 of an sm_90 block}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 256, stages = 4, consumers = 2, store = tma>}

// -----

// expected-error @+1 {{store must be 'tma', got 'stmatrix'}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, store = stmatrix>}

// -----

// A grouped tile's rows may belong to two groups: its warpgroups fall back
// to plain stores, staged in their part of the TMA staging (at least 128
// columns).
// expected-error @+1 {{gemm_config: store = tma in a grouped kernel needs block_n >= 128}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 4, consumers = 2, grouped = masked, store = tma>}

// -----

// expected-error @+1 {{gemm_config: store = tma needs split_k = 1, no epilogue and block_n a multiple of 64}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 2, store = tma>}

// -----

// The TMA store stages the whole BF16 tile (48 KB at 128x192), where the
// plain stores stage 16 rows per warp (18 KB): 5 stages of 128x192 fit
// only with the latter.
// expected-error @+1 {{gemm_config: 255056 bytes of shared memory exceed the 232448 of an sm_90 block}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 5, consumers = 2, store = tma>}

// -----

// The quantized epilogue has SwiGLU's constraints (block_n = 128 here).
// expected-error @+1 {{gemm_config: epilogue = swiglu needs block_n = 128, 'grouped' and split_k = 1}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 8, consumers = 2, grouped = contiguous, epilogue = swiglu_quantize>}

// -----

// A split tail needs split-K slices and a plain kernel stored without TMA.
// expected-error @+1 {{gemm_config: split = tail needs split_k > 1 and a plain kernel without 'store = tma'}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split = tail>}

// -----

// expected-error @+1 {{gemm_config: split = tail needs split_k > 1 and a plain kernel without 'store = tma'}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split_k = 4, split = tail, store = tma>}

// -----

// expected-error @+1 {{split must be 'tail', got 'head'}}
func.func private @f() attributes {c = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split_k = 4, split = head>}
