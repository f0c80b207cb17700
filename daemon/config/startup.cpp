#include "daemon/config/startup.h"

#include "daemon/policy/auth.h"
#include "daemon/transport/server.h"

#include <spdlog/spdlog.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

namespace p11relay::daemon {
namespace {

namespace fs = std::filesystem;

// Whoever can write the config names the PKCS#11 module and the clients; whoever can write the server
// key can swap the daemon's TLS identity. Both must be writable by their owner only.
Status not_group_or_world_writable(const std::string& path, const std::string& what) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return config_error(what + " '" + path + "' cannot be read");
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) == 0) return {};
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return config_error(what + " '" + path + "' is writable by group or others (mode " + mode + "): chmod go-w " + path);
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return !a.empty() && !b.empty() && fs::equivalent(a, b, ec) && !ec;
}

Status server_tls(const Config& config) {
  const ServerConfig& s = config.server;
  RETURN_IF_ERROR(not_group_or_world_writable(s.keyfile, "server.keyfile"));
  for (const auto& [what, file] : {std::pair{"server.certfile", s.certfile}, std::pair{"server.keyfile", s.keyfile}})
    if (same_file(file, config.pinfile))
      return config_error(std::string(what) + " '" + file + "' is the pinfile: name the server's PEM " +
                          (what == std::string("server.certfile") ? "certificate" : "private key") + " there");
  auto tls = make_server_tls(s);  // the certificate and the key load, and they match
  if (!tls.ok()) return tls.error();
  return {};
}

// The directory must exist and be writable (the daemon creates the file, mode 0600, at start).
Status audit_file(const std::string& auditfile) {
  if (auditfile.empty()) return {};
  std::error_code ec;
  fs::path dir = fs::absolute(fs::path(auditfile), ec).parent_path();
  if (!fs::is_directory(dir, ec))
    return config_error("auditfile '" + auditfile + "': directory '" + dir.string() +
                        "' does not exist (create it, owned by the daemon's user)");
  if (fs::exists(auditfile, ec)) {
    if (!fs::is_regular_file(auditfile, ec)) return config_error("auditfile '" + auditfile + "' is not a file");
    if (access(auditfile.c_str(), W_OK) != 0)
      return config_error("auditfile '" + auditfile + "' is not writable by the daemon's user");
  } else if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return config_error("auditfile '" + auditfile + "': directory '" + dir.string() +
                        "' is not writable by the daemon's user");
  }
  return {};
}

}  // namespace

Status startup_checks(const Config& config) {
  RETURN_IF_ERROR(not_group_or_world_writable(config.path, "config file"));
  if (!config.server.listen.empty()) RETURN_IF_ERROR(server_tls(config));
  auto snapshot = Authenticator::snapshot(config);
  if (!snapshot.ok()) return snapshot.error();
  return audit_file(config.auditfile);
}

void raise_fd_limit(const ServerConfig& server) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  // the two budgets, plus the token, the audit log, listeners and slack
  rlim_t want = static_cast<rlim_t>(server.maxconnections) + static_cast<rlim_t>(server.maxhandshakes) + 256;
  if (rl.rlim_cur >= want) return;
  rlim_t cur = std::min(want, rl.rlim_max);
  rlimit raised{cur, rl.rlim_max};
  if (setrlimit(RLIMIT_NOFILE, &raised) != 0) cur = rl.rlim_cur;
  if (cur < want)
    spdlog::warn("open file limit {} is below server.maxconnections + server.maxhandshakes + 256 = {}: raise it "
                 "(LimitNOFILE= in the unit, ulimit -n) or lower those budgets",
                 cur, want);
}

}  // namespace p11relay::daemon
