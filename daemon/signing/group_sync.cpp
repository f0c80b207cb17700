#include "daemon/signing/group_sync.h"

#include <algorithm>
#include <cstring>
#include <future>

namespace p11relay::daemon {

GroupSync::GroupSync(SyncFn sync, std::uint64_t written)
    : sync_(std::move(sync)), written_(written), synced_(written), thread_([this] { run(); }) {}

GroupSync::~GroupSync() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void GroupSync::written(std::uint64_t n) {
  std::lock_guard lock(mu_);
  if (n > written_) written_ = n;
}

void GroupSync::synced(std::uint64_t n) {
  std::lock_guard lock(mu_);
  written_ = std::max(written_, n);
  synced_ = std::max(synced_, n);
}

// A line is known durable when a sync covering it succeeded and no failed sync covered it: after a failed
// fdatasync the kernel may have dropped the dirty pages, so a later successful one proves nothing for them.
bool GroupSync::answer(std::uint64_t n, Status* out) const {
  if (n <= failed_upto_) {
    *out = internal_error(std::string("audit fdatasync failed: ") + std::strerror(failed_errno_));
    return true;
  }
  if (n <= synced_) {
    *out = {};
    return true;
  }
  return false;
}

void GroupSync::when_durable(std::uint64_t n, Done done) {
  Status st;
  {
    std::lock_guard lock(mu_);
    if (!answer(n, &st)) {
      waiting_.emplace_back(n, std::move(done));
      cv_.notify_one();
      return;
    }
  }
  done(std::move(st));
}

Status GroupSync::wait_durable(std::uint64_t n) {
  std::promise<Status> result;
  auto fut = result.get_future();
  when_durable(n, [&result](Status st) { result.set_value(std::move(st)); });
  return fut.get();
}

std::uint64_t GroupSync::syncs() const {
  std::lock_guard lock(mu_);
  return syncs_;
}

void GroupSync::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !waiting_.empty(); });
    if (waiting_.empty()) return;  // stopping, nothing left to answer
    // Every line numbered up to `target` was written before this sync starts, so it covers them.
    std::uint64_t target = written_;
    lock.unlock();
    int rc;
    do rc = sync_();
    while (rc == EINTR);
    lock.lock();
    ++syncs_;
    if (rc == 0) synced_ = std::max(synced_, target);
    else failed_upto_ = std::max(failed_upto_, target), failed_errno_ = rc;
    std::vector<std::pair<std::uint64_t, Done>> ready, still;
    for (auto& w : waiting_) (w.first <= target ? ready : still).push_back(std::move(w));
    waiting_ = std::move(still);
    lock.unlock();
    for (auto& [n, done] : ready) {
      Status st;
      {
        std::lock_guard inner(mu_);
        answer(n, &st);
      }
      done(std::move(st));
    }
    lock.lock();
  }
}

}  // namespace p11relay::daemon
