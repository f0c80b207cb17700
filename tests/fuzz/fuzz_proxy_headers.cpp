// libFuzzer target: what a reverse proxy's request carries to the daemon (daemon/transport/proxy.cpp,
// daemon/transport/networks.cpp): the Ssl-Client-Cert value (URL-escaped PEM or base64 DER), X-Forwarded-For
// against trusted networks, and server.trustedproxies entries. A crash or a sanitizer report is a bug;
// hostile input must be an error, and the audited address must be one of the hops or the peer.
#include "daemon/transport/proxy.h"

#include <cstdint>
#include <cstdlib>
#include <string>

using namespace p11relay;
using namespace p11relay::daemon;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  (void)forwarded_certificate(in);
  std::vector<Network> trusted;
  if (auto n = parse_network(in.substr(0, 64)); n.ok()) trusted.push_back(*n);
  if (auto n = parse_network("10.0.0.0/8"); n.ok()) trusted.push_back(*n);
  (void)in_networks(trusted, in);
  const std::string peer = "10.0.0.1";
  std::string client = forwarded_client(in, trusted, peer);
  if (client != peer && in.find(client) == std::string_view::npos) abort();
  return 0;
}
