#include "common/authenticode/der.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::authenticode;

TEST_CASE("DER OIDs, integers and SET OF ordering") {
  CHECK(to_hex(der::oid("2.16.840.1.101.3.4.2.1")) == "0609608648016503040201");
  CHECK(to_hex(der::oid("1.3.6.1.4.1.311.2.1.4")) == "060a2b060104018237020104");
  CHECK(to_hex(der::integer(1)) == "020101");
  CHECK(to_hex(der::integer(128)) == "02020080");
  CHECK(to_hex(der::integer(-1)) == "0201ff");
  CHECK(to_hex(der::set_of({{0x04, 0x01, 0x02}, {0x02, 0x01, 0x05}})) == "3106020105040102");
  CHECK(to_hex(der::bmp_string_content("A\xc3\xa9")) == "004100e9");
  Bytes big(300, 0xaa);
  Bytes t = der::octet_string(big);
  CHECK(to_hex(Bytes(t.begin(), t.begin() + 4)) == "0482012c");
}

TEST_CASE("DER reader rejects hostile lengths") {
  auto bad = [](Bytes b) { return !der::parse_one(b, "x").ok(); };
  CHECK(bad({}));
  CHECK(bad({0x30}));
  CHECK(bad({0x30, 0x05, 0x00}));                    // length past end
  CHECK(bad({0x30, 0x80, 0x00, 0x00}));              // indefinite (BER)
  CHECK(bad({0x30, 0x85, 1, 0, 0, 0, 0}));           // 5-byte length
  CHECK(bad({0x30, 0x84, 0xff, 0xff, 0xff, 0xff}));  // 4 GiB length
  CHECK(bad({0x1f, 0x01, 0x00}));                    // multi-byte tag
  CHECK(bad({0x04, 0x00, 0x00}));                    // trailing byte
  const Bytes good = {0x04, 0x02, 0xab, 0xcd};
  auto ok = der::parse_one(good, "x");
  REQUIRE(ok.ok());
  CHECK(to_hex(ok->content) == "abcd");
}
