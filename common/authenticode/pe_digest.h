// Authenticode image digest of a PE32/PE32+ file, computed in one forward pass over arbitrary chunks
// (docs/relic-protocol.md §9.2): the daemon hashes relic uploads as they arrive and never holds the file.
#pragma once

#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"

#include <cstdint>
#include <functional>
#include <string>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace p11relay::authenticode {

// For relic uploads (daemon) set keep_cert_table = false: the patch needs only the offsets, and a
// hostile upload could otherwise make us hold a large table.
struct PeDigestOptions {
  HashAlg alg = HashAlg::sha256;
  // SpcPeImagePageHashes (§9.2): SHA-1 for a SHA-1 signature, SHA-256 for SHA-256 (relic supports only
  // these two; anything else is an error).
  bool page_hashes = false;
  // Keep the bytes of an existing certificate table (needed to nest a signature or to verify).
  bool keep_cert_table = true;
  size_t max_cert_table = 64 * 1024 * 1024;
};

// §9.6 arithmetic: the ones' complement sum of 16-bit little-endian words (RFC 1071). Bytes are added
// at their file offsets (even offset: a word's low byte, odd: its high byte), in pieces of any size,
// parity and order; two sums of disjoint byte sets add up to the sum of their union.
class WordSum {
 public:
  void add(uint64_t offset, std::span<const uint8_t> data);
  void add(const WordSum& other) { acc_ += other.acc_; }
  // Folded to 16 bits with end-around carry: the value §9.6's fold-after-every-word loop reaches
  // (0 only if every byte added was 0).
  uint32_t folded() const;

 private:
  uint64_t acc_ = 0;  // a sum of folded pieces, each < 2^17
};

struct PeInfo {
  HashAlg alg = HashAlg::sha256;
  Bytes image_digest;
  bool pe32plus = false;
  uint16_t machine = 0;
  uint64_t pe_offset = 0;        // e_lfanew
  uint64_t checksum_offset = 0;  // e_lfanew + 88 (§9.6)
  uint64_t cert_dir_offset = 0;  // e_lfanew + 24 + 128 (PE32) / 144 (PE32+) (§9.5 record 1)
  uint32_t stored_checksum = 0;
  // §9.6 sums taken in the same pass as the digest, so that neither signing nor verifying reads the
  // file again for the checksum: the words of the bytes before original_size without the CheckSum
  // field and the certificate directory (the part a signed file keeps unchanged), and the CheckSum
  // that the file as it is should have.
  WordSum image_sum;
  uint32_t file_checksum = 0;
  uint64_t file_size = 0;
  // Where the image ends: the old table's offset, or EOF when unsigned (§9.2 step 8). The new table
  // goes at original_size rounded up to 8 (§9.2 step 9, §9.5 record 2).
  uint64_t original_size = 0;
  uint64_t cert_table_offset = 0;  // 0 when unsigned
  uint64_t cert_table_size = 0;
  Bytes cert_table;                // the existing table, if keep_cert_table
  std::optional<HashAlg> page_hash_alg;
  Bytes page_hashes;               // serialized entries: uint32 LE offset + digest, … (§9.2)

  bool signed_() const { return cert_table_size != 0; }
  uint64_t new_table_offset() const { return (original_size + 7) & ~uint64_t{7}; }
};

// Streaming digester. Feed the file with update() in order, then call finish(). After the first
// error every call returns that error.
class PeDigester {
 public:
  explicit PeDigester(PeDigestOptions options = {});
  PeDigester(PeDigester&&) noexcept;
  PeDigester& operator=(PeDigester&&) noexcept;
  ~PeDigester();

  Status update(std::span<const uint8_t> chunk);
  Result<PeInfo> finish();
  uint64_t bytes_seen() const;

 private:
  Status update_piece(std::span<const uint8_t> chunk);
  struct State;
  std::unique_ptr<State> s_;
};

// The whole file in memory (or mmap'ed): the same digester over one chunk.
Result<PeInfo> pe_digest(std::span<const uint8_t> file, PeDigestOptions options = {});

// Reads a file in 128 KiB chunks through the digester (never the whole file in memory). `progress`,
// if set, is called with the bytes read so far (for the CLI's progress bar); returning false stops
// the pass with an error.
Result<PeInfo> pe_digest_file(const std::string& path, PeDigestOptions options = {},
                              const std::function<bool(uint64_t)>& progress = {});

// The page-hash algorithm used with a signature digest (§9.2; only SHA-1 and SHA-256 exist).
std::optional<HashAlg> page_hash_alg_for(HashAlg alg);

// §9.6's last step: the folded sum plus the file length.
inline uint32_t pe_checksum(const WordSum& sum, uint64_t file_size) {
  return static_cast<uint32_t>(sum.folded() + file_size);
}
// PE CheckSum (§9.6) over the whole file, with the 4 bytes at checksum_offset taken as zero.
uint32_t pe_checksum(std::span<const uint8_t> file, uint64_t checksum_offset);
// Locates the CheckSum field through the headers and rewrites it.
Status fix_pe_checksum(std::span<uint8_t> file);
// Offset of the CheckSum field (validates the headers far enough to find it).
Result<uint64_t> pe_checksum_offset(std::span<const uint8_t> file);

}  // namespace p11relay::authenticode
