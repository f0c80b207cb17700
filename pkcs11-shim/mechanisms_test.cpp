#include "pkcs11-shim/mechanisms.h"
#include "tests/shim/test_support.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::shim;

TEST_CASE("every hash-and-sign mechanism builds the right relay request") {
  Bytes data = to_bytes("hello");
  for (const auto& m : sign_mechanisms()) {
    if (!m.hash) continue;
    CAPTURE(m.mech);
    std::optional<relay::PssParams> pss;
    if (m.kind == SignKind::rsa_pss) pss = relay::PssParams{*m.hash, *m.hash, 0};
    Bytes digest = hash(*m.hash, data);
    auto req = make_sign_request(m, pss, digest, 256);
    REQUIRE(req.ok());
    CHECK(req->mechanism == std::string(relay_mechanism(m.kind)));
    if (m.kind == SignKind::rsa_pkcs1) {
      CHECK(req->input == digest_info(*m.hash, digest));
      auto parsed = parse_digest_info(req->input);
      REQUIRE(parsed.has_value());
      CHECK(parsed->first == *m.hash);
    } else {
      CHECK(req->input == digest);
    }
    CHECK(req->digest_alg == m.hash);
  }
}

TEST_CASE("SHA-256 DigestInfo bytes are the RFC 8017 ones") {
  const SignMech* m = find_sign_mechanism(CKM_SHA256_RSA_PKCS);
  REQUIRE(m);
  auto req = make_sign_request(*m, std::nullopt, hash(HashAlg::sha256, to_bytes("abc")), 256);
  REQUIRE(req.ok());
  CHECK(to_hex(req->input) ==
        "3031300d060960864801650304020105000420"
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("PSS parameter validation") {
  const SignMech* m = find_sign_mechanism(CKM_SHA256_RSA_PKCS_PSS);
  const SignMech* raw = find_sign_mechanism(CKM_RSA_PKCS_PSS);
  CK_RSA_PKCS_PSS_PARAMS p = {CKM_SHA256, CKG_MGF1_SHA1, 32};
  CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS_PSS, &p, sizeof p};
  auto r = pss_params(*m, mech, 2048);
  REQUIRE(r.ok());
  CHECK(r->mgf_hash == HashAlg::sha1);
  p.hashAlg = CKM_MD5;
  CHECK(pss_params(*raw, mech, 2048).error().ckr == CKR_MECHANISM_PARAM_INVALID);
  p.hashAlg = CKM_SHA512;
  CHECK(pss_params(*m, mech, 2048).error().ckr == CKR_MECHANISM_PARAM_INVALID);
  CHECK(pss_params(*raw, mech, 2048).ok());
  p.sLen = 256 - 64 - 2 + 1;
  CHECK(pss_params(*raw, mech, 2048).error().ckr == CKR_MECHANISM_PARAM_INVALID);
  p.sLen = 256 - 64 - 2;
  CHECK(pss_params(*raw, mech, 2048).ok());
}

TEST_CASE("ECDSA r||s from the daemon verifies locally; a flipped bit does not") {
  const auto& k = testing::ec_key();
  const SignMech* m = find_sign_mechanism(CKM_ECDSA_SHA256);
  auto req = make_sign_request(*m, std::nullopt, hash(HashAlg::sha256, to_bytes("x")), 64);
  REQUIRE(req.ok());
  Bytes sig = testing::sign_like_daemon(k.priv.get(), *req);
  CHECK(sig.size() == 64);
  CHECK(verify_signature(k.priv.get(), *m, std::nullopt, req->input, sig, 64).ok());
  sig[5] ^= 0x40;
  CHECK(verify_signature(k.priv.get(), *m, std::nullopt, req->input, sig, 64).error().ckr == CKR_SIGNATURE_INVALID);
}
