// What request handlers share: config, authenticator, tokens, audit log, health, signers.
#pragma once

#include "common/http.h"
#include "daemon/audit.h"
#include "daemon/auth.h"
#include "daemon/config.h"
#include "daemon/token.h"

#include <asio.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace p11relay::daemon {

struct RequestContext {
  http::Request& req;
  const ClientIdentity& identity;
  std::string peer_ip;
  bool tls = true;
  Clock::time_point deadline;  // writetimeout: handlers give up at this point (504)
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

// Health per relic (relic-protocol.md §2.1): counter starts at tokencheckfailures, reset when every
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
  std::unique_ptr<Authenticator> auth;
  std::map<std::string, std::shared_ptr<Token>> tokens;  // by config token name
  std::unique_ptr<AuditLog> audit;
  Health health;
  std::string hostname;
  std::map<std::string, SignerFactory> signers;        // relic sigtype → factory
  std::map<std::string, std::string> signer_aliases;   // alias → sigtype

  // Key config + served key for a name (alias resolved), if the caller may use it.
  struct KeyRef {
    const KeyConfig* config = nullptr;
    std::shared_ptr<Token> token;
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

// Awaits a signature from a token, giving up at `deadline` with a 504 (the token job is then
// dropped if it has not started). Runs the completion on the caller's executor.
asio::awaitable<Result<Bytes>> token_sign(std::shared_ptr<Token> token, SignJob job);

// Audit + log line for a finished signature; fails (500) if the audit record cannot be written.
Status record_signature(Service& svc, const RequestContext& ctx, const std::string& key_name,
                        const ServedKey& key, const std::string& operation, const std::string& digest_name,
                        const std::string& filename, nlohmann::json extra = nlohmann::json::object());

}  // namespace p11relay::daemon
