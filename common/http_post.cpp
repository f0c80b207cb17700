#include "common/http_post.h"

#include "common/http.h"
#include "common/net.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace p11relay {

namespace {

Status send_all(int fd, std::span<const uint8_t> out, net::Clock::time_point deadline, const std::string& peer) {
  size_t sent = 0;
  while (sent < out.size()) {
    ASSIGN_OR_RETURN(bool ready, net::wait_fd(fd, true, deadline));
    if (!ready) return Error(ErrorCode::timeout, peer + " timed out");
    const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return network_error("send to " + peer + ": " + std::strerror(errno));
    }
    sent += static_cast<size_t>(n);
  }
  return {};
}

Result<http::Response> receive(int fd, net::Clock::time_point deadline, const std::string& peer) {
  constexpr size_t kMaxReply = 4 * 1024 * 1024;
  http::ResponseParser parser(kMaxReply);
  char buf[16384];
  while (!parser.complete()) {
    ASSIGN_OR_RETURN(bool ready, net::wait_fd(fd, false, deadline));
    if (!ready) return Error(ErrorCode::timeout, peer + " timed out");
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return network_error("receive from " + peer + ": " + std::strerror(errno));
    }
    if (n == 0) {
      parser.finish_eof();
      if (!parser.complete()) return network_error("truncated reply from " + peer);
      break;
    }
    parser.feed(std::string_view(buf, static_cast<size_t>(n)));
    if (parser.failed()) return network_error("malformed HTTP reply from " + peer + ": " + parser.error_message());
  }
  return parser.response();
}

}  // namespace

Result<HttpReply> http_post(const std::string& url, const std::string& content_type, std::span<const uint8_t> body,
                            int timeout_seconds, const std::string& peer) {
  ASSIGN_OR_RETURN(net::Url u, net::parse_url(url));
  if (u.https) return bad_request(peer + " URL must be http:// (got '" + url + "')");
  const auto deadline = net::Clock::now() + std::chrono::seconds(timeout_seconds);
  auto fd = net::tcp_connect(u, deadline);
  if (!fd.ok()) return Error(fd.error().code, "cannot connect to " + u.host + ":" + u.port + " (" + fd.error().message + ")");
  net::UniqueFd sock(*fd);
  std::string head = "POST ";
  head += u.path.empty() ? "/" : u.path;
  head += " HTTP/1.1\r\nHost: ";
  head += u.host.find(':') == std::string::npos ? u.host : "[" + u.host + "]";
  if (u.port != "80") head += ":" + u.port;
  head += "\r\nUser-Agent: p11relay\r\nContent-Type: ";
  head += content_type;
  head += "\r\nContent-Length: " + std::to_string(body.size());
  head += "\r\nConnection: close\r\n\r\n";
  Bytes out(head.begin(), head.end());
  out.insert(out.end(), body.begin(), body.end());
  RETURN_IF_ERROR(send_all(sock.get(), out, deadline, peer));
  ASSIGN_OR_RETURN(http::Response r, receive(sock.get(), deadline, peer));
  HttpReply reply;
  reply.status = r.status;
  if (const std::string* ct = r.header("Content-Type")) reply.content_type = *ct;
  reply.body.assign(r.body.begin(), r.body.end());
  return reply;
}

}  // namespace p11relay
