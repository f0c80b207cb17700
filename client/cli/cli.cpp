// Shared pieces of the p11relay CLI (see cli.h).
#include "client/cli/cli.h"

#include "common/authenticode/signed_data.h"
#include "common/digest.h"
#include "common/pkcs11_uri.h"
#include "common/x509.h"

#include <openssl/rsa.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

namespace p11relay::cli {
namespace fs = std::filesystem;

std::string trim(std::string s) {
  auto sp = [](unsigned char c) { return std::isspace(c) != 0; };
  while (!s.empty() && sp(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && sp(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

int exit_code_for(const Error& e) {
  switch (e.code) {
    case ErrorCode::config:
    case ErrorCode::bad_request:
      return kExitUsage;
    case ErrorCode::network:
      return kExitUnreachable;
    case ErrorCode::tls_trust:
      return kExitTlsTrust;
    case ErrorCode::unauthenticated:
      return kExitNotRegistered;
    case ErrorCode::unavailable:
    case ErrorCode::token_not_present:
    case ErrorCode::token_login_failed:
    case ErrorCode::timeout:
      return kExitTokenUnavailable;
    case ErrorCode::policy_denied:
    case ErrorCode::quota:
      return kExitPolicy;
    case ErrorCode::request_denied:
    case ErrorCode::request_expired:
      return kExitApproval;
    case ErrorCode::timestamp_failed:
      return kExitTimestamp;
    case ErrorCode::forbidden:
    case ErrorCode::mechanism_invalid:
    case ErrorCode::mechanism_param:
    case ErrorCode::key_usage:
    case ErrorCode::self_approval:
    case ErrorCode::not_pending:
    case ErrorCode::not_found:
      return kExitRefused;
    default:
      return kExitFailure;
  }
}

namespace {

// The message on one line: CR/LF become "; ".
std::string one_line(const Error& e) {
  std::string m;
  for (char c : e.message) {
    if (c == '\n' || c == '\r') {
      if (!m.empty() && m.back() != ' ') m += "; ";
    } else {
      m += c;
    }
  }
  m = trim(m);
  return m.empty() ? error_code_name(e.code) : m;
}

}  // namespace

std::string describe(const Error& e) {
  const std::string m = one_line(e);
  switch (e.code) {
    case ErrorCode::network:
      return "cannot reach the daemon (is p11relayd running, and remote.url right?): " + m;
    case ErrorCode::tls_trust:
      return "the daemon's certificate is not trusted: remote.cacert must hold the CA that issued it, and "
             "remote.url must use a name the certificate carries: " + m;
    case ErrorCode::unauthenticated:
      return "the daemon does not accept this client's certificate (run `p11relay register` and add the "
             "fingerprint under `clients:` in p11relayd.yml): " + m;
    case ErrorCode::token_login_failed:
      return "the daemon's token refused its login (the operator must fix the token's PIN on the appliance): " + m;
    case ErrorCode::unavailable:
    case ErrorCode::token_not_present:
    case ErrorCode::timeout:
      return "the daemon's token is not available (not present, being re-opened, or busy; retry later or ask "
             "the operator): " + m;
    case ErrorCode::policy_denied:
    case ErrorCode::quota:
      return "the key's policy refused the request (docs/policy.md; ask the operator to change it): " + m;
    case ErrorCode::timestamp_failed:
      return "the timestamp authority failed (check --timestamp-url, or sign without a timestamp): " + m;
    default:
      return m;
  }
}

Result<client::Config> load_config(const Globals& g) {
  ASSIGN_OR_RETURN(client::Config cfg, client::load_config(g.config_path));
  if (!g.url.empty()) {
    if (g.url.rfind("https://", 0) != 0) return bad_request("--url '" + g.url + "' is not an https:// URL");
    cfg.urls = {g.url};  // a held request lives on the daemon that holds it: ask that one, no sibling
    cfg.directory_url.clear();
  }
  return cfg;
}

Result<std::unique_ptr<client::Client>> connect(const Globals& g) {
  ASSIGN_OR_RETURN(client::Config cfg, load_config(g));
  // Every command that connects asks the daemon soon: its TCP connection begins now.
  return client::Client::create(cfg, client::Client::Start::connecting);
}

Result<std::vector<relay::KeyDescription>> select_keys(std::vector<relay::KeyDescription> keys,
                                                     const std::string& name_or_uri) {
  if (!is_pkcs11_uri(name_or_uri)) {
    std::erase_if(keys, [&](const relay::KeyDescription& k) { return k.name != name_or_uri; });
    return keys;
  }
  ASSIGN_OR_RETURN(Pkcs11Uri uri, parse_pkcs11_uri(name_or_uri));
  if (!uri.query.empty())
    return bad_request("--key: query attribute '" + uri.query.begin()->first +
                       "' is not used (no PIN or module is needed: the daemon holds the token)");
  if (const std::string* type = uri.attr("type"); type && *type != "private")
    return bad_request("--key: type=" + *type + " does not name a signing key (use type=private or leave it out)");
  for (const auto& [name, value] : uri.path)
    if (name != "object" && name != "id" && name != "type" && name != "token" && name != "serial" &&
        name != "manufacturer" && name != "model")
      return bad_request("--key: attribute '" + name +
                         "' is not supported (use object, id, token, serial, manufacturer, model)");
  auto differs = [&](const char* attr, const std::string& have) {
    const std::string* want = uri.attr(attr);
    return want && *want != have;
  };
  std::erase_if(keys, [&](const relay::KeyDescription& k) {
    return differs("object", k.label) || differs("id", to_string(k.id)) || differs("token", k.token.label) ||
           differs("serial", k.token.serial) || differs("manufacturer", k.token.manufacturer) ||
           differs("model", k.token.model);
  });
  return keys;
}

Error token_problem_error(const std::vector<relay::TokenProblem>& unavailable) {
  std::string what;
  ErrorCode code = ErrorCode::token_not_present;
  for (const auto& t : unavailable) {
    if (error_code_from_name(t.code) == ErrorCode::token_login_failed) code = ErrorCode::token_login_failed;
    what += (what.empty() ? "" : "; ") + ("token '" + t.token.label + "': " + (t.detail.empty() ? t.code : t.detail));
  }
  return Error(code, what);
}

namespace {

Result<relay::KeyDescription> pick_key(const relay::KeyList& list, const std::string& name) {
  const std::vector<relay::KeyDescription>& all = list.keys;
  ASSIGN_OR_RETURN(std::vector<relay::KeyDescription> found, select_keys(all, name));
  if (found.size() == 1) return std::move(found.front());
  std::string names;
  for (const auto& k : found.empty() ? all : found) names += (names.empty() ? "" : ", ") + k.name;
  if (found.size() > 1)
    return bad_request("key URI '" + name + "' matches several keys (" + names + "): add object= or id=");
  // The key may be on a token the daemon cannot use now: that is the cause to name, not "no such key".
  if (!list.unavailable.empty()) {
    Error e = token_problem_error(list.unavailable);
    e.message = "key '" + name + "' is not among the keys the daemon can use now; " + e.message;
    return e;
  }
  return Error(ErrorCode::forbidden, "key '" + name + "' does not exist or this client may not use it (keys available: " +
                                         (names.empty() ? "none" : names) + ")");
}

}  // namespace

Result<relay::KeyDescription> find_key(client::Client& c, const std::string& name, KeyLookup how, bool* from_disk) {
  bool kept = false;
  Result<relay::KeyList> list = how == KeyLookup::kept_first ? c.list_keys_kept(&kept) : c.list_keys_full();
  if (!list.ok()) return list.take_error();
  auto key = pick_key(*list, name);
  if (!key.ok() && kept) {  // the kept list may predate the key: ask the daemon
    kept = false;
    ASSIGN_OR_RETURN(relay::KeyList fresh, c.list_keys_full());
    key = pick_key(fresh, name);
  }
  if (from_disk) *from_disk = kept;
  return key;
}

Result<std::vector<X509_ptr>> key_chain(const relay::KeyDescription& k) {
  std::vector<X509_ptr> chain;
  for (const auto& der : k.certificates) {
    ASSIGN_OR_RETURN(X509_ptr c, parse_certificate_der(der));
    chain.push_back(std::move(c));
  }
  if (chain.empty()) return Error(ErrorCode::key_usage, "key '" + k.name + "' has no certificate on the daemon");
  return chain;
}

namespace {
bool has_mechanism(const relay::KeyDescription& k, const std::string& ckm) {
  return std::find(k.mechanisms.begin(), k.mechanisms.end(), ckm) != k.mechanisms.end();
}
}  // namespace

Result<DigestSignature> sign_digest(client::Client& c, const relay::KeyDescription& key, HashAlg alg,
                                    std::span<const uint8_t> digest, std::string mechanism,
                                    const std::string& filename, std::optional<uint64_t> filesize) {
  if (digest.size() != hash_info(alg).size)
    return bad_request("the digest has " + std::to_string(digest.size()) + " bytes; " + hash_info(alg).name +
                       " needs " + std::to_string(hash_info(alg).size));
  if (mechanism.empty()) mechanism = key.key.type == KeyType::rsa ? "pkcs1" : "ecdsa";
  relay::SignRequest req;
  req.filename = filename;
  req.filesize = filesize;
  req.digest_alg = alg;
  req.key_version = relay::key_version(key);  // the daemon refuses if the key is not this one any more
  if (mechanism == "pkcs1") {
    if (key.key.type != KeyType::rsa) return bad_request("key '" + key.name + "' is not an RSA key: use --mechanism ecdsa");
    req.mechanism = "CKM_RSA_PKCS";
    req.input = digest_info(alg, digest);
  } else if (mechanism == "pss") {
    if (key.key.type != KeyType::rsa) return bad_request("key '" + key.name + "' is not an RSA key: use --mechanism ecdsa");
    req.mechanism = "CKM_RSA_PKCS_PSS";
    req.input.assign(digest.begin(), digest.end());
    relay::PssParams p;
    p.hash = alg;
    p.mgf_hash = alg;
    p.salt_length = hash_info(alg).size;
    req.pss = p;
  } else if (mechanism == "ecdsa") {
    if (key.key.type != KeyType::ec) return bad_request("key '" + key.name + "' is not an EC key: use --mechanism pkcs1 or pss");
    req.mechanism = "CKM_ECDSA";
    req.input.assign(digest.begin(), digest.end());
  } else {
    return bad_request("unknown mechanism '" + mechanism + "' (use pkcs1, pss or ecdsa)");
  }
  if (!key.mechanisms.empty() && !has_mechanism(key, req.mechanism))
    return Error(ErrorCode::mechanism_invalid, "key '" + key.name + "' does not offer " + req.mechanism);
  auto on_hold = [](const relay::ApprovalRequest& r) {
    std::fprintf(stderr, "p11relay: waiting for approval of request %s (expires %s); an approver runs: "
                         "p11relay requests approve %s\n", r.id.c_str(), r.expires.c_str(), r.id.c_str());
  };
  ASSIGN_OR_RETURN(Bytes sig, c.sign(key.name, req, on_hold));
  return DigestSignature{req.mechanism, std::move(sig)};
}

Status verify_digest_signature(const relay::KeyDescription& key, HashAlg alg, std::span<const uint8_t> digest,
                               const std::string& ckm, std::span<const uint8_t> signature) {
  ASSIGN_OR_RETURN(EVP_PKEY_ptr pub, parse_spki(key.spki));
  EVP_PKEY_CTX_ptr ctx(EVP_PKEY_CTX_new(pub.get(), nullptr));
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) <= 0) return internal_error("verify init: " + openssl_error_string());
  Bytes sig(signature.begin(), signature.end());
  if (ckm == "CKM_ECDSA") {
    ASSIGN_OR_RETURN(sig, authenticode::ecdsa_raw_to_der(signature));
  } else if (ckm == "CKM_RSA_PKCS") {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_signature_md(ctx.get(), evp_md(alg)) <= 0)
      return internal_error("verify setup: " + openssl_error_string());
  } else if (ckm == "CKM_RSA_PKCS_PSS") {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PSS_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_signature_md(ctx.get(), evp_md(alg)) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), evp_md(alg)) <= 0 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx.get(), static_cast<int>(hash_info(alg).size)) <= 0)
      return internal_error("verify setup: " + openssl_error_string());
  } else {
    return internal_error("cannot verify " + ckm);
  }
  int r = EVP_PKEY_verify(ctx.get(), sig.data(), sig.size(), digest.data(), digest.size());
  if (r != 1) {
    openssl_error_string();
    return Error(ErrorCode::device_error, "the signature returned for key '" + key.name +
                                              "' does not verify with the key's public key");
  }
  return {};
}

// ---------------------------------------------------------------------------------------------
// Files

Result<MappedFile> MappedFile::open(const std::string& path, bool writable) {
  MappedFile m;
  m.fd_ = ::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (m.fd_ < 0) return bad_request(path + ": " + std::strerror(errno));
  struct stat st {};
  if (fstat(m.fd_, &st) != 0) return bad_request(path + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return bad_request(path + ": not a regular file");
  m.size_ = static_cast<size_t>(st.st_size);
  if (m.size_ > 0) {
    void* a = mmap(nullptr, m.size_, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, m.fd_, 0);
    if (a == MAP_FAILED) return internal_error(path + ": mmap: " + std::strerror(errno));
    m.addr_ = a;
    madvise(a, m.size_, MADV_SEQUENTIAL);
  }
  return m;
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)), fd_(std::exchange(o.fd_, -1)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  MappedFile gone(std::move(o));  // the old mapping goes when `gone` does
  std::swap(addr_, gone.addr_);
  std::swap(size_, gone.size_);
  std::swap(fd_, gone.fd_);
  return *this;
}

MappedFile::~MappedFile() {
  if (addr_) munmap(addr_, size_);
  if (fd_ >= 0) ::close(fd_);
}

Result<Bytes> read_file(const std::string& path, size_t max) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return bad_request(path + ": " + std::strerror(errno));
  Bytes out;
  uint8_t buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return bad_request(path + ": " + std::strerror(e));
    }
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
    if (out.size() > max) {
      ::close(fd);
      return bad_request(path + ": file too large");
    }
  }
  ::close(fd);
  return out;
}

namespace {
Status write_all(int fd, std::span<const uint8_t> data, const std::string& what) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return internal_error(what + ": " + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  return {};
}
}  // namespace

Status write_file_atomic(const std::string& path, std::span<const uint8_t> data, unsigned mode) {
  fs::path p(path);
  std::string dir = p.parent_path().empty() ? "." : p.parent_path().string();
  std::string tmpl = dir + "/." + p.filename().string() + ".XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  int fd = mkstemp(name.data());
  if (fd < 0) return bad_request(dir + ": cannot create a file: " + std::strerror(errno));
  std::string tmp(name.data());
  Status s = write_all(fd, data, tmp);
  if (s.ok() && fchmod(fd, mode) != 0) s = internal_error(tmp + ": chmod: " + std::strerror(errno));
  if (s.ok() && fsync(fd) != 0) s = internal_error(tmp + ": fsync: " + std::strerror(errno));
  if (::close(fd) != 0 && s.ok()) s = internal_error(tmp + ": close: " + std::strerror(errno));
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = internal_error(path + ": rename: " + std::strerror(errno));
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

Status write_stdout(std::span<const uint8_t> data) {
  Status s = write_all(1, data, "stdout");
  return s;
}

// ---------------------------------------------------------------------------------------------
// Progress

Progress::Progress(std::string label, uint64_t total, uint64_t threshold)
    : label_(std::move(label)), total_(total), enabled_(total > threshold && isatty(2) == 1) {}

Progress::~Progress() { finish(); }

void Progress::update(uint64_t done) {
  if (!enabled_ || total_ == 0) return;
  int pct = static_cast<int>(std::min<uint64_t>(100, done * 100 / total_));
  if (pct == last_) return;
  last_ = pct;
  constexpr int kWidth = 30;
  int fill = pct * kWidth / 100;
  std::string bar(static_cast<size_t>(fill), '#');
  bar.append(static_cast<size_t>(kWidth - fill), '.');
  std::fprintf(stderr, "\r%s [%s] %3d%% %llu/%llu MiB", label_.c_str(), bar.c_str(), pct,
               static_cast<unsigned long long>(done >> 20), static_cast<unsigned long long>(total_ >> 20));
  std::fflush(stderr);
}

void Progress::complete() {
  update(total_);
  finish();
}

void Progress::finish() {
  if (enabled_ && last_ >= 0) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
  enabled_ = false;
}

}  // namespace p11relay::cli
