// p11relayd: serves signing on PKCS#11 tokens over mutual TLS (relic API + relay API).
#include "daemon/config/config.h"
#include "daemon/signing/key_overlap.h"
#include "daemon/transport/listen_fds.h"
#include "daemon/config/reload.h"
#include "daemon/policy/requests_api.h"
#include "daemon/transport/router.h"
#include "daemon/transport/server.h"
#include "daemon/service.h"
#include "daemon/signers/signers.h"
#include "daemon/config/startup.h"

#include <CLI/CLI.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#ifdef P11RELAY_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <fstream>
#include <future>
#include <iostream>
#include <thread>

using namespace p11relay;
using namespace p11relay::daemon;

namespace {

void notify(const std::string& what) {
#ifdef P11RELAY_HAVE_SYSTEMD
  sd_notify(0, what.c_str());
#else
  (void)what;
#endif
}

// Under systemd, stderr is a journal stream when JOURNAL_STREAM names its device and inode
// (systemd.exec(5)); journald then reads a "<N>" syslog priority at the start of each line.
bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  unsigned long long dev = 0, ino = 0;
  struct stat st {};
  return stream && std::sscanf(stream, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
         st.st_dev == dev && st.st_ino == ino;
}

class SyslogPriority : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    // trace, debug → debug (7); info (6); warn (4); err (3); critical (2)
    static constexpr std::string_view kPrefix[] = {"<7>", "<7>", "<6>", "<4>", "<3>", "<2>", "<6>"};
    auto p = kPrefix[static_cast<size_t>(msg.level) % std::size(kPrefix)];
    dest.append(p.data(), p.data() + p.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<SyslogPriority>(); }
};

void set_log_format() {
  if (!stderr_is_journal()) {
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    return;
  }
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<SyslogPriority>('*').set_pattern("%*%l %v");  // the journal has its own timestamps
  spdlog::set_formatter(std::move(formatter));
}

// Pings every token on tokencheckinterval and keeps relic's health counter (§2.1).
asio::awaitable<void> health_loop(Service& svc) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex);
  const auto& s = svc.config.server;
  svc.health.counter = s.tokencheckfailures;
  for (;;) {
    bool all_ok = true;
    auto deadline = Clock::now() + std::chrono::seconds(s.tokenchecktimeout);
    for (auto& [name, token] : svc.tokens) {
      auto result = std::make_shared<std::promise<Status>>();
      auto fut = result->get_future();
      token->ping(deadline, [result](Status st) { result->set_value(std::move(st)); });
      // Poll without blocking the io thread.
      while (fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready && Clock::now() < deadline) {
        timer.expires_after(std::chrono::milliseconds(10));
        co_await timer.async_wait(asio::use_awaitable);
      }
      bool ok = fut.wait_for(std::chrono::seconds(0)) == std::future_status::ready && fut.get().ok();
      if (!ok) {
        all_ok = false;
        spdlog::warn("health: token {} failed its check ({})", name, token_state_name(token->state()));
      }
    }
    bool any_failed = false;  // out of service until restarted (wrong PIN): no point in counting down
    for (auto& [name, token] : svc.tokens) any_failed = any_failed || token->state() == TokenState::failed;
    if (all_ok) svc.health.counter = s.tokencheckfailures;
    else if (any_failed) svc.health.counter = 0;
    else if (svc.health.counter > 0) --svc.health.counter;
    svc.health.last_check_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
    std::string status;
    for (auto& [name, token] : svc.tokens) status += name + "=" + token_state_name(token->state()) + " ";
    notify("STATUS=tokens: " + status + "\nWATCHDOG=1");
    timer.expires_after(std::chrono::seconds(s.tokencheckinterval));
    co_await timer.async_wait(asio::use_awaitable);
  }
}

// Binds server.listen (and server.listenmetrics), or adopts the sockets systemd passed (socket
// activation: then the config's addresses are not used). Returns the TLS port.
Result<unsigned short> listen(Server& server, const ServerConfig& s) {
  ASSIGN_OR_RETURN(PassedSockets passed, passed_sockets());
  unsigned short port = 0;
  if (passed.any()) {
    if (passed.tls.empty()) return config_error("socket activation: no socket for the TLS listener was passed");
    for (int fd : passed.tls) {
      ASSIGN_OR_RETURN(port, server.listen_tls(s.listen, fd));
      spdlog::info("listening on port {} (socket from systemd, fd {}); server.listen is not used", port, fd);
    }
  } else {
    ASSIGN_OR_RETURN(port, server.listen_tls(s.listen));
    std::string shown = s.listen.substr(0, s.listen.rfind(':'));
    spdlog::info("listening on https://{}:{}/", shown.empty() ? "0.0.0.0" : shown, port);
  }
  if (passed.metrics >= 0 || (!s.listenmetrics.empty() && !passed.any())) {
    ASSIGN_OR_RETURN(unsigned short mport, server.listen_metrics(s.listenmetrics, passed.metrics));
    spdlog::info("metrics on http://{}/metrics (port {})", passed.metrics >= 0 ? "*" : s.listenmetrics, mport);
  }
  return port;
}

// SIGHUP: loads the config file again, runs the start-up checks on it (startup.h), and publishes its clients and keys (roles, hide, aliases,
// policy) at once; open connections see them on their next request. An invalid file is refused whole
// and the running config stays. What needs a token re-open or a new listener is only logged.
void reload(Service& svc, const std::string& config_path, const std::string& listen_override) {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(now.tv_sec * 1000000LL + now.tv_nsec / 1000));
  auto fresh = load_config(config_path);
  if (fresh.ok()) {
    if (auto checked = startup_checks(*fresh); !checked.ok()) fresh = checked.error();  // as at start
  }
  if (fresh.ok()) {
    if (!listen_override.empty()) fresh->server.listen = listen_override;
    // Against the start-up config: that is what the tokens and listeners were made from.
    for (const auto& what : needs_restart(svc.config, *fresh))
      spdlog::warn("config reload: {} changed: needs a restart, the running one stays", what);
  }
  auto snapshot = fresh.ok() ? Authenticator::snapshot(std::move(fresh).value())
                             : Result<std::shared_ptr<const ConfigSnapshot>>(fresh.error());
  svc.metrics.config_reload(snapshot.ok());
  if (snapshot.ok()) {
    spdlog::info("config reloaded from {}: {} client(s), {} key(s)", config_path, (*snapshot)->config.clients.size(),
                 (*snapshot)->config.keys.size());
    svc.publish(std::move(snapshot).value());
  } else {
    spdlog::error("config reload refused, the running config stays: {}", snapshot.error().message);
  }
  notify("READY=1");
}

// Opens the audit file, cutting a torn last line (said in the log).
Status open_audit(Service& svc) {
  if (svc.config.auditfile.empty()) return {};
  const char* each = std::getenv("P11RELAYD_AUDIT_SYNC");  // bench/run's comparison only
  ASSIGN_OR_RETURN(svc.audit, AuditLog::open(svc.config.auditfile, each && std::string(each) == "each"));
  if (svc.audit->torn_bytes() > 0)
    spdlog::warn("audit file {}: cut a torn last line ({} bytes without a newline: a write cut short by a crash, "
                 "whose signature was never returned); the chain goes on from the line before",
                 svc.config.auditfile, svc.audit->torn_bytes());
  return {};
}

// The keys (not aliases) a token serves.
std::vector<KeyConfig> keys_on(const Config& cfg, const std::string& token) {
  std::vector<KeyConfig> keys;
  for (const auto& [kn, kc] : cfg.keys)
    if (kc.alias.empty() && kc.token == token) keys.push_back(kc);
  return keys;
}

// --check-config FILE --probe: opens every token that serves a key the way the daemon does (module, slot
// by label/serial, login with the pinfile's PIN, keys), says what it found, and closes it again.
// 0 when every token opened with all its keys, 3 otherwise.
int probe_tokens(const Config& cfg) {
  int rc = 0;
  for (const auto& [name, tc] : cfg.tokens) {
    std::vector<KeyConfig> keys = keys_on(cfg, name);
    if (keys.empty()) continue;
    auto token = std::make_shared<Token>(tc, keys);
    auto st = token->start();
    if (!st.ok()) {
      std::cout << "token " << name << ": " << st.error().message << "\n";
      rc = 3;
    } else {
      std::string served;
      for (const auto& k : token->keys()) served += " " + k->name;
      std::cout << "token " << name << ": open, " << token->keys().size() << " of " << keys.size()
                << " key(s) found:" << served << "\n";
      if (token->keys().size() != keys.size()) rc = 3;  // the missing ones are named in the log above
    }
    token->stop();
  }
  return rc;
}

// What the daemon checks before it opens a token or binds a socket; --check-config runs this same function.
Result<Config> load_and_check(const std::string& path) {
  ASSIGN_OR_RETURN(Config cfg, load_config(path));
  RETURN_IF_ERROR(startup_checks(cfg));
  return cfg;
}

// The configuration, the client snapshot, the audit log and the policy state: what must be right
// before anything listens. Errors are for the operator (exit 2).
Status prepare(Service& svc, const std::string& config_path, const std::string& listen_override) {
  auto cfg = load_and_check(config_path);
  if (cfg.ok() && !listen_override.empty() && !valid_listen_address(listen_override))
    cfg = config_error("--listen '" + listen_override + "' must be HOST:PORT with a port from 0 to 65535");
  if (!cfg.ok()) return cfg.take_error();
  svc.config = std::move(cfg).value();
  if (!listen_override.empty()) svc.config.server.listen = listen_override;
  spdlog::set_level(spdlog::level::from_str(svc.config.server.loglevel));
  raise_fd_limit(svc.config.server);
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  svc.hostname = host;
  ASSIGN_OR_RETURN(auto snapshot, Authenticator::snapshot(svc.config));
  svc.publish(std::move(snapshot));
  RETURN_IF_ERROR(open_audit(svc));
  RETURN_IF_ERROR(open_policy_state(svc));
  register_signers(svc);
  return {};
}

// Opens every token that serves at least one key (relic ListServedTokens). A token that does not open
// now is retried by its recovery thread.
void open_tokens(Service& svc) {
  for (auto& [name, tc] : svc.config.tokens) {
    std::vector<KeyConfig> keys = keys_on(svc.config, name);
    if (keys.empty()) continue;
    auto token = std::make_shared<Token>(tc, keys);
    auto st = token->start();
    if (!st.ok()) spdlog::error("token {}: {}", name, st.error().message);
    svc.tokens[name] = token;
    for (const auto& m : ambiguous_keys(svc.config, token->keys())) spdlog::warn("{}", m);
  }
}

// Runs the io_context on io_threads threads until SIGINT or SIGTERM; SIGHUP reloads the configuration.
void serve(Service& svc, asio::io_context& io, Server& server, const std::string& config_path,
           const std::string& listen_override, int io_threads) {
  asio::signal_set hangup(io, SIGHUP);
  std::function<void()> on_hangup = [&] {
    hangup.async_wait([&](std::error_code ec, int) {
      if (ec) return;
      reload(svc, config_path, listen_override);
      on_hangup();
    });
  };
  on_hangup();
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](std::error_code, int sig) {
    spdlog::info("signal {}: shutting down", sig);
    notify("STOPPING=1");
    server.stop();
    io.stop();
  });
  svc.standby = std::make_unique<IoStandby>(io);
  std::vector<std::thread> threads;
  for (int i = 1; i < io_threads; ++i) threads.emplace_back([&] { io.run(); });
  io.run();
  for (auto& t : threads) t.join();
  svc.standby.reset();
}

// What must go while `io` still exists.
void shut_down(Service& svc) {
  for (auto& [n, t] : svc.tokens) t->stop();
  // Long-polls and relic /sign calls waiting for an approval left timers of `io` in the watchers; they
  // must go before `io` does (ASan: heap-use-after-free at exit).
  if (svc.approvals) svc.approvals->drop_watchers();
  svc.audit.reset();  // its last sync answers waiting coroutines by posting to `io`, which must still exist
}

int run(const std::string& config_path, const std::string& listen_override, const std::string& port_file,
        int io_threads) {
  Service svc;
  if (auto st = prepare(svc, config_path, listen_override); !st.ok()) {
    std::cerr << "p11relayd: " << st.error().message << "\n";
    return 2;
  }
  open_tokens(svc);
  asio::io_context io(io_threads);
  Router router(svc);
  Server server(io, svc, router);
  auto listened = listen(server, svc.config.server);
  if (!listened.ok()) {
    std::cerr << "p11relayd: " << listened.error().message << "\n";
    return 2;
  }
  server.start();
  asio::co_spawn(io, health_loop(svc), asio::detached);
  if (!port_file.empty()) std::ofstream(port_file) << *listened << "\n";
  notify("READY=1");
  serve(svc, io, server, config_path, listen_override, io_threads);
  shut_down(svc);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);  // a peer that goes away must not kill the daemon
  CLI::App app{"p11relayd - serve signing on PKCS#11 tokens over mutual TLS"};
  std::string config_path = "/etc/p11relay/p11relayd.yml", check_path, listen, port_file;
  // Token workers finish most requests themselves (token_sign), so io threads only read and parse;
  // on two cores a second io thread only adds wake-ups between the two (measured: 4 → 1.6 context
  // switches per signature).
  unsigned cores = std::thread::hardware_concurrency();
  int io_threads = cores <= 2 ? 1 : static_cast<int>(std::min(4u, cores / 2));
  app.add_option("-c,--config", config_path, "configuration file");
  bool probe = false;
  auto* check = app.add_option("--check-config", check_path,
                               "validate FILE, print the effective config (secrets redacted), exit");
  app.add_flag("--probe", probe, "with --check-config: also open each token (module, login, keys) and report")
      ->needs(check);
  app.add_option("--listen", listen, "override server.listen (host:port; port 0 picks a free port)");
  app.add_option("--port-file", port_file, "write the bound TLS port to this file once listening");
  app.add_option("--io-threads", io_threads, "network threads")->check(CLI::Range(1, 64));
  app.set_version_flag("--version", "p11relayd 0.1.0");
  auto* verify = app.add_subcommand("audit-verify", "check the hash chain of an audit log");
  std::string audit_file;
  verify->add_option("file", audit_file, "audit log")->required();
  CLI11_PARSE(app, argc, argv);

  auto console = spdlog::stderr_color_mt("p11relayd");
  spdlog::set_default_logger(console);
  set_log_format();

  if (*verify) {
    auto r = verify_audit_file(audit_file);
    if (r.ok) {
      std::cout << audit_file << ": " << r.lines << " records, chain intact\n";
      if (r.torn_bytes > 0)
        std::cout << audit_file << ": the last line is torn (" << r.torn_bytes << " bytes without a newline): a write "
                  << "cut short by a crash, not counted; its signature was never returned (p11relayd cuts it at start)\n";
      return 0;
    }
    std::cout << audit_file << ": line " << r.bad_line << ": " << r.reason << "\n";
    return 1;
  }
  if (!check_path.empty()) {
    auto cfg = load_and_check(check_path);  // the same checks the daemon runs at start
    if (!cfg.ok()) {
      std::cerr << "p11relayd: " << cfg.error().message << "\n";
      return 2;
    }
    std::cout << dump_redacted(*cfg);
    std::cerr << check_path << ": OK\n";
    return probe ? probe_tokens(*cfg) : 0;
  }
  return run(config_path, listen, port_file, io_threads);
}
