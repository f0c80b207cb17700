#include "common/authenticode/cab.h"
#include "common/authenticode/le.h"

#include <doctest/doctest.h>

#include <string>

using namespace p11relay;
using namespace p11relay::authenticode;

namespace {
// A minimal cabinet: one folder (stored), one file "a.txt" = "hello", one CFDATA block.
Bytes tiny_cab() {
  Bytes b{'M', 'S', 'C', 'F'};
  le::append(b, 0, 4);
  le::append(b, 79, 4);      // cbCabinet
  le::append(b, 0, 4);
  le::append(b, 44, 4);      // coffFiles
  le::append(b, 0, 4);
  b.push_back(3);
  b.push_back(1);
  le::append(b, 1, 2);       // cFolders
  le::append(b, 1, 2);       // cFiles
  le::append(b, 0, 2);       // flags
  le::append(b, 0x1234, 2);  // setID
  le::append(b, 0, 2);       // iCabinet
  le::append(b, 66, 4);      // CFFOLDER coffCabStart
  le::append(b, 1, 2);
  le::append(b, 0, 2);
  le::append(b, 5, 4);       // CFFILE cbFile
  le::append(b, 0, 4);
  le::append(b, 0, 2);
  le::append(b, 0, 6);
  for (char c : std::string("a.txt")) b.push_back(static_cast<uint8_t>(c));
  b.push_back(0);
  le::append(b, 0, 4);       // CFDATA csum
  le::append(b, 5, 2);
  le::append(b, 5, 2);
  for (char c : std::string("hello")) b.push_back(static_cast<uint8_t>(c));
  return b;
}
Bytes written(CabPlan& plan, const Bytes& file, const Bytes& sig) {
  Bytes area = cab_signature_area(plan, sig);
  Bytes out = plan.head;
  out.insert(out.end(), file.begin() + static_cast<ptrdiff_t>(plan.tail_from),
             file.begin() + static_cast<ptrdiff_t>(plan.tail_to));
  out.insert(out.end(), area.begin(), area.end());
  return out;
}
}  // namespace

TEST_CASE("cab: an unsigned cabinet gets the signature reserve and every offset moves by 24") {
  Bytes f = tiny_cab();
  REQUIRE(f.size() == 79);
  CHECK(is_cab(f));
  auto plan = cab_plan(f);
  REQUIRE_MESSAGE(plan.ok(), plan.error().message);
  CHECK(plan->head.size() == 44 + 24);
  CHECK(plan->tail_from == 44);
  CHECK(plan->tail_to == 79);
  CHECK(le::get32(plan->head, 8) == 79 + 24);   // cbCabinet
  CHECK(le::get32(plan->head, 16) == 44 + 24);  // coffFiles
  CHECK(le::get32(plan->head, 60) == 66 + 24);  // the folder's coffCabStart
  CHECK((plan->head[30] & 4) != 0);
  CHECK(le::get32(plan->head, 36) == 20);
  CHECK(le::get32(plan->head, 40) == 0x00100000);
  CHECK_FALSE(plan->was_signed);
}

TEST_CASE("cab: the signed cabinet has the digest it was signed over, and signing it again replaces the signature") {
  Bytes f = tiny_cab();
  auto plan = cab_plan(f);
  REQUIRE(plan.ok());
  Bytes d = cab_digest(*plan, f, HashAlg::sha256);
  Bytes sig(13, 0x30);
  Bytes s = written(*plan, f, sig);
  CHECK(s.size() == 79 + 24 + 16);  // 13 bytes padded to 16
  CHECK(le::get32(s, 44) == 79 + 24);
  CHECK(le::get32(s, 48) == 16);
  auto found = cab_signature(s);
  REQUIRE(found.ok());
  CHECK(found->size() == 16);
  auto again = cab_plan(s);
  REQUIRE_MESSAGE(again.ok(), again.error().message);
  CHECK(again->was_signed);
  CHECK(cab_digest(*again, s, HashAlg::sha256) == d);
  Bytes s2 = written(*again, s, Bytes(40, 0x30));
  CHECK(s2.size() == 79 + 24 + 40);
  auto plan3 = cab_plan(s2);
  REQUIRE(plan3.ok());
  CHECK(cab_digest(*plan3, s2, HashAlg::sha256) == d);
  CHECK(cab_signature(f)->empty());
  // A signature size that runs past the end of the file (found by fuzz_cab): refused, nothing read.
  Bytes cut = s;
  le::put32(cut, 48, 0x7fffffff);
  auto past = cab_signature(cut);
  REQUIRE_FALSE(past.ok());
  CHECK(past.error().message.find("past the end") != std::string::npos);
  CHECK_FALSE(verify_cab(cut).ok());
}

TEST_CASE("cab: the digest covers the content and the offsets, not the signature's place") {
  Bytes f = tiny_cab();
  auto plan = cab_plan(f);
  Bytes d = cab_digest(*plan, f, HashAlg::sha256);
  Bytes g = f;
  g.back() ^= 1;  // file content
  CHECK(cab_digest(*cab_plan(g), g, HashAlg::sha256) != d);
  g = f;
  g[32] ^= 1;  // setID
  CHECK(cab_digest(*cab_plan(g), g, HashAlg::sha256) != d);
  g = f;
  g[34] ^= 1;  // iCabinet: not covered
  CHECK(cab_digest(*cab_plan(g), g, HashAlg::sha256) == d);
}

TEST_CASE("cab: hostile and unsupported cabinets are refused with the reason") {
  Bytes f = tiny_cab();
  auto why = [](Bytes b) {
    auto p = cab_plan(b);
    return p.ok() ? std::string("accepted") : p.error().message;
  };
  CHECK(why(Bytes(f.begin(), f.begin() + 20)).find("no MSCF header") != std::string::npos);
  CHECK(why(Bytes(f.begin(), f.begin() + 60)).find("cbCabinet says") != std::string::npos);
  Bytes g = f;
  g[30] |= 1;
  CHECK(why(g).find("continues another cabinet") != std::string::npos);
  g = f;
  g[26] = 0xff;  // 255 folders: they would end past coffFiles
  CHECK(why(g).find("coffFiles does not follow") != std::string::npos);
  g = f;
  g[8] = 40;  // cbCabinet ends inside the CFFOLDER entries
  CHECK(why(g).find("CFFOLDER entries run past the end") != std::string::npos);
  g = f;
  g[16] = 50;  // coffFiles
  CHECK(why(g).find("coffFiles") != std::string::npos);
  g = f;
  g[36] = 0x70;  // folder coffCabStart beyond the file
  CHECK(why(g).find("data offset is outside") != std::string::npos);
  g = f;
  g[30] |= 2;  // a next-cabinet name that never ends
  std::fill(g.begin() + 36, g.end(), 'x');
  CHECK(why(g).find("unterminated") != std::string::npos);
  g = f;
  g[30] |= 4;  // a reserve of another kind
  CHECK(why(g).find("reserve") != std::string::npos);
}

TEST_CASE("cab: streamed in any chunk size, the digest and plan are the file's; an early end is an error") {
  Bytes f = tiny_cab();
  auto plan = cab_plan(f);
  REQUIRE(plan.ok());
  Bytes whole = cab_digest(*plan, f, HashAlg::sha256);
  Bytes sig(13, 0x30);
  Bytes s = written(*plan, f, sig);  // a signed one: the old signature is not hashed
  for (const Bytes* in : {&f, &s}) {
    for (size_t step : {1, 3, 7, 36, 44, 1000}) {
      CabDigester d(HashAlg::sha256);
      for (size_t at = 0; at < in->size(); at += step)
        REQUIRE(d.update(std::span<const uint8_t>(*in).subspan(at, std::min(step, in->size() - at))).ok());
      auto r = d.finish();
      REQUIRE_MESSAGE(r.ok(), r.error().message);
      CHECK(r->second == whole);
      CHECK(r->first.head == cab_plan(*in)->head);
      CHECK(d.bytes_seen() == in->size());
    }
  }
  CabDigester cut(HashAlg::sha256);
  REQUIRE(cut.update(std::span<const uint8_t>(f).first(60)).ok());
  auto early = cut.finish();
  REQUIRE_FALSE(early.ok());
  CHECK(early.error().message.find("cbCabinet says 79") != std::string::npos);
  CabDigester head(HashAlg::sha256);
  REQUIRE(head.update(std::span<const uint8_t>(f).first(40)).ok());
  CHECK(head.finish().error().message.find("ends inside its header") != std::string::npos);
  CabDigester junk(HashAlg::sha256);
  CHECK_FALSE(junk.update(Bytes(64, 'x')).ok());
}
