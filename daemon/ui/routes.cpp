// /ui routes: GET pages, POST decisions, the stylesheet. Unknown certificates get an HTML error page.
#include "daemon/ui/ui.h"

#include "daemon/ui/html.h"
#include "daemon/ui/pages.h"

#include <spdlog/spdlog.h>

namespace p11relay::daemon::ui {
namespace {

http::Response redirect(const char* to) {
  http::Response r = html_response(303, "");
  r.set("Location", to);
  return r;
}

http::Response stylesheet() {
  http::Response r = html_response(200, kStylesheet);
  r.set("Content-Type", "text/css; charset=utf-8");
  r.set("Cache-Control", "max-age=3600");
  return r;
}

std::optional<http::Response> refuse_unknown(const RequestContext& ctx) {
  if (!ctx.identity.has_certificate)
    return message_page(401, "Certificate required", "", "This page needs your client certificate: choose it when the "
                                                         "browser asks, or import it (docs/operator-guide.md).");
  if (!ctx.identity.client) {
    spdlog::info("ui: unrecognized client certificate fingerprint={} ip={}", ctx.identity.fingerprint, ctx.peer_ip);
    return message_page(403, "Certificate not recognized", "",
                        "Your certificate (SPKI SHA-256 " + ctx.identity.fingerprint +
                            ") is not a client of this appliance; ask its operator to add it.");
  }
  return std::nullopt;
}

// "/ui/requests/{id}/approve" → id, approve.
bool parse_decision(const std::string& p, std::string& id, bool& approve) {
  static const std::string prefix = "/ui/requests/";
  if (p.rfind(prefix, 0) != 0) return false;
  std::string rest = p.substr(prefix.size());
  size_t slash = rest.find('/');
  if (slash == std::string::npos || slash == 0) return false;
  std::string action = rest.substr(slash + 1);
  if (action != "approve" && action != "deny") return false;
  id = rest.substr(0, slash);
  approve = action == "approve";
  return true;
}

void method_not_allowed(RouteDecision& d, const char* allow) {
  d.response = html_response(405, "");
  d.response->set("Allow", allow);
}

}  // namespace

bool route_ui(Service& svc, const RequestContext& ctx, RouteDecision& d) {
  const std::string& p = ctx.req.path;
  if (p != "/ui" && p.rfind("/ui/", 0) != 0) return false;
  const std::string& m = ctx.req.method;
  if (p == "/ui/static/ui.css") {
    if (m == "GET") d.response = stylesheet();
    else method_not_allowed(d, "GET");
    return true;
  }
  if (auto refused = refuse_unknown(ctx)) {
    d.response = std::move(*refused);
    return true;
  }
  std::string id;
  bool approve = false;
  if (parse_decision(p, id, approve)) {
    if (m != "POST") return method_not_allowed(d, "POST"), true;
    d.max_body = 16 * 1024;
    d.buffered = std::bind(&decide_form, std::ref(svc), std::placeholders::_1, id, approve);
    return true;
  }
  if (m != "GET") return method_not_allowed(d, "GET"), true;
  if (p == "/ui" || p == "/ui/") d.response = redirect("/ui/pending");
  else if (p == "/ui/pending") d.response = pending_page(svc, ctx.identity);
  else if (p == "/ui/history") d.buffered = std::bind(&history_page, std::ref(svc), std::placeholders::_1);
  else if (p == "/ui/status") d.buffered = std::bind(&status_page, std::ref(svc), std::placeholders::_1);
  else d.response = message_page(404, "Not found", ctx.identity.name(), "There is no such page.");
  return true;
}

}  // namespace p11relay::daemon::ui
