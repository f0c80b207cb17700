// Hash algorithms by name, and the DigestInfo encoding RSA PKCS#1 v1.5 signs (RFC 8017 §9.2).
#pragma once

#include "common/bytes.h"
#include "common/error.h"
#include "common/openssl_ptr.h"

#include <openssl/evp.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace p11relay {

enum class HashAlg { md5, sha1, sha224, sha256, sha384, sha512 };

struct HashInfo {
  HashAlg alg;
  const char* name;       // our canonical name: "sha256"
  const char* relic_name; // relic's audit/display name: "SHA-256"
  size_t size;            // digest length in bytes
  CK_MECHANISM_TYPE ckm;  // CKM_SHA256 …
  CK_RSA_PKCS_MGF_TYPE mgf;  // CKG_MGF1_SHA256 … (0 for md5)
};

const HashInfo& hash_info(HashAlg alg);
// Relic's HashByName: case-insensitive, the first '-' removed ("SHA-256", "sha256", "Sha-1").
std::optional<HashAlg> hash_by_name(std::string_view name);
std::optional<HashAlg> hash_by_ckm(CK_MECHANISM_TYPE ckm);
std::optional<HashAlg> hash_by_mgf(CK_RSA_PKCS_MGF_TYPE mgf);
std::optional<HashAlg> hash_by_size(size_t size);  // sha1/224/256/384/512 (never md5)
const EVP_MD* evp_md(HashAlg alg);

Bytes hash(HashAlg alg, std::span<const std::uint8_t> data);

// DER DigestInfo { AlgorithmIdentifier(hash, NULL), OCTET STRING digest }.
Bytes digest_info(HashAlg alg, std::span<const std::uint8_t> digest);
// Parses a DigestInfo as built above; nullopt if it is not exactly one.
std::optional<std::pair<HashAlg, Bytes>> parse_digest_info(std::span<const std::uint8_t> der);

// Streaming hash.
class Hasher {
 public:
  explicit Hasher(HashAlg alg);
  // Defined out of line: inlined into a std::optional<Hasher>, GCC 12 warns (falsely) that the pointer
  // may be used uninitialized.
  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;
  ~Hasher();
  void update(std::span<const std::uint8_t> data);
  Bytes finish();
  HashAlg alg() const { return alg_; }

 private:
  HashAlg alg_;
  EVP_MD_CTX_ptr ctx_;
};

// Called with the number of bytes hashed so far, for a progress bar; empty when nobody watches.
using HashProgress = std::function<void(std::uint64_t done)>;

// Hashes a large input and reports progress: `data` goes to `h` in 4 MiB slices, `done` grows by each
// slice and `progress` (if set) is told the new total after each one.
void update_reporting(Hasher& h, std::span<const std::uint8_t> data, std::uint64_t& done,
                      const HashProgress& progress);

}  // namespace p11relay
