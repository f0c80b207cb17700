#include "daemon/ui/audit_view.h"
#include "daemon/ui/csrf.h"
#include "daemon/ui/html.h"
#include "daemon/ui/pages.h"

#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

using namespace p11relay::daemon;
using namespace p11relay::daemon::ui;

TEST_CASE("ui: esc() leaves no markup and no way out of a quoted attribute") {
  CHECK(esc("<script>alert(\"x\")</script>") == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;");
  CHECK(esc("a'b&c") == "a&#39;b&amp;c");
  CHECK(esc("plain-name_1.exe") == "plain-name_1.exe");
  std::string p = page("T<", Tab::pending, "<who>", "");
  CHECK(p.find("<who>") == std::string::npos);
  CHECK(p.find("&lt;who&gt;") != std::string::npos);
}

TEST_CASE("ui: pages go out with the security headers") {
  auto r = html_response(200, "x");
  REQUIRE(r.header("Content-Security-Policy"));
  CHECK(r.header("Content-Security-Policy")->find("frame-ancestors 'none'") != std::string::npos);
  CHECK(r.header("Content-Security-Policy")->find("unsafe-inline") == std::string::npos);
  CHECK(*r.header("Cache-Control") == "no-store");
  CHECK(*r.header("X-Content-Type-Options") == "nosniff");
}

TEST_CASE("ui: CSRF needs this site's Origin (or Referer) and the sender's own token") {
  std::string fp(64, 'a'), other(64, 'b');
  std::string token = csrf_token(fp);
  CHECK(token.size() == 64);
  CHECK(token == csrf_token(fp));
  CHECK(token != csrf_token(other));
  p11relay::http::Request req;
  req.headers.push_back({"Host", "signer:6300"});
  CHECK_FALSE(check_csrf(req, fp, token).ok());  // neither Origin nor Referer
  req.headers.push_back({"Referer", "https://signer:6300/ui/pending"});
  CHECK(check_csrf(req, fp, token).ok());
  CHECK_FALSE(check_csrf(req, other, token).ok());  // another certificate's token
  CHECK_FALSE(check_csrf(req, fp, "").ok());
  req.headers.push_back({"Origin", "https://evil.example"});
  CHECK_FALSE(check_csrf(req, fp, token).ok());  // Origin wins over Referer
  p11relay::http::Request ok;
  ok.headers.push_back({"Host", "signer:6300"});
  ok.headers.push_back({"Origin", "https://signer:6300"});
  CHECK(check_csrf(ok, fp, token).ok());
  p11relay::http::Request sub;
  sub.headers.push_back({"Host", "signer:6300"});
  sub.headers.push_back({"Referer", "https://signer:6300.evil.example/"});
  CHECK_FALSE(check_csrf(sub, fp, token).ok());
}

namespace {
std::string sig_line(const std::string& t, const std::string& key, const std::string& file) {
  return nlohmann::json{{"sig.timestamp", t}, {"sig.keyname", key}, {"client.name", "demo"}, {"sig.type", "CKM_ECDSA"},
                        {"sig.hash", "SHA-256"}, {"client.filename", file}, {"outcome", "ok"}}
      .dump();
}
}  // namespace

TEST_CASE("ui: audit view searches, pages newest first, counts the last 24 hours per hour") {
  int64_t now = 1'800'000'000;  // 2027-01-15T08:00:00Z
  auto at = [&](int64_t ago) { return rfc3339(now - ago); };
  std::string text = sig_line(at(30 * 3600), "k1", "old.exe") + "\n" + sig_line(at(7200 + 5), "k1", "a.exe") + "\n" +
                     "not json\n" +
                     nlohmann::json{{"sig.timestamp", at(100)}, {"sig.keyname", "k2"}, {"operation", "deny"},
                                    {"approver", "admin"}, {"reason", "no"}, {"client.name", "demo"}}
                         .dump() +
                     "\n" + sig_line(at(30), "k2", "<b>.exe") + "\n" + sig_line(at(10), "k2", "c.exe") + "\n";
  AuditQuery q;
  q.per_page = 2;
  auto v = view_audit(text, q, now);
  CHECK(v.matches == 5);
  REQUIRE(v.rows.size() == 2);
  CHECK(v.rows[0].filename == "c.exe");
  CHECK(v.rows[0].line == 6);
  CHECK(v.rows[0].mechanism == "CKM_ECDSA / SHA-256");
  CHECK(v.rows[0].result == "signed");
  q.page = 1;
  v = view_audit(text, q, now);
  REQUIRE(v.rows.size() == 2);
  CHECK(v.rows[0].result == "deny by admin: no");
  CHECK(v.rows[1].filename == "a.exe");
  CHECK(v.per_hour[23] == 2);
  CHECK(v.per_hour[21] == 1);
  int total = 0;
  for (int n : v.per_hour) total += n;
  CHECK(total == 3);  // the 30-hour-old one is outside
  CHECK(v.recent["k2"] == std::array<int, 2>{2, 2});
  CHECK(v.recent["k1"] == std::array<int, 2>{0, 0});
  q = AuditQuery{};
  q.text = "<B>";
  v = view_audit(text, q, now);
  REQUIRE(v.matches == 1);
  CHECK(v.rows[0].filename == "<b>.exe");
  q = AuditQuery{};
  q.visible = [](const std::string& key) { return key == "k1"; };
  v = view_audit(text, q, now);
  CHECK(v.matches == 2);
}

TEST_CASE("ui: the plot has one bar per hour and the total") {
  std::array<int, 24> h{};
  h[23] = 4;
  h[0] = 1;
  std::string svg = signatures_plot(h, 1'800'000'000);
  size_t bars = 0;
  for (size_t p = svg.find("class=\"bar\""); p != std::string::npos; p = svg.find("class=\"bar\"", p + 1)) ++bars;
  CHECK(bars == 24);
  CHECK(svg.find("5 signature(s) in the last 24 hours") != std::string::npos);
}

TEST_CASE("ui: durations") {
  CHECK(duration_text(0) == "expired");
  CHECK(duration_text(59) == "59 s");
  CHECK(duration_text(600) == "10 min 0 s");
  CHECK(duration_text(7300) == "2 h 1 min");
}
