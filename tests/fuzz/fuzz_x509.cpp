// libFuzzer target: the DER parsing the shim does on /v1/keys answers (common/x509.h): SPKI, certificates
// (DER, PEM, PKCS#7). A parsed key describes itself and its DER form parses back to an equal key.
#include "common/x509.h"

#include <cstdint>
#include <cstdlib>

using namespace p11relay;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  if (auto k = parse_spki(in); k.ok()) {
    (void)describe_public_key(k->get());
    Bytes der = spki_der(k->get());
    auto again = parse_spki(der);
    if (!again.ok() || !public_keys_equal(k->get(), again->get())) std::abort();
  }
  if (auto certs = parse_certificates(in); certs.ok()) {
    for (auto& c : *certs) {
      (void)spki_fingerprint(c.get());
      (void)name_rfc2253(X509_get_subject_name(c.get()));
      (void)x509_der(c.get());
      if (EVP_PKEY* pk = X509_get0_pubkey(c.get())) (void)describe_public_key(pk);
    }
  }
  return 0;
}
