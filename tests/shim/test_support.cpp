#include "tests/shim/test_support.h"

#include "common/authenticode/signed_data.h"
#include "common/x509.h"

#include <openssl/ec.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include <stdexcept>

namespace p11relay::shim::testing {
namespace {

X509_ptr make_cert(EVP_PKEY* subject_key, const std::string& cn, EVP_PKEY* issuer_key, X509* issuer, bool ca) {
  X509_ptr x(X509_new());
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), ca ? 1000 : 4242);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600L * 24 * 365);
  X509_set_pubkey(x.get(), subject_key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), issuer ? X509_get_subject_name(issuer) : name);
  if (ca) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x.get(), x.get(), nullptr, nullptr, 0);
    X509_EXTENSION_ptr ext(X509V3_EXT_conf_nid(nullptr, &ctx, NID_basic_constraints, "critical,CA:TRUE"));
    X509_add_ext(x.get(), ext.get(), -1);
  }
  if (X509_sign(x.get(), issuer_key, EVP_sha256()) <= 0) throw std::runtime_error("X509_sign");
  return x;
}

TestKey make(EVP_PKEY* key, const std::string& name, Bytes id, std::vector<Bytes> certs) {
  TestKey k;
  k.priv.reset(key);
  k.desc.name = name;
  k.desc.token = test_token();
  k.desc.id = std::move(id);
  k.desc.label = name;
  k.desc.key = *describe_public_key(key);
  k.desc.spki = spki_der(key);
  k.desc.certificates = std::move(certs);
  return k;
}

}  // namespace

relay::TokenDescription test_token() { return {"p11relay-demo", "0123456789abcdef", "SoftHSM v2", "SoftHSM project"}; }

const TestKey& rsa_key() {
  static const TestKey k = [] {
    EVP_PKEY* key = EVP_RSA_gen(2048);
    auto cert = make_cert(key, "rsa2048", key, nullptr, false);
    TestKey t = make(key, "rsa2048", {0x01}, {x509_der(cert.get())});
    t.desc.mechanisms = {"CKM_RSA_PKCS", "CKM_RSA_PKCS_PSS"};
    return t;
  }();
  return k;
}

const TestKey& ec_key() {
  static const TestKey k = [] {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    EVP_PKEY_ptr ca_key(EVP_EC_gen("P-256"));
    auto ca = make_cert(ca_key.get(), "Test CA", ca_key.get(), nullptr, true);
    auto leaf = make_cert(key, "ec256", ca_key.get(), ca.get(), false);
    TestKey t = make(key, "ec256", {0x02}, {x509_der(leaf.get()), x509_der(ca.get())});
    t.desc.mechanisms = {"CKM_ECDSA"};
    return t;
  }();
  return k;
}

Bytes sign_like_daemon(EVP_PKEY* key, const relay::SignRequest& req) {
  EVP_PKEY_CTX_ptr ctx(EVP_PKEY_CTX_new(key, nullptr));
  EVP_PKEY_sign_init(ctx.get());
  if (req.mechanism == "CKM_RSA_PKCS") {
    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING);
  } else if (req.mechanism == "CKM_RSA_PKCS_PSS") {
    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING);
    EVP_PKEY_CTX_set_signature_md(ctx.get(), evp_md(req.pss->hash));
    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), evp_md(req.pss->mgf_hash));
    EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), static_cast<int>(req.pss->salt_length));
  }
  size_t len = 0;
  EVP_PKEY_sign(ctx.get(), nullptr, &len, req.input.data(), req.input.size());
  Bytes sig(len);
  if (EVP_PKEY_sign(ctx.get(), sig.data(), &len, req.input.data(), req.input.size()) != 1)
    throw std::runtime_error("EVP_PKEY_sign: " + openssl_error_string());
  sig.resize(len);
  if (req.mechanism != "CKM_ECDSA") return sig;
  auto raw = authenticode::ecdsa_der_to_raw(sig, static_cast<size_t>((EVP_PKEY_get_bits(key) + 7) / 8));
  if (!raw.ok()) throw std::runtime_error(raw.error().message);
  return std::move(raw).value();
}

Result<relay::KeyList> FakeTransport::list_keys() {
  std::lock_guard<std::mutex> g(state_->mu);
  ++state_->list_calls;
  if (state_->list_error) return *state_->list_error;
  return relay::KeyList{state_->keys, state_->unavailable};
}

Result<relay::KeyList> FakeTransport::list_keys_kept(bool* from_disk) {
  {
    std::lock_guard<std::mutex> g(state_->mu);
    *from_disk = state_->kept.has_value();
    if (state_->kept) return relay::KeyList{*state_->kept, {}};
  }
  return list_keys();
}

Result<Bytes> FakeTransport::sign(const std::string& key_name, const relay::SignRequest& request) {
  std::function<void(const std::string&)> hold;
  {
    std::lock_guard<std::mutex> g(state_->mu);
    hold = state_->hold;
  }
  if (hold) hold(key_name);
  std::lock_guard<std::mutex> g(state_->mu);
  state_->sign_requests.emplace_back(key_name, request);
  if (state_->sign_error) return *state_->sign_error;
  for (const TestKey* k : {&rsa_key(), &ec_key()})
    if (k->desc.name == key_name) return sign_like_daemon(k->priv.get(), request);
  return Error(ErrorCode::forbidden, "key '" + key_name + "' does not exist or is not yours");
}

}  // namespace p11relay::shim::testing
