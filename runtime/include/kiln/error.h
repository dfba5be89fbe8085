//===- kiln/error.h - errors of the runtime -------------------------------===//
//
// The runtime reports bad input (a missing file, a truncated shard, a wrong
// dtype, an inconsistent config) by throwing kiln::Error with a message that
// names the file, the tensor or the field and what was expected. Nothing
// aborts the process; the command line and the C API catch it at their edge.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_ERROR_H
#define KILN_ERROR_H

#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
public:
  explicit Error(const std::string &message) : std::runtime_error(message) {}
};

} // namespace kiln

#endif // KILN_ERROR_H
