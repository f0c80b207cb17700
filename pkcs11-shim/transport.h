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
  // The keys, and the tokens the daemon cannot use now (their slots show no token).
  virtual Result<relay::KeyList> list_keys() = 0;
  // The list a process starts from: the client's copy kept on disk when it has one (`from_disk` set),
  // else list_keys() (client::Client::list_keys_kept).
  virtual Result<relay::KeyList> list_keys_kept(bool* from_disk) {
    *from_disk = false;
    return list_keys();
  }
  virtual Result<Bytes> sign(const std::string& key_name, const relay::SignRequest& request) = 0;
  // Begins the connection the first signature will use (client::Client::start_connecting).
  virtual void start_connecting() {}
};

class ClientTransport : public Transport {
 public:
  explicit ClientTransport(std::unique_ptr<client::Client> client) : client_(std::move(client)) {}
  Result<relay::KeyList> list_keys() override { return client_->list_keys_full(); }
  Result<relay::KeyList> list_keys_kept(bool* from_disk) override { return client_->list_keys_kept(from_disk); }
  void start_connecting() override { client_->start_connecting(); }
  // A key whose policy needs an approver blocks here (up to remote.approvalwait); one stderr line says
  // which request waits and who may decide it (docs/policy.md, "Approval workflow").
  Result<Bytes> sign(const std::string& key_name, const relay::SignRequest& request) override {
    return client_->sign(key_name, request, [&key_name](const relay::ApprovalRequest& r) {
      notice("approval " + r.id, "signature with key '" + key_name + "' waits for approval of request " + r.id +
                                    " (expires " + r.expires + "); an approver (a client with a role in the key's "
                                    "policy.approvers) runs: p11relay requests approve " + r.id);
    });
  }

 private:
  std::unique_ptr<client::Client> client_;
};

}  // namespace p11relay::shim
