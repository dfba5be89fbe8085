//===- kiln/weights.h - where a backend gets its weights from -------------===//
//
// The seam between checkpoint loading and the backends: a backend asks for a
// tensor by its checkpoint name and gets it as it needs it. The checkpoint
// loader implements it over memory-mapped safetensors shards; tests implement
// it over random tensors in memory.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_WEIGHTS_H
#define KILN_WEIGHTS_H

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

class WeightSource {
public:
  virtual ~WeightSource() = default;

  /// Whether the checkpoint holds tensor `name`.
  virtual bool contains(const std::string &name) const = 0;

  /// Tensor `name` in FP32, row-major, with shape `shape`: FP8 weights are
  /// dequantized with their `<name>_scale_inv` 128x128 block scales, BF16 and
  /// F32 tensors converted. Throws kiln::Error naming the tensor if it is
  /// missing or its shape is not `shape`.
  virtual std::vector<float>
  loadFloat(const std::string &name,
            const std::vector<int64_t> &shape) const = 0;
};

} // namespace kiln

#endif // KILN_WEIGHTS_H
