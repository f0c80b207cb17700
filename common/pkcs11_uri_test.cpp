#include "common/pkcs11_uri.h"

#include <doctest/doctest.h>

using namespace p11relay;

TEST_CASE("pkcs11 URI: path and query attributes, percent-decoded") {
  auto u = parse_pkcs11_uri("pkcs11:token=Code%20Signing;serial=1a2b;object=rsa;id=%01%02;type=private?module-name=x");
  REQUIRE(u.ok());
  CHECK(*u->attr("token") == "Code Signing");
  CHECK(*u->attr("serial") == "1a2b");
  CHECK(*u->attr("object") == "rsa");
  CHECK(*u->attr("id") == std::string("\x01\x02"));
  CHECK(*u->attr("type") == "private");
  CHECK(u->attr("model") == nullptr);
  CHECK(u->query.at("module-name") == "x");
  CHECK(parse_pkcs11_uri("PKCS11:object=a").ok());  // the scheme is case-insensitive
  CHECK(parse_pkcs11_uri("pkcs11:").ok());
  CHECK(parse_pkcs11_uri("pkcs11:x-vendor=1").ok());
  auto lower = parse_pkcs11_uri("pkcs11:id=%ab%CD");
  REQUIRE(lower.ok());
  CHECK(*lower->attr("id") == std::string("\xab\xcd"));
  // '=' and '&' are allowed in path values, '/' '?' in query values (RFC 7512 pk11-pchar / pk11-qchar)
  auto special = parse_pkcs11_uri("pkcs11:object=a=b&c?pin-source=file:/etc/pin?x");
  REQUIRE(special.ok());
  CHECK(*special->attr("object") == "a=b&c");
  CHECK(special->query.at("pin-source") == "file:/etc/pin?x");
}

TEST_CASE("pkcs11 URI: refuses what is not RFC 7512") {
  auto error_of = [](const char* text) {
    auto u = parse_pkcs11_uri(text);
    REQUIRE_FALSE(u.ok());
    return u.error().message;
  };
  CHECK(error_of("token=x").find("must start with 'pkcs11:'") != std::string::npos);
  CHECK(error_of("pkcs11:colour=red").find("unknown path attribute 'colour'") != std::string::npos);
  CHECK(error_of("pkcs11:object=a?colour=red").find("unknown query attribute 'colour'") != std::string::npos);
  CHECK(error_of("pkcs11:pin-value=1234").find("unknown path attribute 'pin-value'") != std::string::npos);
  CHECK(error_of("pkcs11:object=a;object=b").find("appears twice") != std::string::npos);
  CHECK(error_of("pkcs11:object=a b").find("' ' must be percent-encoded (%20)") != std::string::npos);
  CHECK(error_of("pkcs11:id=%0").find("two hex digits") != std::string::npos);
  CHECK(error_of("pkcs11:id=%zz").find("two hex digits") != std::string::npos);
  CHECK(error_of("pkcs11:object").find("is not a name=value pair") != std::string::npos);
  CHECK(error_of("pkcs11:=x").find("is not a name=value pair") != std::string::npos);
  CHECK(error_of("pkcs11:object=a;").find("is not a name=value pair") != std::string::npos);
  CHECK(error_of("pkcs11:object=a/b").find("'/' must be percent-encoded") != std::string::npos);
  CHECK(error_of("pkcs11:object=\x01").find("byte %01") != std::string::npos);
}

TEST_CASE("pkcs11 URI: encoded values decode to themselves") {
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  auto u = parse_pkcs11_uri("pkcs11:object=" + pkcs11_uri_encode_value(all));
  REQUIRE(u.ok());
  CHECK(*u->attr("object") == all);
  CHECK(pkcs11_uri_encode_value("Code Signing") == "Code%20Signing");
}
