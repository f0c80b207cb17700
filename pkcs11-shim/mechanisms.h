// The signing mechanisms the shim offers and how each maps onto a relay request (docs/architecture.md,
// hash locally, send only the digest / DigestInfo).
#pragma once

#include "common/digest.h"
#include "common/error.h"
#include "common/relay_api.h"

#include <p11-kit/pkcs11.h>

#include <optional>
#include <string>
#include <vector>

namespace p11relay::shim {

// Errors inside the shim carry the CKR_ value the C function returns.
inline Error ck(CK_RV rv, std::string message) { return Error(ErrorCode::bad_request, std::move(message), rv); }

enum class SignKind { rsa_pkcs1, rsa_pss, ecdsa };

struct SignMech {
  CK_MECHANISM_TYPE mech;
  SignKind kind;
  std::optional<HashAlg> hash;  // set for hash-and-sign mechanisms (hashed locally)
};

const std::vector<SignMech>& sign_mechanisms();
const SignMech* find_sign_mechanism(CK_MECHANISM_TYPE mech);
// The relay API mechanism that performs the private-key operation for `kind`.
const char* relay_mechanism(SignKind kind);
// CKM_SHA_1 … CKM_SHA512 for C_Digest*.
const std::vector<CK_MECHANISM_TYPE>& digest_mechanisms();
std::optional<HashAlg> digest_mechanism_hash(CK_MECHANISM_TYPE mech);

// Validates a CK_RSA_PKCS_PSS_PARAMS for `m` and a key of `bits`; CKR_MECHANISM_PARAM_INVALID on error.
Result<relay::PssParams> pss_params(const SignMech& m, const CK_MECHANISM& mechanism, int bits);

// Builds the relay input from the final data (hash-and-sign: the digest of all data; raw: the data).
// `signature_size` is the modulus size for RSA checks. CKR_DATA_LEN_RANGE when the input cannot fit.
Result<relay::SignRequest> make_sign_request(const SignMech& m, const std::optional<relay::PssParams>& pss,
                                             Bytes input, size_t signature_size);

// Verifies locally with OpenSSL. `input` as for make_sign_request (digest or raw data).
// CKR_SIGNATURE_INVALID / CKR_SIGNATURE_LEN_RANGE on failure.
Status verify_signature(EVP_PKEY* key, const SignMech& m, const std::optional<relay::PssParams>& pss,
                        std::span<const std::uint8_t> input, std::span<const std::uint8_t> signature,
                        size_t signature_size);

}  // namespace p11relay::shim
