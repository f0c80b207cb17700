// Held requests with a fake token: an approver's decision signs through the signing service on the
// submitter's behalf (audited with the request and the approver), a denial signs nothing.
#include "daemon/policy/requests_api.h"
#include "daemon/transport/router.h"
#include "tests/daemon/sign_fixture.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::daemon;
using p11relay::testing::FakeToken;
using p11relay::testing::SignFixture;
using p11relay::testing::sign_config;

namespace {

const std::string kApprover(64, 'b');

// A fixture whose key k1 needs approval, with an approver (role admin), and one request held by the console.
struct HeldFixture : SignFixture {
  HeldFixture()
      : SignFixture(sign_config("    policy:\n      approval: required\n", "",
                                "  " + kApprover + ":\n    nickname: approver\n    roles: [admin]\n")) {
    http::Request req;
    req.method = "POST";
    req.path = req.target = "/v1/keys/k1/sign";
    req.body = nlohmann::json{{"mechanism", "CKM_ECDSA"}, {"input", base64_encode(Bytes(32, 9))}, {"filename", "b.msi"}}.dump();
    auto ctx = context(req);
    Router router(svc);
    RouteDecision d = router.route(ctx);
    REQUIRE(d.buffered);
    http::Response r = run(d.buffered(ctx));
    REQUIRE_MESSAGE(r.status == 202, r.body);
    id = nlohmann::json::parse(r.body)["request"]["id"].get<std::string>();
  }
  // The signatures' records (not the decisions').
  std::vector<nlohmann::json> signature_lines() const {
    std::vector<nlohmann::json> out;
    for (auto& l : audit_lines())
      if (l.contains("sig.type")) out.push_back(l);  // approvals record their decisions with "operation"
    return out;
  }
  std::string id;
};

}  // namespace

TEST_CASE("an approved request is signed once, for its submitter, and audited with its approver") {
  HeldFixture f;
  CHECK(f.token->jobs().empty());
  auto r = f.run(decide_request(f.svc, f.client(kApprover), f.id, true, "release 1.2"));
  REQUIRE_MESSAGE(r.ok(), r.error().message);
  CHECK(r->state() == "signed");
  CHECK(r->info.signature == FakeToken::signature_for(1, Bytes(32, 9)));
  REQUIRE(f.token->jobs().size() == 1);
  auto lines = f.signature_lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["request_id"] == f.id);
  CHECK(lines[0]["approved_by"] == "approver");
  CHECK(lines[0]["client.name"] == "console");  // the submitter, not the approver
  CHECK(lines[0]["client.filename"] == "b.msi");
  (void)f.run(decide_request(f.svc, f.client(kApprover), f.id, true, "twice"));
  CHECK(f.token->jobs().size() == 1);  // a decided request is never signed again
  CHECK(f.signature_lines().size() == 1);
}

TEST_CASE("a denied request, a self-approval and a failing token sign nothing that leaves") {
  HeldFixture f;
  SUBCASE("denied") {
    auto r = f.run(decide_request(f.svc, f.client(kApprover), f.id, false, "not this build"));
    REQUIRE(r.ok());
    CHECK(r->state() == "denied");
    CHECK(f.token->jobs().empty());
  }
  SUBCASE("approved by its own submitter") {
    auto r = f.run(decide_request(f.svc, f.identity, f.id, true, "me"));
    CHECK_FALSE(r.ok());
    CHECK(f.token->jobs().empty());
  }
  SUBCASE("the token fails") {
    f.token->fail_with(Error(ErrorCode::device_error, "the token broke"));
    auto r = f.run(decide_request(f.svc, f.client(kApprover), f.id, true, "ok"));
    CHECK_FALSE(r.ok());
    CHECK(f.token->jobs().size() == 1);
  }
  CHECK(f.signature_lines().empty());
}
