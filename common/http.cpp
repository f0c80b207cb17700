#include "common/http.h"

#include "common/bytes.h"
#include "common/text.h"

#include <algorithm>
#include <cctype>
#include <cstring>

namespace p11relay::http {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

const std::string* find_header(const Headers& headers, std::string_view name) {
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) return &v;
  return nullptr;
}

void Response::set(std::string name, std::string value) {
  for (auto& [k, v] : headers)
    if (iequals(k, name)) {
      v = std::move(value);
      return;
    }
  headers.emplace_back(std::move(name), std::move(value));
}

const char* reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

std::string serialize(const Response& r) {
  std::string out;
  out.reserve(256 + r.body.size());
  out += "HTTP/1.1 ";
  out += std::to_string(r.status);
  out += ' ';
  out += reason_phrase(r.status);
  out += "\r\n";
  for (const auto& [k, v] : r.headers) {
    out += k;
    out += ": ";
    out += v;
    out += "\r\n";
  }
  out += "Content-Length: ";
  out += std::to_string(r.body.size());
  out += "\r\n";
  if (!r.keep_alive) out += "Connection: close\r\n";
  out += "\r\n";
  out += r.body;
  return out;
}

std::optional<std::string> percent_decode(std::string_view s, bool form) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int h = hex_value(s[i + 1]), l = hex_value(s[i + 2]);
      if (h < 0 || l < 0) return std::nullopt;
      out.push_back(static_cast<char>(h << 4 | l));
      i += 2;
    } else if (c == '+' && form) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string percent_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (part.empty()) continue;
    size_t eq = part.find('=');
    auto k = percent_decode(part.substr(0, eq), true);
    auto v = percent_decode(eq == std::string_view::npos ? std::string_view() : part.substr(eq + 1), true);
    if (!k || !v) return std::nullopt;
    out.emplace_back(std::move(*k), std::move(*v));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// RequestParser

RequestParser::RequestParser(Limits limits) : limits_(limits) {
  http_parser_settings_init(&settings_);
  settings_.on_message_begin = on_message_begin;
  settings_.on_url = on_url;
  settings_.on_header_field = on_header_field;
  settings_.on_header_value = on_header_value;
  settings_.on_headers_complete = on_headers_complete;
  settings_.on_body = on_body;
  settings_.on_chunk_complete = on_chunk_complete;
  settings_.on_message_complete = on_message_complete;
  reset();
}

void RequestParser::reset() {
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
  state_ = ParseState::need_more;
  req_ = Request{};
  sink_ = nullptr;
  header_bytes_ = 0;
  headers_done_ = false;
  chunk_crlf_pending_ = false;
  chunk_crlf_at_ = nullptr;
  chunk_crlf_seen_.clear();
  body_bytes_ = 0;
  content_length_.reset();
  in_value_ = false;
  error_status_ = 0;
  error_message_.clear();
}

void RequestParser::fail(int status, std::string message) {
  state_ = ParseState::error;
  error_status_ = status;
  error_message_ = std::move(message);
}

bool RequestParser::chunked() const { return (parser_.flags & F_CHUNKED) != 0; }
bool RequestParser::expects_body() const { return chunked() || (content_length_ && *content_length_ > 0); }

void RequestParser::resume() {
  if (state_ == ParseState::headers_complete) {
    state_ = ParseState::need_more;
    http_parser_pause(&parser_, 0);
  }
}

size_t RequestParser::feed(std::string_view data) {
  if (state_ != ParseState::need_more || data.empty()) return 0;
  // Count header bytes ourselves: http_parser's own limit is compiled in (80 KiB).
  bool in_headers = !headers_done_;
  if (chunk_crlf_pending_ && !chunk_crlf_at_) chunk_crlf_at_ = data.data();
  size_t n = http_parser_execute(&parser_, &settings_, data.data(), data.size());
  if (chunk_crlf_pending_ && chunk_crlf_at_) {  // the CR LF continues in the next feed()
    size_t held = std::min<size_t>(2 - chunk_crlf_seen_.size(), data.data() + n - chunk_crlf_at_);
    chunk_crlf_seen_.append(chunk_crlf_at_, held);
    chunk_crlf_at_ = nullptr;
  }
  if (in_headers) {
    header_bytes_ += n;
    if (header_bytes_ > limits_.max_header_bytes && state_ != ParseState::error) {
      fail(431, "request headers too large");
      return n;
    }
  }
  if (state_ == ParseState::error) return n;
  enum http_errno err = HTTP_PARSER_ERRNO(&parser_);
  if (err == HPE_PAUSED) return n;
  if (err != HPE_OK) {
    if (err == HPE_CB_body && error_status_ != 0) return n;
    fail(err == HPE_INVALID_VERSION ? 505 : 400, std::string("malformed HTTP request: ") + http_errno_description(err));
  }
  return n;
}

int RequestParser::on_message_begin(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->req_ = Request{};
  return 0;
}

int RequestParser::on_url(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  if (self->req_.target.size() + len > self->limits_.max_header_bytes) {
    self->fail(414, "request target too long");
    return 1;
  }
  self->req_.target.append(at, len);
  return 0;
}

int RequestParser::on_header_field(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  if (self->in_value_ || self->req_.headers.empty()) {
    if (self->req_.headers.size() >= 100) {
      self->fail(431, "too many request headers");
      return 1;
    }
    self->req_.headers.emplace_back();
    self->in_value_ = false;
  }
  self->req_.headers.back().first.append(at, len);
  return 0;
}

int RequestParser::on_header_value(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->in_value_ = true;
  if (self->req_.headers.empty()) return 1;
  // Debian's http_parser is built non-strict and lets a NUL through at the start of a value ("Host:\0x");
  // RFC 9110 §5.5 forbids NUL, CR and LF in field values. Found by tests/fuzz/fuzz_http.
  if (std::string_view(at, len).find_first_of(std::string_view("\0\r\n", 3)) != std::string_view::npos) {
    self->fail(400, "invalid character in a header value");
    return 1;
  }
  self->req_.headers.back().second.append(at, len);
  return 0;
}

int RequestParser::on_headers_complete(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  Request& r = self->req_;
  r.method = http_method_str(static_cast<http_method>(p->method));
  r.http_major = p->http_major;
  r.http_minor = p->http_minor;
  r.keep_alive = http_should_keep_alive(p) != 0;
  self->headers_done_ = true;
  // HTTP/1.0 and 1.1 only: http_parser reads "GET /" as HTTP/0.9 and accepts any digit pair.
  if (p->http_major != 1 || p->http_minor > 1) {
    self->fail(505, "HTTP version not supported (send HTTP/1.1)");
    return -1;
  }
  size_t q = r.target.find('?');
  auto path = percent_decode(std::string_view(r.target).substr(0, q), false);
  if (!path || path->empty() || (*path)[0] != '/') {
    self->fail(400, "bad request target");
    return -1;
  }
  if (q != std::string::npos) r.query = r.target.substr(q + 1);
  // Every decoded path and query text is clean UTF-8 without control characters before any handler,
  // log line or audit record sees it (docs/reliability.md "Request text").
  if (!clean_text(*path)) {
    self->fail(400, "the request path is not UTF-8 text (invalid UTF-8 or a control character after percent-decoding)");
    return -1;
  }
  if (auto params = parse_query(r.query); params) {
    for (const auto& [k, v] : *params) {
      if (!clean_text(k) || !clean_text(v)) {
        self->fail(400, "a query parameter is not UTF-8 text (invalid UTF-8 or a control character after percent-decoding)");
        return -1;
      }
    }
  }
  r.path = std::move(*path);
  if ((p->flags & F_CONTENTLENGTH) != 0) {
    self->content_length_ = p->content_length;
  }
  self->state_ = ParseState::headers_complete;
  http_parser_pause(p, 1);
  return 0;
}

int RequestParser::on_body(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->body_bytes_ += len;
  if (self->body_bytes_ > self->limits_.max_body_bytes) {
    self->fail(413, "request body too large");
    return 1;
  }
  if (self->sink_) {
    if (!self->sink_(std::string_view(at, len))) {
      if (self->error_status_ == 0) self->fail(400, "request body rejected");
      else self->state_ = ParseState::error;
      return 1;
    }
  } else {
    self->req_.body.append(at, len);
  }
  if ((p->flags & F_CHUNKED) && p->content_length == 0) {  // the chunk's data is complete: CR LF follows
    self->chunk_crlf_pending_ = true;
    self->chunk_crlf_at_ = at + len;
    self->chunk_crlf_seen_.clear();
  }
  return 0;
}

int RequestParser::on_chunk_complete(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  if (!self->chunk_crlf_pending_) return 0;  // the last (empty) chunk
  // Both bytes were consumed in this feed() or held from the one before.
  std::string crlf = self->chunk_crlf_seen_ + std::string(self->chunk_crlf_at_, 2 - self->chunk_crlf_seen_.size());
  self->chunk_crlf_pending_ = false;
  self->chunk_crlf_at_ = nullptr;
  if (crlf != "\r\n") {
    self->fail(400, "bad chunked framing: a chunk's data is not followed by CR LF");
    return 1;
  }
  return 0;
}

int RequestParser::on_message_complete(http_parser* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->state_ = ParseState::message_complete;
  http_parser_pause(p, 1);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// ResponseParser

ResponseParser::ResponseParser(uint64_t max_body) : max_body_(max_body) {
  http_parser_settings_init(&settings_);
  settings_.on_header_field = on_header_field;
  settings_.on_header_value = on_header_value;
  settings_.on_headers_complete = on_headers_complete;
  settings_.on_body = on_body;
  settings_.on_message_complete = on_message_complete;
  reset();
}

void ResponseParser::reset(bool head_request) {
  http_parser_init(&parser_, HTTP_RESPONSE);
  parser_.data = this;
  resp_ = Response{};
  in_value_ = false;
  complete_ = false;
  failed_ = false;
  head_ = head_request;
  header_bytes_ = 0;
  error_.clear();
}

size_t ResponseParser::feed(std::string_view data) {
  if (complete_ || failed_) return 0;
  size_t n = http_parser_execute(&parser_, &settings_, data.data(), data.size());
  if (!complete_) header_bytes_ += n;
  enum http_errno err = HTTP_PARSER_ERRNO(&parser_);
  if (err == HPE_PAUSED) return n;
  if (err != HPE_OK && !failed_) {
    failed_ = true;
    error_ = std::string("malformed HTTP response: ") + http_errno_description(err);
  }
  return n;
}

void ResponseParser::finish_eof() {
  if (complete_ || failed_) return;
  http_parser_execute(&parser_, &settings_, nullptr, 0);
  if (!complete_) {
    failed_ = true;
    error_ = "connection closed before the response was complete";
  }
}

int ResponseParser::on_header_field(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<ResponseParser*>(p->data);
  if (self->header_bytes_ > 64 * 1024 || self->resp_.headers.size() > 200) {
    self->failed_ = true;
    self->error_ = "response headers too large";
    return 1;
  }
  if (self->in_value_ || self->resp_.headers.empty()) {
    self->resp_.headers.emplace_back();
    self->in_value_ = false;
  }
  self->resp_.headers.back().first.append(at, len);
  return 0;
}

int ResponseParser::on_header_value(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<ResponseParser*>(p->data);
  self->in_value_ = true;
  if (self->resp_.headers.empty()) return 1;
  self->resp_.headers.back().second.append(at, len);
  return 0;
}

int ResponseParser::on_headers_complete(http_parser* p) {
  auto* self = static_cast<ResponseParser*>(p->data);
  self->resp_.status = p->status_code;
  self->resp_.keep_alive = http_should_keep_alive(p) != 0;
  return self->head_ ? 1 : 0;  // 1 = no body expected
}

int ResponseParser::on_body(http_parser* p, const char* at, size_t len) {
  auto* self = static_cast<ResponseParser*>(p->data);
  if (self->resp_.body.size() + len > self->max_body_) {
    self->failed_ = true;
    self->error_ = "response body too large";
    return 1;
  }
  self->resp_.body.append(at, len);
  return 0;
}

int ResponseParser::on_message_complete(http_parser* p) {
  auto* self = static_cast<ResponseParser*>(p->data);
  self->complete_ = true;
  self->resp_.keep_alive = http_should_keep_alive(p) != 0;
  http_parser_pause(p, 1);
  return 0;
}

}  // namespace p11relay::http
