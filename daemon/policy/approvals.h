// Signing requests held for an administrator's approval (docs/policy.md "Approval workflow").
// Each request lives in memory and in STATEDIR/requests/{id}.json (written durably before any answer
// depends on it), so pending requests survive a restart and nothing is signed twice: a request moves
// to "signing" on disk before the token is called and to "signed", with the signature, after.
// Keyed by ids and names only (never pointers into a Config), so a config reload does not touch it.
#pragma once

#include "common/relay_api.h"
#include "daemon/signing/audit.h"

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace p11relay::daemon {

// Internal states beyond the wire's pending | signed | denied | expired: "approved" (a relic request
// waiting for its relic client to collect it) and "signing" (the token call is under way; shown as
// "approved" on the wire).
struct HeldRequest {
  relay::ApprovalRequest info;  // the REQUEST object; info.state is the internal state
  std::string kind = "relay";   // "relay", or the relic sigtype ("pe-coff")
  CK_MECHANISM_TYPE mech = 0;
  Bytes input;  // relay: what the token signs; relic: the file's Authenticode digest
  std::optional<relay::PssParams> pss;
  std::string digest_name;  // for the signature's audit record ("SHA-256")
  std::string idem;         // hex SHA-256 of (client, key, kind, mechanism, params, input)
  int64_t created = 0, expires = 0;  // epoch seconds
  std::string client_entry;  // the submitter's clients: entry (its roles decide whether it may still sign)
  std::string approver_fingerprint;

  const std::string& state() const { return info.state; }
  bool live() const;  // pending, approved or signing
  // Waiting for a decision or for its relic client: expires at `expires` (one being signed does not).
  bool can_expire() const { return live() && state() != "signing"; }
  bool due(int64_t now) const { return can_expire() && now >= expires; }
};

// Idempotency key: the same client asking the same key to sign the same thing.
std::string request_identity(const std::string& client_fingerprint, const HeldRequest& r);
// The wire view: internal states mapped, the signature only for the submitter.
relay::ApprovalRequest wire_view(const HeldRequest& r, bool for_submitter);
std::string rfc3339(int64_t epoch_seconds);

// JSON of the state file, and back (a corrupted file is an Error, never a crash).
std::string encode_held(const HeldRequest& r);
Result<HeldRequest> decode_held(std::string_view text);

// The body of POST /v1/requests/{id}/approve ({"comment": …}, optional) or /deny ({"reason": …},
// required): the text, at most 500 characters. An empty body is no text.
Result<std::string> decode_decision_body(std::string_view body, const char* field, bool required);
// The rule on that text wherever it comes from (the relay API's JSON, the web UI's form).
Result<std::string> check_decision_text(std::string text, const char* field, bool required);

class Approvals {
 public:
  // dir: STATEDIR/requests; audit may be null (no audit file configured).
  Approvals(std::string dir, AuditLog* audit, std::string hostname);

  // Reads every state file: pending past expiry → expired (audited); "signing" → back to pending (the
  // daemon died during the token call: nobody got that signature, an approver decides again);
  // "approved" past expiry → expired; decided requests older than 7 days are deleted; an unreadable
  // file is renamed to *.bad and reported. Returns the problems found (for the log).
  std::vector<std::string> load(int64_t now);

  // The live or signed request of the same identity (created = false), else `proto` persisted as a new
  // pending request and audited (created = true).
  Result<HeldRequest> submit(HeldRequest proto, int64_t now, bool& created);
  std::optional<HeldRequest> get(const std::string& id, int64_t now);
  // The live or signed request of this identity, if any.
  std::optional<HeldRequest> find_identity(const std::string& idem, int64_t now);
  // Oldest first; `all` includes decided ones.
  std::vector<HeldRequest> list(bool all, int64_t now);

  // pending → signing (relay) or approved (relic), audited. Refuses self-approval and decided requests.
  // The caller has checked that the approver may approve this key.
  Result<HeldRequest> approve(const std::string& id, const std::string& approver, const std::string& approver_fp,
                              const std::string& comment, int64_t now);
  Result<HeldRequest> deny(const std::string& id, const std::string& approver, const std::string& approver_fp,
                           const std::string& reason, int64_t now);
  // relic: approved → signing, by the request that will sign it (only one wins).
  Result<HeldRequest> claim(const std::string& id, int64_t now);
  // signing → signed (with the signature) or, when the token failed, back to where it came from.
  Status finish(const std::string& id, const Result<Bytes>& signature, int64_t now);

  // Calls wake() once when the request leaves `state` (at once, returning false, if it already has).
  bool watch(const std::string& id, const std::string& state, std::function<void()> wake);

  // Expires (audited, waiters woken) every request past its expiry, so nobody has to read it first.
  // For the server's 100 ms sweep: one atomic load until the earliest expiry is due.
  void expire_due(int64_t now);

  size_t size();

  // Drops every watcher without waking it: at shutdown, once the io_context has stopped, because the
  // watchers hold timers of that io_context, which is destroyed before this object.
  void drop_watchers();

 private:
  std::optional<HeldRequest> lookup_locked(const std::string& id, int64_t now);
  HeldRequest* find_identity_locked(const std::string& idem, int64_t now);
  Result<HeldRequest> decide(const std::string& id, const std::string& approver, const std::string& approver_fp,
                             const std::string& text, bool approve, int64_t now);
  Status set_state_locked(HeldRequest& r, const std::string& state, int64_t now);
  void expire_locked(HeldRequest& r, int64_t now);
  void notify_locked(const std::string& id);
  void arm_locked(const HeldRequest& r);
  void audit(const HeldRequest& r, const char* operation, const std::string& reason = {});

  std::string dir_;
  AuditLog* audit_;
  std::string hostname_;
  std::mutex mu_;
  std::map<std::string, HeldRequest> requests_;  // by id
  std::map<std::string, std::vector<std::function<void()>>> watchers_;
  // Earliest expiry of a request that can expire (0: not known yet); lowered under mu_.
  std::atomic<int64_t> next_expiry_{0};
};

}  // namespace p11relay::daemon
