// The signing service with a fake token: what leaves, what is recorded, what the quota and the metrics
// count, for each outcome of the token, the route's answer and the audit log.
#include "daemon/signing/signing_service.h"
#include "tests/daemon/sign_fixture.h"

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>

using namespace p11relay;
using namespace p11relay::daemon;
using p11relay::testing::FakeToken;
using p11relay::testing::SignFixture;
using p11relay::testing::sign_config;

namespace {

Bytes digest32() { return Bytes(32, 0x5a); }

SignJob ecdsa_job(const Service::KeyRef& key) {
  SignJob job;
  job.key = key.served->name;
  job.mechanism = CKM_ECDSA;
  job.input = digest32();
  job.deadline = Clock::now() + std::chrono::seconds(5);
  return job;
}

// Files of more than `bytes` cannot grow while it lives (writes fail with EFBIG): a full disk for the
// audit log.
struct FileSizeLimit {
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, SIG_IGN);
    rlimit l = saved;
    l.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &l);
  }
  ~FileSizeLimit() { setrlimit(RLIMIT_FSIZE, &saved); }
  rlimit saved{};
};

struct FailingAnswer : SignAnswer {
  Status build(const Bytes&, nlohmann::json&) override { return Error(ErrorCode::bad_request, "no patch for this file"); }
};

struct SizedAnswer : SignAnswer {
  Status build(const Bytes& sig, nlohmann::json& extra) override {
    extra["perf.size.patch"] = sig.size();
    return {};
  }
};

// A fixture with this client's request context and key k1 at hand.
struct ServiceFixture : SignFixture {
  using SignFixture::SignFixture;
  http::Request req;
  RequestContext ctx = context(req);
  Service::KeyRef key = svc.lookup_key("k1", identity).value();
  SignOrder order(std::string operation, QuotaUse quota = QuotaUse::none, std::string digest = "",
                  std::string file = "") {
    return SignOrder{ctx, key, "k1", std::move(operation), std::move(digest), std::move(file), quota};
  }
  Result<Bytes> sign(SignOrder& o) { return run(sign_digest(svc, o, ecdsa_job(key))); }
};

}  // namespace

TEST_CASE("a signature leaves with its audit record on disk, and the metrics count it") {
  ServiceFixture f;
  SignOrder order = f.order("CKM_ECDSA", QuotaUse::none, "SHA-256", "setup.exe");
  auto sig = f.sign(order);
  REQUIRE_MESSAGE(sig.ok(), sig.error().message);
  CHECK(*sig == FakeToken::signature_for(1, digest32()));
  auto lines = f.audit_lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["sig.keyname"] == "k1");
  CHECK(lines[0]["sig.type"] == "CKM_ECDSA");
  CHECK(lines[0]["sig.hash"] == "SHA-256");
  CHECK(lines[0]["client.name"] == "console");
  CHECK(lines[0]["client.ip"] == "192.0.2.7");
  CHECK(lines[0]["client.filename"] == "setup.exe");
  CHECK(lines[0]["outcome"] == "ok");
  CHECK(lines[0]["perf.elapsed.ms"].is_number());
  CHECK(f.svc.metrics.signatures_by_key().at("k1")[0] == 1);
}

TEST_CASE("a token failure returns its error, records nothing and gives the quota back") {
  ServiceFixture f(sign_config("    policy:\n      quota: {perhour: 1}\n"));
  f.token->fail_with(Error(ErrorCode::token_not_present, "the token was pulled out"));
  SignOrder order = f.order("CKM_ECDSA", QuotaUse::take);
  auto failed = f.sign(order);
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().code == ErrorCode::token_not_present);
  CHECK(f.audit_lines().empty());
  f.token->fail_with(std::nullopt);
  auto second = f.sign(order);  // the hour's one signature is still free
  CHECK(second.ok());
  auto third = f.sign(order);
  REQUIRE_FALSE(third.ok());
  CHECK(third.error().code == ErrorCode::quota);
  CHECK(f.token->jobs().size() == 2);  // a used-up quota never reaches the token
  CHECK(f.audit_lines().size() == 1);
}

TEST_CASE("a signature whose audit record cannot be written does not leave") {
  ServiceFixture f;
  SignOrder order = f.order("CKM_ECDSA");
  Result<Bytes> sig = Error(ErrorCode::internal, "not run");
  {
    FileSizeLimit full(0);
    sig = f.sign(order);
  }
  CHECK(f.token->jobs().size() == 1);  // the token signed
  REQUIRE_FALSE(sig.ok());             // but nothing left
  CHECK(sig.error().code == ErrorCode::internal);
  CHECK(sig.error().message == "audit record could not be written");
  CHECK(f.audit_lines().empty());
  CHECK(f.svc.metrics.signatures_by_key().at("k1")[0] == 0);
}

TEST_CASE("the route's answer is built before the record: its fields are audited, its failure records nothing") {
  ServiceFixture f;
  FailingAnswer refuse;
  SignOrder refused = f.order("pe-coff");
  refused.answer = &refuse;
  auto r = f.sign(refused);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message == "no patch for this file");
  CHECK(f.audit_lines().empty());
  SizedAnswer sized;
  SignOrder order = f.order("pe-coff");
  order.answer = &sized;
  REQUIRE(f.sign(order).ok());
  auto lines = f.audit_lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["perf.size.patch"] == FakeToken::signature_for(2, digest32()).size());
}

TEST_CASE("a built structure reaches the token through the service, on the blocking pool, and is audited once") {
  ServiceFixture f;
  SignOrder order = f.order("pe-coff", QuotaUse::none, "SHA-256", "app.exe");
  SignBuild build = [](const TokenSigner& sign) -> Result<Bytes> {
    ASSIGN_OR_RETURN(Bytes a, sign(CKM_ECDSA, Bytes(32, 1)));
    Bytes out = {'[', ']'};
    out.insert(out.begin() + 1, a.begin(), a.end());
    return out;
  };
  auto built = f.run(sign_built(f.svc, order, build));
  REQUIRE_MESSAGE(built.ok(), built.error().message);
  CHECK(built->front() == '[');
  REQUIRE(f.token->jobs().size() == 1);
  CHECK(f.token->jobs()[0].key == "k1");
  CHECK(f.token->jobs()[0].mechanism == CKM_ECDSA);
  CHECK(f.audit_lines().size() == 1);
}

TEST_CASE("an approved request is counted once signed, and then the quota is used up") {
  ServiceFixture f(sign_config("    policy:\n      quota: {perhour: 2}\n"));
  SignOrder first = f.order("CKM_ECDSA", QuotaUse::take);
  REQUIRE(f.sign(first).ok());
  SignOrder approved = f.order("CKM_ECDSA", QuotaUse::count_after);
  approved.extra["request_id"] = "r-1";
  REQUIRE(f.sign(approved).ok());
  auto third = f.sign(first);
  REQUIRE_FALSE(third.ok());
  CHECK(third.error().code == ErrorCode::quota);
  auto lines = f.audit_lines();
  REQUIRE(lines.size() == 2);
  CHECK(lines[1]["request_id"] == "r-1");
}
