#include "daemon/transport/request_loop.h"

#include "daemon/transport/compress.h"
#include "daemon/transport/proxy.h"

#include <spdlog/spdlog.h>

#include <chrono>

namespace p11relay::daemon {
namespace {

using std::chrono::seconds;

bool path_is_relay(const std::string& target) { return target.rfind("/v1/", 0) == 0; }

http::Response error_for(const std::string& target, int status, const std::string& message) {
  if (path_is_relay(target)) {
    ErrorCode code = status == 413 ? ErrorCode::payload_too_large
                     : status == 415 ? ErrorCode::unsupported_media
                                     : ErrorCode::bad_request;
    Error e(code, message);
    e.http_status = status;
    return relay_problem(e);
  }
  return text_response(status, message + "\n", true);
}

// A request refused before routing (an untrusted proxy header): the relay API's problem document, or
// relic's problem type for the relic API.
http::Response refused(const std::string& target, const Error& e) {
  if (path_is_relay(target)) return relay_problem(e);
  const char* type = e.http_status == 403 ? "https://relic.sas.com/forbidden" : "https://relic.sas.com/bad-request";
  return relic_problem(e.http_status, type, e.message);
}

}  // namespace

RequestLoop::RequestLoop(Service& svc, Router& router, TlsConn& conn, PeerState& peer,
                         std::function<bool(const TlsConn*)> solo)
    : svc_(svc),
      router_(router),
      conn_(conn),
      peer_(peer),
      solo_(std::move(solo)),
      sc_(svc.config.server),
      parser_(http::Limits{sc_.maxheaderbytes, sc_.maxbodybytes}) {}

asio::awaitable<bool> RequestLoop::run() {
  // A flag, not `for (;;) { if (!co_await read_head()) co_return; … }`: GCC 12 compiled that into a frame that
  // reached an illegal instruction (ud2) on the first request.
  bool more = true;
  Head head = Head::end;
  while (more) {
    head = co_await read_head();
    more = head == Head::ready;
    if (more) more = co_await answer_one();
  }
  co_return head == Head::idle;
}

// Reads what is there. With nothing pending the parser gets it straight from the read buffer (a 100 MB upload
// is not copied once more through `pending_`); what it leaves (the rest of a read after a request's headers or
// end) is kept in `pending_` for feed_pending. The buffer is taken when there is something to read (the loop
// runs on a readable connection, and an idle one returns from run() first), so a waiting connection holds none.
asio::awaitable<bool> RequestLoop::fill() {
  if (!buf_) buf_ = std::make_unique<char[]>(kReadChunk);
  int n = co_await tls_call(conn_, TlsOp::read, buf_.get(), kReadChunk);
  if (n <= 0) co_return false;
  std::string_view got(buf_.get(), static_cast<size_t>(n));
  if (pending_.empty()) got.remove_prefix(parser_.feed(got));
  pending_.append(got);
  co_return true;
}

void RequestLoop::feed_pending() {
  size_t used = parser_.feed(pending_);
  pending_.erase(0, used);
}

// After answering without reading the body, keep reading (and discarding) for a moment so the client
// finishes sending and sees the answer instead of a reset (nginx's lingering close).
asio::awaitable<void> RequestLoop::linger() {
  conn_.set_deadline(seconds(2));
  if (!buf_) buf_ = std::make_unique<char[]>(kReadChunk);
  size_t discarded = 0;
  while (discarded < (64u << 20)) {
    int n = co_await tls_call(conn_, TlsOp::read, buf_.get(), kReadChunk);
    if (n <= 0) break;
    discarded += static_cast<size_t>(n);
  }
}

asio::awaitable<bool> RequestLoop::write(http::Response& resp) {
  router_.decorate(resp);
  std::string out = http::serialize(resp);
  conn_.set_deadline(seconds(sc_.writetimeout));
  co_return co_await tls_write(conn_, out);
}

asio::awaitable<void> RequestLoop::end_with(http::Response& resp, bool linger_after) {
  resp.keep_alive = false;
  const bool written = co_await write(resp);
  if (written && linger_after) co_await linger();
}

asio::awaitable<RequestLoop::Head> RequestLoop::read_head() {
  parser_.reset();
  if (pending_.empty()) {
    buf_.reset();
    std::string().swap(pending_);
  }
  conn_.set_deadline(seconds(peer_.first ? sc_.readheadertimeout : sc_.idletimeout));
  bool started = !pending_.empty();
  if (started) conn_.set_deadline(seconds(sc_.readheadertimeout));
  // Nothing read and nothing in OpenSSL's buffer after an answer: wait for the next request without this loop.
  if (!started && answered_ && !SSL_has_pending(conn_.ssl.get())) co_return Head::idle;
  while (parser_.state() == http::ParseState::need_more) {
    if (pending_.empty()) {
      if (!co_await fill()) co_return Head::end;  // closed, reset or timed out
      if (!started) {
        started = true;
        conn_.set_deadline(seconds(sc_.readheadertimeout));
      }
    }
    feed_pending();
  }
  peer_.first = false;
  if (parser_.state() == http::ParseState::error) {
    http::Response r = error_for(parser_.request().target, parser_.error_status(), parser_.error_message());
    co_await end_with(r, false);
    co_return Head::end;
  }
  co_return Head::ready;
}

asio::awaitable<bool> RequestLoop::answer_one() {
  http::Request& req = parser_.request();
  if (!svc_.is_current(peer_.identity.snapshot.get()))
    peer_.identity = identify(svc_.current.load(), SSL_get0_peer_certificate(conn_.ssl.get()),
                              SSL_get_peer_cert_chain(conn_.ssl.get()));
  auto fwd = forwarded(peer_.identity, peer_.ip, req);  // a trusted proxy's client (docs/relic-protocol.md §4.2)
  if (!fwd.ok()) {
    http::Response r = refused(req.target, fwd.error());
    co_await end_with(r, true);
    co_return false;
  }
  const bool proxied = fwd->has_value();
  RequestContext ctx{req, proxied ? (*fwd)->identity : peer_.identity, proxied ? (*fwd)->client_ip : peer_.ip, true,
                     Clock::now() + seconds(sc_.writetimeout), solo_(&conn_), proxied ? (*fwd)->proxy_ip : std::string()};
  auto started_at = Clock::now();
  RouteDecision d = router_.route(ctx);
  http::Response resp;
  if (d.response) {
    resp = std::move(*d.response);
    skip_unread_body(resp);
  } else {
    if (!co_await read_body(d, req)) co_return false;
    // The handler may wait on a token; the sweeper must not cut it off meanwhile (the handler enforces its
    // own deadline, writetimeout, and answers 504).
    conn_.set_deadline(seconds(sc_.writetimeout) + seconds(5));
    if (d.streaming) resp = co_await d.streaming->finish(ctx);
    else resp = co_await d.buffered(ctx);
  }
  if (!req.keep_alive) resp.keep_alive = false;
  auto ms = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started_at).count() / 1000.0;
  spdlog::debug("{} {} {} {} {} {:.2f}ms", ctx.peer_ip, ctx.identity.has_certificate ? ctx.identity.name() : "-",
                req.method, req.path, resp.status, ms);
  svc_.metrics.request(path_is_relay(req.path) ? "relay" : "relic", resp.status);
  if (!co_await write(resp)) co_return false;
  answered_ = true;
  if (resp.keep_alive) co_return true;
  if (parser_.state() != http::ParseState::message_complete) co_await linger();
  co_return false;
}

void RequestLoop::skip_unread_body(http::Response& resp) {
  bool complete = parser_.state() == http::ParseState::message_complete;
  if (parser_.state() == http::ParseState::headers_complete && !parser_.expects_body()) {
    parser_.resume();
    feed_pending();
    complete = parser_.state() == http::ParseState::message_complete;
  }
  if (!complete) resp.keep_alive = false;  // the body was not read: the connection cannot be reused
}

asio::awaitable<bool> RequestLoop::read_body(const RouteDecision& d, http::Request& req) {
  if (parser_.content_length() && *parser_.content_length() > d.max_body) {
    http::Response r = error_for(req.target, 413, "request body too large (limit " + std::to_string(d.max_body) + " bytes)");
    co_await end_with(r, true);
    co_return false;
  }
  parser_.set_max_body(d.max_body);
  // Content-Encoding (relic compresses uploads when the server advertises it, docs/relic-protocol.md §6).
  std::unique_ptr<Decoder> decoder;
  const std::string* ce = req.header("Content-Encoding");
  if (ce && !ce->empty() && !http::iequals(*ce, "identity")) {
    decoder = make_decoder(*ce, d.max_body);
    if (!decoder) {
      http::Response r = text_response(415, "invalid content-encoding\n", true);
      co_await end_with(r, false);
      co_return false;
    }
  }
  std::optional<Error> body_error;
  std::string body;
  auto deliver = [&](std::string_view plain) -> bool {
    if (d.streaming) {
      auto st = d.streaming->consume(plain);
      if (!st.ok()) body_error = st.error();
      return st.ok();
    }
    if (body.size() + plain.size() > d.max_body) {
      body_error = Error(ErrorCode::payload_too_large, "request body too large");
      return false;
    }
    body.append(plain);
    return true;
  };
  parser_.set_body_sink([&](std::string_view chunk) -> bool {
    if (!decoder) return deliver(chunk);
    auto st = decoder->write(chunk, deliver);
    if (!st.ok() && !body_error) body_error = st.error();
    return st.ok();
  });
  if (!co_await continue_if_expected(req)) co_return false;
  parser_.resume();
  conn_.set_deadline(seconds(sc_.readtimeout));
  feed_pending();
  while (parser_.state() == http::ParseState::need_more) {
    if (!co_await fill()) co_return false;
    feed_pending();
  }
  if (parser_.state() == http::ParseState::message_complete && decoder) {
    auto st = decoder->finish(deliver);
    if (!st.ok() && !body_error) body_error = st.error();
  }
  if (parser_.state() == http::ParseState::error || body_error) {
    http::Response r = body_refusal(req.target, body_error);
    co_await end_with(r, true);
    co_return false;
  }
  req.body = std::move(body);
  co_return true;
}

asio::awaitable<bool> RequestLoop::continue_if_expected(const http::Request& req) {
  const std::string* expect = req.header("Expect");
  if (!expect || !http::iequals(*expect, "100-continue")) co_return true;
  static const std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  const bool written = co_await tls_write(conn_, kContinue);
  co_return written;
}

http::Response RequestLoop::body_refusal(const std::string& target, const std::optional<Error>& e) {
  if (!e) return error_for(target, parser_.error_status(), parser_.error_message());
  if (e->code == ErrorCode::payload_too_large) return error_for(target, 413, e->message);
  if (path_is_relay(target)) return relay_problem(*e);
  if (e->code == ErrorCode::unsupported_media) return text_response(400, "failed to decompress request\n", true);
  return relic_problem(e->http_status, "https://relic.sas.com/bad-request", e->message);
}

}  // namespace p11relay::daemon
