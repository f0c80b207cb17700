// Windows security catalogs (.cat): a PKCS#7 SignedData whose content is a certificate trust list (CTL,
// 1.3.6.1.4.1.311.10.1) naming the member files' digests; an unsigned catalog (as makecat writes one before
// signing) is the same SignedData without a SignerInfo. Signing a catalog signs its trust list as it is: the
// new SignedData carries the same content, with messageDigest over the content's contents as for
// SpcIndirectDataContent, and is the whole new file (osslsigncode and relic sign catalogs this way).
#pragma once

#include "common/authenticode/verify.h"
#include "common/bytes.h"
#include "common/error.h"

#include <cstddef>
#include <cstdint>
#include <span>

namespace p11relay::authenticode {

// Catalogs are read whole; larger files are refused (the largest Windows catalogs are a few MiB).
inline constexpr size_t kMaxCatalog = 64u << 20;

// ContentInfo(SignedData) starts with SEQUENCE, then (after the length) the signedData OID: enough to tell a
// PKCS#7 file from the other formats; parse_catalog says whether it is a catalog.
bool is_pkcs7(std::span<const uint8_t> head);

struct Catalog {
  Bytes ctl;                // the certificate trust list (its DER TLV), what gets signed
  bool was_signed = false;  // the file has a SignerInfo
};

// Checks that `file` is one ContentInfo(SignedData) over a certificate trust list and returns that list.
Result<Catalog> parse_catalog(std::span<const uint8_t> file);

// Every signature of a signed catalog (the primary one and those nested in it) must verify and cover the
// catalog's own trust list. cert_table of the report holds the file.
Result<VerifyReport> verify_catalog(std::span<const uint8_t> file);

}  // namespace p11relay::authenticode
