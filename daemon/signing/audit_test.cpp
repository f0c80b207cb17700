#include "daemon/signing/audit.h"
#include "tests/test_util.h"

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

using namespace p11relay::daemon;

TEST_CASE("audit chain verifies, survives reopen, and detects tampering") {
  p11relay::testing::TempDir dir;
  std::string path = (dir.path / "audit.log").string();
  {
    auto log = AuditLog::open(path);
    REQUIRE(log.ok());
    for (int i = 0; i < 3; ++i) REQUIRE((*log)->append({{"sig.keyname", "k"}, {"n", i}}).ok());
  }
  struct stat st {};
  REQUIRE(stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  {
    auto log = AuditLog::open(path);  // continues the chain
    REQUIRE(log.ok());
    REQUIRE((*log)->append({{"sig.keyname", "k"}, {"n", 3}}).ok());
  }
  auto r = verify_audit_file(path);
  CHECK(r.ok);
  CHECK(r.lines == 4);

  std::stringstream all;
  all << std::ifstream(path).rdbuf();
  std::string text = all.str();
  auto pos = text.find("\"n\":1");
  REQUIRE(pos != std::string::npos);
  text.replace(pos, 5, "\"n\":7");
  std::ofstream(path) << text;
  auto bad = verify_audit_file(path);
  CHECK_FALSE(bad.ok);
  CHECK(bad.bad_line == 3);  // the edited line 2 breaks the link stored in line 3

  // Removing a line breaks it too.
  std::istringstream in(all.str());
  std::string l1, l2, l3, l4;
  std::getline(in, l1), std::getline(in, l2), std::getline(in, l3), std::getline(in, l4);
  std::ofstream(path) << l1 << "\n" << l3 << "\n" << l4 << "\n";
  CHECK_FALSE(verify_audit_file(path).ok);
}

TEST_CASE("a record with invalid UTF-8 or a huge string still writes one bounded, verifiable line") {
  p11relay::testing::TempDir dir;
  std::string path = (dir.path / "audit.log").string();
  auto log = AuditLog::open(path);
  REQUIRE(log.ok());
  // Without the replace handler nlohmann::json::dump() throws type_error.316 here, after C_Sign.
  REQUIRE((*log)->append({{"client.filename", "\xFF.exe"}}).ok());
  REQUIRE((*log)->append({{"client.filename", std::string(900 * 1024, 'a')}}).ok());
  std::ifstream in(path);
  std::string first, second;
  REQUIRE(std::getline(in, first));
  REQUIRE(std::getline(in, second));
  CHECK(first.find("\xEF\xBF\xBD.exe") != std::string::npos);  // U+FFFD
  CHECK(second.size() < kAuditMaxString + 300);
  CHECK(second.find("...(921600 bytes)") != std::string::npos);
  CHECK(verify_audit_file(path).ok);
}

TEST_CASE("audit_text cuts on a UTF-8 boundary") {
  std::string s(kAuditMaxString - 1, 'a');
  s += "\xC3\xA9\xC3\xA9";  // é straddles the limit
  std::string cut = audit_text(s);
  CHECK(cut.substr(0, kAuditMaxString - 1) == std::string(kAuditMaxString - 1, 'a'));
  CHECK(cut.substr(kAuditMaxString - 1, 4) == "...(");
  CHECK(audit_text("short") == "short");
}

TEST_CASE("a torn last line (a crash cut its write short) is reported by verify and cut at the next open") {
  p11relay::testing::TempDir dir;
  std::string path = (dir.path / "audit.log").string();
  {
    auto log = AuditLog::open(path);
    REQUIRE(log.ok());
    for (int i = 0; i < 3; ++i) REQUIRE((*log)->append({{"n", i}}).ok());
  }
  std::string whole;
  {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    whole = ss.str();
  }
  std::string last = whole.substr(whole.rfind('\n', whole.size() - 2) + 1);
  std::filesystem::resize_file(path, whole.size() - last.size() / 2);  // the last line, half of it
  auto r = verify_audit_file(path);
  CHECK(r.ok);
  CHECK(r.lines == 2);
  CHECK(r.torn_bytes == last.size() - last.size() / 2);
  {
    auto log = AuditLog::open(path);
    REQUIRE(log.ok());
    CHECK((*log)->torn_bytes() == r.torn_bytes);
    REQUIRE((*log)->append({{"n", 9}}).ok());
  }
  auto after = verify_audit_file(path);
  CHECK(after.ok);
  CHECK(after.lines == 3);
  CHECK(after.torn_bytes == 0);
  // A torn line anywhere but at the end is damage, not a crash: it breaks the chain.
  std::ofstream(path, std::ios::app) << "{\"torn\n" << last;
  CHECK_FALSE(verify_audit_file(path).ok);
}
