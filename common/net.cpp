#include "common/net.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <memory>

namespace p11relay::net {

namespace {

// host[:port] or [v6][:port] into u.host and u.port (empty when absent); what is wrong, or "".
std::string split_authority(const std::string& authority, Url& u) {
  if (authority.empty()) return "has no host";
  if (authority[0] != '[') {
    const size_t colon = authority.rfind(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) u.port = authority.substr(colon + 1);
    return u.host.empty() ? "has no host" : "";
  }
  const size_t close = authority.find(']');
  if (close == std::string::npos || close == 1) return "has a bad IPv6 address";
  u.host = authority.substr(1, close - 1);
  if (close + 1 == authority.size()) return "";
  if (authority[close + 1] != ':') return "has a bad IPv6 address";
  u.port = authority.substr(close + 2);
  return "";
}

}  // namespace

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 24LL * 3600 * 1000));
}

Result<Url> parse_url(const std::string& text) {
  Url u;
  u.text = text;
  std::string rest;
  if (text.rfind("https://", 0) == 0) {
    u.https = true;
    rest = text.substr(8);
  } else if (text.rfind("http://", 0) == 0) {
    rest = text.substr(7);
  } else {
    return bad_request("URL '" + text + "' is neither http:// nor https://");
  }
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) u.path = rest.substr(slash);
  if (const std::string bad = split_authority(rest.substr(0, slash), u); !bad.empty())
    return bad_request("URL '" + text + "' " + bad);
  if (u.port.empty()) u.port = u.https ? "443" : "80";
  if (u.port.find_first_not_of("0123456789") != std::string::npos || u.port.size() > 5)
    return bad_request("URL '" + text + "' has a bad port");
  unsigned char buf[sizeof(struct in6_addr)];
  u.is_ip = inet_pton(AF_INET, u.host.c_str(), buf) == 1 || inet_pton(AF_INET6, u.host.c_str(), buf) == 1;
  return u;
}

Result<bool> wait_fd(int fd, bool for_write, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, static_cast<short>(for_write ? POLLOUT : POLLIN), 0};
    const int ms = remaining_ms(deadline);
    if (ms == 0) return false;
    const int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return network_error(std::string("poll: ") + std::strerror(errno));
  }
}

namespace {

using AddrList = std::unique_ptr<addrinfo, decltype(&freeaddrinfo)>;

Result<AddrList> resolve(const Url& url) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int gai = ::getaddrinfo(url.host.c_str(), url.port.c_str(), &hints, &res);
  if (gai != 0) return network_error("cannot resolve '" + url.host + "': " + gai_strerror(gai));
  return AddrList(res, freeaddrinfo);
}

// A non-blocking socket whose connect(2) to `ai` has begun (or is done); an empty one with `why` set if not.
UniqueFd begin_connect(const addrinfo* ai, std::string& why) {
  UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
  if (fd.get() < 0 || (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS)) {
    why = std::strerror(errno);
    return UniqueFd();
  }
  return fd;
}

}  // namespace

Status connect_finish(int fd, Clock::time_point deadline) {
  ASSIGN_OR_RETURN(bool ready, wait_fd(fd, true, deadline));
  if (!ready) return network_error("timeout while connecting");
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return network_error(std::strerror(err));
  return {};
}

Result<int> connect_start(const Url& url) {
  ASSIGN_OR_RETURN(AddrList res, resolve(url));
  std::string why = "no address";
  UniqueFd fd = res ? begin_connect(res.get(), why) : UniqueFd();
  if (fd.get() < 0) return network_error("connect failed: " + why);
  return fd.release();
}

Result<int> tcp_connect(const Url& url, Clock::time_point deadline) {
  ASSIGN_OR_RETURN(AddrList res, resolve(url));
  std::string last = "no address";
  for (auto* ai = res.get(); ai; ai = ai->ai_next) {
    UniqueFd fd = begin_connect(ai, last);
    if (fd.get() < 0) continue;
    Status done = connect_finish(fd.get(), deadline);
    if (done.ok()) return fd.release();
    last = done.error().message;
  }
  return network_error("connect failed: " + last);
}

}  // namespace p11relay::net
