#include "daemon/signing/group_sync.h"

#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>

using namespace p11relay::daemon;

namespace {
// A disk: the lines "in the file" (page cache) and the lines a completed sync made durable.
struct FakeDisk {
  std::mutex mu;
  std::uint64_t in_file = 0, durable = 0;
  std::atomic<int> fail_next{0};
  int sync() {
    std::uint64_t covered;
    {
      std::lock_guard l(mu);
      covered = in_file;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(3));  // a disk flush
    if (fail_next.load() > 0) {
      fail_next--;
      return EIO;
    }
    std::lock_guard l(mu);
    durable = std::max(durable, covered);
    return 0;
  }
};
}  // namespace

TEST_CASE("group commit: no line is answered durable before a sync that covers it returned; syncs are shared") {
  FakeDisk disk;
  GroupSync gs([&] { return disk.sync(); }, 0);
  std::mutex write_mu;
  std::uint64_t next = 0;
  std::atomic<int> ok{0}, early{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 8; ++t)
    writers.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        std::uint64_t n;
        {
          std::lock_guard l(write_mu);  // the audit log serialises its writes
          n = ++next;
          std::lock_guard d(disk.mu);
          disk.in_file = n;
          gs.written(n);
        }
        auto st = gs.wait_durable(n);
        std::lock_guard d(disk.mu);
        if (st.ok()) ++ok;
        if (disk.durable < n) ++early;
      }
    });
  for (auto& w : writers) w.join();
  CHECK(ok == 200);
  CHECK(early == 0);
  // 8 writers waiting on a 3 ms flush share it: far fewer syncs than lines (one each would be 200).
  CHECK(gs.syncs() < 100);
  MESSAGE("200 lines, " << gs.syncs() << " fdatasync calls");
}

TEST_CASE("group commit: a failed sync fails every line it covered, for good; later lines are synced again") {
  FakeDisk disk;
  GroupSync gs([&] { return disk.sync(); }, 5);
  CHECK(gs.wait_durable(5).ok());  // already there at open: no sync needed
  CHECK(gs.syncs() == 0);
  disk.fail_next = 1;
  {
    std::lock_guard d(disk.mu);
    disk.in_file = 6;
  }
  gs.written(6);
  auto st = gs.wait_durable(6);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message.find("fdatasync failed") != std::string::npos);
  {
    std::lock_guard d(disk.mu);
    disk.in_file = 7;
  }
  gs.written(7);
  CHECK(gs.wait_durable(7).ok());
  CHECK_FALSE(gs.wait_durable(6).ok());  // a later good sync proves nothing for pages a failed one dropped
}

TEST_CASE("group commit: lines still waiting when it stops are synced and answered") {
  FakeDisk disk;
  std::atomic<int> answered{0};
  {
    GroupSync gs([&] { return disk.sync(); }, 0);
    for (std::uint64_t n = 1; n <= 3; ++n) {
      {
        std::lock_guard d(disk.mu);
        disk.in_file = n;
      }
      gs.written(n);
      gs.when_durable(n, [&](p11relay::Status st) { answered += st.ok(); });
    }
  }
  CHECK(answered == 3);
  CHECK(disk.durable == 3);
}
