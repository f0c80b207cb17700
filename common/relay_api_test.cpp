#include "common/relay_api.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::relay;

TEST_CASE("sign request round trip with PSS params") {
  SignRequest r;
  r.mechanism = "CKM_RSA_PKCS_PSS";
  r.input = Bytes(32, 7);
  r.pss = PssParams{HashAlg::sha384, HashAlg::sha384, 48};
  auto d = decode_sign_request(encode_sign_request(r));
  REQUIRE(d.ok());
  CHECK(d->mechanism == r.mechanism);
  CHECK(d->input == r.input);
  REQUIRE(d->pss.has_value());
  CHECK(d->pss->hash == HashAlg::sha384);
  CHECK(d->pss->salt_length == 48);
}

TEST_CASE("malformed sign requests are bad-json errors") {
  for (const char* body : {"", "{", "[]", "{\"mechanism\":1}", "{\"mechanism\":\"CKM_ECDSA\"}",
                           "{\"mechanism\":\"CKM_ECDSA\",\"input\":\"!!\"}"}) {
    auto d = decode_sign_request(body);
    CHECK_FALSE(d.ok());
    CHECK(d.error().http_status == 400);
  }
  auto p = decode_sign_request(R"({"mechanism":"CKM_RSA_PKCS_PSS","input":"","params":{"hash":"sha3"}})");
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().ckr == CKR_MECHANISM_PARAM_INVALID);
}

TEST_CASE("problem documents carry code and CKR both ways") {
  Error e(ErrorCode::forbidden, "no");
  Error back = decode_problem(403, encode_problem(e));
  CHECK(back.code == ErrorCode::forbidden);
  CHECK(back.ckr == CKR_KEY_HANDLE_INVALID);
  CHECK(back.message == "no");
  Error plain = decode_problem(503, "garbage");
  CHECK(plain.code == ErrorCode::unavailable);
  CHECK(plain.ckr == CKR_DEVICE_ERROR);
}

TEST_CASE("key list round trip") {
  KeyDescription k;
  k.name = "rsa";
  k.id = {1, 2};
  k.label = "rsa2048";
  k.key.type = KeyType::ec;
  k.key.bits = 256;
  k.key.curve = "P-256";
  k.spki = {0x30, 0x00};
  k.certificates = {{0x30, 0x01}};
  k.mechanisms = {"CKM_ECDSA"};
  auto d = decode_key_list(encode_key_list({k}));
  REQUIRE(d.ok());
  REQUIRE(d->size() == 1);
  CHECK((*d)[0].id == k.id);
  CHECK((*d)[0].key.curve == "P-256");
  CHECK((*d)[0].certificates == k.certificates);
  CHECK_FALSE(decode_key_list("{\"keys\":[{\"name\":\"x\",\"id\":\"zz\"}]}").ok());
}
