// kilnc's errors: bad command lines and bad inputs end with a message that
// names the file or option and exit status 1, never a crash.
// RUN: not kilnc %t.missing.json -o %t.kiln 2>&1 | FileCheck %s --check-prefix=MISSING
// RUN: not kilnc %t.missing.mlir -o %t.kiln 2>&1 | FileCheck %s --check-prefix=MISSING-GRAPH
// RUN: echo '{"model_type": "deepseek_v3",' > %t.truncated.json
// RUN: not kilnc %t.truncated.json -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=BAD-JSON
// RUN: echo '{"model_type": "deepseek_v3"}' > %t.incomplete.json
// RUN: not kilnc %t.incomplete.json -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=BAD-CONFIG
// RUN: not kilnc --frobnicate %kiln_src_root/examples/tiny/config.json 2>&1 | FileCheck %s --check-prefix=UNKNOWN-OPTION
// RUN: not kilnc 2>&1 | FileCheck %s --check-prefix=NO-INPUT
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json 2>&1 | FileCheck %s --check-prefix=NO-OUTPUT
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --ep 9 -o %t.kiln 2>&1 | FileCheck %s --check-prefix=EP
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --kv-cache-dtype f16 -o %t.kiln 2>&1 | FileCheck %s --check-prefix=KV-DTYPE
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --max-batch 0 -o %t.kiln 2>&1 | FileCheck %s --check-prefix=MAX-BATCH
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --emit=bytecode -o %t.kiln 2>&1 | FileCheck %s --check-prefix=EMIT
// RUN: not kilnc %kiln_src_root/examples/tiny/config.json --ptxas %t.no-ptxas -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=PTXAS
// A BF16 checkpoint has no FP8 weights for the GEMMs.
// RUN: %python -c "import json, sys; c = json.load(open(sys.argv[1])); del c['quantization_config']; json.dump(c, open(sys.argv[2], 'w'))" %kiln_src_root/examples/tiny/config.json %t.bf16.json
// RUN: not kilnc %t.bf16.json -q -o %t.kiln 2>&1 | FileCheck %s --check-prefix=BF16

// MISSING: kilnc: error: cannot read '{{.*}}missing.json': No such file or directory
// MISSING-GRAPH: kilnc: error: cannot open input file '{{.*}}missing.mlir': No such file or directory
// BAD-JSON: kilnc: error: {{.*}}truncated.json: not valid JSON
// BAD-CONFIG: kilnc: error: {{.*}}incomplete.json: field "vocab_size" is missing; it is required
// UNKNOWN-OPTION: Unknown command line argument '--frobnicate'
// NO-INPUT: Not enough positional command line arguments specified!
// NO-OUTPUT: kilnc: error: -o is required for --emit=artifact
// EP: kilnc: error: --ep 9: at most 8 expert-parallel ranks (one host's GPUs)
// KV-DTYPE: kilnc: error: --kv-cache-dtype must be bf16 or fp8, got 'f16'
// MAX-BATCH: kilnc: error: --max-batch must be positive, got 0
// EMIT: Cannot find option named 'bytecode'!
// PTXAS: kilnc: error: ptxas ({{.*}}no-ptxas) failed for kiln_gemm_fp8_m64n64s8c1
// BF16: kilnc: error: {{.*}}bf16.json: a BF16 checkpoint (no quantization_config) cannot be compiled
