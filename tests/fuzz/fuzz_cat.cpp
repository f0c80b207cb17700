// libFuzzer target: the security catalog check and verification (common/authenticode/cat.cpp). A crash or a
// sanitizer report is a bug; hostile input must be an error. For a catalog it accepts: the input is PKCS#7 by
// its head, the trust list is a part of the input, and an unsigned catalog does not verify.
#include "common/authenticode/cat.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

using namespace p11relay;
using namespace p11relay::authenticode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  auto verified = verify_catalog(in);
  auto cat = parse_catalog(in);
  if (!cat.ok()) {
    if (verified.ok()) abort();
    return 0;
  }
  if (!is_pkcs7(in) || cat->ctl.empty()) abort();
  if (std::search(in.begin(), in.end(), cat->ctl.begin(), cat->ctl.end()) == in.end()) abort();
  if (!cat->was_signed && verified.ok()) abort();
  return 0;
}
