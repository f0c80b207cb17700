// `p11relay list-keys`, `get-key`, `health`.
#include "client/cli/cli.h"

#include "common/x509.h"

#include <iostream>

namespace p11relay::cli {

namespace {

std::string type_of(const relay::KeyDescription& k) {
  if (k.key.type == KeyType::rsa) return "RSA " + std::to_string(k.key.bits);
  return "EC " + (k.key.curve.empty() ? std::to_string(k.key.bits) : k.key.curve);
}

Status list_keys(const Globals& g, bool long_format) {
  ASSIGN_OR_RETURN(auto c, connect(g));
  ASSIGN_OR_RETURN(relay::KeyList list, c->list_keys_full());
  if (!list.unavailable.empty()) {
    Error e = token_problem_error(list.unavailable);
    if (list.keys.empty()) return e;  // nothing to list: the cause is the token, not an empty key set
    std::cerr << "p11relay: warning: " << describe(e) << "\n";
  }
  for (const auto& k : list.keys) {
    if (!long_format) {
      std::cout << k.name << "\n";
      continue;
    }
    std::string mechs;
    for (const auto& m : k.mechanisms) mechs += (mechs.empty() ? "" : ",") + m;
    std::string subject = "-";
    if (!k.certificates.empty()) {
      auto cert = parse_certificate_der(k.certificates[0]);
      if (cert.ok()) subject = name_rfc2253(X509_get_subject_name(cert->get()));
    }
    std::cout << k.name << "\n"
              << "  type:         " << type_of(k) << " (" << k.key.bits << " bits)\n"
              << "  token:        " << k.token.label << " (serial " << k.token.serial << ", " << k.token.model << ")\n"
              << "  id/label:     " << to_hex(k.id) << " / " << k.label << "\n"
              << "  mechanisms:   " << (mechs.empty() ? "-" : mechs) << "\n"
              << "  approval:     " << (k.approval.empty() ? "auto" : k.approval) << "\n"
              << "  certificate:  " << subject << " (" << k.certificates.size() << " in chain)\n";
  }
  return {};
}

Status get_key(const Globals& g, const std::string& name) {
  ASSIGN_OR_RETURN(auto c, connect(g));
  ASSIGN_OR_RETURN(auto k, find_key(*c, name));
  ASSIGN_OR_RETURN(auto chain, key_chain(k));
  for (const auto& cert : chain) std::cout << x509_pem(cert.get());
  return {};
}

Status health(const Globals& g) {
  ASSIGN_OR_RETURN(client::Config cfg, load_config(g));
  bool all_ok = true;
  Error last;
  for (const auto& url : cfg.urls) {
    client::Config one = cfg;
    one.urls = {url};
    one.retries = 0;
    ASSIGN_OR_RETURN(auto c, client::Client::create(one));
    Status s = c->health();
    if (s.ok()) {
      std::cout << url << ": OK\n";
    } else {
      all_ok = false;
      last = s.error();
      std::cout << url << ": FAILED: " << describe(s.error()) << "\n";
    }
  }
  if (!all_ok) {
    last.message = "not every daemon is healthy";
    return last;
  }
  return {};
}

}  // namespace

void add_key_commands(CLI::App& app, Globals& g) {
  {
    auto long_format = std::make_shared<bool>(false);
    auto* cmd = app.add_subcommand("list-keys", "list the keys this client may use, one name per line");
    cmd->add_flag("-l,--long", *long_format, "show key type, size, token, mechanisms and certificate");
    cmd->callback([&g, long_format] { g.run = [&g, long_format] { return list_keys(g, *long_format); }; });
  }
  {
    auto name = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand("get-key", "print a key's certificate chain as PEM (leaf first)");
    cmd->add_option("NAME", *name, "key name (see list-keys) or pkcs11: URI")->required();
    cmd->callback([&g, name] { g.run = [&g, name] { return get_key(g, *name); }; });
  }
  {
    auto* cmd = app.add_subcommand("health", "check that every configured daemon answers /health");
    cmd->callback([&g] { g.run = [&g] { return health(g); }; });
  }
}

}  // namespace p11relay::cli
