#include "daemon/transport/listen_fds.h"

#include <sys/socket.h>
#ifdef P11RELAY_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include <cstdlib>
#include <cstring>
#include <string>

namespace p11relay::daemon {

namespace {

Status check_listening_tcp(int fd) {
#ifdef P11RELAY_HAVE_SYSTEMD
  if (sd_is_socket(fd, AF_INET, SOCK_STREAM, 1) > 0 || sd_is_socket(fd, AF_INET6, SOCK_STREAM, 1) > 0) return {};
#endif
  return config_error("socket activation: file descriptor " + std::to_string(fd) +
                      " is not a listening TCP socket (the .socket unit needs ListenStream=)");
}

}  // namespace

Result<PassedSockets> passed_sockets() {
  PassedSockets out;
#ifdef P11RELAY_HAVE_SYSTEMD
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  if (n < 0) return config_error("socket activation: " + std::string(strerror(-n)));
  Status st;
  for (int i = 0; i < n; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    if (st.ok()) st = check_listening_tcp(fd);
    if (names && names[i] && std::string(names[i]) == "metrics" && out.metrics < 0) out.metrics = fd;
    else out.tls.push_back(fd);
    if (names) free(names[i]);
  }
  free(names);
  if (!st.ok()) return st.error();
#else
  if (std::getenv("LISTEN_FDS"))
    return config_error("socket activation: this p11relayd was built without libsystemd");
#endif
  return out;
}

}  // namespace p11relay::daemon
