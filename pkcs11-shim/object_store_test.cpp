#include "pkcs11-shim/object_store.h"
#include "tests/shim/test_support.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::shim;

TEST_CASE("build_tokens groups keys by token and skips keys it cannot parse") {
  IdAllocator ids;
  std::vector<std::string> warnings;
  auto bad = testing::rsa_key().desc;
  bad.name = "broken";
  bad.spki = {1, 2, 3};
  auto tokens = build_tokens({testing::rsa_key().desc, bad, testing::ec_key().desc}, ids, warnings);
  REQUIRE(tokens.size() == 1);
  CHECK(tokens[0]->keys.size() == 2);
  CHECK(tokens[0]->objects.size() == 7);
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("broken") != std::string::npos);
}

TEST_CASE("IDs are stable: same identity, same slot and handle; different tokens, different slots") {
  IdAllocator a, b;
  auto t = testing::test_token();
  CHECK(a.slot_id(t) == b.slot_id(t));
  auto u = t;
  u.serial = "other";
  CHECK(a.slot_id(u) != a.slot_id(t));
  CHECK(a.object_handle("x") == a.object_handle("x"));
  CHECK(a.object_handle("x") != a.object_handle("y"));
  CHECK(a.object_handle("x") != 0);
}

TEST_CASE("template matching compares exact bytes and lengths") {
  IdAllocator ids;
  std::vector<std::string> warnings;
  auto tokens = build_tokens({testing::rsa_key().desc}, ids, warnings);
  const Object& priv = *tokens[0]->objects[0];
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE ok[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_SIGN, &yes, 1}};
  CHECK(priv.matches(ok, 2));
  CK_ATTRIBUTE wrong_len[] = {{CKA_CLASS, &cls, 4}};
  CHECK_FALSE(priv.matches(wrong_len, 1));
  CK_ATTRIBUTE sensitive[] = {{CKA_PRIVATE_EXPONENT, nullptr, 0}};
  CHECK_FALSE(priv.matches(sensitive, 1));
  CHECK(priv.matches(nullptr, 0));
}
