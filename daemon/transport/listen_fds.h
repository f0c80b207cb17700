// Socket activation (systemd.socket(5), sd_listen_fds(3)): listening sockets passed by systemd in
// LISTEN_FDS are used instead of binding server.listen / server.listenmetrics. A socket named
// "metrics" (FileDescriptorName=metrics) serves /metrics and /health; every other one serves TLS.
#pragma once

#include "common/error.h"

#include <vector>

namespace p11relay::daemon {

struct PassedSockets {
  std::vector<int> tls;
  int metrics = -1;
  bool any() const { return !tls.empty() || metrics >= 0; }
};

// The sockets passed to this process (none when LISTEN_FDS is unset or meant for another process).
// Unsets LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES so nothing the daemon starts inherits them. An error if a
// passed descriptor is not a listening TCP socket.
Result<PassedSockets> passed_sockets();

}  // namespace p11relay::daemon
