// libp11relay-client against a scripted in-process mutual-TLS server: keep-alive reuse, retries on
// 5xx honouring Retry-After, no retries on 4xx, failover with a penalty, stale keep-alive connections,
// server authentication (CA + host name, pinned SPKI fingerprint), timeouts, SIGPIPE and fork().
#include "client/client.h"

#include "common/x509.h"

#include <doctest/doctest.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>

using namespace p11relay;
using namespace p11relay::client;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// ---------------------------------------------------------------------------------------------
// Test PKI: a CA, a server certificate for IP 127.0.0.1, a client certificate; and a second CA.

X509_ptr issue(EVP_PKEY* key, const std::string& cn, EVP_PKEY* ca_key, X509* ca, const char* san, bool is_ca) {
  X509_ptr x(X509_new());
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), static_cast<long>(std::hash<std::string>{}(cn) & 0xffffff));
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 86400);
  X509_set_pubkey(x.get(), key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), ca ? X509_get_subject_name(ca) : X509_get_subject_name(x.get()));
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca ? ca : x.get(), x.get(), nullptr, nullptr, 0);
  auto add = [&](int nid, const char* value) {
    X509_EXTENSION_ptr e(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
    X509_add_ext(x.get(), e.get(), -1);
  };
  if (is_ca) add(NID_basic_constraints, "critical,CA:TRUE");
  if (san) add(NID_subject_alt_name, san);
  X509_sign(x.get(), ca_key, EVP_sha256());
  return x;
}

void write_pem(const fs::path& p, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(p.c_str(), "w");
  if (cert) PEM_write_X509(f, cert);
  if (key) PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
}

struct Pki {
  fs::path dir;
  EVP_PKEY_ptr ca_key, server_key, client_key, other_key;
  X509_ptr ca, server, client, other_ca;
  std::string server_fp;

  Pki() {
    char tmpl[] = "/tmp/p11relay-client-tls-XXXXXX";
    dir = mkdtemp(tmpl);
    ca_key.reset(EVP_EC_gen("P-256"));
    server_key.reset(EVP_EC_gen("P-256"));
    client_key.reset(EVP_EC_gen("P-256"));
    other_key.reset(EVP_EC_gen("P-256"));
    ca = issue(ca_key.get(), "test ca", ca_key.get(), nullptr, nullptr, true);
    server = issue(server_key.get(), "server", ca_key.get(), ca.get(), "IP:127.0.0.1", false);
    client = issue(client_key.get(), "client", client_key.get(), nullptr, nullptr, false);
    other_ca = issue(other_key.get(), "other ca", other_key.get(), nullptr, nullptr, true);
    write_pem(dir / "ca.pem", ca.get(), nullptr);
    write_pem(dir / "other-ca.pem", other_ca.get(), nullptr);
    write_pem(dir / "server.pem", server.get(), nullptr);
    write_pem(dir / "server.key", nullptr, server_key.get());
    write_pem(dir / "client.pem", client.get(), client_key.get());  // one file with both
    server_fp = spki_fingerprint(server.get());
  }
  ~Pki() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

const Pki& pki() {
  static Pki p;
  return p;
}

// ---------------------------------------------------------------------------------------------
// A scripted HTTPS server: one thread per connection; the handler returns the raw response, or
// "" to drop the connection without answering.

struct TestServer {
  using Handler = std::function<std::string(const http::Request&, int request_no)>;

  int listen_fd = -1;
  int port = 0;
  SSL_CTX_ptr ctx_owner;
  SSL_CTX* ctx = nullptr;  // ctx_owner.get()
  Handler handler;
  std::atomic<bool> stop{false};
  std::atomic<int> connections{0}, requests{0}, resumed{0};
  std::thread acceptor;
  std::mutex mu;
  std::vector<std::thread> workers;
  bool close_after_response = false;

  explicit TestServer(Handler h) : handler(std::move(h)) {
    ctx_owner.reset(SSL_CTX_new(TLS_server_method()));
    ctx = ctx_owner.get();
    SSL_CTX_use_certificate(ctx, pki().server.get());
    SSL_CTX_use_PrivateKey(ctx, pki().server_key.get());
    // Mutual TLS like p11relayd: a client certificate is required (self-signed ones accepted).
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, [](int, X509_STORE_CTX*) { return 1; });
    // Session resumption like p11relayd (TLS 1.3 tickets); refuse_resumption() undoes it.
    SSL_CTX_set_session_id_context(ctx, reinterpret_cast<const unsigned char*>("test"), 4);
    listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(listen_fd, 16);
    socklen_t len = sizeof a;
    ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    acceptor = std::thread([this] { accept_loop(); });
  }

  ~TestServer() {
    stop = true;
    acceptor.join();
    std::lock_guard<std::mutex> g(mu);
    for (auto& w : workers) w.join();
    ::close(listen_fd);
  }

  std::string url() const { return "https://127.0.0.1:" + std::to_string(port) + "/"; }

  // Like a server whose client verification has no session id context: an offered ticket makes
  // OpenSSL abort the handshake with an internal-error alert.
  void refuse_resumption() { SSL_CTX_set_session_id_context(ctx, nullptr, 0); }

  void accept_loop() {
    while (!stop) {
      pollfd p = {listen_fd, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      ++connections;
      std::lock_guard<std::mutex> g(mu);
      workers.emplace_back([this, fd] { serve(fd); });
    }
  }

  void serve(int fd) {
    // The server side is not under test: keep its own writes to closed sockets from raising SIGPIPE
    // (a thread-directed signal, blocked in this thread only), so the process-wide default stays armed
    // for the client code running on the test's thread.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    timeval tv{0, 100 * 1000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL_ptr owner(SSL_new(ctx));
    SSL* ssl = owner.get();
    SSL_set_fd(ssl, fd);
    int hs;
    while ((hs = SSL_accept(ssl)) <= 0 && !stop && SSL_get_error(ssl, hs) == SSL_ERROR_WANT_READ) {
    }
    if (hs == 1 && SSL_session_reused(ssl)) ++resumed;
    http::RequestParser parser;
    char buf[16384];
    bool open = hs == 1;
    while (open && !stop) {
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n <= 0) {
        int e = SSL_get_error(ssl, n);
        if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_SYSCALL) && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          ERR_clear_error();
          continue;
        }
        break;
      }
      std::string_view data(buf, static_cast<size_t>(n));
      while (open) {
        size_t used = parser.feed(data);
        data.remove_prefix(used);
        if (parser.state() == http::ParseState::headers_complete) {
          parser.resume();
          continue;
        }
        if (parser.state() == http::ParseState::message_complete) {
          std::string resp = handler(parser.request(), ++requests);
          if (resp.empty()) {
            open = false;
            break;
          }
          SSL_write(ssl, resp.data(), static_cast<int>(resp.size()));
          if (close_after_response) open = false;
          parser.reset();
          continue;
        }
        if (parser.state() == http::ParseState::error) open = false;
        if (data.empty()) break;
      }
    }
    // Abrupt close: no close_notify, like a daemon that was killed.
    owner.reset();
    ::close(fd);
  }
};

std::string response(int status, const std::string& body, const std::string& extra_headers = {}) {
  return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n" + extra_headers + "\r\n" + body;
}

std::string keys_body() { return relay::encode_key_list({}); }

Config config_for(std::vector<std::string> urls) {
  Config c;
  c.urls = std::move(urls);
  c.certfile = (pki().dir / "client.pem").string();
  c.keyfile = c.certfile;
  c.cacert = (pki().dir / "ca.pem").string();
  c.connect_timeout_ms = 2000;
  c.request_timeout_ms = 5000;
  c.retries = 2;
  c.key_list_cache_seconds = 0;  // the tests that keep a key list turn it on, in their own directory
  return c;
}

std::unique_ptr<Client> make_client(const Config& c) {
  auto r = Client::create(c);
  REQUIRE_MESSAGE(r.ok(), r.error().message);
  return std::move(r).value();
}

int dead_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);  // nothing listens here now
  return ntohs(a.sin_port);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

TEST_CASE("Client::create rejects bad URLs and unreadable credentials with config errors") {
  Config c;
  auto r = Client::create(c);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::config);

  c.urls = {"https://[::1:6300"};
  c.certfile = "/nonexistent.pem";
  r = Client::create(c);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("IPv6") != std::string::npos);

  c.urls = {"https://127.0.0.1:6300"};
  r = Client::create(c);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::config);
  CHECK(r.error().message.find("/nonexistent.pem") != std::string::npos);
}

TEST_CASE("keep-alive: requests reuse one pooled connection; paths and headers are right") {
  std::string seen_target, seen_host, seen_ct, seen_body;
  TestServer s([&](const http::Request& r, int) {
    seen_target = r.target;
    seen_host = r.header("Host") ? *r.header("Host") : "";
    seen_ct = r.header("Content-Type") ? *r.header("Content-Type") : "";
    seen_body = r.body;
    if (r.method == "POST") return response(200, relay::encode_sign_response(Bytes{1, 2, 3}));
    return response(200, keys_body());
  });
  auto c = make_client(config_for({s.url()}));
  for (int i = 0; i < 3; ++i) {
    auto keys = c->list_keys();
    REQUIRE_MESSAGE(keys.ok(), keys.error().message);
  }
  CHECK(seen_target == "/v1/keys");
  CHECK(seen_host == "127.0.0.1:" + std::to_string(s.port));
  relay::SignRequest req;
  req.mechanism = "CKM_ECDSA";
  req.input = Bytes(32, 7);
  auto sig = c->sign("my key/1", req);
  REQUIRE(sig.ok());
  CHECK(*sig == Bytes{1, 2, 3});
  CHECK(seen_target == "/v1/keys/my%20key%2F1/sign");
  CHECK(seen_ct == "application/json");
  CHECK(relay::decode_sign_request(seen_body)->input == req.input);
  CHECK(s.connections == 1);
  CHECK(s.requests == 4);
}

TEST_CASE("503 with Retry-After is retried after the delay; 4xx is not retried and maps to its CKR") {
  TestServer s([&](const http::Request&, int n) {
    if (n == 1)
      return response(503, relay::encode_problem(Error(ErrorCode::token_not_present, "re-opening")), "Retry-After: 1\r\n");
    if (n == 2) return response(200, keys_body());
    return response(403, relay::encode_problem(Error(ErrorCode::forbidden, "not yours")));
  });
  auto c = make_client(config_for({s.url()}));
  auto t0 = Clock::now();
  auto keys = c->list_keys();
  REQUIRE_MESSAGE(keys.ok(), keys.error().message);
  CHECK(seconds_since(t0) >= 0.9);
  CHECK(s.requests == 2);
  relay::SignRequest req;
  req.mechanism = "CKM_ECDSA";
  req.input = Bytes(32);
  auto sig = c->sign("k", req);
  REQUIRE_FALSE(sig.ok());
  CHECK(sig.error().ckr == CKR_KEY_HANDLE_INVALID);
  CHECK(sig.error().http_status == 403);
  CHECK(s.requests == 3);
}

TEST_CASE("500/502/504 are retried `retries` times, then the last problem is returned") {
  TestServer s([&](const http::Request&, int n) {
    int status = n == 1 ? 502 : n == 2 ? 504 : 500;
    return response(status, relay::encode_problem(Error(ErrorCode::device_error, "token said no")));
  });
  auto cfg = config_for({s.url()});
  cfg.retries = 2;
  auto c = make_client(cfg);
  auto keys = c->list_keys();
  REQUIRE_FALSE(keys.ok());
  CHECK(keys.error().code == ErrorCode::device_error);
  CHECK(keys.error().ckr == CKR_DEVICE_ERROR);
  CHECK(s.requests == 3);
}

TEST_CASE("failover: a dead URL is skipped at once and penalised for later requests") {
  TestServer s([&](const http::Request&, int) { return response(200, keys_body()); });
  auto cfg = config_for({"https://127.0.0.1:" + std::to_string(dead_port()) + "/", s.url()});
  auto c = make_client(cfg);
  auto t0 = Clock::now();
  REQUIRE(c->list_keys().ok());
  CHECK(seconds_since(t0) < 0.5);  // no backoff sleep while another URL is healthy
  REQUIRE(c->list_keys().ok());
  REQUIRE(c->list_keys().ok());
  CHECK(s.requests == 3);
  CHECK(s.connections == 1);
}

TEST_CASE("all URLs down: connection errors after retries with backoff are network errors (CKR_DEVICE_ERROR)") {
  auto cfg = config_for({"https://127.0.0.1:" + std::to_string(dead_port()) + "/"});
  cfg.retries = 2;
  auto c = make_client(cfg);
  auto t0 = Clock::now();
  auto r = c->list_keys();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::network);
  CHECK(r.error().ckr == CKR_DEVICE_ERROR);
  CHECK(r.error().message.find("connect") != std::string::npos);
  double took = seconds_since(t0);
  CHECK(took >= 0.2);  // backed off between attempts
  CHECK(took < 3.0);
}

TEST_CASE("a keep-alive connection the server dropped is replaced transparently") {
  TestServer s([&](const http::Request&, int) { return response(200, keys_body()); });
  s.close_after_response = true;  // answers keep-alive, then closes (a daemon restart between requests)
  auto cfg = config_for({s.url()});
  cfg.retries = 0;                 // must not need a retry
  auto c = make_client(cfg);
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto r = c->list_keys();
    REQUIRE_MESSAGE(r.ok(), r.error().message);
  }
  CHECK(s.connections == 3);
  CHECK(s.resumed == 2);  // each reconnect resumed the TLS session from the previous connection's ticket
}

TEST_CASE("a server that breaks off a resumption attempt gets full handshakes from then on") {
  TestServer s([&](const http::Request&, int) { return response(200, keys_body()); });
  s.close_after_response = true;
  s.refuse_resumption();
  auto cfg = config_for({s.url()});
  cfg.retries = 0;  // the fallback is not a retry
  auto c = make_client(cfg);
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto r = c->list_keys();
    REQUIRE_MESSAGE(r.ok(), r.error().message);
  }
  CHECK(s.connections == 4);  // one refused resumption attempt, then plain handshakes
  CHECK(s.resumed == 0);
}

TEST_CASE("server authentication: CA + IP SAN, wrong CA, host name mismatch, pinned SPKI fingerprint") {
  TestServer s([&](const http::Request&, int) { return response(200, keys_body()); });
  auto cfg = config_for({s.url()});
  cfg.retries = 0;
  CHECK(make_client(cfg)->list_keys().ok());

  auto wrong_ca = cfg;
  wrong_ca.cacert = (pki().dir / "other-ca.pem").string();
  auto r = make_client(wrong_ca)->list_keys();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("not trusted") != std::string::npos);
  CHECK(r.error().code == ErrorCode::tls_trust);  // its own class (CLI exit 5), not "cannot reach"

  auto wrong_name = cfg;
  wrong_name.urls = {"https://localhost:" + std::to_string(s.port) + "/"};  // SAN is IP:127.0.0.1 only
  r = make_client(wrong_name)->list_keys();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::tls_trust);

  auto pinned = cfg;
  pinned.cacert.clear();
  pinned.server_fingerprint = pki().server_fp;
  CHECK(make_client(pinned)->list_keys().ok());
  pinned.server_fingerprint = std::string(64, '0');
  r = make_client(pinned)->list_keys();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("does not match serverfingerprint") != std::string::npos);
  CHECK(r.error().code == ErrorCode::tls_trust);
}

TEST_CASE("read timeout: a server that never answers") {
  TestServer s([&](const http::Request&, int) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    return response(200, keys_body());
  });
  auto cfg = config_for({s.url()});
  cfg.request_timeout_ms = 300;
  cfg.retries = 0;
  auto c = make_client(cfg);
  auto t0 = Clock::now();
  auto r = c->list_keys();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("timeout") != std::string::npos);
  CHECK(seconds_since(t0) < 1.2);
}

TEST_CASE("writing to a connection the server reset never raises SIGPIPE") {
  struct sigaction old {};
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &dfl, &old);  // the default action would kill this test process
  TestServer s([&](const http::Request&, int) { return std::string(); });  // drops every connection
  auto cfg = config_for({s.url()});
  cfg.retries = 1;
  auto c = make_client(cfg);
  relay::SignRequest req;
  req.mechanism = "CKM_RSA_PKCS";
  req.input = Bytes(8 * 1024 * 1024, 1);  // large enough to still be writing when the peer is gone
  for (int i = 0; i < 3; ++i) {
    auto r = c->sign("k", req);
    CHECK_FALSE(r.ok());
  }
  sigaction(SIGPIPE, &old, nullptr);
}

TEST_CASE("fork: the child opens its own connection; the parent's pooled one keeps working") {
  TestServer s([&](const http::Request&, int) { return response(200, keys_body()); });
  auto c = make_client(config_for({s.url()}));
  REQUIRE(c->list_keys().ok());
  CHECK(s.connections == 1);
  pid_t pid = fork();
  if (pid == 0) {
    bool ok = c->list_keys().ok() && c->list_keys().ok();
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  REQUIRE(c->list_keys().ok());  // the parent's TLS session was not touched by the child
  CHECK(s.connections == 2);
  CHECK(s.requests == 4);
}

// ---------------------------------------------------------------------------------------------
// Approval workflow (docs/policy.md): 202 + long-poll of Location until a decision.

namespace {

std::string held_json(const std::string& state, const std::string& extra = {}) {
  return R"({"id":"r-0123456789abcdef","key":"ev","client":"ci","mechanism":"CKM_ECDSA","digest":"sha256",)"
         R"("created":"2026-11-25T14:03:00Z","expires":"2099-01-01T00:00:00Z","state":")" +
         state + "\"" + extra + "}";
}

std::string held_202() {
  return response(202, "{\"request\":" + held_json("pending") + "}", "Location: /v1/requests/r-0123456789abcdef\r\n");
}

relay::SignRequest ecdsa_request() {
  relay::SignRequest req;
  req.mechanism = "CKM_ECDSA";
  req.input = Bytes(32, 7);
  req.filename = "setup.exe";
  req.filesize = 1048576;
  req.digest_alg = HashAlg::sha256;
  return req;
}

}  // namespace

TEST_CASE("approval: 202 is long-polled at Location until signed; the hold is reported once") {
  std::vector<std::string> targets;
  std::string post_body;
  TestServer s([&](const http::Request& r, int n) {
    targets.push_back(r.target);
    if (r.method == "POST") {
      post_body = r.body;
      return held_202();
    }
    if (n < 4) return response(200, held_json("pending"));
    return response(200, held_json("signed", R"(,"decided_by":"alice","signature":"AQID")"));
  });
  auto c = make_client(config_for({s.url()}));
  std::vector<std::string> holds;
  auto sig = c->sign("ev", ecdsa_request(), [&](const relay::ApprovalRequest& r) { holds.push_back(r.id); });
  REQUIRE_MESSAGE(sig.ok(), sig.error().message);
  CHECK(*sig == Bytes{1, 2, 3});
  CHECK(holds == std::vector<std::string>{"r-0123456789abcdef"});
  REQUIRE(targets.size() == 4);
  CHECK(targets[0] == "/v1/keys/ev/sign");
  for (size_t i = 1; i < targets.size(); ++i) CHECK(targets[i].rfind("/v1/requests/r-0123456789abcdef?wait=", 0) == 0);
  auto sent = relay::decode_sign_request(post_body);
  REQUIRE(sent.ok());
  CHECK(sent->filename == "setup.exe");
  CHECK(sent->filesize == std::optional<uint64_t>(1048576));
}

TEST_CASE("approval: denied is request-denied (CKR_FUNCTION_REJECTED) with approver and reason; expired is "
          "request-expired (CKR_FUNCTION_CANCELED)") {
  std::string final_state;
  TestServer s([&](const http::Request& r, int) {
    if (r.method == "POST") return held_202();
    return response(200, held_json(final_state, R"(,"decided_by":"alice","reason":"not a release build")"));
  });
  auto c = make_client(config_for({s.url()}));
  final_state = "denied";
  auto r = c->sign("ev", ecdsa_request());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::request_denied);
  CHECK(r.error().ckr == CKR_FUNCTION_REJECTED);
  CHECK(r.error().message.find("alice") != std::string::npos);
  CHECK(r.error().message.find("not a release build") != std::string::npos);
  final_state = "expired";
  r = c->sign("ev", ecdsa_request());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::request_expired);
  CHECK(r.error().ckr == CKR_FUNCTION_CANCELED);
  CHECK(r.error().message.find("r-0123456789abcdef") != std::string::npos);
}

TEST_CASE("approval: dropped connections and 503 while polling are retried with the same request id") {
  std::atomic<int> polls{0};
  TestServer s([&](const http::Request& r, int) -> std::string {
    if (r.method == "POST") return held_202();
    int p = ++polls;
    if (p == 1 || p == 2) return std::string();  // daemon killed mid-poll
    if (p == 3) return response(503, relay::encode_problem(Error(ErrorCode::unavailable, "starting")));
    return response(200, held_json("signed", R"(,"signature":"AQID")"));
  });
  auto cfg = config_for({s.url()});
  cfg.retries = 0;  // the polling loop itself must carry on, not only request()'s retries
  auto c = make_client(cfg);
  auto sig = c->sign("ev", ecdsa_request());
  REQUIRE_MESSAGE(sig.ok(), sig.error().message);
  CHECK(*sig == Bytes{1, 2, 3});
  CHECK(polls == 4);
}

TEST_CASE("approval: the request is polled at the daemon that held it, not at a sibling, even while it is down") {
  std::atomic<int> polls{0}, sibling{0};
  TestServer holder([&](const http::Request& r, int) -> std::string {
    if (r.method == "POST") return held_202();
    int p = ++polls;
    if (p <= 2) return std::string();  // down for a moment: the sibling is healthy meanwhile
    return response(200, held_json("signed", R"(,"signature":"AQID")"));
  });
  TestServer other([&](const http::Request&, int) {  // another state directory: does not know the request
    ++sibling;
    return response(403, relay::encode_problem(Error(ErrorCode::forbidden, "no such request, or not yours")));
  });
  auto c = make_client(config_for({holder.url(), other.url()}));
  auto sig = c->sign("ev", ecdsa_request());
  REQUIRE_MESSAGE(sig.ok(), sig.error().message);
  CHECK(*sig == Bytes{1, 2, 3});
  CHECK(polls == 3);
  CHECK(sibling == 0);
}

TEST_CASE("approval: remote.approvalwait caps the total wait; a daemon answering at once is not hammered") {
  std::atomic<int> polls{0};
  TestServer s([&](const http::Request& r, int) {
    if (r.method == "POST") return held_202();
    ++polls;
    return response(200, held_json("pending"));
  });
  auto cfg = config_for({s.url()});
  cfg.approval_wait_ms = 2500;
  auto c = make_client(cfg);
  auto t0 = Clock::now();
  auto r = c->sign("ev", ecdsa_request());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::request_expired);
  CHECK(r.error().ckr == CKR_FUNCTION_CANCELED);
  CHECK(r.error().message.find("approvalwait") != std::string::npos);
  CHECK(seconds_since(t0) >= 2.4);
  CHECK(seconds_since(t0) < 6.0);
  CHECK(polls <= 4);
}

TEST_CASE("approval: 429 quota-exceeded and 403 policy-denied are not retried") {
  int status = 429;
  TestServer s([&](const http::Request&, int) {
    ErrorCode code = status == 429 ? ErrorCode::quota : ErrorCode::policy_denied;
    return response(status, relay::encode_problem(Error(code, "100 signatures per hour")), "Retry-After: 20\r\n");
  });
  auto c = make_client(config_for({s.url()}));
  auto t0 = Clock::now();
  auto r = c->sign("ev", ecdsa_request());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::quota);
  CHECK(r.error().ckr == CKR_FUNCTION_REJECTED);
  CHECK(r.error().retry_after == 20);
  CHECK(s.requests == 1);
  status = 403;
  r = c->sign("ev", ecdsa_request());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ErrorCode::policy_denied);
  CHECK(s.requests == 2);
  CHECK(seconds_since(t0) < 2.0);
}

TEST_CASE("requests API: list, show with wait, approve with comment, deny with reason, problems") {
  std::vector<std::string> seen;
  std::string last_body;
  TestServer s([&](const http::Request& r, int) {
    seen.push_back(r.method + " " + r.target);
    last_body = r.body;
    if (r.target.rfind("/v1/requests?", 0) == 0 || r.target == "/v1/requests")
      return response(200, "{\"requests\":[" + held_json("pending") + "]}");
    if (r.target.find("/approve") != std::string::npos)
      return response(403, relay::encode_problem(Error(ErrorCode::self_approval, "you submitted it")));
    if (r.target.find("/deny") != std::string::npos)
      return response(200, held_json("denied", R"(,"reason":"no")"));
    return response(200, held_json("pending"));
  });
  auto c = make_client(config_for({s.url()}));
  auto l = c->list_requests();
  REQUIRE(l.ok());
  REQUIRE(l->size() == 1);
  CHECK((*l)[0].key == "ev");
  REQUIRE(c->list_requests(true).ok());
  auto g = c->get_request("r-0123456789abcdef", 3);
  REQUIRE(g.ok());
  CHECK(g->pending());
  auto a = c->approve_request("r-0123456789abcdef", "looks fine");
  REQUIRE_FALSE(a.ok());
  CHECK(a.error().code == ErrorCode::self_approval);
  CHECK(a.error().http_status == 403);
  CHECK(last_body == R"({"comment":"looks fine"})");
  auto d = c->deny_request("r-0123456789abcdef", "no");
  REQUIRE(d.ok());
  CHECK(d->state == "denied");
  CHECK(last_body == R"({"reason":"no"})");
  CHECK_FALSE(c->deny_request("r-0123456789abcdef", "").ok());
  CHECK(seen == std::vector<std::string>{"GET /v1/requests", "GET /v1/requests?state=all",
                                         "GET /v1/requests/r-0123456789abcdef?wait=3",
                                         "POST /v1/requests/r-0123456789abcdef/approve",
                                         "POST /v1/requests/r-0123456789abcdef/deny"});
}

TEST_CASE("start_connecting: the next request finishes the begun connection instead of making another") {
  TestServer s([](const http::Request&, int) { return response(200, keys_body()); });
  auto c = make_client(config_for({s.url()}));
  c->start_connecting();
  c->start_connecting();  // one begun connection at a time
  REQUIRE(c->list_keys().ok());
  REQUIRE(c->list_keys().ok());
  CHECK(s.connections == 1);
  CHECK(s.requests == 2);
}

TEST_CASE("a begun connection that fails is no error of its own: the request connects again and fails over") {
  std::string dead = "https://127.0.0.1:" + std::to_string(dead_port()) + "/";
  TestServer s([](const http::Request&, int) { return response(200, keys_body()); });
  auto c = make_client(config_for({dead, s.url()}));
  c->start_connecting();  // to the first URL, the dead one
  auto keys = c->list_keys();
  REQUIRE_MESSAGE(keys.ok(), keys.error().message);
  CHECK(s.connections == 1);
}

TEST_CASE("the kept key list: read without a request, refreshed by list_keys_full, forgotten after 412 key-changed") {
  char tmpl[] = "/tmp/p11relay-kept-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  const char* was = std::getenv("XDG_CACHE_HOME");
  std::string before = was ? was : "";
  ::setenv("XDG_CACHE_HOME", dir.c_str(), 1);
  bool stale = false;
  relay::KeyDescription ev;
  ev.name = "ev";
  ev.spki = Bytes{1, 2, 3};
  TestServer s([&](const http::Request& r, int) {
    if (r.method == "POST")
      return stale ? response(412, relay::encode_problem(Error(ErrorCode::key_changed, "renewed")))
                   : response(200, relay::encode_sign_response(Bytes{9}));
    return response(200, relay::encode_key_list({ev}));
  });
  Config cfg = config_for({s.url()});
  cfg.key_list_cache_seconds = 3600;
  auto c = make_client(cfg);
  bool from_disk = true;
  REQUIRE(c->list_keys_kept(&from_disk).ok());
  CHECK_FALSE(from_disk);
  CHECK(s.requests == 1);
  auto second = make_client(cfg);  // another process
  auto kept = second->list_keys_kept(&from_disk);
  REQUIRE(kept.ok());
  CHECK(from_disk);
  CHECK(s.requests == 1);
  relay::SignRequest req;
  req.mechanism = "CKM_ECDSA";
  req.input = Bytes(32, 7);
  req.key_version = relay::key_version(kept->keys.at(0));
  stale = true;
  auto sig = second->sign(kept->keys.at(0).name, req);
  REQUIRE_FALSE(sig.ok());
  CHECK(sig.error().code == ErrorCode::key_changed);
  CHECK(sig.error().ckr == CKR_KEY_CHANGED);
  REQUIRE(make_client(cfg)->list_keys_kept(&from_disk).ok());
  CHECK_FALSE(from_disk);  // the next process asks the daemon
  if (was) ::setenv("XDG_CACHE_HOME", before.c_str(), 1);
  else ::unsetenv("XDG_CACHE_HOME");
  std::filesystem::remove_all(dir);
}
