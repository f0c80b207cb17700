// libFuzzer target: the relic msi upload digester (a tar read in one forward pass), whole and in
// input-chosen chunks, with and without the MsiDigitalSignatureEx pre-hash. A crash, a sanitizer report
// or a whole/chunked disagreement is a bug; hostile input must be an error.
#include "common/authenticode/msi_tar.h"

#include <cstdint>
#include <cstdlib>

using namespace p11relay;
using namespace p11relay::authenticode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  std::span<const uint8_t> in(data + 1, size - 1);
  const bool extended = (mode & 1) != 0;
  MsiTarDigester whole(HashAlg::sha256, extended);
  const bool whole_ok = whole.update(in).ok();
  auto a = whole_ok ? whole.finish() : Result<Bytes>(bad_request("update failed"));
  MsiTarDigester pieces(HashAlg::sha256, extended);
  const size_t chunk = 1 + (mode >> 1) * 7;
  bool ok = true;
  for (size_t pos = 0; pos < in.size() && ok; pos += chunk) ok = pieces.update(in.subspan(pos, std::min(chunk, in.size() - pos))).ok();
  auto b = ok ? pieces.finish() : Result<Bytes>(bad_request("update failed"));
  if (a.ok() != b.ok()) abort();
  if (a.ok() && *a != *b) abort();
  return 0;
}
