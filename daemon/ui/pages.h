// The web UI's pages (one file each) and what they share.
#pragma once

#include "daemon/service.h"

#include <array>
#include <string>

namespace p11relay::daemon::ui {

// Whether the viewer approves requests for any key (the role that may see history and status).
bool approves_any(const ClientIdentity& who);

http::Response pending_page(Service& svc, const ClientIdentity& who);
// POST /ui/requests/{id}/approve|deny (form: csrf, comment | reason).
asio::awaitable<http::Response> decide_form(Service& svc, RequestContext& ctx, std::string id, bool approve);
asio::awaitable<http::Response> history_page(Service& svc, RequestContext& ctx);
asio::awaitable<http::Response> status_page(Service& svc, RequestContext& ctx);

// A whole file's content (empty if unreadable): for the blocking pool.
std::string read_text_file(const std::string& path);

// The SVG bar chart of signatures per hour, oldest first (index 23 is the current hour).
std::string signatures_plot(const std::array<int, 24>& per_hour, int64_t now);

// The stylesheet served at /ui/static/ui.css.
extern const char* const kStylesheet;

}  // namespace p11relay::daemon::ui
