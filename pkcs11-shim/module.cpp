#include "pkcs11-shim/module.h"

#include "pkcs11-shim/log.h"

#include <unistd.h>

#include <algorithm>

namespace p11relay::shim {

void SignOp::update(std::span<const std::uint8_t> part) {
  if (hasher) hasher->update(part);
  else data.insert(data.end(), part.begin(), part.end());
}

Bytes SignOp::finish() {
  if (hasher) return hasher->finish();
  return data;
}

Module::Module(client::Config config, std::unique_ptr<Transport> transport)
    : pid_(::getpid()), config_(std::move(config)), transport_(std::move(transport)) {}

void Module::refresh_if_stale() {
  std::lock_guard<std::mutex> r(refresh_mu_);
  {
    std::lock_guard<std::mutex> g(mu_);
    auto ttl = std::chrono::seconds(config_.key_cache_seconds);
    if (fetched_ && std::chrono::steady_clock::now() - *fetched_ < ttl) return;
  }
  refresh_locked();
}

void Module::refresh_locked() {
  auto t0 = std::chrono::steady_clock::now();
  auto keys = transport_->list_keys();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  if (!keys.ok()) {
    SHIM_LOG(warning, "GET /v1/keys failed after " + std::to_string(ms) + " ms: " + keys.error().message +
                          " (keeping the previous key list)");
    std::lock_guard<std::mutex> g(mu_);
    fetched_ = std::chrono::steady_clock::now();  // back off for keycacheseconds, then try again
    return;
  }
  std::vector<std::string> warnings;
  auto built = build_tokens(*keys, ids_, warnings);
  for (const auto& w : warnings) SHIM_LOG(warning, w);
  SHIM_LOG(debug, "GET /v1/keys: " + std::to_string(keys->size()) + " keys on " + std::to_string(built.size()) +
                      " tokens in " + std::to_string(ms) + " ms");
  std::lock_guard<std::mutex> g(mu_);
  std::set<CK_SLOT_ID> seen;
  for (auto& t : built) {
    seen.insert(t->slot_id);
    if (!tokens_.count(t->slot_id)) slot_order_.push_back(t->slot_id);
    tokens_[t->slot_id] = t;
  }
  for (auto& [id, t] : tokens_) {
    if (seen.count(id) || !t->present) continue;
    auto gone = std::make_shared<Token>();
    gone->slot_id = id;
    gone->desc = t->desc;
    gone->present = false;
    t = gone;
  }
  fetched_ = std::chrono::steady_clock::now();
}

std::vector<CK_SLOT_ID> Module::slot_ids(bool token_present) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<CK_SLOT_ID> out;
  for (auto id : slot_order_)
    if (!token_present || tokens_.at(id)->present) out.push_back(id);
  return out;
}

std::shared_ptr<const Token> Module::token(CK_SLOT_ID slot) {
  bool never;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (auto it = tokens_.find(slot); it != tokens_.end()) return it->second;
    never = !fetched_.has_value();
  }
  // An application may go straight to a slot ID it remembers (stable IDs make that work).
  if (never) {
    refresh_if_stale();
    std::lock_guard<std::mutex> g(mu_);
    if (auto it = tokens_.find(slot); it != tokens_.end()) return it->second;
  }
  return nullptr;
}

std::shared_ptr<Session> Module::open_session(CK_SLOT_ID slot, CK_FLAGS flags, std::shared_ptr<const Token> token) {
  auto s = std::make_shared<Session>();
  s->slot = slot;
  s->flags = flags;
  s->token = std::move(token);
  std::lock_guard<std::mutex> g(mu_);
  s->handle = next_session_++;
  sessions_[s->handle] = s;
  return s;
}

std::shared_ptr<Session> Module::session(CK_SESSION_HANDLE h) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = sessions_.find(h);
  return it == sessions_.end() ? nullptr : it->second;
}

bool Module::close_session(CK_SESSION_HANDLE h) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = sessions_.find(h);
  if (it == sessions_.end()) return false;
  CK_SLOT_ID slot = it->second->slot;
  sessions_.erase(it);
  // v2.40 §5.6: closing the application's last session with a token logs the user out.
  bool any = std::any_of(sessions_.begin(), sessions_.end(), [&](const auto& kv) { return kv.second->slot == slot; });
  if (!any) logged_in_.erase(slot);
  return true;
}

void Module::close_all_sessions(CK_SLOT_ID slot) {
  std::lock_guard<std::mutex> g(mu_);
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->second->slot == slot) it = sessions_.erase(it);
    else ++it;
  }
  logged_in_.erase(slot);
}

CK_ULONG Module::session_count(CK_SLOT_ID slot, bool rw_only) {
  std::lock_guard<std::mutex> g(mu_);
  return static_cast<CK_ULONG>(std::count_if(sessions_.begin(), sessions_.end(), [&](const auto& kv) {
    return kv.second->slot == slot && (!rw_only || (kv.second->flags & CKF_RW_SESSION));
  }));
}

bool Module::logged_in(CK_SLOT_ID slot) {
  std::lock_guard<std::mutex> g(mu_);
  return logged_in_.count(slot) != 0;
}

void Module::set_logged_in(CK_SLOT_ID slot, bool in) {
  std::lock_guard<std::mutex> g(mu_);
  if (in) logged_in_.insert(slot);
  else logged_in_.erase(slot);
}

}  // namespace p11relay::shim
