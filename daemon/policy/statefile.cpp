#include "daemon/policy/statefile.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace p11relay::daemon {
namespace fs = std::filesystem;

namespace {
Status sys_error(const std::string& what) { return internal_error(what + ": " + std::strerror(errno)); }
}  // namespace

Status write_state_file(const std::string& path, std::string_view data, bool durable) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return sys_error("cannot create " + tmp);
  Status s;
  for (size_t off = 0; s.ok() && off < data.size();) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno != EINTR) s = sys_error("cannot write " + tmp);
    if (n > 0) off += static_cast<size_t>(n);
  }
  if (s.ok() && durable && ::fsync(fd) != 0) s = sys_error("fsync " + tmp);
  if (::close(fd) != 0 && s.ok()) s = sys_error("close " + tmp);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = sys_error("rename " + tmp);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  if (durable) {
    std::string dir = fs::path(path).parent_path().string();
    int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return sys_error("cannot open " + dir);
    int rc = ::fsync(dfd);
    ::close(dfd);
    if (rc != 0) return sys_error("fsync " + dir);
  }
  return {};
}

Result<std::string> read_state_file(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return internal_error("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status ensure_state_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return internal_error("cannot create state directory '" + dir + "': " + ec.message());
  ::chmod(dir.c_str(), 0700);
  if (::access(dir.c_str(), W_OK | X_OK) != 0) return sys_error("state directory '" + dir + "' is not writable");
  return {};
}

std::vector<std::string> list_state_files(const std::string& dir, std::string_view suffix) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (e.is_regular_file(ec) && name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back(e.path().string());
  }
  return out;
}

std::optional<std::int64_t> json_integer(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return std::nullopt;
  auto it = object.find(key);
  if (it == object.end()) return std::nullopt;
  if (it->is_number_unsigned())
    return it->get<std::uint64_t>() <= static_cast<std::uint64_t>(INT64_MAX)
               ? std::optional<std::int64_t>(static_cast<std::int64_t>(it->get<std::uint64_t>()))
               : std::nullopt;
  if (it->is_number_integer()) return it->get<std::int64_t>();
  return std::nullopt;
}

}  // namespace p11relay::daemon
