#include "common/x509.h"

#include "common/digest.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <iterator>

namespace p11relay {

std::string openssl_error_string() {
  std::string out;
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

namespace {

Result<std::vector<X509_ptr>> certs_from_pkcs7(PKCS7* p7) {
  std::vector<X509_ptr> out;
  STACK_OF(X509)* certs = nullptr;
  if (p7 && PKCS7_type_is_signed(p7) && p7->d.sign) certs = p7->d.sign->cert;
  for (int i = 0; certs && i < sk_X509_num(certs); ++i) {
    X509* c = sk_X509_value(certs, i);
    X509_up_ref(c);
    out.emplace_back(c);
  }
  return out;
}

}  // namespace

Result<X509_ptr> parse_certificate_der(std::span<const std::uint8_t> der) {
  const unsigned char* p = der.data();
  X509_ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert || p != der.data() + der.size()) {
    ERR_clear_error();
    return bad_request("not a DER X.509 certificate");
  }
  return cert;
}

Result<std::vector<X509_ptr>> parse_certificates(std::span<const std::uint8_t> data) {
  std::vector<X509_ptr> out;
  std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
  if (text.find("-----BEGIN") != std::string_view::npos) {
    BIO_ptr bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
    char* name_raw = nullptr;
    char* header_raw = nullptr;
    unsigned char* body_raw = nullptr;
    long len = 0;
    while (PEM_read_bio(bio.get(), &name_raw, &header_raw, &body_raw, &len) == 1) {
      OpenSSL_buffer<char> name(name_raw), header(header_raw);
      OpenSSL_buffer<unsigned char> body(body_raw);
      std::string n = name.get();
      const unsigned char* p = body.get();
      if (n == "CERTIFICATE" || n == "TRUSTED CERTIFICATE" || n == "X509 CERTIFICATE") {
        if (X509* c = d2i_X509(nullptr, &p, len)) out.emplace_back(c);
      } else if (n == "PKCS7") {
        PKCS7_ptr p7(d2i_PKCS7(nullptr, &p, len));
        auto certs = certs_from_pkcs7(p7.get());
        for (auto& c : *certs) out.push_back(std::move(c));
      }
    }
    ERR_clear_error();
    if (out.empty()) return bad_request("no certificate in PEM data");
    return out;
  }
  if (auto one = parse_certificate_der(data); one.ok()) {
    out.push_back(std::move(one).value());
    return out;
  }
  const unsigned char* p = data.data();
  if (PKCS7_ptr p7{d2i_PKCS7(nullptr, &p, static_cast<long>(data.size()))}) {
    auto certs = certs_from_pkcs7(p7.get());
    if (!certs->empty()) return certs;
  }
  ERR_clear_error();
  return bad_request("no certificate found (expected PEM, DER or PKCS#7)");
}

Result<std::vector<X509_ptr>> load_certificates(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return config_error("cannot read certificate file " + path);
  Bytes data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto certs = parse_certificates(data);
  if (!certs.ok()) return config_error(path + ": " + certs.error().message);
  return certs;
}

namespace {

// The DER encoding an OpenSSL i2d_* function writes, or empty bytes when it fails.
template <typename T, typename I2d>
Bytes der_of(T* object, I2d i2d) {
  unsigned char* raw = nullptr;
  int n = i2d(object, &raw);
  OpenSSL_buffer<unsigned char> buf(raw);
  if (n <= 0) return {};
  return Bytes(raw, raw + n);
}

}  // namespace

Bytes x509_der(X509* cert) { return der_of(cert, i2d_X509); }

std::string x509_pem(X509* cert) {
  BIO_ptr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

Bytes spki_der(X509* cert) { return der_of(X509_get_X509_PUBKEY(cert), i2d_X509_PUBKEY); }

Bytes spki_der(EVP_PKEY* key) { return der_of(key, i2d_PUBKEY); }

Result<EVP_PKEY_ptr> parse_spki(std::span<const std::uint8_t> der) {
  const unsigned char* p = der.data();
  EVP_PKEY_ptr key(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));
  if (!key || p != der.data() + der.size()) {
    ERR_clear_error();
    return bad_request("not a DER SubjectPublicKeyInfo");
  }
  return key;
}

namespace {

// A public key of `type` from the parameters `bld` holds (none: the caller's attributes did not fit).
Result<EVP_PKEY_ptr> public_key_from_params(const char* type, OSSL_PARAM_BLD_ptr bld) {
  OSSL_PARAM_ptr params(bld ? OSSL_PARAM_BLD_to_param(bld.get()) : nullptr);
  EVP_PKEY_CTX_ptr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* key = nullptr;
  bool ok = params && ctx && EVP_PKEY_fromdata_init(ctx.get()) == 1 &&
            EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params.get()) == 1;
  EVP_PKEY_ptr owned(key);
  if (!ok) {
    ERR_clear_error();
    return bad_request(std::string("the token's ") + type + " public key attributes do not form a key");
  }
  return owned;
}

}  // namespace

Result<EVP_PKEY_ptr> rsa_public_key(std::span<const std::uint8_t> modulus, std::span<const std::uint8_t> exponent) {
  if (modulus.empty() || exponent.empty() || modulus.size() > 2048 || exponent.size() > 64)
    return bad_request("RSA public key attributes missing or out of range");
  BIGNUM_ptr n(BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr));
  BIGNUM_ptr e(BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr));
  OSSL_PARAM_BLD_ptr bld(OSSL_PARAM_BLD_new());
  if (!n || !e || !bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1)
    bld.reset();
  return public_key_from_params("RSA", std::move(bld));  // the params hold copies of n and e
}

Result<EVP_PKEY_ptr> ec_public_key(std::span<const std::uint8_t> ec_params, std::span<const std::uint8_t> ec_point) {
  // ECParameters ::= CHOICE { namedCurve OBJECT IDENTIFIER, ... }: only named curves are served.
  const unsigned char* p = ec_params.data();
  ASN1_OBJECT_ptr oid(d2i_ASN1_OBJECT(nullptr, &p, static_cast<long>(ec_params.size())));
  int nid = oid && p == ec_params.data() + ec_params.size() ? OBJ_obj2nid(oid.get()) : NID_undef;
  const char* group = nid == NID_undef ? nullptr : OBJ_nid2sn(nid);
  if (!group) {
    ERR_clear_error();
    return bad_request("CKA_EC_PARAMS does not name a known curve");
  }
  // CKA_EC_POINT is a DER OCTET STRING holding the point; some tokens return the bare point. A bare
  // uncompressed point starts with 0x04 as well, so both readings are tried (the DER one first).
  std::vector<Bytes> candidates;
  p = ec_point.data();
  ASN1_OCTET_STRING_ptr os(d2i_ASN1_OCTET_STRING(nullptr, &p, static_cast<long>(ec_point.size())));
  if (os && p == ec_point.data() + ec_point.size())
    candidates.emplace_back(ASN1_STRING_get0_data(os.get()), ASN1_STRING_get0_data(os.get()) + ASN1_STRING_length(os.get()));
  ERR_clear_error();
  candidates.emplace_back(ec_point.begin(), ec_point.end());
  for (const Bytes& point : candidates) {
    if (point.empty()) continue;
    OSSL_PARAM_BLD_ptr bld(OSSL_PARAM_BLD_new());
    if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1)
      bld.reset();
    auto key = public_key_from_params("EC", std::move(bld));
    if (key.ok()) return key;
  }
  return bad_request("CKA_EC_POINT is not a point on the curve CKA_EC_PARAMS names");
}

std::string spki_fingerprint(X509* cert) { return to_hex(hash(HashAlg::sha256, spki_der(cert))); }

std::string name_rfc2253(X509_NAME* name) {
  BIO_ptr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string name_oneline(X509_NAME* name) {
  OpenSSL_buffer<char> s(X509_NAME_oneline(name, nullptr, 0));
  return s ? std::string(s.get()) : std::string();
}

bool is_self_signed(X509* cert) { return X509_check_issued(cert, cert) == X509_V_OK; }

Result<PublicKeyInfo> describe_public_key(EVP_PKEY* key) {
  PublicKeyInfo info;
  info.bits = EVP_PKEY_get_bits(key);
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA:
    case EVP_PKEY_RSA_PSS:
      info.type = KeyType::rsa;
      return info;
    case EVP_PKEY_EC: {
      info.type = KeyType::ec;
      char group[64] = {0};
      size_t len = 0;
      if (EVP_PKEY_get_group_name(key, group, sizeof group, &len) != 1)
        return bad_request("EC key without a named curve");
      std::string g = group;
      if (g == "prime256v1" || g == "P-256") info.curve = "P-256";
      else if (g == "secp384r1" || g == "P-384") info.curve = "P-384";
      else if (g == "secp521r1" || g == "P-521") info.curve = "P-521";
      else return bad_request("unsupported EC curve " + g);
      return info;
    }
    default:
      return bad_request("unsupported key type (only RSA and EC keys can be served)");
  }
}

bool public_keys_equal(EVP_PKEY* a, EVP_PKEY* b) { return EVP_PKEY_eq(a, b) == 1; }

}  // namespace p11relay
