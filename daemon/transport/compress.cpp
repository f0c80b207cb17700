#include "daemon/transport/compress.h"

#include "common/http.h"

#include <snappy.h>
#include <zlib.h>

#include <array>
#include <cstring>

namespace p11relay::daemon {
namespace {

Error decode_error(std::string msg) { return Error(ErrorCode::unsupported_media, std::move(msg)).with_status(400); }

class GzipDecoder : public Decoder {
 public:
  explicit GzipDecoder(uint64_t max) : max_(max) {
    std::memset(&z_, 0, sizeof z_);
    ok_ = inflateInit2(&z_, 16 + MAX_WBITS) == Z_OK;
  }
  ~GzipDecoder() override { inflateEnd(&z_); }

  Status write(std::string_view in, const Sink& out) override {
    if (!ok_) return internal_error("zlib init failed");
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z_.avail_in = static_cast<uInt>(in.size());
    std::array<char, 32 * 1024> buf;
    while (z_.avail_in > 0 && !ended_) {
      z_.next_out = reinterpret_cast<Bytef*>(buf.data());
      z_.avail_out = buf.size();
      int rc = inflate(&z_, Z_NO_FLUSH);
      if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) return decode_error("failed to decompress request");
      size_t n = buf.size() - z_.avail_out;
      total_ += n;
      if (total_ > max_) return Error(ErrorCode::payload_too_large, "decompressed request body too large");
      if (n && !out(std::string_view(buf.data(), n))) return internal_error("body rejected");
      if (rc == Z_STREAM_END) ended_ = true;
      if (rc == Z_BUF_ERROR && n == 0) break;
    }
    if (ended_ && z_.avail_in > 0) return decode_error("trailing data after gzip stream");
    return {};
  }
  Status finish(const Sink&) override {
    if (!ended_) return decode_error("gzip stream truncated");
    return {};
  }

 private:
  z_stream z_;
  bool ok_ = false;
  bool ended_ = false;
  uint64_t max_;
  uint64_t total_ = 0;
};

// https://github.com/google/snappy/blob/main/framing_format.txt
class SnappyFramedDecoder : public Decoder {
 public:
  explicit SnappyFramedDecoder(uint64_t max) : max_(max) {}

  Status write(std::string_view in, const Sink& out) override {
    buf_.append(in);
    size_t off = 0;
    while (buf_.size() - off >= 4) {
      auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + off);
      unsigned type = p[0];
      size_t len = p[1] | (p[2] << 8) | (static_cast<size_t>(p[3]) << 16);
      if (buf_.size() - off < 4 + len) break;
      std::string_view body(buf_.data() + off + 4, len);
      off += 4 + len;
      if (type == 0xff) {
        if (body != std::string_view("sNaPpY", 6)) return decode_error("bad snappy stream identifier");
        seen_id_ = true;
        continue;
      }
      if (!seen_id_) return decode_error("snappy stream does not start with a stream identifier");
      if (type == 0x00 || type == 0x01) {
        if (len < 4) return decode_error("snappy chunk too short");
        uint32_t masked = static_cast<uint32_t>(static_cast<unsigned char>(body[0])) |
                          static_cast<uint32_t>(static_cast<unsigned char>(body[1])) << 8 |
                          static_cast<uint32_t>(static_cast<unsigned char>(body[2])) << 16 |
                          static_cast<uint32_t>(static_cast<unsigned char>(body[3])) << 24;
        std::string_view data = body.substr(4);
        std::string plain;
        if (type == 0x00) {
          size_t ulen = 0;
          if (!snappy::GetUncompressedLength(data.data(), data.size(), &ulen) || ulen > 65536)
            return decode_error("bad snappy chunk");
          if (!snappy::Uncompress(data.data(), data.size(), &plain)) return decode_error("corrupt snappy chunk");
        } else {
          if (data.size() > 65536) return decode_error("snappy chunk too large");
          plain.assign(data);
        }
        uint32_t crc = crc32c(plain.data(), plain.size());
        uint32_t expect = ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
        if (expect != masked) return decode_error("snappy checksum mismatch");
        total_ += plain.size();
        if (total_ > max_) return Error(ErrorCode::payload_too_large, "decompressed request body too large");
        if (!plain.empty() && !out(plain)) return internal_error("body rejected");
      } else if (type >= 0x02 && type <= 0x7f) {
        return decode_error("unskippable snappy chunk type");
      }  // 0x80..0xfe: skippable / padding
    }
    buf_.erase(0, off);
    if (buf_.size() > 4 + (1 << 24)) return decode_error("snappy chunk too large");
    return {};
  }
  Status finish(const Sink&) override {
    if (!buf_.empty()) return decode_error("snappy stream truncated");
    return {};
  }

 private:
  std::string buf_;
  bool seen_id_ = false;
  uint64_t max_;
  uint64_t total_ = 0;
};

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

std::unique_ptr<Decoder> make_decoder(std::string_view ce, uint64_t max_output) {
  if (http::iequals(ce, "gzip") || http::iequals(ce, "x-gzip")) return std::make_unique<GzipDecoder>(max_output);
  if (http::iequals(ce, "x-snappy-framed")) return std::make_unique<SnappyFramedDecoder>(max_output);
  return nullptr;
}

}  // namespace p11relay::daemon
