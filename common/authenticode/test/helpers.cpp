#include "helpers.h"

#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

namespace p11relay::authenticode::testing {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "p11r-authenticode-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}
TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

CommandResult run(const std::string& command) {
  CommandResult r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int st = pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

Bytes read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, std::span<const uint8_t> data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

namespace {
void add_ext(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION_ptr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext) throw std::runtime_error("X509V3_EXT_conf_nid");
  X509_add_ext(cert, ext.get(), -1);
}
}  // namespace

TestKey make_test_key(KeyType type, const TempDir& dir, const std::string& name) {
  TestKey k;
  k.key.reset(type == KeyType::rsa ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})
                                   : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!k.key) throw std::runtime_error("keygen failed");
  k.cert.reset(X509_new());
  X509* c = k.cert.get();
  X509_set_version(c, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c), 0x1234 + static_cast<long>(name.size()));
  X509_gmtime_adj(X509_getm_notBefore(c), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c), 30L * 24 * 3600);
  X509_NAME* n = X509_get_subject_name(c);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1, 0);
  X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("p11relay tests"), -1, -1, 0);
  X509_set_issuer_name(c, n);
  X509_set_pubkey(c, k.key.get());
  add_ext(c, NID_key_usage, "critical,digitalSignature");
  add_ext(c, NID_ext_key_usage, "codeSigning");
  add_ext(c, NID_subject_key_identifier, "hash");
  if (X509_sign(c, k.key.get(), EVP_sha256()) <= 0) throw std::runtime_error("X509_sign");
  k.key_path = dir.file(name + ".key.pem");
  k.cert_path = dir.file(name + ".crt.pem");
  BIO_ptr kb(BIO_new_file(k.key_path.c_str(), "w"));
  PEM_write_bio_PrivateKey(kb.get(), k.key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  BIO_ptr cb(BIO_new_file(k.cert_path.c_str(), "w"));
  PEM_write_bio_X509(cb.get(), c);
  return k;
}

RawSigner software_signer(EVP_PKEY* key) {
  return [key](HashAlg alg, std::span<const uint8_t> digest) -> Result<Bytes> {
    EVP_PKEY_CTX_ptr ctx(EVP_PKEY_CTX_new(key, nullptr));
    if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1) return internal_error("sign init");
    const bool rsa = EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA;
    Bytes input(digest.begin(), digest.end());
    if (rsa) {  // CKM_RSA_PKCS: the caller supplies the DigestInfo
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING);
      input = digest_info(alg, digest);
    }
    size_t len = 0;
    if (EVP_PKEY_sign(ctx.get(), nullptr, &len, input.data(), input.size()) != 1) return internal_error("sign size");
    Bytes sig(len);
    if (EVP_PKEY_sign(ctx.get(), sig.data(), &len, input.data(), input.size()) != 1) return internal_error("sign");
    sig.resize(len);
    if (rsa) return sig;
    // CKM_ECDSA answers r||s; go through the conversion the daemon/CLI use.
    ASSIGN_OR_RETURN(Bytes raw, ecdsa_der_to_raw(sig, static_cast<size_t>((EVP_PKEY_get_bits(key) + 7) / 8)));
    return ecdsa_raw_to_der(raw);
  };
}

std::string build_mingw_pe(const TempDir& dir, int bits) {
  const char* env = std::getenv(bits == 32 ? "P11R_MINGW32" : "P11R_MINGW64");
  std::string cc = env ? env : (bits == 32 ? "i686-w64-mingw32-gcc" : "x86_64-w64-mingw32-gcc");
  if (cc.empty()) return "";
  std::string src = dir.file("tiny.c");
  std::ofstream(src) << "#include <stdio.h>\n"
                        "static const char big[20000] = \"hello\";\n"  // a multi-page .rdata for page hashes
                        "int main(int argc, char** argv) { (void)argv; printf(\"%s %d\\n\", big + argc, argc); return 0; }\n";
  std::string out = dir.file("tiny" + std::to_string(bits) + ".exe");
  auto r = run(shell_quote(cc) + " -O1 -s -o " + shell_quote(out) + " " + shell_quote(src));
  if (r.exit_code != 0) return "";
  return out;
}

std::vector<std::string> system_pe_files(size_t max) {
  std::vector<std::string> found;
  for (const char* root : {"/usr/lib/gcc/x86_64-w64-mingw32", "/usr/lib/gcc/i686-w64-mingw32", "/usr/x86_64-w64-mingw32",
                           "/usr/i686-w64-mingw32"}) {
    std::error_code ec;
    if (!std::filesystem::is_directory(root, ec)) continue;
    for (auto it = std::filesystem::recursive_directory_iterator(root, ec); !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file(ec) && it->path().extension() == ".dll" && it->file_size(ec) < 4 * 1024 * 1024)
        found.push_back(it->path().string());
    }
  }
  std::sort(found.begin(), found.end());
  // P11R_ALL_PE=1 runs the (slow) tests over every DLL found, not a sample.
  if (const char* all = std::getenv("P11R_ALL_PE"); all && *all == '1') max = found.size();
  // Spread the pick over the list so both 32- and 64-bit DLLs come up.
  std::vector<std::string> out;
  if (found.empty()) return out;
  size_t step = std::max<size_t>(1, found.size() / max);
  for (size_t i = 0; i < found.size() && out.size() < max; i += step) out.push_back(found[i]);
  return out;
}

bool have_osslsigncode() {
  const char* env = std::getenv("P11R_OSSLSIGNCODE");
  if (env) return *env != 0;
  return run("command -v osslsigncode").exit_code == 0;
}

namespace {
std::string osslsigncode_bin() {
  const char* env = std::getenv("P11R_OSSLSIGNCODE");
  return env && *env ? env : "osslsigncode";
}
std::string field(const std::string& out, const std::string& label) {
  size_t p = out.find(label);
  if (p == std::string::npos) return "";
  p = out.find(':', p);
  if (p == std::string::npos) return "";
  ++p;
  while (p < out.size() && out[p] == ' ') ++p;
  std::string v;
  while (p < out.size() && std::isxdigit(static_cast<unsigned char>(out[p])))
    v += static_cast<char>(std::tolower(static_cast<unsigned char>(out[p++])));
  return v;
}
}  // namespace

OsslVerify osslsigncode_verify(const std::string& path, const std::string& ca_file, const std::string& tsa_ca) {
  OsslVerify v;
  std::string cmd = shell_quote(osslsigncode_bin()) + " verify -in " + shell_quote(path) + " -CAfile " + shell_quote(ca_file);
  if (!tsa_ca.empty()) cmd += " -TSA-CAfile " + shell_quote(tsa_ca);
  auto r = run(cmd);
  v.exit_code = r.exit_code;
  v.output = r.output;
  v.current_digest = field(r.output, "Current message digest");
  v.calculated_digest = field(r.output, "Calculated message digest");
  v.page_hash_checked = r.output.find("Calculated page hash") != std::string::npos;
  v.page_hash_mismatch = r.output.find("MISMATCH") != std::string::npos;
  return v;
}

TestTsa::TestTsa(const TempDir& dir) {
  const std::string d = dir.path() + "/tsa";
  std::filesystem::create_directories(d);
  std::ofstream(d + "/tsa.cnf") << "[ tsa ]\ndefault_tsa = tsa_config1\n[ tsa_config1 ]\n"
                                   "dir = " << d << "\nserial = $dir/serial\ncrypto_device = builtin\n"
                                   "signer_cert = $dir/tsa.crt\ncerts = $dir/tsa.crt\nsigner_key = $dir/tsa.key\n"
                                   "signer_digest = sha256\ndefault_policy = 1.2.3.4.1\n"
                                   "digests = sha1, sha256, sha384, sha512\naccuracy = secs:1\nordering = yes\n"
                                   "tsa_name = no\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n";
  std::ofstream(d + "/serial") << "01\n";
  auto gen = run("openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj '/CN=p11relay test TSA' "
                 "-addext 'extendedKeyUsage=critical,timeStamping' -addext 'keyUsage=critical,digitalSignature' "
                 "-keyout " + shell_quote(d + "/tsa.key") + " -out " + shell_quote(d + "/tsa.crt"));
  if (gen.exit_code != 0) {
    why_ = "openssl req failed: " + gen.output;
    return;
  }
  ca_file_ = d + "/tsa.crt";
  const char* py = std::getenv("P11R_PYTHON3");
  const char* script = std::getenv("P11R_TSA_SCRIPT");
  if (!script) {
    why_ = "P11R_TSA_SCRIPT not set";
    return;
  }
  int fds[2];
  if (pipe(fds) != 0) return;
  pid_ = fork();
  if (pid_ == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execlp(py && *py ? py : "python3", "python3", script, d.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string line;
  char c;
  while (read(fds[0], &c, 1) == 1 && c != '\n') line += c;
  close(fds[0]);
  port_ = std::atoi(line.c_str());
  if (port_ <= 0) why_ = "TSA script did not start";
}

TestTsa::~TestTsa() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
}

}  // namespace p11relay::authenticode::testing
