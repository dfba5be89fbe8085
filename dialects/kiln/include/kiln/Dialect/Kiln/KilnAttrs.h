//===- KilnAttrs.h - kiln attributes and enums ------------------*- C++ -*-===//

#ifndef KILN_DIALECT_KILN_KILNATTRS_H
#define KILN_DIALECT_KILN_KILNATTRS_H

#include "mlir/IR/Attributes.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/DialectImplementation.h"

#include "kiln/Dialect/Kiln/KilnEnums.h.inc"

#define GET_ATTRDEF_CLASSES
#include "kiln/Dialect/Kiln/KilnAttrs.h.inc"

#endif // KILN_DIALECT_KILN_KILNATTRS_H
