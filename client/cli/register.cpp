// `p11relay register`: a client key (EC P-256, mode 0600) and a self-signed certificate, like
// `relic remote register`; writes or updates the client config and prints the fingerprint and the
// snippet for p11relayd.yml's `clients:`.
#include "client/cli/cli.h"

#include "common/x509.h"

#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <yaml-cpp/yaml.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

namespace p11relay::cli {
namespace fs = std::filesystem;

namespace {

struct RegisterOptions {
  std::string dir, url, cacert, nickname;
  std::vector<std::string> roles;  // empty: signers
  bool force = false;
};

std::string default_config_path(const Globals& g) {
  if (!g.config_path.empty()) return g.config_path;
  const char* env = std::getenv("P11RELAY_CONFIG");
  if (env && *env) return env;
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  if (xdg && *xdg) return std::string(xdg) + "/p11relay/client.yml";
  const char* home = std::getenv("HOME");
  if (home && *home) return std::string(home) + "/.config/p11relay/client.yml";
  return "/etc/p11relay/client.yml";
}

std::string absolute(const std::string& p) {
  std::error_code ec;
  auto a = fs::absolute(p, ec);
  return ec ? p : a.lexically_normal().string();
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "client";
  return buf;
}

Result<EVP_PKEY_ptr> load_key(const std::string& path) {
  ASSIGN_OR_RETURN(Bytes pem, read_file(path, 1 << 20));
  BIO_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  EVP_PKEY_ptr k(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  OPENSSL_cleanse(pem.data(), pem.size());
  if (!k) {
    openssl_error_string();
    return bad_request(path + ": not an unencrypted PEM private key (use --force to make a new one)");
  }
  return k;
}

Result<EVP_PKEY_ptr> new_key() {
  EVP_PKEY_ptr k(EVP_EC_gen("P-256"));
  if (!k) return internal_error("EC key generation failed: " + openssl_error_string());
  return k;
}

Result<std::string> key_pem(EVP_PKEY* k) {
  BIO_ptr bio(BIO_new(BIO_s_mem()));
  if (!PEM_write_bio_PrivateKey(bio.get(), k, nullptr, nullptr, 0, nullptr, nullptr))
    return internal_error("cannot encode the key: " + openssl_error_string());
  char* p = nullptr;
  long n = BIO_get_mem_data(bio.get(), &p);
  return std::string(p, static_cast<size_t>(n));
}

Result<X509_ptr> self_signed(EVP_PKEY* key, const std::string& cn) {
  X509_ptr c(X509_new());
  if (!c) return internal_error("X509_new failed");
  X509_set_version(c.get(), 2);
  uint8_t serial[16];
  if (RAND_bytes(serial, sizeof serial) != 1) return internal_error("no randomness: " + openssl_error_string());
  serial[0] &= 0x7f;
  BIGNUM_ptr bn(BN_bin2bn(serial, sizeof serial, nullptr));
  if (!bn || !BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(c.get())))
    return internal_error("certificate serial: " + openssl_error_string());
  X509_gmtime_adj(X509_getm_notBefore(c.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), 36500L * 24 * 3600);
  X509_NAME* name = X509_get_subject_name(c.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(c.get(), name);
  X509_set_pubkey(c.get(), key);
  if (X509_sign(c.get(), key, EVP_sha256()) <= 0) return internal_error("cannot sign the certificate: " + openssl_error_string());
  return c;
}

// Sets remote.<key> (case-insensitive match of an existing key).
void set_remote(YAML::Node remote, const std::string& key, const std::string& value) {
  for (auto kv : remote) {
    std::string k = kv.first.as<std::string>();
    std::string lk;
    for (char ch : k) lk += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (lk == key) {
      remote[k] = value;
      return;
    }
  }
  remote[key] = value;
}

Status write_config(const std::string& path, const RegisterOptions& o, const std::string& cert, const std::string& key,
                    bool& written) {
  written = false;
  YAML::Node root;
  std::error_code ec;
  bool exists = fs::exists(path, ec);
  unsigned mode = 0644;
  if (exists) {
    try {
      root = YAML::LoadFile(path);
    } catch (const YAML::Exception& e) {
      return config_error(path + ": cannot update it: " + e.what());
    }
    struct stat st {};
    if (stat(path.c_str(), &st) == 0) mode = st.st_mode & 0777;
    if (!root.IsMap()) return config_error(path + ": cannot update it: not a YAML mapping");
  } else if (o.url.empty()) {
    return {};  // nothing to point the config at yet
  }
  YAML::Node remote = root["remote"];
  if (!remote.IsMap()) {
    root["remote"] = YAML::Node(YAML::NodeType::Map);
    remote = root["remote"];
  }
  if (!o.url.empty()) {
    // A new --url replaces the list (url/urls).
    for (const char* k : {"urls", "URLs", "Urls"})
      if (remote[k]) remote.remove(k);
    set_remote(remote, "url", o.url);
  }
  set_remote(remote, "certfile", cert);
  set_remote(remote, "keyfile", key);
  if (!o.cacert.empty()) set_remote(remote, "cacert", absolute(o.cacert));
  YAML::Emitter out;
  out << root;
  std::string text = "# p11relay client configuration (written by `p11relay register`)\n" + std::string(out.c_str()) + "\n";
  fs::create_directories(fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path(), ec);
  RETURN_IF_ERROR(write_file_atomic(path, to_bytes(text), mode));
  written = true;
  return {};
}

Status run_register(const Globals& g, const RegisterOptions& o) {
  if (!o.url.empty() && o.url.rfind("https://", 0) != 0) return bad_request("--url must be an https:// URL");
  if (!o.cacert.empty()) {
    ASSIGN_OR_RETURN(auto certs, load_certificates(o.cacert));
    if (certs.empty()) return bad_request(o.cacert + ": no certificate in it");
  }
  const std::string config = absolute(default_config_path(g));
  std::string dir = o.dir.empty() ? fs::path(config).parent_path().string() : absolute(o.dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return bad_request(dir + ": cannot create it: " + ec.message());
  const std::string key_path = (fs::path(dir) / "client.key").string();
  const std::string cert_path = (fs::path(dir) / "client.pem").string();

  EVP_PKEY_ptr key;
  bool new_key_made = false;
  if (!o.force && fs::exists(key_path, ec)) {
    ASSIGN_OR_RETURN(key, load_key(key_path));
  } else {
    ASSIGN_OR_RETURN(key, new_key());
    ASSIGN_OR_RETURN(std::string pem, key_pem(key.get()));
    Status s = write_file_atomic(key_path, to_bytes(pem), 0600);
    OPENSSL_cleanse(pem.data(), pem.size());
    RETURN_IF_ERROR(s);
    new_key_made = true;
  }
  X509_ptr cert;
  if (!new_key_made && fs::exists(cert_path, ec)) {
    auto existing = load_certificates(cert_path);
    if (existing.ok() && !existing->empty()) {
      EVP_PKEY* pub = X509_get0_pubkey((*existing)[0].get());
      if (pub && public_keys_equal(pub, key.get())) cert = std::move((*existing)[0]);
    }
  }
  if (!cert) {
    std::string nick = o.nickname.empty() ? host_name() : o.nickname;
    ASSIGN_OR_RETURN(cert, self_signed(key.get(), "p11relay client " + nick));
    RETURN_IF_ERROR(write_file_atomic(cert_path, to_bytes(x509_pem(cert.get())), 0644));
  }
  bool written = false;
  RETURN_IF_ERROR(write_config(config, o, cert_path, key_path, written));

  const std::string fp = spki_fingerprint(cert.get());
  std::string nick = o.nickname.empty() ? host_name() : o.nickname;
  std::string roles;
  for (const auto& r : o.roles) roles += (roles.empty() ? "" : ", ") + r;
  if (roles.empty()) roles = "signers";
  std::cout << "fingerprint: " << fp << "\n"
            << "certificate: " << cert_path << "\n"
            << "key:         " << key_path << " (mode 0600, keep it private)\n";
  if (written)
    std::cout << "config:      " << config << "\n";
  else
    std::cout << "config:      not written (give --url and --cacert to create " << config << ")\n";
  std::cout << "\nPaste this under `clients:` in p11relayd.yml on the daemon, then reload it:\n\n"
            << "  " << fp << ":\n"
            << "    nickname: " << nick << "\n"
            << "    roles: [" << roles << "]\n";
  return {};
}

}  // namespace

void add_register(CLI::App& app, Globals& g) {
  auto o = std::make_shared<RegisterOptions>();
  auto* cmd = app.add_subcommand("register", "make a client key and certificate, write the client config, print the "
                                             "fingerprint to add to p11relayd.yml");
  cmd->add_option("--dir", o->dir, "where client.key and client.pem go (default: the config file's directory)");
  cmd->add_option("--url", o->url, "daemon URL, e.g. https://signer.example:6300/");
  cmd->add_option("--cacert", o->cacert, "CA certificate(s) that verify the daemon's TLS certificate")->check(CLI::ExistingFile);
  cmd->add_option("--nickname", o->nickname, "name shown in the snippet and the certificate (default: host name)");
  cmd->add_option("--role", o->roles, "role(s) for the snippet (default: signers)");
  cmd->add_flag("--force", o->force, "make a new key even if one exists (the old fingerprint stops working)");
  cmd->callback([&g, o] { g.run = [&g, o] { return run_register(g, *o); }; });
}

}  // namespace p11relay::cli
