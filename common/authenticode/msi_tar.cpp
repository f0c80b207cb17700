#include "common/authenticode/msi_tar.h"

#include <algorithm>
#include <string>

namespace p11relay::authenticode {

namespace {

constexpr size_t kBlock = 512, kMaxRecord = 64 * 1024;

enum class Kind { hash, exmeta, skip, pax, longname };

Error bad(const std::string& what) { return Error(ErrorCode::bad_request, "not an MSI upload (tar): " + what); }

// Octal, or base-256 when the first byte has its high bit set (what Go writes past 8 GiB).
Result<uint64_t> tar_number(std::span<const uint8_t> f) {
  uint64_t v = 0;
  if (!f.empty() && (f[0] & 0x80)) {
    for (size_t i = 1; i < f.size(); ++i) {
      if (v >> 55) return bad("member size out of range");
      v = (v << 8) | f[i];
    }
    return v;
  }
  for (uint8_t c : f) {
    if (c == 0 || c == ' ') {
      if (v) break;
      continue;
    }
    if (c < '0' || c > '7' || (v >> 60)) return bad("member size is not an octal number");
    v = v * 8 + (c - '0');
  }
  return v;
}

std::string field(std::span<const uint8_t> f) {
  auto end = std::find(f.begin(), f.end(), uint8_t{0});
  return std::string(f.begin(), end);
}

// "LEN key=value\n" records of a PAX extended header: the path, if any.
std::string pax_path(const Bytes& rec) {
  std::string s(rec.begin(), rec.end()), path;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t sp = s.find(' ', pos);
    if (sp == std::string::npos) break;
    size_t len = 0;
    try {
      len = std::stoul(s.substr(pos, sp - pos));
    } catch (...) {
      break;
    }
    if (len == 0 || pos + len > s.size()) break;
    std::string kv = s.substr(sp + 1, len - (sp - pos) - 2);
    if (kv.rfind("path=", 0) == 0) path = kv.substr(5);
    pos += len;
  }
  return path;
}

}  // namespace

struct MsiTarDigester::State {
  Hasher digest, meta;
  bool extended;
  Bytes header, record;
  std::string next_name;  // from a PAX or GNU long-name record
  uint64_t left = 0, pad = 0, seen = 0;
  Kind kind = Kind::skip;
  bool ended = false, meta_done = false;
  State(HashAlg alg, bool ext) : digest(alg), meta(alg), extended(ext) {}

  Status start_member();
  void end_member();
  Status body(std::span<const uint8_t> p);
};

Status MsiTarDigester::State::start_member() {
  if (std::all_of(header.begin(), header.end(), [](uint8_t b) { return b == 0; })) {
    ended = true;  // the end-of-archive blocks
    return {};
  }
  std::span<const uint8_t> h(header);
  ASSIGN_OR_RETURN(left, tar_number(h.subspan(124, 12)));
  pad = (kBlock - left % kBlock) % kBlock;
  const char type = static_cast<char>(h[156]);
  std::string name = field(h.subspan(0, 100));
  if (field(h.subspan(257, 5)) == "ustar" && h[345] != 0) name = field(h.subspan(345, 155)) + "/" + name;
  if (!next_name.empty()) name = std::exchange(next_name, {});
  if (type == 'x' || type == 'L') {
    if (left > kMaxRecord) return bad("a PAX or long-name record over 64 KiB");
    kind = type == 'x' ? Kind::pax : Kind::longname;
    record.clear();
  } else if (type != '0' && type != '\0' && type != '7') {
    kind = Kind::skip;  // directories, links, global PAX headers: no content of the MSI
  } else if (name == "__exmeta") {
    if (meta_done) return bad("two __exmeta members");
    meta_done = true;
    kind = extended ? Kind::exmeta : Kind::skip;
  } else if (name == "\x05" "DigitalSignature" || name == "\x05" "MsiDigitalSignatureEx") {
    kind = Kind::skip;
  } else {
    kind = Kind::hash;
  }
  if (left == 0) end_member();
  return {};
}

void MsiTarDigester::State::end_member() {
  if (kind == Kind::exmeta) digest.update(meta.finish());
  if (kind == Kind::pax) next_name = pax_path(record);
  if (kind == Kind::longname) next_name = field(record);
  kind = Kind::skip;
}

Status MsiTarDigester::State::body(std::span<const uint8_t> p) {
  if (kind == Kind::hash) digest.update(p);
  if (kind == Kind::exmeta) meta.update(p);
  if (kind == Kind::pax || kind == Kind::longname) record.insert(record.end(), p.begin(), p.end());
  return {};
}

MsiTarDigester::MsiTarDigester(HashAlg alg, bool extended) : s_(std::make_unique<State>(alg, extended)) {}
MsiTarDigester::MsiTarDigester(MsiTarDigester&&) noexcept = default;
MsiTarDigester::~MsiTarDigester() = default;

uint64_t MsiTarDigester::bytes_seen() const { return s_->seen; }

Status MsiTarDigester::update(std::span<const uint8_t> chunk) {
  State& s = *s_;
  s.seen += chunk.size();
  while (!chunk.empty() && !s.ended) {
    if (s.left > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(s.left, chunk.size()));
      RETURN_IF_ERROR(s.body(chunk.first(n)));
      chunk = chunk.subspan(n);
      if ((s.left -= n) == 0) s.end_member();
    } else if (s.pad > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(s.pad, chunk.size()));
      chunk = chunk.subspan(n);
      s.pad -= n;
    } else {
      const size_t n = std::min(kBlock - s.header.size(), chunk.size());
      s.header.insert(s.header.end(), chunk.begin(), chunk.begin() + static_cast<long>(n));
      chunk = chunk.subspan(n);
      if (s.header.size() == kBlock) {
        RETURN_IF_ERROR(s.start_member());
        s.header.clear();
      }
    }
  }
  return {};
}

Result<Bytes> MsiTarDigester::finish() {
  State& s = *s_;
  if (s.left > 0 || s.pad > 0 || !s.header.empty()) return bad("the upload ends inside a member");
  if (s.seen == 0) return bad("the upload is empty");
  return s.digest.finish();
}

}  // namespace p11relay::authenticode
