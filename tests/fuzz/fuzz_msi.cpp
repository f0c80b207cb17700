// libFuzzer target: the OLE compound-file parser, the MSI digest (with and without the
// MsiDigitalSignatureEx pre-hash), the signature-stream reader, verify_msi, and the writer (the tree
// rewritten with a signature stream, then parsed again: what we write must read back). Any crash or
// sanitizer report is a bug; hostile input must be an error.
#include "common/authenticode/msi.h"

#include <cstdint>
#include <cstdlib>

using namespace p11relay;
using namespace p11relay::authenticode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  auto f = ole::File::parse(in);
  if (!f.ok()) return 0;
  (void)msi_digest(*f, HashAlg::sha256, false);
  auto d = msi_digest(*f, HashAlg::sha1, true);
  (void)verify_msi(*f);
  if (!d.ok()) return 0;
  const uint8_t sig[] = {0x30, 0x03, 0x02, 0x01, 0x01};
  Bytes out;
  auto st = msi_write_signed(*f, sig, d->prehash, [&out](std::span<const uint8_t> p) {
    out.insert(out.end(), p.begin(), p.end());
    return Status{};
  });
  if (!st.ok()) return 0;
  auto again = ole::File::parse(out);
  if (!again.ok()) abort();  // what we wrote must parse
  auto d2 = msi_digest(*again, HashAlg::sha1, true);
  // The rewrite keeps every stream and CLSID, so the content digest is the same.
  if (!d2.ok() || d2->digest != d->digest) abort();
  return 0;
}
