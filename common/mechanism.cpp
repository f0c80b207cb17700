#include "common/mechanism.h"

#include <array>
#include <cstdio>

namespace p11relay {
namespace {
struct Name {
  CK_MECHANISM_TYPE mech;
  const char* name;
};
constexpr std::array kNames = {
    Name{CKM_RSA_PKCS, "CKM_RSA_PKCS"},
    Name{CKM_RSA_X_509, "CKM_RSA_X_509"},
    Name{CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS"},
    Name{CKM_SHA1_RSA_PKCS, "CKM_SHA1_RSA_PKCS"},
    Name{CKM_SHA224_RSA_PKCS, "CKM_SHA224_RSA_PKCS"},
    Name{CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS"},
    Name{CKM_SHA384_RSA_PKCS, "CKM_SHA384_RSA_PKCS"},
    Name{CKM_SHA512_RSA_PKCS, "CKM_SHA512_RSA_PKCS"},
    Name{CKM_SHA1_RSA_PKCS_PSS, "CKM_SHA1_RSA_PKCS_PSS"},
    Name{CKM_SHA224_RSA_PKCS_PSS, "CKM_SHA224_RSA_PKCS_PSS"},
    Name{CKM_SHA256_RSA_PKCS_PSS, "CKM_SHA256_RSA_PKCS_PSS"},
    Name{CKM_SHA384_RSA_PKCS_PSS, "CKM_SHA384_RSA_PKCS_PSS"},
    Name{CKM_SHA512_RSA_PKCS_PSS, "CKM_SHA512_RSA_PKCS_PSS"},
    Name{CKM_ECDSA, "CKM_ECDSA"},
    Name{CKM_ECDSA_SHA1, "CKM_ECDSA_SHA1"},
    Name{CKM_ECDSA_SHA224, "CKM_ECDSA_SHA224"},
    Name{CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256"},
    Name{CKM_ECDSA_SHA384, "CKM_ECDSA_SHA384"},
    Name{CKM_ECDSA_SHA512, "CKM_ECDSA_SHA512"},
    Name{CKM_SHA_1, "CKM_SHA_1"},
    Name{CKM_SHA224, "CKM_SHA224"},
    Name{CKM_SHA256, "CKM_SHA256"},
    Name{CKM_SHA384, "CKM_SHA384"},
    Name{CKM_SHA512, "CKM_SHA512"},
    Name{CKM_MD5, "CKM_MD5"},
};
}  // namespace

std::optional<CK_MECHANISM_TYPE> mechanism_by_name(std::string_view name) {
  for (const auto& n : kNames)
    if (name == n.name) return n.mech;
  return std::nullopt;
}

std::string mechanism_name(CK_MECHANISM_TYPE mech) {
  for (const auto& n : kNames)
    if (n.mech == mech) return n.name;
  char buf[32];
  std::snprintf(buf, sizeof buf, "CKM_0x%lx", static_cast<unsigned long>(mech));
  return buf;
}

}  // namespace p11relay
