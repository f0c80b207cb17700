#include "pkcs11-shim/mechanisms.h"

#include "common/authenticode/signed_data.h"

#include "common/openssl_ptr.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

namespace p11relay::shim {
const std::vector<SignMech>& sign_mechanisms() {
  static const std::vector<SignMech> kMechs = {
      {CKM_RSA_PKCS, SignKind::rsa_pkcs1, std::nullopt},
      {CKM_SHA1_RSA_PKCS, SignKind::rsa_pkcs1, HashAlg::sha1},
      {CKM_SHA224_RSA_PKCS, SignKind::rsa_pkcs1, HashAlg::sha224},
      {CKM_SHA256_RSA_PKCS, SignKind::rsa_pkcs1, HashAlg::sha256},
      {CKM_SHA384_RSA_PKCS, SignKind::rsa_pkcs1, HashAlg::sha384},
      {CKM_SHA512_RSA_PKCS, SignKind::rsa_pkcs1, HashAlg::sha512},
      {CKM_RSA_PKCS_PSS, SignKind::rsa_pss, std::nullopt},
      {CKM_SHA1_RSA_PKCS_PSS, SignKind::rsa_pss, HashAlg::sha1},
      {CKM_SHA224_RSA_PKCS_PSS, SignKind::rsa_pss, HashAlg::sha224},
      {CKM_SHA256_RSA_PKCS_PSS, SignKind::rsa_pss, HashAlg::sha256},
      {CKM_SHA384_RSA_PKCS_PSS, SignKind::rsa_pss, HashAlg::sha384},
      {CKM_SHA512_RSA_PKCS_PSS, SignKind::rsa_pss, HashAlg::sha512},
      {CKM_ECDSA, SignKind::ecdsa, std::nullopt},
      {CKM_ECDSA_SHA1, SignKind::ecdsa, HashAlg::sha1},
      {CKM_ECDSA_SHA224, SignKind::ecdsa, HashAlg::sha224},
      {CKM_ECDSA_SHA256, SignKind::ecdsa, HashAlg::sha256},
      {CKM_ECDSA_SHA384, SignKind::ecdsa, HashAlg::sha384},
      {CKM_ECDSA_SHA512, SignKind::ecdsa, HashAlg::sha512},
  };
  return kMechs;
}

const SignMech* find_sign_mechanism(CK_MECHANISM_TYPE mech) {
  for (const auto& m : sign_mechanisms())
    if (m.mech == mech) return &m;
  return nullptr;
}

const char* relay_mechanism(SignKind kind) {
  switch (kind) {
    case SignKind::rsa_pkcs1: return "CKM_RSA_PKCS";
    case SignKind::rsa_pss: return "CKM_RSA_PKCS_PSS";
    case SignKind::ecdsa: return "CKM_ECDSA";
  }
  return "CKM_RSA_PKCS";
}

const std::vector<CK_MECHANISM_TYPE>& digest_mechanisms() {
  static const std::vector<CK_MECHANISM_TYPE> kDigests = {CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384,
                                                          CKM_SHA512};
  return kDigests;
}

std::optional<HashAlg> digest_mechanism_hash(CK_MECHANISM_TYPE mech) {
  for (auto m : digest_mechanisms())
    if (m == mech) return hash_by_ckm(mech);
  return std::nullopt;
}

Result<relay::PssParams> pss_params(const SignMech& m, const CK_MECHANISM& mechanism, int bits) {
  // PKCS#11 v2.40 §2.1.14: the PSS mechanisms take a CK_RSA_PKCS_PSS_PARAMS.
  if (!mechanism.pParameter || mechanism.ulParameterLen != sizeof(CK_RSA_PKCS_PSS_PARAMS))
    return ck(CKR_MECHANISM_PARAM_INVALID, "PSS needs a CK_RSA_PKCS_PSS_PARAMS parameter");
  const auto* p = static_cast<const CK_RSA_PKCS_PSS_PARAMS*>(mechanism.pParameter);
  auto hash = hash_by_ckm(p->hashAlg);
  auto mgf = hash_by_mgf(p->mgf);
  if (!hash || *hash == HashAlg::md5) return ck(CKR_MECHANISM_PARAM_INVALID, "PSS hashAlg is not a SHA-1/SHA-2 hash");
  if (!mgf) return ck(CKR_MECHANISM_PARAM_INVALID, "PSS mgf is not CKG_MGF1_SHA*");
  if (m.hash && *m.hash != *hash)
    return ck(CKR_MECHANISM_PARAM_INVALID, "PSS hashAlg does not match the mechanism's hash");
  size_t em_len = static_cast<size_t>((bits - 1 + 7) / 8);
  if (p->sLen + hash_info(*hash).size + 2 > em_len)
    return ck(CKR_MECHANISM_PARAM_INVALID, "PSS salt length too large for the key");
  relay::PssParams out;
  out.hash = *hash;
  out.mgf_hash = *mgf;
  out.salt_length = p->sLen;
  return out;
}

Result<relay::SignRequest> make_sign_request(const SignMech& m, const std::optional<relay::PssParams>& pss,
                                             Bytes input, size_t signature_size) {
  relay::SignRequest req;
  req.mechanism = relay_mechanism(m.kind);
  switch (m.kind) {
    case SignKind::rsa_pkcs1:
      if (m.hash) {
        req.input = digest_info(*m.hash, input);
        req.digest_alg = m.hash;
      } else {
        // Raw CKM_RSA_PKCS: the caller supplies the DigestInfo (or any short input); PKCS#1 v1.5 needs
        // 11 bytes of padding.
        if (input.empty() || input.size() + 11 > signature_size)
          return ck(CKR_DATA_LEN_RANGE, "CKM_RSA_PKCS input must be 1.." + std::to_string(signature_size - 11) + " bytes");
        req.input = std::move(input);
      }
      break;
    case SignKind::rsa_pss:
      if (!pss) return ck(CKR_MECHANISM_PARAM_INVALID, "PSS without parameters");
      if (input.size() != hash_info(pss->hash).size)
        return ck(CKR_DATA_LEN_RANGE, "CKM_RSA_PKCS_PSS input must be the " + std::string(hash_info(pss->hash).name) +
                                          " digest");
      req.input = std::move(input);
      req.pss = pss;
      req.digest_alg = pss->hash;
      break;
    case SignKind::ecdsa: {
      // Raw CKM_ECDSA: the input is a hash; longer inputs keep the leftmost order-size bytes (X9.62
      // truncation, exact for P-256 and P-384 whose orders are whole bytes).
      size_t order = signature_size / 2;
      if (input.empty()) return ck(CKR_DATA_LEN_RANGE, "CKM_ECDSA input is empty");
      if (!m.hash && input.size() > order && order % 8 == 0) input.resize(order);
      req.input = std::move(input);
      if (m.hash) req.digest_alg = m.hash;
      break;
    }
  }
  return req;
}

namespace {

Status verify_error(CK_RV rv, const char* what) {
  ERR_clear_error();
  return ck(rv, what);
}

}  // namespace

Status verify_signature(EVP_PKEY* key, const SignMech& m, const std::optional<relay::PssParams>& pss,
                        std::span<const std::uint8_t> input, std::span<const std::uint8_t> signature,
                        size_t signature_size) {
  if (signature.size() != signature_size) return verify_error(CKR_SIGNATURE_LEN_RANGE, "signature has the wrong length");
  EVP_PKEY_CTX_ptr ctx(EVP_PKEY_CTX_new(key, nullptr));
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1) return verify_error(CKR_GENERAL_ERROR, "EVP_PKEY_verify_init");
  Bytes sig(signature.begin(), signature.end());
  Bytes tbs(input.begin(), input.end());
  switch (m.kind) {
    case SignKind::rsa_pkcs1:
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING);
      if (m.hash) EVP_PKEY_CTX_set_signature_md(ctx.get(), evp_md(*m.hash));
      break;
    case SignKind::rsa_pss: {
      if (!pss) return verify_error(CKR_MECHANISM_PARAM_INVALID, "PSS without parameters");
      if (tbs.size() != hash_info(pss->hash).size) return verify_error(CKR_DATA_LEN_RANGE, "PSS input is not a digest");
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING);
      EVP_PKEY_CTX_set_signature_md(ctx.get(), evp_md(pss->hash));
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), evp_md(pss->mgf_hash));
      EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), static_cast<int>(pss->salt_length));
      break;
    }
    case SignKind::ecdsa: {
      // PKCS#11 ECDSA signatures are r||s; OpenSSL verifies DER ECDSA-Sig-Value.
      auto der = authenticode::ecdsa_raw_to_der(sig);
      if (!der.ok()) return verify_error(CKR_SIGNATURE_INVALID, "signature does not verify");
      sig = std::move(der).value();
      break;
    }
  }
  int ok = EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), tbs.data(), tbs.size());
  if (ok != 1) return verify_error(CKR_SIGNATURE_INVALID, "signature does not verify");
  return {};
}

}  // namespace p11relay::shim
