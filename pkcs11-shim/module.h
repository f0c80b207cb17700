// The one global object of the shim (made in C_Initialize, pid noted, no atfork work):
// configuration, transport, the token/object snapshot, sessions and login state.
#pragma once

#include "client/client.h"
#include "common/digest.h"
#include "pkcs11-shim/mechanisms.h"
#include "pkcs11-shim/object_store.h"
#include "pkcs11-shim/transport.h"

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

namespace p11relay::shim {

// A sign or verify operation: local state only (docs/architecture.md, invariant 3), so a daemon restart
// between C_SignInit and C_Sign costs nothing.
struct SignOp {
  const SignMech* mech = nullptr;
  std::shared_ptr<const KeyInfo> key;
  std::optional<relay::PssParams> pss;
  std::optional<Hasher> hasher;  // hash-and-sign mechanisms
  Bytes data;                    // raw mechanisms (CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_ECDSA)
  bool multipart = false;

  void update(std::span<const std::uint8_t> part);
  // The relay input: the digest of everything (hash-and-sign), or the accumulated raw data.
  Bytes finish();
};

struct DigestOp {
  Hasher hasher;
  bool multipart = false;
  explicit DigestOp(HashAlg alg) : hasher(alg) {}
};

struct FindOp {
  std::vector<CK_OBJECT_HANDLE> results;
  size_t pos = 0;
};

struct Session {
  CK_SESSION_HANDLE handle = 0;
  CK_SLOT_ID slot = 0;
  CK_FLAGS flags = 0;
  std::shared_ptr<const TokenView> token;  // the object view this session was opened with

  std::mutex mu;  // guards the operations below
  std::optional<SignOp> sign;
  std::optional<SignOp> verify;
  std::optional<DigestOp> digest;
  std::optional<FindOp> find;
};

class Module {
 public:
  Module(client::Config config, std::unique_ptr<Transport> transport);

  pid_t pid() const { return pid_; }
  const client::Config& config() const { return config_; }
  Transport& transport() { return *transport_; }

  // Fetches GET /v1/keys again if the cached answer is older than keycacheseconds (or never came).
  // A failure keeps the previous view and is logged; it is never fatal to the caller.
  // The first list of the process may be the one the client kept on disk (remote.keylistcache): no
  // request; every signature then carries its key's key_version, so a stale one is refused, not signed.
  void refresh_if_stale();
  // Whether the view is the kept list, not yet confirmed by the daemon.
  bool view_from_disk();
  // Asks the daemon now (a search the kept list cannot answer may name a key it does not know yet).
  void refresh_from_daemon();
  // The key list is asked for again before its next use (after a 412 key-changed).
  void mark_stale();
  std::vector<CK_SLOT_ID> slot_ids(bool token_present);
  // nullptr for a slot this process never saw. A slot whose token vanished stays, with present=false.
  std::shared_ptr<const TokenView> token(CK_SLOT_ID slot);

  std::shared_ptr<Session> open_session(CK_SLOT_ID slot, CK_FLAGS flags, std::shared_ptr<const TokenView> token);
  std::shared_ptr<Session> session(CK_SESSION_HANDLE h);
  bool close_session(CK_SESSION_HANDLE h);
  void close_all_sessions(CK_SLOT_ID slot);
  // Sessions of this application with the slot's token; `rw_only` counts the R/W ones.
  CK_ULONG session_count(CK_SLOT_ID slot, bool rw_only = false);

  bool logged_in(CK_SLOT_ID slot);
  void set_logged_in(CK_SLOT_ID slot, bool in);

  // C_WaitForSlotEvent (v2.40 §5.5): slots whose token appeared or vanished between two key lists
  // (the first list of the process is the baseline, not an event). take_event pops the oldest;
  // wait_event blocks up to `d` for one and answers false once shutdown() (C_Finalize) was called.
  std::optional<CK_SLOT_ID> take_event();
  bool wait_event(std::chrono::milliseconds d);
  void shutdown();

 private:
  void refresh_locked(bool may_use_kept);
  void merge_locked(const std::vector<std::shared_ptr<TokenView>>& built, const std::vector<relay::TokenProblem>& problems);
  CK_SLOT_ID problem_slot_locked(const relay::TokenDescription& t);
  void queue_events_locked(const std::map<CK_SLOT_ID, bool>& before);

  pid_t pid_;
  client::Config config_;
  std::unique_ptr<Transport> transport_;
  IdAllocator ids_;

  std::mutex refresh_mu_;  // one fetch at a time; never held together with mu_ during I/O
  std::mutex mu_;
  std::map<CK_SLOT_ID, std::shared_ptr<const TokenView>> tokens_;
  std::vector<CK_SLOT_ID> slot_order_;
  std::optional<std::chrono::steady_clock::time_point> fetched_;
  bool from_disk_ = false;  // the view is the client's kept list (view_from_disk)
  std::map<CK_SESSION_HANDLE, std::shared_ptr<Session>> sessions_;
  CK_SESSION_HANDLE next_session_ = 1;
  std::set<CK_SLOT_ID> logged_in_;
  bool baseline_ = false;  // a key list was received once
  std::deque<CK_SLOT_ID> events_;
  bool shut_down_ = false;
  std::condition_variable event_cv_;
};

}  // namespace p11relay::shim
