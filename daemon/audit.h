// Audit log: one JSON object per line, written and synced (fdatasync) before a signature is returned. Each
// line carries "prev" = SHA-256 (hex) of the previous line (without its newline), so deleting,
// reordering or editing a line breaks the chain; `p11relayd audit-verify FILE` checks it.
#pragma once

#include "common/error.h"

#include <nlohmann/json.hpp>

#include <mutex>
#include <string>

namespace p11relay::daemon {

// Longest string value an audit record keeps; longer ones are cut and marked "...(N bytes)".
inline constexpr size_t kAuditMaxString = 2048;
std::string audit_text(std::string_view s);

class AuditLog {
 public:
  // Opens (creating with mode 0600) and reads the last line to continue the chain.
  static Result<std::unique_ptr<AuditLog>> open(const std::string& path);
  ~AuditLog();
  // Cuts string values to kAuditMaxString, adds "prev" and "seq", writes the line and fdatasync()s
  // it; fails the request (no signature is returned) if either fails.
  Status append(nlohmann::json record);
  const std::string& path() const { return path_; }

 private:
  std::mutex mu_;
  std::string path_;
  int fd_ = -1;
  std::string prev_;  // hex sha256 of the previous line
  unsigned long long seq_ = 0;
};

struct AuditVerifyResult {
  bool ok = true;
  size_t lines = 0;
  size_t bad_line = 0;  // 1-based, when !ok
  std::string reason;
};
AuditVerifyResult verify_audit_file(const std::string& path);

}  // namespace p11relay::daemon
