// libp11relay-client: the C++ API the shim and the CLI use to reach p11relayd's relay API.
// Thread-safe; a pool of keep-alive mutual-TLS connections per daemon URL; retries with backoff on
// connection errors and 500/502/503/504 (honouring Retry-After); several URLs with failover and a
// penalty for a failing one; siblings learned from a directory URL's GET /directory join the list. Fork-aware: a child process never reuses its parent's connections.
#pragma once

#include "common/error.h"
#include "common/http.h"
#include "common/relay_api.h"

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace p11relay::client {

struct Config {
  std::vector<std::string> urls;   // https://host:port/ (remote.url, remote.urls)
  // remote.directoryurl (relic's key): asked once per process for GET /directory; the siblings it lists
  // join `urls` (after them, same retry and penalty rules). Serves requests itself only when it is in
  // `urls` (it is when no url/urls are configured).
  std::string directory_url;
  std::string certfile;            // client certificate (PEM); may also hold the key
  std::string keyfile;             // client private key (PEM); defaults to certfile
  std::string cacert;              // CA bundle that verifies the daemon's certificate
  std::string server_fingerprint;  // optional pin: lowercase hex SHA-256 of the daemon's SPKI
  int connect_timeout_ms = 15000;  // remote.connecttimeout (seconds in YAML)
  int request_timeout_ms = 120000; // remote.timeout (seconds in YAML)
  int retries = 3;                 // remote.retries: attempts after the first, across URLs
  int approval_wait_ms = 900000;   // remote.approvalwait: how long sign() waits for an approval in total
  std::optional<std::string> pin;  // shim only: if set, C_Login must present this PIN
  std::string log_file;            // shim only: where the module logs (default: stderr off, syslog-free)
  std::string log_level = "warning";
  int key_cache_seconds = 10;      // shim: how long a /v1/keys answer is reused
  // remote.keylistcache: how long a new process may start from the key list kept on disk (client/key_cache.h);
  // 0 = always ask the daemon.
  int key_list_cache_seconds = 3600;
  std::string source;              // file the config came from (for messages)
};

// Finds the config: $P11RELAY_CONFIG, else $XDG_CONFIG_HOME/p11relay/client.yml (~/.config/...),
// else /etc/p11relay/client.yml. Errors name the file and the problem.
Result<Config> load_config(const std::string& explicit_path = {});
// Whether load_config() has anything to load: $P11RELAY_CONFIG is set or one of the files exists. The module
// registered with p11-kit for every user stays silent (no slots, no message) for users without one.
bool config_present();
Result<Config> parse_config(const std::string& yaml_text, const std::string& source_name);

class Client {
 public:
  // `connecting`: begin the TCP connection to the first URL at once (start_connecting, but before the
  // TLS context is built); for a program that will ask the daemon right away, as the CLI does.
  enum class Start { lazy, connecting };
  static Result<std::unique_ptr<Client>> create(const Config& config, Start start = Start::lazy);
  ~Client();

  Result<std::vector<relay::KeyDescription>> list_keys();
  // The keys and the tokens the daemon cannot use now (docs/relay-api.md, GET /v1/keys), from the daemon;
  // the answer is kept on disk for the next process (remote.keylistcache).
  Result<relay::KeyList> list_keys_full();
  // The key list a process starts from: the copy kept on disk while it is younger than remote.keylistcache
  // (`from_disk` set; no request), else list_keys_full(). A signature for a key from it must carry the key's
  // relay::key_version(): the daemon answers 412 key-changed instead of signing for a stale description,
  // and sign() then forgets the kept copy (so does a 403 for a key it listed).
  Result<relay::KeyList> list_keys_kept(bool* from_disk = nullptr);
  // Where the key list is kept (client/key_cache.h); empty when remote.keylistcache is 0.
  std::string kept_keys_path() const;

  // Signs. When the key's policy holds the request for an approver (202), `on_hold` (if set) is called
  // once with the held request, and sign() long-polls it until it is signed (the signature), denied
  // (request-denied, CKR_FUNCTION_REJECTED), expired or not decided within remote.approvalwait
  // (request-expired, CKR_FUNCTION_CANCELED). The request is polled at the daemon that held it (never
  // a sibling URL, which does not know it); connection errors while waiting are retried there: the
  // request survives a daemon restart.
  using HoldObserver = std::function<void(const relay::ApprovalRequest&)>;
  Result<Bytes> sign(const std::string& key_name, const relay::SignRequest& request,
                     const HoldObserver& on_hold = {});

  // Approval workflow (docs/policy.md). list_requests: the held requests this client may decide
  // (pending only unless `all`); get_request: one request, waiting up to `wait_seconds` for a decision.
  Result<std::vector<relay::ApprovalRequest>> list_requests(bool all = false);
  Result<relay::ApprovalRequest> get_request(const std::string& id, int wait_seconds = 0);
  Result<relay::ApprovalRequest> approve_request(const std::string& id, const std::string& comment = {});
  Result<relay::ApprovalRequest> deny_request(const std::string& id, const std::string& reason);
  Status health();
  // Opens a connection now and leaves it idle in the pool, so that the next request does not wait for
  // TCP and TLS (the CLI does it while the file hashes, when its key list came from disk). A failure is
  // left to that request, which reports it and retries as usual.
  void connect_ahead();
  // Begins a TCP connection to the daemon and returns at once: the kernel makes it while the caller does
  // other work, and the next request's connection finishes it (TLS) instead of starting from nothing.
  // The PKCS#11 module calls it when it starts from a kept key list (the CLI uses Start::connecting).
  void start_connecting();
  // Any request (relic endpoints, future APIs), with the same pool, retry and failover rules.
  Result<http::Response> request(const std::string& method, const std::string& target,
                                 const std::string& body = {}, const http::Headers& headers = {});

  const Config& config() const;

 private:
  struct Impl;
  Result<Bytes> await_decision(relay::ApprovalRequest held, const std::string& target, size_t origin);
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace p11relay::client
