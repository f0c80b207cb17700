// RFC 7512 PKCS#11 URIs ("pkcs11:token=Code%20Signing;object=rsa;type=private"), as the daemon config
// and the CLI accept them to name a token or a key. Parsing only: which attributes a caller supports
// is the caller's decision (the daemon config refuses PINs in URIs, for instance).
#pragma once

#include "common/error.h"

#include <map>
#include <string>
#include <string_view>

namespace p11relay {

struct Pkcs11Uri {
  // Percent-decoded values by attribute name. Path attributes (RFC 7512 §2.3: token, serial, object,
  // id…) and query attributes (pin-source, module-path…) are kept apart, as the RFC does.
  std::map<std::string, std::string> path;
  std::map<std::string, std::string> query;

  const std::string* attr(const std::string& name) const;  // path attribute, null if absent
};

// True if `text` starts with the scheme (case-insensitively, as URI schemes are).
bool is_pkcs11_uri(std::string_view text);

// Strict parse: the scheme, then `name=value` pairs separated by ';' (path) and '&' (query).
// Attribute names must be the RFC's or vendor "x-" ones; each may appear once; values are
// percent-decoded and characters the RFC reserves must be percent-encoded. Errors say what and where.
Result<Pkcs11Uri> parse_pkcs11_uri(std::string_view text);

// The inverse, for messages and listings: percent-encodes what the RFC requires.
std::string pkcs11_uri_encode_value(std::string_view value);

}  // namespace p11relay
