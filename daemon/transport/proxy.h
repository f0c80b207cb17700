// Requests that a TLS-terminating reverse proxy forwards (docs/relic-protocol.md §4.2): the client's
// certificate arrives in the Ssl-Client-Cert header and its address in X-Forwarded-For. They are
// believed only from a peer that is inside server.trustedproxies AND authenticated with mTLS as a
// client entry marked `proxy: true`; any other peer sending the header is refused. Deny by default:
// with no trusted proxy configured, nothing is believed from a header. TLS passthrough (the proxy
// forwards the TLS stream) needs none of this: the client's own certificate reaches the daemon.
#pragma once

#include "common/error.h"
#include "common/http.h"
#include "common/openssl_ptr.h"
#include "daemon/policy/auth.h"
#include "daemon/transport/networks.h"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace p11relay::daemon {

// The certificate of an Ssl-Client-Cert header: URL-escaped PEM (nginx's $ssl_client_escaped_cert, as
// relic reads it) or base64 DER on one line (HAProxy's %[ssl_c_der,base64]).
Result<X509_ptr> forwarded_certificate(std::string_view value);

// The client's address from X-Forwarded-For: the nearest hop (from the right) outside `trusted`, as
// relic's realip does; the leftmost hop when all are trusted; `peer` when the header has no address.
std::string forwarded_client(std::string_view xff, const std::vector<Network>& trusted, const std::string& peer);

// Who a proxied request is from. `identity` has no certificate when the proxy forwarded none (401).
struct Forwarded {
  ClientIdentity identity;
  std::string client_ip;
  std::string proxy_ip;
};

// For a request on a connection authenticated as `conn` from `peer_ip`: nullopt when the request is
// not proxied (use the connection's identity), the forwarded client when it comes from a trusted
// proxy, or a 403 (header from a peer that is not a trusted proxy; a proxy entry connecting from an
// address outside server.trustedproxies) or 400 (a header that is not a certificate) naming the cause.
Result<std::optional<Forwarded>> forwarded(const ClientIdentity& conn, const std::string& peer_ip,
                                           const http::Request& req);

}  // namespace p11relay::daemon
