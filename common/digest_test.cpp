#include "common/digest.h"

#include <doctest/doctest.h>

using namespace p11relay;

TEST_CASE("hash names follow relic's HashByName") {
  CHECK(hash_by_name("SHA-256") == HashAlg::sha256);
  CHECK(hash_by_name("sha256") == HashAlg::sha256);
  CHECK(hash_by_name("Sha-1") == HashAlg::sha1);
  CHECK(hash_by_name("MD5") == HashAlg::md5);
  CHECK(hash_by_name("SHA-384") == HashAlg::sha384);
  CHECK_FALSE(hash_by_name("sha3").has_value());
  CHECK_FALSE(hash_by_name("sha-512/256").has_value());
  CHECK_FALSE(hash_by_name("").has_value());
}

TEST_CASE("sha256 of abc") {
  CHECK(to_hex(hash(HashAlg::sha256, to_bytes("abc"))) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("DigestInfo round trip for every hash") {
  for (HashAlg alg : {HashAlg::md5, HashAlg::sha1, HashAlg::sha224, HashAlg::sha256, HashAlg::sha384,
                      HashAlg::sha512}) {
    Bytes d = hash(alg, to_bytes("x"));
    Bytes di = digest_info(alg, d);
    auto parsed = parse_digest_info(di);
    REQUIRE(parsed.has_value());
    CHECK(parsed->first == alg);
    CHECK(parsed->second == d);
    di.push_back(0);
    CHECK_FALSE(parse_digest_info(di).has_value());
  }
}
