// Authenticode for Windows Installer files (.msi, .msm, .msp: OLE compound files). The digest covers
// every stream's bytes, siblings in the MSI order (UTF-16 names with their terminating NUL compared as
// little-endian bytes, so a name comes before its extensions), each storage's CLSID after its
// children, without the root's \x05DigitalSignature and \x05MsiDigitalSignatureEx streams. With
// MsiDigitalSignatureEx the digest is first fed the hash of the entries' metadata (names, sizes,
// flags, times), which that stream stores. The signature is the \x05DigitalSignature stream.
#pragma once

#include "common/authenticode/ole.h"
#include "common/authenticode/verify.h"
#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"

#include <optional>
#include <span>
#include <string>

namespace p11relay::authenticode {

inline constexpr char16_t kMsiSignature[] = u"\x05" u"DigitalSignature";
inline constexpr char16_t kMsiSignatureEx[] = u"\x05" u"MsiDigitalSignatureEx";

bool is_ole(std::span<const uint8_t> head);

struct MsiDigest {
  HashAlg alg = HashAlg::sha256;
  Bytes digest;
  Bytes prehash;  // the MsiDigitalSignatureEx content, when asked for
};

// `extended`: include the metadata pre-hash (MsiDigitalSignatureEx). `progress` is told the stream bytes
// hashed so far.
Result<MsiDigest> msi_digest(const ole::File& file, HashAlg alg, bool extended, const HashProgress& progress = {});

// SpcIndirectDataContent with SpcSipInfo (1.3.6.1.4.1.311.2.1.30) for the MSI subject interface package.
Bytes msi_spc_indirect_data_content(HashAlg alg, std::span<const uint8_t> digest);

// The existing \x05DigitalSignature and \x05MsiDigitalSignatureEx streams (empty when absent).
struct MsiSignatures {
  Bytes signature, extended;
};
Result<MsiSignatures> msi_signatures(const ole::File& file);

// Writes the file with `signed_data` as its signature (and `prehash` as MsiDigitalSignatureEx, or
// that stream removed when empty), replacing any earlier signature streams.
Status msi_write_signed(const ole::File& file, std::span<const uint8_t> signed_data, std::span<const uint8_t> prehash,
                        const std::function<Status(std::span<const uint8_t>)>& out);

// Every signature (primary, then nested) checked against the file; MsiDigitalSignatureEx too when
// present. The report's cert_table holds the \x05DigitalSignature stream.
Result<VerifyReport> verify_msi(const ole::File& file);

// The MSI order of sibling names (the digest's order).
bool msi_less(const std::u16string& a, const std::u16string& b);

}  // namespace p11relay::authenticode
