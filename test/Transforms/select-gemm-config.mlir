// RUN: kiln-opt %s --kiln-select-gemm-config | FileCheck %s

// Decode-sized M: one consumer warpgroup, 64-wide N tiles, an 8-stage ring.
// 33 tiles on 132 SMs: split-K in 4 slices of 14 K blocks fills every SM.
// CHECK-LABEL: func.func @decode
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 4>}
func.func @decode(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<64x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<64x2112xbf16>
  return %0 : tensor<64x2112xbf16>
}

// 384 tiles already fill the SMs: no split (split_k = 1 is not printed).
// CHECK-LABEL: func.func @decode_wide
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, store = tma>}
func.func @decode_wide(%a: tensor<64x1536xf8E4M3FN>, %as: tensor<64x12xf32>, %b: tensor<24576x1536xf8E4M3FN>, %bs: tensor<192x12xf32>) -> tensor<64x24576xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x1536xf8E4M3FN>, tensor<64x12xf32>, tensor<24576x1536xf8E4M3FN>, tensor<192x12xf32>) -> tensor<64x24576xbf16>
  return %0 : tensor<64x24576xbf16>
}

// M <= 128: two consumers on 128x64 tiles (the weights are read once),
// unless those would be split along K and 64x64 tiles need a smaller split:
// here 64 tiles of 128x64 (two slices of 28 K blocks) against 128 of 64x64,
// unsplit.
// CHECK-LABEL: func.func @small
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, store = tma>}
func.func @small(%a: tensor<128x7168xf8E4M3FN>, %as: tensor<128x56xf32>, %b: tensor<4096x7168xf8E4M3FN>, %bs: tensor<32x56xf32>) -> tensor<128x4096xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>) -> tensor<128x4096xbf16>
  return %0 : tensor<128x4096xbf16>
}

// 33 tiles of 128x64 would be split in four, 66 of 64x64 are split in two.
// CHECK-LABEL: func.func @small_split
// CHECK: gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 2>
func.func @small_split(%a: tensor<128x7168xf8E4M3FN>, %as: tensor<128x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<128x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<128x7168xf8E4M3FN>, tensor<128x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<128x2112xbf16>
  return %0 : tensor<128x2112xbf16>
}

// 112 tiles of 128x64 run unsplit (a second wave costs more than 20 idle
// SMs; 64x64 tiles measured 30% slower at K = 16384): at exactly 128 rows
// as 112 tiles of 64x128 with one consumer.
// CHECK-LABEL: func.func @small_unsplit
// CHECK: gemm_config = #kiln.gemm_config<block_m = 64, block_n = 128, stages = 8, consumers = 1, store = tma>
func.func @small_unsplit(%a: tensor<128x16384xf8E4M3FN>, %as: tensor<128x128xf32>, %b: tensor<7168x16384xf8E4M3FN>, %bs: tensor<56x128xf32>) -> tensor<128x7168xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<128x16384xf8E4M3FN>, tensor<128x128xf32>, tensor<7168x16384xf8E4M3FN>, tensor<56x128xf32>) -> tensor<128x7168xbf16>
  return %0 : tensor<128x7168xbf16>
}

// Below 128 rows the 128x64 tiles stay: a 64x128 kernel's second tile row
// would have TMA fill the rows past M with zeros.
// CHECK-LABEL: func.func @small_unsplit_ragged
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 8, consumers = 2, store = tma>
func.func @small_unsplit_ragged(%a: tensor<96x16384xf8E4M3FN>, %as: tensor<96x128xf32>, %b: tensor<7168x16384xf8E4M3FN>, %bs: tensor<56x128xf32>) -> tensor<96x7168xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<96x16384xf8E4M3FN>, tensor<96x128xf32>, tensor<7168x16384xf8E4M3FN>, tensor<56x128xf32>) -> tensor<96x7168xbf16>
  return %0 : tensor<96x7168xbf16>
}

// M <= 128, chains of 4 K blocks, 256 tiles of 128x128 (one per SM and
// more): 128-wide tiles, half as many fixed costs, 64 rows each (one
// consumer; the second tile row reads the weights from L2).
// CHECK-LABEL: func.func @small_wide
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 128, stages = 8, consumers = 1, store = tma>}
func.func @small_wide(%a: tensor<128x512xf8E4M3FN>, %as: tensor<128x4xf32>, %b: tensor<32768x512xf8E4M3FN>, %bs: tensor<256x4xf32>) -> tensor<128x32768xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<128x512xf8E4M3FN>, tensor<128x4xf32>, tensor<32768x512xf8E4M3FN>, tensor<256x4xf32>) -> tensor<128x32768xbf16>
  return %0 : tensor<128x32768xbf16>
}

// Longer chains (12 K blocks) do not take 128x128 tiles, though 192 of
// them would fill the SMs; exactly 128 rows take 64x128 ones (as many
// tiles as 128x64).
// CHECK-LABEL: func.func @small_wide_long
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 128, stages = 8, consumers = 1, store = tma>}
func.func @small_wide_long(%a: tensor<128x1536xf8E4M3FN>, %as: tensor<128x12xf32>, %b: tensor<24576x1536xf8E4M3FN>, %bs: tensor<192x12xf32>) -> tensor<128x24576xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<128x1536xf8E4M3FN>, tensor<128x12xf32>, tensor<24576x1536xf8E4M3FN>, tensor<192x12xf32>) -> tensor<128x24576xbf16>
  return %0 : tensor<128x24576xbf16>
}

// Slices of fewer than 4 K blocks are not worth their reduction.
// CHECK-LABEL: func.func @short_k
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, store = tma>}
func.func @short_k(%a: tensor<64x512xf8E4M3FN>, %as: tensor<64x4xf32>, %b: tensor<2112x512xf8E4M3FN>, %bs: tensor<17x4xf32>) -> tensor<64x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<64x512xf8E4M3FN>, tensor<64x4xf32>, tensor<2112x512xf8E4M3FN>, tensor<17x4xf32>) -> tensor<64x2112xbf16>
  return %0 : tensor<64x2112xbf16>
}

// Unknown or large M: two consumers, 128x128 tiles, as many stages as fit.
// CHECK-LABEL: func.func @prefill
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, store = tma>}
func.func @prefill(%a: tensor<?x1536xf8E4M3FN>, %as: tensor<?x12xf32>, %b: tensor<24576x1536xf8E4M3FN>, %bs: tensor<192x12xf32>) -> tensor<?x24576xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<?x1536xf8E4M3FN>, tensor<?x12xf32>, tensor<24576x1536xf8E4M3FN>, tensor<192x12xf32>) -> tensor<?x24576xbf16>
  return %0 : tensor<?x24576xbf16>
}

// Static large M: 128x128 tiles with a 4-deep ring (the largest power of
// two of 32 KB stages under the budget), no cluster: 2-block clusters were
// measured neutral with it, so the heuristic does not pick them. 2048 x 7168
// x 16384: 7 waves of 128x128 tiles against 5 of 128x192 (7.0, not fewer)
// and 4 of 128x256 (7.76).
// CHECK-LABEL: func.func @large_static
// CHECK: kiln.scaled_matmul {{.*}} {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, store = tma>}
func.func @large_static(%a: tensor<2048x16384xf8E4M3FN>, %as: tensor<2048x128xf32>, %b: tensor<7168x16384xf8E4M3FN>, %bs: tensor<56x128xf32>) -> tensor<2048x7168xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<2048x16384xf8E4M3FN>, tensor<2048x128xf32>, tensor<7168x16384xf8E4M3FN>, tensor<56x128xf32>) -> tensor<2048x7168xbf16>
  return %0 : tensor<2048x7168xbf16>
}

// A configuration already chosen (by hand or by a search) is kept, split_k
// included.
// CHECK-LABEL: func.func @chosen
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 4, consumers = 2, split_k = 3>
func.func @chosen(%a: tensor<4096x512xf8E4M3FN>, %as: tensor<4096x4xf32>, %b: tensor<32768x512xf8E4M3FN>, %bs: tensor<256x4xf32>) -> tensor<4096x32768xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs {gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 4, consumers = 2, split_k = 3>} : (tensor<4096x512xf8E4M3FN>, tensor<4096x4xf32>, tensor<32768x512xf8E4M3FN>, tensor<256x4xf32>) -> tensor<4096x32768xbf16>
  return %0 : tensor<4096x32768xbf16>
}

// Grouped GEMMs get the grouped kernel of their layout. Decode, contiguous:
// 8 routed rows over 256 experts can fill at most 8 groups of 1 row: the
// decode configuration, and split-K weighed on those 8 groups' tiles (8 x 32
// tiles of 64x64 for N = 2048: two waves already, no split; 8 x 16 tiles of
// 64x128 would leave 4 multiprocessors idle).
// CHECK-LABEL: func.func @grouped_decode
// CHECK: kiln.grouped_scaled_matmul contiguous {{.*}} {gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, grouped = contiguous>}
func.func @grouped_decode(%a: tensor<8x7168xf8E4M3FN>, %as: tensor<8x56xf32>, %b: tensor<256x2048x7168xf8E4M3FN>, %bs: tensor<256x16x56xf32>, %o: tensor<257xi32>) -> tensor<8x2048xbf16> {
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %o : (tensor<8x7168xf8E4M3FN>, tensor<8x56xf32>, tensor<256x2048x7168xf8E4M3FN>, tensor<256x16x56xf32>, tensor<257xi32>) -> tensor<8x2048xbf16>
  return %0 : tensor<8x2048xbf16>
}

// 8 groups of 1 row over N = 4096 have 8 x 32 = 256 tiles of 64x128: every
// multiprocessor gets one, so the wider tiles, which stream the weights
// faster.
// CHECK-LABEL: func.func @grouped_decode_wide
// CHECK: gemm_config = #kiln.gemm_config<block_m = 64, block_n = 128, stages = 8, consumers = 1, grouped = contiguous>
func.func @grouped_decode_wide(%a: tensor<8x7168xf8E4M3FN>, %as: tensor<8x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %o: tensor<9xi32>) -> tensor<8x4096xbf16> {
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %o : (tensor<8x7168xf8E4M3FN>, tensor<8x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<9xi32>) -> tensor<8x4096xbf16>
  return %0 : tensor<8x4096xbf16>
}

// One group of 64 rows has 32 tiles: split in 4, as a plain GEMM would be.
// CHECK-LABEL: func.func @grouped_one
// CHECK: gemm_config = #kiln.gemm_config<block_m = 64, block_n = 64, stages = 8, consumers = 1, split_k = 4, grouped = contiguous>
func.func @grouped_one(%a: tensor<64x7168xf8E4M3FN>, %as: tensor<64x56xf32>, %b: tensor<1x2048x7168xf8E4M3FN>, %bs: tensor<1x16x56xf32>, %o: tensor<2xi32>) -> tensor<64x2048xbf16> {
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %o : (tensor<64x7168xf8E4M3FN>, tensor<64x56xf32>, tensor<1x2048x7168xf8E4M3FN>, tensor<1x16x56xf32>, tensor<2xi32>) -> tensor<64x2048xbf16>
  return %0 : tensor<64x2048xbf16>
}

// Masked: each slab's capacity is the rows per group (128: two consumers on
// 128x64 tiles); 32 full slabs are 2048 tiles, no split.
// CHECK-LABEL: func.func @grouped_masked
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 64, stages = 8, consumers = 2, grouped = masked>
func.func @grouped_masked(%a: tensor<32x128x7168xf8E4M3FN>, %as: tensor<32x128x56xf32>, %b: tensor<32x4096x7168xf8E4M3FN>, %bs: tensor<32x32x56xf32>, %n: tensor<32xi32>) -> tensor<32x128x4096xbf16> {
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<32x128x7168xf8E4M3FN>, tensor<32x128x56xf32>, tensor<32x4096x7168xf8E4M3FN>, tensor<32x32x56xf32>, tensor<32xi32>) -> tensor<32x128x4096xbf16>
  return %0 : tensor<32x128x4096xbf16>
}

// Prefill (dynamic rows): the large-M grouped kernel, storing with TMA.
// CHECK-LABEL: func.func @grouped_prefill
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = contiguous, store = tma>
func.func @grouped_prefill(%a: tensor<?x7168xf8E4M3FN>, %as: tensor<?x56xf32>, %b: tensor<256x2048x7168xf8E4M3FN>, %bs: tensor<256x16x56xf32>, %o: tensor<257xi32>) -> tensor<?x2048xbf16> {
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %o : (tensor<?x7168xf8E4M3FN>, tensor<?x56xf32>, tensor<256x2048x7168xf8E4M3FN>, tensor<256x16x56xf32>, tensor<257xi32>) -> tensor<?x2048xbf16>
  return %0 : tensor<?x2048xbf16>
}

// Grouped GEMMs of static rows weigh 128x192 tiles over the tiles of all
// groups, as plain ones do (gemm-kernels.md "Session 11"): 4 groups of 2048
// rows x 7168 x 2048 are 3584 tiles of 128x128 (28 waves) or 2432 of 128x192
// (19 waves, 25.3 at 1.33 each); the grouped kernel stores with TMA.
// CHECK-LABEL: func.func @grouped_prefill_wide
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, grouped = contiguous, store = tma>
func.func @grouped_prefill_wide(%a: tensor<8192x2048xf8E4M3FN>, %as: tensor<8192x16xf32>, %b: tensor<4x7168x2048xf8E4M3FN>, %bs: tensor<4x56x16xf32>, %o: tensor<5xi32>) -> tensor<8192x7168xbf16> {
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %o : (tensor<8192x2048xf8E4M3FN>, tensor<8192x16xf32>, tensor<4x7168x2048xf8E4M3FN>, tensor<4x56x16xf32>, tensor<5xi32>) -> tensor<8192x7168xbf16>
  return %0 : tensor<8192x7168xbf16>
}

// Routed rows are multinomial: a 4096-token prefill's 32768 rows over 256
// experts are 128 +- 11 a group, so the configuration is chosen for 128 +
// ceil(sqrt(128 * 255 / 256)) = 140 rows: two 128-row tiles a group, and
// 128x192 tiles for the down projection (7168 x 2048; 128x64 for exactly
// 128 rows ran 2190 against 1507 us with routed groups). One group has
// all the rows: no allowance (64 rows stay a decode GEMM, @grouped_one).
// CHECK-LABEL: func.func @grouped_prefill_routed
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, grouped = contiguous, store = tma>
func.func @grouped_prefill_routed(%a: tensor<32768x2048xf8E4M3FN>, %as: tensor<32768x16xf32>, %b: tensor<256x7168x2048xf8E4M3FN>, %bs: tensor<256x56x16xf32>, %o: tensor<257xi32>) -> tensor<32768x7168xbf16> {
  %0 = kiln.grouped_scaled_matmul contiguous %a, %as, %b, %bs, %o : (tensor<32768x2048xf8E4M3FN>, tensor<32768x16xf32>, tensor<256x7168x2048xf8E4M3FN>, tensor<256x56x16xf32>, tensor<257xi32>) -> tensor<32768x7168xbf16>
  return %0 : tensor<32768x7168xbf16>
}

// Masked slabs of 256 rows: 8 experts x 4096 x 7168 are 512 tiles of
// 128x128 (4 waves), 352 of 128x192 (3 waves, 3.99): 128x192; 4 experts
// are 256 tiles (2 waves) against 176 (2 waves, 2.66): 128x128.
// CHECK-LABEL: func.func @grouped_masked_wide
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, grouped = masked, store = tma>
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, grouped = masked, store = tma>
func.func @grouped_masked_wide(%a: tensor<8x256x7168xf8E4M3FN>, %as: tensor<8x256x56xf32>, %b: tensor<8x4096x7168xf8E4M3FN>, %bs: tensor<8x32x56xf32>, %n: tensor<8xi32>, %a4: tensor<4x256x7168xf8E4M3FN>, %as4: tensor<4x256x56xf32>, %b4: tensor<4x4096x7168xf8E4M3FN>, %bs4: tensor<4x32x56xf32>, %n4: tensor<4xi32>) -> (tensor<8x256x4096xbf16>, tensor<4x256x4096xbf16>) {
  %0 = kiln.grouped_scaled_matmul masked %a, %as, %b, %bs, %n : (tensor<8x256x7168xf8E4M3FN>, tensor<8x256x56xf32>, tensor<8x4096x7168xf8E4M3FN>, tensor<8x32x56xf32>, tensor<8xi32>) -> tensor<8x256x4096xbf16>
  %1 = kiln.grouped_scaled_matmul masked %a4, %as4, %b4, %bs4, %n4 : (tensor<4x256x7168xf8E4M3FN>, tensor<4x256x56xf32>, tensor<4x4096x7168xf8E4M3FN>, tensor<4x32x56xf32>, tensor<4xi32>) -> tensor<4x256x4096xbf16>
  return %0, %1 : tensor<8x256x4096xbf16>, tensor<4x256x4096xbf16>
}

// Static M above 128: 128x192 tiles (their scales staged) where they need
// fewer waves by more than their cost: 1.33x for chains of at most 64 K
// blocks, 1.40x for longer ones (gemm-kernels.md "Session 9"); a split tail
// where the last partial wave is small next to the whole ones and the
// chains are long, counted at half its modelled gain. 2112 x 7168 at 4096
// rows: 5 waves of 128x128 tiles (the split tail: 4.6), 3 of 128x192; at
// 1000 rows: 2 (tail 1.6) against 1. Every unsplit tile of a multiple of 64
// columns stores with TMA when N % 8 == 0.
// CHECK-LABEL: func.func @wide_tiles_long_k
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, store = tma>
func.func @wide_tiles_long_k(%a: tensor<4096x7168xf8E4M3FN>, %as: tensor<4096x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<4096x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<4096x7168xf8E4M3FN>, tensor<4096x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<4096x2112xbf16>
  return %0 : tensor<4096x2112xbf16>
}

// CHECK-LABEL: func.func @wide_tiles_one_wave
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, store = tma>
func.func @wide_tiles_one_wave(%a: tensor<1000x7168xf8E4M3FN>, %as: tensor<1000x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<1000x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<1000x7168xf8E4M3FN>, tensor<1000x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<1000x2112xbf16>
  return %0 : tensor<1000x2112xbf16>
}

// 2048 x 2176 x 7168: 272 tiles, 2 waves and 8 tiles; the tail split 8
// ways (2.6 waves at half its gain) beats 2 waves of 128x192 tiles (2.66).
// CHECK-LABEL: func.func @split_tail
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split_k = 8, split = tail>
func.func @split_tail(%a: tensor<2048x7168xf8E4M3FN>, %as: tensor<2048x56xf32>, %b: tensor<2176x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<2048x2176xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<2048x7168xf8E4M3FN>, tensor<2048x56xf32>, tensor<2176x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<2048x2176xbf16>
  return %0 : tensor<2048x2176xbf16>
}

// CHECK-LABEL: func.func @wide_tiles_short_k
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, store = tma>
func.func @wide_tiles_short_k(%a: tensor<4096x512xf8E4M3FN>, %as: tensor<4096x4xf32>, %b: tensor<32768x512xf8E4M3FN>, %bs: tensor<256x4xf32>) -> tensor<4096x32768xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<4096x512xf8E4M3FN>, tensor<4096x4xf32>, tensor<32768x512xf8E4M3FN>, tensor<256x4xf32>) -> tensor<4096x32768xbf16>
  return %0 : tensor<4096x32768xbf16>
}

// 24576 columns: 47 waves of 128x128 tiles against 32 (42.6).
// CHECK-LABEL: func.func @wide_tiles_medium_k
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, store = tma>
func.func @wide_tiles_medium_k(%a: tensor<4096x1536xf8E4M3FN>, %as: tensor<4096x12xf32>, %b: tensor<24576x1536xf8E4M3FN>, %bs: tensor<192x12xf32>) -> tensor<4096x24576xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<4096x1536xf8E4M3FN>, tensor<4096x12xf32>, tensor<24576x1536xf8E4M3FN>, tensor<192x12xf32>) -> tensor<4096x24576xbf16>
  return %0 : tensor<4096x24576xbf16>
}

// 4096 x 4096 x 7168: 8 waves of 128x128 tiles, 6 of 128x192 (7.98), 4 of
// 128x256 (7.68): the widest, with plain stores (its 64 KB TMA staging and
// a 4-deep ring of 48 KB stages do not fit together), in 2-block clusters
// that share B.
// CHECK-LABEL: func.func @widest_tiles
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 256, stages = 4, consumers = 2, cluster_m = 2>}
func.func @widest_tiles(%a: tensor<4096x7168xf8E4M3FN>, %as: tensor<4096x56xf32>, %b: tensor<4096x7168xf8E4M3FN>, %bs: tensor<32x56xf32>) -> tensor<4096x4096xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<4096x7168xf8E4M3FN>, tensor<4096x56xf32>, tensor<4096x7168xf8E4M3FN>, tensor<32x56xf32>) -> tensor<4096x4096xbf16>
  return %0 : tensor<4096x4096xbf16>
}

// 7168 x 16384: 14 waves of 128x128 tiles against 10 of 128x192 chains of
// 128 blocks (14.0, not fewer) and 7 of clustered 128x256 ones (13.58).
// CHECK-LABEL: func.func @widest_tiles_long_k
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 256, stages = 4, consumers = 2, cluster_m = 2>}
func.func @widest_tiles_long_k(%a: tensor<4096x16384xf8E4M3FN>, %as: tensor<4096x128xf32>, %b: tensor<7168x16384xf8E4M3FN>, %bs: tensor<56x128xf32>) -> tensor<4096x7168xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<4096x16384xf8E4M3FN>, tensor<4096x128xf32>, tensor<7168x16384xf8E4M3FN>, tensor<56x128xf32>) -> tensor<4096x7168xbf16>
  return %0 : tensor<4096x7168xbf16>
}

// 7168 x 2048: 10 waves of 128x192 tiles (13.3) just beat 7 of clustered
// 128x256 ones (13.44; measured 101 against 103 us).
// CHECK-LABEL: func.func @wide_not_widest
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 192, stages = 4, consumers = 2, store = tma>}
func.func @wide_not_widest(%a: tensor<4096x2048xf8E4M3FN>, %as: tensor<4096x16xf32>, %b: tensor<7168x2048xf8E4M3FN>, %bs: tensor<56x16xf32>) -> tensor<4096x7168xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<4096x2048xf8E4M3FN>, tensor<4096x16xf32>, tensor<7168x2048xf8E4M3FN>, tensor<56x16xf32>) -> tensor<4096x7168xbf16>
  return %0 : tensor<4096x7168xbf16>
}

// TMA stores rows of 2N bytes: N = 1001 keeps the plain stores.
// CHECK-LABEL: func.func @ragged_n
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2>}
func.func @ragged_n(%a: tensor<4096x1024xf8E4M3FN>, %as: tensor<4096x8xf32>, %b: tensor<1001x1024xf8E4M3FN>, %bs: tensor<8x8xf32>) -> tensor<4096x1001xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<4096x1024xf8E4M3FN>, tensor<4096x8xf32>, tensor<1001x1024xf8E4M3FN>, tensor<8x8xf32>) -> tensor<4096x1001xbf16>
  return %0 : tensor<4096x1001xbf16>
}

// Split-K at any static M whose tiles leave multiprocessors idle: 300 rows
// x 2112 columns are 51 tiles of 128x128 for 132 multiprocessors.
// CHECK-LABEL: func.func @few_large_tiles
// CHECK: gemm_config = #kiln.gemm_config<block_m = 128, block_n = 128, stages = 4, consumers = 2, split_k = 2>}
func.func @few_large_tiles(%a: tensor<300x7168xf8E4M3FN>, %as: tensor<300x56xf32>, %b: tensor<2112x7168xf8E4M3FN>, %bs: tensor<17x56xf32>) -> tensor<300x2112xbf16> {
  %0 = kiln.scaled_matmul %a, %as, %b, %bs : (tensor<300x7168xf8E4M3FN>, tensor<300x56xf32>, tensor<2112x7168xf8E4M3FN>, tensor<17x56xf32>) -> tensor<300x2112xbf16>
  return %0 : tensor<300x2112xbf16>
}
