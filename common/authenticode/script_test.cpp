#include "common/authenticode/script.h"

#include <doctest/doctest.h>

#include <string>

using namespace p11relay;
using namespace p11relay::authenticode;

namespace {

std::span<const uint8_t> bytes_of(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

std::string utf16le(const std::u16string& s) {
  std::string out("\xff\xfe", 2);
  for (char16_t c : s) {
    out.push_back(static_cast<char>(c & 0xff));
    out.push_back(static_cast<char>(c >> 8));
  }
  return out;
}

}  // namespace

TEST_CASE("script types come from the name; comment styles per type") {
  CHECK(script_style("a.PS1")->open == "# ");
  CHECK(script_style("dir/m.psm1")->close.empty());
  CHECK(script_style("t.ps1xml")->open == "<!-- ");
  CHECK(script_style("x.cdxml")->close == " -->");
  CHECK(script_style("s.mof")->open == "/* ");
  CHECK_FALSE(script_style("app.exe"));
  CHECK_FALSE(script_style(".ps1"));  // no name before the extension
  CHECK_FALSE(script_style("x.ps1.txt"));
}

TEST_CASE("the digest is of the text as UTF-16LE, up to the signature block") {
  const ScriptStyle hs{"# ", ""};
  const std::string text = "Write-Output 'Gr\xc3\xbc\xc3\x9f" "e \xf0\x9d\x84\x9e'\r\n";
  auto l = script_layout(bytes_of(text), hs);
  REQUIRE(l.ok());
  CHECK_FALSE(l->signed_);
  CHECK(l->content_end == text.size());
  auto d8 = script_digest(bytes_of(text), *l, HashAlg::sha256);
  // The same text as UTF-16LE with its BOM hashes the BOM too (it is part of the file), so compare
  // against the UTF-16 units of the text alone.
  const std::string u16 = utf16le(u"Write-Output 'Grüße \U0001d11e'\r\n").substr(2);
  REQUIRE(d8.ok());
  CHECK(*d8 == hash(HashAlg::sha256, bytes_of(u16)));

  // A signed file: the digest stops at the line break before the block, which is replaced whole.
  const std::string block = to_string(script_signature_block(hs, false, Bytes{1, 2, 3}));
  CHECK(block.starts_with("\r\n# SIG # Begin signature block\r\n# AQID\r\n# SIG # End signature block\r\n"));
  const std::string signed_text = text.substr(0, text.size() - 2) + block;
  auto ls = script_layout(bytes_of(signed_text), hs);
  REQUIRE(ls.ok());
  CHECK(ls->signed_);
  CHECK(ls->content_end == text.size() - 2);
}

TEST_CASE("UTF-16LE scripts are hashed as they are and signed in UTF-16") {
  const ScriptStyle xml{"<!-- ", " -->"};
  const std::string text = utf16le(u"<Types/>\r\n");
  auto l = script_layout(bytes_of(text), xml);
  REQUIRE(l.ok());
  CHECK(l->utf16);
  CHECK(*script_digest(bytes_of(text), *l, HashAlg::sha256) == hash(HashAlg::sha256, bytes_of(text)));
  const std::string signed_text = text + to_string(script_signature_block(xml, true, Bytes{1, 2, 3}));
  auto ls = script_layout(bytes_of(signed_text), xml);
  REQUIRE(ls.ok());
  CHECK(ls->signed_);
  CHECK(ls->content_end == text.size());
  CHECK(signed_text.ends_with(utf16le(u"SIG # End signature block -->\r\n").substr(2)));
}

TEST_CASE("what is not text in its encoding is refused with the byte offset") {
  const ScriptStyle hs{"# ", ""};
  for (const auto& [in, why] : std::initializer_list<std::pair<std::string, std::string>>{
           {"ok\xff", "not UTF-8 text at byte 2"},
           {"\xc0\xaf", "not UTF-8 text at byte 0"},            // overlong '/'
           {"a\xed\xa0\x80", "not UTF-8 text at byte 1"},       // a surrogate in UTF-8
           {"ab\xe2\x82", "not UTF-8 text at byte 2"},          // truncated
           {std::string("\xff\xfe\x41", 3), "even number of bytes"},
           {std::string("\xff\xfe\x00\xdc", 4), "not UTF-16LE text at byte 2"},  // a lone low surrogate
           {"# SIG # Begin signature block\n", "nothing to sign"},
           {"x\n# SIG # Begin signature block", "end the script with a line break"}}) {
    INFO(why);
    auto l = script_layout(bytes_of(in), hs);  // the scan decodes every character before the block
    REQUIRE_FALSE(l.ok());
    CHECK(l.error().message.find(why) != std::string::npos);
  }
}
