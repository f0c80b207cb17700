#include "daemon/signing/token_wait.h"

#include <spdlog/spdlog.h>

#include <future>
#include <list>
#include <mutex>

namespace p11relay::daemon {

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

asio::awaitable<Result<Bytes>> token_sign(const std::shared_ptr<SigningToken>& token, const SignJob& job, IoStandby* here) {
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

Result<Bytes> token_sign_blocking(SigningToken& token, SignJob job) {
  auto promise = std::make_shared<std::promise<Result<Bytes>>>();
  auto future = promise->get_future();
  auto deadline = job.deadline;
  token.sign(std::move(job), [promise](Result<Bytes> r) { promise->set_value(std::move(r)); });
  if (future.wait_until(deadline) != std::future_status::ready)
    return Error(ErrorCode::timeout, "the token did not answer in time");
  return future.get();
}

}  // namespace p11relay::daemon
