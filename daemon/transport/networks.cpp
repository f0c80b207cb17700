#include "daemon/transport/networks.h"

#include <asio/ip/address.hpp>

#include <charconv>
#include <string>

namespace p11relay::daemon {
namespace {

// The address as 4 (IPv4, also from an IPv4-mapped IPv6 address) or 16 bytes; nullopt if not one.
std::optional<Network> parse_address(std::string_view text) {
  std::error_code ec;
  asio::ip::address a = asio::ip::make_address(std::string(text), ec);
  if (ec) return std::nullopt;
  Network n;
  if (a.is_v6() && a.to_v6().is_v4_mapped()) a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  if (a.is_v4()) {
    auto b = a.to_v4().to_bytes();
    std::copy(b.begin(), b.end(), n.bytes.begin());
    n.v4 = true;
    n.prefix = 32;
  } else {
    auto b = a.to_v6().to_bytes();
    std::copy(b.begin(), b.end(), n.bytes.begin());
    n.prefix = 128;
  }
  return n;
}

bool contains(const Network& net, const Network& addr) {
  if (net.v4 != addr.v4) return false;
  int bits = net.prefix;
  for (size_t i = 0; bits > 0; ++i, bits -= 8) {
    uint8_t mask = bits >= 8 ? 0xff : static_cast<uint8_t>(0xff << (8 - bits));
    if ((net.bytes[i] & mask) != (addr.bytes[i] & mask)) return false;
  }
  return true;
}

}  // namespace

Result<Network> parse_network(std::string_view text) {
  const std::string shown(text);
  size_t slash = text.find('/');
  auto n = parse_address(text.substr(0, slash));
  if (!n) return bad_request("'" + shown + "' is not an IP address or a network (like 10.0.0.0/8 or fd00::/8)");
  if (slash == std::string_view::npos) return *n;
  std::string_view p = text.substr(slash + 1);
  int prefix = -1;
  auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), prefix);
  const int max = n->v4 ? 32 : 128;
  if (ec != std::errc() || end != p.data() + p.size() || p.empty() || prefix < 0 || prefix > max)
    return bad_request("'" + shown + "': the prefix length must be 0 to " + std::to_string(max));
  n->prefix = prefix;
  return *n;
}

bool in_networks(const std::vector<Network>& nets, std::string_view address) {
  auto a = parse_address(address);
  if (!a) return false;
  for (const auto& n : nets)
    if (contains(n, *a)) return true;
  return false;
}

}  // namespace p11relay::daemon
