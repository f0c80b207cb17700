// Appliance status: tokens, keys and who may use them, signature counters, the config's age, and
// the plot of the last 24 hours.
#include "daemon/policy/requests_api.h"
#include "daemon/ui/audit_view.h"
#include "daemon/ui/html.h"
#include "daemon/ui/pages.h"

namespace p11relay::daemon::ui {
namespace {

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string tokens_html(const Service& svc) {
  std::string h = "<table id=\"tokens\"><thead><tr><th>Token</th><th>State</th><th>Logged in</th><th>Keys served</th>"
                  "<th>Last error</th></tr></thead><tbody>\n";
  for (const auto& [name, t] : svc.tokens) {
    TokenState st = t->state();
    bool up = st == TokenState::ready;
    h += "<tr><td>" + esc(name) + "</td><td>" + (up ? "<span class=\"good\">" : "<span class=\"bad\">") +
         esc(token_state_name(st)) + "</span></td><td>" + (up ? "yes" : "no") + "</td><td>" +
         std::to_string(t->keys().size()) + "</td><td>" + esc(up ? std::string() : t->state_reason()) + "</td></tr>\n";
  }
  return h + "</tbody></table>";
}

// Clients (nickname or entry name) holding one of `roles`.
std::string clients_with(const Config& c, const std::vector<std::string>& roles) {
  std::vector<std::string> names;
  for (const auto& [entry, client] : c.clients)
    if (shares_role(roles, client.roles)) names.push_back(client.nickname.empty() ? entry.substr(0, 12) : client.nickname);
  return join(names);
}

std::string keys_html(const Service& svc, const Config& c, const AuditView& v) {
  auto counts = svc.metrics.signatures_by_key();
  std::string h = "<table id=\"keys\"><thead><tr><th>Key</th><th>Token</th><th>Roles</th><th>Clients who may sign</th>"
                  "<th>Approval</th><th>Last minute</th><th>Last hour</th><th>Signed since start</th>"
                  "<th>Failed since start</th></tr></thead><tbody>\n";
  for (const auto& [name, k] : c.keys) {
    if (!k.alias.empty()) continue;
    std::string approval = k.has_policy && k.policy.approval ? "required; approvers: " + join(k.policy.approvers) : "no";
    auto recent = v.recent.count(name) ? v.recent.at(name) : std::array<int, 2>{};
    auto total = counts.count(name) ? counts.at(name) : std::array<unsigned long long, 2>{};
    h += "<tr><td>" + esc(name) + "</td><td>" + esc(k.token) + "</td><td>" + esc(join(k.roles)) + "</td><td>" +
         esc(clients_with(c, k.roles)) + "</td><td>" + esc(approval) + "</td><td>" + std::to_string(recent[0]) +
         "</td><td>" + std::to_string(recent[1]) + "</td><td>" + std::to_string(total[0]) + "</td><td>" +
         std::to_string(total[1]) + "</td></tr>\n";
  }
  return h + "</tbody></table>";
}

AuditView load_recent(const std::string& path, int64_t now) {
  AuditQuery q;
  q.per_page = 0;
  return view_audit(read_text_file(path), q, now);
}

}  // namespace

asio::awaitable<http::Response> status_page(Service& svc, RequestContext& ctx) {
  const ClientIdentity& who = ctx.identity;
  if (!approves_any(who))
    co_return message_page(403, "Appliance status", who.name(),
                           "The appliance status is for approvers: your certificate has no approver role.");
  int64_t now = epoch_now();
  AuditView v;
  if (svc.audit) {
    std::function<AuditView()> work = std::bind(&load_recent, svc.audit->path(), now);
    v = co_await run_blocking<AuditView>(svc, work);
  }
  const Config& c = who.snapshot->config;
  long long age = static_cast<long long>(now - static_cast<int64_t>(svc.published_at.load()));
  std::string body = "<h2>Tokens</h2>\n" + tokens_html(svc);
  body += "\n<h2>Keys</h2>\n" + keys_html(svc, c, v);
  body += "\n<h2>Signatures in the last 24 hours</h2>\n";
  body += svc.audit ? signatures_plot(v.per_hour, now) : "<p class=\"note\">No audit file is configured.</p>";
  body += "\n<h2>Configuration</h2>\n<p id=\"config-age\">" + esc(c.path) + ": loaded " +
          esc(duration_text(std::max(age, 1LL))) + " ago (at start or at the last reload, SIGHUP).</p>";
  co_return html_response(200, page("Appliance status", Tab::status, who.name(), body));
}

}  // namespace p11relay::daemon::ui
