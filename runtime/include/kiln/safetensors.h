//===- kiln/safetensors.h - memory-mapped safetensors files ---------------===//
//
// The safetensors format: an 8-byte little-endian header length N, N bytes of
// JSON mapping each tensor name to {dtype, shape, data_offsets} (offsets
// relative to the byte buffer after the header; an optional "__metadata__"
// maps strings to strings), then the byte buffer.
//
// SafetensorsFile maps a file read-only and validates the whole header before
// anything is used, so tensor data is only ever read through checked,
// in-bounds views and never copied wholesale. SafetensorsWriter streams a file
// tensor by tensor for the tiny checkpoint generator, tools and tests.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_SAFETENSORS_H
#define KILN_SAFETENSORS_H

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kiln {

/// Element types of the safetensors format (sub-byte types are not listed:
/// files using them are rejected when opened).
enum class DType {
  Bool,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  F64,
  I64,
  U64,
};

/// Bytes per element.
uint64_t dtypeSize(DType dtype);
/// The format's spelling, e.g. "F8_E4M3".
const char *dtypeName(DType dtype);
/// Parses the format's spelling; nullopt for an unknown string.
std::optional<DType> parseDType(std::string_view name);

/// "[7168, 2048]".
std::string formatShape(const std::vector<int64_t> &shape);
/// Product of the dimensions (1 for a scalar).
int64_t numElements(const std::vector<int64_t> &shape);

/// One tensor of an open file. `data` points into the file's read-only
/// mapping and stays valid as long as the SafetensorsFile does.
struct TensorView {
  std::string name;
  DType dtype = DType::U8;
  std::vector<int64_t> shape;
  const uint8_t *data = nullptr;
  uint64_t byteSize = 0;
  /// Absolute offset of the first byte in the file (for loaders that read
  /// with pread/O_DIRECT/cuFile instead of the mapping).
  uint64_t fileOffset = 0;
  /// The file it lives in (for error messages).
  const std::filesystem::path *file = nullptr;
};

/// Tensor `tensor` (BF16 or F32) converted to FP32. Other dtypes,
/// including F8_E4M3, whose values need their block scales, throw
/// kiln::Error naming the tensor and the file.
std::vector<float> decodeFloat(const TensorView &tensor);

/// A safetensors file, memory-mapped read-only. The file must not shrink
/// while it is open: as with any mapping, touching pages past its new end
/// raises SIGBUS. Checkpoints are immutable in practice; validation at open
/// catches files that were truncated before.
class SafetensorsFile {
public:
  /// Opens, maps and validates `path`: header length within the file, JSON
  /// header, known dtypes, non-negative shapes, data_offsets inside the
  /// buffer, consistent with dtype size * element count, neither overlapping
  /// nor leaving holes. Throws kiln::Error naming the file (and the tensor).
  explicit SafetensorsFile(std::filesystem::path path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  const std::filesystem::path &path() const { return filePath; }
  uint64_t fileSize() const { return mappedSize; }
  /// Tensors in the order of their data in the file.
  const std::vector<TensorView> &tensors() const { return views; }
  /// nullptr when the file has no tensor `name`.
  const TensorView *find(const std::string &name) const;
  /// Throws kiln::Error naming the file when it has no tensor `name`.
  const TensorView &get(const std::string &name) const;
  /// The "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string> &metadata() const { return meta; }
  /// Asks the kernel to start reading `tensor`'s pages (madvise WILLNEED).
  void prefetch(const TensorView &tensor) const;

private:
  std::filesystem::path filePath;
  void *mapping = nullptr;
  uint64_t mappedSize = 0;
  std::vector<TensorView> views;
  std::unordered_map<std::string, size_t> byName;
  std::map<std::string, std::string> meta;
};

/// Name, dtype and shape of a tensor to write.
struct TensorHeader {
  std::string name;
  DType dtype = DType::U8;
  std::vector<int64_t> shape;
};

/// Writes a safetensors file: the header up front (all tensors declared in
/// the constructor, data laid out in that order, header padded to 8 bytes so
/// the data are aligned), then each tensor's bytes in order. The file appears
/// at `path` only on close(); a writer destroyed before that removes its
/// partial file.
class SafetensorsWriter {
public:
  SafetensorsWriter(std::filesystem::path path,
                    std::vector<TensorHeader> tensors,
                    const std::map<std::string, std::string> &metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter &) = delete;
  SafetensorsWriter &operator=(const SafetensorsWriter &) = delete;

  /// Writes the data of the next declared tensor, which must be `name` and
  /// exactly dtype size * element count bytes.
  void write(const std::string &name, const void *bytes, uint64_t size);
  /// Checks that every tensor was written, flushes and renames the file into
  /// place. Throws kiln::Error on I/O errors.
  void close();

private:
  std::filesystem::path finalPath;
  std::filesystem::path partialPath;
  std::vector<TensorHeader> declared;
  size_t nextTensor = 0;
  std::FILE *out = nullptr;
};

} // namespace kiln

#endif // KILN_SAFETENSORS_H
