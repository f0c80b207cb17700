// Plain TCP with deadlines, shared by the two HTTP clients of this project: the client library's
// (mutual TLS to p11relayd, client/client.cpp) and the timestamp client's (plain HTTP to a TSA,
// common/http_post.h). URL parsing, waiting on a non-blocking socket, and connecting.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"

#include <chrono>
#include <string>

namespace p11relay::net {

using p11relay::UniqueFd;

using Clock = std::chrono::steady_clock;

struct Url {
  std::string text;  // as given
  bool https = false;
  std::string host;  // without the brackets of an IPv6 literal
  std::string port;  // digits; 443 or 80 when the URL has none
  std::string path;  // as written from the first '/', empty when there is none
  bool is_ip = false;  // host is an IPv4 or IPv6 literal (no SNI, no name check)
};

// http:// or https:// URLs: host, [IPv6], optional port, path. Errors (bad_request) name the URL.
Result<Url> parse_url(const std::string& text);

// Milliseconds left until `deadline`: 0 when it has passed, at most a day.
int remaining_ms(Clock::time_point deadline);

// Waits until `fd` can be read (or written); false when `deadline` passed first.
Result<bool> wait_fd(int fd, bool for_write, Clock::time_point deadline);

// A non-blocking TCP connection to the first address of url.host:url.port that accepts before
// `deadline`; the caller owns the descriptor. Errors (network) say which step failed and why.
Result<int> tcp_connect(const Url& url, Clock::time_point deadline);

// tcp_connect in two steps, so that the kernel makes the connection while the caller does other work:
// connect_start begins a non-blocking connect(2) to the first address and returns at once;
// connect_finish waits for that descriptor until `deadline` (the error names the cause).
Result<int> connect_start(const Url& url);
Status connect_finish(int fd, Clock::time_point deadline);

}  // namespace p11relay::net
