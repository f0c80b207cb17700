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
  // What the run ends with when checks failed; `code` is the exit code's class.
  Error failed(ErrorCode code) const { return Error(code, std::to_string(failures) + " check(s) failed"); }
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
  if (std::string kept = c.kept_keys_path(); !kept.empty())
    d.ok("key list kept for new processes in " + kept + " (for remote.keylistcache, " +
         std::to_string(c.config().key_list_cache_seconds) + " s; each signature is checked against the daemon's)");
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

// What the checks share: each check builds on what the earlier ones found.
struct DoctorRun {
  DoctorRun(const Globals& globals, const std::string& key) : g(globals), only_key(key) {}

  const Globals& g;
  const std::string& only_key;
  Doctor d;
  client::Config cfg;
  std::string fp = "<fingerprint>";         // as `clients:` in p11relayd.yml lists this client; a placeholder till read
  std::unique_ptr<client::Client> working;  // talks to the first daemon that accepts this client
  std::optional<ErrorCode> keys_failure;    // the class of the first failure check_keys found: the exit code's
};

// A check returns an error only when the checks after it cannot run; the error is what doctor ends with.
using Check = Status (*)(DoctorRun&);

Status check_configuration(DoctorRun& r) {
  auto cfg = load_config(r.g);
  if (!cfg.ok()) {
    r.d.fail("client configuration",
             cfg.error().message +
                 "\n       (run `p11relay register --url https://HOST:6300/ --cacert CA.pem` to create one)");
    return Error(ErrorCode::config, "1 check failed");
  }
  r.cfg = cfg.value();
  r.d.ok("configuration " + r.cfg.source);
  return {};
}

Status check_client_certificate(DoctorRun& r) {
  const std::string& file = r.cfg.certfile;
  auto certs = load_certificates(file);
  if (!certs.ok() || certs->empty()) {
    r.d.fail("client certificate " + file, certs.ok() ? "the file holds no certificate" : certs.error().message);
    return {};
  }
  X509* c = (*certs)[0].get();
  r.fp = spki_fingerprint(c);
  if (X509_cmp_current_time(X509_get0_notAfter(c)) < 0)
    r.d.fail("client certificate " + file,
             "it has expired: run `p11relay register --force` and register the new fingerprint");
  else if (X509_cmp_current_time(X509_get0_notBefore(c)) > 0)
    r.d.fail("client certificate " + file, "it is not valid yet: check this machine's clock");
  else
    r.d.ok("client certificate " + name_rfc2253(X509_get_subject_name(c)) + ", fingerprint " + r.fp);
  return {};
}

Status check_client_key(DoctorRun& r) {
  struct stat st {};
  if (stat(r.cfg.keyfile.c_str(), &st) == 0 && (st.st_mode & 077) != 0)
    r.d.warn("client key " + r.cfg.keyfile, "other users can read it: chmod 600 " + r.cfg.keyfile);
  return {};
}

Status check_ca_certificate(DoctorRun& r) {
  if (r.cfg.cacert.empty()) {
    r.d.warn("no remote.cacert", "the daemon's certificate is checked against the system CA store");
    return {};
  }
  auto ca = load_certificates(r.cfg.cacert);
  if (!ca.ok() || ca->empty())
    r.d.fail("CA certificate " + r.cfg.cacert, ca.ok() ? "the file holds no certificate" : ca.error().message);
  else
    r.d.ok("CA certificate(s) " + r.cfg.cacert + " (" + std::to_string(ca->size()) + ")");
  return {};
}

// Client::create builds the TLS context, so a certificate and key that do not belong together show here.
Status check_tls_setup(DoctorRun& r) {
  auto base = client::Client::create(r.cfg);
  if (!base.ok()) {
    r.d.fail("TLS client set-up", base.error().message + " (does the key file belong to the certificate?)");
    return r.d.failed(ErrorCode::config);
  }
  return {};
}

// One daemon alone, without retries, so one bad sibling is named. Returns a client for it if it accepts this
// client; `first_failure` keeps the class of the first failure it explains.
std::unique_ptr<client::Client> check_daemon(DoctorRun& r, const std::string& url,
                                             std::optional<ErrorCode>& first_failure) {
  auto explain = [&](const Error& e) {
    if (!first_failure) first_failure = e.code;
    bool transport = e.code == ErrorCode::network || e.code == ErrorCode::tls_trust;
    return transport ? explain_transport(e, r.cfg) : explain_api(e, r.fp);
  };
  client::Config one = r.cfg;
  one.urls = {url};
  one.retries = 0;
  one.approval_wait_ms = 1;  // a test signature never waits for an approver
  auto c = client::Client::create(one);
  if (!c.ok()) {
    r.d.fail(url, c.error().message);
    return nullptr;
  }
  Status h = (*c)->health();
  if (!h.ok()) {
    r.d.fail(url + " reachable", explain(h.error()));
    return nullptr;
  }
  r.d.ok(url + " reachable, server certificate valid, /health OK");
  auto keys = (*c)->list_keys();
  if (!keys.ok()) {
    r.d.fail(url + " accepts this client", explain(keys.error()));
    return nullptr;
  }
  r.d.ok(url + " accepts this client (" + std::to_string(keys->size()) + " key(s))");
  return std::move(c).value();
}

Status check_daemons(DoctorRun& r) {
  std::optional<ErrorCode> first_failure;  // the class of the first daemon's failure: the exit code's
  for (const auto& url : r.cfg.urls) {
    auto c = check_daemon(r, url, first_failure);
    if (c && !r.working) r.working = std::move(c);
  }
  if (!r.working) return r.d.failed(first_failure.value_or(ErrorCode::network));
  return {};
}

Status check_keys_and_signatures(DoctorRun& r) {
  r.keys_failure = check_keys(r.d, *r.working, r.only_key, r.fp);
  return {};
}

Status run_doctor(const Globals& g, const std::string& only_key) {
  static constexpr Check checks[] = {check_configuration,  check_client_certificate, check_client_key,
                                     check_ca_certificate, check_tls_setup,          check_daemons,
                                     check_keys_and_signatures};
  DoctorRun r(g, only_key);
  for (Check check : checks) {
    Status s = check(r);
    if (!s.ok()) return s;
  }
  if (r.d.failures) return r.d.failed(r.keys_failure.value_or(ErrorCode::internal));
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
