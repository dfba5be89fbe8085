// Garbage and truncated input exit with 1 and a located error, never a crash.
// RUN: printf '\x00\xff\x13 garbage }}} kiln %%%% ( ' > %t.bin
// RUN: not kiln-opt %t.bin 2>&1 | FileCheck %s --check-prefix=GARBAGE
// GARBAGE: {{.*}}.bin:1:{{[0-9]+}}: error:
// RUN: head -c 1500 %S/../../../examples/deepseek-v3/moe_layer.mlir | not kiln-opt 2>&1 | FileCheck %s --check-prefix=TRUNC
// TRUNC: <stdin>:{{[0-9]+}}:{{[0-9]+}}: error:
// Every prefix of the bundled layer, cut every 61 bytes.
// RUN: %python %S/truncations.py kiln-opt %S/../../../examples/deepseek-v3/moe_layer.mlir 61 | FileCheck %s --check-prefix=ALL
// ALL: truncations: {{[0-9]+}} rejected with a located error, 0 crashed
