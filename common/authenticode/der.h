// Minimal DER writer and bounds-checked reader for the Authenticode structures (docs/relic-protocol.md §9.3,
// §9.4). We build and splice DER ourselves instead of round-tripping through OpenSSL's PKCS7 objects
// because OpenSSL re-encodes SignerInfo attribute sets on i2d, which would change the bytes an existing
// (possibly foreign) signature was computed over when we nest a signature or add a timestamp.
#pragma once

#include "common/bytes.h"
#include "common/error.h"

#include <initializer_list>
#include <span>
#include <string_view>
#include <vector>

namespace p11relay::authenticode::der {

// Universal and context tags used here (single-byte tags only; X.690 §8.1.2).
inline constexpr uint8_t kInteger = 0x02, kBitString = 0x03, kOctetString = 0x04, kNull = 0x05,
                         kOid = 0x06, kUtf8String = 0x0c, kIa5String = 0x16, kUtcTime = 0x17,
                         kGeneralizedTime = 0x18, kBmpString = 0x1e, kSequence = 0x30, kSet = 0x31;
inline constexpr uint8_t context(int n, bool constructed) {
  return static_cast<uint8_t>(0x80 | (constructed ? 0x20 : 0) | n);
}

using ByteSpan = std::span<const uint8_t>;

// --- writing ---
Bytes tlv(uint8_t tag, ByteSpan content);
Bytes cat(std::initializer_list<ByteSpan> parts);
Bytes seq(std::initializer_list<ByteSpan> parts);
// DER SET OF: elements sorted by their encodings (X.690 §11.6).
Bytes set_of(std::vector<Bytes> elements);
Bytes oid(std::string_view dotted);          // whole TLV
Bytes oid_content(std::string_view dotted);  // content octets only (for comparisons)
Bytes integer(long value);
Bytes null();
Bytes octet_string(ByteSpan data);
// UTF-8 to BMPString (UTF-16BE; code points above U+FFFF become surrogate pairs, as Windows does).
Bytes bmp_string_content(std::string_view utf8);

// --- reading ---
struct Tlv {
  uint8_t tag = 0;
  ByteSpan content;  // value octets
  ByteSpan whole;    // tag + length + value
};

// Reads consecutive TLVs from a buffer. Definite lengths only (DER); every length is checked against
// the remaining bytes, so a hostile length can never make us read past the buffer.
class Reader {
 public:
  explicit Reader(ByteSpan data) : data_(data) {}
  bool empty() const { return pos_ >= data_.size(); }
  uint8_t peek_tag() const { return empty() ? 0 : data_[pos_]; }
  Result<Tlv> next(const char* what);
  // next() and a tag check; the error names `what`.
  Result<Tlv> expect(uint8_t tag, const char* what);

 private:
  ByteSpan data_;
  size_t pos_ = 0;
};

// Parses exactly one TLV that spans all of `data`.
Result<Tlv> parse_one(ByteSpan data, const char* what);

bool equal(ByteSpan a, ByteSpan b);

}  // namespace p11relay::authenticode::der
