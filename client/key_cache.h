// The key list kept on disk between processes (remote.keylistcache, docs/client-guide.md): a new process
// of the CLI or the PKCS#11 module starts from it instead of asking GET /v1/keys, which saves one round
// trip per cold start. It is never trusted for a signature: every sign request carries the key_version of
// the description it was built for, and the daemon refuses a stale one (412 key-changed).
//
// One file per daemon set and client identity, $XDG_CACHE_HOME/p11relay/keys-<hash>.json (~/.cache/...),
// mode 0600 in a 0700 directory; a file or directory owned by someone else, or writable by others, is
// ignored. Written whole under a temporary name and renamed, so concurrent processes read whole lists.
#pragma once

#include "client/client.h"

#include <optional>
#include <string>
#include <string_view>

namespace p11relay::client {

class KeyListCache {
 public:
  // Off (every call does nothing) when config.key_list_cache_seconds is 0, or when no cache directory
  // can be named or the client certificate cannot be read.
  explicit KeyListCache(const Config& config);
  // The kept answer of GET /v1/keys when it is younger than remote.keylistcache; nullopt otherwise.
  std::optional<relay::KeyList> load() const;
  void store(std::string_view key_list_body) const;
  // The file's text as load() reads it: "<unix seconds>\n<GET /v1/keys answer>", used when younger than
  // `max_age` seconds at `now` and every key's version adds up (tests/fuzz/fuzz_kept_keys.cpp).
  static std::optional<relay::KeyList> parse(std::string_view text, long long now, int max_age);
  void drop() const;
  bool on() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
  int max_age_ = 0;
};

}  // namespace p11relay::client
