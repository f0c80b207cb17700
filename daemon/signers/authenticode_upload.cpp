#include "daemon/signers/authenticode_upload.h"

#include "daemon/transport/router.h"
#include "daemon/signers/timestamp.h"
#include "daemon/signing/signing_service.h"


namespace p11relay::daemon {

namespace ac = p11relay::authenticode;

// What the SignedData build on the blocking pool needs; only a shared_ptr of it crosses the coroutine
// boundary (GCC 12 mishandles closures with captures stored in coroutine frames).
struct UploadSignTask {
  bool ec = false;
  HashAlg alg = HashAlg::sha256;
  Bytes spc;
  const char* content_type = ac::oid::kSpcIndirectData;
  std::vector<X509*> chain;  // owned by the ServedKey, which the request keeps alive
  ac::SignOptions options;
  std::optional<ac::TimestampOptions> timestamp;
  ac::TimestampInfo timestamp_info;  // filled when timestamped
  std::optional<Error> timestamp_error;
};

namespace {

// Runs on the blocking pool: builds the SignedData, the token signing the attributes' digest, then
// counter-signs it from a TSA when the key asks for it.
Result<Bytes> run_sign_task(const std::shared_ptr<UploadSignTask>& t, const TokenSigner& sign) {
  ac::RawSigner raw = [&t, &sign](HashAlg alg, std::span<const uint8_t> digest) -> Result<Bytes> {
    if (!t->ec) return sign(CKM_RSA_PKCS, digest_info(alg, digest));
    ASSIGN_OR_RETURN(Bytes sig, sign(CKM_ECDSA, Bytes(digest.begin(), digest.end())));
    return ac::ecdsa_raw_to_der(sig);
  };
  ASSIGN_OR_RETURN(Bytes sd, ac::build_signed_data(t->alg, t->spc, t->chain, t->options, raw, t->content_type));
  if (!t->timestamp) return sd;
  auto stamped = ac::add_timestamp(sd, *t->timestamp, &t->timestamp_info);
  if (!stamped.ok()) t->timestamp_error = stamped.error();
  return stamped;
}

std::shared_ptr<UploadSignTask> sign_task(const ServedKey& key, const UploadParams& p, const UploadDigest& d) {
  auto task = std::make_shared<UploadSignTask>();
  task->ec = key.description.key.type == KeyType::ec;
  task->alg = p.alg;
  task->spc = d.spc;
  task->content_type = d.content_type;
  for (const auto& c : key.chain) task->chain.push_back(c.get());
  task->options = p.options;
  task->timestamp = p.timestamp;
  return task;
}

QuotaUse quota_use(const KeyConfig& kc, bool held) {
  if (!kc.policy.has_quota()) return QuotaUse::none;
  return held ? QuotaUse::count_after : QuotaUse::take;
}

}  // namespace

// The format's answer, built by the signing service before the audit record (its attributes go in it).
struct AuthenticodeUpload::Answer : SignAnswer {
  Answer(AuthenticodeUpload& up, const UploadDigest& d, const UploadSignTask& task) : up(up), d(d), task(task) {}
  Status build(const Bytes& signed_data, nlohmann::json& extra) override {
    auto r = up.respond(d, signed_data, extra);
    if (!r.ok()) {
      refused = true;
      return r.error();
    }
    if (up.p_.timestamp) audit_timestamp(task.timestamp_info, extra);
    response = std::move(r).value();
    return {};
  }
  AuthenticodeUpload& up;
  const UploadDigest& d;
  const UploadSignTask& task;
  http::Response response;
  bool refused = false;  // the format could not answer (400), after the token signed
};

http::Response AuthenticodeUpload::failure(const Error& e, const Answer& answer, const UploadSignTask& task) const {
  if (e.code == ErrorCode::quota) return relic_quota_exceeded(e);
  if (answer.refused) return relic_problem(400, "https://relic.sas.com/bad-request", e.message);
  if (task.timestamp_error) return timestamp_failed(e);
  if (e.code == ErrorCode::timeout) return text_response(504, "");
  if (e.http_status == 503) return relay_problem(e);
  if (e.ckr == CKR_KEY_FUNCTION_NOT_PERMITTED)
    return relic_problem(400, "https://relic.sas.com/key-usage", e.message, "Incorrect Key Usage");
  return relic_unhandled();
}

asio::awaitable<http::Response> AuthenticodeUpload::finish(RequestContext& ctx) {
  auto d = digested();
  if (!d.ok()) co_return relic_problem(400, "https://relic.sas.com/bad-request", d.error().message);
  const KeyConfig& kc = *key_.config;
  // Policy (docs/policy.md): rules were checked before the upload; here the approval or the quota.
  bool held = kc.has_policy && needs_approval(kc.policy, ctx.identity.client->roles);
  HeldRequest request;
  if (held) {
    HoldOutcome outcome = co_await hold_upload(svc_, ctx, held_request(ctx, *d));
    if (outcome.response) co_return std::move(*outcome.response);
    request = std::move(outcome.request);
    if (request.state() == "signed") {
      nlohmann::json unused;
      auto r = respond(*d, request.info.signature, unused);
      co_return r.ok() ? std::move(r).value() : relic_problem(400, "https://relic.sas.com/bad-request", r.error().message);
    }
  }
  SignOrder order{ctx, key_, key_name_, p_.sigtype, hash_info(p_.alg).relic_name, p_.filename, quota_use(kc, held)};
  order.extra["perf.size.in"] = d->size;
  if (held) {
    order.extra["request_id"] = request.info.id;
    order.extra["approved_by"] = request.info.decided_by;
  }
  std::shared_ptr<UploadSignTask> task = sign_task(*key_.served, p_, *d);
  Answer answer(*this, *d, *task);
  order.answer = &answer;
  SignBuild build = std::bind(&run_sign_task, task, std::placeholders::_1);
  Result<Bytes> signed_data = co_await sign_built(svc_, order, build);
  // Stored after the audit record: a retry of the same file gets this SignedData, never a new signature.
  if (held) (void)svc_.approvals->finish(request.info.id, signed_data, epoch_now());
  if (!signed_data.ok()) co_return failure(signed_data.error(), answer, *task);
  co_return std::move(answer.response);
}

HeldRequest AuthenticodeUpload::held_request(const RequestContext& ctx, const UploadDigest& d) const {
  HeldRequest h;
  h.info.key = key_.config->name;
  h.info.client = ctx.identity.name();
  h.info.client_fingerprint = ctx.identity.fingerprint;
  h.info.mechanism = p_.sigtype;
  h.info.digest = hash_info(p_.alg).name;
  h.info.input_sha256 = to_hex(hash(HashAlg::sha256, d.image_digest));
  h.info.filename = p_.filename;
  h.info.filesize = d.size;
  h.kind = p_.sigtype;
  h.mech = key_.served->description.key.type == KeyType::ec ? CKM_ECDSA : CKM_RSA_PKCS;
  // The same file with the same options is the same request (what gets signed also depends on them).
  h.input = d.image_digest;
  std::string opts = p_.request_options + (p_.timestamp ? "t" : "") + "\n" + p_.options.description + "\n" +
                     p_.options.url;
  h.input.insert(h.input.end(), opts.begin(), opts.end());
  h.digest_name = hash_info(p_.alg).relic_name;
  h.client_entry = ctx.identity.client ? ctx.identity.client->name : "";
  h.idem = request_identity(ctx.identity.fingerprint, h);
  h.expires = epoch_now() + key_.config->policy.approvaltimeout;
  return h;
}

// The request's Authenticode parameters every relic Authenticode signer takes: digest, relic's opus
// flags (description, desc-url), file name, server-side timestamp.
Result<UploadParams> upload_params(const SignerContext& c, const std::string& sigtype) {
  UploadParams p;
  p.sigtype = sigtype;
  p.alg = c.digest;
  if (auto* d = c.param("description")) p.options.description = *d;
  if (auto* u = c.param("desc-url")) p.options.url = *u;
  if (const std::string* filename = c.param("filename")) p.filename = *filename;
  ASSIGN_OR_RETURN(p.timestamp, timestamp_for(c));
  return p;
}

Status AuthenticodeUpload::refused_chunk(const Status& st, std::string_view what) {
  if (st.ok()) return {};
  return Error(ErrorCode::bad_request, std::string(what) + st.error().message);
}

http::Response AuthenticodeUpload::answer(const std::string& content_type, const Bytes& body, nlohmann::json& extra) {
  extra["content-type"] = content_type;
  http::Response r;
  r.status = 200;
  r.set("Content-Type", content_type);
  r.body.assign(body.begin(), body.end());
  return r;
}

}  // namespace p11relay::daemon
