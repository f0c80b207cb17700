// Addresses and networks in CIDR form, for server.trustedproxies (docs/relic-protocol.md §4.2).
#pragma once

#include "common/error.h"

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

namespace p11relay::daemon {

// "10.0.0.0/8", "127.0.0.1" (a /32), "::1" (a /128), "fd00::/8". IPv4 is kept as IPv4.
struct Network {
  std::array<std::uint8_t, 16> bytes{};
  bool v4 = false;
  int prefix = 0;
  bool operator==(const Network&) const = default;
};

Result<Network> parse_network(std::string_view text);
// True when `address` (textual IPv4 or IPv6; an IPv4-mapped IPv6 address counts as IPv4) is in one.
bool in_networks(const std::vector<Network>& nets, std::string_view address);

}  // namespace p11relay::daemon
