#include "pkcs11-shim/object_store.h"

#include "common/digest.h"
#include "common/x509.h"
#include "pkcs11-shim/mechanisms.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>

namespace p11relay::shim {

Bytes attr_bool(bool v) { return Bytes{static_cast<std::uint8_t>(v ? CK_TRUE : CK_FALSE)}; }

Bytes attr_ulong(CK_ULONG v) {
  Bytes b(sizeof v);
  std::memcpy(b.data(), &v, sizeof v);
  return b;
}

namespace {

Bytes attr_string(const std::string& s) { return Bytes(s.begin(), s.end()); }

Bytes attr_ulongs(const std::vector<CK_ULONG>& v) {
  Bytes b(v.size() * sizeof(CK_ULONG));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

template <typename T, typename F>
Bytes i2d_bytes(T* obj, F i2d) {
  if (!obj) return {};
  int len = i2d(obj, nullptr);
  if (len <= 0) return {};
  Bytes out(static_cast<size_t>(len));
  unsigned char* p = out.data();
  i2d(obj, &p);
  return out;
}

Bytes bn_param(EVP_PKEY* key, const char* name) {
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &raw) != 1) return {};
  BIGNUM_ptr bn(raw);
  Bytes out(static_cast<size_t>(BN_num_bytes(bn.get())));
  BN_bn2bin(bn.get(), out.data());
  return out;
}

// DER OCTET STRING around the uncompressed point: CKA_EC_POINT (v2.40 §2.3.3).
Bytes ec_point(EVP_PKEY* key) {
  size_t len = 0;
  if (EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, nullptr, 0, &len) != 1) return {};
  Bytes point(len);
  if (EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point.data(), len, &len) != 1)
    return {};
  point.resize(len);
  Bytes out{0x04};
  if (len < 0x80) {
    out.push_back(static_cast<std::uint8_t>(len));
  } else if (len < 0x100) {
    out.push_back(0x81);
    out.push_back(static_cast<std::uint8_t>(len));
  } else {
    out.push_back(0x82);
    out.push_back(static_cast<std::uint8_t>(len >> 8));
    out.push_back(static_cast<std::uint8_t>(len & 0xff));
  }
  out.insert(out.end(), point.begin(), point.end());
  return out;
}

// DER OBJECT IDENTIFIER of the named curve: CKA_EC_PARAMS.
Bytes ec_params(EVP_PKEY* key) {
  char group[80] = {0};
  size_t len = 0;
  if (EVP_PKEY_get_group_name(key, group, sizeof group, &len) != 1) return {};
  int nid = OBJ_sn2nid(group);
  if (nid == NID_undef) nid = OBJ_txt2nid(group);
  if (nid == NID_undef) nid = EC_curve_nist2nid(group);
  if (nid == NID_undef) return {};
  return i2d_bytes(OBJ_nid2obj(nid), i2d_ASN1_OBJECT);
}

std::string cn_of(X509* cert) {
  char buf[256] = {0};
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, buf, sizeof buf);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

void add_common(Object& o, CK_OBJECT_CLASS cls, bool is_private, const Bytes& id, const std::string& label) {
  o.cls = cls;
  o.is_private = is_private;
  o.attrs[CKA_CLASS] = attr_ulong(cls);
  o.attrs[CKA_TOKEN] = attr_bool(true);
  o.attrs[CKA_PRIVATE] = attr_bool(is_private);
  o.attrs[CKA_MODIFIABLE] = attr_bool(false);
  o.attrs[CKA_COPYABLE] = attr_bool(false);
  o.attrs[CKA_DESTROYABLE] = attr_bool(false);
  o.attrs[CKA_LABEL] = attr_string(label);
  o.attrs[CKA_ID] = id;
}

void add_key_common(Object& o, const KeyInfo& k, const Bytes& subject, const Bytes& spki) {
  o.attrs[CKA_KEY_TYPE] = attr_ulong(k.key_type);
  o.attrs[CKA_START_DATE] = {};
  o.attrs[CKA_END_DATE] = {};
  o.attrs[CKA_DERIVE] = attr_bool(false);
  o.attrs[CKA_LOCAL] = attr_bool(false);
  o.attrs[CKA_KEY_GEN_MECHANISM] = attr_ulong(CK_UNAVAILABLE_INFORMATION);
  o.attrs[CKA_ALLOWED_MECHANISMS] = attr_ulongs(k.mechanisms);
  o.attrs[CKA_SUBJECT] = subject;
  o.attrs[CKA_PUBLIC_KEY_INFO] = spki;
  EVP_PKEY* pk = k.public_key.get();
  if (k.key_type == CKK_RSA) {
    o.attrs[CKA_MODULUS] = bn_param(pk, OSSL_PKEY_PARAM_RSA_N);
    o.attrs[CKA_PUBLIC_EXPONENT] = bn_param(pk, OSSL_PKEY_PARAM_RSA_E);
    o.attrs[CKA_MODULUS_BITS] = attr_ulong(static_cast<CK_ULONG>(k.bits));
  } else {
    o.attrs[CKA_EC_PARAMS] = ec_params(pk);
    o.attrs[CKA_EC_POINT] = ec_point(pk);
  }
}

// What every object of one key is built from.
struct KeyContext {
  const relay::KeyDescription& desc;
  std::shared_ptr<const KeyInfo> key;
  std::string base;   // prefix of the identities its object handles are allocated for
  std::string label;
  Bytes subject;      // the leaf certificate's, empty without certificates
};

// The private and the public key object share everything but their usage flags.
std::shared_ptr<Object> key_object(const KeyContext& k, CK_OBJECT_CLASS cls, IdAllocator& ids) {
  bool is_private = cls == CKO_PRIVATE_KEY;
  auto o = std::make_shared<Object>();
  o->handle = ids.object_handle(k.base + (is_private ? "private" : "public"));
  o->key = k.key;
  add_common(*o, cls, is_private, k.desc.id, k.label);
  add_key_common(*o, *k.key, k.subject, k.desc.spki);
  return o;
}

std::shared_ptr<Object> private_key_object(const KeyContext& k, IdAllocator& ids) {
  auto priv = key_object(k, CKO_PRIVATE_KEY, ids);
  priv->attrs[CKA_SENSITIVE] = attr_bool(true);
  priv->attrs[CKA_ALWAYS_SENSITIVE] = attr_bool(true);
  priv->attrs[CKA_EXTRACTABLE] = attr_bool(false);
  priv->attrs[CKA_NEVER_EXTRACTABLE] = attr_bool(true);
  priv->attrs[CKA_SIGN] = attr_bool(true);
  priv->attrs[CKA_SIGN_RECOVER] = attr_bool(false);
  priv->attrs[CKA_DECRYPT] = attr_bool(false);
  priv->attrs[CKA_UNWRAP] = attr_bool(false);
  priv->attrs[CKA_WRAP_WITH_TRUSTED] = attr_bool(false);
  priv->attrs[CKA_ALWAYS_AUTHENTICATE] = attr_bool(false);
  if (k.key->key_type == CKK_RSA) {
    for (auto a : {CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2, CKA_EXPONENT_1, CKA_EXPONENT_2, CKA_COEFFICIENT})
      priv->sensitive.insert(a);
  } else {
    priv->sensitive.insert(CKA_VALUE);
  }
  return priv;
}

std::shared_ptr<Object> public_key_object(const KeyContext& k, IdAllocator& ids) {
  auto pub = key_object(k, CKO_PUBLIC_KEY, ids);
  pub->attrs[CKA_VERIFY] = attr_bool(true);
  pub->attrs[CKA_VERIFY_RECOVER] = attr_bool(false);
  pub->attrs[CKA_ENCRYPT] = attr_bool(false);
  pub->attrs[CKA_WRAP] = attr_bool(false);
  pub->attrs[CKA_TRUSTED] = attr_bool(false);
  return pub;
}

// The attributes an X.509 certificate object has beyond add_common's; the leaf is the token user's, the
// others belong to authorities.
void add_certificate_attributes(Object& cert, X509* x, const Bytes& der, bool leaf) {
  cert.attrs[CKA_CERTIFICATE_TYPE] = attr_ulong(CKC_X_509);
  cert.attrs[CKA_TRUSTED] = attr_bool(false);
  cert.attrs[CKA_CERTIFICATE_CATEGORY] = attr_ulong(leaf ? 1 /* token user */ : 2 /* authority */);
  Bytes check = hash(HashAlg::sha1, der);
  check.resize(3);
  cert.attrs[CKA_CHECK_VALUE] = check;
  cert.attrs[CKA_START_DATE] = {};
  cert.attrs[CKA_END_DATE] = {};
  cert.attrs[CKA_PUBLIC_KEY_INFO] = spki_der(x);
  cert.attrs[CKA_VALUE] = der;
  cert.attrs[CKA_SUBJECT] = i2d_bytes(X509_get_subject_name(x), i2d_X509_NAME);
  cert.attrs[CKA_ISSUER] = i2d_bytes(X509_get_issuer_name(x), i2d_X509_NAME);
  cert.attrs[CKA_SERIAL_NUMBER] = i2d_bytes(X509_get_serialNumber(x), i2d_ASN1_INTEGER);
  cert.attrs[CKA_URL] = {};
  cert.attrs[CKA_HASH_OF_SUBJECT_PUBLIC_KEY] = {};
  cert.attrs[CKA_HASH_OF_ISSUER_PUBLIC_KEY] = {};
  cert.attrs[CKA_JAVA_MIDP_SECURITY_DOMAIN] = attr_ulong(0);
}

// Certificate `index` of the key's chain (0 is the leaf) onto the token, unless another key of the token
// already put the same chain certificate there.
void add_certificate(TokenView& tok, const KeyContext& k, X509* x, size_t index, IdAllocator& ids) {
  Bytes der = x509_der(x);
  bool leaf = index == 0;
  // Chain certificates are shared by keys of one token: identify them by content, not by key.
  std::string identity =
      leaf ? k.base + "cert" : std::to_string(tok.slot_id) + "/cert/" + to_hex(hash(HashAlg::sha256, der));
  if (!leaf && std::any_of(tok.objects.begin(), tok.objects.end(),
                           [&](const auto& o) { return o->cls == CKO_CERTIFICATE && o->attrs.at(CKA_VALUE) == der; }))
    return;
  auto cert = std::make_shared<Object>();
  cert->handle = ids.object_handle(identity);
  // The leaf shares CKA_ID with its key (how libp11, osslsigncode and Java pair them); chain
  // certificates get their own IDs so they are never mistaken for the key's certificate.
  Bytes id = k.desc.id;
  std::string label = k.label;
  if (!leaf) {
    id = hash(HashAlg::sha1, spki_der(x));
    std::string cn = cn_of(x);
    label = cn.empty() ? k.label + " chain " + std::to_string(index) : cn;
  }
  add_common(*cert, CKO_CERTIFICATE, false, id, label);
  add_certificate_attributes(*cert, x, der, leaf);
  tok.objects.push_back(cert);
}

// The key's certificates that parse, the leaf first; the others are reported and left out.
std::vector<X509_ptr> parse_certificates(const relay::KeyDescription& desc, std::vector<std::string>& warnings) {
  std::vector<X509_ptr> certs;
  for (const auto& der : desc.certificates) {
    auto c = parse_certificate_der(der);
    if (!c.ok()) {
      warnings.push_back("key '" + desc.name + "': a certificate is not DER X.509; skipped");
      continue;
    }
    certs.push_back(std::move(c).value());
  }
  return certs;
}

// The private key, public key and certificate objects of one key, in that order (it decides their handles).
void add_key_objects(TokenView& tok, const relay::KeyDescription& desc, std::shared_ptr<const KeyInfo> key,
                     IdAllocator& ids, std::vector<std::string>& warnings) {
  tok.keys.push_back(key);
  // Certificates first: the subject of the leaf goes onto the key objects too.
  std::vector<X509_ptr> certs = parse_certificates(desc, warnings);
  KeyContext k{desc, std::move(key), std::to_string(tok.slot_id) + "/" + desc.name + "/",
               desc.label.empty() ? desc.name : desc.label,
               certs.empty() ? Bytes{} : i2d_bytes(X509_get_subject_name(certs[0].get()), i2d_X509_NAME)};
  tok.objects.push_back(private_key_object(k, ids));
  tok.objects.push_back(public_key_object(k, ids));
  for (size_t i = 0; i < certs.size(); ++i) add_certificate(tok, k, certs[i].get(), i, ids);
}

// Keys of one token share its slot: the token is made when its first key comes.
TokenView& token_for(std::vector<std::shared_ptr<TokenView>>& tokens, IdAllocator& ids, const relay::TokenDescription& t) {
  CK_SLOT_ID id = ids.slot_id(t);
  for (auto& tok : tokens)
    if (tok->slot_id == id) return *tok;
  auto tok = std::make_shared<TokenView>();
  tok->slot_id = id;
  tok->desc = t;
  tokens.push_back(tok);
  return *tokens.back();
}

}  // namespace

bool KeyInfo::allows(CK_MECHANISM_TYPE m) const {
  return std::find(mechanisms.begin(), mechanisms.end(), m) != mechanisms.end();
}

Result<std::shared_ptr<KeyInfo>> make_key_info(const relay::KeyDescription& desc) {
  auto k = std::make_shared<KeyInfo>();
  k->desc = desc;
  k->version = relay::key_version(desc);
  ASSIGN_OR_RETURN(k->public_key, parse_spki(desc.spki));
  ASSIGN_OR_RETURN(PublicKeyInfo info, describe_public_key(k->public_key.get()));
  k->bits = info.bits;
  k->key_type = info.type == KeyType::rsa ? CKK_RSA : CKK_EC;
  if (info.type == KeyType::rsa) {
    k->signature_size = static_cast<size_t>((info.bits + 7) / 8);
  } else {
    k->signature_size = 2 * static_cast<size_t>((info.bits + 7) / 8);
  }
  // Offer every shim mechanism whose relay mechanism the daemon allows for this key. An empty list
  // (an older daemon) means "whatever fits the key type".
  for (const auto& m : sign_mechanisms()) {
    bool rsa_mech = m.kind != SignKind::ecdsa;
    if (rsa_mech != (info.type == KeyType::rsa)) continue;
    const char* relay = relay_mechanism(m.kind);
    if (!desc.mechanisms.empty() &&
        std::find(desc.mechanisms.begin(), desc.mechanisms.end(), relay) == desc.mechanisms.end())
      continue;
    k->mechanisms.push_back(m.mech);
  }
  return k;
}

CK_SLOT_ID IdAllocator::slot_id(const relay::TokenDescription& t) {
  // Stable across runs and daemon restarts: FNV-1a of the token's identity, kept below 2^31 because
  // some consumers (Java's SunPKCS11 `slot`) read slot IDs as signed 32-bit values.
  std::string identity = t.manufacturer + '\0' + t.model + '\0' + t.serial + '\0' + t.label;
  std::lock_guard<std::mutex> g(mu_);
  if (auto it = slots_.find(identity); it != slots_.end()) return it->second;
  std::uint32_t h = 2166136261u;
  for (unsigned char c : identity) {
    h ^= c;
    h *= 16777619u;
  }
  CK_SLOT_ID id = h & 0x7fffffffu;
  while (used_slots_.count(id)) id = (id + 1) & 0x7fffffffu;
  used_slots_.insert(id);
  slots_[identity] = id;
  return id;
}

CK_OBJECT_HANDLE IdAllocator::object_handle(const std::string& identity) {
  std::lock_guard<std::mutex> g(mu_);
  auto [it, inserted] = handles_.try_emplace(identity, next_handle_);
  if (inserted) ++next_handle_;
  return it->second;
}

std::shared_ptr<const Object> TokenView::object(CK_OBJECT_HANDLE h) const {
  for (const auto& o : objects)
    if (o->handle == h) return o;
  return nullptr;
}

std::vector<CK_MECHANISM_TYPE> TokenView::mechanisms() const {
  std::vector<CK_MECHANISM_TYPE> out;
  for (const auto& k : keys)
    for (auto m : k->mechanisms)
      if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::shared_ptr<TokenView>> build_tokens(const std::vector<relay::KeyDescription>& keys, IdAllocator& ids,
                                                 std::vector<std::string>& warnings) {
  std::vector<std::shared_ptr<TokenView>> tokens;
  for (const auto& desc : keys) {
    auto ki = make_key_info(desc);
    if (!ki.ok()) {
      warnings.push_back("key '" + desc.name + "' skipped: " + ki.error().message);
      continue;
    }
    add_key_objects(token_for(tokens, ids, desc.token), desc, *ki, ids, warnings);
  }
  ERR_clear_error();
  return tokens;
}

CK_RV Object::get_attributes(CK_ATTRIBUTE_PTR templ, CK_ULONG count) const {
  // v2.40 §5.7 C_GetAttributeValue: every attribute is processed; the return value reports the
  // problems (sensitive, unknown, buffer too small) and ulValueLen says which.
  bool sensitive_seen = false, invalid_seen = false, small_seen = false;
  for (CK_ULONG i = 0; i < count; ++i) {
    CK_ATTRIBUTE& a = templ[i];
    if (sensitive.count(a.type)) {
      a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      sensitive_seen = true;
      continue;
    }
    auto it = attrs.find(a.type);
    if (it == attrs.end()) {
      a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      invalid_seen = true;
      continue;
    }
    const Bytes& v = it->second;
    if (a.pValue == nullptr) {
      a.ulValueLen = v.size();
    } else if (a.ulValueLen >= v.size()) {
      if (!v.empty()) std::memcpy(a.pValue, v.data(), v.size());
      a.ulValueLen = v.size();
    } else {
      a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
      small_seen = true;
    }
  }
  if (sensitive_seen) return CKR_ATTRIBUTE_SENSITIVE;
  if (invalid_seen) return CKR_ATTRIBUTE_TYPE_INVALID;
  if (small_seen) return CKR_BUFFER_TOO_SMALL;
  return CKR_OK;
}

bool Object::matches(const CK_ATTRIBUTE* templ, CK_ULONG count) const {
  for (CK_ULONG i = 0; i < count; ++i) {
    const CK_ATTRIBUTE& a = templ[i];
    if (sensitive.count(a.type)) return false;
    auto it = attrs.find(a.type);
    if (it == attrs.end()) return false;
    if (it->second.size() != a.ulValueLen) return false;
    if (a.ulValueLen && (a.pValue == nullptr || std::memcmp(it->second.data(), a.pValue, a.ulValueLen) != 0))
      return false;
  }
  return true;
}

}  // namespace p11relay::shim
