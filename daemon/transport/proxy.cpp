#include "daemon/transport/proxy.h"

#include "common/bytes.h"
#include "common/text.h"
#include "common/x509.h"

#include <spdlog/spdlog.h>

namespace p11relay::daemon {
namespace {

constexpr std::string_view kCertHeader = "Ssl-Client-Cert";

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

Error refused(std::string msg) { return Error(ErrorCode::forbidden, std::move(msg)); }

}  // namespace

Result<X509_ptr> forwarded_certificate(std::string_view value) {
  value = trim(value);
  std::optional<Bytes> data;
  if (value.find("BEGIN") != std::string_view::npos) {  // URL-escaped PEM (nginx, relic)
    auto pem = http::percent_decode(value, false);
    if (pem) data = Bytes(pem->begin(), pem->end());
  } else {  // base64 DER (HAProxy)
    data = base64_decode(value);
  }
  if (!data || data->empty())
    return bad_request("the Ssl-Client-Cert header is neither URL-escaped PEM nor base64 DER");
  auto certs = parse_certificates(*data);
  if (!certs.ok() || certs->empty())
    return bad_request("the Ssl-Client-Cert header holds no X.509 certificate");
  return std::move(certs->front());
}

std::string forwarded_client(std::string_view xff, const std::vector<Network>& trusted, const std::string& peer) {
  std::string leftmost;
  // Hops are appended left to right; the nearest one a trusted proxy did not add is the client.
  while (!xff.empty()) {
    size_t comma = xff.rfind(',');
    std::string_view hop = trim(comma == std::string_view::npos ? xff : xff.substr(comma + 1));
    xff = comma == std::string_view::npos ? std::string_view() : xff.substr(0, comma);
    if (hop.empty()) continue;
    leftmost = std::string(hop);
    if (!in_networks(trusted, hop)) return leftmost;
  }
  return leftmost.empty() ? peer : leftmost;
}

Result<std::optional<Forwarded>> forwarded(const ClientIdentity& conn, const std::string& peer_ip,
                                           const http::Request& req) {
  const std::string* cert = req.header(kCertHeader);
  const bool proxy_entry = conn.client && conn.client->proxy;
  if (!proxy_entry) {
    if (!cert) return std::optional<Forwarded>();
    spdlog::warn("{} header from {} ({}) refused: not a trusted proxy", kCertHeader, log_escape(peer_ip),
                 conn.has_certificate ? conn.name() : "no client certificate");
    return refused("an Ssl-Client-Cert header is believed only from a trusted proxy: a peer in "
                   "server.trustedproxies whose client certificate is a clients entry with 'proxy: true'");
  }
  const auto& trusted = conn.snapshot->config.server.trusted_networks;
  if (!in_networks(trusted, peer_ip)) {
    spdlog::warn("proxy client '{}' connected from {}, which is not in server.trustedproxies", conn.name(),
                 log_escape(peer_ip));
    return refused("client '" + conn.name() + "' is a proxy entry but " + peer_ip +
                   " is not in server.trustedproxies (add the proxy's address there)");
  }
  Forwarded f;
  f.proxy_ip = peer_ip;
  const std::string* xff = req.header("X-Forwarded-For");
  f.client_ip = xff ? forwarded_client(*xff, trusted, peer_ip) : peer_ip;
  if (!cert) {  // the proxy forwarded no certificate: the client had none (401 certificate-required)
    f.identity.snapshot = conn.snapshot;
    return std::optional<Forwarded>(std::move(f));
  }
  ASSIGN_OR_RETURN(X509_ptr leaf, forwarded_certificate(*cert));
  f.identity = identify(conn.snapshot, leaf.get(), nullptr);
  return std::optional<Forwarded>(std::move(f));
}

}  // namespace p11relay::daemon
