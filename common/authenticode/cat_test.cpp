#include "common/authenticode/cat.h"

#include "common/authenticode/der.h"
#include "common/authenticode/signed_data.h"
#include "test/helpers.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::authenticode;
using namespace p11relay::authenticode::testing;

namespace {

// An unsigned catalog around `ctl`: ContentInfo(SignedData) with no digest algorithm and no SignerInfo.
Bytes unsigned_catalog(const Bytes& ctl, const char* content_type = oid::kCertTrustList) {
  Bytes content = der::seq({der::oid(content_type), der::tlv(der::context(0, true), ctl)});
  Bytes sd = der::seq({der::integer(1), der::tlv(der::kSet, {}), content, der::tlv(der::kSet, {})});
  return der::seq({der::oid(oid::kSignedData), der::tlv(der::context(0, true), sd)});
}

const Bytes kCtl = der::seq({der::seq({der::oid("1.3.6.1.4.1.311.12.1.1")}), der::octet_string(Bytes(16, 7))});

Bytes sign(const Bytes& ctl, const TestKey& k, HashAlg alg) {
  X509* chain[] = {k.cert.get()};
  auto sd = build_signed_data(alg, ctl, chain, {}, software_signer(k.key.get()), oid::kCertTrustList);
  REQUIRE_MESSAGE(sd.ok(), sd.error().message);
  return *sd;
}

}  // namespace

TEST_CASE("cat: an unsigned catalog's trust list, signed, verified, nested, tampered") {
  TempDir dir;
  TestKey rsa = make_test_key(KeyType::rsa, dir, "cat signer");
  TestKey ec = make_test_key(KeyType::ec, dir, "cat signer 2");
  const Bytes file = unsigned_catalog(kCtl);
  CHECK(is_pkcs7(file));
  auto cat = parse_catalog(file);
  REQUIRE(cat.ok());
  CHECK(cat->ctl == kCtl);
  CHECK_FALSE(cat->was_signed);
  CHECK(verify_catalog(file).error().message == "the catalog is not signed");

  const Bytes signed_cat = sign(kCtl, rsa, HashAlg::sha256);
  auto again = parse_catalog(signed_cat);
  REQUIRE(again.ok());
  CHECK((again->was_signed && again->ctl == kCtl));
  auto rep = verify_catalog(signed_cat);
  REQUIRE_MESSAGE(rep.ok(), rep.error().message);
  REQUIRE(rep->signatures.size() == 1);
  // the reported digest is messageDigest: the trust list's contents, without its tag and length
  CHECK(rep->signatures[0].image_digest == hash(HashAlg::sha256, std::span(kCtl).subspan(2)));

  // a nested signature over the same list verifies; over another list it is refused
  auto nested = add_unsigned_attribute(signed_cat, oid::kNestedSignature, sign(kCtl, ec, HashAlg::sha384));
  REQUIRE(nested.ok());
  auto two = verify_catalog(*nested);
  REQUIRE_MESSAGE(two.ok(), two.error().message);
  CHECK(two->signatures.size() == 2);
  CHECK(two->signatures[1].alg == HashAlg::sha384);
  Bytes other = kCtl;
  other.back() ^= 1;
  auto foreign = add_unsigned_attribute(signed_cat, oid::kNestedSignature, sign(other, ec, HashAlg::sha256));
  REQUIRE(foreign.ok());
  CHECK(verify_catalog(*foreign).error().message.find("covers another catalog") != std::string::npos);

  // one changed byte of the list in the signed file breaks its messageDigest
  Bytes tampered = signed_cat;
  auto at = std::search(tampered.begin(), tampered.end(), kCtl.begin(), kCtl.end());
  REQUIRE(at != tampered.end());
  *(at + static_cast<std::ptrdiff_t>(kCtl.size()) - 1) ^= 1;
  CHECK(verify_catalog(tampered).error().message.find("messageDigest does not match") != std::string::npos);
}

TEST_CASE("cat: files that are not catalogs are refused with the reason") {
  const Bytes good = unsigned_catalog(kCtl);
  CHECK(parse_catalog(Bytes{}).error().message.find("not a PKCS#7 SignedData") != std::string::npos);
  CHECK_FALSE(is_pkcs7(Bytes{0x30}));
  CHECK(parse_catalog(Bytes(good.begin(), good.begin() + 30)).error().message.find("not a security catalog") == 0);
  Bytes trailing = good;
  trailing.push_back(0);
  CHECK_FALSE(parse_catalog(trailing).ok());
  CHECK(parse_catalog(unsigned_catalog(kCtl, "1.2.840.113549.1.7.1")).error().message.find("not a certificate trust list") !=
        std::string::npos);
  CHECK(parse_catalog(unsigned_catalog(der::octet_string(Bytes(3, 1)))).error().message.find("not a SEQUENCE") !=
        std::string::npos);
}
