// A blocking HTTP/1.1 POST over plain TCP (Connection: close), for RFC 3161 timestamp servers: one
// request, a deadline for the whole exchange, the reply through the shared parser (common/http.h).
// The daemon's relay client (client/client.cpp) is the other HTTP client; both connect through
// common/net.h.
#pragma once

#include "common/bytes.h"
#include "common/error.h"

#include <span>
#include <string>

namespace p11relay {

struct HttpReply {
  int status = 0;
  std::string content_type;
  Bytes body;
};

// `peer` names the server in errors ("timestamp server timed out"). http:// URLs only.
Result<HttpReply> http_post(const std::string& url, const std::string& content_type, std::span<const uint8_t> body,
                            int timeout_seconds, const std::string& peer = "server");

}  // namespace p11relay
