#include "common/digest.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <stdexcept>

namespace p11relay {
namespace {

constexpr std::array kHashes = {
    HashInfo{HashAlg::md5, "md5", "MD5", 16, CKM_MD5, 0},
    HashInfo{HashAlg::sha1, "sha1", "SHA1", 20, CKM_SHA_1, CKG_MGF1_SHA1},
    HashInfo{HashAlg::sha224, "sha224", "SHA-224", 28, CKM_SHA224, CKG_MGF1_SHA224},
    HashInfo{HashAlg::sha256, "sha256", "SHA-256", 32, CKM_SHA256, CKG_MGF1_SHA256},
    HashInfo{HashAlg::sha384, "sha384", "SHA-384", 48, CKM_SHA384, CKG_MGF1_SHA384},
    HashInfo{HashAlg::sha512, "sha512", "SHA-512", 64, CKM_SHA512, CKG_MGF1_SHA512},
};

// DER prefixes of DigestInfo (RFC 8017 §9.2 note 1), followed by the digest bytes.
const Bytes& digest_info_prefix(HashAlg alg) {
  static const Bytes md5 = {0x30, 0x20, 0x30, 0x0c, 0x06, 0x08, 0x2a, 0x86, 0x48,
                            0x86, 0xf7, 0x0d, 0x02, 0x05, 0x05, 0x00, 0x04, 0x10};
  static const Bytes sha1 = {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e,
                             0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14};
  static const Bytes sha224 = {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                               0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c};
  static const Bytes sha256 = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                               0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
  static const Bytes sha384 = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                               0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};
  static const Bytes sha512 = {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                               0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40};
  switch (alg) {
    case HashAlg::md5: return md5;
    case HashAlg::sha1: return sha1;
    case HashAlg::sha224: return sha224;
    case HashAlg::sha256: return sha256;
    case HashAlg::sha384: return sha384;
    case HashAlg::sha512: return sha512;
  }
  return sha256;
}

// EVP_sha256() & co. make every EVP_DigestInit_ex look the implementation up in the default
// provider again (a lock and a hash-table search, for each Hasher and after each finish); fetched once
// here instead. The legacy object where the provider has none (MD5 under FIPS).
const EVP_MD* fetched_md(HashAlg alg) {
  static const std::array<EVP_MD*, kHashes.size()> fetched = [] {
    std::array<EVP_MD*, kHashes.size()> t{};
    for (size_t i = 0; i < kHashes.size(); ++i)
      t[i] = EVP_MD_fetch(nullptr, EVP_MD_get0_name(evp_md(kHashes[i].alg)), nullptr);
    return t;
  }();
  for (size_t i = 0; i < kHashes.size(); ++i)
    if (kHashes[i].alg == alg && fetched[i]) return fetched[i];
  return evp_md(alg);
}

}  // namespace

const HashInfo& hash_info(HashAlg alg) {
  for (const auto& h : kHashes)
    if (h.alg == alg) return h;
  return kHashes[3];
}

std::optional<HashAlg> hash_by_name(std::string_view name) {
  std::string n;
  bool removed = false;
  for (char c : name) {
    if (c == '-' && !removed) {
      removed = true;
      continue;
    }
    n.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  for (const auto& h : kHashes)
    if (n == h.name) return h.alg;
  return std::nullopt;
}

std::optional<HashAlg> hash_by_ckm(CK_MECHANISM_TYPE ckm) {
  for (const auto& h : kHashes)
    if (h.ckm == ckm) return h.alg;
  return std::nullopt;
}

std::optional<HashAlg> hash_by_mgf(CK_RSA_PKCS_MGF_TYPE mgf) {
  for (const auto& h : kHashes)
    if (h.mgf != 0 && h.mgf == mgf) return h.alg;
  return std::nullopt;
}

std::optional<HashAlg> hash_by_size(size_t size) {
  for (const auto& h : kHashes)
    if (h.alg != HashAlg::md5 && h.size == size) return h.alg;
  return std::nullopt;
}

const EVP_MD* evp_md(HashAlg alg) {
  switch (alg) {
    case HashAlg::md5: return EVP_md5();
    case HashAlg::sha1: return EVP_sha1();
    case HashAlg::sha224: return EVP_sha224();
    case HashAlg::sha256: return EVP_sha256();
    case HashAlg::sha384: return EVP_sha384();
    case HashAlg::sha512: return EVP_sha512();
  }
  return EVP_sha256();
}

Bytes hash(HashAlg alg, std::span<const std::uint8_t> data) {
  Hasher h(alg);
  h.update(data);
  return h.finish();
}

Bytes digest_info(HashAlg alg, std::span<const std::uint8_t> digest) {
  Bytes out = digest_info_prefix(alg);
  out.insert(out.end(), digest.begin(), digest.end());
  return out;
}

std::optional<std::pair<HashAlg, Bytes>> parse_digest_info(std::span<const std::uint8_t> der) {
  for (const auto& h : kHashes) {
    const Bytes& prefix = digest_info_prefix(h.alg);
    if (der.size() == prefix.size() + h.size && std::equal(prefix.begin(), prefix.end(), der.begin()))
      return std::make_pair(h.alg, Bytes(der.begin() + static_cast<long>(prefix.size()), der.end()));
  }
  return std::nullopt;
}

Hasher::Hasher(HashAlg alg) : alg_(alg), ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), fetched_md(alg), nullptr) != 1) throw std::bad_alloc();
}
Hasher::Hasher(Hasher&&) noexcept = default;
Hasher& Hasher::operator=(Hasher&&) noexcept = default;
Hasher::~Hasher() = default;
void Hasher::update(std::span<const std::uint8_t> data) {
  if (!data.empty()) EVP_DigestUpdate(ctx_.get(), data.data(), data.size());
}

void update_reporting(Hasher& h, std::span<const std::uint8_t> data, std::uint64_t& done,
                      const HashProgress& progress) {
  constexpr size_t kSlice = 4u << 20;
  while (!data.empty()) {
    const auto slice = data.first(std::min(kSlice, data.size()));
    h.update(slice);
    data = data.subspan(slice.size());
    done += slice.size();
    if (progress) progress(done);
  }
}
Bytes Hasher::finish() {
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx_.get(), out.data(), &n);
  out.resize(n);
  EVP_DigestInit_ex(ctx_.get(), fetched_md(alg_), nullptr);
  return out;
}

}  // namespace p11relay
