// Shared helpers of the Authenticode unit tests: temp dirs, software keys with self-signed
// code-signing certificates, a RawSigner over them, test PE files (built with mingw, or taken from
// Debian packages), and osslsigncode as the independent verifier.
#pragma once

#include "common/authenticode/signed_data.h"
#include "common/bytes.h"
#include "common/openssl_ptr.h"
#include "common/x509.h"
#include "tests/test_util.h"

#include <string>
#include <vector>

namespace p11relay::authenticode::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};
CommandResult run(const std::string& command);
std::string shell_quote(const std::string& s);

Bytes read_file(const std::string& path);
void write_file(const std::string& path, std::span<const uint8_t> data);

struct TestKey {
  EVP_PKEY_ptr key;
  X509_ptr cert;
  std::string key_path;   // PEM private key
  std::string cert_path;  // PEM certificate
};
// RSA-2048 or EC P-256 key with a self-signed code-signing certificate, written to `dir`.
TestKey make_test_key(KeyType type, const TempDir& dir, const std::string& name);

// Signs like a PKCS#11 token would: CKM_RSA_PKCS over a DigestInfo, or CKM_ECDSA returning r||s that
// is converted with ecdsa_raw_to_der.
RawSigner software_signer(EVP_PKEY* key);

// A small PE built with the mingw cross compiler (32 or 64 bit); empty if the compiler is absent.
std::string build_mingw_pe(const TempDir& dir, int bits);
// PE DLLs from Debian packages on this machine (mingw-w64 runtime), at most `max` of them.
std::vector<std::string> system_pe_files(size_t max);

struct OsslVerify {
  int exit_code = -1;
  std::string output;
  std::string current_digest;     // "Current message digest" (lowercase hex)
  std::string calculated_digest;  // "Calculated message digest" (lowercase hex)
  bool page_hash_checked = false;
  bool page_hash_mismatch = false;
};
bool have_osslsigncode();
OsslVerify osslsigncode_verify(const std::string& path, const std::string& ca_file, const std::string& tsa_ca = "");

// A local RFC 3161 TSA (tsa_server.py + `openssl ts -reply`) on 127.0.0.1 with a fresh TSA
// certificate made by the openssl CLI. ok() is false (with why()) if it could not be started.
class TestTsa {
 public:
  explicit TestTsa(const TempDir& dir);
  ~TestTsa();
  TestTsa(const TestTsa&) = delete;
  TestTsa& operator=(const TestTsa&) = delete;
  bool ok() const { return port_ > 0; }
  const std::string& why() const { return why_; }
  std::string url(const std::string& path = "/") const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  const std::string& ca_file() const { return ca_file_; }

 private:
  int pid_ = -1;
  int port_ = 0;
  std::string why_, ca_file_;
};

}  // namespace p11relay::authenticode::testing
