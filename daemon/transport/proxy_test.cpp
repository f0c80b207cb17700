#include "daemon/transport/proxy.h"

#include "common/bytes.h"
#include "common/x509.h"

#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

using namespace p11relay;
using namespace p11relay::daemon;

namespace {

std::vector<Network> nets(std::initializer_list<const char*> texts) {
  std::vector<Network> out;
  for (const char* t : texts) {
    auto n = parse_network(t);
    REQUIRE_MESSAGE(n.ok(), t);
    out.push_back(*n);
  }
  return out;
}

X509_ptr self_signed() {
  EVP_PKEY_ptr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  X509_ptr x(X509_new());
  X509_set_version(x.get(), 2);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 86400);
  X509_set_pubkey(x.get(), key.get());
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("forwarded"), -1, -1, 0);
  X509_set_issuer_name(x.get(), X509_get_subject_name(x.get()));
  X509_sign(x.get(), key.get(), EVP_sha256());
  return x;
}

}  // namespace

TEST_CASE("trusted proxy networks: addresses, CIDR prefixes, IPv6 and IPv4-mapped peers") {
  auto n = nets({"127.0.0.1", "10.0.0.0/8", "fd00::/8", "::1"});
  CHECK(in_networks(n, "127.0.0.1"));
  CHECK_FALSE(in_networks(n, "127.0.0.2"));
  CHECK(in_networks(n, "10.200.3.4"));
  CHECK_FALSE(in_networks(n, "11.0.0.1"));
  CHECK(in_networks(n, "::ffff:10.1.2.3"));  // a dual-stack listener's view of an IPv4 peer
  CHECK(in_networks(n, "fd12::1"));
  CHECK(in_networks(n, "::1"));
  CHECK_FALSE(in_networks(n, "fe80::1"));
  CHECK_FALSE(in_networks(n, "not an address"));
  CHECK_FALSE(in_networks({}, "127.0.0.1"));  // none configured: nobody is trusted
  CHECK(in_networks(nets({"192.168.1.128/25"}), "192.168.1.200"));
  CHECK_FALSE(in_networks(nets({"192.168.1.128/25"}), "192.168.1.100"));
  CHECK(in_networks(nets({"0.0.0.0/0"}), "8.8.8.8"));
}

TEST_CASE("trusted proxy networks: what is not a network is refused with the reason") {
  for (const char* bad : {"", "localhost", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/x", "fd00::/129", "1.2.3.4/-1"}) {
    auto n = parse_network(bad);
    INFO(bad);
    REQUIRE_FALSE(n.ok());
    CHECK(n.error().message.find(bad) != std::string::npos);
  }
}

TEST_CASE("X-Forwarded-For: the nearest hop a trusted proxy did not add") {
  auto trusted = nets({"10.0.0.0/8"});
  CHECK(forwarded_client("203.0.113.7", trusted, "10.0.0.1") == "203.0.113.7");
  // A client that sends its own X-Forwarded-For cannot choose its audited address.
  CHECK(forwarded_client("1.2.3.4, 203.0.113.7", trusted, "10.0.0.1") == "203.0.113.7");
  CHECK(forwarded_client("1.2.3.4, 203.0.113.7, 10.0.0.9", trusted, "10.0.0.1") == "203.0.113.7");
  CHECK(forwarded_client("10.0.0.5,10.0.0.9", trusted, "10.0.0.1") == "10.0.0.5");
  CHECK(forwarded_client(" , ", trusted, "10.0.0.1") == "10.0.0.1");
  CHECK(forwarded_client("", trusted, "10.0.0.1") == "10.0.0.1");
}

TEST_CASE("Ssl-Client-Cert: URL-escaped PEM (nginx, relic) and base64 DER (HAProxy)") {
  X509_ptr cert = self_signed();
  const std::string fp = spki_fingerprint(cert.get());
  auto pem = forwarded_certificate(http::percent_encode(x509_pem(cert.get())));
  REQUIRE(pem.ok());
  CHECK(spki_fingerprint(pem->get()) == fp);
  auto der = forwarded_certificate(" " + base64_encode(x509_der(cert.get())) + " ");
  REQUIRE(der.ok());
  CHECK(spki_fingerprint(der->get()) == fp);
  for (const char* bad : {"", "%%%", "-----BEGIN CERTIFICATE-----%0Aabc%0A-----END CERTIFICATE-----", "AAAA",
                          "not base64!"}) {
    INFO(bad);
    auto r = forwarded_certificate(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ErrorCode::bad_request);
    CHECK(r.error().message.find("Ssl-Client-Cert") != std::string::npos);
  }
}
