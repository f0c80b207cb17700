// What relic's Authenticode signers share on the server (docs/relic-protocol.md §2.6, §9, §10): the
// upload is digested as it arrives by the container format's digester; then policy (approval or
// quota), the SignedData over the format's SpcIndirectDataContent with the token signing the
// attributes' digest, the server-side timestamp, the audit record, and the format's answer (a binary
// patch for pe-coff, cab and ps, the PKCS#7 signature for msi and cat). A format implements the hooks below.
#pragma once

#include "common/authenticode/signed_data.h"
#include "common/authenticode/timestamp.h"
#include "daemon/policy/requests_api.h"
#include "daemon/service.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace p11relay::daemon {

struct UploadSignTask;  // the SignedData build on the blocking pool (authenticode_upload.cpp)

// The digested upload: what gets signed.
struct UploadDigest {
  Bytes spc;           // SpcIndirectDataContent DER (or, for a catalog, its certificate trust list)
  const char* content_type = authenticode::oid::kSpcIndirectData;  // spc's type
  Bytes image_digest;  // the file's digest inside it (for approvals and idempotency)
  uint64_t size = 0;   // bytes uploaded
};

struct UploadParams {
  std::string sigtype;  // relic signature type, for the audit and approvals
  HashAlg alg = HashAlg::sha256;
  authenticode::SignOptions options;
  std::string filename;
  std::optional<authenticode::TimestampOptions> timestamp;
  std::string request_options;  // format flags that change the signature (a held request's identity)
};

// The parameters every relic Authenticode signer takes from the request: digest, relic's opus flags
// (description, desc-url), file name, server-side timestamp (docs/relic-protocol.md §10).
Result<UploadParams> upload_params(const SignerContext& c, const std::string& sigtype);

// The factory of a signer that needs nothing beyond the common parameters (cab, cat).
template <typename Signer>
Result<std::unique_ptr<BodyConsumer>> make_upload(const SignerContext& c, const std::string& sigtype) {
  ASSIGN_OR_RETURN(UploadParams p, upload_params(c, sigtype));
  return std::unique_ptr<BodyConsumer>(new Signer(c, std::move(p)));
}

class AuthenticodeUpload : public BodyConsumer {
 public:
  AuthenticodeUpload(Service& svc, Service::KeyRef key, std::string key_name, UploadParams params)
      : svc_(svc), key_(std::move(key)), key_name_(std::move(key_name)), p_(std::move(params)) {}
  asio::awaitable<http::Response> finish(RequestContext& ctx) override;

 protected:
  // After the body: the digest, or the reason the upload is not a file of this format (answered 400).
  virtual Result<UploadDigest> digested() = 0;
  // The answer carrying `signed_data` (the same for a retried approved request); `extra` gets the
  // format's audit attributes.
  virtual Result<http::Response> respond(const UploadDigest& d, const Bytes& signed_data, nlohmann::json& extra) = 0;

  // A chunk the format's digester refused is the client's problem: 400 with `what` and the reason
  // (docs/architecture.md, failure mode 12), never relic's 500.
  static Status refused_chunk(const Status& st, std::string_view what);
  // The 200 answer: `body` as `content_type` (relic's client compares the type for equality, §7);
  // the type goes into the audit attributes too.
  static http::Response answer(const std::string& content_type, const Bytes& body, nlohmann::json& extra);

 private:
  HeldRequest held_request(const RequestContext& ctx, const UploadDigest& d) const;
  struct Answer;  // the format's answer, built before the audit record
  // The relic answer to a signature that did not leave (quota, the format's answer, the timestamp, the token).
  http::Response failure(const Error& e, const Answer& answer, const UploadSignTask& task) const;

  Service& svc_;
  Service::KeyRef key_;
  std::string key_name_;
  UploadParams p_;
};

}  // namespace p11relay::daemon
