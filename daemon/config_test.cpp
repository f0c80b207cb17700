#include "daemon/config.h"

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace p11relay::daemon;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/p11relay-config-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& text, mode_t mode = 0644) {
    auto p = path / name;
    std::ofstream(p) << text;
    chmod(p.c_str(), mode);
    return p.string();
  }
};

const char* kModule = "/usr/lib/softhsm/libsofthsm2.so";

std::string base_config(const std::string& extra_key = "") {
  return std::string("server:\n  listen: 127.0.0.1:0\n  certfile: c.pem\n  keyfile: k.pem\n") +
         "tokens:\n  t:\n    provider: " + kModule + "\n    label: x\n" +
         "keys:\n  k1:\n    token: t\n    label: a\n    id: \"01\"\n    roles: [r]\n" + extra_key +
         "clients:\n  " + std::string(64, 'a') + ":\n    nickname: n\n    roles: [r]\n";
}
}  // namespace

TEST_CASE("a valid config loads, paths resolve against the file's directory") {
  TempDir d;
  d.write("c.pem", "x");
  d.write("k.pem", "x");
  auto c = load_config(d.write("p.yml", base_config()));
  REQUIRE_MESSAGE(c.ok(), c.error().message);
  CHECK(c->server.certfile == (d.path / "c.pem").string());
  CHECK(c->keys.at("k1").id == p11relay::Bytes{1});
  CHECK(c->clients.count(std::string(64, 'a')) == 1);
  CHECK(c->resolve_key("k1") == &c->keys.at("k1"));
}

TEST_CASE("unknown keys, wrong types and bad references name file and line") {
  TempDir d;
  d.write("c.pem", "x");
  d.write("k.pem", "x");
  auto unknown = load_config(d.write("a.yml", base_config("  k2:\n    token: t\n    label: b\n    colour: red\n")));
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message.find("a.yml:18") != std::string::npos);
  CHECK(unknown.error().message.find("colour") != std::string::npos);

  auto badtoken = load_config(d.write("b.yml", base_config("  k2:\n    token: nope\n    label: b\n")));
  REQUIRE_FALSE(badtoken.ok());
  CHECK(badtoken.error().message.find("unknown token 'nope'") != std::string::npos);

  std::string wrongtype = base_config();
  wrongtype.replace(wrongtype.find("listen: 127.0.0.1:0"), 19, "tokencheckinterval: [1]");
  auto wt = load_config(d.write("c.yml", wrongtype));
  REQUIRE_FALSE(wt.ok());
  CHECK(wt.error().message.find("c.yml:2") != std::string::npos);

  auto missing = load_config(d.write("d.yml", base_config("  k3:\n    token: t\n    label: b\n    x509certificate: nothere.pem\n")));
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("nothere.pem") != std::string::npos);

  auto syntax = load_config(d.write("e.yml", "server: [\n"));
  REQUIRE_FALSE(syntax.ok());
  CHECK(syntax.error().message.find("e.yml:") != std::string::npos);

  auto badfp = base_config();
  badfp.replace(badfp.find(std::string(64, 'a')), 64, "abc");
  auto bf = load_config(d.write("f.yml", badfp));
  REQUIRE_FALSE(bf.ok());
  CHECK(bf.error().message.find("fingerprint") != std::string::npos);
}

TEST_CASE("pinfile must be private and its PIN is never printed") {
  TempDir d;
  d.write("c.pem", "x");
  d.write("k.pem", "x");
  std::string cfg = base_config() + "pinfile: pins.yml\n";
  std::string path = d.write("p.yml", cfg);
  d.write("pins.yml", "t: \"secret-pin-1234\"\n", 0644);
  auto open = load_config(path);
  REQUIRE_FALSE(open.ok());
  CHECK(open.error().message.find("chmod 600") != std::string::npos);
  CHECK(open.error().message.find("secret-pin-1234") == std::string::npos);
  chmod((d.path / "pins.yml").c_str(), 0600);
  auto ok = load_config(path);
  REQUIRE_MESSAGE(ok.ok(), ok.error().message);
  CHECK(ok->tokens.at("t").pin == std::string("secret-pin-1234"));
  std::string dump = dump_redacted(*ok);
  CHECK(dump.find("secret-pin-1234") == std::string::npos);
  CHECK(dump.find("<redacted>") != std::string::npos);
}

TEST_CASE("vendor modules only from admin-owned allow-listed directories") {
  CHECK(check_module_path(kModule, default_module_dirs()).ok());
  TempDir d;
  std::string copy = d.write("evil.so", "x");
  auto outside = check_module_path(copy, default_module_dirs());
  REQUIRE_FALSE(outside.ok());
  CHECK(outside.error().message.find("outside the allowed") != std::string::npos);
  // Allow-listing a world-writable directory does not help: /tmp is writable by everyone.
  auto writable = check_module_path(copy, {"/tmp"});
  REQUIRE_FALSE(writable.ok());
  CHECK(writable.error().message.find("writable") != std::string::npos);
  CHECK_FALSE(check_module_path("/usr/lib/does-not-exist.so", default_module_dirs()).ok());
}
