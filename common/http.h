// HTTP/1.1 message types and an incremental parser over the packaged http_parser library.
// No I/O here: the parser is fed bytes and says what it has, so it can be fuzzed and unit-tested.
#pragma once

#include <http_parser.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace p11relay::http {

using Headers = std::vector<std::pair<std::string, std::string>>;

const std::string* find_header(const Headers& headers, std::string_view name);  // case-insensitive
bool iequals(std::string_view a, std::string_view b);

struct Request {
  std::string method;
  std::string target;  // as sent: path?query
  std::string path;    // percent-decoded path
  std::string query;   // raw query string (without '?')
  Headers headers;
  std::string body;    // empty when a body sink consumed it
  bool keep_alive = true;
  unsigned http_major = 1, http_minor = 1;

  const std::string* header(std::string_view name) const { return find_header(headers, name); }
};

struct Response {
  int status = 200;
  Headers headers;
  std::string body;
  bool keep_alive = true;

  const std::string* header(std::string_view name) const { return find_header(headers, name); }
  void set(std::string name, std::string value);
};

const char* reason_phrase(int status);
// Serialises status line, headers, Content-Length (unless chunked) and body.
std::string serialize(const Response& r);

// Percent-decoding (path and query components). '+' becomes ' ' only when form == true.
std::optional<std::string> percent_decode(std::string_view s, bool form);
std::string percent_encode(std::string_view s);
// Parses an application/x-www-form-urlencoded query; nullopt on bad escapes.
std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view query);

struct Limits {
  size_t max_header_bytes = 16 * 1024;
  uint64_t max_body_bytes = 64 * 1024 * 1024;
};

enum class ParseState {
  need_more,         // feed more bytes
  headers_complete,  // request line + headers known; caller may set a body sink, then resume()
  message_complete,  // a whole message is here; caller handles it, then reset() for the next one
  error,             // see error_status()/error_message(); the connection must be closed
};

// Incremental request parser (server side). Stops (pauses) after headers and after each message so
// pipelined bytes stay unconsumed until the caller is ready for them.
class RequestParser {
 public:
  using BodySink = std::function<bool(std::string_view chunk)>;  // false = abort with error

  explicit RequestParser(Limits limits = {});
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  // Consumes a prefix of data; returns the number of bytes used. Check state() afterwards.
  size_t feed(std::string_view data);
  ParseState state() const { return state_; }
  void resume();  // after headers_complete
  void reset();   // after message_complete
  void set_body_sink(BodySink sink) { sink_ = std::move(sink); }
  void set_max_body(uint64_t max) { limits_.max_body_bytes = max; }

  Request& request() { return req_; }
  uint64_t body_bytes() const { return body_bytes_; }
  // Content-Length, when the request declared one.
  std::optional<uint64_t> content_length() const { return content_length_; }
  bool chunked() const;
  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }
  // Message ended by EOF (nothing to do for requests; kept for symmetry).
  bool expects_body() const;

  void fail(int status, std::string message);

 private:
  static int on_message_begin(http_parser*);
  static int on_url(http_parser*, const char*, size_t);
  static int on_header_field(http_parser*, const char*, size_t);
  static int on_header_value(http_parser*, const char*, size_t);
  static int on_headers_complete(http_parser*);
  static int on_body(http_parser*, const char*, size_t);
  static int on_chunk_complete(http_parser*);
  static int on_message_complete(http_parser*);

  http_parser parser_;
  http_parser_settings settings_;
  Limits limits_;
  // The CR LF after a chunk's data, which the non-strict http_parser consumes without looking at it
  // (RFC 9112 §7.1): where it starts in the buffer being fed, and what of it an earlier feed() held.
  bool chunk_crlf_pending_ = false;
  const char* chunk_crlf_at_ = nullptr;
  std::string chunk_crlf_seen_;
  ParseState state_ = ParseState::need_more;
  Request req_;
  BodySink sink_;
  size_t header_bytes_ = 0;
  bool headers_done_ = false;
  uint64_t body_bytes_ = 0;
  std::optional<uint64_t> content_length_;
  bool in_value_ = false;
  int error_status_ = 0;
  std::string error_message_;
};

// Incremental response parser (client side). Whole bodies are buffered (relay API answers are small).
class ResponseParser {
 public:
  explicit ResponseParser(uint64_t max_body = 16 * 1024 * 1024);
  size_t feed(std::string_view data);
  void finish_eof();  // connection closed: completes a body delimited by EOF
  bool complete() const { return complete_; }
  bool failed() const { return failed_; }
  const std::string& error_message() const { return error_; }
  Response& response() { return resp_; }
  void reset(bool head_request = false);

 private:
  static int on_header_field(http_parser*, const char*, size_t);
  static int on_header_value(http_parser*, const char*, size_t);
  static int on_headers_complete(http_parser*);
  static int on_body(http_parser*, const char*, size_t);
  static int on_message_complete(http_parser*);

  http_parser parser_;
  http_parser_settings settings_;
  uint64_t max_body_;
  Response resp_;
  bool in_value_ = false;
  bool complete_ = false;
  bool failed_ = false;
  bool head_ = false;
  size_t header_bytes_ = 0;
  std::string error_;
};

}  // namespace p11relay::http
