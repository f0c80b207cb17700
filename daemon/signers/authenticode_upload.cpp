#include "daemon/signers/authenticode_upload.h"

#include "daemon/transport/router.h"
#include "daemon/signers/timestamp.h"

#include <spdlog/spdlog.h>

namespace p11relay::daemon {
namespace {

namespace ac = p11relay::authenticode;

struct SignTask {
  std::shared_ptr<Token> token;
  Clock::time_point deadline;
  bool ec = false;
  std::string key_name;
  HashAlg alg = HashAlg::sha256;
  Bytes spc;
  const char* content_type = ac::oid::kSpcIndirectData;
  std::vector<X509*> chain;  // owned by the ServedKey, which the request keeps alive
  ac::SignOptions options;
  std::optional<ac::TimestampOptions> timestamp;
  ac::TimestampInfo timestamp_info;  // filled when timestamped
  std::optional<Error> timestamp_error;
};

// Runs on the blocking pool: builds the SignedData, the token signing the attributes' digest, then
// counter-signs it from a TSA when the key asks for it.
Result<Bytes> run_sign_task(const std::shared_ptr<SignTask>& t) {
  ac::RawSigner raw = [&t](HashAlg alg, std::span<const uint8_t> digest) -> Result<Bytes> {
    SignJob job;
    job.key = t->key_name;
    job.deadline = t->deadline;
    if (t->ec) {
      job.mechanism = CKM_ECDSA;
      job.input.assign(digest.begin(), digest.end());
      ASSIGN_OR_RETURN(Bytes sig, token_sign_blocking(*t->token, std::move(job)));
      return ac::ecdsa_raw_to_der(sig);
    }
    job.mechanism = CKM_RSA_PKCS;
    job.input = digest_info(alg, digest);
    return token_sign_blocking(*t->token, std::move(job));
  };
  ASSIGN_OR_RETURN(Bytes sd, ac::build_signed_data(t->alg, t->spc, t->chain, t->options, raw, t->content_type));
  if (!t->timestamp) return sd;
  auto stamped = ac::add_timestamp(sd, *t->timestamp, &t->timestamp_info);
  if (!stamped.ok()) t->timestamp_error = stamped.error();
  return stamped;
}

}  // namespace

http::Response AuthenticodeUpload::sign_failed(const RequestContext& ctx, const Error& e, bool timestamp) const {
  spdlog::warn("{} sign failed: key={} client={} file={}: {}", p_.sigtype, key_.served->name, ctx.identity.name(),
               p_.filename, e.message);
  if (timestamp) return timestamp_failed(e);
  if (e.code == ErrorCode::timeout) return text_response(504, "");
  if (e.http_status == 503) return relay_problem(e);
  if (e.ckr == CKR_KEY_FUNCTION_NOT_PERMITTED)
    return relic_problem(400, "https://relic.sas.com/key-usage", e.message, "Incorrect Key Usage");
  return relic_unhandled();
}

asio::awaitable<http::Response> AuthenticodeUpload::finish(RequestContext& ctx) {
  auto t0 = Clock::now();
  auto d = digested();
  if (!d.ok()) co_return relic_problem(400, "https://relic.sas.com/bad-request", d.error().message);
  const ServedKey& key = *key_.served;
  const KeyConfig& kc = *key_.config;
  // Policy (docs/policy.md): rules were checked before the upload; here the approval or the quota.
  bool held = kc.has_policy && needs_approval(kc.policy, ctx.identity.client->roles);
  HeldRequest request;
  nlohmann::json extra;
  if (held) {
    HoldOutcome outcome = co_await hold_upload(svc_, ctx, held_request(ctx, *d));
    if (outcome.response) co_return std::move(*outcome.response);
    request = std::move(outcome.request);
    if (request.state() == "signed") {
      auto r = respond(*d, request.info.signature, extra);
      co_return r.ok() ? std::move(r).value() : relic_problem(400, "https://relic.sas.com/bad-request", r.error().message);
    }
  } else if (kc.policy.has_quota()) {
    auto st = svc_.quotas->take(ctx.identity.fingerprint, kc.name, kc.policy, std::time(nullptr));
    if (!st.ok()) co_return relic_quota_exceeded(st.error());
  }
  // Everything the blocking build needs, owned by one object: only a shared_ptr crosses the
  // coroutine boundary (GCC 12 mishandles closures with captures stored in coroutine frames).
  auto task = std::make_shared<SignTask>();
  task->token = key_.token;
  task->deadline = std::min(ctx.deadline, Clock::now() + std::chrono::seconds(svc_.config.tokens.at(kc.token).timeout));
  task->ec = key.description.key.type == KeyType::ec;
  task->key_name = key.name;
  task->alg = p_.alg;
  task->spc = d->spc;
  task->content_type = d->content_type;
  for (const auto& c : key.chain) task->chain.push_back(c.get());
  task->options = p_.options;
  task->timestamp = p_.timestamp;
  std::function<Result<Bytes>()> work = std::bind(&run_sign_task, task);
  auto signed_data = co_await run_blocking<Result<Bytes>>(svc_, work);
  if (!signed_data.ok() && held) (void)svc_.approvals->finish(request.info.id, signed_data, epoch_now());
  if (!signed_data.ok() && !held && kc.policy.has_quota())
    svc_.quotas->give_back(ctx.identity.fingerprint, kc.name, std::time(nullptr));
  if (!signed_data.ok()) co_return sign_failed(ctx, signed_data.error(), task->timestamp_error.has_value());
  auto response = respond(*d, *signed_data, extra);
  if (!response.ok()) co_return relic_problem(400, "https://relic.sas.com/bad-request", response.error().message);
  extra["perf.size.in"] = d->size;
  if (p_.timestamp) audit_timestamp(task->timestamp_info, extra);
  extra["perf.elapsed.ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  if (held) {
    extra["request_id"] = request.info.id;
    extra["approved_by"] = request.info.decided_by;
    if (kc.policy.has_quota())
      (void)svc_.quotas->take(ctx.identity.fingerprint, kc.name, kc.policy, std::time(nullptr), true);
  }
  auto st = co_await record_signature(svc_, ctx, key_name_, key, p_.sigtype, hash_info(p_.alg).relic_name,
                                      p_.filename, extra);
  // Stored after the audit record: a retry of the same file gets this SignedData, never a new signature.
  if (held)
    (void)svc_.approvals->finish(request.info.id, st.ok() ? signed_data : Result<Bytes>(st.error()), epoch_now());
  if (!st.ok()) co_return relic_unhandled();
  co_return std::move(response).value();
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
