// Who is calling, and what may they use (docs/relic-protocol.md §4). Identity is the SHA-256 of the
// client certificate's SubjectPublicKeyInfo, computed once per connection; a client entry with a
// `certificate` CA bundle matches certificates that chain to it. Deny by default.
#pragma once

#include "common/error.h"
#include "common/openssl_ptr.h"
#include "daemon/config/config.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace p11relay::daemon {

class Authenticator;

// What a reload (SIGHUP) replaces: the config as loaded, whose clients and keys every request reads,
// and the authenticator made from it. Immutable once published; requests hold it while they run.
struct ConfigSnapshot {
  Config config;
  std::unique_ptr<Authenticator> auth;
};

struct ClientIdentity {
  bool has_certificate = false;
  std::string fingerprint;  // lowercase hex SHA-256 of the leaf's SPKI
  std::string subject;      // leaf subject, OpenSSL slash style
  const ClientConfig* client = nullptr;  // matched entry in `snapshot`, null if none
  std::shared_ptr<const ConfigSnapshot> snapshot;  // what the client was matched against
  std::string name() const;  // nickname or the first 12 hex characters of the fingerprint
};

class Authenticator {
 public:
  static Result<std::unique_ptr<Authenticator>> create(const Config& config);
  // The config (loaded and checked) with its authenticator, ready to publish.
  static Result<std::shared_ptr<const ConfigSnapshot>> snapshot(Config config);
  // Matches a peer chain (leaf first, may be empty). Cheap enough for once per connection (and once
  // more after each reload). The identity refers into the snapshot that `this` belongs to.
  ClientIdentity identify(STACK_OF(X509) * chain) const;
  ClientIdentity identify(X509* leaf, STACK_OF(X509) * intermediates) const;

 private:
  struct CaClient {
    const ClientConfig* client;
    X509_STORE_ptr store;
  };
  const Config* config_ = nullptr;
  std::vector<CaClient> ca_clients_;
};

// Matches a peer against a published snapshot; the identity keeps the snapshot alive.
ClientIdentity identify(const std::shared_ptr<const ConfigSnapshot>& snapshot, X509* leaf,
                        STACK_OF(X509) * intermediates);

// Access iff any key role equals any client role (exact match). A key with no roles: nobody.
bool allowed(const ClientIdentity& id, const KeyConfig& key);

}  // namespace p11relay::daemon
