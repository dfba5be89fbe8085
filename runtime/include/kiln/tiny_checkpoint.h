//===- kiln/tiny_checkpoint.h - random checkpoints for tests --------------===//
//
// Writes random DeepSeek-V3 checkpoints of any size in exactly the layout of
// the real one (config.json, sharded safetensors, index), so every loader path
// is tested without the 690 GB model. Output bytes depend only on the config
// and the seed: the generator uses its own PRNG and integer-built normals, no
// std:: distributions and no libm transcendentals, whose results differ
// between standard libraries and CPUs.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_TINY_CHECKPOINT_H
#define KILN_TINY_CHECKPOINT_H

#include "kiln/checkpoint.h"
#include "kiln/config.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kiln {

/// The values the generator draws for `tensor` with `seed`, row-major, before
/// rounding to BF16 or quantizing to FP8. Each tensor has its own stream
/// (seeded from `seed` and its name), so any one can be regenerated alone:
/// - norms: 1 + 0.1 N(0,1), near 1 but not 1, so a dropped weight shows;
/// - embeddings: N(0,1), hidden states start at RMS 1;
/// - linear weights and output heads [n, k]: N(0,1) / sqrt(k), outputs O(1);
/// - e_score_correction_bias: uniform in [0, 0.05], so that sigmoid score +
///   bias > 0 and masking dropped groups with 0 (as HF does) or -inf agree.
std::vector<float> tinyTensorValues(const ExpectedTensor &tensor,
                                    uint64_t seed);

/// Writes a random checkpoint for `config` into `dir` (created if needed):
/// config.json, and with numShards >= 2 the shards
/// model-0000k-of-0000n.safetensors plus model.safetensors.index.json, with
/// numShards == 1 a single model.safetensors. Linear weights are quantized to
/// E4M3 per 128x128 block (scale_inv = amax / 448) when the config has a
/// quantization_config, BF16 otherwise; the MTP eh_proj is BF16. Throws
/// kiln::Error for an invalid config or an I/O failure.
void writeTinyCheckpoint(const ModelConfig &config,
                         const std::filesystem::path &dir, uint64_t seed,
                         int numShards = 2);

/// Shard file name in the Hugging Face convention:
/// "model-00001-of-00002.safetensors".
std::string shardFileName(int index, int count);

} // namespace kiln

#endif // KILN_TINY_CHECKPOINT_H
