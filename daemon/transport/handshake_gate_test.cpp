#include "daemon/transport/handshake_gate.h"

#include <doctest/doctest.h>

#include <vector>

using namespace p11relay::daemon;

namespace {
// Admits `n` connections from `source`, recording in `out` which of them were evicted.
std::vector<std::uint64_t> fill(HandshakeGate& g, const std::string& source, int n, std::vector<int>& out, int base) {
  std::vector<std::uint64_t> tickets;
  for (int i = 0; i < n; ++i) tickets.push_back(g.admit(source, [&out, id = base + i] { out.push_back(id); }));
  return tickets;
}
}  // namespace

TEST_CASE("handshake gate: a full source evicts its own oldest silent connection") {
  HandshakeGate g({100, 4});
  std::vector<int> evicted;
  auto t = fill(g, "10.0.0.1", 4, evicted, 0);
  CHECK(evicted.empty());
  fill(g, "10.0.0.1", 1, evicted, 4);
  CHECK(evicted == std::vector<int>{0});
  CHECK(g.pending() == 4);
  g.leave(t[0]);  // already evicted: no-op
  CHECK(g.pending() == 4);
  CHECK(g.evicted() == 1);
}

TEST_CASE("handshake gate: a connection that sent its ClientHello goes after every silent one") {
  HandshakeGate g({100, 3});
  std::vector<int> evicted;
  auto t = fill(g, "a", 3, evicted, 0);
  g.hello(t[0]);
  fill(g, "a", 2, evicted, 3);
  CHECK(evicted == std::vector<int>{1, 2});  // 0 is older but talking
  fill(g, "a", 2, evicted, 5);
  CHECK(evicted == std::vector<int>{1, 2, 3, 4});
  g.hello(t[0]);  // twice: no change
  CHECK(g.pending() == 3);
}

TEST_CASE("handshake gate: stalled talkers are evicted oldest first when nobody is silent") {
  HandshakeGate g({100, 2});
  std::vector<int> evicted;
  auto t = fill(g, "a", 2, evicted, 0);
  g.hello(t[1]);
  g.hello(t[0]);
  fill(g, "a", 1, evicted, 2);
  CHECK(evicted == std::vector<int>{0});
}

TEST_CASE("handshake gate: one source cannot evict another's pending connections") {
  HandshakeGate g({6, 3});
  std::vector<int> evicted;
  fill(g, "victim", 3, evicted, 100);
  fill(g, "attacker", 50, evicted, 0);
  for (int id : evicted) CHECK(id < 100);
  CHECK(g.pending() == 6);
  CHECK(g.evicted() == 47);
}

TEST_CASE("handshake gate: the total budget evicts the oldest silent connection of any source") {
  HandshakeGate g({4, 4});
  std::vector<int> evicted;
  auto a = fill(g, "a", 2, evicted, 0);
  fill(g, "b", 2, evicted, 2);
  g.hello(a[0]);
  fill(g, "c", 1, evicted, 4);
  CHECK(evicted == std::vector<int>{1});
  CHECK(g.pending() == 4);
}

TEST_CASE("handshake gate: leave frees the budget, and pressure starts at three quarters of it") {
  HandshakeGate g({8, 4});
  std::vector<int> evicted;
  auto t = fill(g, "a", 2, evicted, 0);
  CHECK_FALSE(g.under_pressure("a"));
  t.push_back(fill(g, "a", 1, evicted, 2)[0]);
  CHECK(g.under_pressure("a"));  // 3 of the source's 4
  CHECK_FALSE(g.under_pressure("b"));
  fill(g, "b", 3, evicted, 3);
  CHECK(g.under_pressure("c"));  // 6 of 8 in all
  for (auto x : t) g.leave(x);
  CHECK(g.pending() == 3);
  CHECK_FALSE(g.under_pressure("a"));
  fill(g, "a", 4, evicted, 6);
  CHECK(evicted.empty());
}
