// libFuzzer target: the key list the client keeps on disk (client/key_cache.h), as a new process of the
// CLI or the PKCS#11 module reads it: "<unix seconds>\n<GET /v1/keys answer>". Whatever the file holds,
// a list is used only when it is young and every key's version is the hash of what the list holds.
#include "client/key_cache.h"

#include <cstdint>
#include <cstdlib>
#include <string_view>

using namespace p11relay;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  const long long now = 1796465340;
  auto list = client::KeyListCache::parse(text, now, 3600);
  if (!list) return 0;
  for (const auto& k : list->keys)
    if (k.version != relay::key_version(k)) std::abort();
  // Never older than its max age, and never from the future.
  if (client::KeyListCache::parse(text, now, 0)) std::abort();
  return 0;
}
