#include "daemon/signing/signing_service.h"

#include "common/text.h"

#include <spdlog/spdlog.h>

#include <ctime>

namespace p11relay::daemon {

namespace {
std::string rfc3339_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  std::tm tm{};
  gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%09ldZ", ts.tv_nsec);
  return buf;
}
// Writes the record, then suspends the coroutine (not the thread) until a fdatasync covering it returned.
asio::awaitable<Status> audit_durably(AuditLog& audit, nlohmann::json rec) {
  auto n = audit.write(std::move(rec));
  if (!n.ok()) co_return n.error();
  auto ex = co_await asio::this_coro::executor;
  auto init = [&audit, line = *n, ex](auto handler) {
    auto h = std::make_shared<decltype(handler)>(std::move(handler));
    audit.when_durable(line, [h, ex](Status st) {
      asio::post(ex, [h, st = std::move(st)]() mutable { std::move(*h)(std::move(st)); });
    });
  };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(Status)>(init, asio::use_awaitable);
}

// The audit record of one signature: the route's fields, then who signed what with which key.
nlohmann::json audit_record(const Service& svc, const SignOrder& o) {
  const ServedKey& key = *o.key.served;
  const RequestContext& ctx = o.ctx;
  nlohmann::json rec = o.extra;
  rec["sig.timestamp"] = rfc3339_now();
  rec["sig.hostname"] = svc.hostname;
  rec["sig.keyname"] = key.name;
  rec["sig.type"] = o.operation;
  if (!o.digest_name.empty()) rec["sig.hash"] = o.digest_name;
  if (!key.chain.empty()) {
    rec["sig.x509.subject"] = key.leaf_subject;
    rec["sig.x509.issuer"] = key.leaf_issuer;
    rec["sig.x509.fingerprint"] = key.leaf_sha1;
  }
  rec["client.ip"] = ctx.peer_ip;
  if (!ctx.proxy_ip.empty()) rec["client.proxy"] = ctx.proxy_ip;
  rec["client.name"] = ctx.identity.name();
  rec["client.fingerprint"] = ctx.identity.fingerprint;
  if (!ctx.identity.subject.empty() && ctx.identity.client && !ctx.identity.client->certificate.empty())
    rec["client.dn"] = ctx.identity.subject;
  if (!o.filename.empty()) rec["client.filename"] = o.filename;
  if (o.requested_name != key.name) rec["client.keyname"] = o.requested_name;
  if (!rec.contains("outcome")) rec["outcome"] = "ok";
  return rec;
}

Status take_quota(Service& svc, const SignOrder& o) {
  if (o.quota != QuotaUse::take) return {};
  const KeyConfig& kc = *o.key.config;
  return svc.quotas->take(o.ctx.identity.fingerprint, kc.name, kc.policy, std::time(nullptr));
}

// Nothing was signed (or nothing leaves): the quota taken for it is given back, the failure counted.
Error failed(Service& svc, const SignOrder& o, const Error& e) {
  const std::string& key = o.key.served->name;
  if (o.quota == QuotaUse::take) svc.quotas->give_back(o.ctx.identity.fingerprint, o.key.config->name, std::time(nullptr));
  spdlog::warn("sign failed: key={} client={} op={} file={}: {}", key, o.ctx.identity.name(), log_escape(o.operation),
               log_escape(o.filename), e.message);
  svc.metrics.signature(key, o.ctx.identity.name(), error_code_name(e.code), 0);
  return e;
}

// After the token: the route's answer, the audit record on disk, the quota and the metrics. Only then
// may the signature leave.
asio::awaitable<Result<Bytes>> conclude(Service& svc, SignOrder& o, Result<Bytes>& made, Clock::time_point t0) {
  if (!made.ok()) co_return failed(svc, o, made.error());
  auto elapsed = std::chrono::duration<double>(Clock::now() - t0);
  o.extra["perf.elapsed.ms"] = elapsed.count() * 1000.0;
  if (o.answer) {
    auto st = o.answer->build(*made, o.extra);
    if (!st.ok()) co_return failed(svc, o, st.error());
  }
  const ServedKey& key = *o.key.served;
  if (svc.audit) {
    nlohmann::json rec = audit_record(svc, o);
    auto st = co_await audit_durably(*svc.audit, std::move(rec));
    if (!st.ok()) {
      spdlog::error("audit: {}", st.error().message);
      co_return failed(svc, o, Error(ErrorCode::internal, "audit record could not be written"));
    }
  }
  if (o.quota == QuotaUse::count_after)
    (void)svc.quotas->take(o.ctx.identity.fingerprint, o.key.config->name, o.key.config->policy, std::time(nullptr), true);
  svc.metrics.signature(key.name, o.ctx.identity.name(), "ok", elapsed.count());
  // With an audit file, the audit line is the record; this one is for debugging (a write(2) less per
  // signature). Without one, it is the only trace and stays at info.
  spdlog::log(svc.audit ? spdlog::level::debug : spdlog::level::info, "signed: key={} client={} op={} digest={} file={}",
              key.name, o.ctx.identity.name(), log_escape(o.operation), o.digest_name, log_escape(o.filename));
  co_return std::move(made);
}

// What a build on the blocking pool needs to reach the token; only a shared_ptr of it crosses into
// the pool (GCC 12 mishandles closures with captures stored in coroutine frames).
struct BuildTask {
  std::shared_ptr<SigningToken> token;
  std::string key;
  Clock::time_point deadline;
  SignBuild build;
};

Result<Bytes> run_build(const std::shared_ptr<BuildTask>& t) {
  TokenSigner sign = [&t](CK_MECHANISM_TYPE mechanism, Bytes input) {
    SignJob job;
    job.key = t->key;
    job.mechanism = mechanism;
    job.input = std::move(input);
    job.deadline = t->deadline;
    return token_sign_blocking(*t->token, std::move(job));
  };
  return t->build(sign);
}

}  // namespace

Clock::time_point token_deadline(const Service& svc, const RequestContext& ctx, const KeyConfig& key) {
  return std::min(ctx.deadline, Clock::now() + std::chrono::seconds(svc.config.tokens.at(key.token).timeout));
}

asio::awaitable<Result<Bytes>> sign_digest(Service& svc, SignOrder& order, const SignJob& job, IoStandby* here) {
  if (auto st = take_quota(svc, order); !st.ok()) co_return st.error();
  auto t0 = Clock::now();
  std::shared_ptr<SigningToken> token = order.key.token;
  Result<Bytes> made = co_await token_sign(token, job, here);
  Result<Bytes> out = co_await conclude(svc, order, made, t0);
  co_return out;
}

asio::awaitable<Result<Bytes>> sign_built(Service& svc, SignOrder& order, const SignBuild& build) {
  if (auto st = take_quota(svc, order); !st.ok()) co_return st.error();
  auto t0 = Clock::now();
  auto task = std::make_shared<BuildTask>();
  task->token = order.key.token;
  task->key = order.key.served->name;
  task->deadline = token_deadline(svc, order.ctx, *order.key.config);
  task->build = build;
  std::function<Result<Bytes>()> work = std::bind(&run_build, task);
  Result<Bytes> made = co_await run_blocking<Result<Bytes>>(svc, work);
  Result<Bytes> out = co_await conclude(svc, order, made, t0);
  co_return out;
}

}  // namespace p11relay::daemon
