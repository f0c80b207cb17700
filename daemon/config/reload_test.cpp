#include "daemon/config/reload.h"

#include <doctest/doctest.h>

using namespace p11relay::daemon;

namespace {
KeyConfig key(const std::string& token, const std::string& label, const std::string& alias = "") {
  KeyConfig k;
  k.token = token;
  k.label = label;
  k.alias = alias;
  k.roles = {"r"};
  return k;
}
}  // namespace

TEST_CASE("reload: roles and clients apply, token-facing changes need a restart") {
  Config running;
  // std::string(...): GCC 12 at -O3 warns (-Wrestrict, a false positive) on assigning literals to these.
  running.tokens["t"].label = std::string("x");
  running.keys["k"] = key("t", "a");
  running.keys["al"] = key("", "", "k");

  Config fresh = running;
  fresh.keys["k"].roles = {"other"};
  fresh.clients["c"].roles = {"other"};
  CHECK(needs_restart(running, fresh).empty());
  CHECK(fresh.keys.at("k").roles == std::vector<std::string>{"other"});

  fresh.server.listen = "127.0.0.1:1";
  fresh.tokens["t"].numworkers = 2;
  fresh.keys["k"].label = std::string("b");
  fresh.keys["new"] = key("t", "n");
  auto changed = needs_restart(running, fresh);
  CHECK(changed == std::vector<std::string>{"server", "tokens.t", "keys.k (token, label, id or certificate)",
                                            "keys.new (new key)"});
  CHECK(fresh.keys.at("k").label == "a");  // what the token serves
  CHECK(fresh.keys.at("k").roles == std::vector<std::string>{"other"});
  CHECK(fresh.keys.count("new") == 0);
}
