#include "common/authenticode/signed_data.h"

#include "common/openssl_ptr.h"
#include "common/x509.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>

#include <algorithm>
#include <array>
#include <cstdio>

namespace p11relay::authenticode {

using der::ByteSpan;

const char* hash_oid(HashAlg alg) {
  // OpenSSL's object table knows each digest's OID: dotted text made once per algorithm.
  static const std::array<std::string, 6> oids = [] {
    std::array<std::string, 6> out;
    for (HashAlg a : {HashAlg::md5, HashAlg::sha1, HashAlg::sha224, HashAlg::sha256, HashAlg::sha384, HashAlg::sha512}) {
      char text[64] = {0};
      OBJ_obj2txt(text, sizeof text, OBJ_nid2obj(EVP_MD_get_type(evp_md(a))), 1);
      out[static_cast<size_t>(a)] = text;
    }
    return out;
  }();
  return oids[static_cast<size_t>(alg)].c_str();
}

std::optional<HashAlg> hash_by_oid_content(ByteSpan content) {
  for (HashAlg a : {HashAlg::md5, HashAlg::sha1, HashAlg::sha224, HashAlg::sha256, HashAlg::sha384, HashAlg::sha512})
    if (der::equal(der::oid_content(hash_oid(a)), content)) return a;
  return std::nullopt;
}

namespace {


Bytes hash_alg_id(HashAlg alg) { return der::seq({der::oid(hash_oid(alg)), der::null()}); }

// SpcPeImagePageHashes class id of the SpcSerializedObject moniker (§9.3).
constexpr uint8_t kPageHashClassId[16] = {0xa6, 0xb5, 0x86, 0xd5, 0xb4, 0xa1, 0x24, 0x66,
                                          0xae, 0x05, 0xa2, 0x17, 0xda, 0x8e, 0x60, 0xd6};

Bytes attribute(const char* attr_oid, ByteSpan value) { return der::seq({der::oid(attr_oid), der::set_of({Bytes(value.begin(), value.end())})}); }

Bytes signing_time_value(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  int year = tm.tm_year + 1900;
  // RFC 5652 §11.3: UTCTime for 1950-2049, GeneralizedTime otherwise.
  if (year >= 1950 && year < 2050) {
    std::snprintf(buf, sizeof buf, "%02d%02d%02d%02d%02d%02dZ", year % 100, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                  tm.tm_min, tm.tm_sec);
    return der::tlv(der::kUtcTime, to_bytes(buf));
  }
  std::snprintf(buf, sizeof buf, "%04d%02d%02d%02d%02d%02dZ", year, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                tm.tm_sec);
  return der::tlv(der::kGeneralizedTime, to_bytes(buf));
}

template <typename F>
Bytes i2d_bytes(F f) {
  int n = f(nullptr);
  if (n <= 0) return {};
  Bytes out(static_cast<size_t>(n));
  unsigned char* p = out.data();
  f(&p);
  return out;
}

// A root to leave out of the chain (§9.4, relic certloader Chain): subject == issuer and the
// signature verifies with its own key. (x509.h's is_self_signed uses X509_check_issued, which also
// demands keyCertSign and so misses self-signed end-entity certificates.)
bool self_signed_root(X509* c) {
  EVP_PKEY* k = X509_get0_pubkey(c);
  bool r = k && X509_NAME_cmp(X509_get_subject_name(c), X509_get_issuer_name(c)) == 0 && X509_verify(c, k) == 1;
  ERR_clear_error();
  return r;
}

Result<Bytes> signature_alg_id(EVP_PKEY* key, HashAlg alg) {
  switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA:
      // §9.4: rsaEncryption with NULL parameters; PKCS#1 v1.5 over the attribute digest.
      return der::seq({der::oid(oid::kRsaEncryption), der::null()});
    case EVP_PKEY_EC: {
      // ecdsa-with-SHAx (RFC 5758 §3.2, no parameters), as OpenSSL/osslsigncode and Windows write it.
      const char* o = nullptr;
      switch (alg) {
        case HashAlg::sha1: o = "1.2.840.10045.4.1"; break;
        case HashAlg::sha224: o = "1.2.840.10045.4.3.1"; break;
        case HashAlg::sha256: o = "1.2.840.10045.4.3.2"; break;
        case HashAlg::sha384: o = "1.2.840.10045.4.3.3"; break;
        case HashAlg::sha512: o = "1.2.840.10045.4.3.4"; break;
        case HashAlg::md5: return bad_request("ECDSA with MD5 is not defined");
      }
      return der::seq({der::oid(o)});
    }
    default:
      return bad_request("signing certificate has an unsupported key type (RSA or EC required)");
  }
}

// The signed attributes (§9.4) as a DER SET OF. messageDigest covers the SpcIndirectDataContent *contents*
// (`content`, without its SEQUENCE tag and length) — the Authenticode rule, which catalogs follow too.
Bytes signed_attributes(HashAlg alg, ByteSpan content, const SignOptions& options, const char* content_type) {
  std::vector<Bytes> attrs;
  attrs.push_back(attribute(oid::kContentType, der::oid(content_type)));
  if (options.signing_time)
    attrs.push_back(attribute(oid::kSigningTime, signing_time_value(options.time.value_or(std::time(nullptr)))));
  Bytes opus;
  if (!options.description.empty())
    opus = der::tlv(der::context(0, true),
                    der::tlv(der::context(0, false), der::bmp_string_content(options.description)));
  if (!options.url.empty())
    opus = der::cat({opus, der::tlv(der::context(1, true), der::tlv(der::context(0, false), to_bytes(options.url)))});
  attrs.push_back(attribute(oid::kSpcSpOpusInfo, der::tlv(der::kSequence, opus)));
  attrs.push_back(attribute(oid::kMessageDigest, der::octet_string(hash(alg, content))));
  attrs.push_back(attribute(oid::kSpcStatementType, der::seq({der::oid(oid::kIndividualCodeSigning)})));
  // DER order (SET OF sorted by encoding), which is what OpenSSL/osslsigncode and Windows produce;
  // relic keeps insertion order, which verifiers also accept because the signature is over the
  // attributes as stored, re-tagged as SET.
  return der::set_of(attrs);
}

// Self-check (§9.4): the signature must verify with the leaf certificate's key, so that a key/certificate
// mismatch is an error here rather than an invalid file later.
Status check_own_signature(EVP_PKEY* pub, HashAlg alg, ByteSpan signed_attrs, ByteSpan signature) {
  EVP_MD_CTX_ptr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, evp_md(alg), nullptr, pub) != 1)
    return internal_error("EVP_DigestVerifyInit: " + openssl_error_string());
  if (EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), signed_attrs.data(), signed_attrs.size()) != 1) {
    openssl_error_string();
    return bad_request("the signature does not verify with the signing certificate's public key "
                       "(wrong key for this certificate, or an ECDSA signature not in DER form)");
  }
  return {};
}

// The SignerInfo (§9.4), naming the signer by the leaf certificate's issuer and serial number.
Result<Bytes> signer_info_for(X509* leaf, HashAlg alg, ByteSpan signed_attrs, ByteSpan sig_alg, ByteSpan signature) {
  Bytes issuer = i2d_bytes([&](unsigned char** p) { return i2d_X509_NAME(X509_get_issuer_name(leaf), p); });
  Bytes serial = i2d_bytes([&](unsigned char** p) { return i2d_ASN1_INTEGER(X509_get0_serialNumber(leaf), p); });
  if (issuer.empty() || serial.empty()) return internal_error("cannot encode the certificate issuer/serial");
  Bytes signed_attrs_implicit(signed_attrs.begin(), signed_attrs.end());
  signed_attrs_implicit[0] = der::context(0, true);  // [0] IMPLICIT SET OF Attribute
  return der::seq({der::integer(1), der::seq({issuer, serial}), hash_alg_id(alg), signed_attrs_implicit, sig_alg,
                   der::octet_string(signature)});
}

}  // namespace

Bytes sip_spc_indirect_data_content(HashAlg alg, ByteSpan digest, long sip_version,
                                    std::span<const uint8_t, 16> sip_guid) {
  Bytes sip = der::seq({der::integer(sip_version), der::octet_string(sip_guid), der::integer(0), der::integer(0),
                        der::integer(0), der::integer(0), der::integer(0)});
  return der::seq({der::seq({der::oid("1.3.6.1.4.1.311.2.1.30"), sip}),  // SPC_SIPINFO_OBJID
                   der::seq({der::seq({der::oid(hash_oid(alg)), der::null()}), der::octet_string(digest)})});
}

Bytes spc_indirect_data_content(HashAlg alg, ByteSpan image_digest, std::optional<HashAlg> page_hash_alg,
                                ByteSpan page_hashes) {
  Bytes link;
  if (page_hash_alg) {
    const char* ph_oid = *page_hash_alg == HashAlg::sha1 ? oid::kPageHashesV1 : oid::kPageHashesV2;
    Bytes serialized = der::set_of({der::seq({der::oid(ph_oid), der::set_of({der::octet_string(page_hashes)})})});
    // SpcLink moniker [1] IMPLICIT SpcSerializedObject { classId, serializedData }.
    link = der::tlv(der::context(1, true), der::cat({der::octet_string(kPageHashClassId), der::octet_string(serialized)}));
  } else {
    // SpcLink file [2] EXPLICIT SpcString unicode [0] IMPLICIT BMPString "" (relic's form).
    link = der::tlv(der::context(2, true), der::tlv(der::context(0, false), {}));
  }
  static const uint8_t kEmptyBitString[] = {0x03, 0x01, 0x00};
  Bytes pe_image_data = der::seq({kEmptyBitString, der::tlv(der::context(0, true), link)});
  return der::seq({der::seq({der::oid(oid::kSpcPeImageData), pe_image_data}),
                   der::seq({hash_alg_id(alg), der::octet_string(image_digest)})});
}

Result<Bytes> ecdsa_raw_to_der(ByteSpan raw) {
  if (raw.empty() || raw.size() % 2 != 0 || raw.size() > 2 * 66)
    return bad_request("raw ECDSA signature must be r||s of equal halves");
  const size_t half = raw.size() / 2;
  ECDSA_SIG_ptr sig(ECDSA_SIG_new());
  BIGNUM_ptr r(BN_bin2bn(raw.data(), static_cast<int>(half), nullptr));
  BIGNUM_ptr s(BN_bin2bn(raw.data() + half, static_cast<int>(half), nullptr));
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1)
    return internal_error("ECDSA_SIG: " + openssl_error_string());
  (void)r.release();  // owned by sig now
  (void)s.release();
  Bytes out = i2d_bytes([&](unsigned char** p) { return i2d_ECDSA_SIG(sig.get(), p); });
  if (out.empty()) return internal_error("i2d_ECDSA_SIG failed");
  return out;
}

Result<Bytes> ecdsa_der_to_raw(ByteSpan der_sig, size_t half) {
  const unsigned char* p = der_sig.data();
  ECDSA_SIG_ptr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_sig.size())));
  if (!sig || p != der_sig.data() + der_sig.size()) return bad_request("not a DER ECDSA signature");
  Bytes out(2 * half);
  const BIGNUM* r = ECDSA_SIG_get0_r(sig.get());
  const BIGNUM* s = ECDSA_SIG_get0_s(sig.get());
  bool ok = BN_bn2binpad(r, out.data(), static_cast<int>(half)) >= 0 &&
            BN_bn2binpad(s, out.data() + half, static_cast<int>(half)) >= 0;
  if (!ok) return bad_request("ECDSA signature value larger than the field size");
  return out;
}

Result<Bytes> build_signed_data(const PeInfo& pe, std::span<X509* const> chain, const SignOptions& options,
                                const RawSigner& signer) {
  Bytes spc = spc_indirect_data_content(pe.alg, pe.image_digest, pe.page_hash_alg, pe.page_hashes);
  return build_signed_data(pe.alg, spc, chain, options, signer);
}

Result<Bytes> build_signed_data(HashAlg alg, ByteSpan spc_content, std::span<X509* const> chain,
                                const SignOptions& options, const RawSigner& signer, const char* content_type) {
  if (chain.empty() || chain[0] == nullptr) return bad_request("no signing certificate");
  X509* leaf = chain[0];
  EVP_PKEY* pub = X509_get0_pubkey(leaf);
  if (!pub) return bad_request("signing certificate has no usable public key");
  ASSIGN_OR_RETURN(Bytes sig_alg, signature_alg_id(pub, alg));
  ASSIGN_OR_RETURN(der::Tlv spc, der::parse_one(spc_content, "the signed content"));

  Bytes signed_attrs = signed_attributes(alg, spc.content, options, content_type);
  ASSIGN_OR_RETURN(Bytes signature, signer(alg, hash(alg, signed_attrs)));
  RETURN_IF_ERROR(check_own_signature(pub, alg, signed_attrs, signature));
  ASSIGN_OR_RETURN(Bytes signer_info, signer_info_for(leaf, alg, signed_attrs, sig_alg, signature));

  // §9.4: leaf first, then the rest of the chain without self-signed roots.
  Bytes certs;
  for (size_t i = 0; i < chain.size(); ++i) {
    if (!chain[i]) continue;
    if (i > 0 && self_signed_root(chain[i])) continue;
    Bytes c = x509_der(chain[i]);
    certs.insert(certs.end(), c.begin(), c.end());
  }

  Bytes signed_data = der::seq({der::integer(1), der::set_of({hash_alg_id(alg)}),
                                der::seq({der::oid(content_type), der::tlv(der::context(0, true), spc.whole)}),
                                der::tlv(der::context(0, true), certs), der::tlv(der::kSet, signer_info)});
  return der::seq({der::oid(oid::kSignedData), der::tlv(der::context(0, true), signed_data)});
}

Result<std::vector<Attribute>> parse_attributes(ByteSpan block) {
  ASSIGN_OR_RETURN(der::Tlv b, der::parse_one(block, "attributes"));
  std::vector<Attribute> out;
  der::Reader r(b.content);
  while (!r.empty()) {
    ASSIGN_OR_RETURN(der::Tlv a, r.expect(der::kSequence, "attribute"));
    der::Reader ar(a.content);
    ASSIGN_OR_RETURN(der::Tlv o, ar.expect(der::kOid, "attribute type"));
    ASSIGN_OR_RETURN(der::Tlv vals, ar.expect(der::kSet, "attribute values"));
    Attribute attr;
    attr.whole = a.whole;
    attr.oid = o.content;
    der::Reader vr(vals.content);
    while (!vr.empty()) {
      ASSIGN_OR_RETURN(der::Tlv v, vr.next("attribute value"));
      attr.values.push_back(v.whole);
    }
    out.push_back(std::move(attr));
  }
  return out;
}

namespace {

Result<SignerInfoView> parse_signer_info(der::Tlv si) {
  SignerInfoView v;
  v.whole = si.whole;
  der::Reader r(si.content);
  ASSIGN_OR_RETURN(der::Tlv version, r.expect(der::kInteger, "SignerInfo version"));
  (void)version;
  ASSIGN_OR_RETURN(der::Tlv ias, r.expect(der::kSequence, "issuerAndSerialNumber"));
  der::Reader ir(ias.content);
  ASSIGN_OR_RETURN(der::Tlv issuer, ir.expect(der::kSequence, "issuer"));
  ASSIGN_OR_RETURN(der::Tlv serial, ir.expect(der::kInteger, "serialNumber"));
  v.issuer = issuer.whole;
  v.serial = serial.whole;
  ASSIGN_OR_RETURN(der::Tlv dalg, r.expect(der::kSequence, "digestAlgorithm"));
  der::Reader dr(dalg.content);
  ASSIGN_OR_RETURN(der::Tlv doid, dr.expect(der::kOid, "digestAlgorithm OID"));
  v.digest_alg = doid.content;
  if (r.peek_tag() == der::context(0, true)) {
    ASSIGN_OR_RETURN(der::Tlv aa, r.next("authenticatedAttributes"));
    v.auth_attrs = aa.whole;
  }
  ASSIGN_OR_RETURN(der::Tlv salg, r.expect(der::kSequence, "digestEncryptionAlgorithm"));
  der::Reader sr(salg.content);
  ASSIGN_OR_RETURN(der::Tlv soid, sr.expect(der::kOid, "digestEncryptionAlgorithm OID"));
  v.sig_alg = soid.content;
  ASSIGN_OR_RETURN(der::Tlv sig, r.expect(der::kOctetString, "encryptedDigest"));
  v.signature = sig.content;
  v.before_unauth = ByteSpan(si.content.data(), static_cast<size_t>(sig.whole.data() + sig.whole.size() - si.content.data()));
  if (!r.empty()) {
    ASSIGN_OR_RETURN(der::Tlv ua, r.expect(der::context(1, true), "unauthenticatedAttributes"));
    v.unauth_attrs = ua.whole;
  }
  if (!r.empty()) return bad_request("ASN.1: trailing bytes in SignerInfo");
  return v;
}

}  // namespace

Result<SignedDataView> parse_signed_data(ByteSpan input, bool require_signer) {
  SignedDataView v;
  ASSIGN_OR_RETURN(der::Tlv ci, der::parse_one(input, "ContentInfo"));
  if (ci.tag != der::kSequence) return bad_request("ASN.1: ContentInfo is not a SEQUENCE");
  der::Reader cr(ci.content);
  ASSIGN_OR_RETURN(der::Tlv ct, cr.expect(der::kOid, "ContentInfo contentType"));
  if (!der::equal(ct.content, der::oid_content(oid::kSignedData))) return bad_request("signature is not PKCS#7 SignedData");
  ASSIGN_OR_RETURN(der::Tlv explicit0, cr.expect(der::context(0, true), "ContentInfo content"));
  ASSIGN_OR_RETURN(der::Tlv sd, der::parse_one(explicit0.content, "SignedData"));
  if (sd.tag != der::kSequence) return bad_request("ASN.1: SignedData is not a SEQUENCE");
  der::Reader r(sd.content);
  ASSIGN_OR_RETURN(der::Tlv version, r.expect(der::kInteger, "SignedData version"));
  (void)version;
  ASSIGN_OR_RETURN(der::Tlv algs, r.expect(der::kSet, "digestAlgorithms"));
  (void)algs;
  ASSIGN_OR_RETURN(der::Tlv eci, r.expect(der::kSequence, "contentInfo"));
  der::Reader er(eci.content);
  ASSIGN_OR_RETURN(der::Tlv etype, er.expect(der::kOid, "contentInfo contentType"));
  v.content_type = etype.content;
  if (!er.empty()) {
    ASSIGN_OR_RETURN(der::Tlv e0, er.expect(der::context(0, true), "contentInfo content"));
    ASSIGN_OR_RETURN(der::Tlv inner, der::parse_one(e0.content, "encapsulated content"));
    v.content = inner.whole;
  }
  if (r.peek_tag() == der::context(0, true)) {
    ASSIGN_OR_RETURN(der::Tlv certs, r.next("certificates"));
    der::Reader xr(certs.content);
    while (!xr.empty()) {
      ASSIGN_OR_RETURN(der::Tlv c, xr.next("certificate"));
      v.certificates.push_back(c.whole);
    }
  }
  if (r.peek_tag() == der::context(1, true)) {
    ASSIGN_OR_RETURN(der::Tlv crls, r.next("crls"));
    (void)crls;
  }
  ASSIGN_OR_RETURN(der::Tlv sis, r.expect(der::kSet, "signerInfos"));
  if (!r.empty()) return bad_request("ASN.1: trailing bytes in SignedData");
  v.before_signers = ByteSpan(sd.content.data(), static_cast<size_t>(sis.whole.data() - sd.content.data()));
  der::Reader sr(sis.content);
  while (!sr.empty()) {
    ASSIGN_OR_RETURN(der::Tlv si, sr.expect(der::kSequence, "SignerInfo"));
    ASSIGN_OR_RETURN(SignerInfoView siv, parse_signer_info(si));
    v.signers.push_back(siv);
  }
  if (require_signer && v.signers.empty()) return bad_request("SignedData has no SignerInfo");
  return v;
}

Result<Bytes> add_unsigned_attribute(ByteSpan signed_data, const char* attr_oid, ByteSpan value_der) {
  ASSIGN_OR_RETURN(SignedDataView sd, parse_signed_data(signed_data));
  const SignerInfoView& si = sd.signers[0];
  const Bytes want = der::oid_content(attr_oid);
  std::vector<Bytes> attrs;
  bool merged = false;
  if (!si.unauth_attrs.empty()) {
    ASSIGN_OR_RETURN(std::vector<Attribute> existing, parse_attributes(si.unauth_attrs));
    for (const auto& a : existing) {
      if (!merged && der::equal(a.oid, want)) {
        std::vector<Bytes> values;
        for (auto v : a.values) values.emplace_back(v.begin(), v.end());
        values.emplace_back(value_der.begin(), value_der.end());
        attrs.push_back(der::seq({der::oid(attr_oid), der::set_of(values)}));
        merged = true;
      } else {
        attrs.emplace_back(a.whole.begin(), a.whole.end());
      }
    }
  }
  if (!merged) attrs.push_back(attribute(attr_oid, value_der));
  Bytes unauth = der::set_of(attrs);
  unauth[0] = der::context(1, true);  // [1] IMPLICIT SET OF Attribute
  Bytes signer = der::tlv(der::kSequence, der::cat({si.before_unauth, unauth}));
  Bytes signers = signer;
  for (size_t i = 1; i < sd.signers.size(); ++i)
    signers.insert(signers.end(), sd.signers[i].whole.begin(), sd.signers[i].whole.end());
  Bytes body = der::tlv(der::kSequence, der::cat({sd.before_signers, der::tlv(der::kSet, signers)}));
  return der::seq({der::oid(oid::kSignedData), der::tlv(der::context(0, true), body)});
}

}  // namespace p11relay::authenticode
