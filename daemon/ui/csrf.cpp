#include "daemon/ui/csrf.h"

#include "common/bytes.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <cstdlib>

namespace p11relay::daemon::ui {
namespace {

const std::array<unsigned char, 32>& secret() {
  static const std::array<unsigned char, 32> s = [] {
    std::array<unsigned char, 32> b{};
    if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) std::abort();  // no CSRF secret: refuse to run
    return b;
  }();
  return s;
}

// "https://host[:port]" of what the browser addressed.
std::string own_origin(const http::Request& req) {
  const std::string* host = req.header("Host");
  return host ? "https://" + *host : std::string();
}

}  // namespace

std::string csrf_token(const std::string& fingerprint) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const auto& key = secret();
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(fingerprint.data()), fingerprint.size(), mac, &len);
  return to_hex(Bytes(mac, mac + len));
}

Status check_csrf(const http::Request& req, const std::string& fingerprint, const std::string& token) {
  std::string origin = own_origin(req);
  const std::string* o = req.header("Origin");
  const std::string* ref = req.header("Referer");
  if (origin.empty()) return Error(ErrorCode::forbidden, "refused: the request names no Host");
  if (o) {
    if (*o != origin) return Error(ErrorCode::forbidden, "refused: the form was sent from another site (Origin)");
  } else if (!ref || ref->rfind(origin + "/", 0) != 0) {
    return Error(ErrorCode::forbidden, "refused: the form was not sent from this site (no Origin, Referer)");
  }
  std::string want = csrf_token(fingerprint);
  if (token.size() != want.size() || CRYPTO_memcmp(token.data(), want.data(), want.size()) != 0)
    return Error(ErrorCode::forbidden, "refused: the form's token is missing or wrong; reload the page and try again");
  return {};
}

}  // namespace p11relay::daemon::ui
