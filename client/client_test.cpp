#include "client/client.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::client;

TEST_CASE("Client::create rejects bad URLs and unreadable credentials with config errors") {
  Config c;
  auto r = Client::create(c);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::config);

  c.urls = {"https://[::1:6300"};
  c.certfile = "/nonexistent.pem";
  r = Client::create(c);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("IPv6") != std::string::npos);

  c.urls = {"https://127.0.0.1:6300"};
  r = Client::create(c);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::config);
  CHECK(r.error().message.find("/nonexistent.pem") != std::string::npos);
}
