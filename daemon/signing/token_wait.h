// How a request waits for a token: a coroutine awaits a signature without holding a thread
// (token_sign), a library callback on the blocking pool waits for one (token_sign_blocking), and the
// network thread may sign on a fast idle token itself while a standby thread covers for it (IoStandby).
// Only the signing service (signing_service.h) calls these.
#pragma once

#include "daemon/signing/signing_token.h"

#include <asio.hpp>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

namespace p11relay::daemon {

// While a token call runs on the network thread (token_sign with a standby), this thread stands by:
// if the call holds the network thread for more than kTakeOver (a hung token), it serves the
// io_context itself until the call returns, so other connections, the deadline sweeper (504 for
// the hung request) and the health checks go on. It ticks only while such calls happen.
class IoStandby {
 public:
  explicit IoStandby(asio::io_context& io);
  ~IoStandby();  // before the io_context goes
  IoStandby(const IoStandby&) = delete;
  IoStandby& operator=(const IoStandby&) = delete;
  // One token call at a time: false when another one is running (then queue for a worker instead).
  bool enter();
  void leave();
  static constexpr auto kTakeOver = std::chrono::milliseconds(20);

 private:
  void main();
  asio::io_context& io_;
  std::atomic<Clock::rep> since_{0};      // start of the running call, 0 when none
  std::atomic<Clock::rep> last_enter_{0};
  std::atomic<bool> ticking_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// Awaits a signature from a token, giving up at `deadline` with a 504 (the token job is then
// dropped if it has not started). The caller resumes on its executor or, when the token has nothing
// else queued, on the token's worker thread; the deadline is enforced by expire_token_waits.
// With `here` (a solo connection on the network thread), a fast idle token signs right on this
// thread instead of waking a worker (Token::sign_here): one thread hop and two context switches less
// per signature.
asio::awaitable<Result<Bytes>> token_sign(const std::shared_ptr<SigningToken>& token, const SignJob& job,
                                          IoStandby* here = nullptr);
// Answers every token_sign whose deadline has passed (the server's sweeper calls it every 100 ms).
void expire_token_waits(Clock::time_point now);

// Synchronous signing from a non-io thread (library callbacks such as authenticode::RawSigner):
// queues on the token and waits, at most until job.deadline.
Result<Bytes> token_sign_blocking(SigningToken& token, SignJob job);

}  // namespace p11relay::daemon
