// Routes in one place (relic server/server.go style): the relic API and the relay API.
#pragma once

#include "daemon/service.h"

namespace p11relay::daemon {

class Router {
 public:
  explicit Router(Service& svc) : svc_(svc) {}
  // Called when the request headers are complete. Decides the handler and the body limit.
  RouteDecision route(RequestContext& ctx);
  // Headers every response carries (relic: Accept-Encoding on every response).
  void decorate(http::Response& r) const;

 private:
  Service& svc_;
};

// False (and a 405 answer in d) when the request's method is not `method`.
bool method_is(const RequestContext& ctx, const char* method, RouteDecision& d);

// Relic-style responses (docs/relic-protocol.md §3).
http::Response relic_problem(int status, const std::string& type, const std::string& detail = {},
                             const std::string& title = {}, const std::string& param = {});
http::Response relic_unhandled();  // 500 text/plain
http::Response relic_quota_exceeded(const Error& e);  // 429 + Retry-After
http::Response text_response(int status, std::string body, bool nosniff = false);
http::Response json_response(int status, std::string body, const char* content_type = "application/json");
// Relay API problem document for an Error (status, Retry-After).
http::Response relay_problem(const Error& e);

}  // namespace p11relay::daemon
