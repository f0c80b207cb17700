#include "common/net.h"

#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace p11relay;

TEST_CASE("parse_url: scheme, host, IPv6 literal, default and explicit ports, path") {
  auto a = net::parse_url("https://signer.example:8443/relay/");
  REQUIRE(a.ok());
  CHECK(a->https);
  CHECK(a->host == "signer.example");
  CHECK(a->port == "8443");
  CHECK(a->path == "/relay/");
  CHECK_FALSE(a->is_ip);
  auto b = net::parse_url("http://[::1]/tsa");
  REQUIRE(b.ok());
  CHECK_FALSE(b->https);
  CHECK(b->host == "::1");
  CHECK(b->port == "80");
  CHECK(b->is_ip);
  auto c = net::parse_url("https://127.0.0.1");
  REQUIRE(c.ok());
  CHECK(c->port == "443");
  CHECK(c->path.empty());
  CHECK(c->is_ip);
}

TEST_CASE("parse_url: refuses what it cannot connect to, naming the URL") {
  for (const char* bad : {"ftp://host/", "host:80", "https://", "https://:443/", "http://[::1/", "http://[::1]x/",
                          "http://host:8o/", "http://host:123456/"}) {
    auto r = net::parse_url(bad);
    CHECK_MESSAGE(!r.ok(), bad);
    if (!r.ok()) CHECK(r.error().message.find(bad) != std::string::npos);
  }
}

TEST_CASE("tcp_connect: connects to a listener, names the cause when nothing listens") {
  const int l = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(l, 1) == 0);
  socklen_t len = sizeof a;
  ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
  const std::string port = std::to_string(ntohs(a.sin_port));
  const auto deadline = net::Clock::now() + std::chrono::seconds(5);
  auto fd = net::tcp_connect(*net::parse_url("http://127.0.0.1:" + port + "/"), deadline);
  REQUIRE(fd.ok());
  net::UniqueFd owned(*fd);
  CHECK(owned.get() >= 0);
  ::close(l);  // nothing listens on that port any more
  auto refused = net::tcp_connect(*net::parse_url("http://127.0.0.1:" + port + "/"), deadline);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code == ErrorCode::network);
  CHECK(refused.error().message.find("connect failed: Connection refused") != std::string::npos);
}
