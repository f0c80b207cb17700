// A daemon Service for unit tests: the config from a YAML text, a fake token serving key "k1" (and
// whatever the test adds), an audit log in a temporary directory, one client identity, and a way to
// run a route's coroutine to its end. Nothing listens: tests call the router and the signing service
// directly.
#pragma once

#include "daemon/policy/auth.h"
#include "daemon/policy/requests_api.h"
#include "daemon/service.h"
#include "tests/daemon/fake_token.h"
#include "tests/test_util.h"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <optional>

namespace p11relay::testing {

inline const std::string kClientFingerprint(64, 'a');

// server (state in PATH/state), token "t" (SoftHSM's path: only the config loader looks at it), key k1 on it for role r,
// client kClientFingerprint with role r; `key_extra` goes under k1, `keys_extra` after it, `clients_extra` after
// the client.
inline std::string sign_config(const std::string& key_extra = "", const std::string& keys_extra = "",
                               const std::string& clients_extra = "") {
  return "server:\n  listen: 127.0.0.1:0\n  certfile: c.pem\n  keyfile: k.pem\n  statedir: state\n"
         "tokens:\n  t:\n    provider: /usr/lib/softhsm/libsofthsm2.so\n    label: x\n"
         "keys:\n  k1:\n    token: t\n    label: a\n    id: \"01\"\n    roles: [r]\n" +
         key_extra + keys_extra + "clients:\n  " + kClientFingerprint + ":\n    nickname: console\n    roles: [r]\n" +
         clients_extra;
}

struct SignFixture {
  TempDir dir{"p11relay-sign"};
  daemon::Service svc;
  std::shared_ptr<FakeToken> token = std::make_shared<FakeToken>("t");
  daemon::ClientIdentity identity;
  asio::io_context io;

  explicit SignFixture(const std::string& yaml = sign_config(), KeyType type = KeyType::ec) {
    dir.write("c.pem", "x");
    dir.write("k.pem", "x");
    std::filesystem::create_directory(dir.path / "state");
    std::filesystem::permissions(dir.path / "state", std::filesystem::perms::owner_all);
    auto config = daemon::load_config(dir.write("p11relayd.yml", yaml));
    REQUIRE_MESSAGE(config.ok(), config.error().message);
    svc.config = *config;
    auto snapshot = daemon::Authenticator::snapshot(*config);
    REQUIRE_MESSAGE(snapshot.ok(), snapshot.error().message);
    svc.publish(*snapshot);
    svc.hostname = "unit";
    auto audit = daemon::AuditLog::open((dir.path / "audit.log").string());
    REQUIRE(audit.ok());
    svc.audit = std::move(audit).value();
    auto state = daemon::open_policy_state(svc);  // quota counters and held requests in PATH/state
    REQUIRE_MESSAGE(state.ok(), state.error().message);
    token->add_key("k1", type, type == KeyType::ec ? 256 : 2048);
    svc.tokens["t"] = token;
    identity.has_certificate = true;
    identity.fingerprint = kClientFingerprint;
    identity.snapshot = *snapshot;
    identity.client = &identity.snapshot->config.clients.at(kClientFingerprint);
  }
  ~SignFixture() {  // what posts to the io_context goes before it
    if (svc.approvals) svc.approvals->drop_watchers();
    svc.audit.reset();
  }

  // Another client of the config, by its fingerprint (an approver, say).
  daemon::ClientIdentity client(const std::string& fingerprint) const {
    daemon::ClientIdentity id = identity;
    id.fingerprint = fingerprint;
    id.client = &id.snapshot->config.clients.at(fingerprint);
    return id;
  }

  // A request context for this client, from 192.0.2.7, with a 10 s deadline.
  daemon::RequestContext context(http::Request& req) {
    return daemon::RequestContext{req, identity, "192.0.2.7", true, daemon::Clock::now() + std::chrono::seconds(10)};
  }

  // Runs `a` on the io_context until it returns.
  template <typename T>
  T run(asio::awaitable<T> a) {
    std::optional<T> out;
    auto guard = asio::make_work_guard(io);
    asio::co_spawn(io, store(std::move(a), out), [&guard](std::exception_ptr e) {
      guard.reset();
      if (e) std::rethrow_exception(e);
    });
    io.run();
    io.restart();
    REQUIRE(out.has_value());
    return std::move(*out);
  }

  // The audit log's records, in order.
  std::vector<nlohmann::json> audit_lines() const {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir.path / "audit.log");
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    return out;
  }

 private:
  template <typename T>
  static asio::awaitable<void> store(asio::awaitable<T> a, std::optional<T>& out) {
    out.emplace(co_await std::move(a));
  }
};

}  // namespace p11relay::testing
