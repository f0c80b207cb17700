// libFuzzer target: the script signature-block scan and the UTF-8/UTF-16 digest (common/authenticode/
// script.cpp) for each comment style. A crash or a sanitizer report is a bug; hostile input must be an
// error; a found block must start inside the file, and signing what was scanned must scan back the same.
#include "common/authenticode/script.h"

#include <cstdint>
#include <cstdlib>

using namespace p11relay;
using namespace p11relay::authenticode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static constexpr const char* kNames[] = {"a.ps1", "a.ps1xml", "a.mof"};
  const ScriptStyle style = *script_style(kNames[data[0] % 3]);
  std::span<const uint8_t> in(data + 1, size - 1);
  (void)verify_script(in, style);  // a block that is not base64 PKCS#7, or does not match: an error
  auto l = script_layout(in, style);
  if (!l.ok()) return 0;
  if (l->content_end > in.size()) abort();
  auto d = script_digest(in, *l, HashAlg::sha256);
  if (!d.ok() || l->content_end == 0) return 0;
  Bytes signed_file(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(l->content_end));
  Bytes block = script_signature_block(style, l->utf16, Bytes{0x30, 0x00});
  signed_file.insert(signed_file.end(), block.begin(), block.end());
  auto again = script_layout(signed_file, style);
  if (!again.ok() || !again->signed_) abort();
  auto d2 = script_digest(signed_file, *again, HashAlg::sha256);
  if (!d2.ok() || *d2 != *d) abort();
  return 0;
}
