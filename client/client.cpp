// libp11relay-client: blocking mutual-TLS HTTP/1.1 over a pool of keep-alive connections.
//
// Why blocking and hand-rolled rather than Asio: this library is loaded into arbitrary PKCS#11
// applications through the shim. It must not start threads, must not install signal handlers, must
// survive fork() and must never raise SIGPIPE (docs/architecture.md, failure modes 1 and 3). A plain socket per
// request with poll() timeouts gives exactly that.
#include "client/client.h"
#include "client/key_cache.h"
#include "common/net.h"

#include "common/x509.h"

#include <nlohmann/json.hpp>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <new>
#include <thread>

namespace p11relay::client {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kMaxIdlePerUrl = 32;
// Siblings taken from one GET /directory answer at most (the URL list never grows beyond this).
constexpr size_t kMaxSiblings = 16;
constexpr auto kMaxIdleAge = std::chrono::seconds(30);
constexpr auto kIdleCheckAfter = std::chrono::seconds(1);
constexpr int kBackoffBaseMs = 500;  // retries=3 waits 0.5 + 1 + 2 s (jittered 50..100 %): covers a daemon restart
constexpr int kBackoffCapMs = 8000;
constexpr int kRetryAfterCapMs = 30000;

// ---------------------------------------------------------------------------------------------
// URL

using net::remaining_ms;
using net::Url;

// A daemon URL: https:// only; the path is a prefix for every request (trailing '/' dropped).
Result<Url> parse_url(const std::string& text) {
  auto u = net::parse_url(text);
  if (!u.ok()) return config_error(u.error().message);
  if (!u->https) return config_error("URL '" + text + "' is not https://");
  while (!u->path.empty() && u->path.back() == '/') u->path.pop_back();
  return u;
}

// ---------------------------------------------------------------------------------------------
// A socket BIO that writes with MSG_NOSIGNAL: OpenSSL's own socket BIO uses write(2), which raises
// SIGPIPE on a connection the peer closed, and a library must not change the process's signal mask.

struct SockData {
  int fd;
  bool eof = false;
};

int bio_write(BIO* b, const char* data, int len) {
  auto* s = static_cast<SockData*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  ssize_t n = ::send(s->fd, data, static_cast<size_t>(len), MSG_NOSIGNAL);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_write(b);
    return -1;
  }
  return static_cast<int>(n);
}

int bio_read(BIO* b, char* data, int len) {
  auto* s = static_cast<SockData*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  ssize_t n = ::recv(s->fd, data, static_cast<size_t>(len), 0);
  if (n == 0) {
    s->eof = true;
    return 0;
  }
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_read(b);
    return -1;
  }
  return static_cast<int>(n);
}

int bio_puts(BIO* b, const char* str) { return bio_write(b, str, static_cast<int>(std::strlen(str))); }

long bio_ctrl(BIO* b, int cmd, long, void*) {
  auto* s = static_cast<SockData*>(BIO_get_data(b));
  switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_EOF: return s && s->eof ? 1 : 0;
    default: return 0;
  }
}

int bio_create(BIO* b) {
  BIO_set_init(b, 0);
  BIO_set_data(b, nullptr);
  return 1;
}

int bio_destroy(BIO* b) {
  delete static_cast<SockData*>(BIO_get_data(b));
  BIO_set_data(b, nullptr);
  return 1;
}

BIO_METHOD* nosig_method() {
  static BIO_METHOD* m = [] {
    BIO_METHOD* meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "p11relay nosigpipe socket");
    BIO_meth_set_write(meth, bio_write);
    BIO_meth_set_read(meth, bio_read);
    BIO_meth_set_puts(meth, bio_puts);
    BIO_meth_set_ctrl(meth, bio_ctrl);
    BIO_meth_set_create(meth, bio_create);
    BIO_meth_set_destroy(meth, bio_destroy);
    return meth;
  }();
  return m;
}

// ---------------------------------------------------------------------------------------------
// Connection

struct Conn {
  int fd = -1;
  SSL_ptr ssl;
  SSL_SESSION_ptr ticket;  // a session ticket the server sent on this connection, for the next one
  Clock::time_point last_used;

  Conn() = default;
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn() {
    // No close_notify (it buys nothing for a stateless API), but OpenSSL is told the connection ended
    // cleanly: otherwise SSL_free marks its session "not resumable", and that session is the ticket the
    // next connection wants to resume.
    if (ssl) SSL_set_shutdown(ssl.get(), SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    ssl.reset();
    if (fd >= 0) ::close(fd);
  }
  // After fork(): close our copy of the descriptor (the parent's socket stays open in the parent)
  // and leak the SSL object rather than run OpenSSL code on state copied mid-operation.
  void abandon() {
    if (fd >= 0) ::close(fd);
    fd = -1;
    (void)ssl.release();
    (void)ticket.release();
  }
};

// OpenSSL's new-session callback (client side): a TLS 1.3 ticket arrives after the handshake, while a
// response is read. It is kept on its connection and moved to the URL's state once the exchange is done
// (keep_ticket), so the next connection to that daemon resumes instead of a full handshake.
int on_new_session(SSL* ssl, SSL_SESSION* session) {
  auto* c = static_cast<Conn*>(SSL_get_app_data(ssl));
  if (!c || SSL_SESSION_is_resumable(session) != 1) return 0;
  c->ticket.reset(session);
  return 1;  // we own it now
}

Status wait_fd(int fd, bool for_write, Clock::time_point deadline, const char* what) {
  ASSIGN_OR_RETURN(bool ready, net::wait_fd(fd, for_write, deadline));
  if (!ready) return network_error(std::string("timeout while ") + what);
  return {};
}

// Runs an SSL call that may want to read or write until it completes or the deadline passes.
template <typename F>
Result<int> ssl_io(Conn& c, Clock::time_point deadline, const char* what, F&& f) {
  for (;;) {
    ERR_clear_error();
    int r = f();
    if (r > 0) return r;
    int e = SSL_get_error(c.ssl.get(), r);
    if (e == SSL_ERROR_WANT_READ) {
      RETURN_IF_ERROR(wait_fd(c.fd, false, deadline, what));
    } else if (e == SSL_ERROR_WANT_WRITE) {
      RETURN_IF_ERROR(wait_fd(c.fd, true, deadline, what));
    } else if (e == SSL_ERROR_ZERO_RETURN) {
      return 0;
    } else if (e == SSL_ERROR_SYSCALL) {
      int err = errno;
      ERR_clear_error();
      if (err == 0) return 0;
      return network_error(std::string(what) + ": " + std::strerror(err));
    } else {
      return network_error(std::string(what) + ": " + openssl_error_string());
    }
  }
}

bool idle_connection_usable(const Conn& c) {
  auto idle = Clock::now() - c.last_used;
  if (idle >= kMaxIdleAge) return false;
  // A readable idle keep-alive socket means the server closed it (FIN or close_notify). A connection
  // used within the last second is not asked (one poll(2) less per request in a busy loop): if the
  // daemon went away meanwhile, the request meets the closed socket before any answer byte and is
  // retried on a fresh connection (Outcome::stale).
  if (idle < kIdleCheckAfter) return true;
  struct pollfd p = {c.fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 0;
}

// Which process we are in, without a getpid(2) per request: a page the kernel zeroes in a forked
// child (MADV_WIPEONFORK, Linux 4.14) holds a number that is unique along each fork chain. Falls
// back to getpid() where the page cannot be had.
uint64_t process_token() {
  struct Page {
    std::atomic<uint64_t> token;
  };
  static Page* page = []() -> Page* {
    long size = ::sysconf(_SC_PAGESIZE);
    void* p = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    if (::madvise(p, static_cast<size_t>(size), MADV_WIPEONFORK) != 0) {
      ::munmap(p, static_cast<size_t>(size));
      return nullptr;
    }
    return new (p) Page{{0}};
  }();
  static std::atomic<uint64_t> last{0};  // copied into a child: its next number differs from its parent's
  if (!page) return static_cast<uint64_t>(::getpid());
  uint64_t t = page->token.load(std::memory_order_acquire);
  if (t != 0) return t;
  uint64_t mine = last.fetch_add(1) + 1;
  if (page->token.compare_exchange_strong(t, mine)) return mine;
  return t;  // another thread of this process set it first
}

// ---------------------------------------------------------------------------------------------
// Per-process state: the TLS context, idle connections and URL health. A child process after fork()
// gets a fresh one (see Impl::pool()).

struct UrlState {
  std::deque<std::unique_ptr<Conn>> idle;
  SSL_SESSION_ptr session;  // the newest resumable session with this daemon (TLS 1.3 ticket)
  bool no_resumption = false;  // it broke off a resumption attempt once: always full handshakes
  int failures = 0;
  Clock::time_point penalty_until{};
  bool directory_only = false;  // the directory URL when url/urls are configured: asked, never used
  UniqueFd begun;               // a TCP connection start_connecting() began, not yet used
  Clock::time_point begun_at{};
};

struct Pool {
  std::mutex mu;
  SSL_CTX_ptr ctx;
  std::deque<UrlState> urls;  // deque: never relocates (UrlState is not copyable)

  void abandon() {
    // Runs in a freshly forked child where this object may have been copied mid-update by another
    // parent thread; touch only the descriptors, never the mutex or OpenSSL state.
    for (auto& u : urls) {
      for (auto& c : u.idle)
        if (c) c->abandon();
      (void)u.session.release();
      u.begun = UniqueFd();  // our copy of the descriptor only
    }
  }
};

Result<SSL_CTX_ptr> make_ssl_ctx(const Config& c) {
  SSL_CTX_ptr ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return internal_error("SSL_CTX_new: " + openssl_error_string());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_read_ahead(ctx.get(), 1);  // one recv(2) per answer, not one per record header and one per body
  // Session resumption (TLS 1.3 tickets, no early data): a reconnect after an idle close costs one round
  // trip less and no certificate signatures. The pool keeps the sessions, one per URL.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx.get(), on_new_session);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), c.certfile.c_str()) != 1)
    return config_error("client certificate '" + c.certfile + "': " + openssl_error_string());
  const std::string& key = c.keyfile.empty() ? c.certfile : c.keyfile;
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1)
    return config_error("client key '" + key + "': " + openssl_error_string());
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    return config_error("client key '" + key + "' does not match certificate '" + c.certfile + "'");
  if (!c.cacert.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), c.cacert.c_str(), nullptr) != 1)
      return config_error("cacert '" + c.cacert + "': " + openssl_error_string());
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  } else if (c.server_fingerprint.empty()) {
    SSL_CTX_set_default_verify_paths(ctx.get());
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  } else {
    // Only the pinned SPKI fingerprint authenticates the server (checked after the handshake).
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  }
  return ctx;
}

int parse_retry_after(const http::Response& r) {
  const std::string* v = r.header("Retry-After");
  if (!v || v->empty() || v->find_first_not_of("0123456789 ") != std::string::npos) return 0;
  return std::atoi(v->c_str());
}

bool retryable_status(int s) { return s == 500 || s == 502 || s == 503 || s == 504; }

int backoff_ms(int attempt) {
  int ms = kBackoffBaseMs << std::min(attempt, 10);
  ms = std::min(ms, kBackoffCapMs);
  unsigned char r = 0;
  RAND_bytes(&r, 1);
  return ms / 2 + (ms / 2) * r / 255;  // jitter: 50..100 %
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Client::Impl {
  Config config;
  std::unique_ptr<KeyListCache> kept_keys;
  // Configured URLs, then learned siblings: capacity reserved at creation, so appending (under the pool's
  // mutex) never moves an element another thread is reading; an index is only handed out after that.
  std::vector<Url> urls;
  std::optional<size_t> directory_index;  // remote.directoryurl in `urls`
  bool directory_only = false;            // ... only there to be asked for siblings
  std::atomic<bool> directory_asked{false};
  std::atomic<uint64_t> process{0};  // process_token() of the process that made pool_ptr
  std::unique_ptr<Pool> owned;           // the pool, made by the process `process`; changed under fork_mu
  std::atomic<Pool*> pool_ptr{nullptr};  // owned.get(), read without the lock
  std::mutex fork_mu;  // only taken when a new process is noticed

  ~Impl() {
    // A forked child must not close or free its parent's connections and TLS state: it leaves them.
    if (owned && process.load() != process_token()) owned.release()->abandon();
  }

  Result<Pool*> pool() {
    uint64_t now = process_token();
    if (process.load(std::memory_order_acquire) == now) return pool_ptr.load(std::memory_order_acquire);
    std::lock_guard<std::mutex> g(fork_mu);
    if (process.load(std::memory_order_acquire) == now) return pool_ptr.load(std::memory_order_acquire);
    // First use in a new process (or after fork): the parent's pool is dropped lazily, here.
    if (owned) owned.release()->abandon();  // intentionally leaked
    auto fresh = std::make_unique<Pool>();
    ASSIGN_OR_RETURN(fresh->ctx, make_ssl_ctx(config));
    fresh->urls.resize(urls.size());
    if (directory_only) fresh->urls[*directory_index].directory_only = true;
    owned = std::move(fresh);
    pool_ptr.store(owned.get(), std::memory_order_release);
    process.store(now, std::memory_order_release);
    return owned.get();
  }

  size_t pick_url(Pool& p) {
    std::lock_guard<std::mutex> g(p.mu);
    auto now = Clock::now();
    size_t best = 0;
    bool found = false;
    for (size_t i = 0; i < p.urls.size(); ++i) {
      if (p.urls[i].directory_only) continue;
      if (p.urls[i].penalty_until <= now) return i;
      if (!found || p.urls[i].penalty_until < p.urls[best].penalty_until) best = i;
      found = true;
    }
    return best;
  }

  bool any_healthy_other_than(Pool& p, size_t u) {
    std::lock_guard<std::mutex> g(p.mu);
    auto now = Clock::now();
    for (size_t i = 0; i < p.urls.size(); ++i)
      if (i != u && !p.urls[i].directory_only && p.urls[i].penalty_until <= now) return true;
    return false;
  }

  void penalize(Pool& p, size_t u) {
    std::lock_guard<std::mutex> g(p.mu);
    auto& s = p.urls[u];
    s.failures = std::min(s.failures + 1, 6);
    s.penalty_until = Clock::now() + std::chrono::seconds(1 << (s.failures - 1));  // 1 s .. 32 s
    s.idle.clear();
  }

  void reward(Pool& p, size_t u) {
    std::lock_guard<std::mutex> g(p.mu);
    p.urls[u].failures = 0;
    p.urls[u].penalty_until = {};
  }

  std::unique_ptr<Conn> take_idle(Pool& p, size_t u) {
    std::unique_ptr<Conn> c;
    std::lock_guard<std::mutex> g(p.mu);
    auto& idle = p.urls[u].idle;
    while (!idle.empty()) {
      c = std::move(idle.back());
      idle.pop_back();
      if (idle_connection_usable(*c)) return c;
      c.reset();
    }
    return c;
  }

  void put_idle(Pool& p, size_t u, std::unique_ptr<Conn> c) {
    c->last_used = Clock::now();
    std::lock_guard<std::mutex> g(p.mu);
    auto& idle = p.urls[u].idle;
    if (idle.size() < kMaxIdlePerUrl) idle.push_back(std::move(c));
  }

  SSL_SESSION_ptr saved_session(Pool& p, size_t u) {
    std::lock_guard lock(p.mu);
    SSL_SESSION* s = p.urls[u].session.get();
    if (!s || SSL_SESSION_up_ref(s) != 1) return nullptr;
    return SSL_SESSION_ptr(s);
  }

  void keep_ticket(Pool& p, size_t u, Conn& c) {
    if (!c.ticket) return;
    std::lock_guard lock(p.mu);
    if (!p.urls[u].no_resumption) p.urls[u].session = std::move(c.ticket);
  }

  void refuse_resumption(Pool& p, size_t u) {
    std::lock_guard lock(p.mu);
    p.urls[u].session.reset();
    p.urls[u].no_resumption = true;
  }

  // A new connection, resuming the URL's saved TLS session when there is one. A server that breaks off a
  // resumption attempt (some answer an offered ticket with a fatal alert) gets a full handshake instead,
  // now and from then on.
  Result<std::unique_ptr<Conn>> connect(Pool& p, size_t u) {
    SSL_SESSION_ptr saved = saved_session(p, u);
    bool reached = false;  // the TCP connection was made: a failure after it is the handshake's
    if (UniqueFd begun = take_begun(p, u); begun.get() >= 0) {
      auto c = connect_once(p, u, saved.get(), reached, std::move(begun));
      if (c.ok()) return c;  // else start over, as if no connection had been begun
    }
    auto c = connect_once(p, u, saved.get(), reached);
    if (c.ok() || !saved || !reached) return c;
    refuse_resumption(p, u);
    return connect_once(p, u, nullptr, reached);
  }

  // `begun`: a connection start_connecting() began, to be finished instead of making one.
  Result<std::unique_ptr<Conn>> connect_once(Pool& p, size_t u, SSL_SESSION* resume, bool& reached,
                                             UniqueFd begun = UniqueFd()) {
    const Url& url = urls[u];
    auto deadline = Clock::now() + milliseconds(config.connect_timeout_ms);
    auto c = std::make_unique<Conn>();
    if (begun.get() >= 0) {
      Status done = net::connect_finish(begun.get(), deadline);
      if (!done.ok()) return network_error(url.text + ": " + done.error().message);
      c->fd = begun.release();
    } else {
      ASSIGN_OR_RETURN(c->fd, tcp_connect(url, deadline));
    }
    reached = true;
    int one = 1;
    ::setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(c->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    RETURN_IF_ERROR(tls_handshake(p, *c, url, resume, deadline));
    return c;
  }

  static Result<int> tcp_connect(const Url& url, Clock::time_point deadline) {
    auto fd = net::tcp_connect(url, deadline);
    if (!fd.ok()) return network_error(url.text + ": " + fd.error().message);
    return fd;
  }

  // TLS on c.fd: resumes `resume` when given, verifies the server (CA + name, or the pinned SPKI).
  Status tls_handshake(Pool& p, Conn& c, const Url& url, SSL_SESSION* resume, Clock::time_point deadline) {
    c.ssl.reset(SSL_new(p.ctx.get()));
    if (!c.ssl) return internal_error("SSL_new: " + openssl_error_string());
    SSL* ssl = c.ssl.get();
    SSL_set_app_data(ssl, &c);
    if (resume) SSL_set_session(ssl, resume);
    BIO* bio = BIO_new(nosig_method());
    if (!bio) return internal_error("BIO_new: " + openssl_error_string());
    BIO_set_data(bio, new SockData{c.fd});
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio);
    if (!url.is_ip) SSL_set_tlsext_host_name(ssl, url.host.c_str());
    if (!config.cacert.empty() || config.server_fingerprint.empty()) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
      int ok = url.is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str())
                         : X509_VERIFY_PARAM_set1_host(param, url.host.c_str(), 0);
      if (ok != 1) return internal_error("cannot set the expected server name");
    }
    auto hs = ssl_io(c, deadline, "TLS handshake", [&] { return SSL_connect(ssl); });
    if (!hs.ok()) {
      long v = SSL_get_verify_result(ssl);
      if (v != X509_V_OK)
        return Error(ErrorCode::tls_trust,
                     url.text + ": server certificate not trusted: " + X509_verify_cert_error_string(v));
      return network_error(url.text + ": " + hs.error().message);
    }
    if (*hs == 0) return network_error(url.text + ": connection closed during the TLS handshake");
    if (!config.server_fingerprint.empty()) {
      X509_ptr peer(SSL_get1_peer_certificate(ssl));
      if (!peer) return network_error(url.text + ": server sent no certificate");
      std::string fp = spki_fingerprint(peer.get());
      if (fp != config.server_fingerprint)
        return Error(ErrorCode::tls_trust,
                     url.text + ": server key fingerprint " + fp + " does not match serverfingerprint");
    }
    return {};
  }

  std::string build_request(const Url& url, const std::string& method, const std::string& target,
                            const std::string& body, const http::Headers& headers) {
    std::string host = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
    std::string r;
    r.reserve(256 + body.size());
    r += method + " " + url.path + target + " HTTP/1.1\r\n";
    r += "Host: " + host + ":" + url.port + "\r\n";
    r += "User-Agent: p11relay-client/0.1\r\n";
    bool has_accept = http::find_header(headers, "Accept") != nullptr;
    bool has_ct = http::find_header(headers, "Content-Type") != nullptr;
    if (!has_accept) r += "Accept: application/json, application/problem+json\r\n";
    for (const auto& [k, v] : headers) r += k + ": " + v + "\r\n";
    if (!body.empty() || method == "POST" || method == "PUT") {
      if (!has_ct) r += "Content-Type: application/json\r\n";
      r += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    }
    r += "\r\n";
    r += body;
    return r;
  }

  enum class Outcome { done, stale };

  // One exchange on one connection. `stale` means a reused keep-alive connection turned out to be
  // closed before any byte of the answer arrived: the caller retries on a fresh one at no cost.
  Result<Outcome> exchange(Conn& c, bool reused, const std::string& req, bool head, http::Response& out) {
    auto deadline = Clock::now() + milliseconds(config.request_timeout_ms);
    size_t off = 0;
    while (off < req.size()) {
      auto w = ssl_io(c, deadline, "sending the request", [&] {
        return SSL_write(c.ssl.get(), req.data() + off, static_cast<int>(std::min<size_t>(req.size() - off, 1 << 30)));
      });
      if (!w.ok() || *w == 0) {
        if (reused && off == 0) return Outcome::stale;
        return w.ok() ? network_error("connection closed while sending") : w.take_error();
      }
      off += static_cast<size_t>(*w);
    }
    http::ResponseParser parser;
    parser.reset(head);
    char buf[16384];
    size_t total = 0;
    while (!parser.complete()) {
      // Wait first when nothing is buffered: the answer cannot be there yet right after sending, and
      // an SSL_read would only cost a recv(2) that says EAGAIN.
      Status ready = SSL_has_pending(c.ssl.get()) ? Status() : wait_fd(c.fd, false, deadline, "reading the response");
      auto r = ready.ok() ? ssl_io(c, deadline, "reading the response", [&] { return SSL_read(c.ssl.get(), buf, sizeof buf); })
                          : Result<int>(ready.error());
      if (!r.ok()) {
        if (reused && total == 0) return Outcome::stale;
        return r.take_error();
      }
      if (*r == 0) {
        if (reused && total == 0) return Outcome::stale;
        parser.finish_eof();
        if (!parser.complete()) return network_error(parser.error_message());
        break;
      }
      total += static_cast<size_t>(*r);
      parser.feed(std::string_view(buf, static_cast<size_t>(*r)));
      if (parser.failed()) return network_error(parser.error_message());
    }
    out = std::move(parser.response());
    return Outcome::done;
  }

  Result<http::Response> once(Pool& p, size_t u, const std::string& method, const std::string& target,
                              const std::string& body, const http::Headers& headers) {
    std::string req = build_request(urls[u], method, target, body, headers);
    for (int round = 0; round < 3; ++round) {
      std::unique_ptr<Conn> c = round < 2 ? take_idle(p, u) : nullptr;
      bool reused = c != nullptr;
      if (!c) {
        ASSIGN_OR_RETURN(c, connect(p, u));
      }
      http::Response resp;
      ASSIGN_OR_RETURN(Outcome o, exchange(*c, reused, req, method == "HEAD", resp));
      if (o == Outcome::stale) continue;
      keep_ticket(p, u, *c);
      if (resp.keep_alive) put_idle(p, u, std::move(c));
      return resp;
    }
    return network_error(urls[u].text + ": keep-alive connections keep closing");
  }

  // The daemon closes a connection that brings no TLS handshake within its server.handshaketimeout (default
  // 10 s, 3-4 s while its handshake slots fill up): an older begun connection is closed, not used, and a
  // younger one the daemon closed fails its handshake and is replaced by a fresh one (connect()).
  static constexpr auto kBegunMaxAge = std::chrono::seconds(5);

  void start_connecting() {
    auto p = pool();
    if (!p.ok()) return;
    size_t u = pick_url(**p);
    {
      std::lock_guard<std::mutex> g((*p)->mu);
      if ((*p)->urls[u].begun.get() >= 0) return;
    }
    auto fd = net::connect_start(urls[u]);
    if (fd.ok()) keep_begun(**p, u, UniqueFd(*fd));  // else the next request connects and reports the cause
  }

  void keep_begun(Pool& p, size_t u, UniqueFd fd) {
    std::lock_guard<std::mutex> g(p.mu);
    if (p.urls[u].begun.get() >= 0) return;  // one at a time: `fd` is closed
    p.urls[u].begun = std::move(fd);
    p.urls[u].begun_at = Clock::now();
  }

  UniqueFd take_begun(Pool& p, size_t u) {
    std::lock_guard<std::mutex> g(p.mu);
    UniqueFd fd = std::move(p.urls[u].begun);
    if (Clock::now() - p.urls[u].begun_at > kBegunMaxAge) return UniqueFd();  // closes it
    return fd;
  }

  void connect_ahead() {
    auto p = pool();
    if (!p.ok()) return;
    size_t u = pick_url(**p);
    auto c = connect(**p, u);
    if (c.ok()) put_idle(**p, u, std::move(*c));
  }

  // relic's client asks GET /directory before it signs and tries the hosts listed (docs/relic-protocol.md
  // §2.2); here once per process, the hosts joining the URL list after the configured ones. A directory
  // that does not answer leaves the list as configured.
  void learn_siblings(Pool& p) {
    if (!directory_index || directory_asked.exchange(true)) return;
    auto r = once(p, *directory_index, "GET", "/directory", "", {{"Accept", "application/json, */*"}});
    if (!r.ok() || r->status != 200) return;
    auto j = nlohmann::json::parse(r->body, nullptr, false);
    if (!j.is_object() || !j.contains("hosts") || !j["hosts"].is_array()) return;
    std::lock_guard<std::mutex> g(p.mu);
    for (const auto& h : j["hosts"]) {
      if (!h.is_string() || urls.size() == urls.capacity()) continue;
      auto url = parse_url(h.get<std::string>());
      if (!url.ok()) continue;
      bool known = std::any_of(urls.begin(), urls.end(), [&](const Url& u) {
        return u.host == url->host && u.port == url->port && u.path == url->path;
      });
      if (known) {
        for (size_t i = 0; i < urls.size(); ++i)  // the directory lists a daemon it also serves as
          if (urls[i].host == url->host && urls[i].port == url->port && urls[i].path == url->path)
            p.urls[i].directory_only = false;
        continue;
      }
      urls.push_back(std::move(url).value());
      p.urls.emplace_back();
    }
  }

  // `only`: every attempt goes to that URL (a held request lives on the daemon that holds it);
  // `used`: the URL of the last attempt.
  Result<http::Response> request(const std::string& method, const std::string& target, const std::string& body,
                                 const http::Headers& headers, std::optional<size_t> only = std::nullopt,
                                 size_t* used = nullptr) {
    ASSIGN_OR_RETURN(Pool * p, pool());
    learn_siblings(*p);
    const int attempts = std::max(0, config.retries) + 1;
    Result<http::Response> last = network_error("no attempt made");
    int sleeps = 0;
    for (int attempt = 0; attempt < attempts; ++attempt) {
      size_t u = only ? *only : pick_url(*p);
      if (used) *used = u;
      last = once(*p, u, method, target, body, headers);
      bool elsewhere = !only && any_healthy_other_than(*p, u);
      int delay_ms = 0;
      if (!last.ok()) {
        // A local problem: retrying cannot help. A daemon whose certificate is not trusted is skipped
        // when another is there (a sibling may be set up right), never asked again.
        ErrorCode code = last.error().code;
        if (code != ErrorCode::network && !(code == ErrorCode::tls_trust && elsewhere)) return last;
        penalize(*p, u);
        delay_ms = elsewhere ? 0 : backoff_ms(sleeps++);
      } else if (retryable_status(last->status)) {
        int ra = parse_retry_after(*last);
        if (last->status != 500) penalize(*p, u);
        delay_ms = ra > 0 ? std::min(ra * 1000, kRetryAfterCapMs) : (elsewhere ? 0 : backoff_ms(sleeps++));
      } else {
        reward(*p, u);
        return last;
      }
      if (attempt + 1 < attempts && delay_ms > 0) std::this_thread::sleep_for(milliseconds(delay_ms));
    }
    return last;
  }
};

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::create(const Config& config, Start start) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->kept_keys = std::make_unique<KeyListCache>(config);
  if (config.urls.empty()) return config_error("no daemon URL configured");
  impl->urls.reserve(config.urls.size() + 1 + kMaxSiblings);
  for (const auto& u : config.urls) {
    ASSIGN_OR_RETURN(Url url, parse_url(u));
    impl->urls.push_back(std::move(url));
  }
  if (!config.directory_url.empty()) {
    auto at = std::find(config.urls.begin(), config.urls.end(), config.directory_url);
    impl->directory_index = static_cast<size_t>(at - config.urls.begin());
    if (at == config.urls.end()) {
      ASSIGN_OR_RETURN(Url url, parse_url(config.directory_url));
      impl->urls.push_back(std::move(url));
      impl->directory_only = true;
    }
  }
  // Start::connecting: the connection to the first URL (the one a fresh pool picks) begins before the TLS
  // context is built, so the kernel's TCP handshake overlaps OpenSSL's start (its configuration, the
  // certificate and the key: several milliseconds).
  UniqueFd early;
  if (start == Start::connecting)
    if (auto fd = net::connect_start(impl->urls[0]); fd.ok()) early = UniqueFd(*fd);
  // Builds the TLS context now so a bad certificate or key is reported at creation.
  auto pool = impl->pool();
  if (!pool.ok()) return pool.take_error();
  if (early.get() >= 0) impl->keep_begun(**pool, 0, std::move(early));
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

const Config& Client::config() const { return impl_->config; }

void Client::connect_ahead() { impl_->connect_ahead(); }
void Client::start_connecting() { impl_->start_connecting(); }

Result<http::Response> Client::request(const std::string& method, const std::string& target, const std::string& body,
                                       const http::Headers& headers) {
  return impl_->request(method, target, body, headers);
}

namespace {

constexpr int kPollWaitSeconds = 25;     // ?wait= of the long-poll (the daemon caps it at 30)
constexpr int kExpiryGraceSeconds = 60;  // clock skew allowance past a held request's `expires`

Error problem_of(const http::Response& r) {
  Error e = relay::decode_problem(r.status, r.body);
  if (int ra = parse_retry_after(r)) e.retry_after = ra;
  return e;
}

std::string request_path(const std::string& id) { return "/v1/requests/" + http::percent_encode(id); }

Error denied_error(const relay::ApprovalRequest& r) {
  std::string m = "request " + r.id + " for key '" + r.key + "' was denied";
  if (!r.decided_by.empty()) m += " by " + r.decided_by;
  if (!r.reason.empty()) m += ": " + r.reason;
  return Error(ErrorCode::request_denied, m);
}

Error expired_error(const relay::ApprovalRequest& r) {
  return Error(ErrorCode::request_expired, "request " + r.id + " for key '" + r.key + "' expired" +
                                               (r.expires.empty() ? "" : " at " + r.expires) +
                                               " without an approver's decision");
}

}  // namespace

Result<relay::KeyList> Client::list_keys_full() {
  ASSIGN_OR_RETURN(http::Response r, request("GET", "/v1/keys"));
  if (r.status != 200) return problem_of(r);
  auto list = relay::decode_key_list_full(r.body);
  if (list.ok()) impl_->kept_keys->store(r.body);
  return list;
}

std::string Client::kept_keys_path() const { return impl_->kept_keys->path(); }

Result<relay::KeyList> Client::list_keys_kept(bool* from_disk) {
  auto kept = impl_->kept_keys->load();
  if (from_disk) *from_disk = kept.has_value();
  if (kept) return std::move(*kept);
  return list_keys_full();
}

Result<std::vector<relay::KeyDescription>> Client::list_keys() {
  ASSIGN_OR_RETURN(relay::KeyList list, list_keys_full());
  return std::move(list.keys);
}

Result<Bytes> Client::sign(const std::string& key_name, const relay::SignRequest& req, const HoldObserver& on_hold) {
  size_t origin = 0;
  ASSIGN_OR_RETURN(http::Response r,
                   impl_->request("POST", "/v1/keys/" + http::percent_encode(key_name) + "/sign",
                                  relay::encode_sign_request(req), {}, std::nullopt, &origin));
  if (r.status == 200) return relay::decode_sign_response(r.body);
  if (r.status != 202) {
    Error e = problem_of(r);
    // The kept key list named a key that changed or is gone: the next process asks the daemon.
    if (!req.key_version.empty() && (e.code == ErrorCode::key_changed || e.code == ErrorCode::forbidden))
      impl_->kept_keys->drop();
    return e;
  }
  ASSIGN_OR_RETURN(relay::ApprovalRequest held, relay::decode_approval_request(r.body));
  const std::string* location = r.header("Location");
  std::string target = location && location->rfind("/v1/requests/", 0) == 0 ? *location : request_path(held.id);
  if (on_hold && held.pending()) on_hold(held);
  return await_decision(std::move(held), target, origin);
}

// Long-polls a held request until it is decided or the wait is over. Bounded by remote.approvalwait and
// by the request's own expiry (plus a grace for clock skew) when the daemon cannot be asked. Only the
// daemon that answered the POST (`origin`, the Location's origin) knows the request: while it is down
// the poll waits for it rather than ask a sibling, which would answer 403.
Result<Bytes> Client::await_decision(relay::ApprovalRequest held, const std::string& target, size_t origin) {
  const Config& cfg = impl_->config;
  auto deadline = Clock::now() + milliseconds(cfg.approval_wait_ms);
  bool capped_by_expiry = false;
  if (auto expires = relay::parse_utc_time(held.expires)) {
    auto left = std::chrono::seconds(*expires + kExpiryGraceSeconds - static_cast<int64_t>(std::time(nullptr)));
    if (Clock::now() + left < deadline) {
      deadline = Clock::now() + left;
      capped_by_expiry = true;
    }
  }
  // A long-poll must end well inside the per-request read timeout.
  const int max_wait = std::clamp(cfg.request_timeout_ms / 1000 - 5, 1, kPollWaitSeconds);
  int failures = 0;
  for (;;) {
    if (held.state == "signed") {
      if (held.signature.empty()) return internal_error("request " + held.id + " is signed but the daemon sent no signature");
      return std::move(held.signature);
    }
    if (held.state == "denied") return denied_error(held);
    if (held.state == "expired") return expired_error(held);
    int left_ms = remaining_ms(deadline);
    if (left_ms == 0) {
      if (capped_by_expiry) return expired_error(held);
      return Error(ErrorCode::request_expired, "no decision on request " + held.id + " for key '" + held.key +
                                                   "' within remote.approvalwait (" +
                                                   std::to_string(cfg.approval_wait_ms / 1000) + " s)");
    }
    int wait = std::clamp(left_ms / 1000, 1, max_wait);
    auto t0 = Clock::now();
    auto r = impl_->request("GET", target + "?wait=" + std::to_string(wait), {}, {}, origin);
    int pause_ms = 0;
    if (r.ok() && r->status == 200) {
      ASSIGN_OR_RETURN(held, relay::decode_approval_request(r->body));
      failures = 0;
      // A state in between (approved, being signed) or a daemon that answers at once: do not spin.
      if (Clock::now() - t0 < std::chrono::seconds(1)) pause_ms = 1000;
    } else if (r.ok() && !retryable_status(r->status)) {
      return problem_of(*r);
    } else if (!r.ok() && r.error().code != ErrorCode::network) {
      return r.take_error();
    } else {
      pause_ms = backoff_ms(std::min(failures++, 3));  // daemon down or restarting: the id stays valid
    }
    if (pause_ms > 0) std::this_thread::sleep_for(milliseconds(std::min(pause_ms, remaining_ms(deadline))));
  }
}

Result<std::vector<relay::ApprovalRequest>> Client::list_requests(bool all) {
  ASSIGN_OR_RETURN(http::Response r, request("GET", all ? "/v1/requests?state=all" : "/v1/requests"));
  if (r.status != 200) return problem_of(r);
  return relay::decode_approval_list(r.body);
}

Result<relay::ApprovalRequest> Client::get_request(const std::string& id, int wait_seconds) {
  std::string target = request_path(id);
  if (wait_seconds > 0) target += "?wait=" + std::to_string(wait_seconds);
  ASSIGN_OR_RETURN(http::Response r, request("GET", target));
  if (r.status != 200) return problem_of(r);
  return relay::decode_approval_request(r.body);
}

Result<relay::ApprovalRequest> Client::approve_request(const std::string& id, const std::string& comment) {
  nlohmann::json body = nlohmann::json::object();
  if (!comment.empty()) body["comment"] = comment;
  ASSIGN_OR_RETURN(http::Response r, request("POST", request_path(id) + "/approve", body.dump()));
  if (r.status != 200) return problem_of(r);
  return relay::decode_approval_request(r.body);
}

Result<relay::ApprovalRequest> Client::deny_request(const std::string& id, const std::string& reason) {
  if (reason.empty()) return bad_request("a denial needs a reason");
  ASSIGN_OR_RETURN(http::Response r,
                   request("POST", request_path(id) + "/deny", nlohmann::json{{"reason", reason}}.dump()));
  if (r.status != 200) return problem_of(r);
  return relay::decode_approval_request(r.body);
}

Status Client::health() {
  ASSIGN_OR_RETURN(http::Response r, request("GET", "/health"));
  if (r.status != 200) return problem_of(r);
  return {};
}

}  // namespace p11relay::client
