// What the shim needs from the network, as an interface: the real one goes through client::Client
// (pool, retries, failover); unit tests inject a fake (p11-kit's test-rpc.c idea).
#pragma once

#include "client/client.h"
#include "common/relay_api.h"
#include "pkcs11-shim/log.h"

#include <memory>
#include <string>
#include <vector>

namespace p11relay::shim {

class Transport {
 public:
  virtual ~Transport() = default;
  virtual Result<std::vector<relay::KeyDescription>> list_keys() = 0;
  virtual Result<Bytes> sign(const std::string& key_name, const relay::SignRequest& request) = 0;
};

class ClientTransport : public Transport {
 public:
  explicit ClientTransport(std::unique_ptr<client::Client> client) : client_(std::move(client)) {}
  Result<std::vector<relay::KeyDescription>> list_keys() override { return client_->list_keys(); }
  // A key whose policy needs an approver blocks here (up to remote.approvalwait); the log says why.
  Result<Bytes> sign(const std::string& key_name, const relay::SignRequest& request) override {
    return client_->sign(key_name, request, [&key_name](const relay::ApprovalRequest& r) {
      SHIM_LOG(info, "sign key=" + key_name + ": waiting for approval of request " + r.id + " (expires " + r.expires + ")");
    });
  }

 private:
  std::unique_ptr<client::Client> client_;
};

}  // namespace p11relay::shim
