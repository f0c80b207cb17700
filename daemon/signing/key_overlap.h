// Keys a PKCS#11 program cannot tell apart. The module shows one slot per token, and programs find a key by
// CKA_ID or label (`pkcs11-tool --id 01`, a pkcs11: URI, a console's "key ID hex" field): two keys of one
// token that one client sees and that share an id or a label make that choice silent. The daemon warns at
// start (docs/operator-guide.md, "Keys").
#pragma once

#include "daemon/config/config.h"
#include "daemon/signing/token.h"

#include <memory>
#include <string>
#include <vector>

namespace p11relay::daemon {

// One message per pair of `keys` (served keys of one token) with the same CKA_ID or label that a client of
// `config` may both use; each names the two keys, what they share and up to three such clients.
std::vector<std::string> ambiguous_keys(const Config& config,
                                        const std::vector<std::shared_ptr<const ServedKey>>& keys);

}  // namespace p11relay::daemon
