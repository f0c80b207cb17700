// PKCS#11 mechanism names as they appear on the wire ("CKM_RSA_PKCS") and in logs.
#pragma once

#include <p11-kit/pkcs11.h>

#include <optional>
#include <string>
#include <string_view>

namespace p11relay {

std::optional<CK_MECHANISM_TYPE> mechanism_by_name(std::string_view name);
std::string mechanism_name(CK_MECHANISM_TYPE mech);  // "CKM_0x…" for unknown values

}  // namespace p11relay
