#include "common/authenticode/timestamp.h"

#include "common/authenticode/signed_data.h"
#include "common/openssl_ptr.h"
#include "common/x509.h"

#include <openssl/bn.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ts.h>

#include <cctype>
#include <cstdlib>
#include <ctime>
#include <memory>

namespace p11relay::authenticode {

namespace {

P11R_OSSL_PTR(TS_REQ, TS_REQ_free);
P11R_OSSL_PTR(TS_RESP, TS_RESP_free);
P11R_OSSL_PTR(TS_VERIFY_CTX, TS_VERIFY_CTX_free);
P11R_OSSL_PTR(TS_MSG_IMPRINT, TS_MSG_IMPRINT_free);
P11R_OSSL_PTR(TS_TST_INFO, TS_TST_INFO_free);
P11R_OSSL_PTR(X509_ALGOR, X509_ALGOR_free);
P11R_OSSL_PTR(ASN1_INTEGER, ASN1_INTEGER_free);
struct X509_view_stack_deleter {  // a stack that does not own its certificates (PKCS7_get0_signers)
  void operator()(STACK_OF(X509) * s) const noexcept { sk_X509_free(s); }
};

// The setters copy what they are given (TS_REQ_set_msg_imprint, _set_nonce, TS_MSG_IMPRINT_set_algo).
Result<TS_REQ_ptr> build_req(HashAlg alg, std::span<const uint8_t> message, std::span<const uint8_t> nonce) {
  TS_REQ_ptr req(TS_REQ_new());
  TS_MSG_IMPRINT_ptr imprint(TS_MSG_IMPRINT_new());
  X509_ALGOR_ptr algor(X509_ALGOR_new());
  BIGNUM_ptr bn(BN_bin2bn(nonce.data(), static_cast<int>(nonce.size()), nullptr));
  ASN1_INTEGER_ptr n(bn ? BN_to_ASN1_INTEGER(bn.get(), nullptr) : nullptr);
  Bytes digest = hash(alg, message);
  bool ok = req && imprint && algor && n && TS_REQ_set_version(req.get(), 1) == 1 &&
            X509_ALGOR_set0(algor.get(), OBJ_nid2obj(EVP_MD_get_type(evp_md(alg))), V_ASN1_NULL, nullptr) == 1 &&
            TS_MSG_IMPRINT_set_algo(imprint.get(), algor.get()) == 1 &&
            TS_MSG_IMPRINT_set_msg(imprint.get(), digest.data(), static_cast<int>(digest.size())) == 1 &&
            TS_REQ_set_msg_imprint(req.get(), imprint.get()) == 1 && TS_REQ_set_nonce(req.get(), n.get()) == 1 &&
            TS_REQ_set_cert_req(req.get(), 1) == 1;
  if (!ok) return internal_error("building TimeStampReq: " + openssl_error_string());
  return req;
}

}  // namespace

Result<TimestampRequest> make_timestamp_request(HashAlg alg, std::span<const uint8_t> message) {
  TimestampRequest r;
  r.nonce.resize(12);  // 96 bits, like relic (§10)
  if (RAND_bytes(r.nonce.data(), static_cast<int>(r.nonce.size())) != 1) return internal_error("RAND_bytes failed");
  r.nonce[0] &= 0x7f;  // keep the INTEGER positive
  if (r.nonce[0] == 0) r.nonce[0] = 1;  // and its encoding exactly 12 bytes
  ASSIGN_OR_RETURN(auto req, build_req(alg, message, r.nonce));
  unsigned char* p = nullptr;
  int n = i2d_TS_REQ(req.get(), &p);
  OpenSSL_buffer<unsigned char> owned(p);
  if (n <= 0) return internal_error("encoding TimeStampReq: " + openssl_error_string());
  r.der.assign(p, p + n);
  return r;
}

Result<Bytes> check_timestamp_response(std::span<const uint8_t> response, const TimestampRequest& request,
                                       const TimestampOptions& options) {
  const unsigned char* p = response.data();
  TS_RESP_ptr resp(d2i_TS_RESP(nullptr, &p, static_cast<long>(response.size())));
  if (!resp || p != response.data() + response.size()) {
    openssl_error_string();
    return Error(ErrorCode::device_error, "timestamp server sent something that is not a TimeStampResp");
  }
  const ASN1_INTEGER* status = TS_STATUS_INFO_get0_status(TS_RESP_get_status_info(resp.get()));
  long st = ASN1_INTEGER_get(status);
  if (st != 0 && st != 1)  // granted / grantedWithMods (RFC 3161 §2.4.2)
    return Error(ErrorCode::device_error, "timestamp server refused the request (PKIStatus " + std::to_string(st) + ")");
  PKCS7* token = TS_RESP_get_token(resp.get());
  if (!token) return Error(ErrorCode::device_error, "timestamp reply has no token");

  // Imprint, nonce and version through OpenSSL's TS verifier, built from our own request.
  const unsigned char* rp = request.der.data();
  TS_REQ_ptr req(d2i_TS_REQ(nullptr, &rp, static_cast<long>(request.der.size())));
  if (!req) return internal_error("re-reading our TimeStampReq failed");
  TS_VERIFY_CTX_ptr vctx(TS_REQ_to_TS_VERIFY_CTX(req.get(), nullptr));
  if (!vctx) return internal_error("TS_VERIFY_CTX: " + openssl_error_string());
  int flags = TS_VFY_VERSION | TS_VFY_IMPRINT | TS_VFY_NONCE;
  if (!options.ca_file.empty()) {
    X509_STORE_ptr store(X509_STORE_new());
    if (!store || X509_STORE_load_file(store.get(), options.ca_file.c_str()) != 1)
      return config_error("cannot load timestamp CA file " + options.ca_file + ": " + openssl_error_string());
    TS_VERIFY_CTX_set_store(vctx.get(), store.release());  // takes ownership
    flags |= TS_VFY_SIGNATURE;
  }
  TS_VERIFY_CTX_set_flags(vctx.get(), flags);
  if (TS_RESP_verify_response(vctx.get(), resp.get()) != 1)
    return Error(ErrorCode::device_error, "timestamp reply does not match the request: " + openssl_error_string());
  if (options.ca_file.empty()) {
    // No trust anchors: still require the token to be signed by the certificate it carries.
    BIO_ptr none(BIO_new(BIO_s_mem()));
    if (PKCS7_verify(token, nullptr, nullptr, nullptr, none.get(), PKCS7_NOVERIFY) != 1)
      return Error(ErrorCode::device_error, "timestamp token signature does not verify: " + openssl_error_string());
  }
  unsigned char* out = nullptr;
  int n = i2d_PKCS7(token, &out);
  OpenSSL_buffer<unsigned char> owned(out);
  if (n <= 0) return internal_error("encoding timestamp token: " + openssl_error_string());
  return Bytes(out, out + n);
}

namespace {

// genTime as RFC 3339 UTC; GeneralizedTime may carry fractions, which the audit does not need.
std::string rfc3339(const ASN1_GENERALIZEDTIME* t) {
  struct tm tm {};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return {};
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Signer subject and genTime of a token that check_timestamp_response accepted.
void describe_token(std::span<const uint8_t> token_der, TimestampInfo& info) {
  const unsigned char* p = token_der.data();
  PKCS7_ptr token(d2i_PKCS7(nullptr, &p, static_cast<long>(token_der.size())));
  if (!token) return;
  if (TS_TST_INFO_ptr tst{PKCS7_to_TS_TST_INFO(token.get())}) info.gen_time = rfc3339(TS_TST_INFO_get_time(tst.get()));
  std::unique_ptr<STACK_OF(X509), X509_view_stack_deleter> signers(PKCS7_get0_signers(token.get(), nullptr, 0));
  if (signers && sk_X509_num(signers.get()) > 0)
    info.tsa_subject = name_rfc2253(X509_get_subject_name(sk_X509_value(signers.get(), 0)));
  openssl_error_string();  // clear what a partial description left queued
}

Result<Bytes> timestamp_from(const std::string& url, std::span<const uint8_t> message, const TimestampOptions& options) {
  ASSIGN_OR_RETURN(TimestampRequest req, make_timestamp_request(options.alg, message));
  ASSIGN_OR_RETURN(HttpReply reply, http_post(url, "application/timestamp-query", req.der, options.timeout_seconds, "timestamp server"));
  if (reply.status != 200)
    return Error(ErrorCode::device_error, "timestamp server answered HTTP " + std::to_string(reply.status));
  return check_timestamp_response(reply.body, req, options);
}

}  // namespace

Result<Bytes> add_timestamp(std::span<const uint8_t> signed_data, const TimestampOptions& options, TimestampInfo* info) {
  if (options.urls.empty()) return config_error("no timestamp server URL configured");
  ASSIGN_OR_RETURN(SignedDataView sd, parse_signed_data(signed_data));
  // The imprint covers the SignerInfo's encryptedDigest value (the signature bytes) (§10).
  Bytes message(sd.signers[0].signature.begin(), sd.signers[0].signature.end());
  std::string failures;
  for (const std::string& url : options.urls) {
    auto token = timestamp_from(url, message, options);
    if (!token.ok()) {
      failures += (failures.empty() ? "" : "; ") + url + ": " + token.error().message;
      continue;
    }
    if (info) {
      *info = TimestampInfo{url, {}, {}, options.alg};
      describe_token(*token, *info);
    }
    return add_unsigned_attribute(signed_data, oid::kRfc3161Timestamp, *token);
  }
  return Error(ErrorCode::device_error, "no timestamp server answered (" + failures + ")");
}

}  // namespace p11relay::authenticode
