// libFuzzer target: the PE digester (whole buffer and streamed in input-chosen chunks, with and
// without page hashes), the certificate-table and SignedData parsers, and verify_pe. Any crash,
// sanitizer report or whole/streamed disagreement is a bug (hostile input must be an error).
#include "common/authenticode/pe_digest.h"
#include "common/authenticode/pe_write.h"
#include "common/authenticode/signed_data.h"
#include "common/authenticode/verify.h"

#include <cstdint>
#include <cstdlib>

using namespace p11relay;
using namespace p11relay::authenticode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  std::span<const uint8_t> file(data + 1, size - 1);

  PeDigestOptions opt;
  opt.page_hashes = (mode & 1) != 0;
  opt.alg = (mode & 2) ? HashAlg::sha1 : HashAlg::sha256;
  auto whole = pe_digest(file, opt);

  // Streamed with a chunk size taken from the mode byte must give the same answer.
  PeDigester d(opt);
  const size_t chunk = 1 + (mode >> 2) * 13;
  bool ok = true;
  for (size_t pos = 0; pos < file.size() && ok; pos += chunk)
    ok = d.update(file.subspan(pos, std::min(chunk, file.size() - pos))).ok();
  auto streamed = ok ? d.finish() : Result<PeInfo>(bad_request("x"));
  if (whole.ok() != streamed.ok()) std::abort();
  if (whole.ok()) {
    if (whole->image_digest != streamed->image_digest || whole->page_hashes != streamed->page_hashes ||
        whole->cert_table != streamed->cert_table)
      std::abort();
    // The checksum sums taken in the digest's pass equal a separate full recomputation.
    if (whole->file_checksum != pe_checksum(file, whole->checksum_offset) ||
        streamed->file_checksum != whole->file_checksum)
      std::abort();
    // Embedding a signature must not change the image digest or page hashes (§9.2: checksum,
    // directory entry and table are excluded, the 8-byte padding was already hashed), and the
    // arithmetic checksum of the signed file must equal the one recomputed over it.
    static const uint8_t kFakeSignedData[] = {0x30, 0x03, 0x02, 0x01, 0x01};
    auto out = embed_signature(file, *whole, kFakeSignedData, EmbedMode::replace);
    if (out.ok()) {
      auto again = pe_digest(*out, opt);
      if (!again.ok() || again->image_digest != whole->image_digest || again->page_hashes != whole->page_hashes ||
          again->stored_checksum != again->file_checksum)
        std::abort();
      auto patch = make_pe_patch(*whole, kFakeSignedData);
      if (!patch.ok() || signed_checksum(*whole, *patch) != again->stored_checksum) std::abort();
    }
    if (whole->signed_()) {
      auto sigs = parse_cert_table(whole->cert_table);
      if (sigs.ok())
        for (const auto& s : *sigs) (void)parse_signed_data(s);
    }
  }
  (void)verify_pe(file);
  (void)parse_signed_data(file);
  return 0;
}
