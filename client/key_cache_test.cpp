// The key list kept on disk (client/key_cache.h): where it lives, how long it is used, and which files
// are refused.
#include "client/key_cache.h"

#include "common/relay_api.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace p11relay;
using namespace p11relay::client;
namespace fs = std::filesystem;

namespace {

struct CacheHome {
  fs::path dir;
  Config config;
  std::string old_xdg;
  CacheHome() {
    char tmpl[] = "/tmp/p11relay-key-cache-XXXXXX";
    dir = mkdtemp(tmpl);
    if (const char* x = std::getenv("XDG_CACHE_HOME")) old_xdg = x;
    ::setenv("XDG_CACHE_HOME", (dir / "cache").c_str(), 1);
    std::ofstream(dir / "client.pem") << "certificate one";
    config.urls = {"https://signer.example:6300/"};
    config.certfile = (dir / "client.pem").string();
  }
  ~CacheHome() {
    if (old_xdg.empty()) ::unsetenv("XDG_CACHE_HOME");
    else ::setenv("XDG_CACHE_HOME", old_xdg.c_str(), 1);
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

std::string one_key_list(const std::string& name) {
  relay::KeyDescription k;
  k.name = name;
  k.spki = Bytes{1, 2, 3};
  return relay::encode_key_list({k});
}

void set_fetched(const std::string& path, long long seconds_ago) {
  std::ifstream in(path);
  std::string rest((std::istreambuf_iterator<char>(in)), {});
  rest = rest.substr(rest.find('\n') + 1);
  std::ofstream(path, std::ios::trunc) << (static_cast<long long>(std::time(nullptr)) - seconds_ago) << "\n" << rest;
}

}  // namespace

TEST_CASE("a stored key list is loaded while young, in a private directory, and dropped on request") {
  CacheHome h;
  KeyListCache c(h.config);
  REQUIRE(c.on());
  CHECK(c.path().rfind((h.dir / "cache" / "p11relay" / "keys-").string(), 0) == 0);
  CHECK_FALSE(c.load());
  c.store(one_key_list("ev"));
  auto got = c.load();
  REQUIRE(got);
  REQUIRE(got->keys.size() == 1);
  CHECK(got->keys[0].name == "ev");
  struct stat st{};
  REQUIRE(::stat(c.path().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat((h.dir / "cache" / "p11relay").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  set_fetched(c.path(), h.config.key_list_cache_seconds + 1);  // older than remote.keylistcache
  CHECK_FALSE(c.load());
  c.store(one_key_list("ev"));
  c.drop();
  CHECK_FALSE(c.load());
}

TEST_CASE("another identity or daemon has its own file; 0 turns the cache off") {
  CacheHome h;
  KeyListCache a(h.config);
  a.store(one_key_list("a"));
  std::ofstream(h.dir / "client.pem", std::ios::trunc) << "certificate two";  // another client identity
  KeyListCache b(h.config);
  CHECK(b.path() != a.path());
  CHECK_FALSE(b.load());
  Config other = h.config;
  other.urls = {"https://other.example:6300/"};
  CHECK(KeyListCache(other).path() != b.path());
  Config off = h.config;
  off.key_list_cache_seconds = 0;
  KeyListCache none(off);
  CHECK_FALSE(none.on());
  none.store(one_key_list("x"));
  CHECK_FALSE(none.load());
}

TEST_CASE("a kept list others could have written, a symlink or a malformed file is not used") {
  CacheHome h;
  KeyListCache c(h.config);
  c.store(one_key_list("ev"));
  REQUIRE(c.load());
  ::chmod(c.path().c_str(), 0620);  // group-writable
  CHECK_FALSE(c.load());
  ::chmod(c.path().c_str(), 0600);
  REQUIRE(c.load());
  fs::rename(c.path(), h.dir / "real.json");
  fs::create_symlink(h.dir / "real.json", c.path());
  CHECK_FALSE(c.load());
  fs::remove(c.path());
  std::ofstream(c.path()) << std::time(nullptr) << "\n{not json";
  ::chmod(c.path().c_str(), 0600);
  CHECK_FALSE(c.load());
  std::ofstream(c.path(), std::ios::trunc) << "yesterday\n" << one_key_list("ev");
  CHECK_FALSE(c.load());
  // A list from a daemon that sends no key version (it would not check one), or one that does not add up.
  std::string listed = one_key_list("ev");
  std::string unversioned = listed, tampered = listed;
  size_t at = listed.find("\"version\":\"");
  REQUIRE(at != std::string::npos);
  unversioned.replace(at, 9, "\"vers1on\"");
  tampered[at + 11] = tampered[at + 11] == '0' ? '1' : '0';
  for (const std::string& body : {unversioned, tampered}) {
    std::ofstream(c.path(), std::ios::trunc) << std::time(nullptr) << "\n" << body;
    CHECK_FALSE(c.load());
  }
  std::ofstream(c.path(), std::ios::trunc) << std::time(nullptr) << "\n" << listed;
  CHECK(c.load());
  ::chmod((h.dir / "cache" / "p11relay").c_str(), 0777);  // a directory others can write: not stored into
  fs::remove(c.path());
  c.store(one_key_list("ev"));
  CHECK_FALSE(fs::exists(c.path()));
}
