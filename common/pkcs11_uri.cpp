#include "common/pkcs11_uri.h"

#include "common/bytes.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace p11relay {
namespace {

// RFC 7512 §2.3 path attributes and query attributes.
constexpr std::array kPathAttrs = {"token",       "manufacturer", "serial", "model", "library-manufacturer",
                                   "library-description", "library-version", "object", "type", "id",
                                   "slot-description", "slot-manufacturer", "slot-id"};
constexpr std::array kQueryAttrs = {"pin-source", "pin-value", "module-name", "module-path"};

bool known(std::string_view name, bool query) {
  if (name.size() > 2 && name.substr(0, 2) == "x-") return true;  // vendor-specific (§2.3)
  auto match = [&](const char* a) { return name == a; };
  return query ? std::any_of(kQueryAttrs.begin(), kQueryAttrs.end(), match)
               : std::any_of(kPathAttrs.begin(), kPathAttrs.end(), match);
}

bool unreserved(unsigned char c) { return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~'; }

// Characters allowed unencoded in a value: pk11-pchar / pk11-qchar.
bool value_char(unsigned char c, bool query) {
  if (unreserved(c)) return true;
  std::string_view common = ":[]@!$'()*+,";
  if (common.find(static_cast<char>(c)) != std::string_view::npos) return true;
  return query ? std::string_view("/?|;").find(static_cast<char>(c)) != std::string_view::npos : c == '=' || c == '&';
}

std::string shown(unsigned char c) {
  if (std::isprint(c)) return std::string("'") + static_cast<char>(c) + "'";
  static const char* hex = "0123456789ABCDEF";
  return std::string("byte %") + hex[c >> 4] + hex[c & 15];
}

Result<std::string> decode(std::string_view v, bool query, const std::string& name) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    auto c = static_cast<unsigned char>(v[i]);
    if (c == '%') {
      int hi = i + 2 < v.size() ? hex_value(v[i + 1]) : -1;
      int lo = hi >= 0 ? hex_value(v[i + 2]) : -1;
      if (lo < 0) return bad_request("pkcs11 URI: attribute '" + name + "': '%' must be followed by two hex digits");
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (value_char(c, query)) {
      out.push_back(static_cast<char>(c));
    } else {
      return bad_request("pkcs11 URI: attribute '" + name + "': " + shown(c) + " must be percent-encoded" +
                         (c == ' ' ? " (%20)" : ""));
    }
  }
  return out;
}

Status parse_attrs(std::string_view part, char sep, bool query, std::map<std::string, std::string>& out) {
  if (part.empty()) return {};
  size_t pos = 0;
  for (;;) {
    size_t end = part.find(sep, pos);
    std::string_view item = part.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
    size_t eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0)
      // The item itself is not quoted: it could be a mistyped secret.
      return bad_request("pkcs11 URI: an attribute is not a name=value pair (attributes are separated by '" +
                         std::string(1, sep) + "')");
    std::string name(item.substr(0, eq));
    if (!known(name, query))
      return bad_request("pkcs11 URI: unknown " + std::string(query ? "query" : "path") + " attribute '" + name + "'");
    ASSIGN_OR_RETURN(std::string value, decode(item.substr(eq + 1), query, name));
    if (!out.emplace(name, std::move(value)).second)
      return bad_request("pkcs11 URI: attribute '" + name + "' appears twice");
    if (end == std::string_view::npos) return {};
    pos = end + 1;
  }
}

}  // namespace

const std::string* Pkcs11Uri::attr(const std::string& name) const {
  auto it = path.find(name);
  return it == path.end() ? nullptr : &it->second;
}

bool is_pkcs11_uri(std::string_view text) {
  constexpr std::string_view scheme = "pkcs11:";
  if (text.size() < scheme.size()) return false;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(text[i])) != scheme[i]) return false;
  return true;
}

Result<Pkcs11Uri> parse_pkcs11_uri(std::string_view text) {
  if (!is_pkcs11_uri(text)) return bad_request("not a pkcs11 URI (must start with 'pkcs11:')");
  text.remove_prefix(7);
  Pkcs11Uri uri;
  size_t q = text.find('?');
  RETURN_IF_ERROR(parse_attrs(text.substr(0, q), ';', false, uri.path));
  if (q != std::string_view::npos) RETURN_IF_ERROR(parse_attrs(text.substr(q + 1), '&', true, uri.query));
  return uri;
}

std::string pkcs11_uri_encode_value(std::string_view value) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : value) {
    if (unreserved(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

}  // namespace p11relay
