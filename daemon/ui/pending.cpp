// Pending requests: what waits for the viewer's decision (or, for a submitter, their own requests),
// and the approve / deny forms.
#include "daemon/policy/requests_api.h"
#include "daemon/ui/csrf.h"
#include "daemon/ui/html.h"
#include "daemon/ui/pages.h"

#include <spdlog/spdlog.h>

namespace p11relay::daemon::ui {
namespace {

std::string decision_forms(const HeldRequest& r, const std::string& token) {
  std::string id = esc(r.info.id), t = esc(token);
  return "<form class=\"inline\" method=\"post\" action=\"/ui/requests/" + id + "/approve\">"
         "<input type=\"hidden\" name=\"csrf\" value=\"" + t + "\">"
         "<input type=\"text\" name=\"comment\" maxlength=\"500\" placeholder=\"comment (optional)\">"
         "<button class=\"approve\" type=\"submit\">Approve</button></form>"
         "<form class=\"inline\" method=\"post\" action=\"/ui/requests/" + id + "/deny\">"
         "<input type=\"hidden\" name=\"csrf\" value=\"" + t + "\">"
         "<input type=\"text\" name=\"reason\" maxlength=\"500\" required placeholder=\"reason (required)\">"
         "<button class=\"deny\" type=\"submit\">Deny</button></form>";
}

std::string request_row(const HeldRequest& r, const ClientIdentity& who, const std::string& token, int64_t now) {
  std::string row = "<tr id=\"" + esc(r.info.id) + "\"><td class=\"mono\">" + esc(r.info.id) + "</td><td>" +
                    esc(r.info.client) + "</td><td>" + esc(r.info.key) + "</td><td>" + esc(r.info.digest) + " " +
                    esc(r.info.mechanism) + "<br><span class=\"mono\" title=\"SHA-256 of the input\">" +
                    esc(r.info.input_sha256) + "</span></td><td class=\"filename\">" + esc(r.info.filename);
  if (r.info.filesize) row += "<br>" + std::to_string(*r.info.filesize) + " bytes";
  row += "</td><td>" + esc(r.info.created) + "</td><td>";
  row += r.state() == "pending" ? esc(duration_text(r.expires - now)) : esc(r.state());
  row += "</td><td>";
  if (r.state() != "pending") row += "being signed";
  else if (is_approver(who, r.info.key) && who.fingerprint != r.info.client_fingerprint) row += decision_forms(r, token);
  else if (who.fingerprint == r.info.client_fingerprint) row += "your request: waiting for an approver";
  else row += "—";
  return row + "</td></tr>\n";
}

std::string form_field(const std::vector<std::pair<std::string, std::string>>& form, const char* name) {
  for (const auto& [k, v] : form)
    if (k == name) return v;
  return std::string();
}

}  // namespace

bool approves_any(const ClientIdentity& who) {
  if (!who.snapshot || !who.client) return false;
  for (const auto& [name, k] : who.snapshot->config.keys)
    if (k.alias.empty() && shares_role(k.policy.approvers, who.client->roles)) return true;
  return false;
}

http::Response pending_page(Service& svc, const ClientIdentity& who) {
  std::string body;
  if (!svc.approvals) {
    body = "<p class=\"note\">No requests are held here: server.statedir is not set (docs/policy.md).</p>";
    return html_response(200, page("Pending requests", Tab::pending, who.name(), body));
  }
  int64_t now = epoch_now();
  std::string token = csrf_token(who.fingerprint);
  std::string rows;
  size_t n = 0;
  for (const auto& r : svc.approvals->list(false, now)) {
    if (r.state() == "approved") continue;  // a relic request approved, waiting for its client to collect it
    if (!is_approver(who, r.info.key) && who.fingerprint != r.info.client_fingerprint) continue;
    rows += request_row(r, who, token, now);
    ++n;
  }
  if (n == 0) {
    body = "<p class=\"note\" id=\"no-requests\">Nothing waits for a decision.</p>";
  } else {
    body = "<table id=\"pending\"><thead><tr><th>Request</th><th>Submitter</th><th>Key</th><th>Digest</th>"
           "<th>File</th><th>Submitted (UTC)</th><th>Expires in</th><th>Decision</th></tr></thead><tbody>\n" +
           rows + "</tbody></table>";
  }
  if (!approves_any(who))
    body += "<p class=\"note\">Your certificate has no approver role: you see your own requests only.</p>";
  return html_response(200, page("Pending requests", Tab::pending, who.name(), body));
}

asio::awaitable<http::Response> decide_form(Service& svc, RequestContext& ctx, std::string id, bool approve) {
  const ClientIdentity& who = ctx.identity;
  const char* title = approve ? "Approve" : "Deny";
  auto form = http::parse_query(ctx.req.body);
  if (!form) co_return message_page(400, title, who.name(), "The form could not be read.");
  auto csrf = check_csrf(ctx.req, who.fingerprint, form_field(*form, "csrf"));
  if (!csrf.ok()) {
    spdlog::warn("ui: {} of {} refused for client={} ip={}: {}", title, id, who.name(), ctx.peer_ip,
                 csrf.error().message);
    co_return message_page(403, title, who.name(), csrf.error().message);
  }
  if (!svc.approvals) co_return message_page(404, title, who.name(), "No requests are held here.");
  const char* field = approve ? "comment" : "reason";
  auto text = check_decision_text(form_field(*form, field), field, !approve);
  if (!text.ok()) co_return message_page(400, title, who.name(), text.error().message);
  auto r = co_await decide_request(svc, who, id, approve, *text);
  if (!r.ok()) co_return message_page(r.error().http_status, title, who.name(), r.error().message);
  std::string done = approve ? "Request " + id + " approved" + (r->state() == "signed" ? " and signed." : ".")
                             : "Request " + id + " denied.";
  co_return message_page(200, title, who.name(), done);
}

}  // namespace p11relay::daemon::ui
