// What request handlers share: config, authenticator, tokens, audit log, health, signers.
#pragma once

#include "common/http.h"
#include "daemon/policy/approvals.h"
#include "daemon/signing/audit.h"
#include "daemon/policy/auth.h"
#include "daemon/config/config.h"
#include "daemon/metrics.h"
#include "daemon/signing/signing_token.h"
#include "daemon/signing/token_wait.h"

#include <asio.hpp>

#include <atomic>
#include <condition_variable>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

namespace p11relay::daemon {

struct RequestContext {
  http::Request& req;
  const ClientIdentity& identity;
  std::string peer_ip;
  bool tls = true;
  Clock::time_point deadline;  // writetimeout: handlers give up at this point (504)
  // No other connection sent a request lately (Server): a fast token may sign on this thread (token_sign).
  bool solo = false;
  std::string proxy_ip{};  // the trusted proxy that forwarded the request (peer_ip is then the client's)
};

// Receives a request body as it arrives (after de-chunking and Content-Encoding decoding), for
// handlers that must not hold whole uploads in memory (relic pe-coff).
class BodyConsumer {
 public:
  virtual ~BodyConsumer() = default;
  virtual Status consume(std::string_view chunk) = 0;
  virtual asio::awaitable<http::Response> finish(RequestContext& ctx) = 0;
};

// What the router decides once the request headers are in.
struct RouteDecision {
  std::optional<http::Response> response;  // answer now; an unread body makes the connection close
  std::function<asio::awaitable<http::Response>(RequestContext&)> buffered;  // whole body, then run
  std::unique_ptr<BodyConsumer> streaming;
  uint64_t max_body = 0;
};

// Health per relic (docs/relic-protocol.md §2.1): counter starts at tokencheckfailures, reset when every
// token answers a ping, decremented otherwise; healthy while the counter is > 0 and the last check
// is younger than 3 × tokencheckinterval, unless server.disabled.
struct Health {
  std::atomic<int> counter{0};
  std::atomic<int64_t> last_check_ms{0};  // steady clock, ms
};

// A relic signer module (sigtype): builds the consumer that signs an upload. Registered by name.
struct SignerContext;
using SignerFactory = std::function<Result<std::unique_ptr<BodyConsumer>>(const SignerContext&)>;

struct Service {
  Config config;
  // Clients and keys (roles, policy) as last (re)loaded, with their authenticator: swapped whole on
  // SIGHUP. `config` stays the start-up one (listeners, tokens).
  std::atomic<std::shared_ptr<const ConfigSnapshot>> current;
  std::atomic<const ConfigSnapshot*> current_raw{nullptr};  // current.get(), for is_current()
  void publish(std::shared_ptr<const ConfigSnapshot> snapshot) {
    const ConfigSnapshot* raw = snapshot.get();
    current.store(std::move(snapshot));
    current_raw.store(raw, std::memory_order_release);
    published_at.store(std::time(nullptr));
  }
  std::atomic<std::time_t> published_at{0};  // when `current` was last published (start or reload)
  // Whether a connection's snapshot is still the published one: asked on every request, so a plain
  // atomic load (loading `current` costs a lock bit and a refcount). No ABA: the connection holds
  // `held` alive, so no new snapshot can be allocated at its address.
  bool is_current(const ConfigSnapshot* held) const { return current_raw.load(std::memory_order_acquire) == held; }
  std::map<std::string, std::shared_ptr<SigningToken>> tokens;  // by config token name
  std::unique_ptr<AuditLog> audit;
  Health health;
  Metrics metrics;
  std::string hostname;
  std::map<std::string, SignerFactory> signers;        // relic sigtype → factory
  std::map<std::string, std::string> signer_aliases;   // alias → sigtype
  // For work that blocks (a library call that waits on a token): keeps the io threads free.
  std::unique_ptr<asio::thread_pool> blocking = std::make_unique<asio::thread_pool>(2);
  // Policy state (docs/policy.md), keyed by names so it outlives config reloads: quota counters (only
  // keys with a quota touch them) and held requests (null without server.statedir).
  std::unique_ptr<Quotas> quotas = std::make_unique<Quotas>();
  std::unique_ptr<IoStandby> standby;  // set by main once the io_context exists
  std::unique_ptr<Approvals> approvals;

  // Key config + served key for a name (alias resolved), if the caller may use it.
  struct KeyRef {
    const KeyConfig* config = nullptr;
    std::shared_ptr<SigningToken> token;
    std::shared_ptr<const ServedKey> served;  // null while the token is not open
  };
  std::optional<KeyRef> lookup_key(const std::string& name, const ClientIdentity& id) const;
};

// Everything a relic signer needs to sign one request.
struct SignerContext {
  Service& service;
  RequestContext& request;
  Service::KeyRef key;
  std::string key_name;  // as requested (alias or key)
  HashAlg digest = HashAlg::sha256;
  std::vector<std::pair<std::string, std::string>> query;
  const std::string* param(const std::string& name) const;
};

template <typename T>
asio::awaitable<std::optional<T>> call_in_pool(std::function<T()> fn) {
  co_return std::optional<T>(fn());
}

// Runs fn() on the blocking pool and resumes the caller on its own executor with the result.
// Written without temporaries inside co_await expressions and without capturing lambda coroutines:
// GCC 12 destroys such objects twice (GCC bugs 99576, 100611).
template <typename T>
asio::awaitable<T> run_blocking(Service& svc, const std::function<T()>& fn) {
  asio::awaitable<std::optional<T>> job = call_in_pool<T>(fn);
  auto pool = svc.blocking->get_executor();
  // co_spawn's completion needs a default-constructible value: T travels in an optional.
  std::optional<T> out = co_await asio::co_spawn(pool, std::move(job), asio::use_awaitable);
  co_return std::move(*out);
}

}  // namespace p11relay::daemon
