#include "daemon/signing/audit.h"

#include "common/bytes.h"
#include "common/digest.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace p11relay::daemon {
namespace {
const std::string kGenesis(64, '0');
std::string line_hash(const std::string& line) { return to_hex(hash(HashAlg::sha256, to_bytes(line))); }
}  // namespace

Result<std::unique_ptr<AuditLog>> AuditLog::open(const std::string& path, bool sync_each) {
  auto log = std::unique_ptr<AuditLog>(new AuditLog());
  log->path_ = path;
  log->sync_each_ = sync_each;
  log->prev_ = kGenesis;
  {
    std::ifstream in(path, std::ios::binary);
    std::string line, last;
    std::uint64_t complete = 0;  // bytes up to the last newline
    while (std::getline(in, line)) {
      if (in.eof()) {  // no newline after it: a write a crash cut short
        log->torn_bytes_ = line.size();
        break;
      }
      complete += line.size() + 1;
      if (!line.empty()) last = line;
    }
    // Its fdatasync never returned, so its signature was never returned: cut it, the chain goes on
    // from the last whole line (docs/operator-guide.md "Audit log").
    if (log->torn_bytes_ > 0 && ::truncate(path.c_str(), static_cast<off_t>(complete)) != 0)
      return config_error("audit file '" + path + "' ends in a torn line that cannot be cut: " + std::strerror(errno));
    if (!last.empty()) {
      log->prev_ = line_hash(last);
      auto j = nlohmann::json::parse(last, nullptr, false);
      if (!j.is_discarded() && j.contains("seq") && j["seq"].is_number_unsigned()) log->seq_ = j["seq"].get<unsigned long long>();
    }
  }
  log->fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (log->fd_ < 0) return config_error("cannot open audit file '" + path + "': " + std::strerror(errno));
  int fd = log->fd_;
  log->sync_ = std::make_unique<GroupSync>([fd] { return ::fdatasync(fd) == 0 ? 0 : errno; }, log->seq_);
  return log;
}

AuditLog::~AuditLog() {
  sync_.reset();  // the last sync, answered, before the file is closed
  if (fd_ >= 0) ::close(fd_);
}

std::string audit_text(std::string_view s) {
  if (s.size() <= kAuditMaxString) return std::string(s);
  size_t cut = kAuditMaxString;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 sequence
  return std::string(s.substr(0, cut)) + "...(" + std::to_string(s.size()) + " bytes)";
}

Status AuditLog::append(nlohmann::json record) {
  ASSIGN_OR_RETURN(std::uint64_t n, write(std::move(record)));
  return sync_->wait_durable(n);
}

Result<std::uint64_t> AuditLog::write(nlohmann::json record) {
  for (auto& [k, v] : record.items())
    if (v.is_string() && v.get_ref<const std::string&>().size() > kAuditMaxString) v = audit_text(v.get<std::string>());
  std::lock_guard lock(mu_);
  record["seq"] = seq_ + 1;
  record["prev"] = prev_;
  // Keys sorted, as relic's lines. Request text is checked before the token signs (docs/reliability.md
  // "Request text"); replacing what is still not UTF-8 keeps dump() from throwing after a signature exists.
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string out = line + "\n";
  size_t off = 0;
  while (off < out.size()) {
    ssize_t n = ::write(fd_, out.data() + off, out.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return internal_error(std::string("audit write failed: ") + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  if (sync_each_) {
    while (::fdatasync(fd_) != 0)
      if (errno != EINTR) return internal_error(std::string("audit fdatasync failed: ") + std::strerror(errno));
  }
  prev_ = line_hash(line);
  ++seq_;
  if (sync_each_) sync_->synced(seq_);
  else sync_->written(seq_);  // under mu_: numbers reach the syncer in order
  return seq_;
}

AuditVerifyResult verify_audit_file(const std::string& path) {
  AuditVerifyResult r;
  std::ifstream in(path);
  if (!in) {
    r.ok = false;
    r.reason = "cannot read " + path;
    return r;
  }
  std::string line, prev = kGenesis;
  unsigned long long seq = 0;
  bool first = true;
  while (std::getline(in, line)) {
    if (in.eof()) {  // a last line without its newline: torn by a crash, tolerated and reported
      r.torn_bytes = line.size();
      break;
    }
    ++r.lines;
    auto j = nlohmann::json::parse(line, nullptr, false);
    auto fail = [&](std::string why) {
      r.ok = false;
      r.bad_line = r.lines;
      r.reason = std::move(why);
      return r;
    };
    if (j.is_discarded() || !j.is_object()) return fail("not a JSON object");
    if (!j.contains("prev") || !j["prev"].is_string()) return fail("no 'prev' hash");
    if (!j.contains("seq") || !j["seq"].is_number_unsigned()) return fail("no 'seq' number");
    if (first && j["seq"].get<unsigned long long>() == 1 && j["prev"].get<std::string>() != kGenesis)
      return fail("first record does not start the chain");
    // The first line may continue a rotated file: accept its prev, then check every link after it.
    if (!first && j["prev"].get<std::string>() != prev) return fail("hash chain broken (line edited, removed or reordered)");
    if (!first && j["seq"].get<unsigned long long>() != seq + 1) return fail("sequence number gap");
    if (j.dump() != line) return fail("line is not in canonical form (edited)");
    prev = line_hash(line);
    seq = j["seq"].get<unsigned long long>();
    first = false;
  }
  return r;
}

}  // namespace p11relay::daemon
