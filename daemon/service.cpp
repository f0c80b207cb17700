#include "daemon/service.h"

#include "common/text.h"
#include "common/x509.h"

#include <asio/experimental/as_tuple.hpp>
#include <spdlog/spdlog.h>

#include <ctime>
#include <future>
#include <list>
#include <mutex>

namespace p11relay::daemon {

std::optional<Service::KeyRef> Service::lookup_key(const std::string& name, const ClientIdentity& id) const {
  if (!id.snapshot) return std::nullopt;
  const KeyConfig* kc = id.snapshot->config.resolve_key(name);
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

// A coroutine waiting on a token. The token's completion and the deadline (expire_token_waits)
// race, possibly on different threads; `done` lets exactly one of them resume the coroutine.
struct TokenWait {
  explicit TokenWait(asio::any_io_executor ex) : executor(std::move(ex)) {}
  virtual ~TokenWait() = default;
  virtual void complete(Result<Bytes> r) = 0;
  asio::any_io_executor executor;
  Clock::time_point deadline;
  std::atomic<bool> done{false};
  std::atomic<bool> initiating{true};
  std::list<std::shared_ptr<TokenWait>>::iterator pos;
};

// Pending waits, checked by the server's sweeper. A list node and two uncontended locks per
// signature are cheaper than a steady_timer per request, whose cancellation posts a handler and
// so wakes an io thread.
std::mutex waits_mu;
std::list<std::shared_ptr<TokenWait>> waits;

template <typename Handler>
struct SignWait : TokenWait {
  SignWait(Handler h, asio::any_io_executor ex) : TokenWait(std::move(ex)), handler(std::move(h)) {}
  Handler handler;

  void complete(Result<Bytes> r) override {
    if (done.exchange(true)) return;
    {
      std::lock_guard lock(waits_mu);
      waits.erase(pos);
    }
    std::move(handler)(std::move(r));
  }
};

}  // namespace

void expire_token_waits(Clock::time_point now) {
  std::vector<std::shared_ptr<TokenWait>> expired;
  {
    std::lock_guard lock(waits_mu);
    for (const auto& w : waits)
      if (w->deadline <= now) expired.push_back(w);
  }
  for (auto& w : expired)
    asio::post(w->executor, [w] { w->complete(Error(ErrorCode::timeout, "the token did not answer in time")); });
}

asio::awaitable<Result<Bytes>> token_sign(const std::shared_ptr<Token>& token, const SignJob& job, IoStandby* here) {
  auto ex = co_await asio::this_coro::executor;
  auto init = [token, ex, here](auto handler, SignJob job) {  // job copied: the caller's stays untouched
    using H = decltype(handler);
    auto wait = std::make_shared<SignWait<H>>(std::move(handler), ex);
    wait->deadline = job.deadline;
    {
      std::lock_guard lock(waits_mu);
      wait->pos = waits.insert(waits.end(), wait);
    }
    // On the token's worker thread with nothing else queued, resume the caller right there: it
    // writes its answer and goes back to waiting for the socket, which saves waking an io thread
    // (two context switches per signature). With jobs waiting, the worker goes on signing and the
    // io threads finish the request. A refusal inside sign() is posted too: the coroutine is not
    // resumed from inside its own initiation.
    auto done = [wait, token](Result<Bytes> r) {
      if (!wait->initiating.load() && token->queue_depth() == 0) return wait->complete(std::move(r));
      asio::post(wait->executor, [wait, r = std::move(r)]() mutable { wait->complete(std::move(r)); });
    };
    if (!here) {
      token->sign(std::move(job), std::move(done));
    } else {
      // Right after this handler, on this thread (defer: no other thread is woken), once the
      // coroutine is suspended: if the call hangs, the sweeper can still answer it (504) from the
      // standby thread.
      asio::defer(ex, [wait, token, here, job = std::move(job), done = std::move(done)]() mutable {
        std::optional<Result<Bytes>> r;
        if (here->enter()) {
          r = token->sign_here(job);
          here->leave();
        }
        if (!r) return token->sign(std::move(job), std::move(done));
        wait->complete(std::move(*r));
      });
    }
    wait->initiating = false;
  };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(Result<Bytes>)>(
      init, asio::use_awaitable, job);
}

IoStandby::IoStandby(asio::io_context& io) : io_(io), thread_([this] { main(); }) {}

IoStandby::~IoStandby() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool IoStandby::enter() {
  Clock::rep now = Clock::now().time_since_epoch().count(), none = 0;
  if (!since_.compare_exchange_strong(none, now)) return false;
  last_enter_.store(now);
  if (!ticking_.load()) {
    {
      std::lock_guard lock(mu_);
      ticking_ = true;
    }
    cv_.notify_one();
  }
  return true;
}

void IoStandby::leave() { since_.store(0); }

void IoStandby::main() {
  const Clock::rep take_over = std::chrono::duration_cast<Clock::duration>(kTakeOver).count();
  const Clock::rep quiet = std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(1)).count();
  std::unique_lock lock(mu_);
  while (!stop_) {
    if (!ticking_) {
      cv_.wait(lock, [&] { return stop_ || ticking_.load(); });
      continue;
    }
    if (cv_.wait_for(lock, kTakeOver / 2, [&] { return stop_; })) break;
    Clock::rep now = Clock::now().time_since_epoch().count(), call = since_.load();
    if (call != 0 && now - call >= take_over) {
      lock.unlock();
      spdlog::warn("a token call has held the network thread for {} ms: a standby thread serves the network until it returns",
                   kTakeOver.count());
      while (since_.load() == call && !io_.stopped()) io_.run_one_for(kTakeOver / 2);
      asio::post(io_, [] {});  // wakes the network thread if it went idle while this one held the reactor
      lock.lock();
    } else if (call == 0 && now - last_enter_.load() > quiet) {
      ticking_ = false;  // quiet: sleep until the next call (enter() wakes us)
      if (since_.load() != 0) ticking_ = true;  // an enter() that still saw us ticking
    }
  }
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
}  // namespace

asio::awaitable<Status> record_signature(Service& svc, const RequestContext& ctx, const std::string& key_name,
                                         const ServedKey& key, const std::string& operation,
                                         const std::string& digest_name, const std::string& filename,
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
  if (!ctx.proxy_ip.empty()) rec["client.proxy"] = ctx.proxy_ip;
  rec["client.name"] = ctx.identity.name();
  rec["client.fingerprint"] = ctx.identity.fingerprint;
  if (!ctx.identity.subject.empty() && ctx.identity.client && !ctx.identity.client->certificate.empty())
    rec["client.dn"] = ctx.identity.subject;
  if (!filename.empty()) rec["client.filename"] = filename;
  if (key_name != key.name) rec["client.keyname"] = key_name;
  if (!rec.contains("outcome")) rec["outcome"] = "ok";
  if (svc.audit) {
    auto st = co_await audit_durably(*svc.audit, std::move(rec));
    if (!st.ok()) {
      spdlog::error("audit: {}", st.error().message);
      co_return st;
    }
  }
  double seconds = rec.contains("perf.elapsed.ms") && rec["perf.elapsed.ms"].is_number()
                       ? rec["perf.elapsed.ms"].get<double>() / 1000.0
                       : 0.0;
  svc.metrics.signature(key.name, ctx.identity.name(), "ok", seconds);
  // With an audit file, the audit line is the record; this one is for debugging (a write(2) less per
  // signature). Without one, it is the only trace and stays at info.
  spdlog::log(svc.audit ? spdlog::level::debug : spdlog::level::info, "signed: key={} client={} op={} digest={} file={}",
              key.name, ctx.identity.name(), operation, digest_name, log_escape(filename));
  co_return Status{};
}

}  // namespace p11relay::daemon
