// Who is calling, and what may they use (relic-protocol.md §4). Identity is the SHA-256 of the
// client certificate's SubjectPublicKeyInfo, computed once per connection; a client entry with a
// `certificate` CA bundle matches certificates that chain to it. Deny by default.
#pragma once

#include "common/error.h"
#include "common/openssl_ptr.h"
#include "daemon/config.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace p11relay::daemon {

struct ClientIdentity {
  bool has_certificate = false;
  std::string fingerprint;  // lowercase hex SHA-256 of the leaf's SPKI
  std::string subject;      // leaf subject, OpenSSL slash style
  const ClientConfig* client = nullptr;  // matched entry, null if none
  std::string name() const;  // nickname or the first 12 hex characters of the fingerprint
};

class Authenticator {
 public:
  static Result<std::unique_ptr<Authenticator>> create(const Config& config);
  // Matches a peer chain (leaf first, may be empty). Cheap enough for once per connection.
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

// Access iff any key role equals any client role (exact match). A key with no roles: nobody.
bool allowed(const ClientIdentity& id, const KeyConfig& key);

}  // namespace p11relay::daemon
