// libFuzzer target: RFC 7512 pkcs11: URIs (common/pkcs11_uri.h) as the daemon config and the CLI read
// them. A parsed URI, written again with every value percent-encoded, parses to the same attributes.
#include "common/pkcs11_uri.h"

#include <cstdint>
#include <cstdlib>
#include <string_view>

using namespace p11relay;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto uri = parse_pkcs11_uri(text);
  if (!uri.ok()) return 0;
  std::string again = "pkcs11:";
  for (const auto& [name, value] : uri->path)
    again += (again.size() > 7 ? ";" : "") + name + "=" + pkcs11_uri_encode_value(value);
  bool first = true;
  for (const auto& [name, value] : uri->query) {
    again += (first ? "?" : "&") + name + "=" + pkcs11_uri_encode_value(value);
    first = false;
  }
  auto reparsed = parse_pkcs11_uri(again);
  if (!reparsed.ok() || reparsed->path != uri->path || reparsed->query != uri->query) std::abort();
  return 0;
}
