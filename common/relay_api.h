// JSON wire types of the relay API (docs/relay-api.md). Shared by the daemon, the client library and
// the shim so both ends encode and decode with the same code.
#pragma once

#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"
#include "common/x509.h"

#include <optional>
#include <string>
#include <vector>

namespace p11relay::relay {

inline constexpr const char* kProblemTypePrefix = "urn:p11relay:problem:";

struct TokenDescription {
  std::string label, serial, model, manufacturer;
};

struct KeyDescription {
  std::string name;
  TokenDescription token;
  Bytes id;           // CKA_ID
  std::string label;  // CKA_LABEL
  PublicKeyInfo key;
  Bytes spki;                      // DER SubjectPublicKeyInfo
  std::vector<Bytes> certificates; // DER, leaf first
  std::vector<std::string> mechanisms;
  // "required" when this client's signatures with the key wait for an approver (docs/policy.md);
  // empty or "auto" otherwise. Optional on the wire.
  std::string approval;
  // key_version() as the daemon computed it: present from daemons that check a sign request's
  // key_version (a client keeps a key list on disk only from those); empty from older ones.
  std::string version{};
};

// A token whose keys this client may use but which the daemon cannot use now (GET /v1/keys
// "unavailable", docs/relay-api.md): its login was refused (`token-login-failed`) or it is absent.
struct TokenProblem {
  TokenDescription token;  // label and serial as configured
  std::string code;        // a problem code: token-login-failed, token-not-present
  std::string detail;      // the daemon's reason, for the user
};

struct KeyList {
  std::vector<KeyDescription> keys;
  std::vector<TokenProblem> unavailable;
};

struct PssParams {
  HashAlg hash = HashAlg::sha256;
  HashAlg mgf_hash = HashAlg::sha256;
  unsigned long salt_length = 32;
};

// Longest 'filename' a sign request may carry (400 beyond it): it is copied into the audit record.
inline constexpr size_t kMaxFilenameBytes = 1024;

struct SignRequest {
  std::string mechanism;  // CKM_RSA_PKCS (DigestInfo), CKM_RSA_PKCS_PSS (digest), CKM_ECDSA (digest)
  Bytes input;
  std::optional<PssParams> pss;
  // Optional context for audit and policy; never required.
  std::string filename;
  std::optional<uint64_t> filesize;
  std::optional<HashAlg> digest_alg;
  // Optional precondition: key_version() of the key description the client signs for. The daemon
  // refuses with 412 key-changed, before the token, when the key's description differs now.
  std::string key_version{};
};

// Lowercase hex SHA-256 over the key's SubjectPublicKeyInfo and its certificates (leaf first), each
// preceded by its length as 4 bytes big-endian: what a signature made with the key can be checked
// against. Both ends compute it from the description, so a client's kept key list is checked without
// trusting its own copy of a version number.
std::string key_version(const KeyDescription& key);

// A sign request held for approval (docs/policy.md): the REQUEST object of /v1/requests.
// Times are RFC 3339 UTC strings as the daemon writes them ("2026-11-25T14:03:00Z").
struct ApprovalRequest {
  std::string id;  // "r-" + 16 hex
  std::string key, client, client_fingerprint;
  std::string mechanism;     // CKM_ name
  std::string digest;        // sha256, ..., "none"; empty when unknown
  std::string input_sha256;  // hex of SHA-256 of the input that will be signed
  std::string filename;      // optional context from the client
  std::optional<uint64_t> filesize;
  std::string state;  // pending | signed | denied | expired
  std::string created, expires;
  std::string decided_by, decided_at, reason;  // once decided
  Bytes signature;                              // only when signed, and only to the submitter

  bool pending() const { return state == "pending"; }
};

std::string encode_approval_request(const ApprovalRequest& r);
Result<ApprovalRequest> decode_approval_request(std::string_view body);
// {"requests": [REQUEST...]}
std::string encode_approval_list(const std::vector<ApprovalRequest>& list);
Result<std::vector<ApprovalRequest>> decode_approval_list(std::string_view body);
// Seconds since the epoch of an RFC 3339 UTC time "YYYY-MM-DDTHH:MM:SS[.fff]Z"; nullopt if malformed.
std::optional<int64_t> parse_utc_time(std::string_view text);

std::string encode_key_list(const std::vector<KeyDescription>& keys, const std::vector<TokenProblem>& unavailable = {});
Result<std::vector<KeyDescription>> decode_key_list(std::string_view body);
// The keys and the "unavailable" tokens (absent from older daemons: empty).
Result<KeyList> decode_key_list_full(std::string_view body);

std::string encode_sign_request(const SignRequest& req);
Result<SignRequest> decode_sign_request(std::string_view body);

std::string encode_sign_response(std::span<const std::uint8_t> signature);
Result<Bytes> decode_sign_response(std::string_view body);

// problem+json body for an Error on the relay API, and back.
std::string encode_problem(const Error& e);
Error decode_problem(int http_status, std::string_view body);

}  // namespace p11relay::relay
