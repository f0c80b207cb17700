#include "daemon/transport/server.h"

#include "common/openssl_ptr.h"
#include "common/x509.h"
#include "daemon/transport/request_loop.h"
#include "daemon/transport/router.h"
#include "daemon/transport/tls_conn.h"

#include <asio/experimental/as_tuple.hpp>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <array>
#include <cstring>
#include <ctime>
#include <limits>
#include <mutex>

namespace p11relay::daemon {


namespace {

int verify_callback(int preverify_ok, X509_STORE_CTX* ctx) {
  if (preverify_ok) return 1;
  // relic semantics (docs/relic-protocol.md §1): a client certificate is requested but not chain-verified
  // at the TLS layer; identity is decided by its public key afterwards. Still refuse what no chain
  // could make acceptable: keys below the security level, broken signatures.
  switch (X509_STORE_CTX_get_error(ctx)) {
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_HAS_EXPIRED:       // judged by the authenticator: 401, not a TLS alert
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_INVALID_PURPOSE:
      return 1;
    default:
      return 0;
  }
}

int alpn_select(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
                void*) {
  static const unsigned char kHttp11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* sel = nullptr;
  if (SSL_select_next_proto(&sel, outlen, kHttp11, sizeof kHttp11, in, inlen) == OPENSSL_NPN_NEGOTIATED) {
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;  // no common protocol: carry on without ALPN (HTTP/1.1)
}

constexpr auto kSweepInterval = std::chrono::milliseconds(100);
constexpr auto kSoloAfter = std::chrono::milliseconds(50);
// Handshake deadline for connections that arrive while the handshake gate is under pressure (over 3/4 of a
// budget, HandshakeGate::under_pressure), spread over one more second: long enough
// for a TLS 1.3 handshake with a client certificate over a slow WAN (2 round trips).
constexpr auto kHandshakeUnderPressure = std::chrono::seconds(3);

}  // namespace

namespace {

// A complete ClientHello arrived: the connection is talking, not just holding a socket (HandshakeGate).
int on_client_hello(SSL* ssl, int*, void*) {
  if (auto* c = static_cast<TlsConn*>(SSL_get_app_data(ssl)); c && c->gate) c->gate->hello(c->ticket);
  return SSL_CLIENT_HELLO_SUCCESS;
}

void log_failure(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("connection handler failed: {}", ex.what());
  }
}

std::string key_mismatch(const ServerConfig& cfg) {
  return "server.keyfile '" + cfg.keyfile + "' does not match server.certfile '" + cfg.certfile +
         "' (give the key of that certificate)";
}

}  // namespace

Result<std::shared_ptr<asio::ssl::context>> make_server_tls(const ServerConfig& cfg) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX* c = ctx->native_handle();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_security_level(c, 2);
  SSL_CTX_set_options(c, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  // TLS 1.2: forward-secret AEAD suites only. TLS 1.3 suites are all acceptable as they are.
  if (SSL_CTX_set_cipher_list(c, "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!RC4:!3DES") != 1)
    return config_error("cannot set TLS cipher list: " + openssl_error_string());
  if (SSL_CTX_use_certificate_chain_file(c, cfg.certfile.c_str()) != 1)
    return config_error("server.certfile '" + cfg.certfile + "': " + openssl_error_string());
  if (SSL_CTX_use_PrivateKey_file(c, cfg.keyfile.c_str(), SSL_FILETYPE_PEM) != 1) {
    // OpenSSL compares the key with the certificate already loaded and refuses one that does not match.
    unsigned long e = ERR_peek_last_error();
    bool mismatch = ERR_GET_LIB(e) == ERR_LIB_X509 &&
                    (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH || ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH);
    ERR_clear_error();
    if (mismatch) return config_error(key_mismatch(cfg));
    return config_error("server.keyfile '" + cfg.keyfile + "': cannot load the private key");
  }
  if (SSL_CTX_check_private_key(c) != 1) return config_error(key_mismatch(cfg));
  static const unsigned char kSid[] = "p11relayd";
  SSL_CTX_set_session_id_context(c, kSid, sizeof kSid - 1);
  // Resumption with stateless TLS 1.3 tickets only: a client reconnecting after an idle close saves the
  // certificate exchange and signatures, and the daemon keeps no per-session state (a server-side cache
  // would hold every session, peer certificate included, ~5 KiB per connection ever made). The ticket
  // carries the client certificate, and the identity is looked up again in the current config on every
  // connection (Server::identify), so a resumed session grants nothing a removed client could still use.
  // No 0-RTT: early data is never accepted (OpenSSL's default max_early_data of 0), so a replayed sign
  // request cannot sign twice. Ticket keys live in this context: a reload or restart just means a full
  // handshake.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_client_hello_cb(c, on_client_hello, nullptr);
  SSL_CTX_set_num_tickets(c, 1);
  SSL_CTX_set_max_early_data(c, 0);
  SSL_CTX_set_timeout(c, 3600);
  if (!cfg.clientca.empty()) {
    // Optional CA-verified mode: the TLS layer itself requires a certificate chaining to clientca.
    if (SSL_CTX_load_verify_locations(c, cfg.clientca.c_str(), nullptr) != 1)
      return config_error("server.clientca '" + cfg.clientca + "': " + openssl_error_string());
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  } else {
    // Request (not require) a certificate, with an empty CA-name list, as relic does.
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, verify_callback);
  }
  SSL_CTX_set_alpn_select_cb(c, alpn_select, nullptr);
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);  // idle connections keep no record buffers
  SSL_CTX_set_read_ahead(c, 1);                   // one read(2) per burst, not two per record
  // Room for four full records per read(2) (the default fits one): a 100 MB relic upload takes
  // ~1600 reads instead of ~6400. Released like the default one when a connection goes idle.
  SSL_CTX_set_default_read_buffer_len(c, 4 * (SSL3_RT_MAX_PLAIN_LENGTH + SSL3_RT_MAX_ENCRYPTED_OVERHEAD));
  ERR_clear_error();
  return ctx;
}

Server::Server(asio::io_context& io, Service& service, Router& router)
    : io_(io),
      svc_(service),
      router_(router),
      reg_(std::make_shared<Registry>(HandshakeGate::Limits{
          static_cast<size_t>(service.config.server.maxhandshakes),
          static_cast<size_t>(service.config.server.maxhandshakespersource)})) {}

bool Server::solo(const TlsConn* c) {
  Clock::rep now = Clock::now().time_since_epoch().count();
  if (last_requester_.exchange(c) != c)
    crowded_until_.store(now + std::chrono::duration_cast<Clock::duration>(kSoloAfter).count());
  return now >= crowded_until_.load();
}

Result<std::unique_ptr<tcp::acceptor>> Server::bind(const std::string& address, const char* what, int fd) {
  if (fd >= 0) {  // passed by systemd, already bound and listening (listen_fds.h checked it)
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    std::error_code ec;
    auto acc = std::make_unique<tcp::acceptor>(io_);
    acc->assign(ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, ec);
    if (ec) return config_error(std::string(what) + " (socket activation, fd " + std::to_string(fd) + "): " + ec.message());
    return acc;
  }
  std::string host = "0.0.0.0", port = address;
  if (auto colon = address.rfind(':'); colon != std::string::npos) {
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.empty()) host = "0.0.0.0";
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  }
  std::error_code ec;
  tcp::resolver resolver(io_);
  auto results = resolver.resolve(host, port, asio::ip::resolver_base::passive | asio::ip::resolver_base::numeric_service, ec);
  if (ec || results.empty())
    return config_error(std::string(what) + " '" + address + "': cannot resolve: " + ec.message());
  tcp::endpoint ep = results.begin()->endpoint();
  auto acc = std::make_unique<tcp::acceptor>(io_);
  acc->open(ep.protocol(), ec);
  if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acc->bind(ep, ec);
  if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return config_error(std::string(what) + " '" + address + "': " + ec.message());
  return acc;
}

Result<unsigned short> Server::listen_tls(const std::string& address, int fd) {
  if (!tls_) {
    ASSIGN_OR_RETURN(tls_, make_server_tls(svc_.config.server));
  }
  ASSIGN_OR_RETURN(auto acc, bind(address, "server.listen", fd));
  unsigned short bound = acc->local_endpoint().port();
  acceptors_.push_back(std::move(acc));
  return bound;
}

Result<unsigned short> Server::listen_metrics(const std::string& address, int fd) {
  ASSIGN_OR_RETURN(metrics_acceptor_, bind(address, "server.listenmetrics", fd));
  return metrics_acceptor_->local_endpoint().port();
}

void Server::start() {
  for (auto& acc : acceptors_)
    asio::co_spawn(io_, accept_loop(*acc), asio::detached);
  if (metrics_acceptor_) asio::co_spawn(io_, metrics_accept_loop(), asio::detached);
  asio::co_spawn(io_, sweep_loop(), asio::detached);
}

// Connection and token-wait deadlines, checked every kSweepInterval: a timer per connection or per
// request would be re-armed several times per request, from whichever thread the request runs on.
asio::awaitable<void> Server::sweep_loop() {
  asio::steady_timer timer(io_);
  while (!stopping_) {
    timer.expires_after(kSweepInterval);
    co_await timer.async_wait(use_nothrow);
    auto now = Clock::now();
    expire_token_waits(now);
    // Held requests expire on time even when nobody reads them (audit line, waiting clients woken).
    // Rare enough to store the expiry right here.
    if (svc_.approvals) svc_.approvals->expire_due(static_cast<int64_t>(std::time(nullptr)));
    std::lock_guard lock(reg_->mu);
    for (TlsConn* c : reg_->conns)
      if (c->expired(now.time_since_epoch().count())) c->expire();
  }
}

asio::awaitable<void> Server::metrics_accept_loop() {
  while (!stopping_) {
    auto [ec, socket] = co_await metrics_acceptor_->async_accept(asio::make_strand(io_), use_nothrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || stopping_) break;
      continue;
    }
    auto ex = socket.get_executor();
    asio::co_spawn(ex, serve_metrics(std::move(socket)), asio::detached);
  }
}

// One request per connection, GET /metrics or GET /health, 5 s to send it.
asio::awaitable<void> Server::serve_metrics(tcp::socket socket) {
  asio::steady_timer timer(socket.get_executor(), std::chrono::seconds(5));
  timer.async_wait([&socket](std::error_code ec) {
    if (!ec) {
      std::error_code ignored;
      socket.close(ignored);
    }
  });
  http::RequestParser parser(http::Limits{8192, 0});
  std::array<char, 4096> buf;
  std::string pending;
  while (parser.state() == http::ParseState::need_more) {
    auto [ec, n] = co_await socket.async_read_some(asio::buffer(buf), use_nothrow);
    if (ec || n == 0) co_return;
    pending.append(buf.data(), n);
    pending.erase(0, parser.feed(pending));
  }
  http::Response resp;
  if (parser.state() == http::ParseState::error) {
    resp = text_response(parser.error_status(), parser.error_message() + "\n", true);
  } else if (parser.request().method != "GET") {
    resp.status = 405;
  } else if (parser.request().path == "/metrics") {
    std::vector<Metrics::TokenGauge> gauges;
    for (const auto& [name, t] : svc_.tokens) gauges.push_back({name, t->state() == TokenState::ready, t->queue_depth()});
    resp = text_response(200, svc_.metrics.render(gauges));
    resp.set("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
  } else if (parser.request().path == "/health") {
    ClientIdentity nobody;
    RequestContext ctx{parser.request(), nobody, "", false, Clock::now()};
    resp = router_.route(ctx).response.value_or(relic_unhandled());
  } else {
    resp = text_response(404, "404 page not found\n", true);
  }
  resp.keep_alive = false;
  std::string out = http::serialize(resp);
  co_await asio::async_write(socket, asio::buffer(out), use_nothrow);
  timer.cancel();
  std::error_code ec;
  socket.shutdown(tcp::socket::shutdown_both, ec);
}

void Server::stop() {
  stopping_ = true;
  if (metrics_acceptor_) {
    std::error_code ec;
    metrics_acceptor_->close(ec);
  }
  for (auto& acc : acceptors_) {
    std::error_code ec;
    acc->close(ec);
  }
}

asio::awaitable<void> Server::accept_loop(tcp::acceptor& acceptor) {
  while (!stopping_) {
    auto [ec, socket] = co_await acceptor.async_accept(io_, use_nothrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || stopping_) break;
      spdlog::warn("accept failed: {}", ec.message());
      // EMFILE and friends: back off briefly instead of spinning.
      asio::steady_timer t(io_, std::chrono::milliseconds(50));
      co_await t.async_wait(use_nothrow);
      continue;
    }
    auto ex = socket.get_executor();
    asio::co_spawn(ex, serve(std::move(socket)), log_failure);
  }
}

// Sets up TLS on a new connection and runs its handshake, as a pending connection of the handshake gate
// (a shorter deadline while the gate is under pressure). False when it failed, timed out or was evicted.
asio::awaitable<bool> Server::handshake(TlsConn& conn, const std::string& peer_ip) {
  Clock::duration timeout = std::chrono::seconds(svc_.config.server.handshaketimeout);
  if (reg_->gate.under_pressure(peer_ip))  // spread over a second, so a flood's connections do not all end at once
    timeout = std::min<Clock::duration>(timeout, kHandshakeUnderPressure + std::chrono::milliseconds(accept_seq_++ % 1000));
  conn.set_deadline(timeout);
  struct Pending {
    TlsConn& c;
    ~Pending() {
      if (!c.gate) return;
      c.gate->leave(c.ticket);
      c.gate = nullptr;
    }
  } pending{conn};
  conn.ticket = reg_->gate.admit(peer_ip, [&conn, &m = svc_.metrics] {
    m.handshake_evicted();
    conn.expire();
  });
  conn.gate = &reg_->gate;
  // No TLS state until the client sends something: a connection that never does costs a socket only.
  auto [wec] = co_await conn.socket.async_wait(tcp::socket::wait_read, use_nothrow);
  std::error_code ec = wec;
  if (!ec) conn.socket.non_blocking(true, ec);
  if (!ec && !conn.timed_out) conn.ssl.reset(SSL_new(tls_->native_handle()));
  if (!conn.ssl || SSL_set_fd(conn.ssl.get(), static_cast<int>(conn.socket.native_handle())) != 1) {
    if (conn.timed_out)
      svc_.metrics.handshake_failure();  // silent until its deadline or its eviction
    else if (!ec)
      spdlog::error("connection from {}: cannot set up TLS: {}", peer_ip, openssl_error_string());
    ERR_clear_error();
    co_return false;
  }
  SSL_set_accept_state(conn.ssl.get());
  SSL_set_app_data(conn.ssl.get(), &conn);
  if (co_await tls_call(conn, TlsOp::handshake, nullptr, 0) <= 0) {
    svc_.metrics.handshake_failure();
    spdlog::debug("TLS handshake with {} failed: {}", peer_ip, conn.timed_out ? "timed out or evicted" : "closed or refused");
    co_return false;
  }
  svc_.metrics.handshake_done(SSL_session_reused(conn.ssl.get()) == 1);
  co_return true;
}

// One TLS connection past its admission: counted, in the metrics' gauge and watched by the sweeper from its
// creation to its destruction, which ends the connection. Owned by the coroutine that runs its handshake or
// its requests, or by the socket wait of an idle connection (park).
struct Server::Link {
  Link(std::shared_ptr<Registry> r, Metrics& m, tcp::socket s, std::string peer_ip)
      : reg(std::move(r)), metrics(m), conn(std::move(s)) {
    peer.ip = std::move(peer_ip);
    metrics.connection_opened();
    std::lock_guard lock(reg->mu);
    reg->conns.insert(&conn);
  }
  ~Link() {
    {
      std::lock_guard lock(reg->mu);
      reg->conns.erase(&conn);
    }
    if (established) --reg->established;
    conn.close();
    metrics.connection_closed();
    --reg->connections;
  }
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  const std::shared_ptr<Registry> reg;  // outlives the Server when the io_context destroys a waiting connection
  Metrics& metrics;
  TlsConn conn;
  PeerState peer;
  bool established = false;  // counted in reg->established
};

asio::awaitable<void> Server::serve(tcp::socket socket) {
  const ServerConfig& sc = svc_.config.server;
  std::error_code ec;
  std::string peer_ip;
  if (auto ep = socket.remote_endpoint(ec); !ec) peer_ip = ep.address().to_string();
  // Pending connections are bounded by the gate's eviction; this only guards the file descriptors while
  // evicted ones are still closing.
  if (size_t now_open = ++reg_->connections; now_open > static_cast<size_t>(sc.maxconnections) + static_cast<size_t>(sc.maxhandshakes)) {
    --reg_->connections;
    spdlog::warn("connection from {} refused: {} connections open (server.maxconnections + server.maxhandshakes)",
                 peer_ip, now_open - 1);
    socket.close(ec);
    co_return;
  }
  socket.set_option(tcp::no_delay(true), ec);
  auto link = std::make_unique<Link>(reg_, svc_.metrics, std::move(socket), std::move(peer_ip));
  if (!co_await handshake(link->conn, link->peer.ip)) co_return;
  link->established = true;
  if (++reg_->established > static_cast<size_t>(sc.maxconnections)) {
    spdlog::warn("connection from {} closed after its handshake: {} authenticated connections open "
                 "(server.maxconnections)", link->peer.ip, reg_->established.load() - 1);
    co_return;
  }
  link->conn.set_deadline(std::chrono::seconds(sc.readheadertimeout));
  park(std::move(link));
}

asio::awaitable<void> Server::requests(std::unique_ptr<Link> link) {
  bool idle = false;
  {
    RequestLoop loop(svc_, router_, link->conn, link->peer, [this](const TlsConn* c) { return solo(c); });
    idle = co_await loop.run();
  }
  if (idle) park(std::move(link));
}

void Server::park(std::unique_ptr<Link> link) {
  TlsConn& c = link->conn;
  if (SSL_has_pending(c.ssl.get())) {
    asio::co_spawn(c.socket.get_executor(), requests(std::move(link)), log_failure);
    return;
  }
  // Woken by the next request, by the client closing, or by the sweeper's shutdown(2) at the deadline (the
  // request loop then reads the end); cancelled (the Link destroyed) when the daemon stops.
  c.socket.async_wait(tcp::socket::wait_read, [this, link = std::move(link)](std::error_code ec) mutable {
    if (ec) return;
    auto ex = link->conn.socket.get_executor();
    asio::co_spawn(ex, requests(std::move(link)), log_failure);
  });
}

}  // namespace p11relay::daemon
