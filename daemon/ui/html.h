// HTML for the web UI (docs/operator-guide.md "Web UI"): escaping and the page frame. Every value
// that reaches a page goes through esc() — file names, client names and reasons come from requests.
#pragma once

#include "common/http.h"

#include <string>
#include <string_view>

namespace p11relay::daemon::ui {

// Escapes & < > " ' for text and for double-quoted attribute values.
std::string esc(std::string_view s);

enum class Tab { pending, history, status, none };

// A whole page: head with the stylesheet, the navigation (current tab marked), who is looking, body.
// `body` is HTML built with esc().
std::string page(const std::string& title, Tab tab, const std::string& who, const std::string& body);

// An HTML response with the UI's security headers: CSP without inline scripts or styles, no framing,
// no caching (every page shows data), nosniff, same-origin referrers.
http::Response html_response(int status, std::string body);
// A page with a title and one message (errors, the outcome of an action).
http::Response message_page(int status, const std::string& title, const std::string& who, const std::string& text);

// "3 min 20 s", "2 h 5 min", "expired".
std::string duration_text(long long seconds);

}  // namespace p11relay::daemon::ui
