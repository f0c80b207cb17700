// A token for the daemon's unit tests: serves keys described by the test, signs with a scripted answer
// and counts what it was asked. It stands in for `Token` (daemon/signing/token.h) behind the
// `SigningToken` interface, so the router, the signing service and the policy are tested without
// a PKCS#11 module. Integration tests use the real token (SoftHSMv2).
#pragma once

#include "common/x509.h"
#include "daemon/signing/signing_token.h"

#include <map>
#include <mutex>

namespace p11relay::testing {

class FakeToken final : public daemon::SigningToken {
 public:
  explicit FakeToken(std::string name) : name_(std::move(name)) {}

  // Serves a key named `name` of `type` with the mechanisms a real token would list for it.
  void add_key(const std::string& name, KeyType type, int bits) {
    auto k = std::make_shared<daemon::ServedKey>();
    k->name = name;
    k->token_name = name_;
    k->description.name = name;
    k->description.key.type = type;
    k->description.key.bits = bits;
    k->description.spki = Bytes(name.begin(), name.end());
    k->version = relay::key_version(k->description);
    k->mechanisms = type == KeyType::ec ? std::vector<CK_MECHANISM_TYPE>{CKM_ECDSA}
                                                : std::vector<CK_MECHANISM_TYPE>{CKM_RSA_PKCS, CKM_RSA_PKCS_PSS};
    std::lock_guard lock(mu_);
    keys_[name] = std::move(k);
  }
  // Every later signature fails with `e` (nullopt: they succeed again).
  void fail_with(std::optional<Error> e) {
    std::lock_guard lock(mu_);
    fail_ = std::move(e);
  }
  void set_state(daemon::TokenState s) {
    std::lock_guard lock(mu_);
    state_ = s;
  }
  // The jobs asked so far, in order.
  std::vector<daemon::SignJob> jobs() const {
    std::lock_guard lock(mu_);
    return jobs_;
  }
  // The signature the fake gives for the n-th job (1-based): "sig-n" followed by the input.
  static Bytes signature_for(size_t n, const Bytes& input) {
    std::string head = "sig-" + std::to_string(n);
    Bytes out(head.begin(), head.end());
    out.insert(out.end(), input.begin(), input.end());
    return out;
  }

  Status start() override { return {}; }
  void stop() override {}
  void sign(daemon::SignJob job, Done done) override {
    std::unique_lock lock(mu_);
    jobs_.push_back(job);
    Result<Bytes> r = fail_ ? Result<Bytes>(*fail_) : Result<Bytes>(signature_for(jobs_.size(), job.input));
    lock.unlock();
    done(std::move(r));
  }
  std::optional<Result<Bytes>> sign_here(const daemon::SignJob&) override { return std::nullopt; }
  void ping(daemon::Clock::time_point, std::function<void(Status)> done) override { done(Status{}); }
  daemon::TokenState state() const override {
    std::lock_guard lock(mu_);
    return state_;
  }
  std::string state_reason() const override { return "the fake token is " + std::string(daemon::token_state_name(state())); }
  const std::string& name() const override { return name_; }
  std::vector<std::shared_ptr<const daemon::ServedKey>> keys() const override {
    std::lock_guard lock(mu_);
    std::vector<std::shared_ptr<const daemon::ServedKey>> out;
    if (state_ == daemon::TokenState::ready)
      for (const auto& [n, k] : keys_) out.push_back(k);
    return out;
  }
  std::shared_ptr<const daemon::ServedKey> key(const std::string& name) const override {
    std::lock_guard lock(mu_);
    auto it = keys_.find(name);
    return state_ == daemon::TokenState::ready && it != keys_.end() ? it->second : nullptr;
  }
  size_t queue_depth() const override { return 0; }

 private:
  std::string name_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<daemon::ServedKey>> keys_;
  std::optional<Error> fail_;
  daemon::TokenState state_ = daemon::TokenState::ready;
  std::vector<daemon::SignJob> jobs_;
};

}  // namespace p11relay::testing
