// Admission of connections that have not finished their TLS handshake ("pending" ones). Anybody who can
// reach the port can open them, without any credential, so they get a budget of their own apart from
// server.maxconnections (which counts connections that finished mutual TLS): an outsider's idle or slow
// connections can then never take the place of an authenticated client.
//
// A silent connection costs about 4 KiB (a socket and a coroutine; no TLS state until the client sends),
// so the budgets are large and a flood of a few thousand connections is simply held until its deadline:
// dropping a connection only makes an attacker open the next one, and that churn is what slows others.
// When a budget is full, a new connection is not refused: the oldest pending connection is dropped to
// make room, first among those that have not even sent a complete ClientHello ("silent"), then among
// those stalled in the middle of the handshake. A legitimate client sends its ClientHello at once and
// finishes within a round trip or two, so a flood of idle or slow connections keeps evicting itself.
// Per source address the same applies with a smaller budget, so one address cannot evict the pending
// connections of others. Thread-safe; the eviction callback runs under the gate's lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>

namespace p11relay::daemon {

class HandshakeGate {
 public:
  struct Limits {
    std::size_t total = 16384;      // server.maxhandshakes
    std::size_t per_source = 8192;  // server.maxhandshakespersource
  };
  using Evict = std::function<void()>;

  explicit HandshakeGate(Limits limits) : limits_(limits) {}

  // Registers a new pending connection from `source`, first evicting (calling `evict` of) the connection
  // that must make room, if a budget is full. Returns the ticket for hello() and leave().
  std::uint64_t admit(const std::string& source, Evict evict);
  // The connection's ClientHello has arrived: it is now evicted only after every silent one.
  void hello(std::uint64_t ticket);
  // The handshake finished or failed, or the connection closed. No-op for an evicted ticket.
  void leave(std::uint64_t ticket);

  // Three quarters of a budget in use: new connections get a shorter handshake deadline.
  bool under_pressure(const std::string& source) const;
  std::size_t pending() const;
  std::uint64_t evicted() const;

 private:
  struct Entry {
    std::string source;
    bool hello = false;
    Evict evict;
  };
  struct Ages {  // tickets in admission order, i.e. oldest first
    std::set<std::uint64_t> silent, talking;
    std::size_t size() const { return silent.size() + talking.size(); }
    std::uint64_t oldest() const { return silent.empty() ? *talking.begin() : *silent.begin(); }
  };
  void evict_locked(std::uint64_t ticket);
  void erase_locked(std::uint64_t ticket);

  Limits limits_;
  mutable std::mutex mu_;
  std::uint64_t next_ = 1;
  std::uint64_t evicted_ = 0;
  std::map<std::uint64_t, Entry> entries_;
  Ages all_;
  std::unordered_map<std::string, Ages> by_source_;
};

}  // namespace p11relay::daemon
