// The HTTP/1.1 requests of one connection past mutual TLS, one after another (keep-alive, pipelining): the
// request head within server.readheadertimeout (server.idletimeout while waiting for the next one), the
// client's identity (computed again on the first request after a config reload), a trusted proxy's client,
// the route, the body (bounded, decoded, streamed to a signer or kept for a buffered handler), the handler
// and the answer within server.writetimeout. A request refused before its body was read ends the connection
// after a lingering close, so the client sees the answer instead of a reset. A RequestLoop lives while requests
// arrive: once a connection has nothing left to read it returns, and the connection waits as a PeerState
// and a socket wait, without a coroutine stack or a parser (Server::park).
#pragma once

#include "daemon/transport/router.h"
#include "daemon/service.h"
#include "daemon/transport/tls_conn.h"

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace p11relay::daemon {

// What a connection keeps between two runs of its RequestLoop.
struct PeerState {
  std::string ip;
  ClientIdentity identity;  // computed on the first request, and again on the first one after a config reload
  bool first = true;        // no request head read yet: server.readheadertimeout, not server.idletimeout
};

class RequestLoop {
 public:
  // `solo`: whether the connection has been the only one sending requests lately (RequestContext::solo).
  // Created when the connection has something to read (its socket is readable, or OpenSSL holds bytes).
  RequestLoop(Service& svc, Router& router, TlsConn& conn, PeerState& peer, std::function<bool(const TlsConn*)> solo);
  // Returns true when the connection is idle: its requests are answered and nothing more has been read. Its
  // deadline is then set (server.idletimeout, or server.readheadertimeout before the first request) and the
  // caller waits for the socket to become readable before running a new RequestLoop. Returns false when the
  // connection is done: closed by the client, timed out, or ended after an answer.
  asio::awaitable<bool> run();

 private:
  enum class Head { ready, idle, end };
  asio::awaitable<Head> read_head();
  asio::awaitable<bool> answer_one();  // the request whose head was read; false: the connection ends
  asio::awaitable<bool> read_body(const RouteDecision& d, http::Request& req);  // false: it ended (answered)
  // Answers "Expect: 100-continue" so the client sends the body; false when the connection failed.
  asio::awaitable<bool> continue_if_expected(const http::Request& req);
  // The answer to a body the parser, the decoder or the route refused.
  http::Response body_refusal(const std::string& target, const std::optional<Error>& e);
  // When the route answered without the body: reads an empty one; an unread body means no keep-alive.
  void skip_unread_body(http::Response& resp);
  asio::awaitable<bool> fill();
  void feed_pending();
  asio::awaitable<void> linger();
  asio::awaitable<bool> write(http::Response& resp);
  // Sends `resp` as the connection's last answer (then lingers if asked). Its callers keep the response in a
  // named variable and end with a separate co_return: GCC 12 miscompiles `co_return co_await f(temporary)`
  // (a daemon crash on the first 413 when it was written that way).
  asio::awaitable<void> end_with(http::Response& resp, bool linger_after);

  Service& svc_;
  Router& router_;
  TlsConn& conn_;
  PeerState& peer_;
  const std::function<bool(const TlsConn*)> solo_;
  const ServerConfig& sc_;
  http::RequestParser parser_;
  std::unique_ptr<char[]> buf_;  // only while a request is being read
  std::string pending_;          // bytes read but not yet parsed (pipelining)
  bool answered_ = false;        // this run answered a request: with nothing pending, the connection is idle
};

}  // namespace p11relay::daemon
