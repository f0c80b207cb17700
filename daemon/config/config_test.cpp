#include "daemon/config/config.h"
#include "tests/test_util.h"

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace p11relay::daemon;
using p11relay::testing::TempDir;
namespace fs = std::filesystem;

namespace {
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
  CHECK(unknown.error().message.find("did you mean") == std::string::npos);  // nothing near "colour"

  std::string typo = base_config();
  typo.replace(typo.find("listen: 127.0.0.1:0"), 19, "lisen: 127.0.0.1:0");
  auto t = load_config(d.write("typo.yml", typo));
  REQUIRE_FALSE(t.ok());
  CHECK(t.error().message.find("unknown key 'lisen' in server (did you mean 'listen'?)") != std::string::npos);

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

TEST_CASE("tokens and keys selected by RFC 7512 pkcs11: URIs") {
  TempDir d;
  d.write("c.pem", "x");
  d.write("k.pem", "x");
  auto config = [&](const std::string& token, const std::string& key) {
    return std::string("server:\n  listen: 127.0.0.1:0\n  certfile: c.pem\n  keyfile: k.pem\n") +
           "tokens:\n  t:\n    provider: " + kModule + "\n" + token + "keys:\n  k1:\n" + key + "    roles: [r]\n";
  };
  auto c = load_config(d.write(
      "ok.yml", config("    uri: \"pkcs11:token=Code%20Signing;serial=1a2b;manufacturer=SoftHSM%20project;model=m\"\n",
                       "    token: t\n    uri: \"pkcs11:object=rsa%2Dkey;id=%01%ff;type=private\"\n")));
  REQUIRE_MESSAGE(c.ok(), c.error().message);
  const auto& t = c->tokens.at("t");
  CHECK(t.label == "Code Signing");
  CHECK(t.serial == "1a2b");
  CHECK(t.manufacturer == "SoftHSM project");
  CHECK(t.model == "m");
  CHECK(c->keys.at("k1").label == "rsa-key");
  CHECK(c->keys.at("k1").id == p11relay::Bytes{0x01, 0xff});
  CHECK(c->keys.at("k1").has_id);

  // A full key URI (as p11tool prints it) finds its token when keys.K.token is left out.
  auto full = load_config(d.write("full.yml", config("    label: Code Signing\n",
                                                     "    uri: \"pkcs11:token=Code%20Signing;object=rsa;type=private\"\n")));
  REQUIRE_MESSAGE(full.ok(), full.error().message);
  CHECK(full->keys.at("k1").token == "t");

  auto error_of = [&](const std::string& name, const std::string& token, const std::string& key) {
    auto r = load_config(d.write(name, config(token, key)));
    REQUIRE_FALSE(r.ok());
    return r.error().message;
  };
  const std::string label = "    label: x\n", key = "    token: t\n    label: a\n";
  CHECK(error_of("e1.yml", "    uri: \"pkcs11:token=x;colour=red\"\n", key)
            .find("e1.yml:8: tokens.t.uri: pkcs11 URI: unknown path attribute 'colour'") != std::string::npos);
  CHECK(error_of("e2.yml", "    uri: \"pkcs11:object=a\"\n", key)
            .find("e2.yml:8: tokens.t.uri: attribute 'object' is not supported here") != std::string::npos);
  std::string pin = error_of("e3.yml", "    uri: \"pkcs11:token=x?pin-value=123456\"\n", key);
  CHECK(pin.find("e3.yml:8: tokens.t.uri: a PIN cannot be given in the URI") != std::string::npos);
  CHECK(pin.find("123456") == std::string::npos);
  CHECK(error_of("e4.yml", "    uri: \"pkcs11:token=x?pin-source=file:/p\"\n", key).find("put it in the pinfile") !=
        std::string::npos);
  CHECK(error_of("e5.yml", "    uri: \"pkcs11:token=x?module-path=/tmp/m.so\"\n", key)
            .find("query attribute 'module-path' is not supported") != std::string::npos);
  CHECK(error_of("e6.yml", "    uri: \"pkcs11:token=x\"\n    label: x\n", key).find("either uri or label/serial") !=
        std::string::npos);
  CHECK(error_of("e7.yml", "    uri: \"pkcs11:model=m\"\n", key).find("needs a label or a serial") != std::string::npos);
  CHECK(error_of("e8.yml", label, "    token: t\n    uri: \"pkcs11:object=a;type=cert\"\n")
            .find("e8.yml:12: keys.k1.uri: type=cert cannot be served") != std::string::npos);
  CHECK(error_of("e9.yml", label, "    token: t\n    uri: \"pkcs11:object=a\"\n    label: a\n")
            .find("either uri or label/id") != std::string::npos);
  CHECK(error_of("e10.yml", label, "    token: t\n    uri: \"pkcs11:token=other;object=a\"\n")
            .find("does not match tokens.t") != std::string::npos);
  CHECK(error_of("e11.yml", label, "    uri: \"pkcs11:token=other;object=a\"\n")
            .find("fits 0 configured tokens: set keys.k1.token") != std::string::npos);
  CHECK(error_of("e12.yml", label, "    token: t\n    uri: \"pkcs11:object=a;slot-id=1\"\n")
            .find("attribute 'slot-id' is not supported here") != std::string::npos);
  CHECK(error_of("e13.yml", label, "    token: t\n    uri: \"pkcs11:object=a b\"\n").find("(%20)") != std::string::npos);
  CHECK(error_of("e14.yml", label, "    token: t\n    uri: \"pkcs11:type=private\"\n")
            .find("needs a label or an id") != std::string::npos);
}

TEST_CASE("timestamp: relic's section; a key that timestamps needs URLs for it") {
  TempDir d;
  d.write("c.pem", "x");
  d.write("k.pem", "x");
  d.write("tsa.pem", "x");
  const std::string ts_key = "  k2:\n    token: t\n    label: b\n    timestamp: true\n";
  const std::string named_key = "  k3:\n    token: t\n    label: c\n    timestamper: fast\n";
  const std::string section =
      "timestamp:\n  urls: [http://a.example/, http://b.example/]\n  namedurls:\n    fast: [http://c.example/]\n"
      "  timeout: 7\n  cacert: tsa.pem\n  msurls: [http://ms.example/]\n  ratelimit: 2\n";
  auto ok = load_config(d.write("a.yml", base_config(ts_key + named_key) + section));
  REQUIRE_MESSAGE(ok.ok(), ok.error().message);
  CHECK(ok->timestamp.urls_for(ok->keys.at("k2")) == std::vector<std::string>{"http://a.example/", "http://b.example/"});
  CHECK(ok->timestamp.urls_for(ok->keys.at("k3")) == std::vector<std::string>{"http://c.example/"});
  CHECK(ok->timestamp.urls_for(ok->keys.at("k1")).empty());
  CHECK(ok->timestamp.timeout == 7);
  CHECK(ok->timestamp.cacert == (d.path / "tsa.pem").string());

  auto no_section = load_config(d.write("b.yml", base_config(ts_key)));
  REQUIRE_FALSE(no_section.ok());
  CHECK(no_section.error().message.find("no top-level timestamp: section") != std::string::npos);
  auto unknown_name = load_config(d.write("c.yml", base_config(named_key) + "timestamp:\n  urls: [http://a.example/]\n"));
  REQUIRE_FALSE(unknown_name.ok());
  CHECK(unknown_name.error().message.find("'fast' is not in timestamp.namedurls") != std::string::npos);
  auto empty = load_config(d.write("d.yml", base_config(ts_key) + "timestamp:\n  timeout: 5\n"));
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().message.find("URL list") != std::string::npos);
  auto https = load_config(d.write("e.yml", base_config(ts_key) + "timestamp:\n  urls: [https://a.example/]\n"));
  REQUIRE_FALSE(https.ok());
  CHECK(https.error().message.find("not an http:// URL") != std::string::npos);
  auto zero = load_config(d.write("f.yml", base_config() + "timestamp:\n  urls: [http://a.example/]\n  timeout: 0\n"));
  REQUIRE_FALSE(zero.ok());
  CHECK(zero.error().message.find("timestamp.timeout must be > 0") != std::string::npos);
}

TEST_CASE("a key given twice and a listen port out of range are refused") {
  TempDir d;
  d.write("c.pem", "x");
  d.write("k.pem", "x");
  auto dup = load_config(d.write("dup.yml", base_config() + "server:\n  listen: 0.0.0.0:6300\n"));
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.error().message.find("'server' appears twice") != std::string::npos);
  auto nested = load_config(d.write("nested.yml", base_config("  k2:\n    token: t\n    label: b\n    label: c\n")));
  REQUIRE_FALSE(nested.ok());
  CHECK(nested.error().message.find("'label' appears twice") != std::string::npos);
  for (const char* listen : {"127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http", "127.0.0.1"}) {
    std::string text = base_config();
    text.replace(text.find("127.0.0.1:0"), 11, listen);
    auto c = load_config(d.write("l.yml", text));
    REQUIRE_FALSE(c.ok());
    CHECK_MESSAGE(c.error().message.find("port from 0 to 65535") != std::string::npos, listen);
  }
  std::string ok = base_config();
  ok.replace(ok.find("127.0.0.1:0"), 11, "\"[::1]:65535\"");  // quoted: [ starts a YAML flow sequence
  CHECK(load_config(d.write("ok.yml", ok)).ok());
}

TEST_CASE("server.trustedproxies and proxy client entries") {
  TempDir d;
  d.write("c.pem", "x");
  d.write("k.pem", "x");
  const std::string proxy = "  " + std::string(64, 'b') + ":\n    nickname: haproxy\n    proxy: true\n";
  auto with = [&](const std::string& networks, const std::string& entry) {
    std::string y = base_config() + entry;
    if (!networks.empty()) y.insert(y.find("tokens:"), "  trustedproxies: " + networks + "\n");
    return load_config(d.write("p.yml", y));
  };
  auto ok = with("[127.0.0.1, \"10.0.0.0/8\", \"fd00::/8\"]", proxy);
  REQUIRE_MESSAGE(ok.ok(), ok.error().message);
  CHECK(ok->server.trusted_networks.size() == 3);
  CHECK(ok->clients.at(std::string(64, 'b')).proxy);
  CHECK_FALSE(ok->clients.at(std::string(64, 'a')).proxy);
  CHECK(dump_redacted(*ok).find("trustedproxies") != std::string::npos);

  auto bad_net = with("[10.0.0.0/40]", proxy);
  REQUIRE_FALSE(bad_net.ok());
  CHECK(bad_net.error().message.find("server.trustedproxies: '10.0.0.0/40'") != std::string::npos);
  auto no_networks = with("", proxy);  // deny by default: a proxy entry alone trusts nobody
  REQUIRE_FALSE(no_networks.ok());
  CHECK(no_networks.error().message.find("server.trustedproxies is empty") != std::string::npos);
  auto with_roles = with("[127.0.0.1]", proxy + "    roles: [r]\n");
  REQUIRE_FALSE(with_roles.ok());
  CHECK(with_roles.error().message.find("cannot have roles") != std::string::npos);
}
