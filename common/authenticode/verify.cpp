#include "common/authenticode/verify.h"

#include "common/authenticode/der.h"
#include "common/authenticode/pe_digest.h"
#include "common/authenticode/pe_write.h"
#include "common/authenticode/signed_data.h"
#include "common/openssl_ptr.h"
#include "common/x509.h"

#include <openssl/x509.h>

namespace p11relay::authenticode {

using der::ByteSpan;

namespace {

struct SpcParsed {
  HashAlg alg;
  Bytes digest;
  std::optional<HashAlg> page_alg;
  Bytes page_hashes;
};

// The DigestInfo of any SpcIndirectDataContent (§9.3): its algorithm and digest.
Result<std::pair<HashAlg, Bytes>> spc_digest_info(ByteSpan spc_whole) {
  ASSIGN_OR_RETURN(der::Tlv spc, der::parse_one(spc_whole, "SpcIndirectDataContent"));
  der::Reader r(spc.content);
  ASSIGN_OR_RETURN(der::Tlv data, r.expect(der::kSequence, "SpcAttributeTypeAndOptionalValue"));
  (void)data;
  ASSIGN_OR_RETURN(der::Tlv di, r.expect(der::kSequence, "DigestInfo"));
  der::Reader dr(di.content);
  ASSIGN_OR_RETURN(der::Tlv alg, dr.expect(der::kSequence, "DigestInfo algorithm"));
  der::Reader ar(alg.content);
  ASSIGN_OR_RETURN(der::Tlv alg_oid, ar.expect(der::kOid, "DigestInfo algorithm OID"));
  auto h = hash_by_oid_content(alg_oid.content);
  if (!h) return bad_request("unknown digest algorithm in SpcIndirectDataContent");
  ASSIGN_OR_RETURN(der::Tlv digest, dr.expect(der::kOctetString, "DigestInfo digest"));
  return std::pair<HashAlg, Bytes>(*h, Bytes(digest.content.begin(), digest.content.end()));
}

// Reads a PE's SpcIndirectDataContent (§9.3): the DigestInfo and, if present, the page-hash moniker.
Result<SpcParsed> parse_spc(ByteSpan spc_whole) {
  SpcParsed out;
  ASSIGN_OR_RETURN(auto di, spc_digest_info(spc_whole));
  out.alg = di.first;
  out.digest = std::move(di.second);
  ASSIGN_OR_RETURN(der::Tlv spc, der::parse_one(spc_whole, "SpcIndirectDataContent"));
  der::Reader r(spc.content);
  ASSIGN_OR_RETURN(der::Tlv data, r.expect(der::kSequence, "SpcAttributeTypeAndOptionalValue"));
  der::Reader pr(data.content);
  ASSIGN_OR_RETURN(der::Tlv type, pr.expect(der::kOid, "SpcAttributeTypeAndOptionalValue type"));
  if (!der::equal(type.content, der::oid_content(oid::kSpcPeImageData)))
    return bad_request("signature is not for a PE image (SpcPeImageData expected)");
  if (pr.empty()) return out;
  ASSIGN_OR_RETURN(der::Tlv pid, pr.expect(der::kSequence, "SpcPeImageData"));
  der::Reader ir(pid.content);
  if (ir.peek_tag() == der::kBitString) {
    ASSIGN_OR_RETURN(der::Tlv flags, ir.next("SpcPeImageData flags"));
    (void)flags;
  }
  if (ir.empty()) return out;
  ASSIGN_OR_RETURN(der::Tlv file0, ir.expect(der::context(0, true), "SpcPeImageData file"));
  ASSIGN_OR_RETURN(der::Tlv link, der::parse_one(file0.content, "SpcLink"));
  if (link.tag != der::context(1, true)) return out;  // not a moniker: no page hashes
  der::Reader mr(link.content);
  ASSIGN_OR_RETURN(der::Tlv class_id, mr.expect(der::kOctetString, "SpcSerializedObject classId"));
  (void)class_id;
  ASSIGN_OR_RETURN(der::Tlv ser, mr.expect(der::kOctetString, "SpcSerializedObject serializedData"));
  ASSIGN_OR_RETURN(der::Tlv set, der::parse_one(ser.content, "page hash set"));
  der::Reader sr(set.content);
  ASSIGN_OR_RETURN(der::Tlv entry, sr.expect(der::kSequence, "page hash attribute"));
  der::Reader er(entry.content);
  ASSIGN_OR_RETURN(der::Tlv ph_oid, er.expect(der::kOid, "page hash type"));
  if (der::equal(ph_oid.content, der::oid_content(oid::kPageHashesV1))) {
    out.page_alg = HashAlg::sha1;
  } else if (der::equal(ph_oid.content, der::oid_content(oid::kPageHashesV2))) {
    out.page_alg = HashAlg::sha256;
  } else {
    return bad_request("unknown page hash type");
  }
  ASSIGN_OR_RETURN(der::Tlv vals, er.expect(der::kSet, "page hash values"));
  der::Reader vr(vals.content);
  ASSIGN_OR_RETURN(der::Tlv hashes, vr.expect(der::kOctetString, "page hashes"));
  out.page_hashes.assign(hashes.content.begin(), hashes.content.end());
  return out;
}


// What every signature check shares, for any encapsulated content: the contentType attribute names the
// content's type, messageDigest covers the content's contents (without its tag and length), the signature
// over the signed attributes with the embedded signing certificate; the signer's names and the timestamp
// flag go into `rep`. `what` names the content in errors.
Status check_signer_info(const SignedDataView& sd, const char* content_type, const char* what, SignatureReport& rep) {
  if (sd.signers.empty()) return bad_request("signature has no SignerInfo");
  const SignerInfoView& si = sd.signers[0];
  auto sig_hash = hash_by_oid_content(si.digest_alg);
  if (!sig_hash) return bad_request("unknown SignerInfo digest algorithm");
  if (si.auth_attrs.empty()) return bad_request("signature has no authenticated attributes");
  ASSIGN_OR_RETURN(std::vector<Attribute> attrs, parse_attributes(si.auth_attrs));
  ASSIGN_OR_RETURN(der::Tlv content, der::parse_one(sd.content, what));
  bool have_md = false, have_ct = false;
  for (const auto& a : attrs) {
    if (a.values.size() != 1) continue;
    if (der::equal(a.oid, der::oid_content(oid::kMessageDigest))) {
      ASSIGN_OR_RETURN(der::Tlv md, der::parse_one(a.values[0], "messageDigest"));
      if (!der::equal(md.content, hash(*sig_hash, content.content)))
        return bad_request(std::string("messageDigest does not match ") + what);
      have_md = true;
    } else if (der::equal(a.oid, der::oid_content(oid::kContentType))) {
      if (!der::equal(a.values[0], der::oid(content_type)))
        return bad_request(std::string("contentType attribute is not ") + what);
      have_ct = true;
    }
  }
  if (!have_md || !have_ct) return bad_request("signature lacks the messageDigest or contentType attribute");

  // The signature over the attributes, re-tagged as SET (RFC 5652 §5.4), with the signer's key.
  ASSIGN_OR_RETURN(X509_ptr cert, find_signer_cert(sd, si));
  EVP_PKEY* pub = X509_get0_pubkey(cert.get());
  if (!pub) return bad_request("signing certificate has no usable public key");
  Bytes signed_attrs(si.auth_attrs.begin(), si.auth_attrs.end());
  signed_attrs[0] = der::kSet;
  EVP_MD_CTX_ptr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, evp_md(*sig_hash), nullptr, pub) != 1)
    return internal_error("EVP_DigestVerifyInit: " + openssl_error_string());
  if (EVP_DigestVerify(ctx.get(), si.signature.data(), si.signature.size(), signed_attrs.data(), signed_attrs.size()) != 1) {
    openssl_error_string();
    return bad_request("signature over the signed attributes does not verify");
  }
  rep.signer_subject = name_rfc2253(X509_get_subject_name(cert.get()));
  rep.signer_issuer = name_rfc2253(X509_get_issuer_name(cert.get()));

  if (!si.unauth_attrs.empty()) {
    ASSIGN_OR_RETURN(std::vector<Attribute> un, parse_attributes(si.unauth_attrs));
    for (const auto& a : un)
      if (der::equal(a.oid, der::oid_content(oid::kRfc3161Timestamp))) rep.timestamped = true;
  }
  return {};
}

// The SignedData in `signed_data`, if its content is a non-empty `content_type` (named `what` in the error).
Result<SignedDataView> signed_content(ByteSpan signed_data, const char* content_type, const char* what) {
  ASSIGN_OR_RETURN(SignedDataView sd, parse_signed_data(signed_data));
  if (!der::equal(sd.content_type, der::oid_content(content_type)) || sd.content.empty())
    return bad_request(std::string("signature content is not ") + what);
  return sd;
}

// `hashed`: the file already digested (verify_pe's pass); reused when it has the signature's
// algorithm and no page hashes are needed, so a 100 MB file is not hashed twice.
Result<SignatureReport> verify_one(const PeDigestFn& digest, ByteSpan signed_data, int nesting, const PeInfo* hashed) {
  SignatureReport rep;
  rep.nesting = nesting;
  ASSIGN_OR_RETURN(SignedDataView sd, signed_content(signed_data, oid::kSpcIndirectData, "SpcIndirectDataContent"));
  ASSIGN_OR_RETURN(SpcParsed spc, parse_spc(sd.content));
  rep.alg = spc.alg;
  rep.image_digest = spc.digest;

  // 1. The image digest (and page hashes) recomputed from the file.
  PeDigestOptions opt;
  opt.alg = spc.alg;
  opt.keep_cert_table = false;
  opt.page_hashes = spc.page_alg.has_value();
  if (spc.page_alg && page_hash_alg_for(spc.alg) != spc.page_alg) {
    // A signature may pair e.g. a SHA-384 image digest with SHA-256 page hashes (osslsigncode does);
    // compute the page hashes separately with their own algorithm.
    opt.page_hashes = false;
  }
  PeInfo pe;
  if (hashed && hashed->alg == opt.alg && !opt.page_hashes) {
    pe.image_digest = hashed->image_digest;
  } else {
    ASSIGN_OR_RETURN(pe, digest(opt));
  }
  if (pe.image_digest != spc.digest)
    return bad_request("image digest mismatch: file " + to_hex(pe.image_digest) + ", signature " + to_hex(spc.digest));
  if (spc.page_alg) {
    rep.page_hashes = true;
    Bytes computed = pe.page_hashes;
    if (!opt.page_hashes) {
      PeDigestOptions po;
      po.alg = *spc.page_alg;
      po.page_hashes = true;
      po.keep_cert_table = false;
      ASSIGN_OR_RETURN(PeInfo pp, digest(po));
      computed = pp.page_hashes;
    }
    if (computed != spc.page_hashes) return bad_request("page hash mismatch");
  }

  RETURN_IF_ERROR(check_signer_info(sd, oid::kSpcIndirectData, "SpcIndirectDataContent", rep));
  return rep;
}

}  // namespace

Result<X509_ptr> find_signer_cert(const SignedDataView& sd, const SignerInfoView& si) {
  for (auto c : sd.certificates) {
    const unsigned char* p = c.data();
    X509_ptr cert(d2i_X509(nullptr, &p, static_cast<long>(c.size())));
    if (!cert) continue;
    unsigned char* ib = nullptr;
    const int il = i2d_X509_NAME(X509_get_issuer_name(cert.get()), &ib);
    OpenSSL_buffer<unsigned char> issuer(ib);
    unsigned char* sb = nullptr;
    const int sl = i2d_ASN1_INTEGER(X509_get0_serialNumber(cert.get()), &sb);
    OpenSSL_buffer<unsigned char> serial(sb);
    if (il > 0 && sl > 0 && der::equal(ByteSpan(ib, static_cast<size_t>(il)), si.issuer) &&
        der::equal(ByteSpan(sb, static_cast<size_t>(sl)), si.serial))
      return cert;
  }
  openssl_error_string();
  return bad_request("the signing certificate is not in the signature");
}


Result<SignatureReport> verify_signer(ByteSpan signed_data, int nesting) {
  SignatureReport rep;
  rep.nesting = nesting;
  ASSIGN_OR_RETURN(SignedDataView sd, signed_content(signed_data, oid::kSpcIndirectData, "SpcIndirectDataContent"));
  ASSIGN_OR_RETURN(auto di, spc_digest_info(sd.content));
  rep.alg = di.first;
  rep.image_digest = std::move(di.second);
  RETURN_IF_ERROR(check_signer_info(sd, oid::kSpcIndirectData, "SpcIndirectDataContent", rep));
  return rep;
}

Result<SignatureReport> verify_content_signer(ByteSpan signed_data, const char* content_type, const char* what,
                                              int nesting) {
  SignatureReport rep;
  rep.nesting = nesting;
  ASSIGN_OR_RETURN(SignedDataView sd, signed_content(signed_data, content_type, what));
  RETURN_IF_ERROR(check_signer_info(sd, content_type, what, rep));
  // Checked there: a SignerInfo with a known digest algorithm, whose messageDigest is the content's digest.
  rep.alg = *hash_by_oid_content(sd.signers[0].digest_alg);
  ASSIGN_OR_RETURN(der::Tlv content, der::parse_one(sd.content, what));
  rep.image_digest = hash(rep.alg, content.content);
  return rep;
}

Result<std::vector<Bytes>> nested_signatures(ByteSpan signed_data) {
  std::vector<Bytes> out;
  ASSIGN_OR_RETURN(SignedDataView sd, parse_signed_data(signed_data));
  if (sd.signers.empty() || sd.signers[0].unauth_attrs.empty()) return out;
  ASSIGN_OR_RETURN(std::vector<Attribute> un, parse_attributes(sd.signers[0].unauth_attrs));
  for (const auto& a : un)
    if (der::equal(a.oid, der::oid_content(oid::kNestedSignature)))
      for (auto v : a.values) out.emplace_back(v.begin(), v.end());
  return out;
}

Result<VerifyReport> verify_with_nested(ByteSpan signed_data, const std::function<Result<Bytes>(HashAlg)>& digest_of,
                                        const std::string& what) {
  VerifyReport rep;
  rep.cert_table.assign(signed_data.begin(), signed_data.end());
  ASSIGN_OR_RETURN(std::vector<Bytes> all, nested_signatures(signed_data));
  all.insert(all.begin(), rep.cert_table);
  for (size_t i = 0; i < all.size(); ++i) {
    ASSIGN_OR_RETURN(SignatureReport r, verify_signer(all[i], i == 0 ? 0 : 1));
    ASSIGN_OR_RETURN(Bytes digest, digest_of(r.alg));
    if (digest != r.image_digest)
      return bad_request(what + " digest is not the one its " + (i == 0 ? "" : "nested ") +
                         "signature carries (changed after signing): file " + to_hex(digest) + ", signature " +
                         to_hex(r.image_digest));
    rep.signatures.push_back(std::move(r));
  }
  return rep;
}

Result<SignatureReport> verify_signed_data(ByteSpan file, ByteSpan signed_data, int nesting) {
  return verify_one([file](const PeDigestOptions& o) { return pe_digest(file, o); }, signed_data, nesting, nullptr);
}

Result<VerifyReport> verify_pe(ByteSpan file) {
  return verify_pe([file](const PeDigestOptions& o) { return pe_digest(file, o); });
}

Result<VerifyReport> verify_pe_file(const std::string& path) {
  return verify_pe([&path](const PeDigestOptions& o) { return pe_digest_file(path, o); });
}

Result<VerifyReport> verify_pe(const PeDigestFn& digest) {
  PeDigestOptions opt;
  opt.keep_cert_table = true;
  ASSIGN_OR_RETURN(PeInfo pe, digest(opt));
  VerifyReport rep;
  rep.stored_checksum = pe.stored_checksum;
  rep.computed_checksum = pe.file_checksum;  // summed in the digest's pass
  if (!pe.signed_()) return bad_request("file is not signed");
  ASSIGN_OR_RETURN(std::vector<Bytes> sigs, parse_cert_table(pe.cert_table));
  rep.cert_table = pe.cert_table;
  for (const auto& sig : sigs) {
    ASSIGN_OR_RETURN(SignatureReport r, verify_one(digest, sig, 0, &pe));
    rep.signatures.push_back(std::move(r));
    // Nested signatures (osslsigncode -nest): unsigned attribute 1.3.6.1.4.1.311.2.4.1 of the primary.
    ASSIGN_OR_RETURN(std::vector<Bytes> nested, nested_signatures(sig));
    for (const auto& v : nested) {
      ASSIGN_OR_RETURN(SignatureReport nr, verify_one(digest, v, 1, &pe));
      rep.signatures.push_back(std::move(nr));
    }
  }
  return rep;
}

}  // namespace p11relay::authenticode
