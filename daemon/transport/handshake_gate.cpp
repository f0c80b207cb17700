#include "daemon/transport/handshake_gate.h"

namespace p11relay::daemon {

std::uint64_t HandshakeGate::admit(const std::string& source, Evict evict) {
  std::lock_guard lock(mu_);
  if (auto it = by_source_.find(source); it != by_source_.end() && it->second.size() >= limits_.per_source &&
                                         it->second.size() > 0)
    evict_locked(it->second.oldest());
  if (all_.size() >= limits_.total && all_.size() > 0) evict_locked(all_.oldest());
  std::uint64_t ticket = next_++;
  entries_.emplace(ticket, Entry{source, false, std::move(evict)});
  all_.silent.insert(ticket);
  by_source_[source].silent.insert(ticket);
  return ticket;
}

void HandshakeGate::hello(std::uint64_t ticket) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(ticket);
  if (it == entries_.end() || it->second.hello) return;
  it->second.hello = true;
  Ages& src = by_source_[it->second.source];
  for (Ages* a : {&all_, &src}) {
    a->silent.erase(ticket);
    a->talking.insert(ticket);
  }
}

void HandshakeGate::leave(std::uint64_t ticket) {
  std::lock_guard lock(mu_);
  erase_locked(ticket);
}

bool HandshakeGate::under_pressure(const std::string& source) const {
  std::lock_guard lock(mu_);
  if (4 * all_.size() >= 3 * limits_.total) return true;
  auto it = by_source_.find(source);
  return it != by_source_.end() && 4 * it->second.size() >= 3 * limits_.per_source;
}

std::size_t HandshakeGate::pending() const {
  std::lock_guard lock(mu_);
  return all_.size();
}

std::uint64_t HandshakeGate::evicted() const {
  std::lock_guard lock(mu_);
  return evicted_;
}

void HandshakeGate::evict_locked(std::uint64_t ticket) {
  auto it = entries_.find(ticket);
  if (it == entries_.end()) return;
  Evict evict = std::move(it->second.evict);
  erase_locked(ticket);
  ++evicted_;
  if (evict) evict();
}

void HandshakeGate::erase_locked(std::uint64_t ticket) {
  auto it = entries_.find(ticket);
  if (it == entries_.end()) return;
  auto src = by_source_.find(it->second.source);
  for (Ages* a : {&all_, &src->second}) {
    a->silent.erase(ticket);
    a->talking.erase(ticket);
  }
  if (src->second.size() == 0) by_source_.erase(src);
  entries_.erase(it);
}

}  // namespace p11relay::daemon
