// Config reload on SIGHUP: clients, key roles/hide/aliases and per-key policy are applied to the
// running daemon; what needs a token re-open or a new listener is reported as needing a restart.
#pragma once

#include "daemon/config/config.h"

#include <string>
#include <vector>

namespace p11relay::daemon {

// Compares a freshly loaded config with the running one and returns what only a restart can apply
// ("server", "tokens.T", "keys.K (new key)", …). Adjusts `fresh` so that it describes what keeps
// being served: a new key is dropped (its token has not loaded it), a key whose token, label, id or
// certificate changed keeps the running values; everything else in `fresh` applies as it is.
std::vector<std::string> needs_restart(const Config& running, Config& fresh);

}  // namespace p11relay::daemon
