// History: the audit log as a searchable, paged table, with the hash chain's state.
#include "daemon/policy/requests_api.h"
#include "daemon/ui/audit_view.h"
#include "daemon/ui/html.h"
#include "daemon/ui/pages.h"

#include <fstream>
#include <sstream>

namespace p11relay::daemon::ui {
namespace {

constexpr size_t kPerPage = 50;

std::string chain_status(const AuditVerifyResult& v) {
  if (v.ok) return "<span class=\"good\" id=\"chain\">intact</span> (" + std::to_string(v.lines) + " lines)";
  return "<span class=\"bad\" id=\"chain\">broken at line " + std::to_string(v.bad_line) + "</span>: " + esc(v.reason);
}

std::string rows_html(const std::vector<AuditRow>& rows) {
  std::string h;
  for (const auto& r : rows)
    h += "<tr><td>" + std::to_string(r.line) + "</td><td>" + esc(r.time) + "</td><td>" + esc(r.key) + "</td><td>" +
         esc(r.client) + "</td><td>" + esc(r.mechanism) + "</td><td class=\"filename\">" + esc(r.filename) +
         "</td><td>" + esc(r.result) + "</td></tr>\n";
  return h;
}

std::string pager(const std::string& text, size_t page, size_t matches) {
  std::string q = text.empty() ? "" : "q=" + esc(http::percent_encode(text)) + "&amp;";
  std::string h = "<div class=\"pager\">";
  if (page > 0) h += "<a rel=\"prev\" href=\"/ui/history?" + q + "page=" + std::to_string(page - 1) + "\">Newer</a>";
  size_t pages = (matches + kPerPage - 1) / kPerPage;
  h += "<span>page " + std::to_string(page + 1) + " of " + std::to_string(std::max<size_t>(pages, 1)) + " (" +
       std::to_string(matches) + " records)</span>";
  if (page + 1 < pages) h += "<a rel=\"next\" href=\"/ui/history?" + q + "page=" + std::to_string(page + 1) + "\">Older</a>";
  return h + "</div>";
}

}  // namespace

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

namespace {

struct History {
  AuditVerifyResult chain;
  AuditView view;
};

// On the blocking pool: one read of the file, the chain check, the page of rows. Plain functions
// bound with std::bind, no capturing closure in a coroutine frame (GCC 12, see service.h).
History load_history(const std::string& path, const ClientIdentity& who, const AuditQuery& query) {
  AuditQuery q = query;
  q.visible = [&who](const std::string& key) { return is_approver(who, key); };
  History h;
  h.chain = verify_audit_file(path);
  h.view = view_audit(read_text_file(path), q, epoch_now());
  return h;
}

}  // namespace

asio::awaitable<http::Response> history_page(Service& svc, RequestContext& ctx) {
  const ClientIdentity& who = ctx.identity;
  if (!approves_any(who))
    co_return message_page(403, "History", who.name(), "The history is for approvers: your certificate has no approver role.");
  if (!svc.audit)
    co_return html_response(200, page("History", Tab::history, who.name(),
                                      "<p class=\"note\">No audit file is configured (auditfile in the config).</p>"));
  AuditQuery q;
  q.text = query_param(ctx, "q");
  q.page = std::min<size_t>(std::strtoul(query_param(ctx, "page").c_str(), nullptr, 10), 1000000);
  q.per_page = kPerPage;
  std::function<History()> work = std::bind(&load_history, svc.audit->path(), who, q);
  History h = co_await run_blocking<History>(svc, work);
  std::string body = "<p>Hash chain: " + chain_status(h.chain) + "</p>\n"
                     "<form method=\"get\" action=\"/ui/history\" class=\"inline\"><input type=\"search\" name=\"q\" "
                     "value=\"" + esc(q.text) + "\" placeholder=\"key, client, file, result…\">"
                     "<button class=\"search\" type=\"submit\">Search</button></form>\n";
  body += pager(q.text, q.page, h.view.matches);
  body += "<table id=\"history\"><thead><tr><th>Line</th><th>Time (UTC)</th><th>Key</th><th>Client</th>"
          "<th>Mechanism</th><th>File</th><th>Result</th></tr></thead><tbody>\n" + rows_html(h.view.rows) +
          "</tbody></table>";
  body += "<p class=\"note\">Records of the keys you approve for, newest first.</p>";
  co_return html_response(200, page("History", Tab::history, who.name(), body));
}

}  // namespace p11relay::daemon::ui
