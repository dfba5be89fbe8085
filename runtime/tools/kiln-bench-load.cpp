//===- kiln-bench-load.cpp - checkpoint loading throughput ----------------===//
//
// Measures the checkpoint side of start-up:
//  (a) the tiny example checkpoint: generate it, open + validate it, then
//      dequantize every tensor to FP32 (what the CPU backend does);
//  (b) a synthetic single-shard safetensors file of FP8 tensors (2 GiB by
//      default): every byte read through the memory-mapped reader, once after
//      evicting the file from the page cache (fdatasync + POSIX_FADV_DONTNEED,
//      which needs no root; the residency before the pass is measured with
//      mincore and printed) and once warm.
//
// Usage: kiln-bench-load [--config PATH] [--dir DIR] [--synthetic-mib N]
//
//===----------------------------------------------------------------------===//

#include "kiln/checkpoint.h"
#include "kiln/error.h"
#include "kiln/safetensors.h"
#include "kiln/tiny_checkpoint.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Row {
  std::string phase;
  uint64_t bytes;
  double seconds;
  std::string note;
};

void printTable(const std::vector<Row> &rows) {
  std::printf("\n%-44s %12s %9s %10s  %s\n", "phase", "MB", "seconds", "MB/s",
              "page cache");
  for (const Row &row : rows) {
    // Rows that read no tensor data (bytes == 0) have no throughput.
    if (row.bytes == 0)
      std::printf("%-44s %12s %9.3f %10s  %s\n", row.phase.c_str(), "-",
                  row.seconds, "-", row.note.c_str());
    else
      std::printf("%-44s %12.1f %9.3f %10.1f  %s\n", row.phase.c_str(),
                  row.bytes / 1e6, row.seconds, row.bytes / 1e6 / row.seconds,
                  row.note.c_str());
  }
}

/// Removes a scratch directory however the benchmark ends.
struct ScratchDir {
  fs::path path;
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

/// Reads every byte (as 64-bit words, four independent sums so the loop is
/// limited by memory, not by one dependency chain).
uint64_t touchBytes(const uint8_t *data, uint64_t size) {
  uint64_t sums[4] = {0, 0, 0, 0};
  uint64_t words = size / 8;
  uint64_t i = 0;
  for (; i + 4 <= words; i += 4)
    for (int lane = 0; lane < 4; ++lane) {
      uint64_t word;
      std::memcpy(&word, data + 8 * (i + lane), sizeof(word));
      sums[lane] += word;
    }
  for (; i < words; ++i) {
    uint64_t word;
    std::memcpy(&word, data + 8 * i, sizeof(word));
    sums[0] += word;
  }
  for (uint64_t b = words * 8; b < size; ++b)
    sums[1] += data[b];
  return sums[0] ^ sums[1] ^ sums[2] ^ sums[3];
}

/// Fraction of `path`'s pages in the page cache.
double residentFraction(const fs::path &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  uint64_t size = fs::file_size(path);
  void *map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED)
    return -1;
  uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  double fraction = -1;
  if (::mincore(map, size, resident.data()) == 0) {
    uint64_t count = 0;
    for (unsigned char flag : resident)
      count += flag & 1;
    fraction = static_cast<double>(count) / resident.size();
  }
  ::munmap(map, size);
  return fraction;
}

/// Writes back and drops `path`'s pages from the page cache.
void evictFromPageCache(const fs::path &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw kiln::Error(path.string() + ": cannot open to evict");
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

std::string percent(double fraction) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f%%", 100 * fraction);
  return text;
}

void benchTiny(const fs::path &configPath, const fs::path &dir,
               std::vector<Row> &rows) {
  std::ifstream in(configPath);
  std::stringstream text;
  text << in.rdbuf();
  if (!in)
    throw kiln::Error(configPath.string() + ": cannot read");
  kiln::ModelConfig config = kiln::parseConfig(text.str(), configPath.string());

  auto start = Clock::now();
  kiln::writeTinyCheckpoint(config, dir, /*seed=*/1, /*numShards=*/2);
  double writeSeconds = secondsSince(start);

  start = Clock::now();
  kiln::Checkpoint checkpoint(dir);
  double openSeconds = secondsSince(start);
  uint64_t bytes = checkpoint.totalTensorBytes();

  start = Clock::now();
  double checksum = 0;
  uint64_t floats = 0;
  for (const kiln::ExpectedTensor &tensor : kiln::expectedTensors(config)) {
    std::vector<float> values = checkpoint.loadFloat(tensor.name, tensor.shape);
    checksum += values.empty() ? 0 : values[values.size() / 2];
    floats += values.size();
  }
  double loadSeconds = secondsSince(start);

  rows.push_back(
      {"tiny: generate 2-shard checkpoint", bytes, writeSeconds, "writes"});
  rows.push_back({"tiny: open + validate (headers only)", 0, openSeconds,
                  std::to_string(checkpoint.tensorNames().size()) +
                      " tensors checked; no data read"});
  rows.push_back(
      {"tiny: load + dequantize every tensor", bytes, loadSeconds,
       "warm; " + std::to_string(floats * 4 / 1000000) + " MB of FP32 out"});
  std::printf("tiny checkpoint: %zu tensors, %.1f MB in %zu shards "
              "(checksum %g)\n",
              checkpoint.tensorNames().size(), bytes / 1e6,
              checkpoint.shardPaths().size(), checksum);
}

void benchSynthetic(const fs::path &dir, uint64_t mebibytes,
                    std::vector<Row> &rows) {
  // Expert-weight-like FP8 tensors of 64 MiB each.
  const int64_t rowsPerTensor = 4096, cols = 16384;
  const uint64_t tensorBytes = rowsPerTensor * cols;
  const uint64_t count = std::max<uint64_t>(1, (mebibytes << 20) / tensorBytes);
  fs::path path = dir / "synthetic.safetensors";

  std::vector<kiln::TensorHeader> headers;
  for (uint64_t i = 0; i < count; ++i)
    headers.push_back({"experts." + std::to_string(i) + ".weight",
                       kiln::DType::F8_E4M3,
                       {rowsPerTensor, cols}});
  std::vector<uint8_t> buffer(tensorBytes);
  uint64_t state = 0x9E3779B97F4A7C15ull;
  for (uint8_t &byte : buffer) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    byte = static_cast<uint8_t>(state >> 56) & 0x77; // finite E4M3 codes
  }

  auto start = Clock::now();
  {
    kiln::SafetensorsWriter writer(path, headers);
    for (const kiln::TensorHeader &header : headers)
      writer.write(header.name, buffer.data(), buffer.size());
    writer.close();
  }
  double writeSeconds = secondsSince(start);
  uint64_t totalBytes = count * tensorBytes;
  rows.push_back(
      {"synthetic: write " + std::to_string(count) + " x 64 MiB FP8 tensors",
       totalBytes, writeSeconds, "writes (no fsync)"});

  evictFromPageCache(path);
  double residentBefore = residentFraction(path);
  uint64_t checksum = 0;
  for (int pass = 0; pass < 2; ++pass) {
    double resident = pass == 0 ? residentBefore : residentFraction(path);
    start = Clock::now();
    kiln::SafetensorsFile file(path);
    for (const kiln::TensorView &tensor : file.tensors())
      checksum += touchBytes(tensor.data, tensor.byteSize);
    double seconds = secondsSince(start);
    rows.push_back({std::string("synthetic: open + read every byte, pass ") +
                        (pass == 0 ? "1" : "2"),
                    totalBytes, seconds,
                    (pass == 0 ? "cold-ish: evicted, " : "warm: ") +
                        percent(resident) + " resident before"});
  }
  std::printf("synthetic shard: %s, %.1f MB (checksum %llx)\n", path.c_str(),
              totalBytes / 1e6, static_cast<unsigned long long>(checksum));
}

} // namespace

int main(int argc, char **argv) {
  fs::path configPath = KILN_TINY_CONFIG;
  fs::path parent = fs::temp_directory_path();
  uint64_t syntheticMiB = 2048;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      configPath = argv[++i];
    } else if (arg == "--dir" && i + 1 < argc) {
      parent = argv[++i];
    } else if (arg == "--synthetic-mib" && i + 1 < argc) {
      syntheticMiB = std::stoull(argv[++i]);
    } else {
      std::fprintf(
          stderr, "usage: %s [--config PATH] [--dir DIR] [--synthetic-mib N]\n",
          argv[0]);
      return 2;
    }
  }

  try {
    std::string pattern = (parent / "kiln-bench-load-XXXXXX").string();
    if (!::mkdtemp(pattern.data()))
      throw kiln::Error(parent.string() + ": cannot create a scratch folder");
    ScratchDir scratch{pattern};

    std::vector<Row> rows;
    benchTiny(configPath, scratch.path / "tiny", rows);
    benchSynthetic(scratch.path, syntheticMiB, rows);
    printTable(rows);
    std::printf("\nMB = 10^6 bytes of tensor data in the files. 'cold-ish': "
                "the host may still cache\nthe file below this machine's page "
                "cache.\n");
  } catch (const std::exception &e) {
    std::fprintf(stderr, "kiln-bench-load: %s\n", e.what());
    return 1;
  }
  return 0;
}
