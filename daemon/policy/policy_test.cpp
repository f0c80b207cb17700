#include "daemon/policy/approvals.h"
#include "daemon/policy/policy.h"
#include "daemon/policy/statefile.h"
#include "tests/test_util.h"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

using namespace p11relay;
using namespace p11relay::daemon;
using p11relay::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::tm at(int wday, int hour, int minute) {
  std::tm t{};
  t.tm_wday = wday;
  t.tm_hour = hour;
  t.tm_min = minute;
  return t;
}

relay::SignRequest sign_request(Bytes input) {
  relay::SignRequest r;
  r.input = std::move(input);
  return r;
}

}  // namespace

TEST_CASE("digest detection per mechanism") {
  Bytes d32(32, 1), d20(20, 1), d16(16, 1), d40(40, 1);
  CHECK(detect_digest(CKM_RSA_PKCS, sign_request(digest_info(HashAlg::sha256, d32))) == digest_bit(HashAlg::sha256));
  CHECK(detect_digest(CKM_RSA_PKCS, sign_request(digest_info(HashAlg::sha1, d20))) == digest_bit(HashAlg::sha1));
  CHECK(detect_digest(CKM_RSA_PKCS, sign_request(digest_info(HashAlg::md5, d16))) == digest_bit(HashAlg::md5));
  CHECK(detect_digest(CKM_RSA_PKCS, sign_request(d32)) == kDigestNone);  // raw input, no DigestInfo
  auto pss = sign_request(Bytes(48, 1));
  pss.pss = relay::PssParams{HashAlg::sha384, HashAlg::sha384, 48};
  CHECK(detect_digest(CKM_RSA_PKCS_PSS, pss) == digest_bit(HashAlg::sha384));
  CHECK(detect_digest(CKM_ECDSA, sign_request(d16)) == digest_bit(HashAlg::md5));
  CHECK(detect_digest(CKM_ECDSA, sign_request(d20)) == digest_bit(HashAlg::sha1));
  CHECK(detect_digest(CKM_ECDSA, sign_request(d32)) == digest_bit(HashAlg::sha256));
  CHECK(detect_digest(CKM_ECDSA, sign_request(d40)) == kDigestNone);
  auto declared = sign_request(d32);
  declared.digest_alg = HashAlg::sha256;
  CHECK(detect_digest(CKM_ECDSA, declared) == digest_bit(HashAlg::sha256));
  declared.digest_alg = HashAlg::sha1;  // length does not match: the length decides
  CHECK(detect_digest(CKM_ECDSA, declared) == digest_bit(HashAlg::sha256));
  CHECK(digest_alg(digest_bit(HashAlg::sha384)) == HashAlg::sha384);
  CHECK(digest_alg(digest_bit(HashAlg::md5)) == HashAlg::md5);
  CHECK_FALSE(digest_alg(kDigestNone).has_value());
  CHECK(digest_class_name(kDigestNone) == "none");
}

TEST_CASE("default policy refuses md5, sha1 and raw input; a listed digest is allowed") {
  KeyPolicy p;
  CHECK(check_policy(p, {digest_bit(HashAlg::sha256), CKM_ECDSA, {}, 0}).ok());
  for (uint32_t bit : {digest_bit(HashAlg::md5), digest_bit(HashAlg::sha1), kDigestNone}) {
    auto st = check_policy(p, {bit, CKM_ECDSA, {}, 0});
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == ErrorCode::policy_denied);
    CHECK(st.error().http_status == 403);
    CHECK(st.error().ckr == CKR_FUNCTION_REJECTED);
    CHECK(st.error().message.find("policy.digests") != std::string::npos);
  }
  p.digests |= *digest_bit_by_name("sha1");
  CHECK(check_policy(p, {digest_bit(HashAlg::sha1), CKM_ECDSA, {}, 0}).ok());
  CHECK_FALSE(digest_bit_by_name("sha3").has_value());
  CHECK(digest_class_name(kDigestNone) == "none");
}

TEST_CASE("mechanism and sigtype rules") {
  KeyPolicy p;
  p.mechanisms = {CKM_RSA_PKCS};
  p.sigtypes = {"pe-coff"};
  CHECK(check_policy(p, {digest_bit(HashAlg::sha256), CKM_RSA_PKCS, {}, 0}).ok());
  auto st = check_policy(p, {digest_bit(HashAlg::sha256), CKM_RSA_PKCS_PSS, {}, 0});
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("policy.mechanisms") != std::string::npos);
  CHECK(check_policy(p, {digest_bit(HashAlg::sha256), 0, "pe-coff", 0}).ok());
  CHECK_FALSE(check_policy(p, {digest_bit(HashAlg::sha256), 0, "jar", 0}).ok());
}

TEST_CASE("time windows: days, hours, past midnight, bad text") {
  auto w = parse_window("Mon-Fri 07:00-19:00");
  REQUIRE(w.ok());
  CHECK(in_window(*w, at(1, 7, 0)));
  CHECK(in_window(*w, at(5, 18, 59)));
  CHECK_FALSE(in_window(*w, at(5, 19, 0)));
  CHECK_FALSE(in_window(*w, at(6, 12, 0)));  // Saturday
  CHECK_FALSE(in_window(*w, at(0, 12, 0)));  // Sunday
  auto night = parse_window("Fri 22:00-06:00");
  REQUIRE(night.ok());
  CHECK(in_window(*night, at(5, 23, 0)));
  CHECK(in_window(*night, at(6, 5, 59)));   // Saturday morning belongs to Friday's window
  CHECK_FALSE(in_window(*night, at(5, 5, 0)));  // Friday morning belongs to Thursday
  auto weekend = parse_window("sat,Sun 00:00-24:00");
  REQUIRE(weekend.ok());
  CHECK(in_window(*weekend, at(0, 23, 59)));
  CHECK_FALSE(in_window(*weekend, at(1, 0, 0)));
  auto wrap = parse_window("Fri-Mon 09:00-10:00");
  REQUIRE(wrap.ok());
  CHECK(wrap->days == 0b1100011);
  for (const char* bad : {"", "Mon-Fri", "07:00-19:00 Mon", "Mon-Fri 7:00-19:00", "Xyz 07:00-08:00", "25:00-26:00",
                          "08:00-08:00", "Mon-Fri  07:00-19:00"})
    CHECK_MESSAGE(!parse_window(bad).ok(), bad);

  KeyPolicy p;
  p.windows = {*w};
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  auto st = check_policy(p, {digest_bit(HashAlg::sha256), CKM_ECDSA, {}, now});
  CHECK(st.ok() == in_window(*w, local));
  if (!st.ok()) CHECK(st.error().message.find("Mon-Fri 07:00-19:00") != std::string::npos);
}

TEST_CASE("approval needed unless an autoapprove role") {
  KeyPolicy p;
  CHECK_FALSE(needs_approval(p, {"build"}));
  p.approval = true;
  p.autoapprove = {"release"};
  CHECK(needs_approval(p, {"build"}));
  CHECK_FALSE(needs_approval(p, {"build", "release"}));
}

TEST_CASE("quota: N per hour, the N+1st refused with Retry-After, a new hour frees it, per client and key") {
  KeyPolicy p;
  p.perhour = 2;
  p.perday = 3;
  Quotas q;
  std::time_t t = 1'000'000'000 - 1'000'000'000 % 86400 + 100;  // 100 s into a UTC day
  CHECK(q.take("c1", "k", p, t).ok());
  CHECK(q.take("c1", "k", p, t).ok());
  auto st = q.take("c1", "k", p, t);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().code == ErrorCode::quota);
  CHECK(st.error().http_status == 429);
  CHECK(st.error().retry_after == 3500);
  CHECK(q.take("c2", "k", p, t).ok());   // another client
  CHECK(q.take("c1", "k2", p, t).ok());  // another key
  CHECK_FALSE(q.check("c1", "k", p, t).ok());
  q.give_back("c1", "k", t);
  CHECK(q.check("c1", "k", p, t).ok());
  CHECK(q.take("c1", "k", p, t).ok());
  CHECK(q.take("c1", "k", p, t + 3600).ok());  // the next hour; the day now has 3
  st = q.take("c1", "k", p, t + 7200);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().retry_after == 86400 - 7300);
  CHECK(q.take("c1", "k", p, t + 7200, /*force=*/true).ok());
}

TEST_CASE("quota counters persist; a corrupted file is reported and ignored") {
  TempDir dir;
  std::string file = (dir.path / "quota.json").string();
  KeyPolicy p;
  p.perday = 2;
  std::time_t t = std::time(nullptr);
  {
    Quotas q(file);
    REQUIRE(q.load(t).ok());
    CHECK(q.take("c", "k", p, t).ok());
    CHECK(q.take("c", "k", p, t).ok());
  }
  {
    Quotas q(file);
    REQUIRE(q.load(t).ok());
    CHECK_FALSE(q.take("c", "k", p, t).ok());
    CHECK(q.load(t + 86400).ok());  // counters of a past day are dropped
  }
  std::ofstream(file) << "{not json";
  Quotas q(file);
  CHECK_FALSE(q.load(t).ok());
  CHECK(q.take("c", "k", p, t).ok());
  // Mistyped and out-of-range numbers count as zero (were: an exception out of load(), or a float converted
  // with undefined behaviour).
  std::ofstream(file, std::ios::trunc) << R"({"a":{"hour":"x","day":1e300,"in_hour":[],"in_day":1e30},)"
                                       << R"("b":{"hour":18446744073709551615,"in_hour":-7}})";
  Quotas hostile(file);
  CHECK(hostile.load(t).ok());
  CHECK(hostile.take("a", "k", p, t).ok());
}

TEST_CASE("decision bodies") {
  CHECK(*decode_decision_body("", "comment", false) == "");
  CHECK(*decode_decision_body(R"({"comment":"ok"})", "comment", false) == "ok");
  CHECK(*decode_decision_body(R"({"reason":"no ticket"})", "reason", true) == "no ticket");
  CHECK_FALSE(decode_decision_body("", "reason", true).ok());
  CHECK_FALSE(decode_decision_body(R"({"reason":""})", "reason", true).ok());
  CHECK_FALSE(decode_decision_body(R"({"reason":5})", "reason", true).ok());
  CHECK_FALSE(decode_decision_body("[1]", "reason", true).ok());
  CHECK_FALSE(decode_decision_body("{", "comment", false).ok());
  CHECK_FALSE(decode_decision_body(R"({"reason":")" + std::string(501, 'x') + "\"}", "reason", true).ok());
}

namespace {
HeldRequest held(const std::string& client_fp, const std::string& input, int64_t expires) {
  HeldRequest h;
  h.info.key = "ev";
  h.info.client = "ci";
  h.info.client_fingerprint = client_fp;
  h.info.mechanism = "CKM_ECDSA";
  h.info.digest = "sha256";
  h.mech = CKM_ECDSA;
  h.input = to_bytes(input);
  h.digest_name = "SHA-256";
  h.idem = request_identity(client_fp, h);
  h.expires = expires;
  return h;
}
}  // namespace

TEST_CASE("held requests: submit is idempotent, approve/deny rules, signing at most once") {
  TempDir dir;
  Approvals a(dir.path.string(), nullptr, "host");
  int64_t now = 1'700'000'000;
  bool created = false;
  auto r1 = a.submit(held("fp1", "x", now + 600), now, created);
  REQUIRE(r1.ok());
  CHECK(created);
  CHECK(r1->state() == "pending");
  CHECK(r1->info.id.size() == 18);
  CHECK(fs::exists(dir.path / (r1->info.id + ".json")));
  auto again = a.submit(held("fp1", "x", now + 600), now + 1, created);
  CHECK_FALSE(created);
  CHECK(again->info.id == r1->info.id);
  auto other = a.submit(held("fp2", "x", now + 600), now, created);  // another client: another request
  CHECK(created);
  CHECK(other->info.id != r1->info.id);

  auto self = a.approve(r1->info.id, "ci", "fp1", "", now);
  REQUIRE_FALSE(self.ok());
  CHECK(self.error().code == ErrorCode::self_approval);
  auto ok = a.approve(r1->info.id, "alice", "fpA", "looks fine", now);
  REQUIRE(ok.ok());
  CHECK(ok->state() == "signing");
  CHECK(wire_view(*ok, true).state == "approved");
  auto twice = a.approve(r1->info.id, "bob", "fpB", "", now);
  REQUIRE_FALSE(twice.ok());
  CHECK(twice.error().code == ErrorCode::not_pending);
  CHECK(twice.error().http_status == 409);
  REQUIRE(a.finish(r1->info.id, Bytes{1, 2, 3}, now).ok());
  auto done = a.get(r1->info.id, now);
  CHECK(done->state() == "signed");
  CHECK(wire_view(*done, true).signature == Bytes{1, 2, 3});
  CHECK(wire_view(*done, false).signature.empty());
  // A retry after signing gets the signed request back, never a second one.
  auto retry = a.submit(held("fp1", "x", now + 600), now + 5, created);
  CHECK_FALSE(created);
  CHECK(retry->state() == "signed");

  auto denied = a.deny(other->info.id, "fp2-self", "fp2", "no ticket", now);  // a submitter may deny
  REQUIRE(denied.ok());
  CHECK(denied->state() == "denied");
  CHECK(denied->info.reason == "no ticket");
  auto after_deny = a.submit(held("fp2", "x", now + 600), now + 5, created);
  CHECK(created);  // denied is final: a new POST is a new request
  size_t before = a.size();
  (void)a.submit(held("fp9", "later", now + 8 * 86400 + 600), now + 8 * 86400, created);
  CHECK(a.size() == before + 1 - 2);  // the signed and the denied request of a week ago are pruned
  CHECK_FALSE(fs::exists(dir.path / (r1->info.id + ".json")));

  // The token failed: back to pending, nothing stored as signed.
  auto r3 = a.submit(held("fp3", "y", now + 600), now, created);
  REQUIRE(a.approve(r3->info.id, "alice", "fpA", "", now).ok());
  REQUIRE(a.finish(r3->info.id, Error(ErrorCode::token_not_present, "gone"), now).ok());
  CHECK(a.get(r3->info.id, now)->state() == "pending");
  CHECK(a.get(r3->info.id, now)->info.decided_by.empty());
}

TEST_CASE("held requests expire, and survive a restart; signing at restart goes back to pending") {
  TempDir dir;
  int64_t now = 1'700'000'000;
  std::string pending_id, signing_id, expiring_id, signed_id;
  {
    Approvals a(dir.path.string(), nullptr, "host");
    bool created = false;
    pending_id = a.submit(held("fp1", "p", now + 600), now, created)->info.id;
    signing_id = a.submit(held("fp1", "s", now + 600), now, created)->info.id;
    expiring_id = a.submit(held("fp1", "e", now + 10), now, created)->info.id;
    signed_id = a.submit(held("fp1", "d", now + 600), now, created)->info.id;
    REQUIRE(a.approve(signing_id, "alice", "fpA", "", now).ok());
    REQUIRE(a.approve(signed_id, "alice", "fpA", "", now).ok());
    REQUIRE(a.finish(signed_id, Bytes{9}, now).ok());
    CHECK(a.get(expiring_id, now + 11)->state() == "expired");
    auto late = a.approve(expiring_id, "alice", "fpA", "", now + 11);
    CHECK(late.error().code == ErrorCode::not_pending);
  }
  // A corrupted file and a stray one are set aside, not fatal.
  std::ofstream(dir.path / "r-00000000000000ff.json") << "{\"request\": 1";
  Approvals b(dir.path.string(), nullptr, "host");
  auto problems = b.load(now + 20);
  REQUIRE(problems.size() == 1);
  CHECK(fs::exists(dir.path / "r-00000000000000ff.json.bad"));
  CHECK(b.get(pending_id, now + 20)->state() == "pending");
  CHECK(b.get(signing_id, now + 20)->state() == "pending");
  CHECK(b.get(expiring_id, now + 20)->state() == "expired");
  CHECK(b.get(signed_id, now + 20)->info.signature == Bytes{9});
  CHECK(b.list(false, now + 20).size() == 2);
  CHECK(b.list(true, now + 20).size() == 4);
  REQUIRE(b.approve(pending_id, "alice", "fpA", "", now + 20).ok());
  // Pending past its expiry at load: expired. Decided ones older than 7 days: pruned.
  Approvals c(dir.path.string(), nullptr, "host");
  c.load(now + 8 * 86400);
  CHECK(c.size() == 1);  // only the one now signing (reset to pending, then expired) is younger
}

TEST_CASE("state file round trip and hostile content") {
  HeldRequest h = held("fp", "abc", 5);
  h.info.id = "r-0123456789abcdef";
  h.info.state = "pending";
  h.pss = relay::PssParams{HashAlg::sha384, HashAlg::sha256, 20};
  h.info.filesize = 42;
  h.client_entry = "ci-entry";
  auto back = decode_held(encode_held(h));
  REQUIRE(back.ok());
  CHECK(back->info.id == h.info.id);
  CHECK(back->input == h.input);
  CHECK(back->pss->hash == HashAlg::sha384);
  CHECK(back->pss->salt_length == 20);
  CHECK(back->info.filesize == 42u);
  CHECK(back->client_entry == "ci-entry");
  CHECK(back->idem == h.idem);
  for (const char* bad : {"", "null", "[]", "{\"request\":{}}", "{\"request\":{\"id\":\"../x\",\"state\":\"pending\"}}",
                          "{\"request\":{\"id\":\"r-0123456789abcdef\",\"state\":\"weird\"},\"kind\":\"relay\","
                          "\"mech\":1,\"input\":\"\",\"idem\":\"\",\"created\":1,\"expires\":2}",
                          "{\"request\":{\"id\":\"r-0123456789abcdef\",\"state\":\"pending\"},\"kind\":5}"})
    CHECK_MESSAGE(!decode_held(bad).ok(), bad);
  // Numbers that are not integers in range (fuzz_approvals: a float 'created' was converted with undefined
  // behaviour); UBSan in CI's sanitizer run would stop here before the fix.
  std::string good = encode_held(h);
  auto with = [&](const std::string& field, const std::string& value) {
    auto j = nlohmann::json::parse(good);
    if (field == "salt_length") j["pss"][field] = nlohmann::json::parse(value);
    else j[field] = nlohmann::json::parse(value);
    return j.dump();
  };
  for (const char* field : {"created", "expires", "mech", "salt_length"})
    for (const char* value : {"1e30", "-1e300", "1.5", "\"7\"", "18446744073709551615", "null"}) {
      CAPTURE(field);
      CAPTURE(value);
      CHECK_FALSE(decode_held(with(field, value)).ok());
    }
  CHECK_FALSE(decode_held(with("mech", "-1")).ok());
  CHECK_FALSE(decode_held(with("salt_length", "-1")).ok());
  CHECK(decode_held(with("created", "-5")).ok());  // an integer, even a strange one, is a valid time
}

TEST_CASE("expire_due expires unread requests at their expiry and wakes their waiters; signing ones wait") {
  TempDir dir;
  int64_t now = 1'700'000'000;
  Approvals a(dir.path.string(), nullptr, "host");
  bool created = false;
  std::string early = a.submit(held("fp1", "early", now + 10), now, created)->info.id;
  std::string late = a.submit(held("fp1", "late", now + 20), now, created)->info.id;
  std::string signing = a.submit(held("fp1", "signing", now + 10), now, created)->info.id;
  REQUIRE(a.approve(signing, "alice", "fpA", "", now).ok());
  int woken = 0;
  REQUIRE(a.watch(early, "pending", [&] { ++woken; }));
  a.expire_due(now + 9);
  CHECK(woken == 0);
  a.expire_due(now + 10);
  CHECK(woken == 1);
  CHECK_FALSE(a.watch(early, "pending", [] {}));  // already left pending: expired
  CHECK(a.watch(late, "pending", [&] { ++woken; }));
  CHECK(a.watch(signing, "signing", [&] { ++woken; }));
  a.expire_due(now + 19);
  CHECK(woken == 1);
  a.expire_due(now + 20);
  CHECK(woken == 2);
  // The token failed: back to pending and due again at once (its expiry has passed).
  REQUIRE(a.finish(signing, Error(ErrorCode::token_not_present, "gone"), now + 21).ok());
  CHECK(woken == 3);
  REQUIRE(a.watch(signing, "pending", [&] { ++woken; }));
  a.expire_due(now + 21);
  CHECK(woken == 4);
  for (const auto& id : {early, late, signing}) CHECK(a.get(id, now + 21)->state() == "expired");
  // After a restart the first sweep looks at every request.
  Approvals b(dir.path.string(), nullptr, "host");
  std::string fresh = a.submit(held("fp2", "fresh", now + 30), now + 21, created)->info.id;
  b.load(now + 21);
  REQUIRE(b.watch(fresh, "pending", [&] { ++woken; }));
  b.expire_due(now + 30);
  CHECK(woken == 5);
}
