//===- kiln/checkpoint.h - DeepSeek-V3 checkpoints on disk ----------------===//
//
// A Hugging Face DeepSeek-V3 model directory: config.json plus either
// model.safetensors.index.json and its shards or a single model.safetensors.
// Opening one maps every shard read-only and checks every tensor's name,
// dtype and shape against the list the config implies before anything is
// used; all mismatches are reported together. Tensor data stay in the page
// cache: the 690 GB model is never read into memory as a whole.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CHECKPOINT_H
#define KILN_CHECKPOINT_H

#include "kiln/config.h"
#include "kiln/safetensors.h"
#include "kiln/weights.h"

#include <filesystem>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace kiln {

/// How a tensor of the DeepSeek-V3 layout is stored.
enum class TensorFormat {
  BF16,
  F32,
  /// A linear weight: F8_E4M3 with an F32 `<name>_scale_inv` of 128x128
  /// block scales in FP8 checkpoints, BF16 in unquantized ones.
  Linear,
  /// A linear weight that FP8 exports may leave in BF16 (the MTP eh_proj):
  /// BF16, or F8_E4M3 with its scales.
  LinearMaybeQuantized,
};

/// A tensor the config implies, without its scale tensor.
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  TensorFormat format = TensorFormat::BF16;
};

/// Every weight of the DeepSeek-V3 layout for `config`, in layer order:
/// embeddings, decoder layers 0..L-1, MTP layers L..L+nextn-1, final norm,
/// lm_head (unless tied).
std::vector<ExpectedTensor> expectedTensors(const ModelConfig &config);

/// "<weight>_scale_inv", the block scales of an FP8 weight.
std::string scaleInvName(const std::string &weightName);

/// Shape of the block scales of an [n, k] weight: [ceil(n/128), ceil(k/128)].
std::vector<int64_t> scaleInvShape(const std::vector<int64_t> &weightShape);

/// Names of the files of a model directory.
constexpr const char *kConfigFileName = "config.json";
constexpr const char *kIndexFileName = "model.safetensors.index.json";
constexpr const char *kSingleFileName = "model.safetensors";

/// An open, validated checkpoint. Const member functions are safe to call
/// from several threads.
class Checkpoint : public WeightSource {
public:
  /// Opens `modelDir`. Throws kiln::Error naming the file for a bad config,
  /// index or shard, and one kiln::Error listing every missing, unexpected
  /// or mismatched tensor; nothing stays mapped after a failure.
  explicit Checkpoint(const std::filesystem::path &modelDir);
  ~Checkpoint() override;
  Checkpoint(const Checkpoint &) = delete;
  Checkpoint &operator=(const Checkpoint &) = delete;

  const ModelConfig &config() const { return modelConfig; }
  const std::filesystem::path &directory() const { return modelDir; }
  /// The shard files (one for a single-file checkpoint), in name order.
  std::vector<std::filesystem::path> shardPaths() const;
  /// All tensor names, scales included, sorted.
  std::vector<std::string> tensorNames() const;
  /// Bytes of tensor data over all shards.
  uint64_t totalTensorBytes() const;

  bool contains(const std::string &name) const override;
  /// FP32 copy of `name`; FP8 weights are dequantized with their 128x128
  /// block scales, BF16 and F32 converted. Throws kiln::Error naming the
  /// tensor if it is absent or its shape is not `shape`.
  std::vector<float>
  loadFloat(const std::string &name,
            const std::vector<int64_t> &shape) const override;

  /// Raw access for device loaders: dtype, shape and a pointer into the
  /// shard's mapping (valid while the Checkpoint lives). Throws kiln::Error
  /// if absent.
  const TensorView &tensor(const std::string &name) const;
  /// The block scales of FP8 weight `name`; nullptr for BF16/F32 tensors.
  /// Throws kiln::Error if `name` is absent.
  const TensorView *scaleInv(const std::string &name) const;

private:
  std::filesystem::path modelDir;
  ModelConfig modelConfig;
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  std::unordered_map<std::string, const TensorView *> byName;
};

} // namespace kiln

#endif // KILN_CHECKPOINT_H
