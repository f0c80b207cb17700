// Putting a signature into a PE: the certificate table (WIN_CERTIFICATE), relic's two-record binpatch
// (docs/relic-protocol.md §9.5), nesting a second signature (osslsigncode -nest), checksum fix-up (§9.6).
#pragma once

#include "common/authenticode/binpatch.h"
#include "common/authenticode/pe_digest.h"
#include "common/bytes.h"
#include "common/error.h"

#include <atomic>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace p11relay::authenticode {

// WIN_CERTIFICATE { dwLength, wRevision 0x0200, wCertificateType 0x0002 } + DER, zero-padded to 8.
Bytes win_certificate(std::span<const uint8_t> signed_data);

// The SignedData blobs (PKCS_SIGNED_DATA entries) of a certificate table, in table order.
Result<std::vector<Bytes>> parse_cert_table(std::span<const uint8_t> table);

// §9.5: record 1 rewrites the certificate directory, record 2 replaces the old table (or inserts at
// EOF) with alignment padding + WIN_CERTIFICATE. Any existing signature is replaced.
Result<binpatch::Patch> make_pe_patch(const PeInfo& pe, std::span<const uint8_t> signed_data);

enum class EmbedMode {
  replace,  // drop any existing signature (relic pe-coff, osslsigncode sign)
  nest,     // keep the existing primary signature and attach ours as a nested signature
            // (unsigned attribute 1.3.6.1.4.1.311.2.4.1, osslsigncode -nest / p11relay --append);
            // on an unsigned file this is the same as replace
};

// Returns the signed file: `file` must be the bytes `pe` was computed from (pe.cert_table must be kept
// for nest). The PE checksum is fixed.
Result<Bytes> embed_signature(std::span<const uint8_t> file, const PeInfo& pe, std::span<const uint8_t> signed_data,
                              EmbedMode mode = EmbedMode::replace);

// §9.6 CheckSum of the file that `patch` = make_pe_patch(pe, …) makes of the file `pe` describes,
// from pe.image_sum (the patch writes the directory and the table, the rest is unchanged): no pass
// over the signed file.
uint32_t signed_checksum(const PeInfo& pe, const binpatch::Patch& patch);

// The streaming form of embed_signature for large files (the CLI), in steps so that the copy can run
// while the file is hashed and signed:
//   ASSIGN_OR_RETURN(auto w, SignedFileWriter::open(in, out));  // a unique temp file beside out
//   w->start_copy();                      // optional: the copy on a second thread from now on
//   … hash, sign …
//   RETURN_IF_ERROR(w->commit(pe, sd));   // waits for (or makes) the copy; writes the directory,
//                                         // the table and the arithmetic checksum; renames onto out
// The input is copied by the kernel (copy_file_range): never held in memory, never read by user
// space. The copy gets a name (a unique temp name beside out, renamed onto out) only in commit; until
// commit succeeds the destructor stops the copy and removes it. in_path == out_path signs in place.
class SignedFileWriter {
 public:
  static Result<std::unique_ptr<SignedFileWriter>> open(const std::string& in_path, const std::string& out_path);
  SignedFileWriter(const SignedFileWriter&) = delete;
  SignedFileWriter& operator=(const SignedFileWriter&) = delete;
  ~SignedFileWriter();

  void start_copy();
  Status commit(const PeInfo& pe, std::span<const uint8_t> signed_data, EmbedMode mode = EmbedMode::replace);

 private:
  SignedFileWriter() = default;
  Status copy_input();
  Status link_temp();
  std::string in_path_, out_path_, tmp_;  // tmp_: the copy's name, while it has one
  int in_ = -1, out_ = -1;
  uint64_t in_size_ = 0;
  unsigned mode_ = 0600;
  bool committed_ = false;
  std::future<Status> copy_;
  std::atomic<bool> cancel_{false};
};

// open + commit, on the calling thread.
Status write_signed_file(const std::string& in_path, const std::string& out_path, const PeInfo& pe,
                         std::span<const uint8_t> signed_data, EmbedMode mode = EmbedMode::replace);

}  // namespace p11relay::authenticode
