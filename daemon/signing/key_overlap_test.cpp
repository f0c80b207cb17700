#include "daemon/signing/key_overlap.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::daemon;

namespace {

std::shared_ptr<const ServedKey> served(const std::string& name, Bytes id, const std::string& label) {
  auto k = std::make_shared<ServedKey>();
  k->name = name;
  k->token_name = "t";
  k->description.id = std::move(id);
  k->description.label = label;
  return k;
}

Config config_with(std::vector<std::pair<std::string, std::vector<std::string>>> key_roles,
                   std::vector<std::string> client_roles) {
  Config c;
  for (auto& [name, roles] : key_roles) {
    c.keys[name].name = name;
    c.keys[name].roles = roles;
  }
  c.clients["aa"].nickname = "build-01";
  c.clients["aa"].roles = std::move(client_roles);
  return c;
}

}  // namespace

TEST_CASE("two keys one client sees with the same CKA_ID or label are named") {
  Config c = config_with({{"release", {"signers"}}, {"nightly", {"signers"}}}, {"signers"});
  auto m = ambiguous_keys(c, {served("release", {1}, "code"), served("nightly", {1}, "nightly")});
  REQUIRE(m.size() == 1);
  CHECK(m[0].find("keys 'release' and 'nightly' on token 't' share CKA_ID 01") != std::string::npos);
  CHECK(m[0].find("build-01") != std::string::npos);

  m = ambiguous_keys(c, {served("release", {1}, "code"), served("nightly", {2}, "code")});
  REQUIRE(m.size() == 1);
  CHECK(m[0].find("label 'code'") != std::string::npos);
}

TEST_CASE("distinct ids and labels, or no client that sees both, are fine") {
  Config c = config_with({{"release", {"signers"}}, {"nightly", {"signers"}}}, {"signers"});
  CHECK(ambiguous_keys(c, {served("release", {1}, "a"), served("nightly", {2}, "b")}).empty());
  Config apart = config_with({{"release", {"release"}}, {"nightly", {"nightly"}}}, {"nightly"});
  CHECK(ambiguous_keys(apart, {served("release", {1}, "a"), served("nightly", {1}, "a")}).empty());
}
