#include "common/http.h"

#include <doctest/doctest.h>

using namespace p11relay::http;

namespace {
// Feeds everything, resuming after headers, until a message completes or fails.
ParseState feed_all(RequestParser& p, std::string_view data, size_t* used = nullptr) {
  size_t off = 0;
  while (off < data.size()) {
    off += p.feed(data.substr(off));
    if (p.state() == ParseState::headers_complete) p.resume();
    else if (p.state() != ParseState::need_more) break;
  }
  if (used) *used = off;
  return p.state();
}
}  // namespace

TEST_CASE("parses a GET with query and headers") {
  RequestParser p;
  CHECK(feed_all(p, "GET /keys/a%20b?x=1&y=2 HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\r\n") ==
        ParseState::message_complete);
  CHECK(p.request().method == "GET");
  CHECK(p.request().path == "/keys/a b");
  CHECK(p.request().query == "x=1&y=2");
  REQUIRE(p.request().header("x-a") != nullptr);
  CHECK(*p.request().header("x-a") == "b");
  CHECK(p.request().keep_alive);
}

TEST_CASE("chunked body is de-chunked") {
  RequestParser p;
  CHECK(feed_all(p, "POST /sign HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n") ==
        ParseState::message_complete);
  CHECK(p.request().body == "abcde");
  CHECK(p.chunked());
}

// Feeds `data` in pieces of `step` bytes (1 = byte by byte), resuming after headers.
ParseState feed_in_steps(RequestParser& p, std::string_view data, size_t step) {
  for (size_t off = 0; off < data.size() && p.state() == ParseState::need_more;) {
    std::string_view piece = data.substr(off, step);
    size_t used = 0;
    while (used < piece.size() && p.state() == ParseState::need_more) {
      used += p.feed(piece.substr(used));
      if (p.state() == ParseState::headers_complete) p.resume();
    }
    off += piece.size();
  }
  return p.state();
}

TEST_CASE("a chunk's data not followed by CR LF is 400 at once, whatever the read boundaries (RFC 9112 7.1)") {
  const std::string head = "POST /sign HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (size_t step : {size_t(1), size_t(2), size_t(3), size_t(5), size_t(4096)}) {
    CAPTURE(step);
    RequestParser good;
    CHECK(feed_in_steps(good, head + "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", step) == ParseState::message_complete);
    CHECK(good.request().body == "abcde");
    // The non-strict http_parser takes any two bytes as the CR LF: "de" here, then waits for chunk "f".
    for (const char* bad : {"3\r\nabcdef", "3\r\nabc\rX2\r\nde\r\n0\r\n\r\n", "3\r\nabcX\n0\r\n\r\n",
                            "3\r\nabc\r\n2\r\nde\n\n0\r\n\r\n"}) {
      CAPTURE(bad);
      RequestParser p;
      CHECK(feed_in_steps(p, head + bad, step) == ParseState::error);
      CHECK(p.error_status() == 400);
      CHECK(p.error_message().find("CR LF") != std::string::npos);
    }
  }
}

TEST_CASE("pipelined requests stay unconsumed until reset") {
  RequestParser p;
  std::string two = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
  size_t used = 0;
  CHECK(feed_all(p, two, &used) == ParseState::message_complete);
  CHECK(p.request().path == "/a");
  p.reset();
  CHECK(feed_all(p, std::string_view(two).substr(used)) == ParseState::message_complete);
  CHECK(p.request().path == "/b");
}

TEST_CASE("oversized headers give 431, body over the limit 413, garbage 400") {
  {
    RequestParser p(Limits{64, 1024});
    feed_all(p, "GET / HTTP/1.1\r\nX: " + std::string(200, 'a') + "\r\n\r\n");
    CHECK(p.state() == ParseState::error);
    CHECK(p.error_status() == 431);
  }
  {
    RequestParser p(Limits{1024, 4});
    feed_all(p, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n");
    CHECK(p.state() == ParseState::error);
    CHECK(p.error_status() == 413);
  }
  {
    RequestParser p;
    feed_all(p, "\x16\x03\x01garbage\r\n\r\n");
    CHECK(p.state() == ParseState::error);
    CHECK(p.error_status() == 400);
  }
}

TEST_CASE("NUL, CR or LF in a header value is 400 (fuzz_http finding)") {
  using namespace std::string_view_literals;
  for (auto raw : {"GET / HTTP/1.1\r\nHost:\0@\r\n\r\n"sv, "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n"sv,
                   "GET / HTTP/1.1\r\nX-A: a\rInjected: 1\r\n\r\n"sv}) {
    RequestParser p;
    feed_all(p, raw);
    CHECK(p.state() == ParseState::error);
    CHECK(p.error_status() == 400);
  }
}

TEST_CASE("body sink receives the body instead of the buffer") {
  RequestParser p;
  std::string got;
  std::string req = "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  size_t off = p.feed(req);
  REQUIRE(p.state() == ParseState::headers_complete);
  CHECK(p.content_length() == 5u);
  p.set_body_sink([&](std::string_view c) { got.append(c); return true; });
  p.resume();
  off += p.feed(std::string_view(req).substr(off));
  CHECK(p.state() == ParseState::message_complete);
  CHECK(got == "hello");
  CHECK(p.request().body.empty());
}

TEST_CASE("query parsing decodes form escapes") {
  auto q = parse_query("key=a%2Fb&description=Test+app&flag");
  REQUIRE(q.has_value());
  REQUIRE(q->size() == 3);
  CHECK((*q)[0].second == "a/b");
  CHECK((*q)[1].second == "Test app");
  CHECK((*q)[2].first == "flag");
  CHECK_FALSE(parse_query("a=%zz").has_value());
  CHECK_FALSE(parse_query("a=%4").has_value());
}

TEST_CASE("response parser handles content-length and chunked") {
  ResponseParser r;
  r.feed("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: x\r\n\r\nhi");
  REQUIRE(r.complete());
  CHECK(r.response().status == 200);
  CHECK(r.response().body == "hi");
  r.reset();
  r.feed("HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n");
  REQUIRE(r.complete());
  CHECK(r.response().status == 503);
  CHECK(r.response().body == "no");
}

TEST_CASE("request text that is not clean UTF-8 is refused before any handler sees it") {
  auto status_of = [](std::string_view req) {
    RequestParser p;
    feed_all(p, req);
    return p.state() == ParseState::error ? p.error_status() : 0;
  };
  CHECK(status_of("GET /v1/%FF HTTP/1.1\r\n\r\n") == 400);
  CHECK(status_of("POST /v1/keys/%C0%AF/sign HTTP/1.1\r\nContent-Length: 0\r\n\r\n") == 400);
  CHECK(status_of("POST /sign?key=a&filename=%FF.exe HTTP/1.1\r\nContent-Length: 0\r\n\r\n") == 400);
  CHECK(status_of("POST /sign?key=a%0AINFO+forged&filename=x HTTP/1.1\r\nContent-Length: 0\r\n\r\n") == 400);
  CHECK(status_of("POST /sign?key=a%00&filename=x HTTP/1.1\r\nContent-Length: 0\r\n\r\n") == 400);
  CHECK(status_of("GET /keys/a%7F HTTP/1.1\r\n\r\n") == 400);
  CHECK(status_of("GET /keys/%C3%A9?x=%E2%82%AC HTTP/1.1\r\n\r\n") == 0);  // é, € are fine
}

TEST_CASE("HTTP versions other than 1.0 and 1.1 are 505") {
  for (std::string_view req : {"GET /\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "GET / HTTP/2.0\r\n\r\n", "GET / HTTP/1.2\r\n\r\n"}) {
    RequestParser p;
    CHECK(feed_all(p, req) == ParseState::error);
    CHECK(p.error_status() == 505);
  }
  RequestParser p;
  CHECK(feed_all(p, "GET / HTTP/1.0\r\n\r\n") == ParseState::message_complete);
}
