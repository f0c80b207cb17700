// libFuzzer target: the relay API JSON bodies (common/relay_api.h) — sign requests as the daemon decodes
// them, and key lists, sign responses and problem documents as the client and the shim decode them.
// A decoded sign request encodes and decodes again to the same request.
#include "common/relay_api.h"

#include <cstdint>
#include <cstdlib>
#include <string_view>

using namespace p11relay;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  if (auto r = relay::decode_sign_request(body); r.ok()) {
    auto again = relay::decode_sign_request(relay::encode_sign_request(*r));
    if (!again.ok()) std::abort();
    if (again->mechanism != r->mechanism || again->input != r->input || again->pss.has_value() != r->pss.has_value() ||
        again->filename != r->filename || again->key_version != r->key_version)
      std::abort();
    if (r->pss && (again->pss->hash != r->pss->hash || again->pss->mgf_hash != r->pss->mgf_hash ||
                   again->pss->salt_length != r->pss->salt_length))
      std::abort();
  }
  if (auto list = relay::decode_key_list_full(body); list.ok()) {
    // the "unavailable" tokens survive a round trip
    auto again = relay::decode_key_list_full(relay::encode_key_list({}, list->unavailable));
    if (!again.ok() || again->unavailable.size() != list->unavailable.size()) std::abort();
    for (const auto& k : list->keys) {
      // what the shim does with each entry (object_store): the SPKI and the certificates
      (void)parse_spki(k.spki);
      for (const auto& c : k.certificates) (void)parse_certificate_der(c);
    }
  }
  (void)relay::decode_sign_response(body);
  (void)relay::decode_problem(503, body);
  return 0;
}
