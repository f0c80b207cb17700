#include "common/authenticode/binpatch.h"

#include <doctest/doctest.h>

using namespace p11relay;
using namespace p11relay::authenticode;

TEST_CASE("binpatch layout matches relic (§7 observed patch)") {
  binpatch::Patch p;
  p.records.push_back({0x1e00, 1096, Bytes(1624, 0x11)});  // out of order on purpose: serialize sorts
  p.records.push_back({0x118, 8, Bytes(8, 0x22)});
  auto s = binpatch::serialize(p);
  REQUIRE(s.ok());
  REQUIRE(s->size() == 8 + 2 * 16 + 8 + 1624);
  CHECK(to_hex(std::span(s->data(), 40)) ==
        "00000001" "00000002"
        "0000000000000118" "00000008" "00000008"
        "0000000000001e00" "00000448" "00000658");
  CHECK((*s)[40] == 0x22);
  CHECK((*s)[48] == 0x11);
  auto back = binpatch::parse(*s);
  REQUIRE(back.ok());
  REQUIRE(back->records.size() == 2);
  CHECK(back->records[0].offset == 0x118);
  CHECK(back->records[1].old_size == 1096);
  CHECK(back->records[1].data.size() == 1624);
}

TEST_CASE("binpatch apply, coalescing and extension at EOF") {
  Bytes orig = to_bytes("0123456789");
  binpatch::Patch p;
  p.records.push_back({2, 2, to_bytes("ab")});
  p.records.push_back({4, 1, to_bytes("XYZ")});  // touches the previous record: coalesced
  p.records.push_back({10, 0, to_bytes("END")});
  auto s = binpatch::serialize(p);
  REQUIRE(s.ok());
  auto parsed = binpatch::parse(*s);
  REQUIRE(parsed.ok());
  CHECK(parsed->records.size() == 2);
  auto out = binpatch::apply(orig, *parsed);
  REQUIRE(out.ok());
  CHECK(to_string(*out) == "01abXYZ56789END");
}

TEST_CASE("binpatch rejects hostile patches") {
  auto rec = [](uint64_t off, uint32_t old_size, uint32_t new_size) {
    Bytes b;
    for (int i = 7; i >= 0; --i) b.push_back(static_cast<uint8_t>(off >> (8 * i)));
    for (int i = 3; i >= 0; --i) b.push_back(static_cast<uint8_t>(old_size >> (8 * i)));
    for (int i = 3; i >= 0; --i) b.push_back(static_cast<uint8_t>(new_size >> (8 * i)));
    return b;
  };
  auto header = [](uint32_t version, uint32_t n) {
    return Bytes{static_cast<uint8_t>(version >> 24), static_cast<uint8_t>(version >> 16), static_cast<uint8_t>(version >> 8),
                 static_cast<uint8_t>(version), static_cast<uint8_t>(n >> 24), static_cast<uint8_t>(n >> 16),
                 static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)};
  };
  auto join = [](std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  CHECK_FALSE(binpatch::parse(Bytes{0, 0, 0, 1}).ok());                       // truncated header
  CHECK_FALSE(binpatch::parse(header(2, 0)).ok());                            // version
  CHECK_FALSE(binpatch::parse(header(1, 0xffffffff)).ok());                   // record table past end
  CHECK_FALSE(binpatch::parse(join({header(1, 1), rec(0, 0, 5), Bytes(4)})).ok());  // blob past end
  CHECK_FALSE(binpatch::parse(join({header(1, 1), rec(0, 0, 1), Bytes(2)})).ok());  // trailing bytes
  CHECK_FALSE(binpatch::parse(join({header(1, 2), rec(10, 5, 0), rec(12, 1, 0)})).ok());  // overlap
  CHECK_FALSE(binpatch::parse(join({header(1, 2), rec(10, 0, 0), rec(5, 0, 0)})).ok());   // out of order
  CHECK_FALSE(binpatch::parse(join({header(1, 1), rec(0x8000000000000000ULL, 0, 0)})).ok());  // negative int64
  CHECK(binpatch::parse(header(1, 0)).ok());

  Bytes orig(16, 0);
  binpatch::Patch past;
  past.records.push_back({12, 8, {}});
  CHECK_FALSE(binpatch::apply(orig, past).ok());
  binpatch::Patch far;
  far.records.push_back({0xffffffffffffULL, 0, {1}});
  CHECK_FALSE(binpatch::apply(orig, far).ok());
  binpatch::Patch overlap;
  overlap.records.push_back({0, 4, {}});
  overlap.records.push_back({2, 4, {}});
  CHECK_FALSE(binpatch::apply(orig, overlap).ok());
  CHECK_FALSE(binpatch::serialize(overlap).ok());
}
