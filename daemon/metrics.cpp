#include "daemon/metrics.h"

#include <sstream>

namespace p11relay::daemon {

std::string prom_escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

void Metrics::request(const std::string& api, int status) {
  std::string labels = "api=\"" + api + "\",status=\"" + std::to_string(status) + "\"";
  std::lock_guard lock(mu_);
  ++requests_[labels];
}

void Metrics::signature(const std::string& key, const std::string& client, const std::string& outcome,
                        double seconds) {
  std::string labels =
      "key=\"" + prom_escape(key) + "\",client=\"" + prom_escape(client) + "\",outcome=\"" + outcome + "\"";
  std::lock_guard lock(mu_);
  ++signatures_[labels];
  ++by_key_[key][outcome == "ok" ? 0 : 1];
  if (outcome != "ok") return;
  Histogram& h = latency_[key];
  for (size_t i = 0; i < kBuckets.size(); ++i)
    if (seconds <= kBuckets[i]) ++h.counts[i];
  ++h.count;
  h.sum += seconds;
}

std::map<std::string, std::array<unsigned long long, 2>> Metrics::signatures_by_key() const {
  std::lock_guard lock(mu_);
  return by_key_;
}

std::string Metrics::render(const std::vector<TokenGauge>& tokens) const {
  std::ostringstream o;
  std::lock_guard lock(mu_);
  o << "# HELP p11relay_requests_total HTTP requests answered, by API and status.\n"
       "# TYPE p11relay_requests_total counter\n";
  for (const auto& [l, n] : requests_) o << "p11relay_requests_total{" << l << "} " << n << "\n";
  o << "# HELP p11relay_signatures_total Signatures by key, client and outcome.\n"
       "# TYPE p11relay_signatures_total counter\n";
  for (const auto& [l, n] : signatures_) o << "p11relay_signatures_total{" << l << "} " << n << "\n";
  o << "# HELP p11relay_sign_duration_seconds Time from request to signature, successful signatures.\n"
       "# TYPE p11relay_sign_duration_seconds histogram\n";
  for (const auto& [key, h] : latency_) {
    std::string k = prom_escape(key);
    for (size_t i = 0; i < kBuckets.size(); ++i)
      o << "p11relay_sign_duration_seconds_bucket{key=\"" << k << "\",le=\"" << kBuckets[i] << "\"} " << h.counts[i]
        << "\n";
    o << "p11relay_sign_duration_seconds_bucket{key=\"" << k << "\",le=\"+Inf\"} " << h.count << "\n";
    o << "p11relay_sign_duration_seconds_sum{key=\"" << k << "\"} " << h.sum << "\n";
    o << "p11relay_sign_duration_seconds_count{key=\"" << k << "\"} " << h.count << "\n";
  }
  o << "# HELP p11relay_token_up 1 when the token is open and logged in.\n# TYPE p11relay_token_up gauge\n";
  for (const auto& t : tokens) o << "p11relay_token_up{token=\"" << prom_escape(t.name) << "\"} " << (t.up ? 1 : 0) << "\n";
  o << "# HELP p11relay_token_queue_depth Requests waiting for the token.\n# TYPE p11relay_token_queue_depth gauge\n";
  for (const auto& t : tokens)
    o << "p11relay_token_queue_depth{token=\"" << prom_escape(t.name) << "\"} " << t.queue_depth << "\n";
  o << "# HELP p11relay_tls_handshake_failures_total Failed or timed-out TLS handshakes.\n"
       "# TYPE p11relay_tls_handshake_failures_total counter\n"
       "p11relay_tls_handshake_failures_total "
    << handshake_failures_.load() << "\n";
  o << "# HELP p11relay_tls_handshakes_evicted_total Connections dropped before finishing the TLS handshake to "
       "admit a newer one (server.maxhandshakes, server.maxhandshakespersource).\n"
       "# TYPE p11relay_tls_handshakes_evicted_total counter\n"
       "p11relay_tls_handshakes_evicted_total "
    << handshakes_evicted_.load() << "\n";
  o << "# HELP p11relay_connections Open client connections.\n# TYPE p11relay_connections gauge\n"
       "p11relay_connections "
    << connections_.load() << "\n";
  o << "# HELP p11relay_connections_accepted_total TCP connections accepted on the TLS listeners.\n"
       "# TYPE p11relay_connections_accepted_total counter\n"
       "p11relay_connections_accepted_total "
    << connections_accepted_.load() << "\n";
  o << "# HELP p11relay_tls_handshakes_total Completed TLS handshakes, full or resumed from a session ticket.\n"
       "# TYPE p11relay_tls_handshakes_total counter\n"
       "p11relay_tls_handshakes_total{resumed=\"false\"} "
    << handshakes_full_.load() << "\n"
    << "p11relay_tls_handshakes_total{resumed=\"true\"} " << handshakes_resumed_.load() << "\n";
  o << "# HELP p11relay_config_reload_total Configuration reloads (SIGHUP), by result.\n"
       "# TYPE p11relay_config_reload_total counter\n"
       "p11relay_config_reload_total{result=\"ok\"} "
    << reloads_ok_.load() << "\n"
    << "p11relay_config_reload_total{result=\"rejected\"} " << reloads_rejected_.load() << "\n";
  return o.str();
}

}  // namespace p11relay::daemon
