// SpcIndirectDataContent, signed attributes and the PKCS#7 SignedData of an Authenticode signature
// (docs/relic-protocol.md §9.3, §9.4). The private-key operation is a callback so the same code serves the
// CLI (digest sent to the daemon over the relay API) and the daemon (token worker).
#pragma once

#include "common/authenticode/der.h"
#include "common/authenticode/pe_digest.h"
#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"

#include <openssl/x509.h>

#include <ctime>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace p11relay::authenticode {

namespace oid {
inline constexpr const char* kSignedData = "1.2.840.113549.1.7.2";
inline constexpr const char* kContentType = "1.2.840.113549.1.9.3";
inline constexpr const char* kMessageDigest = "1.2.840.113549.1.9.4";
inline constexpr const char* kSigningTime = "1.2.840.113549.1.9.5";
inline constexpr const char* kSpcIndirectData = "1.3.6.1.4.1.311.2.1.4";
inline constexpr const char* kSpcStatementType = "1.3.6.1.4.1.311.2.1.11";
inline constexpr const char* kSpcSpOpusInfo = "1.3.6.1.4.1.311.2.1.12";
inline constexpr const char* kSpcPeImageData = "1.3.6.1.4.1.311.2.1.15";
inline constexpr const char* kIndividualCodeSigning = "1.3.6.1.4.1.311.2.1.21";
inline constexpr const char* kPageHashesV1 = "1.3.6.1.4.1.311.2.3.1";  // SHA-1 page hashes
inline constexpr const char* kPageHashesV2 = "1.3.6.1.4.1.311.2.3.2";  // SHA-256 page hashes
inline constexpr const char* kNestedSignature = "1.3.6.1.4.1.311.2.4.1";
inline constexpr const char* kRfc3161Timestamp = "1.3.6.1.4.1.311.3.3.1";
inline constexpr const char* kRsaEncryption = "1.2.840.113549.1.1.1";
inline constexpr const char* kIdEcPublicKey = "1.2.840.10045.2.1";
inline constexpr const char* kCertTrustList = "1.3.6.1.4.1.311.10.1";  // a catalog's content (szOID_CTL)
}  // namespace oid

// Hash algorithm OIDs (NIST / OIW), and the reverse lookup.
const char* hash_oid(HashAlg alg);
std::optional<HashAlg> hash_by_oid_content(std::span<const uint8_t> oid_content);

// SpcIndirectDataContent DER (§9.3). `page_hashes` are serialized entries as PeInfo::page_hashes.
Bytes spc_indirect_data_content(HashAlg alg, std::span<const uint8_t> image_digest,
                                std::optional<HashAlg> page_hash_alg = std::nullopt,
                                std::span<const uint8_t> page_hashes = {});

// SpcIndirectDataContent for a format that a subject interface package (SIP) digests (MSI, scripts):
// SpcSipInfo {version, the SIP's class id, 0, 0, 0, 0, 0} and the digest.
Bytes sip_spc_indirect_data_content(HashAlg alg, std::span<const uint8_t> digest, long sip_version,
                                    std::span<const uint8_t, 16> sip_guid);

// The private-key operation: signs `digest` (the hash of the DER signed attributes, algorithm
// `alg`) and returns the signature as CMS carries it: RSA PKCS#1 v1.5 (the callback wraps the digest
// in a DigestInfo itself, e.g. CKM_RSA_PKCS over p11relay::digest_info()), or ECDSA as a DER
// Ecdsa-Sig-Value (use ecdsa_raw_to_der() on CKM_ECDSA's r||s).
using RawSigner = std::function<Result<Bytes>(HashAlg alg, std::span<const uint8_t> digest)>;

// PKCS#11 CKM_ECDSA returns r||s (each half the signature); CMS wants SEQUENCE { INTEGER r, INTEGER s }.
Result<Bytes> ecdsa_raw_to_der(std::span<const uint8_t> raw);
// Inverse; `half` is the field size in bytes (32 for P-256, 48 for P-384, 66 for P-521).
Result<Bytes> ecdsa_der_to_raw(std::span<const uint8_t> der, size_t half);

struct SignOptions {
  std::string description;  // SpcSpOpusInfo programName (relic flag `description`)
  std::string url;          // SpcSpOpusInfo moreInfo (relic flag `desc-url`)
  bool signing_time = false;
  std::optional<std::time_t> time;  // signing time to use (default: now)
};

// Builds a complete ContentInfo(SignedData) (§9.4) over `pe` (its image digest and, if computed,
// page hashes). `chain` is leaf first; self-signed certificates are left out. The signature is checked
// against the leaf's public key before returning (the self-check relic does), so a key/certificate
// mismatch is an error here rather than an invalid file later.
Result<Bytes> build_signed_data(const PeInfo& pe, std::span<X509* const> chain, const SignOptions& options,
                                const RawSigner& signer);
// Same for any SpcIndirectDataContent, or, with `content_type`, any other content signed the same way
// (a catalog's certificate trust list: oid::kCertTrustList).
Result<Bytes> build_signed_data(HashAlg alg, std::span<const uint8_t> spc_content, std::span<X509* const> chain,
                                const SignOptions& options, const RawSigner& signer,
                                const char* content_type = oid::kSpcIndirectData);

// --- reading (views into the caller's buffer) ---
struct Attribute {
  std::span<const uint8_t> whole;                // the Attribute SEQUENCE TLV
  std::span<const uint8_t> oid;                  // OID content octets
  std::vector<std::span<const uint8_t>> values;  // each value TLV
};

struct SignerInfoView {
  std::span<const uint8_t> whole;
  std::span<const uint8_t> issuer;         // Name TLV
  std::span<const uint8_t> serial;         // INTEGER TLV
  std::span<const uint8_t> digest_alg;     // OID content
  std::span<const uint8_t> auth_attrs;     // [0] TLV (empty if absent)
  std::span<const uint8_t> sig_alg;        // OID content
  std::span<const uint8_t> signature;      // OCTET STRING content
  std::span<const uint8_t> unauth_attrs;   // [1] TLV (empty if absent)
  std::span<const uint8_t> before_unauth;  // SignerInfo content up to (not including) [1]
};

struct SignedDataView {
  std::span<const uint8_t> content_type;  // encapsulated content type OID content
  std::span<const uint8_t> content;       // encapsulated content TLV (inside [0] EXPLICIT)
  std::vector<std::span<const uint8_t>> certificates;
  std::vector<SignerInfoView> signers;
  std::span<const uint8_t> before_signers;  // SignedData content before the signerInfos SET
};

// Parses a ContentInfo(SignedData), bounds-checked; views point into `der`. Without a SignerInfo it is an
// error unless `require_signer` is false (an unsigned catalog is a SignedData with none).
Result<SignedDataView> parse_signed_data(std::span<const uint8_t> der, bool require_signer = true);
// Attributes of a [0]/[1]/SET attribute block.
Result<std::vector<Attribute>> parse_attributes(std::span<const uint8_t> block);

// Returns `signed_data` with `value_der` added to the first SignerInfo's unsigned attributes under
// `attr_oid` (appended to that attribute's values if it exists). All other bytes stay as they are, so
// the existing signature remains valid. Used for RFC 3161 timestamps and nested signatures.
Result<Bytes> add_unsigned_attribute(std::span<const uint8_t> signed_data, const char* attr_oid,
                                     std::span<const uint8_t> value_der);

}  // namespace p11relay::authenticode
