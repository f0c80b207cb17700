// Prometheus text-format metrics (served on server.listenmetrics, plaintext, like relic's
// listenmetrics): requests, signatures by key/client/outcome, signing latency, token state, queue
// depth, TLS handshake failures. Cheap: a mutex and a map, touched once per request.
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace p11relay::daemon {

class Metrics {
 public:
  void request(const std::string& api, int status);
  void signature(const std::string& key, const std::string& client, const std::string& outcome, double seconds);
  void handshake_failure() { ++handshake_failures_; }
  void handshake_evicted() { ++handshakes_evicted_; }
  void handshake_done(bool resumed) { ++(resumed ? handshakes_resumed_ : handshakes_full_); }
  void connection_opened() {
    ++connections_;
    ++connections_accepted_;
  }
  void connection_closed() { --connections_; }
  void config_reload(bool ok) { ++(ok ? reloads_ok_ : reloads_rejected_); }

  struct TokenGauge {
    std::string name;
    bool up;
    size_t queue_depth;
  };
  // Signatures since start per key: {ok, failed}.
  std::map<std::string, std::array<unsigned long long, 2>> signatures_by_key() const;

  // Renders everything, with token gauges supplied by the caller at scrape time.
  std::string render(const std::vector<TokenGauge>& tokens) const;

 private:
  static constexpr std::array<double, 10> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5};
  struct Histogram {
    std::array<unsigned long long, kBuckets.size()> counts{};
    unsigned long long count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::string, unsigned long long> requests_;    // label set → count
  std::map<std::string, unsigned long long> signatures_;  // label set → count
  std::map<std::string, Histogram> latency_;               // key → histogram
  std::map<std::string, std::array<unsigned long long, 2>> by_key_;  // key → {ok, failed}
  std::atomic<unsigned long long> handshake_failures_{0}, handshakes_evicted_{0};
  std::atomic<long long> connections_{0};
  std::atomic<unsigned long long> connections_accepted_{0};
  std::atomic<unsigned long long> handshakes_full_{0}, handshakes_resumed_{0};
  std::atomic<unsigned long long> reloads_ok_{0}, reloads_rejected_{0};
};

// Label value escaping per the Prometheus text format.
std::string prom_escape(const std::string& v);

}  // namespace p11relay::daemon
