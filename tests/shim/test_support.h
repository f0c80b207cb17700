// Unit-test support for the shim: locally generated keys and certificates, and a fake transport that
// answers like p11relayd (signing with the real private key) and records what it was sent.
#pragma once

#include "common/openssl_ptr.h"
#include "common/relay_api.h"
#include "pkcs11-shim/transport.h"

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace p11relay::shim::testing {

struct TestKey {
  EVP_PKEY_ptr priv;
  relay::KeyDescription desc;
};

// Keys are generated once per process (RSA generation is slow) and shared.
const TestKey& rsa_key();   // "rsa2048", CKA_ID 01, self-signed certificate
const TestKey& ec_key();    // "ec256", CKA_ID 02, leaf certificate + CA certificate (chain)
relay::TokenDescription test_token();

// r||s (PKCS#11) or raw RSA: what the daemon would return.
Bytes sign_like_daemon(EVP_PKEY* key, const relay::SignRequest& req);

struct FakeState {
  std::mutex mu;
  std::vector<relay::KeyDescription> keys;
  std::vector<relay::TokenProblem> unavailable;
  int list_calls = 0;
  // The client's key list kept on disk, if any (list_keys_kept answers it without a list call).
  std::optional<std::vector<relay::KeyDescription>> kept;
  std::vector<std::pair<std::string, relay::SignRequest>> sign_requests;
  std::optional<Error> list_error;
  std::optional<Error> sign_error;
  // Runs at the start of sign() without the lock: a request held for approval blocks here.
  std::function<void(const std::string& key_name)> hold;
  std::vector<const TestKey*> signers;
};

class FakeTransport : public Transport {
 public:
  explicit FakeTransport(std::shared_ptr<FakeState> state) : state_(std::move(state)) {}
  Result<relay::KeyList> list_keys() override;
  Result<relay::KeyList> list_keys_kept(bool* from_disk) override;
  Result<Bytes> sign(const std::string& key_name, const relay::SignRequest& request) override;

 private:
  std::shared_ptr<FakeState> state_;
};

}  // namespace p11relay::shim::testing
