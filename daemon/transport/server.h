// The TLS listener: Asio + OpenSSL, one coroutine per connection while it shakes hands or has requests to read
// (an idle one only waits in the reactor: Server::park), HTTP/1.1 with keep-alive, limits and timeouts (header,
// body, idle, write), mutual TLS identity computed once per connection.
#pragma once

#include "daemon/transport/handshake_gate.h"
#include "daemon/transport/router.h"
#include "daemon/service.h"

#include <asio.hpp>
#include <asio/ssl.hpp>

#include <atomic>
#include <memory>
#include <mutex>
#include <unordered_set>

namespace p11relay::daemon {

struct TlsConn;

Result<std::shared_ptr<asio::ssl::context>> make_server_tls(const ServerConfig& cfg);

class Server {
 public:
  Server(asio::io_context& io, Service& service, Router& router);
  // Binds the TLS listener (server.listen), or adopts the listening socket `fd` when one was passed
  // (socket activation; `address` then only names it in messages). Returns the bound port.
  Result<unsigned short> listen_tls(const std::string& address, int fd = -1);
  // Plaintext listener for GET /metrics and GET /health only (server.listenmetrics).
  Result<unsigned short> listen_metrics(const std::string& address, int fd = -1);
  void start();
  void stop();
  size_t connections() const { return reg_->connections.load(); }

 private:
  asio::awaitable<void> accept_loop(asio::ip::tcp::acceptor& acceptor);
  struct Link;
  asio::awaitable<void> serve(asio::ip::tcp::socket socket);
  // Runs the connection's requests until it is idle or done.
  asio::awaitable<void> requests(std::unique_ptr<Link> link);
  // An idle connection keeps no coroutine: its Link waits for the socket to become readable (or runs its
  // requests at once when OpenSSL already holds bytes of the next one).
  void park(std::unique_ptr<Link> link);
  asio::awaitable<bool> handshake(TlsConn& conn, const std::string& peer_ip);
  asio::awaitable<void> serve_metrics(asio::ip::tcp::socket socket);
  asio::awaitable<void> metrics_accept_loop();
  asio::awaitable<void> sweep_loop();
  Result<std::unique_ptr<asio::ip::tcp::acceptor>> bind(const std::string& address, const char* what, int fd);
  // Whether `c` has been the only connection sending requests for the last kSoloAfter (RequestContext::solo).
  bool solo(const TlsConn* c);

  asio::io_context& io_;
  Service& svc_;
  Router& router_;
  std::shared_ptr<asio::ssl::context> tls_;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> acceptors_;
  std::unique_ptr<asio::ip::tcp::acceptor> metrics_acceptor_;
  // What a connection's coroutine touches when it ends. Each connection holds it too: at shutdown the
  // io_context destroys the coroutines still waiting (in a handshake, on a token) after the Server is gone.
  struct Registry {
    explicit Registry(HandshakeGate::Limits limits) : gate(limits) {}
    std::atomic<size_t> connections{0};  // open TCP connections on the TLS listeners
    std::atomic<size_t> established{0};  // those past the TLS handshake (server.maxconnections)
    HandshakeGate gate;                  // those still in it
    std::mutex mu;
    std::unordered_set<TlsConn*> conns;  // open TLS connections, for the deadline sweeper
  };
  std::shared_ptr<Registry> reg_;
  std::atomic<unsigned> accept_seq_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<const TlsConn*> last_requester_{nullptr};
  std::atomic<Clock::rep> crowded_until_{0};
};

}  // namespace p11relay::daemon
