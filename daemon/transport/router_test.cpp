// The relay API's sign route with a fake token: validation, key lookup, the policy's refusals, holding
// for approval, and the answer; what reaches the token and what is audited.
#include "daemon/transport/router.h"
#include "tests/daemon/sign_fixture.h"

#include "common/bytes.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::daemon;
using p11relay::testing::FakeToken;
using p11relay::testing::SignFixture;
using p11relay::testing::sign_config;

namespace {

// POSTs `body` to /v1/keys/KEY/sign through the router and returns the answer.
http::Response post_sign(SignFixture& f, const std::string& key, const nlohmann::json& body) {
  http::Request req;
  req.method = "POST";
  req.path = req.target = "/v1/keys/" + key + "/sign";
  req.body = body.dump();
  auto ctx = f.context(req);
  Router router(f.svc);
  RouteDecision d = router.route(ctx);
  if (d.response) return *d.response;
  REQUIRE(d.buffered);
  return f.run(d.buffered(ctx));
}

nlohmann::json ecdsa_body(size_t digest_bytes = 32) {
  return {{"mechanism", "CKM_ECDSA"}, {"input", base64_encode(Bytes(digest_bytes, 7))}, {"filename", "a.exe"}};
}

std::string problem_type(const http::Response& r) {
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  return j.is_object() && j.contains("type") ? j["type"].get<std::string>() : r.body;
}

}  // namespace

TEST_CASE("relay sign: the token's signature is answered and audited") {
  SignFixture f;
  auto r = post_sign(f, "k1", ecdsa_body());
  REQUIRE_MESSAGE(r.status == 200, r.body);
  auto j = nlohmann::json::parse(r.body);
  CHECK(*base64_decode(j["signature"].get<std::string>()) == FakeToken::signature_for(1, Bytes(32, 7)));
  REQUIRE(f.token->jobs().size() == 1);
  CHECK(f.token->jobs()[0].mechanism == CKM_ECDSA);
  auto lines = f.audit_lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["client.filename"] == "a.exe");
  CHECK(lines[0]["sig.hash"] == "SHA-256");  // told by the input's length
}

TEST_CASE("relay sign: refusals reach neither the token nor the audit log") {
  SignFixture f;
  SUBCASE("a key that does not exist") { CHECK(post_sign(f, "nope", ecdsa_body()).status == 403); }
  SUBCASE("a mechanism the key does not offer") {
    auto r = post_sign(f, "k1", {{"mechanism", "CKM_RSA_PKCS"}, {"input", base64_encode(Bytes(51, 1))}});
    CHECK(r.status == 400);
    CHECK(r.body.find("is not available for key 'k1'") != std::string::npos);
  }
  SUBCASE("an input that is not a digest") { CHECK(post_sign(f, "k1", ecdsa_body(8)).status == 400); }
  SUBCASE("a body that is not a JSON object") {
    http::Response r = post_sign(f, "k1", "not json");
    CHECK(r.status == 400);
  }
  SUBCASE("a token that is being re-opened") {
    f.token->set_state(TokenState::recovering);
    auto r = post_sign(f, "k1", ecdsa_body());
    CHECK(r.status == 503);
    CHECK(r.header("Retry-After") != nullptr);
  }
  CHECK(f.token->jobs().empty());
  CHECK(f.audit_lines().empty());
}

TEST_CASE("relay sign: the policy's digest rule refuses before the token") {
  SignFixture f(sign_config("    policy:\n      digests: [sha384]\n"));
  auto r = post_sign(f, "k1", ecdsa_body(32));
  CHECK(r.status == 403);
  CHECK(problem_type(r).find("policy-denied") != std::string::npos);
  CHECK(f.token->jobs().empty());
  CHECK(post_sign(f, "k1", ecdsa_body(48)).status == 200);
  CHECK(f.token->jobs().size() == 1);
}

TEST_CASE("relay sign: a quota refuses once used up, and a failed signature does not use it") {
  SignFixture f(sign_config("    policy:\n      quota: {perhour: 1}\n"));
  f.token->fail_with(Error(ErrorCode::device_error, "the token broke"));
  CHECK(post_sign(f, "k1", ecdsa_body()).status >= 500);
  f.token->fail_with(std::nullopt);
  CHECK(post_sign(f, "k1", ecdsa_body()).status == 200);
  auto r = post_sign(f, "k1", ecdsa_body());
  CHECK(r.status == 429);
  CHECK(r.header("Retry-After") != nullptr);
  CHECK(f.token->jobs().size() == 2);
  CHECK(f.audit_lines().size() == 1);
}

TEST_CASE("relay sign: an alias signs with its key and is audited by the name the client used") {
  SignFixture f(sign_config("", "  release:\n    alias: k1\n"));
  REQUIRE(post_sign(f, "release", ecdsa_body()).status == 200);
  auto lines = f.audit_lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["sig.keyname"] == "k1");
  CHECK(lines[0]["client.keyname"] == "release");
}

TEST_CASE("relay sign: a key that needs approval holds the request and signs nothing yet") {
  SignFixture f(sign_config("    policy:\n      approval: required\n"));
  auto r = post_sign(f, "k1", ecdsa_body());
  CHECK(r.status == 202);
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["request"]["state"] == "pending");
  CHECK(f.token->jobs().empty());
  CHECK(f.svc.approvals->size() == 1);
}

TEST_CASE("a wrong method is answered 405, on the relay routes and the held-request routes alike") {
  SignFixture f;
  for (auto [method, path] : {std::pair{"GET", "/v1/keys/k1/sign"}, std::pair{"POST", "/v1/keys"},
                              std::pair{"DELETE", "/v1/requests"}, std::pair{"POST", "/v1/requests/r-1"},
                              std::pair{"GET", "/v1/requests/r-1/approve"}}) {
    http::Request req;
    req.method = method;
    req.path = req.target = path;
    auto ctx = f.context(req);
    RouteDecision d = Router(f.svc).route(ctx);
    REQUIRE_MESSAGE(d.response, method << " " << path);
    CHECK_MESSAGE(d.response->status == 405, method << " " << path);
  }
  CHECK(f.token->jobs().empty());
}

TEST_CASE("relay sign: a key_version that is not the key's is 412 key-changed, before the token") {
  SignFixture f;
  std::string now = f.token->key("k1")->version;
  auto body = ecdsa_body();
  body["key_version"] = std::string(64, '0');
  auto r = post_sign(f, "k1", body);
  CHECK(r.status == 412);
  CHECK(problem_type(r).find("key-changed") != std::string::npos);
  CHECK(r.body.find("list the keys again") != std::string::npos);
  CHECK(f.token->jobs().empty());
  CHECK(f.audit_lines().empty());
  body["key_version"] = now;
  CHECK(post_sign(f, "k1", body).status == 200);
  CHECK(f.token->jobs().size() == 1);
}
