// A token as the rest of the daemon sees it: the keys it serves, its state, and signing jobs. The
// real one is `Token` (token.h: libp11, worker threads, recovery); unit tests of the router, the
// signing service and the policy use a fake (tests/daemon/fake_token.h). Routes never reach a token
// but through the signing service (signing_service.h).
#pragma once

#include "common/bytes.h"
#include "common/error.h"
#include "common/openssl_ptr.h"
#include "common/relay_api.h"

#include <p11-kit/pkcs11.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace p11relay::daemon {

using Clock = std::chrono::steady_clock;

// A key as served: what the relay API describes, plus the loaded objects.
struct ServedKey {
  std::string name;       // config key name
  std::string token_name; // config token name
  relay::KeyDescription description;  // name, token info, id, label, key info, spki, certs, mechanisms
  EVP_PKEY_ptr public_key;
  std::vector<X509_ptr> chain;  // leaf first (may be empty when no certificate is known)
  // Audit fields of the leaf, computed once at load (not per signature).
  std::string leaf_subject, leaf_issuer, leaf_sha1;
  std::vector<CK_MECHANISM_TYPE> mechanisms;
  // relay::key_version(description), once at load: a sign request's key_version is compared with it.
  std::string version{};
};

struct SignJob {
  std::string key;  // config key name (alias resolved)
  CK_MECHANISM_TYPE mechanism = CKM_RSA_PKCS;
  Bytes input;
  std::optional<relay::PssParams> pss;
  Clock::time_point deadline;
};

enum class TokenState { starting, ready, recovering, failed };
const char* token_state_name(TokenState s);

class SigningToken {
 public:
  using Done = std::function<void(Result<Bytes>)>;
  virtual ~SigningToken() = default;

  // Opens the token and serves its keys; the first open's outcome (a token that does not open keeps
  // trying in the background).
  virtual Status start() = 0;
  virtual void stop() = 0;
  // Queues a signature. `done` runs on a worker thread (or inline when refused at once).
  virtual void sign(SignJob job, Done done) = 0;
  // Signs on the calling thread when that costs no waiting and no thread hop; nullopt: use sign().
  virtual std::optional<Result<Bytes>> sign_here(const SignJob& job) = 0;
  // Cheap liveness check through the queue (so a hung token fails its health check).
  virtual void ping(Clock::time_point deadline, std::function<void(Status)> done) = 0;

  virtual TokenState state() const = 0;
  virtual std::string state_reason() const = 0;
  virtual const std::string& name() const = 0;
  // Snapshot of the served keys (empty until the token was opened once).
  virtual std::vector<std::shared_ptr<const ServedKey>> keys() const = 0;
  virtual std::shared_ptr<const ServedKey> key(const std::string& name) const = 0;
  virtual size_t queue_depth() const = 0;
};

}  // namespace p11relay::daemon
