// p11relayd: serves signing on PKCS#11 tokens over mutual TLS (relic API + relay API).
#include "daemon/config.h"
#include "daemon/router.h"
#include "daemon/server.h"
#include "daemon/service.h"
#include "daemon/signers/signers.h"

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#ifdef P11RELAY_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include <signal.h>
#include <unistd.h>

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

int run(const std::string& config_path, const std::string& listen_override, const std::string& port_file,
        int io_threads) {
  auto cfg = load_config(config_path);
  if (!cfg.ok()) {
    std::cerr << "p11relayd: " << cfg.error().message << "\n";
    return 2;
  }
  Service svc;
  svc.config = std::move(cfg).value();
  if (!listen_override.empty()) svc.config.server.listen = listen_override;
  spdlog::set_level(spdlog::level::from_str(svc.config.server.loglevel));
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  svc.hostname = host;

  auto auth = Authenticator::create(svc.config);
  if (!auth.ok()) {
    std::cerr << "p11relayd: " << auth.error().message << "\n";
    return 2;
  }
  svc.auth = std::move(auth).value();
  if (!svc.config.auditfile.empty()) {
    auto audit = AuditLog::open(svc.config.auditfile);
    if (!audit.ok()) {
      std::cerr << "p11relayd: " << audit.error().message << "\n";
      return 2;
    }
    svc.audit = std::move(audit).value();
  }
  register_signers(svc);

  // Open every token that serves at least one key (relic ListServedTokens).
  for (auto& [name, tc] : svc.config.tokens) {
    std::vector<KeyConfig> keys;
    for (const auto& [kn, kc] : svc.config.keys)
      if (kc.alias.empty() && kc.token == name) keys.push_back(kc);
    if (keys.empty()) continue;
    auto token = std::make_shared<Token>(tc, keys);
    auto st = token->start();
    if (!st.ok()) spdlog::error("token {}: {}", name, st.error().message);
    svc.tokens[name] = token;
  }

  asio::io_context io(io_threads);
  Router router(svc);
  Server server(io, svc, router);
  auto port = server.listen_tls(svc.config.server.listen);
  if (!port.ok()) {
    std::cerr << "p11relayd: " << port.error().message << "\n";
    return 2;
  }
  if (!svc.config.server.listenmetrics.empty()) {
    auto mport = server.listen_metrics(svc.config.server.listenmetrics);
    if (!mport.ok()) {
      std::cerr << "p11relayd: " << mport.error().message << "\n";
      return 2;
    }
    spdlog::info("metrics on http://{}/metrics (port {})", svc.config.server.listenmetrics, *mport);
  }
  server.start();
  asio::co_spawn(io, health_loop(svc), asio::detached);

  std::string shown = svc.config.server.listen;
  if (auto c = shown.rfind(':'); c != std::string::npos) shown = shown.substr(0, c);
  if (shown.empty()) shown = "0.0.0.0";
  spdlog::info("listening on https://{}:{}/", shown, *port);
  if (!port_file.empty()) {
    std::ofstream(port_file) << *port << "\n";
  }
  notify("READY=1");

  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](std::error_code, int sig) {
    spdlog::info("signal {}: shutting down", sig);
    notify("STOPPING=1");
    server.stop();
    io.stop();
  });

  std::vector<std::thread> threads;
  for (int i = 1; i < io_threads; ++i) threads.emplace_back([&] { io.run(); });
  io.run();
  for (auto& t : threads) t.join();
  for (auto& [n, t] : svc.tokens) t->stop();
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
  app.add_option("--check-config", check_path, "validate FILE, print the effective config (secrets redacted), exit");
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
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  if (*verify) {
    auto r = verify_audit_file(audit_file);
    if (r.ok) {
      std::cout << audit_file << ": " << r.lines << " records, chain intact\n";
      return 0;
    }
    std::cout << audit_file << ": line " << r.bad_line << ": " << r.reason << "\n";
    return 1;
  }
  if (!check_path.empty()) {
    auto cfg = load_config(check_path);
    if (!cfg.ok()) {
      std::cerr << "p11relayd: " << cfg.error().message << "\n";
      return 2;
    }
    std::cout << dump_redacted(*cfg);
    std::cerr << check_path << ": OK\n";
    return 0;
  }
  return run(config_path, listen, port_file, io_threads);
}
