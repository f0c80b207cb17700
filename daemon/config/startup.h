// The checks p11relayd runs at start, after the config is loaded and before any token is opened or any
// socket is bound. `p11relayd --check-config FILE` runs this same function, so its "OK" means the daemon
// gets past start-up (a token that is absent or refuses its PIN aside: that is reported at run time).
#pragma once

#include "common/error.h"
#include "daemon/config/config.h"

namespace p11relay::daemon {

// The config file and the server key writable by their owner only (else: chmod go-w FILE), neither the
// server certificate nor its key is the pinfile, the TLS server context builds (certificate and key load
// and match), the client list, the audit file's directory. The pinfile's owner and mode are checked by
// load_config.
Status startup_checks(const Config& config);

// Raises the soft RLIMIT_NOFILE towards what server.maxconnections + server.maxhandshakes may hold (a shell's
// 1024 would make accept() fail long before either budget); warns when the hard limit is lower.
void raise_fd_limit(const ServerConfig& server);

}  // namespace p11relay::daemon
