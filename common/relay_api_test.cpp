#include "common/relay_api.h"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

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
  k.approval = "required";
  auto d = decode_key_list(encode_key_list({k}));
  REQUIRE(d.ok());
  REQUIRE(d->size() == 1);
  CHECK((*d)[0].approval == "required");
  CHECK((*d)[0].id == k.id);
  CHECK((*d)[0].key.curve == "P-256");
  CHECK((*d)[0].certificates == k.certificates);
  CHECK_FALSE(decode_key_list("{\"keys\":[{\"name\":\"x\",\"id\":\"zz\"}]}").ok());
}

TEST_CASE("sign request carries filename and filesize") {
  SignRequest r;
  r.mechanism = "CKM_ECDSA";
  r.input = Bytes(32, 1);
  r.filename = "setup.exe";
  r.filesize = 1048576;
  r.digest_alg = HashAlg::sha256;
  auto d = decode_sign_request(encode_sign_request(r));
  REQUIRE(d.ok());
  CHECK(d->filename == "setup.exe");
  CHECK(d->filesize == std::optional<uint64_t>(1048576));
  CHECK_FALSE(decode_sign_request(R"({"mechanism":"CKM_ECDSA","input":"","filesize":-1})").ok());
  CHECK_FALSE(decode_sign_request(R"({"mechanism":"CKM_ECDSA","input":""})")->filesize.has_value());
}

TEST_CASE("approval requests round trip, bare, wrapped and in lists") {
  ApprovalRequest r;
  r.id = "r-3f9a1c2e7b5d4e60";
  r.key = "ev";
  r.client = "ci";
  r.mechanism = "CKM_RSA_PKCS";
  r.digest = "sha256";
  r.state = "signed";
  r.filename = "setup.exe";
  r.filesize = 42;
  r.expires = "2026-11-25T14:13:00Z";
  r.decided_by = "alice";
  r.signature = {1, 2, 3};
  auto d = decode_approval_request(encode_approval_request(r));
  REQUIRE(d.ok());
  CHECK(d->id == r.id);
  CHECK(d->filesize == std::optional<uint64_t>(42));
  CHECK(d->signature == r.signature);
  CHECK(d->decided_by == "alice");
  CHECK_FALSE(d->pending());
  auto w = decode_approval_request(R"({"request":{"id":"r-1","state":"pending"}})");
  REQUIRE(w.ok());
  CHECK(w->pending());
  CHECK(w->signature.empty());
  auto l = decode_approval_list(encode_approval_list({r, *w}));
  REQUIRE(l.ok());
  REQUIRE(l->size() == 2);
  CHECK((*l)[1].id == "r-1");
  for (const char* bad : {"", "[]", "{}", R"({"id":"r-1"})", R"({"id":"r-1","state":"signed","signature":"!!"})"})
    CHECK_FALSE(decode_approval_request(bad).ok());
  CHECK_FALSE(decode_approval_list(R"({"requests":[{}]})").ok());
}

TEST_CASE("RFC 3339 UTC times") {
  CHECK(parse_utc_time("1970-01-01T00:01:00Z") == std::optional<int64_t>(60));
  CHECK(parse_utc_time("2026-11-25T14:13:00.250Z") == std::optional<int64_t>(1795615980));
  CHECK_FALSE(parse_utc_time("2026-11-25 14:13:00").has_value());
  CHECK_FALSE(parse_utc_time("2026-11-25T14:13:00+01:00").has_value());
}

TEST_CASE("policy problem codes map to their CKR") {
  CHECK(decode_problem(403, encode_problem(Error(ErrorCode::request_denied, "x"))).ckr == CKR_FUNCTION_REJECTED);
  CHECK(decode_problem(408, encode_problem(Error(ErrorCode::request_expired, "x"))).ckr == CKR_FUNCTION_CANCELED);
  CHECK(decode_problem(403, encode_problem(Error(ErrorCode::policy_denied, "x"))).code == ErrorCode::policy_denied);
  CHECK(decode_problem(409, encode_problem(Error(ErrorCode::not_pending, "x"))).http_status == 409);
  CHECK(decode_problem(429, "not json").code == ErrorCode::quota);
}

TEST_CASE("the common sign request and response take the direct path and read as the json ones") {
  SignRequest r;
  r.mechanism = "CKM_ECDSA";
  r.input = Bytes(32, 0xab);
  r.digest_alg = HashAlg::sha256;
  std::string direct = encode_sign_request(r);
  nlohmann::json j = {{"mechanism", "CKM_ECDSA"}, {"input", base64_encode(r.input)}, {"digest", "sha256"}};
  CHECK(direct == j.dump());
  r.digest_alg.reset();
  CHECK(encode_sign_request(r) == nlohmann::json({{"mechanism", "CKM_ECDSA"}, {"input", base64_encode(r.input)}}).dump());
  auto d = decode_sign_request(direct);
  REQUIRE(d.ok());
  CHECK(d->input == Bytes(32, 0xab));
  CHECK(d->digest_alg == HashAlg::sha256);
  // A mechanism name that would need escaping goes through the json writer.
  r.mechanism = "CKM_\"X";
  CHECK(nlohmann::json::parse(encode_sign_request(r))["mechanism"] == "CKM_\"X");

  Bytes sig = {1, 2, 3, 250};
  CHECK(*decode_sign_response(encode_sign_response(sig)) == sig);
  CHECK(*decode_sign_response(R"({ "signature" : "AQID+g==" })") == sig);  // other spacing: the parser
  CHECK_FALSE(decode_sign_response(R"({"signature":"AQID+g="})").ok());    // bad base64 either way
  CHECK_FALSE(decode_sign_response(R"({"signature":"AQ\"ID"})").ok());
}

TEST_CASE("a sign request's filename is bounded and one line") {
  std::string ok = R"({"mechanism":"CKM_ECDSA","input":"AAAA","filename":")" + std::string(kMaxFilenameBytes, 'a') + "\"}";
  CHECK(decode_sign_request(ok).ok());
  std::string big = R"({"mechanism":"CKM_ECDSA","input":"AAAA","filename":")" + std::string(kMaxFilenameBytes + 1, 'a') + "\"}";
  auto r = decode_sign_request(big);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == p11relay::ErrorCode::bad_json);
  CHECK_FALSE(decode_sign_request(R"({"mechanism":"CKM_ECDSA","input":"AAAA","filename":"a\nINFO forged"})").ok());
  CHECK_FALSE(decode_sign_request(R"({"mechanism":"CKM_ECDSA","input":"AAAA","filename":"a\u0000"})").ok());
}

TEST_CASE("key_version: over the public key and the chain, carried by the direct and the json encoders") {
  KeyDescription k;
  k.spki = Bytes{1, 2, 3};
  k.certificates = {Bytes{4, 5}};
  std::string v = key_version(k);
  CHECK(v.size() == 64);
  KeyDescription renewed = k;
  renewed.certificates = {Bytes{4, 6}};
  CHECK(key_version(renewed) != v);
  KeyDescription rekeyed = k;
  rekeyed.spki = Bytes{1, 2, 4};
  CHECK(key_version(rekeyed) != v);
  // The length prefixes keep the boundaries: moving a byte from the key into the chain changes it.
  KeyDescription shifted;
  shifted.spki = Bytes{1, 2};
  shifted.certificates = {Bytes{3, 4, 5}};
  CHECK(key_version(shifted) != v);

  SignRequest r;
  r.mechanism = "CKM_ECDSA";
  r.input = Bytes(32, 1);
  r.key_version = v;
  nlohmann::json j = {{"mechanism", "CKM_ECDSA"}, {"input", base64_encode(r.input)}, {"key_version", v}};
  CHECK(encode_sign_request(r) == j.dump());
  r.filename = "a.exe";  // the json writer
  auto d = decode_sign_request(encode_sign_request(r));
  REQUIRE(d.ok());
  CHECK(d->key_version == v);
  for (std::string bad : {std::string(63, 'a'), std::string(64, 'A'), std::string(64, 'g')}) {
    j["key_version"] = bad;
    auto e = decode_sign_request(j.dump());
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().code == ErrorCode::bad_json);
  }
}
