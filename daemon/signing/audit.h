// Audit log: one JSON object per line, written and synced (fdatasync, group commit) before a signature is
// returned. Each
// line carries "prev" = SHA-256 (hex) of the previous line (without its newline), so deleting,
// reordering or editing a line breaks the chain; `p11relayd audit-verify FILE` checks it.
#pragma once

#include "common/error.h"
#include "daemon/signing/group_sync.h"

#include <nlohmann/json.hpp>

#include <mutex>
#include <string>

namespace p11relay::daemon {

// Longest string value an audit record keeps; longer ones are cut and marked "...(N bytes)".
inline constexpr size_t kAuditMaxString = 2048;
std::string audit_text(std::string_view s);

class AuditLog {
 public:
  // Opens (creating with mode 0600) and reads the last line to continue the chain; a torn last line (no
  // newline) is cut off first (torn_bytes()). sync_each: the writer calls fdatasync itself for each line,
  // under the log's lock, without group commit (bench/run compares the two with P11RELAYD_AUDIT_SYNC=each,
  // docs/benchmarks.md).
  static Result<std::unique_ptr<AuditLog>> open(const std::string& path, bool sync_each = false);
  ~AuditLog();
  // Cuts string values to kAuditMaxString, adds "prev" and "seq" and writes the line (not yet durable).
  // Returns its number for when_durable().
  Result<std::uint64_t> write(nlohmann::json record);
  // Line n is on disk (a fdatasync that started after it was written returned): fails if that sync failed,
  // and then the caller must not return what the line records. Concurrent callers share one fdatasync.
  void when_durable(std::uint64_t n, GroupSync::Done done) { sync_->when_durable(n, std::move(done)); }
  // write() and wait until durable, blocking the calling thread.
  Status append(nlohmann::json record);
  const std::string& path() const { return path_; }
  // Bytes of a torn last line (no newline: a crash cut its write short) that open() cut off; 0 if none.
  std::size_t torn_bytes() const { return torn_bytes_; }
  std::uint64_t syncs() const { return sync_->syncs(); }

 private:
  std::unique_ptr<GroupSync> sync_;
  std::mutex mu_;
  bool sync_each_ = false;
  std::size_t torn_bytes_ = 0;
  std::string path_;
  int fd_ = -1;
  std::string prev_;  // hex sha256 of the previous line
  unsigned long long seq_ = 0;
};

struct AuditVerifyResult {
  bool ok = true;
  size_t lines = 0;
  size_t bad_line = 0;  // 1-based, when !ok
  size_t torn_bytes = 0;  // a last line without its newline (a crash cut its write short): not counted
  std::string reason;
};
AuditVerifyResult verify_audit_file(const std::string& path);

}  // namespace p11relay::daemon
