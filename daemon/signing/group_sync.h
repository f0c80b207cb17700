// Group commit for an append-only file (the audit log): writers append their line and number it, then ask
// to be told when it is durable. One thread runs fdatasync() in a loop while lines wait: every line written
// before a sync started is durable when that sync returns, so the lines written while one sync runs share
// the next one. Concurrent signatures then wait for one disk flush together instead of one after the other
// (docs/reliability.md "Audit durability").
#pragma once

#include "common/error.h"

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace p11relay::daemon {

class GroupSync {
 public:
  using SyncFn = std::function<int()>;      // fdatasync(fd): 0, or the errno
  using Done = std::function<void(Status)>;  // called on the sync thread (or the caller's, if already durable)

  // `written` lines are already in the file (and durable: they were there at open).
  GroupSync(SyncFn sync, std::uint64_t written);
  ~GroupSync();  // syncs what is still waiting, answers it, then the thread stops
  GroupSync(const GroupSync&) = delete;
  GroupSync& operator=(const GroupSync&) = delete;

  // Line n is in the file (write() returned). Numbers increase; the caller serialises its writes.
  void written(std::uint64_t n);
  // Line n is in the file and the caller synced it itself (no group commit, for comparison).
  void synced(std::uint64_t n);
  // done(ok) once a sync that started after line n was written returned 0; done(error) if that sync
  // failed (the line may not be on disk: the caller must not hand out what the line records).
  void when_durable(std::uint64_t n, Done done);
  Status wait_durable(std::uint64_t n);  // the same, blocking the calling thread
  std::uint64_t syncs() const;           // fdatasync calls so far

 private:
  void run();
  bool answer(std::uint64_t n, Status* out) const;  // under mu_: is line n's fate known?

  SyncFn sync_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t written_ = 0, synced_ = 0, failed_upto_ = 0, syncs_ = 0;
  int failed_errno_ = 0;
  std::vector<std::pair<std::uint64_t, Done>> waiting_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace p11relay::daemon
