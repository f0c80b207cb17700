// CSRF protection of the web UI's POST forms: the request must come from a page of this daemon
// (Origin, or else Referer, names the Host it was sent to) and carry the token of the client
// certificate that sends it — HMAC-SHA256 of the certificate fingerprint under a random secret drawn
// when the daemon starts, so a token is useless to another certificate and dies with the process.
#pragma once

#include "common/error.h"
#include "common/http.h"

#include <string>

namespace p11relay::daemon::ui {

// The token for a client certificate fingerprint (hex).
std::string csrf_token(const std::string& fingerprint);

// Ok, or forbidden naming what is wrong (cross-origin, no origin, bad token).
Status check_csrf(const http::Request& req, const std::string& fingerprint, const std::string& token);

}  // namespace p11relay::daemon::ui
