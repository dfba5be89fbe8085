// Garbage and truncated input exit with 1 and a located error, never a crash.
// RUN: printf '\x00\xff\x13 garbage }}} kiln %%%% ( ' > %t.bin
// RUN: not kiln-opt %t.bin 2>&1 | FileCheck %s --check-prefix=GARBAGE
// GARBAGE: {{.*}}.bin:1:{{[0-9]+}}: error:
// RUN: head -c 1500 %S/../../../examples/deepseek-v3/moe_layer.mlir | not kiln-opt 2>&1 | FileCheck %s --check-prefix=TRUNC
// TRUNC: <stdin>:{{[0-9]+}}:{{[0-9]+}}: error:
// Every prefix of the bundled layer, cut every 61 bytes.
// RUN: %python %S/truncations.py kiln-opt %S/../../../examples/deepseek-v3/moe_layer.mlir 61 | FileCheck %s --check-prefix=ALL
// ALL: truncations: {{[0-9]+}} rejected with a located error, 0 crashed
// Nesting deep enough to overflow MLIR's recursive parser is refused first.
// RUN: %python -c "print('func.func private @f() attributes {a = ' + '[' * 7000 + ']' * 7000 + '}')" > %t.deep.mlir
// RUN: not kiln-opt %t.deep.mlir 2>&1 | FileCheck %s --check-prefix=DEEP
// DEEP: deep.mlir:1:{{[0-9]+}}: error: brackets nested deeper than 1000 levels
// RUN: %python -c "print('func.func private @f() attributes {a = ' + '[' * 200 + ']' * 200 + '}')" | kiln-opt | FileCheck %s --check-prefix=NESTED
// NESTED: attributes {a = {{\[+}}
