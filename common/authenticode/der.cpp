#include "common/authenticode/der.h"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace p11relay::authenticode::der {

namespace {
void append_length(Bytes& out, size_t n) {
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
    return;
  }
  uint8_t tmp[sizeof(size_t)];
  int k = 0;
  while (n > 0) {
    tmp[k++] = static_cast<uint8_t>(n & 0xff);
    n >>= 8;
  }
  out.push_back(static_cast<uint8_t>(0x80 | k));
  while (k > 0) out.push_back(tmp[--k]);
}

// X.690 §11.6 order of SET OF components: octet strings compared octet by octet, a shorter one first when it
// is a prefix of the other. Spelled out with memcmp on the common length: GCC 12 at -O3 misreads the bound
// of the memcmp inside std::vector's operator<=> (-Wstringop-overread, a false positive; the sort is sound).
bool der_less(const Bytes& a, const Bytes& b) {
  const size_t n = std::min(a.size(), b.size());
  const int c = n == 0 ? 0 : std::memcmp(a.data(), b.data(), n);
  return c != 0 ? c < 0 : a.size() < b.size();
}
}  // namespace

Bytes tlv(uint8_t tag, ByteSpan content) {
  Bytes out;
  out.reserve(content.size() + 6);
  out.push_back(tag);
  append_length(out, content.size());
  out.insert(out.end(), content.begin(), content.end());
  return out;
}

Bytes cat(std::initializer_list<ByteSpan> parts) {
  Bytes out;
  for (auto p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Bytes seq(std::initializer_list<ByteSpan> parts) { return tlv(kSequence, cat(parts)); }

Bytes set_of(std::vector<Bytes> elements) {
  std::sort(elements.begin(), elements.end(), der_less);
  Bytes content;
  for (const auto& e : elements) content.insert(content.end(), e.begin(), e.end());
  return tlv(kSet, content);
}

Bytes oid_content(std::string_view dotted) {
  std::vector<unsigned long> arcs;
  size_t i = 0;
  while (i <= dotted.size()) {
    size_t j = dotted.find('.', i);
    if (j == std::string_view::npos) j = dotted.size();
    unsigned long v = 0;
    std::from_chars(dotted.data() + i, dotted.data() + j, v);
    arcs.push_back(v);
    i = j + 1;
  }
  Bytes out;
  auto put = [&out](unsigned long v) {
    uint8_t tmp[10];
    int k = 0;
    do {
      tmp[k++] = static_cast<uint8_t>(v & 0x7f);
      v >>= 7;
    } while (v > 0);
    while (k > 1) out.push_back(static_cast<uint8_t>(0x80 | tmp[--k]));
    out.push_back(tmp[0]);
  };
  if (arcs.size() < 2) return out;
  put(arcs[0] * 40 + arcs[1]);
  for (size_t a = 2; a < arcs.size(); ++a) put(arcs[a]);
  return out;
}

Bytes oid(std::string_view dotted) { return tlv(kOid, oid_content(dotted)); }

Bytes integer(long value) {
  Bytes c;
  // Two's complement, minimal length (X.690 §8.3.2).
  for (int shift = 56; shift >= 0; shift -= 8) c.push_back(static_cast<uint8_t>((value >> shift) & 0xff));
  size_t start = 0;
  while (start + 1 < c.size() && ((c[start] == 0 && !(c[start + 1] & 0x80)) ||
                                  (c[start] == 0xff && (c[start + 1] & 0x80))))
    ++start;
  return tlv(kInteger, ByteSpan(c).subspan(start));
}

Bytes null() { return {kNull, 0x00}; }

Bytes octet_string(ByteSpan data) { return tlv(kOctetString, data); }

Bytes bmp_string_content(std::string_view s) {
  Bytes out;
  size_t i = 0;
  auto put16 = [&out](uint32_t u) {
    out.push_back(static_cast<uint8_t>(u >> 8));
    out.push_back(static_cast<uint8_t>(u & 0xff));
  };
  while (i < s.size()) {
    auto c = static_cast<uint8_t>(s[i]);
    uint32_t cp;
    int extra;
    if (c < 0x80) {
      cp = c;
      extra = 0;
    } else if ((c & 0xe0) == 0xc0) {
      cp = c & 0x1f;
      extra = 1;
    } else if ((c & 0xf0) == 0xe0) {
      cp = c & 0x0f;
      extra = 2;
    } else if ((c & 0xf8) == 0xf0) {
      cp = c & 0x07;
      extra = 3;
    } else {
      cp = 0xfffd;  // invalid lead byte: replacement character
      extra = 0;
    }
    ++i;
    for (int k = 0; k < extra; ++k) {
      if (i >= s.size() || (static_cast<uint8_t>(s[i]) & 0xc0) != 0x80) {
        cp = 0xfffd;
        break;
      }
      cp = (cp << 6) | (static_cast<uint8_t>(s[i]) & 0x3f);
      ++i;
    }
    if (cp >= 0x10000 && cp <= 0x10ffff) {
      cp -= 0x10000;
      put16(0xd800 | (cp >> 10));
      put16(0xdc00 | (cp & 0x3ff));
    } else {
      put16(cp > 0xffff ? 0xfffd : cp);
    }
  }
  return out;
}

Result<Tlv> Reader::next(const char* what) {
  const size_t n = data_.size();
  if (pos_ >= n) return bad_request(std::string("ASN.1: missing ") + what);
  size_t p = pos_;
  uint8_t tag = data_[p++];
  if ((tag & 0x1f) == 0x1f) return bad_request(std::string("ASN.1: unsupported multi-byte tag in ") + what);
  if (p >= n) return bad_request(std::string("ASN.1: truncated length of ") + what);
  uint8_t l0 = data_[p++];
  size_t len = 0;
  if (l0 < 0x80) {
    len = l0;
  } else if (l0 == 0x80) {
    return bad_request(std::string("ASN.1: indefinite length (BER) in ") + what);
  } else {
    int k = l0 & 0x7f;
    if (k > 4) return bad_request(std::string("ASN.1: length of ") + what + " too large");
    if (n - p < static_cast<size_t>(k)) return bad_request(std::string("ASN.1: truncated length of ") + what);
    for (int i = 0; i < k; ++i) len = (len << 8) | data_[p++];
  }
  if (len > n - p) return bad_request(std::string("ASN.1: ") + what + " extends past the end of its container");
  Tlv t;
  t.tag = tag;
  t.content = data_.subspan(p, len);
  t.whole = data_.subspan(pos_, p + len - pos_);
  pos_ = p + len;
  return t;
}

Result<Tlv> Reader::expect(uint8_t tag, const char* what) {
  ASSIGN_OR_RETURN(Tlv t, next(what));
  if (t.tag != tag) return bad_request(std::string("ASN.1: unexpected tag in ") + what);
  return t;
}

Result<Tlv> parse_one(ByteSpan data, const char* what) {
  Reader r(data);
  ASSIGN_OR_RETURN(Tlv t, r.next(what));
  if (!r.empty()) return bad_request(std::string("ASN.1: trailing bytes after ") + what);
  return t;
}

bool equal(ByteSpan a, ByteSpan b) { return std::equal(a.begin(), a.end(), b.begin(), b.end()); }

}  // namespace p11relay::authenticode::der
