//===- KilnDialect.cpp - the kiln dialect ---------------------------------===//

#include "kiln/Dialect/Kiln/KilnDialect.h"
#include "kiln/Dialect/Kiln/KilnOps.h"

#include "mlir/IR/OpImplementation.h"

using namespace mlir;

#include "kiln/Dialect/Kiln/KilnDialect.cpp.inc"

namespace {
/// Prints `#kiln.expert_parallel<...>` once, as `#ep = ...`, however many ops
/// of a layer share it.
struct KilnOpAsmInterface : public OpAsmDialectInterface {
  using OpAsmDialectInterface::OpAsmDialectInterface;
  AliasResult getAlias(Attribute attr, raw_ostream &os) const override {
    if (!isa<kiln::ExpertParallelAttr>(attr))
      return AliasResult::NoAlias;
    os << "ep";
    return AliasResult::OverridableAlias;
  }
};
} // namespace

void kiln::KilnDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "kiln/Dialect/Kiln/KilnOps.cpp.inc"
      >();
  registerAttributes();
  addInterfaces<KilnOpAsmInterface>();
}
