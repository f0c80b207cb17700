#include "daemon/policy/approvals.h"

#include "common/digest.h"
#include "common/mechanism.h"
#include "common/text.h"
#include "daemon/policy/statefile.h"

#include <nlohmann/json.hpp>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <limits>

namespace p11relay::daemon {
namespace {

using json = nlohmann::json;
constexpr int64_t kKeepDecided = 7 * 86400;  // decided requests are pruned after 7 days

std::string new_id() {
  uint8_t b[8];
  if (RAND_bytes(b, sizeof b) != 1) {
    // Cannot happen on Linux with a seeded pool; fall back to time-based uniqueness.
    auto t = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(t >> (8 * i));
  }
  return "r-" + to_hex(b);
}

// A request id as it may appear in a file name: "r-" + 16 lowercase hex digits.
bool valid_id(const std::string& id) {
  return id.size() == 18 && id.rfind("r-", 0) == 0 &&
         std::all_of(id.begin() + 2, id.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

bool HeldRequest::live() const { return state() == "pending" || state() == "approved" || state() == "signing"; }

std::string rfc3339(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string request_identity(const std::string& client_fingerprint, const HeldRequest& r) {
  json j = {client_fingerprint, r.info.key, r.kind, r.mech, to_hex(r.input)};
  if (r.pss) j.push_back({static_cast<int>(r.pss->hash), static_cast<int>(r.pss->mgf_hash), r.pss->salt_length});
  return to_hex(hash(HashAlg::sha256, to_bytes(j.dump())));
}

relay::ApprovalRequest wire_view(const HeldRequest& r, bool for_submitter) {
  relay::ApprovalRequest w = r.info;
  if (w.state == "signing") w.state = "approved";
  if (!for_submitter || w.state != "signed") w.signature.clear();
  return w;
}

std::string encode_held(const HeldRequest& r) {
  json j;
  j["request"] = json::parse(relay::encode_approval_request(r.info));
  j["kind"] = r.kind;
  j["mech"] = r.mech;
  j["input"] = base64_encode(r.input);
  if (r.pss)
    j["pss"] = {{"hash", hash_info(r.pss->hash).name},
                {"mgf", hash_info(r.pss->mgf_hash).name},
                {"salt_length", r.pss->salt_length}};
  j["digest_name"] = r.digest_name;
  j["idem"] = r.idem;
  j["created"] = r.created;
  j["expires"] = r.expires;
  j["client_entry"] = r.client_entry;
  if (!r.approver_fingerprint.empty()) j["approver_fingerprint"] = r.approver_fingerprint;
  return j.dump(1);
}

Result<HeldRequest> decode_held(std::string_view text) {
  json j = json::parse(text, nullptr, false);
  auto bad = [](const std::string& why) { return Error(ErrorCode::bad_json, "request state file: " + why); };
  if (j.is_discarded() || !j.is_object() || !j.contains("request")) return bad("not a JSON object with 'request'");
  HeldRequest r;
  ASSIGN_OR_RETURN(r.info, relay::decode_approval_request(j["request"].dump()));
  if (!valid_id(r.info.id)) return bad("bad id");
  try {
    r.kind = j.at("kind").get<std::string>();
    auto mech = json_integer(j, "mech"), created = json_integer(j, "created"), expires = json_integer(j, "expires");
    if (!mech || *mech < 0 || !created || !expires) return bad("mech, created and expires must be integers");
    r.mech = static_cast<CK_MECHANISM_TYPE>(*mech);
    r.created = *created;
    r.expires = *expires;
    auto input = base64_decode(j.at("input").get<std::string>());
    if (!input) return bad("bad input");
    r.input = *input;
    if (j.contains("pss")) {
      const auto& p = j["pss"];
      auto h = hash_by_name(p.at("hash").get<std::string>()), m = hash_by_name(p.at("mgf").get<std::string>());
      auto salt = json_integer(p, "salt_length");
      if (!h || !m || !salt || *salt < 0) return bad("bad pss parameters");
      r.pss = relay::PssParams{*h, *m, static_cast<unsigned long>(*salt)};
    }
    r.digest_name = j.value("digest_name", "");
    r.idem = j.at("idem").get<std::string>();
    r.client_entry = j.value("client_entry", "");
    r.approver_fingerprint = j.value("approver_fingerprint", "");
  } catch (const json::exception& e) {
    return bad(std::string("missing or mistyped field (") + e.what() + ")");
  }
  static const char* kStates[] = {"pending", "approved", "signing", "signed", "denied", "expired"};
  if (std::find(std::begin(kStates), std::end(kStates), r.info.state) == std::end(kStates)) return bad("unknown state");
  return r;
}

Result<std::string> decode_decision_body(std::string_view body, const char* field, bool required) {
  std::string text;
  if (!body.empty()) {
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return Error(ErrorCode::bad_json, "the body must be a JSON object");
    if (auto it = j.find(field); it != j.end() && !it->is_null()) {
      if (!it->is_string()) return Error(ErrorCode::bad_json, std::string("'") + field + "' must be a string");
      text = it->get<std::string>();
    }
  }
  return check_decision_text(std::move(text), field, required);
}

Result<std::string> check_decision_text(std::string text, const char* field, bool required) {
  if (required && text.empty()) return Error(ErrorCode::bad_request, std::string("'") + field + "' is required");
  if (text.size() > 500) return Error(ErrorCode::bad_request, std::string("'") + field + "' is longer than 500 characters");
  return text;
}

// ------------------------------------------------------------------------------------------------

Approvals::Approvals(std::string dir, AuditLog* audit, std::string hostname)
    : dir_(std::move(dir)), audit_(audit), hostname_(std::move(hostname)) {}

std::vector<std::string> Approvals::load(int64_t now) {
  std::vector<std::string> problems;
  std::lock_guard lock(mu_);
  for (const auto& path : list_state_files(dir_, ".json")) {
    auto text = read_state_file(path);
    Result<HeldRequest> r = text.ok() ? decode_held(*text) : Result<HeldRequest>(text.error());
    if (r.ok() && std::filesystem::path(path).stem() != r->info.id) r = Error(ErrorCode::bad_json, "file name is not its id");
    if (!r.ok()) {
      problems.push_back(path + ": " + r.error().message + " (moved to " + path + ".bad)");
      std::error_code ec;
      std::filesystem::rename(path, path + ".bad", ec);
      continue;
    }
    HeldRequest& h = requests_[r->info.id] = std::move(r).value();
    if (h.state() == "signing") {
      // The daemon stopped during the token call. The signature, if the token made one, reached
      // nobody; signing again without a fresh decision could sign twice: back to pending.
      h.info.decided_by.clear();
      h.info.decided_at.clear();
      h.approver_fingerprint.clear();
      h.expires = std::max(h.expires, now + 60);  // leave the approver a minute at least
      h.info.expires = rfc3339(h.expires);
      (void)set_state_locked(h, "pending", now);
      audit(h, "reset", "daemon restarted while signing; needs a new approval");
    }
    if (h.due(now)) expire_locked(h, now);
    if (!h.live() && now - h.created > kKeepDecided) {
      std::error_code ec;
      std::filesystem::remove(path, ec);
      requests_.erase(h.info.id);
    }
  }
  return problems;
}

HeldRequest* Approvals::find_identity_locked(const std::string& idem, int64_t now) {
  for (auto& [id, r] : requests_) {
    if (r.idem != idem) continue;
    if (r.due(now)) expire_locked(r, now);
    if (r.live() || r.state() == "signed") return &r;
  }
  return nullptr;
}

std::optional<HeldRequest> Approvals::find_identity(const std::string& idem, int64_t now) {
  std::lock_guard lock(mu_);
  HeldRequest* r = find_identity_locked(idem, now);
  return r ? std::optional<HeldRequest>(*r) : std::nullopt;
}

Result<HeldRequest> Approvals::submit(HeldRequest proto, int64_t now, bool& created) {
  std::lock_guard lock(mu_);
  if (HeldRequest* r = find_identity_locked(proto.idem, now)) {
    created = false;
    return *r;
  }
  // Decided requests are kept 7 days (retries get their answer), then dropped; new submissions are rare
  // enough to pay for the sweep.
  for (auto it = requests_.begin(); it != requests_.end();) {
    if (it->second.live() || now - it->second.created <= kKeepDecided) {
      ++it;
      continue;
    }
    std::error_code ec;
    std::filesystem::remove(dir_ + "/" + it->first + ".json", ec);
    it = requests_.erase(it);
  }
  do proto.info.id = new_id();
  while (requests_.count(proto.info.id));
  proto.created = now;
  proto.info.created = rfc3339(now);
  proto.info.expires = rfc3339(proto.expires);
  proto.info.state = "pending";
  HeldRequest& r = requests_[proto.info.id] = std::move(proto);
  auto st = write_state_file(dir_ + "/" + r.info.id + ".json", encode_held(r), /*durable=*/true);
  if (!st.ok()) {
    requests_.erase(r.info.id);
    return Error(ErrorCode::internal, "the request could not be stored: " + st.error().message);
  }
  audit(r, "request");
  arm_locked(r);
  created = true;
  return r;
}

std::optional<HeldRequest> Approvals::lookup_locked(const std::string& id, int64_t now) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return std::nullopt;
  HeldRequest& r = it->second;
  if (r.due(now)) expire_locked(r, now);
  return r;
}

std::optional<HeldRequest> Approvals::get(const std::string& id, int64_t now) {
  std::lock_guard lock(mu_);
  return lookup_locked(id, now);
}

std::vector<HeldRequest> Approvals::list(bool all, int64_t now) {
  std::lock_guard lock(mu_);
  std::vector<HeldRequest> out;
  for (auto& [id, r] : requests_) {
    if (r.due(now)) expire_locked(r, now);
    if (all || r.live()) out.push_back(r);
  }
  std::sort(out.begin(), out.end(), [](const HeldRequest& a, const HeldRequest& b) {
    return a.created != b.created ? a.created < b.created : a.info.id < b.info.id;
  });
  return out;
}

Result<HeldRequest> Approvals::approve(const std::string& id, const std::string& approver,
                                       const std::string& approver_fp, const std::string& comment, int64_t now) {
  return decide(id, approver, approver_fp, comment, /*approve=*/true, now);
}

Result<HeldRequest> Approvals::deny(const std::string& id, const std::string& approver,
                                    const std::string& approver_fp, const std::string& reason, int64_t now) {
  return decide(id, approver, approver_fp, reason, /*approve=*/false, now);
}

Result<HeldRequest> Approvals::decide(const std::string& id, const std::string& approver,
                                      const std::string& approver_fp, const std::string& text, bool approve,
                                      int64_t now) {
  std::lock_guard lock(mu_);
  if (!lookup_locked(id, now)) return Error(ErrorCode::forbidden, "no such request");
  HeldRequest& r = requests_.at(id);
  if (r.state() != "pending") return Error(ErrorCode::not_pending, "request " + id + " is " + wire_view(r, false).state);
  // Four eyes: a submitter who is also an approver may withdraw (deny) their request, not approve it.
  if (approve && r.info.client_fingerprint == approver_fp)
    return Error(ErrorCode::self_approval, "you submitted request " + id + ": another approver must approve it");
  HeldRequest before = r;
  r.info.decided_by = approver;
  r.info.decided_at = rfc3339(now);
  r.info.reason = text;
  r.approver_fingerprint = approver_fp;
  auto st = set_state_locked(r, !approve ? "denied" : r.kind == "relay" ? "signing" : "approved", now);
  if (!st.ok()) {
    r = before;
    return st.take_error();
  }
  audit(r, approve ? "approve" : "deny", text);
  return r;
}

Result<HeldRequest> Approvals::claim(const std::string& id, int64_t now) {
  std::lock_guard lock(mu_);
  auto it = requests_.find(id);
  if (it == requests_.end() || it->second.state() != "approved")
    return Error(ErrorCode::not_pending, "request " + id + " is not approved");
  RETURN_IF_ERROR(set_state_locked(it->second, "signing", now));
  return it->second;
}

Status Approvals::finish(const std::string& id, const Result<Bytes>& signature, int64_t now) {
  std::lock_guard lock(mu_);
  auto it = requests_.find(id);
  if (it == requests_.end() || it->second.state() != "signing") return internal_error("request " + id + " is not signing");
  HeldRequest& r = it->second;
  if (!signature.ok()) {
    // The token failed: nothing was signed. A relay request goes back to pending (approve again once
    // the token is back); a relic one stays approved for its client's retry.
    if (r.kind == "relay") {
      r.info.decided_by.clear();
      r.info.decided_at.clear();
      r.approver_fingerprint.clear();
    }
    return set_state_locked(r, r.kind == "relay" ? "pending" : "approved", now);
  }
  r.info.signature = *signature;
  return set_state_locked(r, "signed", now);
}

bool Approvals::watch(const std::string& id, const std::string& state, std::function<void()> wake) {
  std::lock_guard lock(mu_);
  auto it = requests_.find(id);
  if (it == requests_.end() || it->second.state() != state) return false;
  watchers_[id].push_back(std::move(wake));
  return true;
}

void Approvals::drop_watchers() {
  std::map<std::string, std::vector<std::function<void()>>> dropped;
  {
    std::lock_guard lock(mu_);
    dropped.swap(watchers_);
  }
}

size_t Approvals::size() {
  std::lock_guard lock(mu_);
  return requests_.size();
}

Status Approvals::set_state_locked(HeldRequest& r, const std::string& state, int64_t now) {
  (void)now;
  std::string old = r.info.state;
  r.info.state = state;
  auto st = write_state_file(dir_ + "/" + r.info.id + ".json", encode_held(r), /*durable=*/true);
  if (!st.ok()) {
    r.info.state = old;
    spdlog::error("approval request {}: {}", r.info.id, st.error().message);
    return Error(ErrorCode::internal, "the request state could not be stored");
  }
  notify_locked(r.info.id);
  arm_locked(r);
  return {};
}

void Approvals::expire_locked(HeldRequest& r, int64_t now) {
  if (set_state_locked(r, "expired", now).ok()) audit(r, "expire");
}

void Approvals::arm_locked(const HeldRequest& r) {
  if (r.can_expire() && r.expires < next_expiry_.load()) next_expiry_.store(r.expires);
}

void Approvals::expire_due(int64_t now) {
  if (now < next_expiry_.load(std::memory_order_relaxed)) return;
  std::lock_guard lock(mu_);
  int64_t next = std::numeric_limits<int64_t>::max();
  for (auto& [id, r] : requests_) {
    if (r.due(now)) expire_locked(r, now);
    // An expiry that could not be stored stays due: tried again a second later.
    if (r.can_expire()) next = std::min(next, r.due(now) ? now + 1 : r.expires);
  }
  next_expiry_.store(next);
}

void Approvals::notify_locked(const std::string& id) {
  auto it = watchers_.find(id);
  if (it == watchers_.end()) return;
  for (auto& wake : it->second) wake();
  watchers_.erase(it);
}

void Approvals::audit(const HeldRequest& r, const char* operation, const std::string& reason) {
  spdlog::info("approval: {} request={} key={} client={} by={} {}", operation, r.info.id, r.info.key, r.info.client,
               r.info.decided_by, log_escape(reason));
  if (!audit_) return;
  json rec;
  rec["sig.timestamp"] = rfc3339(static_cast<int64_t>(std::time(nullptr)));
  rec["sig.hostname"] = hostname_;
  rec["sig.keyname"] = r.info.key;
  rec["operation"] = operation;
  rec["request_id"] = r.info.id;
  rec["request.kind"] = r.kind;
  rec["request.mechanism"] = r.info.mechanism;
  rec["request.digest"] = r.info.digest;
  rec["request.input_sha256"] = r.info.input_sha256;
  if (!r.info.filename.empty()) rec["client.filename"] = r.info.filename;
  rec["client.name"] = r.info.client;
  rec["client.fingerprint"] = r.info.client_fingerprint;
  if (!r.info.decided_by.empty() && std::string(operation) != "request" && std::string(operation) != "expire") {
    rec["approver"] = r.info.decided_by;
    rec["approver.fingerprint"] = r.approver_fingerprint;
  }
  if (!reason.empty()) rec["reason"] = reason;
  rec["outcome"] = "ok";
  auto st = audit_->append(rec);
  if (!st.ok()) spdlog::error("audit: {}", st.error().message);
}

}  // namespace p11relay::daemon
