// Signing policy per key (docs/policy.md): which digests, mechanisms, relic sigtypes and
// time windows are allowed, whether a signature needs an administrator's approval, and quotas per
// (client, key). Deny by default: MD5, SHA-1 and raw input that is not a digest are refused unless
// the key's policy lists them. Plain data and pure functions; the mutable quota counters live in
// Quotas (one per Service, keyed by names, so a config reload keeps them).
#pragma once

#include "common/digest.h"
#include "common/error.h"
#include "common/relay_api.h"

#include <p11-kit/pkcs11.h>

#include <cstdint>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace p11relay::daemon {

// Digest classes as a bit set: bit i is HashAlg(i); kDigestNone is input that is no recognisable digest.
constexpr uint32_t digest_bit(HashAlg a) { return 1u << static_cast<unsigned>(a); }
inline constexpr uint32_t kDigestNone = 1u << 6;
inline constexpr uint32_t kDefaultDigests =
    digest_bit(HashAlg::sha224) | digest_bit(HashAlg::sha256) | digest_bit(HashAlg::sha384) | digest_bit(HashAlg::sha512);

// "Mon-Fri 07:00-19:00", "Sat,Sun 10:00-12:00", "22:00-06:00" (no days: every day; an end before the
// start runs past midnight). Local time of the daemon.
struct TimeWindow {
  uint8_t days = 0x7f;  // bit d = tm_wday d (0 = Sunday)
  int start = 0, end = 0;  // minutes since midnight
  std::string text;
};
Result<TimeWindow> parse_window(std::string_view text);
bool in_window(const TimeWindow& w, const std::tm& local);

struct KeyPolicy {
  bool approval = false;  // approval: required
  std::vector<std::string> autoapprove;        // roles that skip approval
  std::vector<std::string> approvers{"admin"};  // roles that may approve or deny
  int approvaltimeout = 600;                   // seconds
  uint32_t digests = kDefaultDigests;
  std::vector<CK_MECHANISM_TYPE> mechanisms;  // empty: all the key offers
  std::vector<std::string> sigtypes;          // empty: all served
  std::vector<TimeWindow> windows;            // empty: always
  int perhour = 0, perday = 0;                // 0: unlimited
  bool has_quota() const { return perhour > 0 || perday > 0; }
};

// "sha256" → its bit, "none" → kDigestNone; nullopt for an unknown name.
std::optional<uint32_t> digest_bit_by_name(std::string_view name);
std::string digest_class_name(uint32_t bit);  // "sha256", "none"
std::optional<HashAlg> digest_alg(uint32_t bit);  // the algorithm of one digest bit; nullopt for none

// The digest a relay sign request signs (docs/policy.md "Digest detection"): CKM_RSA_PKCS → the
// DigestInfo's algorithm (none without one); PSS → params.hash; ECDSA → the request's digest field
// when its length matches, else by input length (16 md5, 20 sha1, 28 sha224, 32, 48, 64).
uint32_t detect_digest(CK_MECHANISM_TYPE mech, const relay::SignRequest& req);

// What is being asked, as the policy sees it. mechanism 0 / empty sigtype: not applicable.
struct PolicyQuery {
  uint32_t digest = 0;
  CK_MECHANISM_TYPE mechanism = 0;
  std::string_view sigtype;
  std::time_t now = 0;
};

// Digest, mechanism, sigtype and time window rules: a policy-denied Error naming the rule, or ok.
Status check_policy(const KeyPolicy& p, const PolicyQuery& q);

bool shares_role(const std::vector<std::string>& a, const std::vector<std::string>& b);
// Held for an approver unless the key auto-approves or the client has an autoapprove role.
inline bool needs_approval(const KeyPolicy& p, const std::vector<std::string>& client_roles) {
  return p.approval && !shares_role(p.autoapprove, client_roles);
}

// Signatures per (client, key) in fixed UTC hours and days, persisted to a file (if given) on every
// change so a restart does not reset them. Only keys with a quota ever reach it.
class Quotas {
 public:
  explicit Quotas(std::string file = {}) : file_(std::move(file)) {}
  // Reads the file; a missing file is empty, a corrupted one is reported and replaced by empty counters.
  Status load(std::time_t now);
  // Counts one signature if a slot is free (or `force`: an approved request is signed regardless);
  // else a quota Error with Retry-After = seconds until the window rolls over.
  Status take(const std::string& client, const std::string& key, const KeyPolicy& p, std::time_t now,
              bool force = false);
  // Would take() succeed now? (Held requests are checked when submitted and counted when signed.)
  Status check(const std::string& client, const std::string& key, const KeyPolicy& p, std::time_t now);
  // Undoes a take() whose signature failed.
  void give_back(const std::string& client, const std::string& key, std::time_t now);

 private:
  struct Counter {
    int64_t hour = 0, day = 0;  // window numbers (epoch seconds / 3600, / 86400)
    int in_hour = 0, in_day = 0;
  };
  Status check_locked(Counter& c, const KeyPolicy& p, std::time_t now);
  void save_locked();
  std::string file_;
  std::mutex mu_;
  std::map<std::string, Counter> counters_;  // key + '/' + client fingerprint
};

}  // namespace p11relay::daemon
