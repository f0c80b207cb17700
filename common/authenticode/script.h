// Authenticode for scripts (PowerShell and the other formats of the PowerShell SIP): the digest is of
// the script text as UTF-16LE up to its signature block, the SpcIndirectDataContent names the
// PowerShell SIP, and the signature is appended as a block of comment lines holding the base64 PKCS#7
// between "SIG # Begin signature block" and "SIG # End signature block", CRLF-terminated, in the
// script's own encoding (UTF-8, or UTF-16LE when the file starts with the FF FE byte-order mark). This
// is the layout osslsigncode and Windows' Set-AuthenticodeSignature write (docs/cli.md).
#pragma once

#include "common/authenticode/verify.h"
#include "common/bytes.h"
#include "common/digest.h"
#include "common/error.h"

#include <optional>
#include <span>
#include <string_view>

namespace p11relay::authenticode {

// How a script type writes a comment line: "# " (.ps1, .psm1, .psd1), "<!-- " ... " -->" (.ps1xml,
// .psc1, .cdxml), "/* " ... " */" (.mof).
struct ScriptStyle {
  std::string_view open, close;
};
// The style for a file name's extension (case-insensitive), or nullopt when it is not a script type.
std::optional<ScriptStyle> script_style(std::string_view filename);

struct ScriptLayout {
  bool utf16 = false;
  size_t content_end = 0;  // bytes covered by the digest: before an existing signature block, or all
  bool signed_ = false;    // an existing signature block was found
};
// Finds the signature block, if any. Refuses a file that is not text in its encoding (invalid UTF-8,
// an odd-length UTF-16 file, unpaired surrogates) or larger than 256 MiB.
Result<ScriptLayout> script_layout(std::span<const std::uint8_t> file, const ScriptStyle& style);
// The digest of file[0, content_end) as UTF-16LE.
Result<Bytes> script_digest(std::span<const std::uint8_t> file, const ScriptLayout& layout, HashAlg alg);
Bytes script_spc_indirect_data_content(HashAlg alg, std::span<const std::uint8_t> digest);
// The bytes that follow file[0, content_end): the signature block carrying `signed_data` (DER).
Bytes script_signature_block(const ScriptStyle& style, bool utf16, std::span<const std::uint8_t> signed_data);

// The SignedData in a signed script's block (empty when the script has no block).
Result<Bytes> script_signature(std::span<const std::uint8_t> file, const ScriptStyle& style);
// Checks a signed script: the signature block's PKCS#7 (verify_signer) and that the digest it carries is the
// script's. cert_table of the report holds the SignedData (for a chain check).
Result<VerifyReport> verify_script(std::span<const std::uint8_t> file, const ScriptStyle& style);

}  // namespace p11relay::authenticode
