#include "common/authenticode/signed_data.h"

#include "common/authenticode/verify.h"
#include "test/helpers.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::authenticode;
using namespace p11relay::authenticode::testing;

TEST_CASE("ECDSA r||s <-> DER") {
  Bytes raw(64, 0);
  raw[31] = 1;  // r = 1
  raw[32] = 0x80;  // s has the high bit set: DER needs a leading zero
  auto d = ecdsa_raw_to_der(raw);
  REQUIRE(d.ok());
  CHECK(to_hex(*d).substr(0, 12) == "302602010102");
  auto back = ecdsa_der_to_raw(*d, 32);
  REQUIRE(back.ok());
  CHECK(*back == raw);
  CHECK_FALSE(ecdsa_raw_to_der(Bytes(63, 1)).ok());
  CHECK_FALSE(ecdsa_raw_to_der(Bytes{}).ok());
  CHECK_FALSE(ecdsa_der_to_raw(Bytes{0x30, 0x00}, 32).ok());
  Bytes big(96, 0xff);
  auto bd = ecdsa_raw_to_der(big);
  REQUIRE(bd.ok());
  CHECK_FALSE(ecdsa_der_to_raw(*bd, 32).ok());  // value wider than the field
}

TEST_CASE("SpcIndirectDataContent layout (§9.3)") {
  Bytes digest(32, 0xab);
  Bytes plain = spc_indirect_data_content(HashAlg::sha256, digest);
  // SEQ { SEQ { OID SpcPeImageData, SEQ { 03 01 00, [0] { [2] { [0] "" } } } }, DigestInfo }
  CHECK(to_hex(plain).find("060a2b06010401823702010f" "3009" "030100" "a004" "a202" "8000") != std::string::npos);
  CHECK(to_hex(plain).find("0609608648016503040201" "0500" "0420" + to_hex(digest)) != std::string::npos);
  Bytes ph(36 * 3, 0x01);
  Bytes with = spc_indirect_data_content(HashAlg::sha256, digest, HashAlg::sha256, ph);
  CHECK(to_hex(with).find("a6b586d5b4a12466ae05a217da8e60d6") != std::string::npos);
  CHECK(to_hex(with).find(to_hex(der::oid(oid::kPageHashesV2))) != std::string::npos);
}

TEST_CASE("SignedData: self-check, attributes, unsigned attribute splicing") {
  TempDir dir;
  TestKey rsa = make_test_key(KeyType::rsa, dir, "sd-rsa");
  TestKey ec = make_test_key(KeyType::ec, dir, "sd-ec");
  Bytes spc = spc_indirect_data_content(HashAlg::sha256, Bytes(32, 7));
  X509* chain[] = {rsa.cert.get(), ec.cert.get()};  // second is self-signed: must be left out
  SignOptions opts;
  opts.description = "Test app \xe2\x9c\x93";
  opts.url = "https://example.com/";
  opts.signing_time = true;
  opts.time = 1700000000;
  auto sd = build_signed_data(HashAlg::sha256, spc, chain, opts, software_signer(rsa.key.get()));
  REQUIRE_MESSAGE(sd.ok(), sd.error().message);
  auto view = parse_signed_data(*sd);
  REQUIRE(view.ok());
  CHECK(view->certificates.size() == 1);
  REQUIRE(view->signers.size() == 1);
  auto attrs = parse_attributes(view->signers[0].auth_attrs);
  REQUIRE(attrs.ok());
  CHECK(attrs->size() == 5);  // contentType, signingTime, opus, messageDigest, statement type
  CHECK(to_hex(*sd).find("170d3233313131343232313332305a") != std::string::npos);  // UTCTime 231114221320Z

  // Wrong key for the certificate: the self-check refuses it.
  auto wrong = build_signed_data(HashAlg::sha256, spc, chain, opts, software_signer(ec.key.get()));
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.error().message.find("does not verify") != std::string::npos);

  // A raw r||s signature passed through unconverted fails the self-check too.
  RawSigner raw_ec = [&](HashAlg a, std::span<const uint8_t> d) -> Result<Bytes> {
    ASSIGN_OR_RETURN(Bytes der_sig, software_signer(ec.key.get())(a, d));
    return ecdsa_der_to_raw(der_sig, 32);
  };
  X509* ec_chain[] = {ec.cert.get()};
  CHECK_FALSE(build_signed_data(HashAlg::sha256, spc, ec_chain, {}, raw_ec).ok());
  auto ec_sd = build_signed_data(HashAlg::sha384, spc, ec_chain, {}, software_signer(ec.key.get()));
  CHECK(ec_sd.ok());

  // Adding unsigned attributes keeps every other byte; a second value joins the same attribute.
  auto once = add_unsigned_attribute(*sd, oid::kNestedSignature, *ec_sd);
  REQUIRE(once.ok());
  auto twice = add_unsigned_attribute(*once, oid::kNestedSignature, *ec_sd);
  REQUIRE(twice.ok());
  auto v2 = parse_signed_data(*twice);
  REQUIRE(v2.ok());
  CHECK(der::equal(v2->signers[0].before_unauth, view->signers[0].before_unauth));
  auto un = parse_attributes(v2->signers[0].unauth_attrs);
  REQUIRE(un.ok());
  REQUIRE(un->size() == 1);
  CHECK((*un)[0].values.size() == 2);

  // Hostile SignedData never crashes the parser.
  for (size_t n = 0; n < sd->size(); n += 7) {
    Bytes t(sd->begin(), sd->begin() + static_cast<ptrdiff_t>(n));
    CHECK_FALSE(parse_signed_data(t).ok());
  }
}
