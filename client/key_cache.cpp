#include "client/key_cache.h"

#include "common/bytes.h"
#include "common/digest.h"
#include "common/unique_fd.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>

namespace p11relay::client {
namespace {

constexpr off_t kMaxFileBytes = 8 << 20;  // a key list with hundreds of certificates fits

// $XDG_CACHE_HOME/p11relay, else $HOME/.cache/p11relay, else the password entry's home; empty if none.
std::string cache_dir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && x[0] == '/') return std::string(x) + "/p11relay";
  const char* home = std::getenv("HOME");
  if (!home || home[0] != '/') {
    const passwd* pw = ::getpwuid(::geteuid());
    home = pw ? pw->pw_dir : nullptr;
  }
  if (!home || home[0] != '/') return {};
  return std::string(home) + "/.cache/p11relay";
}

std::optional<std::string> read_small(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Ours and not writable by anyone else: a file or directory another user can change is not used.
bool private_to_us(const struct stat& st) {
  return st.st_uid == ::geteuid() && (st.st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

bool ensure_private_dir(const std::string& dir) {
  std::string parent = dir.substr(0, dir.rfind('/'));
  ::mkdir(parent.c_str(), 0700);  // ~/.cache, when it does not exist yet
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return false;
  struct stat st{};
  return ::lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && private_to_us(st);
}

}  // namespace

KeyListCache::KeyListCache(const Config& config) : max_age_(config.key_list_cache_seconds) {
  if (max_age_ <= 0) return;
  dir_ = cache_dir();
  // The client certificate is part of the name: another identity may see other keys.
  auto cert = read_small(config.certfile);
  if (dir_.empty() || !cert) return;
  std::string id;
  for (const auto& u : config.urls) id += u + "\n";
  id += config.directory_url + "\n" + *cert;
  Bytes h = hash(HashAlg::sha256, {reinterpret_cast<const uint8_t*>(id.data()), id.size()});
  path_ = dir_ + "/keys-" + to_hex(std::span<const uint8_t>(h).first(16)) + ".json";
}

std::optional<relay::KeyList> KeyListCache::load() const {
  if (!on()) return std::nullopt;
  UniqueFd fd(::open(path_.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st{};
  if (fd.get() < 0 || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || !private_to_us(st) ||
      st.st_size > kMaxFileBytes)
    return std::nullopt;
  std::string text(static_cast<size_t>(st.st_size), '\0');
  if (::read(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) return std::nullopt;
  return parse(text, static_cast<long long>(std::time(nullptr)), max_age_);
}

std::optional<relay::KeyList> KeyListCache::parse(std::string_view text, long long now, int max_age) {
  // "<unix seconds of the answer>\n<the answer>"
  size_t nl = text.find('\n');
  if (nl == std::string_view::npos || nl == 0 || nl > 18) return std::nullopt;  // no overflow below
  long long fetched = 0;
  for (char c : text.substr(0, nl)) {
    if (c < '0' || c > '9') return std::nullopt;
    fetched = fetched * 10 + (c - '0');
  }
  if (fetched > now || now - fetched >= max_age) return std::nullopt;
  auto list = relay::decode_key_list_full(text.substr(nl + 1));
  if (!list.ok()) return std::nullopt;
  // Only a list from a daemon that checks key_version is used, and only if it is what that daemon said.
  for (const auto& k : list->keys)
    if (k.version.empty() || k.version != relay::key_version(k)) return std::nullopt;
  return std::move(*list);
}

void KeyListCache::store(std::string_view body) const {
  if (!on() || !ensure_private_dir(dir_)) return;
  static std::atomic<unsigned> serial{0};  // two threads of one process write under two names
  std::string tmp = path_ + ".tmp" + std::to_string(::getpid()) + "." + std::to_string(serial++);
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (fd.get() < 0) return;
  std::string text = std::to_string(static_cast<long long>(std::time(nullptr))) + "\n";
  text.append(body);
  bool ok = ::write(fd.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size());
  if (!ok || ::rename(tmp.c_str(), path_.c_str()) != 0) ::unlink(tmp.c_str());
}

void KeyListCache::drop() const {
  if (on()) ::unlink(path_.c_str());
}

}  // namespace p11relay::client
