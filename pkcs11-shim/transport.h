// What the shim needs from the network, as an interface: the real one goes through client::Client
// (pool, retries, failover); unit tests inject a fake (p11-kit's test-rpc.c idea).
#pragma once

#include "client/client.h"
#include "common/relay_api.h"

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
  Result<Bytes> sign(const std::string& key_name, const relay::SignRequest& request) override {
    return client_->sign(key_name, request);
  }

 private:
  std::unique_ptr<client::Client> client_;
};

}  // namespace p11relay::shim
