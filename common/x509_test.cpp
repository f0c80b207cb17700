// Public keys built from PKCS#11 attributes (what the daemon reads from the token).
#include "common/x509.h"

#include <doctest/doctest.h>
#include <openssl/core_names.h>
#include <openssl/obj_mac.h>

using namespace p11relay;

namespace {

Bytes bn_param(EVP_PKEY* key, const char* name) {
  BIGNUM* raw = nullptr;
  REQUIRE(EVP_PKEY_get_bn_param(key, name, &raw) == 1);
  BIGNUM_ptr bn(raw);
  Bytes out(static_cast<size_t>(BN_num_bytes(bn.get())));
  BN_bn2bin(bn.get(), out.data());
  return out;
}

Bytes raw_point(EVP_PKEY* key) {
  Bytes out(200);
  size_t n = 0;
  REQUIRE(EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, out.data(), out.size(), &n) == 1);
  out.resize(n);
  return out;
}

Bytes der_octet_string(const Bytes& content) {
  Bytes out = {0x04};
  if (content.size() < 128) {
    out.push_back(static_cast<uint8_t>(content.size()));
  } else {
    out.push_back(0x81);
    out.push_back(static_cast<uint8_t>(content.size()));
  }
  out.insert(out.end(), content.begin(), content.end());
  return out;
}

Bytes curve_oid(int nid) {
  unsigned char* buf = nullptr;
  int n = i2d_ASN1_OBJECT(OBJ_nid2obj(nid), &buf);
  OpenSSL_buffer<unsigned char> owner(buf);
  return Bytes(buf, buf + n);
}

}  // namespace

TEST_CASE("rsa_public_key rebuilds the key from CKA_MODULUS and CKA_PUBLIC_EXPONENT") {
  EVP_PKEY_ptr key(EVP_RSA_gen(2048));
  REQUIRE(key);
  auto rebuilt = rsa_public_key(bn_param(key.get(), OSSL_PKEY_PARAM_RSA_N), bn_param(key.get(), OSSL_PKEY_PARAM_RSA_E));
  REQUIRE(rebuilt.ok());
  CHECK(public_keys_equal(rebuilt->get(), key.get()));
  auto info = describe_public_key(rebuilt->get());
  REQUIRE(info.ok());
  CHECK(info->bits == 2048);

  CHECK_FALSE(rsa_public_key({}, bn_param(key.get(), OSSL_PKEY_PARAM_RSA_E)).ok());
  CHECK_FALSE(rsa_public_key(bn_param(key.get(), OSSL_PKEY_PARAM_RSA_N), {}).ok());
}

TEST_CASE("ec_public_key takes the DER OCTET STRING of the spec and the bare point some tokens return") {
  for (const auto& curve : {std::pair{"P-256", NID_X9_62_prime256v1}, std::pair{"P-384", NID_secp384r1}}) {
    const char* name = curve.first;
    int nid = curve.second;
    CAPTURE(name);
    EVP_PKEY_ptr key(EVP_EC_gen(name));
    REQUIRE(key);
    Bytes point = raw_point(key.get());
    auto der = ec_public_key(curve_oid(nid), der_octet_string(point));
    REQUIRE(der.ok());
    CHECK(public_keys_equal(der->get(), key.get()));
    auto bare = ec_public_key(curve_oid(nid), point);
    REQUIRE(bare.ok());
    CHECK(public_keys_equal(bare->get(), key.get()));
    auto info = describe_public_key(bare->get());
    REQUIRE(info.ok());
    CHECK(info->curve == name);
  }
}

TEST_CASE("ec_public_key: a bare point that also parses as a DER OCTET STRING") {
  // 04 3f ...: read as DER it is a 63-byte string (not a point), so the bare reading must win.
  EVP_PKEY_ptr key;
  Bytes point;
  for (int i = 0; i < 20000; ++i) {
    key.reset(EVP_EC_gen("P-256"));
    point = raw_point(key.get());
    if (point[1] == 0x3f) break;
  }
  REQUIRE(point[1] == 0x3f);
  auto rebuilt = ec_public_key(curve_oid(NID_X9_62_prime256v1), point);
  REQUIRE(rebuilt.ok());
  CHECK(public_keys_equal(rebuilt->get(), key.get()));
}

TEST_CASE("ec_public_key refuses what is not a named curve and a point on it") {
  EVP_PKEY_ptr key(EVP_EC_gen("P-256"));
  Bytes point = raw_point(key.get());
  Bytes oid = curve_oid(NID_X9_62_prime256v1);
  CHECK_FALSE(ec_public_key({}, point).ok());
  CHECK_FALSE(ec_public_key(Bytes{0x30, 0x03, 0x02, 0x01, 0x01}, point).ok());  // explicit parameters
  CHECK_FALSE(ec_public_key(curve_oid(NID_secp384r1), point).ok());             // point of another curve
  CHECK_FALSE(ec_public_key(oid, {}).ok());
  CHECK_FALSE(ec_public_key(oid, der_octet_string({})).ok());
  Bytes off = point;
  off.back() ^= 1;  // no longer on the curve
  CHECK_FALSE(ec_public_key(oid, off).ok());
  CHECK_FALSE(ec_public_key(oid, der_octet_string(off)).ok());
  Bytes truncated(oid.begin(), oid.end() - 1);
  CHECK_FALSE(ec_public_key(truncated, point).ok());
}
