// p11relay: the command-line client of p11relayd (docs/cli.md).
#include "client/cli/cli.h"

#include <openssl/err.h>

#include <csignal>
#include <cstdio>
#include <iostream>

int main(int argc, char** argv) {
  using namespace p11relay;
  using namespace p11relay::cli;
  std::signal(SIGPIPE, SIG_IGN);

  CLI::App app{"p11relay: sign with a PKCS#11 token attached to a p11relayd appliance, over mutual TLS.\n"
               "Only digests travel; files stay on this machine.",
               "p11relay"};
  Globals g;
  app.add_option("-c,--config", g.config_path,
                 "client configuration (default: $P11RELAY_CONFIG, ~/.config/p11relay/client.yml, "
                 "/etc/p11relay/client.yml)");
  app.add_flag("-v,--verbose", g.verbose, "more detail on stderr");
  app.set_version_flag("--version", "p11relay 0.1.0");
  app.require_subcommand(1);
  app.fallthrough();

  add_register(app, g);
  add_key_commands(app, g);
  add_sign_digest(app, g);
  add_authenticode(app, g);
  add_doctor(app, g);
  add_request_commands(app, g);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    std::fprintf(stderr, "p11relay: %s (see p11relay --help)\n", msg.c_str());
    return kExitUsage;
  }
  if (!g.run) {
    std::fprintf(stderr, "p11relay: no command given (see p11relay --help)\n");
    return kExitUsage;
  }
  Status s = g.run();
  if (!s.ok()) {
    std::string line = describe(s.error());
    std::fprintf(stderr, "p11relay: error: %s\n", line.c_str());
    return exit_code_for(s.error());
  }
  return kExitOk;
}
