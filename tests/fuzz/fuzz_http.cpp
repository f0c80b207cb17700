// libFuzzer target: the daemon's HTTP request path without sockets (common/http.h). The input is fed to
// RequestParser in chunks of a size taken from the first byte, with the same resume/reset loop the
// server runs (server.cpp): headers_complete → (optional body sink) → resume, message_complete → checks →
// reset, error → stop. Checks: limits hold, no header name or value carries CR/LF/NUL (header injection),
// the parser never stalls on input it does not consume, path and query decode without crashing, and what a
// handler sees is HTTP/1.x with a path and query values that are clean UTF-8 text (common/text.h).
#include "common/http.h"
#include "common/text.h"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

using namespace p11relay;

namespace {
bool has_ctl(const std::string& s) {
  for (char c : s)
    if (c == '\r' || c == '\n' || c == '\0') return true;
  return false;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t chunk = 1 + data[0] % 64;
  const bool use_sink = data[1] & 1;
  http::Limits limits{256 + (data[1] >> 1) * 64u, static_cast<uint64_t>(data[1] & 0xf0) * 16};
  std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);

  http::RequestParser p(limits);
  std::string pending;
  size_t pos = 0;
  uint64_t sunk = 0;
  int messages = 0;
  for (int guard = 0; guard < 1 << 20; ++guard) {
    switch (p.state()) {
      case http::ParseState::need_more: {
        if (pending.empty()) {
          if (pos >= in.size()) return 0;  // EOF: the server would close
          size_t n = std::min(chunk, in.size() - pos);
          pending.append(in.substr(pos, n));
          pos += n;
        }
        size_t used = p.feed(pending);
        if (used > pending.size()) std::abort();
        if (used == 0 && p.state() == http::ParseState::need_more) std::abort();  // would spin forever
        pending.erase(0, used);
        break;
      }
      case http::ParseState::headers_complete: {
        auto& r = p.request();
        if (r.headers.size() > 100) std::abort();
        for (auto& [k, v] : r.headers)
          if (has_ctl(k) || has_ctl(v)) std::abort();
        if (r.target.size() > limits.max_header_bytes) std::abort();
        if (r.http_major != 1 || r.http_minor > 1) std::abort();
        if (!clean_text(r.path)) std::abort();
        if (auto q = http::parse_query(r.query))
          for (const auto& [k, v] : *q)
            if (!clean_text(k) || !clean_text(v)) std::abort();
        if (use_sink)
          p.set_body_sink([&](std::string_view c) {
            sunk += c.size();
            return true;
          });
        p.resume();
        break;
      }
      case http::ParseState::message_complete: {
        auto& r = p.request();
        if (!use_sink && r.body.size() > limits.max_body_bytes) std::abort();
        if (use_sink && sunk != p.body_bytes()) std::abort();
        if (auto cl = p.content_length(); cl && !p.chunked() && *cl != p.body_bytes()) std::abort();
        http::Response resp;
        resp.status = 200;
        resp.set("X-Echo-Path", r.path);
        (void)http::serialize(resp);
        sunk = 0;
        ++messages;
        p.reset();
        break;
      }
      case http::ParseState::error: {
        int st = p.error_status();
        if (st < 400 || st > 599) std::abort();
        return 0;
      }
    }
  }
  std::abort();  // more steps than the input could need
}
