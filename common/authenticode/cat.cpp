#include "common/authenticode/cat.h"

#include "common/authenticode/der.h"
#include "common/authenticode/signed_data.h"

#include <algorithm>
#include <string>

namespace p11relay::authenticode {
namespace {

constexpr const char* kWhat = "a certificate trust list";

Error not_a_catalog(const std::string& why) {
  return Error(ErrorCode::bad_request, "not a security catalog (.cat): " + why);
}

}  // namespace

bool is_pkcs7(std::span<const uint8_t> head) {
  if (head.size() < 2 || head[0] != der::kSequence) return false;
  // The length: short form, or long form with 1..4 length bytes.
  size_t at = 2;
  if (head[1] & 0x80) at += head[1] & 0x7f;
  const Bytes oid = der::oid(oid::kSignedData);
  return head.size() >= at + oid.size() && std::equal(oid.begin(), oid.end(), head.begin() + static_cast<ptrdiff_t>(at));
}

Result<Catalog> parse_catalog(std::span<const uint8_t> file) {
  if (file.size() > kMaxCatalog) return not_a_catalog("larger than 64 MiB");
  if (!is_pkcs7(file)) return not_a_catalog("not a PKCS#7 SignedData");
  auto sd = parse_signed_data(file, false);
  if (!sd.ok()) return not_a_catalog(sd.error().message);
  if (!der::equal(sd->content_type, der::oid_content(oid::kCertTrustList)))
    return not_a_catalog("the SignedData's content is not a certificate trust list (1.3.6.1.4.1.311.10.1)");
  if (sd->content.empty() || sd->content[0] != der::kSequence)
    return not_a_catalog("the certificate trust list is missing or not a SEQUENCE");
  Catalog c;
  c.ctl.assign(sd->content.begin(), sd->content.end());
  c.was_signed = !sd->signers.empty();
  return c;
}

Result<VerifyReport> verify_catalog(std::span<const uint8_t> file) {
  ASSIGN_OR_RETURN(Catalog cat, parse_catalog(file));
  if (!cat.was_signed) return bad_request("the catalog is not signed");
  VerifyReport rep;
  rep.cert_table.assign(file.begin(), file.end());
  ASSIGN_OR_RETURN(std::vector<Bytes> all, nested_signatures(file));
  all.insert(all.begin(), rep.cert_table);
  for (size_t i = 0; i < all.size(); ++i) {
    ASSIGN_OR_RETURN(SignatureReport r, verify_content_signer(all[i], oid::kCertTrustList, kWhat, i == 0 ? 0 : 1));
    ASSIGN_OR_RETURN(SignedDataView v, parse_signed_data(all[i]));
    if (!der::equal(v.content, cat.ctl))
      return bad_request("nested signature " + std::to_string(i) + " covers another catalog's trust list");
    rep.signatures.push_back(std::move(r));
  }
  return rep;
}

}  // namespace p11relay::authenticode
