#include "common/text.h"

#include <doctest/doctest.h>

#include <string>

using namespace p11relay;

TEST_CASE("valid_utf8 accepts well-formed text and refuses the rest") {
  CHECK(valid_utf8(""));
  CHECK(valid_utf8("setup.exe"));
  CHECK(valid_utf8("\xC3\xA9t\xC3\xA9.msi"));    // é
  CHECK(valid_utf8("\xF0\x9F\x94\x91"));         // U+1F511
  CHECK_FALSE(valid_utf8("\xFF.exe"));           // the relic filename=%FF.exe of docs/reliability.md
  CHECK_FALSE(valid_utf8("\xC0\xAF"));           // overlong '/'
  CHECK_FALSE(valid_utf8("\xE0\x80\xAF"));       // overlong, 3 bytes
  CHECK_FALSE(valid_utf8("\xED\xA0\x80"));       // surrogate U+D800
  CHECK_FALSE(valid_utf8("\xF4\x90\x80\x80"));   // above U+10FFFF
  CHECK_FALSE(valid_utf8("\xC3"));               // truncated
  CHECK_FALSE(valid_utf8("\xE2\x82"));           // truncated
}

TEST_CASE("has_control finds C0 and DEL, clean_text combines both") {
  CHECK(has_control(std::string("a\0b", 3)));
  CHECK(has_control("a\nb"));
  CHECK(has_control("\x7F"));
  CHECK_FALSE(has_control("a b\xC3\xA9"));
  CHECK(clean_text("key-1"));
  CHECK_FALSE(clean_text("key\n"));
  CHECK_FALSE(clean_text("\xFF"));
}

TEST_CASE("log_escape: one line, valid UTF-8, bounded") {
  CHECK(log_escape("plain") == "plain");
  CHECK(log_escape("a\nINFO forged") == "a\\x0aINFO forged");
  CHECK(log_escape(std::string("a\0b", 3)) == "a\\x00b");
  CHECK(log_escape("\xFF.exe") == "\\xff.exe");
  CHECK(log_escape("back\\slash") == "back\\x5cslash");
  CHECK(log_escape("\xC3\xA9") == "\xC3\xA9");
  std::string big(1000, 'x');
  std::string e = log_escape(big, 10);
  CHECK(e == "xxxxxxxxxx...(1000 bytes)");
  CHECK(valid_utf8(log_escape("\xE2\x82\xAC\xE2\x82", 4)));  // a cut inside a sequence is escaped, not kept raw
}
