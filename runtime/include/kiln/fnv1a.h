//===- kiln/fnv1a.h - 64-bit FNV-1a hashing of bytes
//-----------------------===//
//
// One definition of the hash the artifact's model hash, the tiny
// checkpoint's per-tensor seeds and kiln-gemm-check's output digests use.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_FNV1A_H
#define KILN_FNV1A_H

#include <cstddef>
#include <cstdint>

namespace kiln {

/// 64-bit FNV-1a over `size` bytes at `data`.
inline uint64_t fnv1a64(const void *data, size_t size) {
  const unsigned char *bytes = static_cast<const unsigned char *>(data);
  uint64_t hash = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i)
    hash = (hash ^ bytes[i]) * 0x100000001b3ull;
  return hash;
}

} // namespace kiln

#endif // KILN_FNV1A_H
