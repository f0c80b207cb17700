// libFuzzer target: binpatch parse / serialize / apply on hostile patches (docs/relic-protocol.md §7).
#include "common/authenticode/binpatch.h"

#include <cstdint>
#include <cstdlib>

using namespace p11relay;
using namespace p11relay::authenticode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto patch = binpatch::parse(std::span(data, size));
  if (!patch.ok()) return 0;
  // A valid patch serialises again and parses to an equivalent patch.
  auto wire = binpatch::serialize(*patch);
  if (!wire.ok()) std::abort();
  auto again = binpatch::parse(*wire);
  if (!again.ok()) std::abort();
  // Apply to an original whose size comes from the patch bytes: out-of-range records must be errors.
  Bytes original(size % 4096, 0x5a);
  auto a = binpatch::apply(original, *patch);
  auto b = binpatch::apply(original, *again);
  if (a.ok() != b.ok() || (a.ok() && *a != *b)) std::abort();
  return 0;
}
