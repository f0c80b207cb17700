#include "common/authenticode/pe_write.h"
#include "common/authenticode/le.h"

#include "common/authenticode/der.h"
#include "common/authenticode/signed_data.h"

#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <utility>

namespace p11relay::authenticode {

namespace {
constexpr uint16_t kWinCertRevision2 = 0x0200;
constexpr uint16_t kWinCertTypePkcsSignedData = 0x0002;

}  // namespace

Bytes win_certificate(std::span<const uint8_t> signed_data) {
  const size_t padded = (signed_data.size() + 7) & ~size_t{7};
  Bytes out;
  out.reserve(8 + padded);
  le::append(out, 8 + padded, 4);
  le::append(out, kWinCertRevision2, 2);
  le::append(out, kWinCertTypePkcsSignedData, 2);
  out.insert(out.end(), signed_data.begin(), signed_data.end());
  out.resize(8 + padded, 0);
  return out;
}

Result<std::vector<Bytes>> parse_cert_table(std::span<const uint8_t> table) {
  std::vector<Bytes> out;
  size_t pos = 0;
  while (pos + 8 <= table.size()) {
    uint32_t len = le::get32(table, pos);
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
  le::append(dir, table_off, 4);
  le::append(dir, cert.size(), 4);
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

uint32_t signed_checksum(const PeInfo& pe, const binpatch::Patch& patch) {
  WordSum sum = pe.image_sum;
  uint64_t size = pe.original_size;
  for (const auto& r : patch.records) {
    sum.add(r.offset, r.data);
    size = std::max<uint64_t>(size, r.offset + r.data.size());
  }
  return pe_checksum(sum, size);
}

namespace {

Status pwrite_all(int fd, std::span<const uint8_t> data, uint64_t offset) {
  while (!data.empty()) {
    const ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error(ErrorCode::internal, std::strerror(n < 0 ? errno : EIO));
    data = data.subspan(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

}  // namespace

Result<std::unique_ptr<SignedFileWriter>> SignedFileWriter::open(const std::string& in_path,
                                                                 const std::string& out_path) {
  std::unique_ptr<SignedFileWriter> w(new SignedFileWriter);
  w->in_path_ = in_path;
  w->out_path_ = out_path;
  w->in_ = ::open(in_path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (w->in_ < 0 || ::fstat(w->in_, &st) != 0) return bad_request("cannot open " + in_path + ": " + std::strerror(errno));
  w->in_size_ = static_cast<uint64_t>(st.st_size);
  w->mode_ = st.st_mode & 07777;
  // The copy has no name until commit (O_TMPFILE, named through /proc/self/fd): a signing killed
  // while it waits for the token or an approval leaves no 2 GB temp file behind. Where O_TMPFILE or
  // /proc is missing, a named temp file from the start.
  std::string dir = std::filesystem::path(out_path).parent_path().string();
  w->out_ = ::open(dir.empty() ? "." : dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (w->out_ >= 0 && ::access("/proc/self/fd", X_OK) != 0) {
    ::close(w->out_);
    w->out_ = -1;
  }
  if (w->out_ < 0) {
    // A unique name beside the output: two signings of the same file must not share a temp file.
    std::string tmp = out_path + ".p11relay-XXXXXX";
    w->out_ = ::mkostemp(tmp.data(), O_CLOEXEC);
    if (w->out_ < 0) return bad_request("cannot create a temp file beside " + out_path + ": " + std::strerror(errno));
    w->tmp_ = std::move(tmp);
  }
  return w;
}

// Names the O_TMPFILE copy beside the output, for the rename over it.
Status SignedFileWriter::link_temp() {
  const std::string proc = "/proc/self/fd/" + std::to_string(out_);
  std::random_device rng;
  for (int attempt = 0; attempt < 100; ++attempt) {
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, ".p11relay-%08x", rng());
    std::string name = out_path_ + suffix;
    if (::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0) {
      tmp_ = std::move(name);
      return {};
    }
    if (errno != EEXIST) break;
  }
  return bad_request("cannot create a temp file beside " + out_path_ + ": " + std::strerror(errno));
}

SignedFileWriter::~SignedFileWriter() {
  cancel_ = true;
  if (copy_.valid()) copy_.wait();
  if (in_ >= 0) ::close(in_);
  if (out_ >= 0) ::close(out_);
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
}

void SignedFileWriter::start_copy() {
  if (!copy_.valid()) copy_ = std::async(std::launch::async, [this] { return copy_input(); });
}

// The kernel copies page-cache pages (or shares extents where the filesystem can): no pass through
// user space. sendfile where copy_file_range cannot (across filesystems on older kernels). In steps
// of 64 MiB, so that a failed signing does not wait for the copy of a large file.
Status SignedFileWriter::copy_input() {
  off_t in_off = 0;
  bool ranges = true;
  while (static_cast<uint64_t>(in_off) < in_size_) {
    if (cancel_) return internal_error("copy cancelled");
    const size_t want = static_cast<size_t>(std::min<uint64_t>(in_size_ - static_cast<uint64_t>(in_off), 64u << 20));
    off_t out_off = in_off;
    ssize_t n = ranges ? ::copy_file_range(in_, &in_off, out_, &out_off, want, 0) : ::sendfile(out_, in_, &in_off, want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && ranges && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) {
      ranges = false;
      if (::lseek(out_, in_off, SEEK_SET) < 0) return bad_request("cannot seek in the copy: " + std::string(std::strerror(errno)));
      continue;
    }
    if (n < 0) return bad_request("cannot copy " + in_path_ + ": " + std::strerror(errno));
    if (n == 0) return bad_request(in_path_ + " became shorter while it was being signed");
  }
  return {};
}

Status SignedFileWriter::commit(const PeInfo& pe, std::span<const uint8_t> signed_data, EmbedMode mode) {
  if (committed_) return internal_error("SignedFileWriter::commit called twice");
  RETURN_IF_ERROR(copy_.valid() ? copy_.get() : copy_input());
  if (in_size_ != pe.file_size) return bad_request(in_path_ + " changed since it was hashed");
  Bytes to_embed(signed_data.begin(), signed_data.end());
  if (mode == EmbedMode::nest && pe.signed_()) {
    Bytes table(pe.cert_table_size);
    if (::pread(in_, table.data(), table.size(), static_cast<off_t>(pe.cert_table_offset)) !=
        static_cast<ssize_t>(table.size()))
      return bad_request("short read from " + in_path_);
    ASSIGN_OR_RETURN(std::vector<Bytes> existing, parse_cert_table(table));
    ASSIGN_OR_RETURN(to_embed, add_unsigned_attribute(existing[0], oid::kNestedSignature, signed_data));
  }
  ASSIGN_OR_RETURN(binpatch::Patch patch, make_pe_patch(pe, to_embed));
  // The copy holds the input; the records replace the directory and the old table (or append the
  // table), and the CheckSum follows from the hashing pass's sum (§9.6).
  const binpatch::Record& table = patch.records.back();
  const uint64_t size = table.offset + table.data.size();
  const uint32_t c = signed_checksum(pe, patch);
  const uint8_t le[4] = {static_cast<uint8_t>(c), static_cast<uint8_t>(c >> 8), static_cast<uint8_t>(c >> 16),
                         static_cast<uint8_t>(c >> 24)};
  Status w = pwrite_all(out_, le, pe.checksum_offset);
  for (const auto& r : patch.records)
    if (w.ok()) w = pwrite_all(out_, r.data, r.offset);
  if (w.ok() && size < in_size_ && ::ftruncate(out_, static_cast<off_t>(size)) != 0)
    w = Error(ErrorCode::internal, std::strerror(errno));
  if (!w.ok()) return bad_request("cannot write the signed copy of " + in_path_ + ": " + w.error().message);
  // No fsync (like osslsigncode and signtool): the rename already keeps readers from seeing a partial
  // file, and flushing 100 MB to disk cost more than the whole signature.
  ::fchmod(out_, mode_);
  if (tmp_.empty()) RETURN_IF_ERROR(link_temp());
  const int fd = std::exchange(out_, -1);
  if (::close(fd) != 0) return bad_request("cannot write " + tmp_ + ": " + std::strerror(errno));
  if (std::rename(tmp_.c_str(), out_path_.c_str()) != 0)
    return bad_request("cannot rename " + tmp_ + " to " + out_path_ + ": " + std::strerror(errno));
  tmp_.clear();
  committed_ = true;
  return {};
}

Status write_signed_file(const std::string& in_path, const std::string& out_path, const PeInfo& pe,
                         std::span<const uint8_t> signed_data, EmbedMode mode) {
  ASSIGN_OR_RETURN(auto w, SignedFileWriter::open(in_path, out_path));
  return w->commit(pe, signed_data, mode);
}

}  // namespace p11relay::authenticode
