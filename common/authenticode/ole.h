// OLE compound files ([MS-CFB]: the container of MSI installers), read from bytes in memory (an mmap'ed
// file) and written anew. Every offset, chain and count is checked while parsing: a truncated file, a
// FAT chain that loops or is shared by two streams, a directory tree with a cycle, an entry count
// beyond the file or a storage reached twice is an error naming the cause, and after parse() succeeds
// no read can leave the buffer.
#pragma once

#include "common/bytes.h"
#include "common/error.h"

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace p11relay::authenticode::ole {

inline constexpr uint8_t kStorage = 1, kStream = 2, kRoot = 5;
inline constexpr uint32_t kNoStream = 0xFFFFFFFF;

struct Entry {
  std::u16string name;  // without the terminating NUL
  uint8_t type = 0;     // 0 unused, kStorage, kStream, kRoot
  uint32_t left = kNoStream, right = kNoStream, child = kNoStream;
  std::array<uint8_t, 16> clsid{};
  uint32_t state_bits = 0;
  std::array<uint8_t, 16> times{};  // creation, modification (FILETIMEs)
  uint32_t start = 0;
  uint64_t size = 0;
};

class File {
 public:
  // `data` must outlive the File.
  static Result<File> parse(std::span<const uint8_t> data);

  const std::vector<Entry>& entries() const { return entries_; }
  const Entry& root() const { return entries_[0]; }
  // Direct children of a storage (or the root), in tree order; each id once.
  Result<std::vector<uint32_t>> children(uint32_t storage) const;
  // The stream's bytes in pieces, in order.
  Status read(const Entry& stream, const std::function<Status(std::span<const uint8_t>)>& sink) const;
  Result<Bytes> read_all(const Entry& stream, size_t max) const;

 private:
  Status load_fat();
  Status load_directory();
  Status load_mini();
  Status check_streams();
  Status check_tree() const;
  Result<std::vector<uint32_t>> chain(uint32_t start, const std::vector<uint32_t>& table, uint64_t max_len,
                                      const char* what) const;
  std::span<const uint8_t> sector(uint32_t n) const;

  std::span<const uint8_t> data_;
  uint32_t sector_size_ = 512;
  uint32_t cutoff_ = 4096;
  std::vector<uint32_t> fat_, minifat_;
  std::vector<uint32_t> mini_sectors_;  // the regular sectors holding the mini stream, in order
  std::vector<Entry> entries_;
};

// A stream or storage of a file being written.
struct Node {
  std::u16string name;
  uint8_t type = kStream;
  std::array<uint8_t, 16> clsid{};
  uint32_t state_bits = 0;
  std::array<uint8_t, 16> times{};
  uint64_t size = 0;
  // The stream's bytes: read from the source file (source_entry) or given (data).
  const Entry* source_entry = nullptr;
  Bytes data;
  std::vector<Node> children;
};

// The tree of `file` below `storage`, children included (streams reference the source entries).
Result<Node> copy_tree(const File& file, uint32_t storage, int depth = 0);

// Writes a version 3 compound file (512-byte sectors) holding `root`'s tree to `out` (called with
// the output in pieces, in order). Streams of `source` are read from it.
Status write(const File& source, const Node& root, const std::function<Status(std::span<const uint8_t>)>& out);

// UTF-16 names as [MS-CFB] §2.6.4 orders siblings: shorter first, then by upper-cased code unit.
bool tree_less(const std::u16string& a, const std::u16string& b);

}  // namespace p11relay::authenticode::ole
