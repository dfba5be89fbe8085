//===- safetensors.cpp - memory-mapped safetensors files ------------------===//

#include "kiln/safetensors.h"

#include "kiln/error.h"
#include "kiln/fp8.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kiln {

namespace {

using Json = nlohmann::json;

constexpr uint64_t kHeaderLengthBytes = 8;
/// The reference implementation's limit; real DeepSeek-V3 shards have headers
/// of a few hundred kilobytes.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr const char *kMetadataKey = "__metadata__";

struct DTypeInfo {
  DType dtype;
  const char *name;
  uint64_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::Bool, "BOOL", 1},       {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},           {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},         {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},       {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},         {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},         {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
};

const DTypeInfo &info(DType dtype) {
  for (const DTypeInfo &entry : kDTypes)
    if (entry.dtype == dtype)
      return entry;
  throw Error("internal error: unknown DType value");
}

std::string systemError() { return std::strerror(errno); }

/// Cleanup on an error path: the original error is the one to report.
void removeQuietly(const std::filesystem::path &path) {
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
}

/// Closes a file descriptor on every path out of the constructor.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() {
    if (fd >= 0)
      ::close(fd);
  }
};

/// Reads a non-negative integer that fits in 64 bits from a header entry.
bool readUnsigned(const Json &value, uint64_t &out) {
  if (value.is_number_unsigned()) {
    out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

} // namespace

uint64_t dtypeSize(DType dtype) { return info(dtype).size; }

const char *dtypeName(DType dtype) { return info(dtype).name; }

std::optional<DType> parseDType(std::string_view name) {
  for (const DTypeInfo &entry : kDTypes)
    if (name == entry.name)
      return entry.dtype;
  return std::nullopt;
}

std::string formatShape(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

int64_t numElements(const std::vector<int64_t> &shape) {
  int64_t count = 1;
  for (int64_t dim : shape)
    count *= dim;
  return count;
}

std::vector<float> decodeFloat(const TensorView &tensor) {
  int64_t count = numElements(tensor.shape);
  std::vector<float> values(static_cast<size_t>(count));
  // Tensors need not be aligned in the file: copy element by element.
  if (tensor.dtype == DType::F32) {
    std::memcpy(values.data(), tensor.data, count * sizeof(float));
  } else if (tensor.dtype == DType::BF16) {
    for (int64_t i = 0; i < count; ++i) {
      uint16_t bits;
      std::memcpy(&bits, tensor.data + 2 * i, sizeof(bits));
      values[i] = decodeBF16(bits);
    }
  } else {
    std::string where = tensor.file ? tensor.file->string() + ": " : "";
    throw Error(where + "tensor \"" + tensor.name + "\" has dtype " +
                dtypeName(tensor.dtype) +
                (tensor.dtype == DType::F8_E4M3
                     ? ", which needs its block scales to be decoded"
                     : "; only BF16 and F32 convert to float"));
  }
  return values;
}

SafetensorsFile::SafetensorsFile(std::filesystem::path path)
    : filePath(std::move(path)) {
  const std::string where = filePath.string() + ": ";
  FileDescriptor file{::open(filePath.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0)
    throw Error(where + "cannot open: " + systemError());
  struct stat status;
  if (::fstat(file.fd, &status) != 0)
    throw Error(where + "cannot stat: " + systemError());
  if (!S_ISREG(status.st_mode))
    throw Error(where + "not a regular file");
  uint64_t size = static_cast<uint64_t>(status.st_size);
  if (size < kHeaderLengthBytes)
    throw Error(where + "truncated: " + std::to_string(size) +
                " bytes, shorter than the 8-byte header length");

  // MAP_PRIVATE + PROT_READ: pages come from the page cache on demand, so a
  // 690 GB checkpoint costs address space, not memory.
  void *base = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, file.fd, 0);
  if (base == MAP_FAILED)
    throw Error(where + "cannot map: " + systemError());
  mapping = base;
  mappedSize = size;
  try {
    const auto *bytes = static_cast<const uint8_t *>(base);
    uint64_t headerBytes = 0;
    for (int i = 7; i >= 0; --i)
      headerBytes = (headerBytes << 8) | bytes[i];
    if (headerBytes > size - kHeaderLengthBytes)
      throw Error(where + "truncated or corrupt: the header length says " +
                  std::to_string(headerBytes) + " bytes of JSON but only " +
                  std::to_string(size - kHeaderLengthBytes) + " follow");
    if (headerBytes > kMaxHeaderBytes)
      throw Error(where + "corrupt: header length " +
                  std::to_string(headerBytes) + " exceeds the 100 MB limit");

    const char *headerBegin =
        reinterpret_cast<const char *>(bytes + kHeaderLengthBytes);
    Json header;
    try {
      header = Json::parse(headerBegin, headerBegin + headerBytes);
    } catch (const Json::exception &e) {
      throw Error(where + "corrupt or truncated header: not valid JSON (" +
                  e.what() + ")");
    }
    if (!header.is_object())
      throw Error(where + "corrupt header: expected a JSON object, got " +
                  header.type_name());

    const uint64_t dataStart = kHeaderLengthBytes + headerBytes;
    const uint64_t dataSize = size - dataStart;
    for (const auto &[name, entry] : header.items()) {
      if (name == kMetadataKey) {
        if (!entry.is_object())
          throw Error(where + "\"__metadata__\" must be an object of strings");
        for (const auto &[key, value] : entry.items()) {
          if (!value.is_string())
            throw Error(where + "\"__metadata__\" entry \"" + key +
                        "\" must be a string");
          meta[key] = value.get<std::string>();
        }
        continue;
      }
      const std::string tensorWhere = where + "tensor \"" + name + "\": ";
      if (!entry.is_object())
        throw Error(tensorWhere + "header entry must be an object");
      auto dtypeField = entry.find("dtype");
      auto shapeField = entry.find("shape");
      auto offsetsField = entry.find("data_offsets");
      if (dtypeField == entry.end() || !dtypeField->is_string())
        throw Error(tensorWhere + "\"dtype\" must be a string");
      std::optional<DType> dtype = parseDType(dtypeField->get<std::string>());
      if (!dtype)
        throw Error(tensorWhere + "unknown dtype \"" +
                    dtypeField->get<std::string>() + "\"");
      if (shapeField == entry.end() || !shapeField->is_array())
        throw Error(tensorWhere + "\"shape\" must be a list of integers");
      if (offsetsField == entry.end() || !offsetsField->is_array() ||
          offsetsField->size() != 2)
        throw Error(tensorWhere + "\"data_offsets\" must be [begin, end]");

      TensorView view;
      view.name = name;
      view.dtype = *dtype;
      view.file = &filePath;
      // Count bytes in 64 bits with overflow checks: a corrupt shape must not
      // wrap around into a small, plausible size.
      uint64_t byteCount = dtypeSize(*dtype);
      for (const Json &dim : *shapeField) {
        uint64_t extent;
        if (!readUnsigned(dim, extent) ||
            extent > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          throw Error(tensorWhere + "\"shape\" must hold non-negative " +
                      "integers, got " + shapeField->dump());
        if (extent != 0 &&
            byteCount > std::numeric_limits<uint64_t>::max() / extent)
          throw Error(tensorWhere + "shape " + shapeField->dump() +
                      " overflows 64 bits");
        byteCount *= extent;
        view.shape.push_back(static_cast<int64_t>(extent));
      }
      uint64_t begin, end;
      if (!readUnsigned((*offsetsField)[0], begin) ||
          !readUnsigned((*offsetsField)[1], end) || end < begin)
        throw Error(tensorWhere + "\"data_offsets\" " + offsetsField->dump() +
                    " must be non-negative with begin <= end");
      if (end > dataSize)
        throw Error(tensorWhere + "data_offsets " + offsetsField->dump() +
                    " exceed the " + std::to_string(dataSize) +
                    "-byte data buffer: the file is truncated or corrupt");
      if (end - begin != byteCount)
        throw Error(tensorWhere + "data_offsets " + offsetsField->dump() +
                    " span " + std::to_string(end - begin) + " bytes but " +
                    dtypeName(*dtype) + " " + formatShape(view.shape) +
                    " needs " + std::to_string(byteCount));
      view.data = bytes + dataStart + begin;
      view.byteSize = byteCount;
      view.fileOffset = dataStart + begin;
      views.push_back(std::move(view));
    }

    // The buffer must be tiled exactly, as the reference implementation
    // demands: overlaps alias two tensors, holes and trailing bytes mean the
    // header does not describe the file it sits in.
    std::sort(views.begin(), views.end(),
              [](const TensorView &a, const TensorView &b) {
                return a.fileOffset != b.fileOffset
                           ? a.fileOffset < b.fileOffset
                           : a.byteSize < b.byteSize;
              });
    uint64_t covered = dataStart;
    const TensorView *previous = nullptr;
    for (const TensorView &view : views) {
      if (view.fileOffset < covered)
        throw Error(where + "tensors \"" + previous->name + "\" and \"" +
                    view.name + "\" overlap in the data buffer");
      if (view.fileOffset > covered)
        throw Error(where + "corrupt: data bytes [" +
                    std::to_string(covered - dataStart) + ", " +
                    std::to_string(view.fileOffset - dataStart) +
                    ") belong to no tensor");
      covered = view.fileOffset + view.byteSize;
      previous = &view;
    }
    if (covered != size)
      throw Error(where + "corrupt: " + std::to_string(size - covered) +
                  " bytes after the last tensor's data");
    for (size_t i = 0; i < views.size(); ++i)
      byName.emplace(views[i].name, i);
  } catch (...) {
    ::munmap(mapping, mappedSize);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping)
    ::munmap(mapping, mappedSize);
}

const TensorView *SafetensorsFile::find(const std::string &name) const {
  auto it = byName.find(name);
  return it == byName.end() ? nullptr : &views[it->second];
}

const TensorView &SafetensorsFile::get(const std::string &name) const {
  if (const TensorView *view = find(name))
    return *view;
  throw Error(filePath.string() + ": no tensor \"" + name + "\"");
}

void SafetensorsFile::prefetch(const TensorView &tensor) const {
  if (tensor.byteSize == 0)
    return;
  uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t begin = tensor.fileOffset / page * page;
  // Advice only: a failure changes speed, not results.
  ::madvise(static_cast<char *>(mapping) + begin,
            tensor.fileOffset + tensor.byteSize - begin, MADV_WILLNEED);
}

SafetensorsWriter::SafetensorsWriter(
    std::filesystem::path path, std::vector<TensorHeader> tensors,
    const std::map<std::string, std::string> &metadata)
    : finalPath(std::move(path)), declared(std::move(tensors)) {
  partialPath = finalPath;
  partialPath += ".partial";
  const std::string where = finalPath.string() + ": ";

  Json header = Json::object();
  if (!metadata.empty())
    header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const TensorHeader &tensor : declared) {
    if (tensor.name.empty() || tensor.name == kMetadataKey ||
        header.contains(tensor.name))
      throw Error(where + "invalid or duplicate tensor name \"" + tensor.name +
                  "\"");
    uint64_t bytes = dtypeSize(tensor.dtype);
    for (int64_t dim : tensor.shape) {
      if (dim < 0)
        throw Error(where + "tensor \"" + tensor.name + "\" has shape " +
                    formatShape(tensor.shape));
      bytes *= static_cast<uint64_t>(dim);
    }
    header[tensor.name] = {{"dtype", dtypeName(tensor.dtype)},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // Pad with spaces (valid JSON whitespace) so the data start 8-aligned.
  text.append((kHeaderLengthBytes - text.size() % kHeaderLengthBytes) %
                  kHeaderLengthBytes,
              ' ');

  out = std::fopen(partialPath.c_str(), "wb");
  if (!out)
    throw Error(partialPath.string() + ": cannot create: " + systemError());
  uint8_t length[kHeaderLengthBytes];
  for (size_t i = 0; i < kHeaderLengthBytes; ++i)
    length[i] =
        static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  if (std::fwrite(length, 1, sizeof(length), out) != sizeof(length) ||
      std::fwrite(text.data(), 1, text.size(), out) != text.size()) {
    std::fclose(out);
    out = nullptr;
    std::string reason = systemError();
    removeQuietly(partialPath);
    throw Error(partialPath.string() + ": write error: " + reason);
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  if (out) {
    std::fclose(out);
    removeQuietly(partialPath);
  }
}

void SafetensorsWriter::write(const std::string &name, const void *bytes,
                              uint64_t size) {
  const std::string where = finalPath.string() + ": ";
  if (!out)
    throw Error(where + "write after close");
  if (nextTensor >= declared.size() || declared[nextTensor].name != name)
    throw Error(
        where + "tensor \"" + name + "\" written out of order; expected " +
        (nextTensor < declared.size() ? "\"" + declared[nextTensor].name + "\""
                                      : std::string("no more tensors")));
  const TensorHeader &tensor = declared[nextTensor];
  uint64_t expected = dtypeSize(tensor.dtype) *
                      static_cast<uint64_t>(numElements(tensor.shape));
  if (size != expected)
    throw Error(where + "tensor \"" + name + "\" (" + dtypeName(tensor.dtype) +
                " " + formatShape(tensor.shape) + ") needs " +
                std::to_string(expected) + " bytes, got " +
                std::to_string(size));
  if (size && std::fwrite(bytes, 1, size, out) != size)
    throw Error(partialPath.string() + ": write error: " + systemError());
  ++nextTensor;
}

void SafetensorsWriter::close() {
  const std::string where = finalPath.string() + ": ";
  if (!out)
    throw Error(where + "already closed");
  if (nextTensor != declared.size())
    throw Error(where + "closed after " + std::to_string(nextTensor) + " of " +
                std::to_string(declared.size()) + " tensors; next is \"" +
                declared[nextTensor].name + "\"");
  std::FILE *file = out;
  out = nullptr;
  if (std::fclose(file) != 0) {
    std::string reason = systemError();
    removeQuietly(partialPath);
    throw Error(partialPath.string() + ": write error: " + reason);
  }
  std::error_code error;
  std::filesystem::rename(partialPath, finalPath, error);
  if (error) {
    removeQuietly(partialPath);
    throw Error(where +
                "cannot move the finished file into place: " + error.message());
  }
}

} // namespace kiln
