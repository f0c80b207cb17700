#include "common/authenticode/pe_write.h"

#include "common/authenticode/der.h"
#include "common/authenticode/signed_data.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

namespace p11relay::authenticode {

namespace {
constexpr uint16_t kWinCertRevision2 = 0x0200;
constexpr uint16_t kWinCertTypePkcsSignedData = 0x0002;

void put_le(Bytes& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get_le32(std::span<const uint8_t> b, size_t off) {
  return static_cast<uint32_t>(b[off]) | (static_cast<uint32_t>(b[off + 1]) << 8) |
         (static_cast<uint32_t>(b[off + 2]) << 16) | (static_cast<uint32_t>(b[off + 3]) << 24);
}
}  // namespace

Bytes win_certificate(std::span<const uint8_t> signed_data) {
  const size_t padded = (signed_data.size() + 7) & ~size_t{7};
  Bytes out;
  out.reserve(8 + padded);
  put_le(out, 8 + padded, 4);
  put_le(out, kWinCertRevision2, 2);
  put_le(out, kWinCertTypePkcsSignedData, 2);
  out.insert(out.end(), signed_data.begin(), signed_data.end());
  out.resize(8 + padded, 0);
  return out;
}

Result<std::vector<Bytes>> parse_cert_table(std::span<const uint8_t> table) {
  std::vector<Bytes> out;
  size_t pos = 0;
  while (pos + 8 <= table.size()) {
    uint32_t len = get_le32(table, pos);
    uint16_t rev = static_cast<uint16_t>(table[pos + 4] | (table[pos + 5] << 8));
    uint16_t type = static_cast<uint16_t>(table[pos + 6] | (table[pos + 7] << 8));
    if (len < 8 || len > table.size() - pos)
      return bad_request("WIN_CERTIFICATE at table offset " + std::to_string(pos) + " has an invalid length");
    if (type == kWinCertTypePkcsSignedData) {
      if (rev != kWinCertRevision2 && rev != 0x0100)
        return bad_request("WIN_CERTIFICATE revision 0x" + to_hex(std::span(&table[pos + 4], 2)) + " is not supported");
      // The blob is padded to 8 bytes; the SignedData is the first DER element.
      der::Reader r(table.subspan(pos + 8, len - 8));
      ASSIGN_OR_RETURN(der::Tlv sd, r.next("SignedData in WIN_CERTIFICATE"));
      out.emplace_back(sd.whole.begin(), sd.whole.end());
    }
    pos += (size_t{len} + 7) & ~size_t{7};
  }
  if (out.empty()) return bad_request("certificate table holds no PKCS#7 signature");
  return out;
}

Result<binpatch::Patch> make_pe_patch(const PeInfo& pe, std::span<const uint8_t> signed_data) {
  if (pe.image_digest.empty()) return bad_request("PE digest not computed");
  Bytes cert = win_certificate(signed_data);
  const uint64_t table_off = pe.new_table_offset();
  if (table_off + cert.size() > 0xffffffffULL) return bad_request("signed file would exceed 4 GiB");
  binpatch::Patch p;
  Bytes dir;
  put_le(dir, table_off, 4);
  put_le(dir, cert.size(), 4);
  p.records.push_back({pe.cert_dir_offset, 8, std::move(dir)});
  Bytes blob(table_off - pe.original_size, 0);  // 8-byte alignment padding (§9.2 step 9)
  blob.insert(blob.end(), cert.begin(), cert.end());
  p.records.push_back({pe.original_size, pe.cert_table_size, std::move(blob)});
  return p;
}

Result<Bytes> embed_signature(std::span<const uint8_t> file, const PeInfo& pe, std::span<const uint8_t> signed_data,
                              EmbedMode mode) {
  if (file.size() != pe.file_size) return bad_request("file does not match its digest information");
  Bytes to_embed(signed_data.begin(), signed_data.end());
  if (mode == EmbedMode::nest && pe.signed_()) {
    std::span<const uint8_t> table = file.subspan(pe.cert_table_offset, pe.cert_table_size);
    ASSIGN_OR_RETURN(std::vector<Bytes> existing, parse_cert_table(table));
    ASSIGN_OR_RETURN(to_embed, add_unsigned_attribute(existing[0], oid::kNestedSignature, signed_data));
  }
  ASSIGN_OR_RETURN(binpatch::Patch patch, make_pe_patch(pe, to_embed));
  ASSIGN_OR_RETURN(Bytes out, binpatch::apply(file, patch));
  RETURN_IF_ERROR(fix_pe_checksum(out));
  return out;
}

namespace {

using File = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

Status read_exact(std::FILE* f, uint8_t* out, size_t n, const std::string& path) {
  if (n && std::fread(out, 1, n, f) != n) return bad_request("short read from " + path);
  return {};
}

}  // namespace

Status write_signed_file(const std::string& in_path, const std::string& out_path, const PeInfo& pe,
                         std::span<const uint8_t> signed_data, EmbedMode mode) {
  File in(std::fopen(in_path.c_str(), "rb"), std::fclose);
  if (!in) return bad_request("cannot open " + in_path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(::fileno(in.get()), &st) != 0 || static_cast<uint64_t>(st.st_size) != pe.file_size)
    return bad_request(in_path + " changed since it was hashed");

  Bytes to_embed(signed_data.begin(), signed_data.end());
  if (mode == EmbedMode::nest && pe.signed_()) {
    Bytes table(pe.cert_table_size);
    if (std::fseek(in.get(), static_cast<long>(pe.cert_table_offset), SEEK_SET) != 0)
      return bad_request("cannot seek in " + in_path);
    RETURN_IF_ERROR(read_exact(in.get(), table.data(), table.size(), in_path));
    ASSIGN_OR_RETURN(std::vector<Bytes> existing, parse_cert_table(table));
    ASSIGN_OR_RETURN(to_embed, add_unsigned_attribute(existing[0], oid::kNestedSignature, signed_data));
    std::rewind(in.get());
  }
  ASSIGN_OR_RETURN(binpatch::Patch patch, make_pe_patch(pe, to_embed));

  // A unique name beside the output: two signings of the same file must not share a temp file.
  std::string tmp = out_path + ".p11relay-XXXXXX";
  int fd = ::mkstemp(tmp.data());
  if (fd < 0) return bad_request("cannot create a temp file beside " + out_path + ": " + std::strerror(errno));
  File out(::fdopen(fd, "wb+"), std::fclose);
  if (!out) {
    ::close(fd);
    std::remove(tmp.c_str());
    return bad_request("cannot create " + tmp + ": " + std::strerror(errno));
  }
  auto fail = [&](Error e) -> Status {
    out.reset();
    std::remove(tmp.c_str());
    return e;
  };
  PeChecksum sum(pe.checksum_offset);
  auto emit = [&](std::span<const uint8_t> d) -> bool {
    sum.update(d);
    return d.empty() || std::fwrite(d.data(), 1, d.size(), out.get()) == d.size();
  };
  Bytes buf(1024 * 1024);
  uint64_t cur = 0;
  auto copy_until = [&](uint64_t end) -> bool {
    while (cur < end) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), end - cur));
      if (std::fread(buf.data(), 1, n, in.get()) != n || !emit(std::span(buf.data(), n))) return false;
      cur += n;
    }
    return true;
  };
  for (const auto& r : patch.records) {  // make_pe_patch's records are sorted and disjoint
    if (!copy_until(r.offset) || !emit(r.data)) return fail(bad_request("I/O error writing " + tmp));
    if (r.old_size && std::fseek(in.get(), static_cast<long>(r.offset + r.old_size), SEEK_SET) != 0)
      return fail(bad_request("cannot seek in " + in_path));
    cur = r.offset + r.old_size;
  }
  if (!copy_until(pe.file_size)) return fail(bad_request("I/O error writing " + tmp));
  // §9.6: the checksum is the last thing written, at its place in the headers. No fsync (like
  // osslsigncode and signtool): the rename already keeps readers from seeing a partial file, and
  // flushing 100 MB to disk cost more than the whole signature.
  uint32_t c = sum.finish();
  uint8_t le[4] = {static_cast<uint8_t>(c), static_cast<uint8_t>(c >> 8), static_cast<uint8_t>(c >> 16),
                   static_cast<uint8_t>(c >> 24)};
  if (std::fseek(out.get(), static_cast<long>(pe.checksum_offset), SEEK_SET) != 0 ||
      std::fwrite(le, 1, 4, out.get()) != 4 || std::fflush(out.get()) != 0)
    return fail(bad_request("I/O error writing " + tmp));
  ::fchmod(::fileno(out.get()), st.st_mode & 07777);
  out.reset();
  if (std::rename(tmp.c_str(), out_path.c_str()) != 0) {
    std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return bad_request("cannot rename " + tmp + " to " + out_path + ": " + why);
  }
  return {};
}

}  // namespace p11relay::authenticode
