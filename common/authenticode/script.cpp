#include "common/authenticode/script.h"

#include "common/authenticode/signed_data.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

namespace p11relay::authenticode {
namespace {

constexpr size_t kMaxScript = 256u << 20;
constexpr std::string_view kHeader = "SIG # Begin signature block";
constexpr std::string_view kFooter = "SIG # End signature block";
// The PowerShell SIP's class id, {603BCC1F-4B59-4E08-B724-D2C6297EF351}, as osslsigncode and relic write it.
constexpr uint8_t kPowerShellSipGuid[16] = {0x1f, 0xcc, 0x3b, 0x60, 0x59, 0x4b, 0x08, 0x4e,
                                            0xb7, 0x24, 0xd2, 0xc6, 0x29, 0x7e, 0xf3, 0x51};

// One code point from `file` at `pos` in the file's encoding; `pos` moves past it. nullopt: not text.
std::optional<char32_t> next_rune(std::span<const uint8_t> f, bool utf16, size_t& pos) {
  if (utf16) {
    if (pos + 2 > f.size()) return std::nullopt;
    char32_t u = f[pos] | (f[pos + 1] << 8);
    pos += 2;
    if (u < 0xd800 || u > 0xdfff) return u;
    if (u > 0xdbff || pos + 2 > f.size()) return std::nullopt;
    char32_t lo = f[pos] | (f[pos + 1] << 8);
    if (lo < 0xdc00 || lo > 0xdfff) return std::nullopt;
    pos += 2;
    return 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
  }
  const uint8_t b = f[pos];
  const int len = b < 0x80 ? 1 : (b & 0xe0) == 0xc0 ? 2 : (b & 0xf0) == 0xe0 ? 3 : (b & 0xf8) == 0xf0 ? 4 : 0;
  if (len == 0 || pos + len > f.size()) return std::nullopt;
  char32_t r = len == 1 ? b : b & (0xff >> (len + 1));
  for (int i = 1; i < len; ++i) {
    if ((f[pos + i] & 0xc0) != 0x80) return std::nullopt;
    r = (r << 6) | (f[pos + i] & 0x3f);
  }
  static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (r < kMin[len] || r > 0x10ffff || (r >= 0xd800 && r <= 0xdfff)) return std::nullopt;  // overlong, surrogate
  pos += len;
  return r;
}

void put_utf16le(Bytes& out, char32_t r) {
  auto unit = [&out](char32_t u) {
    out.push_back(static_cast<uint8_t>(u & 0xff));
    out.push_back(static_cast<uint8_t>(u >> 8));
  };
  if (r < 0x10000) return unit(r);
  r -= 0x10000;
  unit(0xd800 + (r >> 10));
  unit(0xdc00 + (r & 0x3ff));
}

// Text (ASCII here) in the script's encoding.
void put_text(Bytes& out, std::string_view text, bool utf16) {
  for (char c : text) {
    if (utf16) put_utf16le(out, static_cast<unsigned char>(c));
    else out.push_back(static_cast<uint8_t>(c));
  }
}

Error not_text(size_t pos, bool utf16) {
  return bad_request("not " + std::string(utf16 ? "UTF-16LE" : "UTF-8") + " text at byte " + std::to_string(pos) +
                     " (a script is signed as text in its own encoding)");
}

}  // namespace

std::optional<ScriptStyle> script_style(std::string_view filename) {
  std::string name(filename);
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  auto ends = [&name](std::string_view ext) { return name.size() > ext.size() && name.ends_with(ext); };
  for (auto ext : {".ps1", ".psm1", ".psd1"})
    if (ends(ext)) return ScriptStyle{"# ", ""};
  for (auto ext : {".ps1xml", ".psc1", ".cdxml"})
    if (ends(ext)) return ScriptStyle{"<!-- ", " -->"};
  if (ends(".mof")) return ScriptStyle{"/* ", " */"};
  return std::nullopt;
}

Result<ScriptLayout> script_layout(std::span<const uint8_t> f, const ScriptStyle& style) {
  if (f.size() > kMaxScript) return bad_request("a script larger than 256 MiB is not signed");
  ScriptLayout l;
  l.utf16 = f.size() >= 2 && f[0] == 0xff && f[1] == 0xfe;
  if (l.utf16 && f.size() % 2 != 0) return bad_request("a UTF-16 script has an even number of bytes; this one has not");
  l.content_end = f.size();
  const std::string header = std::string(style.open) + std::string(kHeader) + std::string(style.close);
  const size_t unit = l.utf16 ? 2 : 1;
  // Lines as osslsigncode reads them: up to 100 characters kept, the last slot overwritten by the rest.
  std::array<char32_t, 100> line{};
  size_t n = 0;
  size_t line_start = 0;  // offset of the line break before this line (0 for the first line)
  bool first = true;
  for (size_t pos = 0; pos < f.size();) {
    const size_t at = pos;
    auto r = next_rune(f, l.utf16, pos);
    if (!r) return not_text(at, l.utf16);
    line[n] = *r;
    if (*r != U'\n') {
      if (n < line.size() - 1) ++n;
      continue;
    }
    if (n >= header.size() && std::equal(header.begin(), header.end(), line.begin())) {
      // The block starts with the line break before it (CRLF when the header line ends with CR).
      const size_t cr = line[n - 1] == U'\r' ? unit : 0;
      if (first || line_start < cr || line_start - cr == 0)
        return bad_request("the script is only a signature block: there is nothing to sign");
      l.content_end = line_start - cr;
      l.signed_ = true;
      break;
    }
    n = 0;
    line_start = at;
    first = false;
  }
  // An unterminated last line that reads like the block's header would be taken for it once a block
  // follows (the block starts with a line break), and the signature would no longer verify.
  if (!l.signed_ && n >= header.size() && std::equal(header.begin(), header.end(), line.begin()))
    return bad_request("the last line starts like a signature block header; end the script with a line break");
  return l;
}

Result<Bytes> script_digest(std::span<const uint8_t> f, const ScriptLayout& l, HashAlg alg) {
  Hasher h(alg);
  std::span<const uint8_t> content = f.first(l.content_end);
  if (l.utf16) {
    h.update(content);
    return h.finish();
  }
  Bytes chunk;
  for (size_t pos = 0; pos < content.size();) {
    const size_t at = pos;
    auto r = next_rune(content, false, pos);
    if (!r) return not_text(at, false);
    put_utf16le(chunk, *r);
    if (chunk.size() >= 65536 || pos == content.size()) {
      h.update(chunk);
      chunk.clear();
    }
  }
  return h.finish();
}

Bytes script_spc_indirect_data_content(HashAlg alg, std::span<const uint8_t> digest) {
  return sip_spc_indirect_data_content(alg, digest, 65536, kPowerShellSipGuid);
}

Bytes script_signature_block(const ScriptStyle& style, bool utf16, std::span<const uint8_t> signed_data) {
  const std::string b64 = base64_encode(signed_data);
  Bytes out;
  auto line = [&](std::string_view text) {
    put_text(out, "\r\n", utf16);
    put_text(out, style.open, utf16);
    put_text(out, text, utf16);
    put_text(out, style.close, utf16);
  };
  line(kHeader);
  for (size_t i = 0; i < b64.size(); i += 64) line(std::string_view(b64).substr(i, 64));
  line(kFooter);
  put_text(out, "\r\n", utf16);  // signtool expects the file to end with CRLF
  return out;
}

namespace {

// The base64 text of a signature block (file[content_end, end)): every line between the header and the
// footer, without the comment's open and close strings.
Result<std::string> block_base64(std::span<const uint8_t> f, const ScriptLayout& l, const ScriptStyle& style) {
  std::string text;
  for (size_t pos = l.content_end; pos < f.size();) {
    const size_t at = pos;
    auto r = next_rune(f, l.utf16, pos);
    if (!r || *r > 0x7f) return bad_request("the signature block is not ASCII at byte " + std::to_string(at));
    text.push_back(static_cast<char>(*r));
  }
  std::string b64;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.empty()) continue;
    if (!line.starts_with(style.open) || !line.ends_with(style.close) || line.size() < style.open.size() + style.close.size())
      return bad_request("a line of the signature block is not a comment in the script's style");
    line = line.substr(style.open.size(), line.size() - style.open.size() - style.close.size());
    if (line == kHeader || line == kFooter) continue;
    b64.append(line);
  }
  return b64;
}

}  // namespace

Result<Bytes> script_signature(std::span<const uint8_t> file, const ScriptStyle& style) {
  ASSIGN_OR_RETURN(ScriptLayout layout, script_layout(file, style));
  if (!layout.signed_) return Bytes{};
  ASSIGN_OR_RETURN(std::string b64, block_base64(file, layout, style));
  std::optional<Bytes> sd = base64_decode(b64);
  if (!sd || sd->empty()) return bad_request("the signature block is not base64");
  return std::move(*sd);
}

Result<VerifyReport> verify_script(std::span<const uint8_t> file, const ScriptStyle& style) {
  ASSIGN_OR_RETURN(ScriptLayout layout, script_layout(file, style));
  ASSIGN_OR_RETURN(Bytes sd, script_signature(file, style));
  if (sd.empty()) return bad_request("the script is not signed (no signature block)");
  return verify_with_nested(
      sd, [&](HashAlg alg) { return script_digest(file, layout, alg); }, "the script's");
}

}  // namespace p11relay::authenticode
