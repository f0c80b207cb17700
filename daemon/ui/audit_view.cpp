#include "daemon/ui/audit_view.h"

#include "common/relay_api.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <sstream>

namespace p11relay::daemon::ui {
namespace {

using json = nlohmann::json;

std::string str(const json& j, const char* name) {
  auto it = j.find(name);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool matches(const AuditRow& r, const std::string& needle) {
  if (needle.empty()) return true;
  for (const std::string* f : {&r.time, &r.key, &r.client, &r.mechanism, &r.filename, &r.result})
    if (lower(*f).find(needle) != std::string::npos) return true;
  return false;
}

std::string approval_result(const json& j) {
  std::string op = str(j, "operation");
  std::string out = op;
  std::string by = str(j, "approver");
  if (!by.empty()) out += " by " + by;
  std::string reason = str(j, "reason");
  if (!reason.empty()) out += ": " + reason;
  std::string id = str(j, "request_id");
  if (!id.empty()) out += " (" + id + ")";
  return out;
}

}  // namespace

bool parse_audit_row(const std::string& line, size_t number, AuditRow& out) {
  auto j = json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  out = AuditRow{};
  out.line = number;
  out.time = str(j, "sig.timestamp");
  out.epoch = relay::parse_utc_time(out.time).value_or(0);
  out.key = str(j, "sig.keyname");
  out.client = str(j, "client.name");
  out.filename = str(j, "client.filename");
  if (j.contains("operation")) {
    out.mechanism = str(j, "request.mechanism");
    out.result = approval_result(j);
    return true;
  }
  out.signature = true;
  out.mechanism = str(j, "sig.type");
  std::string hash = str(j, "sig.hash");
  if (!hash.empty()) out.mechanism += " / " + hash;
  std::string outcome = str(j, "outcome");
  out.result = outcome.empty() || outcome == "ok" ? "signed" : outcome;
  std::string approver = str(j, "approved_by");
  if (!approver.empty()) out.result += " (approved by " + approver + ")";
  return true;
}

AuditView view_audit(const std::string& text, const AuditQuery& q, int64_t now) {
  AuditView v;
  std::vector<AuditRow> hits;
  std::string needle = lower(q.text);
  std::istringstream in(text);
  std::string line;
  size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    AuditRow r;
    if (!parse_audit_row(line, number, r)) continue;
    if (q.visible && !q.visible(r.key)) continue;
    if (r.signature && r.epoch > now - 24 * 3600 && r.epoch <= now) {
      ++v.per_hour[static_cast<size_t>(23 - (now - r.epoch) / 3600)];
      auto& recent = v.recent[r.key];
      if (r.epoch > now - 60) ++recent[0];
      if (r.epoch > now - 3600) ++recent[1];
    }
    if (matches(r, needle)) hits.push_back(std::move(r));
  }
  v.matches = hits.size();
  std::reverse(hits.begin(), hits.end());
  size_t first = q.page * q.per_page;
  for (size_t i = first; i < hits.size() && i < first + q.per_page; ++i) v.rows.push_back(std::move(hits[i]));
  return v;
}

}  // namespace p11relay::daemon::ui
