#include "daemon/service.h"

#include "common/x509.h"

#include <asio/experimental/as_tuple.hpp>
#include <spdlog/spdlog.h>

#include <ctime>
#include <future>

namespace p11relay::daemon {

std::optional<Service::KeyRef> Service::lookup_key(const std::string& name, const ClientIdentity& id) const {
  const KeyConfig* kc = config.resolve_key(name);
  if (!kc || kc->token.empty() || !allowed(id, *kc)) return std::nullopt;
  auto t = tokens.find(kc->token);
  if (t == tokens.end()) return std::nullopt;
  KeyRef ref;
  ref.config = kc;
  ref.token = t->second;
  ref.served = t->second->key(kc->name);
  return ref;
}

const std::string* SignerContext::param(const std::string& name) const {
  for (const auto& [k, v] : query)
    if (k == name) return &v;
  return nullptr;
}

namespace {

// Shared between the token's completion and the deadline timer; whichever comes first resumes the
// awaiting coroutine, on its own executor.
template <typename Handler>
struct SignWait {
  explicit SignWait(Handler h, asio::any_io_executor ex)
      : handler(std::move(h)), executor(std::move(ex)), timer(executor) {}
  Handler handler;
  asio::any_io_executor executor;
  asio::steady_timer timer;
  bool done = false;

  void complete(Result<Bytes> r) {
    if (done) return;
    done = true;
    timer.cancel();
    std::move(handler)(std::move(r));
  }
};

}  // namespace

asio::awaitable<Result<Bytes>> token_sign(const std::shared_ptr<Token>& token, const SignJob& job) {
  auto ex = co_await asio::this_coro::executor;
  auto init = [token, ex](auto handler, SignJob job) {  // job copied: the caller's stays untouched
    using H = decltype(handler);
    auto wait = std::make_shared<SignWait<H>>(std::move(handler), ex);
    wait->timer.expires_at(job.deadline);
    wait->timer.async_wait([wait](std::error_code ec) {
      if (ec) return;
      wait->complete(Error(ErrorCode::timeout, "the token did not answer in time"));
    });
    token->sign(std::move(job), [wait](Result<Bytes> r) {
      asio::post(wait->executor, [wait, r = std::move(r)]() mutable { wait->complete(std::move(r)); });
    });
  };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(Result<Bytes>)>(
      init, asio::use_awaitable, job);
}

Result<Bytes> token_sign_blocking(Token& token, SignJob job) {
  auto promise = std::make_shared<std::promise<Result<Bytes>>>();
  auto future = promise->get_future();
  auto deadline = job.deadline;
  token.sign(std::move(job), [promise](Result<Bytes> r) { promise->set_value(std::move(r)); });
  if (future.wait_until(deadline) != std::future_status::ready)
    return Error(ErrorCode::timeout, "the token did not answer in time");
  return future.get();
}

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
}  // namespace

Status record_signature(Service& svc, const RequestContext& ctx, const std::string& key_name, const ServedKey& key,
                        const std::string& operation, const std::string& digest_name, const std::string& filename,
                        nlohmann::json extra) {
  nlohmann::json rec = std::move(extra);
  rec["sig.timestamp"] = rfc3339_now();
  rec["sig.hostname"] = svc.hostname;
  rec["sig.keyname"] = key.name;
  rec["sig.type"] = operation;
  if (!digest_name.empty()) rec["sig.hash"] = digest_name;
  if (!key.chain.empty()) {
    rec["sig.x509.subject"] = key.leaf_subject;
    rec["sig.x509.issuer"] = key.leaf_issuer;
    rec["sig.x509.fingerprint"] = key.leaf_sha1;
  }
  rec["client.ip"] = ctx.peer_ip;
  rec["client.name"] = ctx.identity.name();
  rec["client.fingerprint"] = ctx.identity.fingerprint;
  if (!ctx.identity.subject.empty() && ctx.identity.client && !ctx.identity.client->certificate.empty())
    rec["client.dn"] = ctx.identity.subject;
  if (!filename.empty()) rec["client.filename"] = filename;
  if (key_name != key.name) rec["client.keyname"] = key_name;
  if (!rec.contains("outcome")) rec["outcome"] = "ok";
  if (svc.audit) {
    auto st = svc.audit->append(rec);
    if (!st.ok()) {
      spdlog::error("audit: {}", st.error().message);
      return st;
    }
  }
  double seconds = rec.contains("perf.elapsed.ms") && rec["perf.elapsed.ms"].is_number()
                       ? rec["perf.elapsed.ms"].get<double>() / 1000.0
                       : 0.0;
  svc.metrics.signature(key.name, ctx.identity.name(), "ok", seconds);
  spdlog::info("signed: key={} client={} op={} digest={} file={}", key.name, ctx.identity.name(), operation,
               digest_name, filename);
  return {};
}

}  // namespace p11relay::daemon
