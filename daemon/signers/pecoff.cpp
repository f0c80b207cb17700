// relic's pe-coff signer on the server (docs/relic-protocol.md §2.6, §9): the relic client uploads the
// PE; we hash it in one forward pass as it arrives (never holding the file), sign the Authenticode
// attributes on the token, and answer with relic's two-record binary patch.
#include "common/authenticode/binpatch.h"
#include "common/authenticode/pe_digest.h"
#include "common/authenticode/pe_write.h"
#include "common/authenticode/signed_data.h"
#include "daemon/requests_api.h"
#include "daemon/router.h"
#include "daemon/signers/signers.h"
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
  ac::PeInfo pe;
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
  ASSIGN_OR_RETURN(Bytes sd, ac::build_signed_data(t->pe, t->chain, t->options, raw));
  if (!t->timestamp) return sd;
  auto stamped = ac::add_timestamp(sd, *t->timestamp, &t->timestamp_info);
  if (!stamped.ok()) t->timestamp_error = stamped.error();
  return stamped;
}

class PeCoffSigner : public BodyConsumer {
 public:
  PeCoffSigner(Service& svc, Service::KeyRef key, std::string key_name, HashAlg alg, bool page_hashes,
               ac::SignOptions options, std::string filename, std::optional<ac::TimestampOptions> timestamp)
      : svc_(svc),
        key_(std::move(key)),
        key_name_(std::move(key_name)),
        alg_(alg),
        page_hashes_(page_hashes),
        options_(std::move(options)),
        filename_(std::move(filename)),
        timestamp_(std::move(timestamp)),
        digester_(ac::PeDigestOptions{alg, page_hashes, /*keep_cert_table=*/false}) {}

  Status consume(std::string_view chunk) override {
    // A PE we cannot parse is the client's problem: 4xx with the reason, not relic's 500
    // (docs/architecture.md, failure mode 12).
    auto st = digester_.update({reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size()});
    if (!st.ok()) return Error(ErrorCode::bad_request, "not a PE file we can sign: " + st.error().message);
    return {};
  }

  asio::awaitable<http::Response> finish(RequestContext& ctx) override {
    auto t0 = Clock::now();
    auto pe = digester_.finish();
    if (!pe.ok())
      co_return relic_problem(400, "https://relic.sas.com/bad-request",
                              "not a PE file we can sign: " + pe.error().message);
    const ServedKey& key = *key_.served;
    const KeyConfig& kc = *key_.config;
    // Policy (docs/policy.md): rules were checked before the upload; here the approval or the quota.
    bool held = kc.has_policy && needs_approval(kc.policy, ctx.identity.client->roles);
    HeldRequest request;
    if (held) {
      HeldRequest proto = held_request(ctx, *pe);
      HoldOutcome outcome = co_await hold_upload(svc_, ctx, proto);
      if (outcome.response) co_return std::move(*outcome.response);
      request = std::move(outcome.request);
      if (request.state() == "signed") co_return patch_response(*pe, request.info.signature);
    } else if (kc.policy.has_quota()) {
      auto st = svc_.quotas->take(ctx.identity.fingerprint, kc.name, kc.policy, std::time(nullptr));
      if (!st.ok()) co_return relic_quota_exceeded(st.error());
    }
    // Everything the blocking build needs, owned by one object: only a shared_ptr crosses the
    // coroutine boundary (GCC 12 mishandles closures with captures stored in coroutine frames).
    auto task = std::make_shared<SignTask>();
    task->token = key_.token;
    task->deadline = std::min(ctx.deadline, Clock::now() + std::chrono::seconds(
                                                               svc_.config.tokens.at(key_.config->token).timeout));
    task->ec = key.description.key.type == KeyType::ec;
    task->key_name = key.name;
    task->pe = std::move(pe).value();
    for (const auto& c : key.chain) task->chain.push_back(c.get());
    task->options = options_;
    task->timestamp = timestamp_;
    std::function<Result<Bytes>()> work = std::bind(&run_sign_task, task);
    auto signed_data = co_await run_blocking<Result<Bytes>>(svc_, work);
    if (!signed_data.ok() && held) (void)svc_.approvals->finish(request.info.id, signed_data, epoch_now());
    if (!signed_data.ok() && !held && kc.policy.has_quota())
      svc_.quotas->give_back(ctx.identity.fingerprint, kc.name, std::time(nullptr));
    if (!signed_data.ok()) {
      const Error& e = signed_data.error();
      spdlog::warn("pe-coff sign failed: key={} client={} file={}: {}", key.name, ctx.identity.name(), filename_,
                   e.message);
      if (task->timestamp_error) co_return timestamp_failed(e);
      if (e.code == ErrorCode::timeout) co_return text_response(504, "");
      if (e.http_status == 503) co_return relay_problem(e);
      if (e.ckr == CKR_KEY_FUNCTION_NOT_PERMITTED)
        co_return relic_problem(400, "https://relic.sas.com/key-usage", e.message, "Incorrect Key Usage");
      co_return relic_unhandled();
    }
    auto patch = ac::make_pe_patch(task->pe, *signed_data);
    if (!patch.ok()) co_return relic_problem(400, "https://relic.sas.com/bad-request", patch.error().message);
    auto blob = ac::binpatch::serialize(*patch);
    if (!blob.ok()) co_return relic_unhandled();
    nlohmann::json extra;
    extra["pe-coff.pagehashes"] = page_hashes_;
    extra["content-type"] = "application/x-binary-patch";
    extra["perf.size.in"] = task->pe.file_size;
    extra["perf.size.patch"] = blob->size();
    if (timestamp_) audit_timestamp(task->timestamp_info, extra);
    extra["perf.elapsed.ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    if (held) {
      extra["request_id"] = request.info.id;
      extra["approved_by"] = request.info.decided_by;
      if (kc.policy.has_quota())
        (void)svc_.quotas->take(ctx.identity.fingerprint, kc.name, kc.policy, std::time(nullptr), true);
    }
    auto st = record_signature(svc_, ctx, key_name_, key, "pe-coff", hash_info(alg_).relic_name, filename_, extra);
    // Stored after the audit record: a retry of the same file gets this SignedData, never a new signature.
    if (held) (void)svc_.approvals->finish(request.info.id, st.ok() ? signed_data : Result<Bytes>(st.error()),
                                            epoch_now());
    if (!st.ok()) co_return relic_unhandled();
    co_return binpatch_response(*blob);
  }

 private:
  static http::Response binpatch_response(const Bytes& blob) {
    http::Response r;
    r.status = 200;
    r.set("Content-Type", "application/x-binary-patch");  // compared for exact equality by the client (§7)
    r.body.assign(blob.begin(), blob.end());
    return r;
  }

  // The patch for a SignedData made earlier for the same file (a retry of an approved request).
  static http::Response patch_response(const ac::PeInfo& pe, const Bytes& signed_data) {
    auto patch = ac::make_pe_patch(pe, signed_data);
    if (!patch.ok()) return relic_problem(400, "https://relic.sas.com/bad-request", patch.error().message);
    auto blob = ac::binpatch::serialize(*patch);
    if (!blob.ok()) return relic_unhandled();
    return binpatch_response(*blob);
  }

  HeldRequest held_request(const RequestContext& ctx, const ac::PeInfo& pe) const {
    HeldRequest h;
    h.info.key = key_.config->name;
    h.info.client = ctx.identity.name();
    h.info.client_fingerprint = ctx.identity.fingerprint;
    h.info.mechanism = "pe-coff";
    h.info.digest = hash_info(alg_).name;
    h.info.input_sha256 = to_hex(hash(HashAlg::sha256, pe.image_digest));
    h.info.filename = filename_;
    h.info.filesize = pe.file_size;
    h.kind = "pe-coff";
    h.mech = key_.served->description.key.type == KeyType::ec ? CKM_ECDSA : CKM_RSA_PKCS;
    // The same file with the same options is the same request (what gets signed also depends on them).
    h.input = pe.image_digest;
    std::string opts = std::string(page_hashes_ ? "1" : "0") + (timestamp_ ? "t" : "") + "\n" + options_.description +
                       "\n" + options_.url;
    h.input.insert(h.input.end(), opts.begin(), opts.end());
    h.digest_name = hash_info(alg_).relic_name;
    h.client_entry = ctx.identity.client ? ctx.identity.client->name : "";
    h.idem = request_identity(ctx.identity.fingerprint, h);
    h.expires = epoch_now() + key_.config->policy.approvaltimeout;
    return h;
  }

  Service& svc_;
  Service::KeyRef key_;
  std::string key_name_;
  HashAlg alg_;
  bool page_hashes_;
  ac::SignOptions options_;
  std::string filename_;
  std::optional<ac::TimestampOptions> timestamp_;
  ac::PeDigester digester_;
};

Result<std::unique_ptr<BodyConsumer>> make_pecoff(const SignerContext& c) {
  bool page_hashes = relic_flag(c, "page-hashes");
  if (page_hashes && !ac::page_hash_alg_for(c.digest))
    return Error(ErrorCode::bad_request, "page hashes need SHA-1 or SHA-256");
  ac::SignOptions options;
  if (auto* d = c.param("description")) options.description = *d;
  if (auto* u = c.param("desc-url")) options.url = *u;
  ASSIGN_OR_RETURN(auto timestamp, timestamp_for(c));
  const std::string* filename = c.param("filename");
  return std::unique_ptr<BodyConsumer>(new PeCoffSigner(c.service, c.key, c.key_name, c.digest, page_hashes, options,
                                                        filename ? *filename : std::string(), std::move(timestamp)));
}

}  // namespace

void register_pecoff(Service& svc) { svc.signers["pe-coff"] = make_pecoff; }

}  // namespace p11relay::daemon
