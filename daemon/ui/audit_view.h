// The audit log as the web UI shows it (docs/operator-guide.md "Web UI"): rows of the history table,
// a text search, pages, signatures per hour for the plot, and the hash chain's state (audit.h).
// Pure functions over the file's text, so they are unit-tested without a daemon.
#pragma once


#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace p11relay::daemon::ui {

struct AuditRow {
  size_t line = 0;  // 1-based line of the audit file
  std::string time, key, client, mechanism, filename;
  std::string result;  // "signed", or the approval step ("request", "approve by admin: …", "deny …")
  bool signature = false;  // a signature record (not an approval step)
  int64_t epoch = 0;       // time as epoch seconds (0 if unreadable)
};

// One line of the audit file as a row; false for a line that is no JSON object.
bool parse_audit_row(const std::string& line, size_t number, AuditRow& out);

struct AuditQuery {
  std::string text;  // case-insensitive substring of any column; empty: every row
  size_t page = 0;   // 0-based, newest rows first
  size_t per_page = 50;
  std::function<bool(const std::string& key)> visible;  // rows of keys the viewer may see
};

struct AuditView {
  std::vector<AuditRow> rows;  // this page, newest first
  size_t matches = 0;          // rows matching the query (all pages)
  std::array<int, 24> per_hour{};  // signatures in each of the last 24 hours (index 23: the current hour)
  std::map<std::string, std::array<int, 2>> recent;  // key → signatures in the last minute, last hour
};

// Reads `text` (the audit file's content) at time `now` (epoch seconds).
AuditView view_audit(const std::string& text, const AuditQuery& q, int64_t now);

}  // namespace p11relay::daemon::ui
