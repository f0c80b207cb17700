#include "daemon/ui/html.h"

namespace p11relay::daemon::ui {

std::string esc(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

namespace {

std::string nav_link(const char* href, const char* label, bool current) {
  std::string a = "<a href=\"";
  a += href;
  a += "\"";
  if (current) a += " aria-current=\"page\"";
  return a + ">" + label + "</a>";
}

}  // namespace

std::string page(const std::string& title, Tab tab, const std::string& who, const std::string& body) {
  std::string h =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
      "<title>" + esc(title) + " · p11relay</title>"
      "<link rel=\"stylesheet\" href=\"/ui/static/ui.css\"></head><body>\n<header><span class=\"brand\">p11relay</span><nav>";
  h += nav_link("/ui/pending", "Pending requests", tab == Tab::pending);
  h += nav_link("/ui/history", "History", tab == Tab::history);
  h += nav_link("/ui/status", "Appliance status", tab == Tab::status);
  h += "</nav><span class=\"who\">" + esc(who) + "</span></header>\n<main>\n<h1>" + esc(title) + "</h1>\n";
  h += body;
  h += "\n</main></body></html>\n";
  return h;
}

http::Response html_response(int status, std::string body) {
  http::Response r;
  r.status = status;
  r.set("Content-Type", "text/html; charset=utf-8");
  r.set("Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'");
  r.set("X-Frame-Options", "DENY");
  r.set("X-Content-Type-Options", "nosniff");
  r.set("Referrer-Policy", "same-origin");
  r.set("Cache-Control", "no-store");
  r.body = std::move(body);
  return r;
}

http::Response message_page(int status, const std::string& title, const std::string& who, const std::string& text) {
  std::string body = "<p class=\"" + std::string(status < 400 ? "ok" : "error") + "\">" + esc(text) +
                     "</p>\n<p><a href=\"/ui/pending\">Back to pending requests</a></p>";
  return html_response(status, page(title, Tab::none, who, body));
}

std::string duration_text(long long s) {
  if (s <= 0) return "expired";
  if (s < 60) return std::to_string(s) + " s";
  if (s < 3600) return std::to_string(s / 60) + " min " + std::to_string(s % 60) + " s";
  if (s < 86400) return std::to_string(s / 3600) + " h " + std::to_string(s % 3600 / 60) + " min";
  return std::to_string(s / 86400) + " d " + std::to_string(s % 86400 / 3600) + " h";
}

}  // namespace p11relay::daemon::ui
