// Shared pieces of the p11relay CLI: global options, the command registry, error reporting, files.
#pragma once

#include "client/client.h"
#include "common/bytes.h"
#include "common/error.h"
#include "common/openssl_ptr.h"
#include "common/relay_api.h"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace p11relay::cli {

// Exit codes, one per failure class (docs/cli.md, "Exit codes and errors").
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;      // bad signature, verification mismatch, local I/O
inline constexpr int kExitUsage = 2;        // usage or configuration error
inline constexpr int kExitUnreachable = 3;  // no answer from any daemon
inline constexpr int kExitRefused = 4;      // the daemon refused: unknown key, not allowed, mechanism
inline constexpr int kExitTlsTrust = 5;     // the daemon's certificate is not trusted
inline constexpr int kExitNotRegistered = 6;  // the daemon does not know this client's certificate
inline constexpr int kExitTokenUnavailable = 7;  // the daemon's token is absent, refused its login, or busy
inline constexpr int kExitPolicy = 8;       // the key's policy or quota refused the request
inline constexpr int kExitApproval = 9;     // an approver denied the request, or nobody decided in time
inline constexpr int kExitTimestamp = 10;   // the timestamp authority failed

struct Globals {
  std::string config_path;  // -c/--config
  std::string url;          // requests --url: this daemon only, instead of the configured URLs
  bool verbose = false;
  std::function<Status()> run;  // set by the chosen subcommand's callback
};

// One function per command group; each adds its subcommands to `app`.
void add_register(CLI::App& app, Globals& g);
void add_key_commands(CLI::App& app, Globals& g);  // list-keys, get-key, health
void add_sign_digest(CLI::App& app, Globals& g);
void add_authenticode(CLI::App& app, Globals& g);  // sign, verify
void add_doctor(CLI::App& app, Globals& g);
void add_request_commands(CLI::App& app, Globals& g);  // requests list|show|approve|deny

int exit_code_for(const Error& e);
// One line, no secrets: newlines folded, and a hint for network errors.
std::string describe(const Error& e);

// Config + client for commands that talk to the daemon.
Result<client::Config> load_config(const Globals& g);
Result<std::unique_ptr<client::Client>> connect(const Globals& g);

// Where find_key looks: the daemon, or first the key list kept on disk (client/key_cache.h; a key it does
// not name is then looked up at the daemon). A signature for a kept key is checked by its key_version.
enum class KeyLookup { daemon, kept_first };
// The key named `name` among those this client may use (clear error when absent). `name` may be an
// RFC 7512 URI: object= matches CKA_LABEL, id= CKA_ID, token=/serial=/manufacturer=/model= the token.
// `from_disk` (if given) says whether the answer came from the kept list.
Result<relay::KeyDescription> find_key(client::Client& c, const std::string& name,
                                       KeyLookup how = KeyLookup::daemon, bool* from_disk = nullptr);
// The daemon's "unavailable" tokens as one error (token-login-failed or token-not-present, exit 7).
Error token_problem_error(const std::vector<relay::TokenProblem>& unavailable);
// The keys among `keys` that `name_or_uri` names (a key name, or a pkcs11: URI as above).
Result<std::vector<relay::KeyDescription>> select_keys(std::vector<relay::KeyDescription> keys,
                                                     const std::string& name_or_uri);
Result<std::vector<X509_ptr>> key_chain(const relay::KeyDescription& k);

// Signs a digest through the daemon. mechanism: "pkcs1", "pss", "ecdsa" (empty: RSA→pkcs1, EC→ecdsa).
// Returns the signature as the token produced it (ECDSA: r||s). The file name and size are context for
// the audit log and for approvers (docs/policy.md). When the key needs an approval, a line on stderr
// says which request waits and until when.
struct DigestSignature {
  std::string mechanism;  // CKM_ name used
  Bytes signature;
};
Result<DigestSignature> sign_digest(client::Client& c, const relay::KeyDescription& key, HashAlg alg,
                                    std::span<const uint8_t> digest, std::string mechanism,
                                    const std::string& filename = {},
                                    std::optional<uint64_t> filesize = std::nullopt);
// Checks a signature over a digest against the key's public key (SPKI), locally with OpenSSL.
Status verify_digest_signature(const relay::KeyDescription& key, HashAlg alg, std::span<const uint8_t> digest,
                               const std::string& ckm, std::span<const uint8_t> signature);

// A read-only mapping of a whole file (empty files map to an empty span).
class MappedFile {
 public:
  static Result<MappedFile> open(const std::string& path, bool writable = false);
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  ~MappedFile();
  std::span<const uint8_t> data() const { return {static_cast<const uint8_t*>(addr_), size_}; }
  std::span<uint8_t> mutable_data() { return {static_cast<uint8_t*>(addr_), size_}; }
  int fd() const { return fd_; }

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
};

Result<Bytes> read_file(const std::string& path, size_t max = 64 * 1024 * 1024);
// Writes `data` to `path` atomically (temp file in the same directory + rename), with `mode`.
Status write_file_atomic(const std::string& path, std::span<const uint8_t> data, unsigned mode = 0644);
Status write_stdout(std::span<const uint8_t> data);

// Progress bar on stderr (only when stderr is a terminal and total > threshold).
class Progress {
 public:
  Progress(std::string label, uint64_t total, uint64_t threshold = 4u << 20);
  ~Progress();
  void update(uint64_t done);
  // The work is done: shows 100% (a digest may cover a little less than the file) and clears the line.
  void complete();
  void finish();
  // update() as a callback, for the digest functions (common/digest.h HashProgress).
  std::function<void(uint64_t)> reporter() {
    return [this](uint64_t done) { update(done); };
  }

 private:
  std::string label_;
  uint64_t total_;
  bool enabled_;
  int last_ = -1;
};

std::string trim(std::string s);

}  // namespace p11relay::cli
