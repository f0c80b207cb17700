// Certificates and public keys: loading, DER forms, SPKI fingerprints (relic identity, §4.1).
#pragma once

#include "common/bytes.h"
#include "common/error.h"
#include "common/openssl_ptr.h"

#include <string>
#include <vector>

namespace p11relay {

// Loads every certificate from a file holding PEM CERTIFICATE blocks, PEM/DER PKCS#7, or one DER cert.
Result<std::vector<X509_ptr>> load_certificates(const std::string& path);
Result<std::vector<X509_ptr>> parse_certificates(std::span<const std::uint8_t> data);
Result<X509_ptr> parse_certificate_der(std::span<const std::uint8_t> der);

Bytes x509_der(X509* cert);
std::string x509_pem(X509* cert);
Bytes spki_der(X509* cert);
Bytes spki_der(EVP_PKEY* key);
Result<EVP_PKEY_ptr> parse_spki(std::span<const std::uint8_t> der);
// Public keys from the attributes a PKCS#11 token gives (big-endian CKA_MODULUS / CKA_PUBLIC_EXPONENT;
// DER CKA_EC_PARAMS naming a curve and CKA_EC_POINT, DER OCTET STRING per the spec or the raw point as
// some tokens return it).
Result<EVP_PKEY_ptr> rsa_public_key(std::span<const std::uint8_t> modulus, std::span<const std::uint8_t> exponent);
Result<EVP_PKEY_ptr> ec_public_key(std::span<const std::uint8_t> ec_params, std::span<const std::uint8_t> ec_point);
// Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo: the client identity relic uses.
std::string spki_fingerprint(X509* cert);
// RFC 2253 style ("CN=rsa2048") and OpenSSL slash style ("/CN=rsa2048").
std::string name_rfc2253(X509_NAME* name);
std::string name_oneline(X509_NAME* name);
bool is_self_signed(X509* cert);

// Key description used by the relay API and the shim.
enum class KeyType { rsa, ec };
struct PublicKeyInfo {
  KeyType type = KeyType::rsa;
  int bits = 0;
  std::string curve;  // "P-256", "P-384", "P-521" for EC
};
Result<PublicKeyInfo> describe_public_key(EVP_PKEY* key);
bool public_keys_equal(EVP_PKEY* a, EVP_PKEY* b);

}  // namespace p11relay
