// Checking an Authenticode-signed PE (used by `p11relay verify` and by tests): the image digest, the
// messageDigest of SpcIndirectDataContent, page hashes, and the signer's signature over the signed
// attributes with the embedded signing certificate. Trust in the certificate chain is NOT evaluated.
#pragma once

#include "common/authenticode/pe_digest.h"
#include "common/authenticode/signed_data.h"
#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"
#include "common/openssl_ptr.h"

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace p11relay::authenticode {

struct SignatureReport {
  int nesting = 0;  // 0 = primary signature, 1 = nested (1.3.6.1.4.1.311.2.4.1)
  HashAlg alg = HashAlg::sha256;
  Bytes image_digest;  // as stored in SpcIndirectDataContent (equal to the recomputed one)
  std::string signer_subject;  // RFC 2253
  std::string signer_issuer;
  bool page_hashes = false;
  bool timestamped = false;  // carries an RFC 3161 counter-signature (1.3.6.1.4.1.311.3.3.1)
};

struct VerifyReport {
  std::vector<SignatureReport> signatures;  // primary first, then nested ones
  uint32_t stored_checksum = 0;
  uint32_t computed_checksum = 0;
  Bytes cert_table;  // the file's certificate table (for a chain check)
};

// How verification gets digests of the file: pe_digest of bytes in memory, or pe_digest_file.
using PeDigestFn = std::function<Result<PeInfo>(const PeDigestOptions&)>;

// Every signature in the file must check out; the first failure is the error. One pass over the
// file (digest and checksum together); one more per other digest algorithm or page-hash set.
Result<VerifyReport> verify_pe(const PeDigestFn& digest);
Result<VerifyReport> verify_pe(std::span<const uint8_t> file);
// Reads the file (pe_digest_file) instead of holding or mapping it.
Result<VerifyReport> verify_pe_file(const std::string& path);

// What every container's check shares: the SpcIndirectDataContent's DigestInfo (alg, image_digest of
// the report), the contentType and messageDigest attributes, the signature over the signed attributes
// with the embedded signing certificate, the timestamp flag. The caller compares image_digest with the
// file.
Result<SignatureReport> verify_signer(std::span<const uint8_t> signed_data, int nesting = 0);
// The same check for a SignedData over other content of type `content_type` (`what` in errors), e.g. a
// catalog's certificate trust list: the report's image_digest is the content's digest with the signer's
// algorithm.
Result<SignatureReport> verify_content_signer(std::span<const uint8_t> signed_data, const char* content_type,
                                              const char* what, int nesting = 0);
// The certificate among the SignedData's that the SignerInfo names (issuer and serial number).
Result<X509_ptr> find_signer_cert(const SignedDataView& sd, const SignerInfoView& si);
// The signatures nested in a SignedData's first SignerInfo (1.3.6.1.4.1.311.2.4.1).
Result<std::vector<Bytes>> nested_signatures(std::span<const uint8_t> signed_data);

// For the formats whose digest is one value per algorithm (MSI, cabinets, scripts): the primary signature in
// `signed_data` and each one nested in it through verify_signer, each against `digest_of(alg)`, the file's
// digest for that signature's algorithm; a mismatch is "`what` … changed after signing". cert_table of the
// report holds `signed_data`.
Result<VerifyReport> verify_with_nested(std::span<const uint8_t> signed_data,
                                        const std::function<Result<Bytes>(HashAlg)>& digest_of, const std::string& what);

// Checks one ContentInfo(SignedData) against the PE file it came from.
Result<SignatureReport> verify_signed_data(std::span<const uint8_t> file, std::span<const uint8_t> signed_data,
                                           int nesting = 0);

}  // namespace p11relay::authenticode
