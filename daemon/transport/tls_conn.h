// One accepted TLS connection of p11relayd's listener and the OpenSSL calls on it, shared by the listener
// (server.cpp: admission, handshake, deadline sweeper) and the request loop (request_loop.cpp).
#pragma once

#include "common/openssl_ptr.h"
#include "daemon/transport/handshake_gate.h"
#include "daemon/service.h"

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <openssl/ssl.h>

#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string_view>

namespace p11relay::daemon {

using asio::ip::tcp;
inline constexpr auto use_nothrow = asio::experimental::as_tuple(asio::use_awaitable);
// Read buffer of a connection while it reads a request (none while it waits for one).
inline constexpr size_t kReadChunk = 16 * 1024;

// One TLS connection. OpenSSL works on the socket itself (non-blocking, no BIO pair, no Asio stream
// buffers); the coroutine waits for readiness with async_wait only when OpenSSL asks for it. An idle
// connection holds no read buffer (SSL_MODE_RELEASE_BUFFERS, and ours is allocated per request).
// The connection's coroutine may be resumed on a token worker thread (see token_sign), so nothing
// here relies on a strand: the deadline is an atomic checked by the server's sweeper, which cuts
// the connection with shutdown(2) under `mu` (the socket is closed under the same mutex).
struct TlsConn {
  explicit TlsConn(tcp::socket s) : socket(std::move(s)) {}
  ~TlsConn() { close(); }
  tcp::socket socket;
  SSL_ptr ssl;
  std::atomic<Clock::rep> deadline{std::numeric_limits<Clock::rep>::max()};
  std::atomic<bool> timed_out{false};
  std::mutex mu;
  bool closed = false;  // under mu
  HandshakeGate* gate = nullptr;  // while the handshake runs: its ticket there
  std::uint64_t ticket = 0;

  void set_deadline(Clock::duration d) { deadline.store((Clock::now() + d).time_since_epoch().count(), std::memory_order_relaxed); }
  bool expired(Clock::rep now) const { return deadline.load(std::memory_order_relaxed) <= now; }
  // From the sweeper: wakes any pending wait; the coroutine then fails its next read or write.
  void expire() {
    std::lock_guard lock(mu);
    deadline.store(std::numeric_limits<Clock::rep>::max(), std::memory_order_relaxed);
    if (closed) return;
    timed_out = true;
    ::shutdown(socket.native_handle(), SHUT_RDWR);
  }
  void close() {
    std::lock_guard lock(mu);
    if (closed) return;
    closed = true;
    std::error_code ec;
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
  }
};

enum class TlsOp { handshake, read, write };

// Runs one OpenSSL call until it completes, waiting on the socket whenever OpenSSL wants to read or
// write. Returns its result (> 0), or 0 when the connection closed, failed or was cut by the sweeper.
asio::awaitable<int> tls_call(TlsConn& c, TlsOp op, char* data, size_t n);
// Writes all of `data`; false when the connection failed first.
asio::awaitable<bool> tls_write(TlsConn& c, std::string_view data);

}  // namespace p11relay::daemon
