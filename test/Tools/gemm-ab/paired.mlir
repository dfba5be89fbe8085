// scripts/device/gemm-ab.py's pairing of plan kernels with the peer, run
// with fakes of kiln-gemm-check and gemm_cublas.py (no GPU): the order
// alternates from pass to pass, the ratio is peer median / kernel median,
// shapes the peer does not support stay out of the geomean, a wrong kernel
// fails the run, and grouped plan lines and comments are skipped.
//
// RUN: rm -rf %t && mkdir -p %t/k
// RUN: printf '# a comment\nfast 4096x7168x2048,7x2112x7168\nslow 64x2112x7168\nfast 8:256:4096x7168:masked\n' > %t/plan.txt
// RUN: env FAKE_LOG=%t/log %python %kiln_src_root/scripts/device/gemm-ab.py --check "%python %S/fake_check.py" \
// RUN:   --peer "%python %S/fake_peer.py" --plan %t/plan.txt --kernel-dir %t/k --passes 2 --runs 5 --json %t/paired.json \
// RUN:   | FileCheck %s --check-prefix=PAIRED
// RUN: FileCheck %s --check-prefix=ORDER < %t/log
// RUN: %python -c "import json; r = json.load(open('%t/paired.json'))['rows']; print([x['ratio'] for x in r])" \
// RUN:   | FileCheck %s --check-prefix=JSON
//
// PAIRED: | 4096 | 7168 | 2048 | fast | 100.0 / 100.0 | 120.0 / 120.0 | 100.0 | 120.0 | 1203 | 1002 | - | 1.200 | ok |
// PAIRED: | 7 | 2112 | 7168 | fast | 100.0 / 100.0 | - / - | 100.0 | - | 2 | - | 151 (5%) | - | ok |
// PAIRED: | 64 | 2112 | 7168 | slow | 150.0 / 150.0 | 120.0 / 120.0 | 150.0 | 120.0 | 13 | 16 | 101 (3%) | 0.800 | ok |
// PAIRED: paired geomean cuBLAS / Kiln 0.980 over 2 shapes; minimum 0.800; 1 of 2 at or above 1.0
//
// ORDER: kiln fast 4096x7168x2048
// ORDER-NEXT: peer 4096x7168x2048
// ORDER-NEXT: kiln fast 7x2112x7168
// ORDER-NEXT: peer 7x2112x7168
// ORDER-NEXT: kiln slow 64x2112x7168
// ORDER-NEXT: peer 64x2112x7168
// ORDER-NEXT: peer 4096x7168x2048
// ORDER-NEXT: kiln fast 4096x7168x2048
// ORDER-NEXT: peer 7x2112x7168
// ORDER-NEXT: kiln fast 7x2112x7168
// ORDER-NEXT: peer 64x2112x7168
// ORDER-NEXT: kiln slow 64x2112x7168
// ORDER-NOT: {{.}}
//
// JSON: [1.2, None, 0.8]

// A wrong result fails the run and names the side.
// RUN: printf 'wrong 4096x7168x2048\n' > %t/wrong.txt
// RUN: env FAKE_LOG=%t/log2 not %python %kiln_src_root/scripts/device/gemm-ab.py --check "%python %S/fake_check.py" \
// RUN:   --peer "%python %S/fake_peer.py" --plan %t/wrong.txt --kernel-dir %t/k --passes 1 2>/dev/null \
// RUN:   | FileCheck %s --check-prefix=WRONG
// WRONG: | 4096 | 7168 | 2048 | wrong | 100.0 | 120.0 | 100.0 | 120.0 | 1203 | 1002 | - | 1.200 | Kiln: WRONG |

// A shape the plan has no kernel for is an error, before anything runs.
// RUN: env FAKE_LOG=%t/log3 not %python %kiln_src_root/scripts/device/gemm-ab.py --check "%python %S/fake_check.py" \
// RUN:   --peer "%python %S/fake_peer.py" --plan %t/plan.txt --shapes 1x2x3 2>&1 | FileCheck %s --check-prefix=MISSING
// MISSING: gemm-ab.py: {{.*}}plan.txt has no kernel for 1x2x3

// The A/B mode with the peer as a column ends with the ratio table.
// RUN: env FAKE_LOG=%t/log4 %python %kiln_src_root/scripts/device/gemm-ab.py --check "%python %S/fake_check.py" \
// RUN:   --peer "%python %S/fake_peer.py" --shapes 4096x7168x2048 --passes 2 %t/k/fast.cubin %t/k/slow.cubin cublas \
// RUN:   | FileCheck %s --check-prefix=AB
// AB: | 4096x7168x2048 | 100.0 / 100.0  `01234567` | 150.0 / 150.0  `01234567` | 120.0 / 120.0  `--------` |
// AB: cuBLAS median / kernel median over the passes:
// AB: | 4096x7168x2048 | 1.200 | 0.800 |

// --steady-ms: a compute-bound shape's pair gets the same launch count, about
// that many milliseconds of GPU time by the roofline estimate (4096 x 7168 x
// 2048: 2 x 4096 x 7168 x 2048 / 1.1e15 s + 4 us = 113.3 us, 200 ms -> 1765);
// memory-bound shapes keep --runs; the header and the JSON say so.
// RUN: env FAKE_LOG=%t/log5 FAKE_LOG_RUNS=1 %python %kiln_src_root/scripts/device/gemm-ab.py --check "%python %S/fake_check.py" \
// RUN:   --peer "%python %S/fake_peer.py" --plan %t/plan.txt --kernel-dir %t/k --passes 1 --runs 5 --steady-ms 200 \
// RUN:   --hbm-gbps 4800 --json %t/steady.json | FileCheck %s --check-prefix=STEADY
// RUN: FileCheck %s --check-prefix=STEADY-RUNS < %t/log5
// RUN: %python -c "import json; j = json.load(open('%t/steady.json')); print(j['steady_ms'], j['hbm_gbps'], j['runs_per_shape'])" \
// RUN:   | FileCheck %s --check-prefix=STEADY-JSON
// STEADY: 1 passes of ~200 ms of launches per process (steady state; 5-1765 launches)
// STEADY: | 64 | 2112 | 7168 | slow | 150.0 | 120.0 | 150.0 | 120.0 | 13 | 16 | 101 (2%) | 0.800 | ok |
// STEADY-RUNS: kiln fast 4096x7168x2048 runs 1765
// STEADY-RUNS-NEXT: peer 4096x7168x2048 runs 1765
// STEADY-RUNS-NEXT: kiln fast 7x2112x7168 runs 5
// STEADY-RUNS-NEXT: peer 7x2112x7168 runs 5
// STEADY-RUNS-NEXT: kiln slow 64x2112x7168 runs 5
// STEADY-RUNS-NEXT: peer 64x2112x7168 runs 5
// STEADY-JSON: 200.0 4800.0 {'4096x7168x2048': 1765, '7x2112x7168': 5, '64x2112x7168': 5}

// --steady-ms is for the paired table.
// RUN: env FAKE_LOG=%t/log6 not %python %kiln_src_root/scripts/device/gemm-ab.py --check "%python %S/fake_check.py" \
// RUN:   --peer "%python %S/fake_peer.py" --shapes 4096x7168x2048 --steady-ms 200 %t/k/fast.cubin 2>&1 \
// RUN:   | FileCheck %s --check-prefix=STEADY-PLAN
// STEADY-PLAN: --steady-ms takes a positive time and --plan
