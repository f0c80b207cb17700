// Request text made safe before it reaches JSON (nlohmann::json throws on invalid UTF-8 when it
// serialises), a log line or a problem document. docs/reliability.md "Request text" says where each
// check runs: the HTTP parser refuses a path or query that is not clean text, the relay API refuses
// such JSON fields, and everything logged goes through log_escape.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace p11relay {

// Well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
bool valid_utf8(std::string_view s);
// A C0 control character (0x00-0x1F) or DEL.
bool has_control(std::string_view s);
// valid_utf8 and no control character: what a request may put in a path, a query value or a name.
inline bool clean_text(std::string_view s) { return valid_utf8(s) && !has_control(s); }

// For a log line: control characters, backslashes and bytes that are not valid UTF-8 become \xNN;
// more than `max` bytes of input are cut and marked with "...(N bytes)".
std::string log_escape(std::string_view s, size_t max = 256);

}  // namespace p11relay
