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
  bool first = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto ttl = std::chrono::seconds(config_.key_cache_seconds);
    if (fetched_ && std::chrono::steady_clock::now() - *fetched_ < ttl) return;
    first = !baseline_;
  }
  refresh_locked(first);
}

bool Module::view_from_disk() {
  std::lock_guard<std::mutex> g(mu_);
  return from_disk_;
}

void Module::refresh_from_daemon() {
  std::lock_guard<std::mutex> r(refresh_mu_);
  refresh_locked(false);
}

void Module::mark_stale() {
  std::lock_guard<std::mutex> g(mu_);
  fetched_.reset();
}

namespace {

std::string token_problem_text(const relay::TokenProblem& p) {
  std::string why = p.code == "token-login-failed" ? "its login to the token was refused" : "the token is not present";
  return "the appliance cannot use its token '" + p.token.label + "' (" + why + "): " + p.detail +
         "; the slot shows no token until the appliance's operator fixes it";
}

}  // namespace

void Module::refresh_locked(bool may_use_kept) {
  auto t0 = std::chrono::steady_clock::now();
  bool kept = false;
  auto listing = may_use_kept ? transport_->list_keys_kept(&kept) : transport_->list_keys();
  // No request was needed: the first signature's connection is begun now, while the program goes on.
  if (kept) transport_->start_connecting();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  if (!listing.ok()) {
    const Error& e = listing.error();
    SHIM_LOG(warning, "GET /v1/keys failed after " + std::to_string(ms) + " ms: " + e.message +
                          " (keeping the previous key list)");
    // The daemon answers 503 token-not-present while it cannot open a token (docs/relay-api.md).
    if (e.ckr == CKR_TOKEN_NOT_PRESENT) notice("token list", "the appliance cannot use its token: " + e.message);
    std::lock_guard<std::mutex> g(mu_);
    fetched_ = std::chrono::steady_clock::now();  // back off for keycacheseconds, then try again
    return;
  }
  clear_notice("token list");
  std::vector<std::string> warnings;
  auto built = build_tokens(listing->keys, ids_, warnings);
  for (const auto& w : warnings) SHIM_LOG(warning, w);
  SHIM_LOG(debug, std::string(kept ? "key list kept on disk: " : "GET /v1/keys: ") +
                      std::to_string(listing->keys.size()) + " keys on " + std::to_string(built.size()) +
                      " tokens in " + std::to_string(ms) + " ms");
  for (const auto& t : built) clear_notice("token " + t->desc.label);
  for (const auto& p : listing->unavailable) notice("token " + p.token.label, token_problem_text(p));
  std::lock_guard<std::mutex> g(mu_);
  merge_locked(built, listing->unavailable);
  fetched_ = std::chrono::steady_clock::now();
  from_disk_ = kept;
}

// The new key list replaces the tokens it names; a token it no longer names keeps its slot without a
// token, and so does a token the daemon cannot use (`problems`).
void Module::merge_locked(const std::vector<std::shared_ptr<TokenView>>& built,
                          const std::vector<relay::TokenProblem>& problems) {
  std::map<CK_SLOT_ID, bool> before;
  for (const auto& [id, t] : tokens_) before[id] = t->present;
  std::set<CK_SLOT_ID> seen;
  for (const auto& t : built) {
    seen.insert(t->slot_id);
    if (!tokens_.count(t->slot_id)) slot_order_.push_back(t->slot_id);
    tokens_[t->slot_id] = t;
  }
  for (const auto& p : problems) {
    CK_SLOT_ID id = problem_slot_locked(p.token);
    if (!seen.insert(id).second) continue;  // some of its keys are served after all
    auto down = std::make_shared<TokenView>();
    down->slot_id = id;
    down->desc = tokens_.count(id) ? tokens_[id]->desc : p.token;
    down->present = false;
    down->problem = p.code == "token-login-failed" ? "login refused" : "not present";
    if (!tokens_.count(id)) slot_order_.push_back(id);
    tokens_[id] = down;
  }
  for (auto& [id, t] : tokens_) {
    if (seen.count(id) || !t->present) continue;
    auto gone = std::make_shared<TokenView>();
    gone->slot_id = id;
    gone->desc = t->desc;
    gone->present = false;
    t = gone;
  }
  queue_events_locked(before);
  baseline_ = true;
}

// The daemon names a token it cannot use by its configured label and serial only: the slot this process
// already shows for that token if any, else one derived from what is known.
CK_SLOT_ID Module::problem_slot_locked(const relay::TokenDescription& t) {
  for (const auto& [id, tok] : tokens_)
    if (tok->desc.label == t.label && (t.serial.empty() || tok->desc.serial == t.serial)) return id;
  return ids_.slot_id(t);
}

void Module::queue_events_locked(const std::map<CK_SLOT_ID, bool>& before) {
  if (!baseline_) return;
  bool any = false;
  for (const auto& [id, t] : tokens_) {
    auto it = before.find(id);
    bool was = it != before.end() && it->second;
    if (was == t->present) continue;
    if (std::find(events_.begin(), events_.end(), id) == events_.end()) events_.push_back(id);
    any = true;
    SHIM_LOG(info, "slot " + std::to_string(id) + ": token '" + t->desc.label + (t->present ? "' appeared" : "' vanished"));
  }
  if (any) event_cv_.notify_all();
}

std::optional<CK_SLOT_ID> Module::take_event() {
  std::lock_guard<std::mutex> g(mu_);
  if (events_.empty()) return std::nullopt;
  CK_SLOT_ID id = events_.front();
  events_.pop_front();
  return id;
}

bool Module::wait_event(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  event_cv_.wait_for(lock, d, [&] { return shut_down_ || !events_.empty(); });
  return !shut_down_;
}

void Module::shutdown() {
  std::lock_guard<std::mutex> g(mu_);
  shut_down_ = true;
  event_cv_.notify_all();
}

std::vector<CK_SLOT_ID> Module::slot_ids(bool token_present) {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<CK_SLOT_ID> out;
  for (auto id : slot_order_)
    if (!token_present || tokens_.at(id)->present) out.push_back(id);
  return out;
}

std::shared_ptr<const TokenView> Module::token(CK_SLOT_ID slot) {
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

std::shared_ptr<Session> Module::open_session(CK_SLOT_ID slot, CK_FLAGS flags, std::shared_ptr<const TokenView> token) {
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
