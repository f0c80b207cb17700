// Putting a signature into a PE: the certificate table (WIN_CERTIFICATE), relic's two-record binpatch
// (relic-protocol.md §9.5), nesting a second signature (osslsigncode -nest), checksum fix-up (§9.6).
#pragma once

#include "common/authenticode/binpatch.h"
#include "common/authenticode/pe_digest.h"
#include "common/bytes.h"
#include "common/error.h"

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

// Streaming form of embed_signature for large files (the CLI): copies in_path to out_path with the
// §9.5 patch applied and the checksum fixed, never holding the file in memory. Writes a temporary
// file beside out_path and renames it, so in_path == out_path signs in place safely.
Status write_signed_file(const std::string& in_path, const std::string& out_path, const PeInfo& pe,
                         std::span<const uint8_t> signed_data, EmbedMode mode = EmbedMode::replace);

}  // namespace p11relay::authenticode
