#include "common/bytes.h"

#include <doctest/doctest.h>

using namespace p11relay;

TEST_CASE("hex round trip and rejects bad input") {
  Bytes b = {0x00, 0x01, 0xab, 0xff};
  CHECK(to_hex(b) == "0001abff");
  CHECK(from_hex("0001ABff") == b);
  CHECK(from_hex("00:01:ab:ff") == b);
  CHECK_FALSE(from_hex("0").has_value());
  CHECK_FALSE(from_hex("zz").has_value());
}

TEST_CASE("base64 round trip, padding and strictness") {
  for (size_t n = 0; n < 10; ++n) {
    Bytes b;  // push_back, not b[i] on Bytes(n): GCC 12 at -O3 warns falsely (-Wstringop-overflow) on n == 0
    for (size_t i = 0; i < n; ++i) b.push_back(static_cast<uint8_t>(i * 37 + 1));
    auto enc = base64_encode(b);
    auto dec = base64_decode(enc);
    REQUIRE(dec.has_value());
    CHECK(*dec == b);
  }
  CHECK(base64_encode(to_bytes("hello")) == "aGVsbG8=");
  CHECK_FALSE(base64_decode("aGVsbG8").has_value());
  CHECK_FALSE(base64_decode("aGV$bG8=").has_value());
  CHECK_FALSE(base64_decode("a=Vs").has_value());
}
