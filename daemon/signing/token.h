// One token, one owner (docs/architecture.md, invariant 5). A Token opens its PKCS#11 token once through
// libp11, logs in with the PIN from the daemon's config, finds the configured keys and their
// certificates, and runs signing jobs on its own worker threads (one PKCS#11 session each) from a
// bounded queue. It re-opens and re-logs-in by itself after device errors; a wrong PIN is never
// retried (a real token locks after a few tries).
#pragma once

#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"
#include "common/openssl_ptr.h"
#include "common/relay_api.h"
#include "common/x509.h"
#include "daemon/config/config.h"
#include "daemon/signing/signing_token.h"

#include <p11-kit/pkcs11.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace p11relay::daemon {

class VendorModule;  // a loaded PKCS#11 module (libp11 context + the module's function list)
struct SlotList;     // libp11's slot list of an open token
struct SlotListRelease {
  void operator()(SlotList* s) const noexcept;
};

class Token final : public SigningToken, public std::enable_shared_from_this<Token> {
 public:
  Token(TokenConfig config, std::vector<KeyConfig> keys);
  ~Token();
  Token(const Token&) = delete;
  Token& operator=(const Token&) = delete;

  // Opens the token, logs in, loads keys and starts the workers. Returns the first open's outcome;
  // on a transient failure the token keeps retrying in the background (state recovering).
  Status start() override;
  void stop() override;

  // Queues a signature. `done` runs on a worker thread (or inline when refused at once).
  void sign(SignJob job, Done done) override;
  // Signs on the calling thread when that costs no waiting and no thread hop: the token is ready,
  // nothing is queued, one of its numworkers sessions is free and its recent signatures took less
  // than kSignHereMax. nullopt: use sign(). A call that hangs holds the calling thread (see
  // IoStandby in token_wait.h for the network thread).
  std::optional<Result<Bytes>> sign_here(const SignJob& job) override;
  static constexpr std::chrono::microseconds kSignHereMax{5000};
  // Cheap liveness check through the queue (so a hung token fails its health check).
  void ping(Clock::time_point deadline, std::function<void(Status)> done) override;

  TokenState state() const override;
  std::string state_reason() const override;
  const std::string& name() const override { return config_.name; }
  // Snapshot of the served keys (empty until the token was opened once).
  std::vector<std::shared_ptr<const ServedKey>> keys() const override;
  std::shared_ptr<const ServedKey> key(const std::string& name) const override;
  size_t queue_depth() const override;

 private:
  struct Job {
    enum Kind { sign, ping } kind = sign;
    SignJob sign_job;
    Done done;
    std::function<void(Status)> ping_done;
  };
  struct WorkerSession;

  Status open_locked();  // open + login + load keys; mu_ held
  Status login_locked(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot_id, bool login_required, CK_SESSION_HANDLE& s);
  void close_locked();
  void worker_main();
  void recovery_main();
  // A free session, (re)opened for the current generation; mu_ held, free_ not empty. On a
  // C_OpenSession failure the session goes back and the error is returned.
  Result<WorkerSession*> take_session_locked();
  void release_session(WorkerSession* ws, Clock::duration sign_time);
  Result<Bytes> sign_in(WorkerSession& ws, const SignJob& job);  // deadline, C_Sign, device errors
  Result<Bytes> run_sign(WorkerSession& ws, const SignJob& job);
  Status run_ping(WorkerSession& ws);
  void on_device_error(CK_RV rv, const std::string& where, uint64_t generation);
  static bool is_device_error(CK_RV rv);

  TokenConfig config_;
  std::vector<KeyConfig> key_configs_;

  mutable std::mutex mu_;
  std::condition_variable cv_;         // jobs or state changes for workers
  std::condition_variable recover_cv_; // wakes the recovery thread
  std::deque<Job> queue_;
  TokenState state_ = TokenState::starting;
  std::string reason_;
  bool stopping_ = false;
  uint64_t generation_ = 0;  // bumps on every successful open; workers re-open their sessions
  std::shared_ptr<VendorModule> module_;
  std::unique_ptr<SlotList, SlotListRelease> slots_;  // kept while the token is open
  CK_SLOT_ID slot_id_ = 0;
  std::vector<std::shared_ptr<const ServedKey>> keys_;
  // numworkers sessions, shared by the worker threads and sign_here: at most that many token calls
  // at once. Taken and given back under mu_.
  std::vector<std::unique_ptr<WorkerSession>> sessions_;
  std::vector<WorkerSession*> free_;
  Clock::duration sign_time_ = kSignHereMax;  // moving average of C_SignInit + C_Sign
  std::vector<std::thread> workers_;
  std::thread recovery_;
};

}  // namespace p11relay::daemon
