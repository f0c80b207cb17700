// `p11relay doctor`: walks the path of a signature step by step and explains each failure in plain words.
#include "client/cli/cli.h"

#include "common/digest.h"
#include "common/x509.h"

#include <openssl/rand.h>

#include <sys/stat.h>

#include <iostream>

namespace p11relay::cli {

namespace {

struct Doctor {
  int failures = 0;
  void ok(const std::string& what) { std::cout << "[ OK ] " << what << "\n"; }
  void warn(const std::string& what, const std::string& why) {
    std::cout << "[WARN] " << what << "\n       " << why << "\n";
  }
  void fail(const std::string& what, const std::string& why) {
    ++failures;
    std::cout << "[FAIL] " << what << "\n       " << why << "\n";
  }
};

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

std::string explain_transport(const Error& e, const client::Config& cfg) {
  const std::string& m = e.message;
  if (contains(m, "cannot resolve")) return "the host name does not resolve (DNS or /etc/hosts): " + m;
  if (contains(m, "connect failed"))
    return "nothing accepts connections there: is p11relayd running, and are the host and port right? (" + m + ")";
  if (contains(m, "not trusted"))
    return "the daemon's TLS certificate is not signed by a CA in cacert (" +
           (cfg.cacert.empty() ? std::string("none set: the system store is used") : cfg.cacert) +
           "); copy the daemon's CA certificate here and set remote.cacert (" + m + ")";
  if (contains(m, "serverfingerprint"))
    return "the daemon presents a different key than remote.serverfingerprint pins (" + m + ")";
  if (contains(m, "timeout"))
    return "no answer in time: a firewall may drop the traffic, or the daemon is overloaded (" + m + ")";
  if (contains(m, "handshake") || contains(m, "alert"))
    return "the TLS handshake failed; the daemon may have refused this client's certificate (" + m + ")";
  return describe(e);
}

std::string explain_api(const Error& e, const std::string& fp) {
  switch (e.code) {
    case ErrorCode::unauthenticated:
      return "the daemon does not know this client: add\n         " + fp +
             ":\n           nickname: …\n           roles: [signers]\n       under `clients:` in p11relayd.yml and reload the daemon";
    case ErrorCode::forbidden:
      return "the daemon refused: the key does not exist or has no role in common with this client (" + e.message + ")";
    case ErrorCode::device_error:
      return "the token refused the operation: " + e.message;
    case ErrorCode::mechanism_invalid:
      return "the key does not allow this mechanism: " + e.message;
    default:  // the classes every command reports: one wording (cli.cpp describe)
      return describe(e);
  }
}

// A test signature with each key in `chosen`, verified locally with the key the daemon advertises.
void test_signatures(Doctor& d, client::Client& c, const std::vector<relay::KeyDescription>& chosen,
                     const std::string& fp) {
  for (const auto& k : chosen) {
    if (k.certificates.empty())
      d.warn("key " + k.name, "it has no certificate: sign-digest works, Authenticode `sign` does not");
    if (k.approval == "required") {
      d.ok("key " + k.name + " needs an approver's decision for each signature by this client: no test "
           "signature (docs/policy.md)");
      continue;
    }
    Bytes digest(32);
    RAND_bytes(digest.data(), static_cast<int>(digest.size()));
    auto sig = sign_digest(c, k, HashAlg::sha256, digest, "");
    if (!sig.ok() && sig.error().code == ErrorCode::request_expired) {
      d.warn("test signature with key " + k.name, "the key's policy holds this client's signatures for an "
             "approver; the test request now waits for one: deny it with `p11relay requests deny ID --reason doctor`");
      continue;
    }
    if (!sig.ok()) {
      d.fail("test signature with key " + k.name, explain_api(sig.error(), fp));
      continue;
    }
    Status v = verify_digest_signature(k, HashAlg::sha256, digest, sig->mechanism, sig->signature);
    if (!v.ok())
      d.fail("test signature with key " + k.name,
             "the signature does not verify with the public key the daemon advertises: the daemon's key "
             "configuration (label/id/certificate) points at different keys");
    else
      d.ok("test signature with key " + k.name + " (" + sig->mechanism + ", verified locally)");
  }
}

// The keys this client sees (and the tokens the daemon cannot use now), then test_signatures().
// Returns the class of the first failure it found, if any.
std::optional<ErrorCode> check_keys(Doctor& d, client::Client& c, const std::string& only_key, const std::string& fp) {
  auto listing = c.list_keys_full();
  if (!listing.ok()) {
    d.fail("list keys", explain_api(listing.error(), fp));
    return listing.error().code;
  }
  std::optional<ErrorCode> failure;
  for (const auto& t : listing->unavailable) {
    Error e = token_problem_error({t});
    d.fail("token '" + t.token.label + "' on the daemon", describe(e));
    failure = failure.value_or(e.code);
  }
  if (listing->keys.empty()) {
    if (listing->unavailable.empty())
      d.fail("list keys", "no key shares a role with this client: give the client a role in p11relayd.yml that "
                          "one of the keys lists under roles");
    return failure.value_or(ErrorCode::forbidden);
  }
  std::vector<relay::KeyDescription> chosen = listing->keys;
  if (!only_key.empty()) {
    auto selected = select_keys(listing->keys, only_key);  // a name or a pkcs11: URI
    chosen.clear();
    if (!selected.ok()) d.fail("key " + only_key, selected.error().message);
    else if (selected->empty()) d.fail("key " + only_key, "no such key for this client");
    else chosen = std::move(selected).value();
  }
  test_signatures(d, c, chosen, fp);
  return failure;
}

Status run_doctor(const Globals& g, const std::string& only_key) {
  Doctor d;
  auto cfg_r = load_config(g);
  if (!cfg_r.ok()) {
    d.fail("client configuration", cfg_r.error().message +
                                       "\n       (run `p11relay register --url https://HOST:6300/ --cacert CA.pem` to create one)");
    return Error(ErrorCode::config, "1 check failed");
  }
  client::Config cfg = cfg_r.value();
  d.ok("configuration " + cfg.source);

  std::string fp = "<fingerprint>";
  auto certs = load_certificates(cfg.certfile);
  if (!certs.ok() || certs->empty()) {
    d.fail("client certificate " + cfg.certfile,
           certs.ok() ? "the file holds no certificate" : certs.error().message);
  } else {
    X509* c = (*certs)[0].get();
    fp = spki_fingerprint(c);
    if (X509_cmp_current_time(X509_get0_notAfter(c)) < 0)
      d.fail("client certificate " + cfg.certfile, "it has expired: run `p11relay register --force` and register the new fingerprint");
    else if (X509_cmp_current_time(X509_get0_notBefore(c)) > 0)
      d.fail("client certificate " + cfg.certfile, "it is not valid yet: check this machine's clock");
    else
      d.ok("client certificate " + name_rfc2253(X509_get_subject_name(c)) + ", fingerprint " + fp);
  }
  struct stat st {};
  if (stat(cfg.keyfile.c_str(), &st) == 0 && (st.st_mode & 077) != 0)
    d.warn("client key " + cfg.keyfile, "other users can read it: chmod 600 " + cfg.keyfile);
  if (!cfg.cacert.empty()) {
    auto ca = load_certificates(cfg.cacert);
    if (!ca.ok() || ca->empty())
      d.fail("CA certificate " + cfg.cacert, ca.ok() ? "the file holds no certificate" : ca.error().message);
    else
      d.ok("CA certificate(s) " + cfg.cacert + " (" + std::to_string(ca->size()) + ")");
  } else {
    d.warn("no remote.cacert", "the daemon's certificate is checked against the system CA store");
  }

  auto base = client::Client::create(cfg);
  if (!base.ok()) {
    d.fail("TLS client set-up", base.error().message + " (does the key file belong to the certificate?)");
    return Error(ErrorCode::config, std::to_string(d.failures) + " check(s) failed");
  }

  // Each URL alone, without retries, so one bad sibling is named.
  std::unique_ptr<client::Client> working;
  std::optional<ErrorCode> first_failure;  // the class of the first daemon's failure: the exit code's
  auto explain = [&](const Error& e) {
    if (!first_failure) first_failure = e.code;
    bool transport = e.code == ErrorCode::network || e.code == ErrorCode::tls_trust;
    return transport ? explain_transport(e, cfg) : explain_api(e, fp);
  };
  for (const auto& url : cfg.urls) {
    client::Config one = cfg;
    one.urls = {url};
    one.retries = 0;
    one.approval_wait_ms = 1;  // a test signature never waits for an approver
    auto c = client::Client::create(one);
    if (!c.ok()) {
      d.fail(url, c.error().message);
      continue;
    }
    Status h = (*c)->health();
    if (!h.ok()) {
      d.fail(url + " reachable", explain(h.error()));
      continue;
    }
    d.ok(url + " reachable, server certificate valid, /health OK");
    auto keys = (*c)->list_keys();
    if (!keys.ok()) {
      d.fail(url + " accepts this client", explain(keys.error()));
      continue;
    }
    d.ok(url + " accepts this client (" + std::to_string(keys->size()) + " key(s))");
    if (!working) working = std::move(c).value();
  }
  if (!working)
    return Error(first_failure.value_or(ErrorCode::network), std::to_string(d.failures) + " check(s) failed");

  std::optional<ErrorCode> keys_failure = check_keys(d, *working, only_key, fp);
  if (d.failures)
    return Error(keys_failure.value_or(ErrorCode::internal), std::to_string(d.failures) + " check(s) failed");
  std::cout << "all checks passed\n";
  return {};
}

}  // namespace

void add_doctor(CLI::App& app, Globals& g) {
  auto key = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("doctor", "check the configuration, each daemon, the keys and a test signature, "
                                           "and explain what is wrong");
  cmd->add_option("-k,--key", *key, "test only this key (name or pkcs11: URI)");
  cmd->callback([&g, key] { g.run = [&g, key] { return run_doctor(g, *key); }; });
}

}  // namespace p11relay::cli
