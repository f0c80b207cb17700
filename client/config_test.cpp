#include "client/client.h"
#include "tests/test_util.h"

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

using namespace p11relay;
using namespace p11relay::client;
using p11relay::testing::TempDir;
namespace fs = std::filesystem;

TEST_CASE("a full relic-style config parses, relative paths resolve against the config file") {
  TempDir d;
  d.write("client.pem", "x");
  d.write("client.key", "x");
  d.write("ca.pem", "x");
  std::string cfg = d.write("client.yml", R"(
remote:
  url: https://a.example:6300
  urls: [https://b.example:6300/, https://a.example:6300]
  certfile: client.pem
  keyfile: ./client.key
  cacert: ca.pem
  serverFingerprint: "AA:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99"
  connecttimeout: 2.5
  timeout: 30
  retries: 5
  approvalwait: 120
pkcs11:
  pin: "0000"
  logfile: shim.log
  loglevel: DEBUG
  keycacheseconds: 0
)");
  auto c = load_config(cfg);
  REQUIRE_MESSAGE(c.ok(), c.error().message);
  CHECK(c->urls == std::vector<std::string>{"https://a.example:6300", "https://b.example:6300/"});
  CHECK(c->certfile == (d.path / "client.pem").string());
  CHECK(c->keyfile == (d.path / "client.key").string());
  CHECK(c->cacert == (d.path / "ca.pem").string());
  CHECK(c->server_fingerprint == "aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899");
  CHECK(c->connect_timeout_ms == 2500);
  CHECK(c->request_timeout_ms == 30000);
  CHECK(c->retries == 5);
  CHECK(c->approval_wait_ms == 120000);
  CHECK(c->pin == std::optional<std::string>("0000"));
  CHECK(c->log_file == (d.path / "shim.log").string());
  CHECK(c->log_level == "debug");
  CHECK(c->key_cache_seconds == 0);
  CHECK(c->source == cfg);
}

TEST_CASE("keyfile defaults to certfile; defaults are kept") {
  TempDir d;
  d.write("both.pem", "x");
  auto c = load_config(d.write("c.yml", "remote:\n  url: https://h:1\n  certfile: both.pem\n"));
  REQUIRE(c.ok());
  CHECK(c->keyfile == c->certfile);
  CHECK(c->retries == 3);
  CHECK(c->approval_wait_ms == 900000);
  CHECK(c->key_cache_seconds == 10);
  CHECK_FALSE(c->pin.has_value());
}

TEST_CASE("config errors name the file, the line and the key") {
  TempDir d;
  d.write("c.pem", "x");
  struct Case {
    const char* yaml;
    const char* expect;
  } cases[] = {
      {"remote:\n  url: https://h:1\n  certfile: c.pem\n  colour: blue\n", "unknown key 'colour' in 'remote'"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\nextra: 1\n", "unknown key 'extra' in 'top level'"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\npkcs11:\n  pinn: 1\n", "unknown key 'pinn' in 'pkcs11' (did you mean 'pin'?)"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\n  cacrt: c.pem\n", "(did you mean 'cacert'?)"},
      {"remote:\n  certfile: c.pem\n", "needs 'url', 'urls' or 'directoryurl'"},
      {"remote:\n  directoryurl: http://h:1\n  certfile: c.pem\n", "directoryurl 'http://h:1' is not an https:// URL"},
      {"remote:\n  url: http://h:1\n  certfile: c.pem\n", "not an https:// URL"},
      {"remote:\n  url: https://h:1\n", "needs 'certfile'"},
      {"remote:\n  url: https://h:1\n  certfile: missing.pem\n", "does not exist"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\n  retries: lots\n", "'retries' in 'remote' must be an integer"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\n  retries: -1\n", "between 0 and 100"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\n  timeout: 0\n", "between 0 and 86400"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\n  serverfingerprint: abc\n", "hex SHA-256"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\n  urls: https://x:1\n", "must be a list"},
      {"remote:\n  url: https://h:1\n  certfile: c.pem\npkcs11:\n  loglevel: loud\n", "loglevel 'loud'"},
      {"remote: [\n", ""},
      {"", "empty"},
      {"- a\n- b\n", "must be a mapping"},
      {"pkcs11: {}\n", "missing 'remote'"},
  };
  for (const auto& tc : cases) {
    std::string path = d.write("bad.yml", tc.yaml);
    auto c = load_config(path);
    INFO(tc.yaml);
    REQUIRE_FALSE(c.ok());
    CHECK(c.error().code == ErrorCode::config);
    CHECK(c.error().message.find(path) == 0);
    CHECK(c.error().message.find(tc.expect) != std::string::npos);
  }
}

TEST_CASE("unknown key error carries the line number") {
  auto c = parse_config("remote:\n  url: https://h:1\n  bogus: 1\n", "/x/client.yml");
  REQUIRE_FALSE(c.ok());
  CHECK(c.error().message.find("/x/client.yml:3: unknown key 'bogus'") == 0);
}

TEST_CASE("config search order: P11RELAY_CONFIG, XDG_CONFIG_HOME, then /etc") {
  TempDir d;
  d.write("c.pem", "x");
  std::string a = d.write("a.yml", "remote:\n  url: https://a:1\n  certfile: c.pem\n");
  fs::create_directories(d.path / "xdg" / "p11relay");
  d.write("xdg/p11relay/client.yml", "remote:\n  url: https://xdg:1\n  certfile: ../../c.pem\n");
  setenv("P11RELAY_CONFIG", a.c_str(), 1);
  setenv("XDG_CONFIG_HOME", (d.path / "xdg").c_str(), 1);
  auto c = load_config();
  REQUIRE(c.ok());
  CHECK(c->urls[0] == "https://a:1");
  unsetenv("P11RELAY_CONFIG");
  c = load_config();
  REQUIRE_MESSAGE(c.ok(), c.error().message);
  CHECK(c->urls[0] == "https://xdg:1");
  setenv("P11RELAY_CONFIG", (d.path / "nope.yml").c_str(), 1);
  c = load_config();
  REQUIRE_FALSE(c.ok());
  CHECK(c.error().message.find("nope.yml") != std::string::npos);
  unsetenv("P11RELAY_CONFIG");
  unsetenv("XDG_CONFIG_HOME");
}

TEST_CASE("the sample config/client.yml parses") {
  const char* root = std::getenv("P11RELAY_SOURCE_ROOT");
  if (!root) return;  // run outside meson test
  std::ifstream in(std::string(root) + "/config/client.yml");
  REQUIRE(in);
  std::stringstream text;
  text << in.rdbuf();
  TempDir d;
  fs::create_directories(d.path / "tls");
  for (const char* f : {"tls/client.pem", "tls/client.key", "tls/ca.pem"}) d.write(f, "x");
  auto c = parse_config(text.str(), (d.path / "client.yml").string());
  REQUIRE_MESSAGE(c.ok(), c.error().message);
  CHECK(c->urls.size() == 1);
  CHECK(c->retries == 3);
  CHECK(c->key_cache_seconds == 60);
  CHECK(c->cacert == (d.path / "tls/ca.pem").string());
}
