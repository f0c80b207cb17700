// Byte strings and their text forms (hex, base64).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace p11relay {

using Bytes = std::vector<std::uint8_t>;

std::string to_hex(std::span<const std::uint8_t> data);  // lowercase
std::optional<Bytes> from_hex(std::string_view hex);      // accepts upper/lower case, optional ':' separators
int hex_value(char c);                                    // 0-15 for a hex digit (either case), else -1
std::string base64_encode(std::span<const std::uint8_t> data);
std::optional<Bytes> base64_decode(std::string_view text);  // strict: standard alphabet with padding

inline Bytes to_bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }
inline std::string to_string(std::span<const std::uint8_t> b) { return std::string(b.begin(), b.end()); }

}  // namespace p11relay
