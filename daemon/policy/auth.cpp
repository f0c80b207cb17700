#include "daemon/policy/auth.h"
#include "daemon/policy/policy.h"  // shares_role

#include "common/x509.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>

namespace p11relay::daemon {

std::string ClientIdentity::name() const {
  if (client && !client->nickname.empty()) return client->nickname;
  return fingerprint.substr(0, 12);
}

Result<std::unique_ptr<Authenticator>> Authenticator::create(const Config& config) {
  auto a = std::unique_ptr<Authenticator>(new Authenticator());
  a->config_ = &config;
  for (const auto& [name, c] : config.clients) {
    if (c.certificate.empty()) continue;
    ASSIGN_OR_RETURN(auto certs, load_certificates(c.certificate));
    X509_STORE_ptr store(X509_STORE_new());
    for (auto& cert : certs) X509_STORE_add_cert(store.get(), cert.get());
    a->ca_clients_.push_back({&c, std::move(store)});
  }
  return a;
}

Result<std::shared_ptr<const ConfigSnapshot>> Authenticator::snapshot(Config config) {
  auto snap = std::make_shared<ConfigSnapshot>();
  snap->config = std::move(config);
  ASSIGN_OR_RETURN(snap->auth, create(snap->config));
  return std::shared_ptr<const ConfigSnapshot>(std::move(snap));
}

ClientIdentity Authenticator::identify(STACK_OF(X509) * chain) const {
  if (!chain || sk_X509_num(chain) == 0) return {};
  return identify(sk_X509_value(chain, 0), chain);
}

ClientIdentity Authenticator::identify(X509* leaf, STACK_OF(X509) * intermediates) const {
  ClientIdentity id;
  if (!leaf) return id;
  id.has_certificate = true;
  id.fingerprint = spki_fingerprint(leaf);
  id.subject = name_oneline(X509_get_subject_name(leaf));
  if (auto it = config_->clients.find(id.fingerprint); it != config_->clients.end() && it->second.certificate.empty()) {
    // A pinned certificate outside its validity period is not recognised (401), although its key is
    // listed: the TLS layer lets expired / not-yet-valid certificates through on purpose so that this
    // is a clean HTTP answer rather than a handshake alert (server.cpp verify_callback). Found by
    // tests/integration/test_faults.py: an expired client certificate used to be accepted.
    const ASN1_TIME* nb = X509_get0_notBefore(leaf);
    const ASN1_TIME* na = X509_get0_notAfter(leaf);
    if (!nb || !na || X509_cmp_current_time(nb) >= 0 || X509_cmp_current_time(na) <= 0) {
      spdlog::warn("client certificate {} ({}) refused: outside its validity period", id.subject,
                   id.fingerprint.substr(0, 12));
      return id;
    }
    id.client = &it->second;
    return id;
  }
  for (const auto& ca : ca_clients_) {
    X509_STORE_CTX_ptr ctx(X509_STORE_CTX_new());
    if (!ctx || X509_STORE_CTX_init(ctx.get(), ca.store.get(), leaf, intermediates) != 1) continue;
    // Go semantics (relic config/client.go): EKU clientAuth required, a leaf without EKU passes.
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(ctx.get()) == 1) {
      id.client = ca.client;
      return id;
    }
    int err = X509_STORE_CTX_get_error(ctx.get());
    if (err != X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY && err != X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT &&
        err != X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT && err != X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN)
      spdlog::info("client certificate {} not accepted by CA entry {}: {}", id.subject, ca.client->name,
                   X509_verify_cert_error_string(err));
  }
  ERR_clear_error();
  return id;
}

ClientIdentity identify(const std::shared_ptr<const ConfigSnapshot>& snapshot, X509* leaf,
                        STACK_OF(X509) * intermediates) {
  ClientIdentity id = snapshot->auth->identify(leaf, intermediates);
  id.snapshot = snapshot;
  return id;
}

bool allowed(const ClientIdentity& id, const KeyConfig& key) { return id.client && shares_role(key.roles, id.client->roles); }

}  // namespace p11relay::daemon
