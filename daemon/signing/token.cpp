#include "daemon/signing/token.h"

#include "common/mechanism.h"
#include "common/suggest.h"
#include "common/text.h"

#include <libp11.h>
#include <openssl/err.h>
#include <spdlog/spdlog.h>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

namespace p11relay::daemon {

const char* token_state_name(TokenState s) {
  switch (s) {
    case TokenState::starting: return "starting";
    case TokenState::ready: return "ready";
    case TokenState::recovering: return "recovering";
    case TokenState::failed: return "failed";
  }
  return "unknown";
}

namespace {

std::string ckr_hex(CK_RV rv) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%08lx", static_cast<unsigned long>(rv));
  return buf;
}

std::string trim_padded(const unsigned char* s, size_t n) {
  std::string out(reinterpret_cast<const char*>(s), n);
  while (!out.empty() && (out.back() == ' ' || out.back() == '\0')) out.pop_back();
  return out;
}

// One attribute's value; empty when the object does not have it (or it is sensitive or absurdly long).
Bytes get_attribute(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type) {
  CK_ATTRIBUTE a{type, nullptr, 0};
  if (fl->C_GetAttributeValue(s, h, &a, 1) != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
      a.ulValueLen > 65536)
    return {};
  Bytes v(a.ulValueLen);
  a.pValue = v.data();
  if (fl->C_GetAttributeValue(s, h, &a, 1) != CKR_OK) return {};
  v.resize(a.ulValueLen);
  return v;
}

// Finds the first object of class `cls` with this CKA_ID and this CKA_LABEL (each only when not empty).
// `found` is CK_INVALID_HANDLE when there is none or the search failed (the CK_RV says which).
CK_RV find_object(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const Bytes& id,
                  const std::string& label, CK_OBJECT_HANDLE& found) {
  std::vector<CK_ATTRIBUTE> tmpl = {{CKA_CLASS, &cls, sizeof cls}};
  if (!id.empty()) tmpl.push_back({CKA_ID, const_cast<uint8_t*>(id.data()), id.size()});
  if (!label.empty()) tmpl.push_back({CKA_LABEL, const_cast<char*>(label.data()), label.size()});
  found = CK_INVALID_HANDLE;
  CK_RV rv = fl->C_FindObjectsInit(s, tmpl.data(), tmpl.size());
  if (rv != CKR_OK) return rv;
  CK_ULONG n = 0;
  rv = fl->C_FindObjects(s, &found, 1, &n);
  fl->C_FindObjectsFinal(s);
  if (rv != CKR_OK || n != 1) found = CK_INVALID_HANDLE;
  return rv;
}

// A key's public half read through the function list: from its public-key object, else (RSA) from the
// private-key object's public attributes. (libp11 0.4.12's PKCS11_get_public_key leaks the objects it
// makes for this, and with them the slot list: LeakSanitizer, upstream libp11 PR #566.)
// The first slot whose initialized token matches tokens.NAME's label, serial, manufacturer and model.
PKCS11_SLOT* match_slot(PKCS11_SLOT* slots, unsigned n, const TokenConfig& c) {
  auto same = [](const std::string& want, const char* have) { return want.empty() || want == (have ? have : ""); };
  for (unsigned i = 0; i < n; ++i) {
    const PKCS11_TOKEN* t = slots[i].token;
    if (t && t->initialized && same(c.label, t->label) && same(c.serial, t->serialnr) &&
        same(c.manufacturer, t->manufacturer) && same(c.model, t->model))
      return &slots[i];
  }
  return nullptr;
}

// What an operator needs when tokens.NAME.label (or serial) matches nothing: the tokens the module does see.
std::string present_tokens(PKCS11_SLOT* slots, unsigned n, const std::string& wanted_label) {
  std::string out;
  std::set<std::string> labels;
  for (unsigned i = 0; i < n; ++i) {
    const PKCS11_TOKEN* t = slots[i].token;
    if (!t || !t->initialized) continue;
    std::string label = t->label ? t->label : "";
    labels.insert(label);
    // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict for "literal" + std::string&&.
    if (!out.empty()) out.append(", ");
    out.append("'").append(log_escape(label)).append("' (serial '");
    out.append(log_escape(t->serialnr ? t->serialnr : "")).append("')");
  }
  if (out.empty()) return "the module sees no initialized token (is it plugged in? pkcs11-tool --module ... -L)";
  return "tokens present: " + out + did_you_mean(wanted_label, labels) +
         "; set tokens.NAME.label (and serial) to one of them";
}

EVP_PKEY_ptr read_public_key(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE s, const Bytes& id, const std::string& label) {
  // The private key as signing finds it (CKA_ID and label); its public key by CKA_ID alone (its label may
  // differ), or by label for a key without an ID.
  CK_OBJECT_HANDLE priv, pub;
  find_object(fl, s, CKO_PRIVATE_KEY, id, label, priv);
  find_object(fl, s, CKO_PUBLIC_KEY, id, id.empty() ? label : std::string(), pub);
  for (CK_OBJECT_HANDLE h : {pub, priv}) {
    if (h == CK_INVALID_HANDLE) continue;
    Bytes type = get_attribute(fl, s, h, CKA_KEY_TYPE);
    if (type.size() != sizeof(CK_KEY_TYPE)) continue;
    CK_KEY_TYPE kt;
    std::memcpy(&kt, type.data(), sizeof kt);
    Result<EVP_PKEY_ptr> key = bad_request("unsupported key type");
    if (kt == CKK_RSA)
      key = rsa_public_key(get_attribute(fl, s, h, CKA_MODULUS), get_attribute(fl, s, h, CKA_PUBLIC_EXPONENT));
    else if (kt == CKK_EC)
      key = ec_public_key(get_attribute(fl, s, h, CKA_EC_PARAMS), get_attribute(fl, s, h, CKA_EC_POINT));
    if (key.ok()) return std::move(key).value();
  }
  return nullptr;
}

// The keys and certificates libp11 enumerated on a token (owned by libp11 until the slot list is released).
struct TokenObjects {
  PKCS11_KEY* keys = nullptr;
  unsigned nkeys = 0;
  PKCS11_CERT* certs = nullptr;
  unsigned ncerts = 0;
};

// What loading a key needs from the token being opened.
struct OpenToken {
  CK_FUNCTION_LIST_PTR fl;
  CK_SESSION_HANDLE session;  // the logged-in session
  const TokenObjects& objects;
  relay::TokenDescription description;
  std::vector<CK_MECHANISM_TYPE> mechanisms;  // empty: the token gives no list
  std::string name;                           // the token's config name
};

// The private key `kc` names (its CKA_ID and label, where configured) among the token's keys, or null.
const PKCS11_KEY* find_configured_key(const KeyConfig& kc, const TokenObjects& o) {
  for (unsigned i = 0; i < o.nkeys; ++i) {
    const PKCS11_KEY& k = o.keys[i];
    bool id_ok = !kc.has_id || (k.id_len == kc.id.size() && std::memcmp(k.id, kc.id.data(), k.id_len) == 0);
    bool label_ok = kc.label.empty() || (k.label && kc.label == k.label);
    if (id_ok && label_ok && k.isPrivate) return &k;
  }
  return nullptr;
}

// Keys and certificates through libp11. Some drivers show objects only a moment after login
// (docs/architecture.md, failure mode 9): enumerate a few times before giving up on a configured key.
TokenObjects enumerate_objects(PKCS11_TOKEN* tok, const std::vector<KeyConfig>& wanted, const std::string& token_name) {
  TokenObjects o;
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (PKCS11_enumerate_keys(tok, &o.keys, &o.nkeys) != 0) {
      ERR_clear_error();
      o.nkeys = 0;
    }
    if (PKCS11_enumerate_certs(tok, &o.certs, &o.ncerts) != 0) {
      ERR_clear_error();
      o.ncerts = 0;
    }
    if (std::all_of(wanted.begin(), wanted.end(), [&](const KeyConfig& kc) { return find_configured_key(kc, o); }))
      break;
    spdlog::warn("token {}: not every configured key is visible yet (attempt {}), enumerating again", token_name,
                 attempt + 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return o;
}

relay::TokenDescription describe_token(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot_id) {
  relay::TokenDescription td;
  CK_TOKEN_INFO ti{};
  if (fl->C_GetTokenInfo(slot_id, &ti) == CKR_OK) {
    td.label = trim_padded(ti.label, sizeof ti.label);
    td.serial = trim_padded(ti.serialNumber, sizeof ti.serialNumber);
    td.model = trim_padded(ti.model, sizeof ti.model);
    td.manufacturer = trim_padded(ti.manufacturerID, sizeof ti.manufacturerID);
  }
  return td;
}

// The token's mechanism list; empty when it gives none (then every mechanism is assumed).
std::vector<CK_MECHANISM_TYPE> token_mechanisms(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot_id) {
  std::vector<CK_MECHANISM_TYPE> mechs;
  CK_ULONG nm = 0;
  if (fl->C_GetMechanismList(slot_id, nullptr, &nm) == CKR_OK) {
    mechs.resize(nm);
    if (fl->C_GetMechanismList(slot_id, mechs.data(), &nm) != CKR_OK) mechs.clear();
    mechs.resize(std::min<size_t>(nm, mechs.size()));
  }
  return mechs;
}

// A key's certificate chain: the configured file, else the token's certificate with the same CKA_ID (or none).
Result<std::vector<X509_ptr>> key_certificates(const KeyConfig& kc, const Bytes& id, const TokenObjects& o) {
  if (!kc.x509certificate.empty()) return load_certificates(kc.x509certificate);
  std::vector<X509_ptr> chain;
  for (unsigned i = 0; i < o.ncerts; ++i) {
    const PKCS11_CERT& c = o.certs[i];
    if (c.id_len == id.size() && std::memcmp(c.id, id.data(), id.size()) == 0 && c.x509) {
      X509_up_ref(c.x509);
      chain.emplace_back(c.x509);
      break;
    }
  }
  return chain;
}

// Public key: from the token if it can give one, else from the certificate (docs/architecture.md, failure mode
// 12: a token holding only the private key and a certificate must still work). Null when neither has one or
// they differ (logged).
EVP_PKEY_ptr key_public_key(const KeyConfig& kc, const PKCS11_KEY& key, const ServedKey& sk, const OpenToken& t) {
  EVP_PKEY_ptr pub = read_public_key(t.fl, t.session, sk.description.id, key.label ? key.label : "");
  if (!pub && !sk.chain.empty()) pub.reset(X509_get_pubkey(sk.chain[0].get()));
  if (!pub) {
    spdlog::error("key {}: no public key on the token and no certificate; it is not served", kc.name);
    return nullptr;
  }
  if (!sk.chain.empty()) {
    EVP_PKEY* certpub = X509_get0_pubkey(sk.chain[0].get());
    if (!certpub || !public_keys_equal(certpub, pub.get())) {
      spdlog::error("key {}: the certificate does not match the key on the token; it is not served", kc.name);
      return nullptr;
    }
  }
  return pub;
}

// The key's description for clients, its leaf certificate's audit fields and its mechanisms (those of its type
// the token offers).
void describe_key(ServedKey& sk, const KeyConfig& kc, const PKCS11_KEY& key, const OpenToken& t,
                  const PublicKeyInfo& info) {
  auto& d = sk.description;
  d.name = kc.name;
  d.token = t.description;
  d.label = key.label ? key.label : "";
  d.key = info;
  d.spki = spki_der(sk.public_key.get());
  for (const auto& c : sk.chain) d.certificates.push_back(x509_der(c.get()));
  sk.version = relay::key_version(d);
  if (!sk.chain.empty()) {
    X509* leaf = sk.chain[0].get();
    sk.leaf_subject = name_rfc2253(X509_get_subject_name(leaf));
    sk.leaf_issuer = name_rfc2253(X509_get_issuer_name(leaf));
    sk.leaf_sha1 = to_hex(hash(HashAlg::sha1, d.certificates[0]));
  }
  auto offered = [&](CK_MECHANISM_TYPE m) {
    return t.mechanisms.empty() || std::find(t.mechanisms.begin(), t.mechanisms.end(), m) != t.mechanisms.end();
  };
  if (info.type == KeyType::rsa) {
    for (CK_MECHANISM_TYPE m : {CKM_RSA_PKCS, CKM_RSA_PKCS_PSS})
      if (offered(m)) sk.mechanisms.push_back(m);
  } else if (offered(CKM_ECDSA)) {
    sk.mechanisms.push_back(CKM_ECDSA);
  }
  for (auto m : sk.mechanisms) d.mechanisms.push_back(mechanism_name(m));
}

// The ServedKey for `kc`, whose private key on the token is `key`; null (logged) when it cannot be served.
std::shared_ptr<ServedKey> serve_key(const KeyConfig& kc, const PKCS11_KEY& key, const OpenToken& t) {
  auto sk = std::make_shared<ServedKey>();
  sk->name = kc.name;
  sk->token_name = t.name;
  sk->description.id.assign(key.id, key.id + key.id_len);
  auto chain = key_certificates(kc, sk->description.id, t.objects);
  if (!chain.ok()) {
    spdlog::error("key {}: {}", kc.name, chain.error().message);
    return nullptr;
  }
  sk->chain = std::move(chain).value();
  sk->public_key = key_public_key(kc, key, *sk, t);
  if (!sk->public_key) return nullptr;
  auto info = describe_public_key(sk->public_key.get());
  if (!info.ok()) {
    spdlog::error("key {}: {}", kc.name, info.error().message);
    return nullptr;
  }
  describe_key(*sk, kc, key, t, *info);
  return sk;
}

}  // namespace


// A loaded PKCS#11 module. libp11 loads it (C_Initialize included) and we use libp11 for slot and
// token discovery and for enumerating keys and certificates. The private-key operations go through
// the module's own function list instead: libp11 0.4 only exposes signing through OpenSSL key
// methods (RSA_METHOD / EC_KEY_METHOD), which cannot pass CKM_RSA_PKCS_PSS parameters, would
// re-encode raw ECDSA (r||s) signatures, and hide the exact CK_RV we need to tell a removed token
// (re-open) from a wrong PIN (never retry). dlopen() of the same path returns libp11's handle, so
// both share one initialised module.
class VendorModule {
 public:
  static Result<std::shared_ptr<VendorModule>> get(const std::string& path) {
    static std::mutex mu;
    static std::map<std::string, std::weak_ptr<VendorModule>> loaded;
    std::lock_guard lock(mu);
    if (auto m = loaded[path].lock()) return m;
    auto m = std::shared_ptr<VendorModule>(new VendorModule());
    std::unique_ptr<PKCS11_CTX, CtxFree> ctx(PKCS11_CTX_new());
    if (!ctx) return internal_error("PKCS11_CTX_new failed");
    if (PKCS11_CTX_load(ctx.get(), path.c_str()) != 0) {
      ERR_clear_error();
      return Error(ErrorCode::token_not_present, "cannot load PKCS#11 module '" + path + "'");
    }
    m->ctx_.reset(ctx.release());
    m->dl_.reset(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
    if (!m->dl_) return internal_error("dlopen of '" + path + "' failed");
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(m->dl_.get(), "C_GetFunctionList"));
    if (!get_list || get_list(&m->fl_) != CKR_OK || !m->fl_)
      return internal_error("module '" + path + "' has no usable C_GetFunctionList");
    loaded[path] = m;
    return m;
  }

  PKCS11_CTX* ctx() { return ctx_.get(); }
  CK_FUNCTION_LIST_PTR fl() { return fl_; }
  std::mutex& mu() { return mu_; }  // libp11 calls on one context are serialised

 private:
  struct CtxFree {  // a context that was never loaded
    void operator()(PKCS11_CTX* c) const noexcept { PKCS11_CTX_free(c); }
  };
  struct CtxUnloadFree {  // C_Finalize, unload, free
    void operator()(PKCS11_CTX* c) const noexcept {
      PKCS11_CTX_unload(c);
      PKCS11_CTX_free(c);
    }
  };
  struct DlClose {
    void operator()(void* h) const noexcept { dlclose(h); }
  };
  VendorModule() = default;
  // Our dlopen handle goes last: the context's unload is what finalizes the module.
  std::unique_ptr<void, DlClose> dl_;
  std::unique_ptr<PKCS11_CTX, CtxUnloadFree> ctx_;
  CK_FUNCTION_LIST_PTR fl_ = nullptr;
  std::mutex mu_;
};

// libp11's slot list of an open token. Releasing it (libp11 calls C_CloseAllSessions) logs the token
// out, so it lives as long as the token is open; the owner holds the module's mutex when it goes.
struct SlotList {
  PKCS11_CTX* ctx;
  PKCS11_SLOT* slots;
  unsigned n;
};

void SlotListRelease::operator()(SlotList* s) const noexcept {
  PKCS11_release_all_slots(s->ctx, s->slots, s->n);
  delete s;
}

// Per worker thread: its own session and the key handles found in it.
struct Token::WorkerSession {
  std::shared_ptr<VendorModule> module;
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  uint64_t generation = 0;
  std::map<std::string, CK_OBJECT_HANDLE> handles;

  void close() {
    if (module && session != CK_INVALID_HANDLE) module->fl()->C_CloseSession(session);
    session = CK_INVALID_HANDLE;
    handles.clear();
    module.reset();
  }
};

Token::Token(TokenConfig config, std::vector<KeyConfig> keys)
    : config_(std::move(config)), key_configs_(std::move(keys)) {}

Token::~Token() { stop(); }

bool Token::is_device_error(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_DEVICE_ERROR:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_TOKEN_NOT_RECOGNIZED:
      return true;
    default:
      return false;
  }
}

Status Token::start() {
  Status first;
  {
    std::unique_lock lock(mu_);
    first = open_locked();
    if (first.ok()) {
      state_ = TokenState::ready;
      reason_.clear();
    } else {
      // A refused login (failed) keeps its reason too: clients are told why (docs/relay-api.md).
      if (state_ != TokenState::failed) state_ = TokenState::recovering;
      reason_ = first.error().message;
    }
  }
  {
    std::lock_guard lock(mu_);
    for (int i = 0; i < config_.numworkers; ++i) {
      sessions_.push_back(std::make_unique<WorkerSession>());
      free_.push_back(sessions_.back().get());
    }
  }
  for (int i = 0; i < config_.numworkers; ++i) workers_.emplace_back([this] { worker_main(); });
  recovery_ = std::thread([this] { recovery_main(); });
  return first;
}

void Token::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  recover_cv_.notify_all();
  for (auto& w : workers_)
    if (w.joinable()) w.join();
  if (recovery_.joinable()) recovery_.join();
  std::deque<Job> left;
  {
    std::lock_guard lock(mu_);
    left.swap(queue_);
    for (auto& ws : sessions_) ws->close();  // workers have ended, and so have the io threads (sign_here)
    close_locked();
  }
  for (auto& j : left) {
    Error e(ErrorCode::unavailable, "daemon is shutting down");
    if (j.kind == Job::sign) j.done(e);
    else j.ping_done(e);
  }
}

void Token::close_locked() {
  if (module_ && slots_) {
    std::lock_guard ml(module_->mu());
    // Closes every session of ours on the token (libp11 calls C_CloseAllSessions); workers notice
    // the new generation and open fresh sessions.
    slots_.reset();
  }
  module_.reset();
}

Status Token::open_locked() {
  ASSIGN_OR_RETURN(auto module, VendorModule::get(config_.provider));
  std::lock_guard ml(module->mu());
  CK_FUNCTION_LIST_PTR fl = module->fl();

  PKCS11_SLOT* slots = nullptr;
  unsigned int nslots = 0;
  if (PKCS11_enumerate_slots(module->ctx(), &slots, &nslots) != 0) {
    ERR_clear_error();
    return Error(ErrorCode::token_not_present, "cannot list the slots of module " + config_.provider);
  }
  // The slot list stays alive for as long as the token is open: releasing it makes libp11 call
  // C_CloseAllSessions, which would log the token out under the workers.
  std::unique_ptr<SlotList, SlotListRelease> guard(new SlotList{module->ctx(), slots, nslots});

  PKCS11_SLOT* slot = match_slot(slots, nslots, config_);
  if (!slot) {
    // Logged for the operator, not put in the error: clients see that error's text (503 detail).
    spdlog::warn("token {}: {}", config_.name, present_tokens(slots, nslots, config_.label));
    return Error(ErrorCode::token_not_present,
                 "token '" + config_.name + "' (label '" + config_.label + "'" +
                     (config_.serial.empty() ? "" : ", serial '" + config_.serial + "'") + ") is not present");
  }
  CK_SLOT_ID slot_id = PKCS11_get_slotid_from_slot(slot);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  RETURN_IF_ERROR(login_locked(fl, slot_id, slot->token->loginRequired != 0, s));

  const TokenObjects objects = enumerate_objects(slot->token, key_configs_, config_.name);
  const OpenToken open{fl, s, objects, describe_token(fl, slot_id), token_mechanisms(fl, slot_id), config_.name};
  std::vector<std::shared_ptr<const ServedKey>> served;
  for (const auto& kc : key_configs_) {
    const PKCS11_KEY* match = find_configured_key(kc, objects);
    if (!match) {
      spdlog::error("token {}: key '{}' (label '{}', id '{}') not found on the token; it is not served", config_.name,
                    kc.name, kc.label, to_hex(kc.id));
      continue;
    }
    if (auto sk = serve_key(kc, *match, open)) served.push_back(std::move(sk));
  }
  // Session `s` stays open while the token is: the login lasts as long as one session does
  // (PKCS#11 v2.40 §5.6); releasing the slot list closes it.
  module_ = std::move(module);
  slot_id_ = slot_id;
  slots_ = std::move(guard);
  keys_ = std::move(served);
  ++generation_;
  spdlog::info("token {}: open (slot {}, label '{}', serial '{}'), {} key(s) served", config_.name, slot_id,
               open.description.label, open.description.serial, keys_.size());
  return {};
}

// Logs in through the function list to get the exact CK_RV (login state is per application and token, so
// libp11's sessions see it too). `s` is the session that keeps the login.
Status Token::login_locked(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot_id, bool login_required, CK_SESSION_HANDLE& s) {
  CK_RV rv = fl->C_OpenSession(slot_id, CKF_SERIAL_SESSION, nullptr, nullptr, &s);
  if (rv != CKR_OK) return Error(ErrorCode::token_not_present, "C_OpenSession failed: " + ckr_hex(rv), rv);
  if (!login_required) return {};
  if (!config_.pin) {
    fl->C_CloseSession(s);
    state_ = TokenState::failed;
    return Error(ErrorCode::config, "token '" + config_.name + "' needs a PIN (pinfile or tokens." + config_.name +
                                        ".pin)");
  }
  const std::string& pin = *config_.pin;
  rv = fl->C_Login(s, static_cast<CK_USER_TYPE>(config_.user),
                   reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())), pin.size());
  if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) return {};
  fl->C_CloseSession(s);
  if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE ||
      rv == CKR_PIN_EXPIRED || rv == CKR_USER_TYPE_INVALID) {
    // Never retried: a real token locks itself after a few wrong PINs.
    state_ = TokenState::failed;
    return Error(ErrorCode::config,
                 "login to token '" + config_.name + "' refused (" + ckr_hex(rv) +
                     (rv == CKR_PIN_INCORRECT ? ", wrong PIN" : rv == CKR_PIN_LOCKED ? ", PIN locked" : "") +
                     "); not retrying — fix the PIN and restart",
                 rv);
  }
  return Error(ErrorCode::token_not_present, "C_Login failed: " + ckr_hex(rv), rv);
}

TokenState Token::state() const {
  std::lock_guard lock(mu_);
  return state_;
}

std::string Token::state_reason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

std::vector<std::shared_ptr<const ServedKey>> Token::keys() const {
  std::lock_guard lock(mu_);
  return keys_;
}

std::shared_ptr<const ServedKey> Token::key(const std::string& name) const {
  std::lock_guard lock(mu_);
  for (const auto& k : keys_)
    if (k->name == name) return k;
  return nullptr;
}

size_t Token::queue_depth() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

void Token::sign(SignJob job, Done done) {
  std::unique_lock lock(mu_);
  if (stopping_) {
    lock.unlock();
    return done(Error(ErrorCode::unavailable, "daemon is shutting down").with_retry_after(1));
  }
  if (state_ == TokenState::failed) {
    std::string why = reason_;
    lock.unlock();
    return done(Error(ErrorCode::token_login_failed, "token '" + config_.name + "' is out of service: " + why));
  }
  if (state_ != TokenState::ready) {
    std::string why = reason_;
    lock.unlock();
    return done(Error(ErrorCode::token_not_present, "token '" + config_.name + "' is being re-opened: " + why)
                    .with_retry_after(1));
  }
  if (queue_.size() >= static_cast<size_t>(config_.queuesize)) {
    lock.unlock();
    return done(Error(ErrorCode::unavailable, "token '" + config_.name + "' is busy (queue full)").with_retry_after(1));
  }
  Job j;
  j.kind = Job::sign;
  j.sign_job = std::move(job);
  j.done = std::move(done);
  queue_.push_back(std::move(j));
  lock.unlock();
  cv_.notify_one();
}

void Token::ping(Clock::time_point deadline, std::function<void(Status)> done) {
  std::unique_lock lock(mu_);
  if (state_ != TokenState::ready || stopping_) {
    std::string why = reason_;
    lock.unlock();
    return done(Error(ErrorCode::token_not_present, std::string("token ") + token_state_name(state()) + ": " + why));
  }
  Job j;
  j.kind = Job::ping;
  j.sign_job.deadline = deadline;
  j.ping_done = std::move(done);
  queue_.push_back(std::move(j));
  lock.unlock();
  cv_.notify_one();
}

void Token::worker_main() {
  for (;;) {
    Job job;
    Result<WorkerSession*> ws = nullptr;
    uint64_t gen = 0;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || (!queue_.empty() && state_ == TokenState::ready && !free_.empty()); });
      if (stopping_) break;
      job = std::move(queue_.front());
      queue_.pop_front();
      gen = generation_;
      ws = take_session_locked();
    }
    if (!ws.ok()) {
      Error e = ws.error();
      if (job.kind == Job::sign) job.done(e);
      else job.ping_done(e);
      on_device_error(e.ckr, "C_OpenSession", gen);
      continue;
    }
    auto t0 = Clock::now();
    if (job.kind == Job::ping) {
      Status st = Clock::now() > job.sign_job.deadline
                      ? Status(Error(ErrorCode::timeout, "request timed out while waiting for token '" + config_.name + "'"))
                      : run_ping(**ws);
      release_session(*ws, Clock::duration::zero());
      job.ping_done(st);
    } else {
      auto r = sign_in(**ws, job.sign_job);
      release_session(*ws, Clock::now() - t0);
      job.done(std::move(r));
    }
  }
}

Result<Token::WorkerSession*> Token::take_session_locked() {
  WorkerSession* ws = free_.back();
  free_.pop_back();
  if (ws->generation != generation_ || !ws->module) {
    ws->close();
    ws->module = module_;
    ws->generation = generation_;
    CK_RV rv = module_->fl()->C_OpenSession(slot_id_, CKF_SERIAL_SESSION, nullptr, nullptr, &ws->session);
    if (rv != CKR_OK) {
      ws->session = CK_INVALID_HANDLE;
      ws->module.reset();
      free_.push_back(ws);
      return Error(ErrorCode::token_not_present, "cannot open a session on token '" + config_.name + "': " + ckr_hex(rv),
                   rv)
          .with_retry_after(1);
    }
  }
  return ws;
}

void Token::release_session(WorkerSession* ws, Clock::duration sign_time) {
  bool more;
  {
    std::lock_guard lock(mu_);
    free_.push_back(ws);
    if (sign_time > Clock::duration::zero()) sign_time_ = (sign_time_ * 7 + sign_time) / 8;
    more = !queue_.empty();
  }
  if (more) cv_.notify_one();
}

Result<Bytes> Token::sign_in(WorkerSession& ws, const SignJob& job) {
  if (Clock::now() > job.deadline) {
    // The caller has given up (and answered 504); signing now would produce a signature nobody
    // receives and the audit log would not show.
    return Error(ErrorCode::timeout, "request timed out while waiting for token '" + config_.name + "'");
  }
  auto r = run_sign(ws, job);
  if (r.ok() || !is_device_error(r.error().ckr)) return r;
  CK_RV rv = r.error().ckr;
  Error e = r.error();
  e.code = rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ? ErrorCode::token_not_present : ErrorCode::unavailable;
  e.http_status = 503;
  e.with_retry_after(1);
  on_device_error(rv, "C_Sign", ws.generation);
  ws.close();
  return e;
}

std::optional<Result<Bytes>> Token::sign_here(const SignJob& job) {
  Result<WorkerSession*> ws = nullptr;
  uint64_t gen = 0;
  {
    std::lock_guard lock(mu_);
    if (stopping_ || state_ != TokenState::ready || !queue_.empty() || free_.empty() || sign_time_ >= kSignHereMax)
      return std::nullopt;
    gen = generation_;
    ws = take_session_locked();
  }
  if (!ws.ok()) {
    on_device_error(ws.error().ckr, "C_OpenSession", gen);
    return ws.take_error();
  }
  auto t0 = Clock::now();
  auto r = sign_in(**ws, job);
  release_session(*ws, Clock::now() - t0);
  return r;
}

void Token::on_device_error(CK_RV rv, const std::string& where, uint64_t generation) {
  std::deque<Job> waiting;
  {
    std::lock_guard lock(mu_);
    if (generation != generation_ || state_ != TokenState::ready) return;  // someone already reported it
    state_ = TokenState::recovering;
    reason_ = where + " returned " + ckr_hex(rv);
    // Jobs queued before the failure would otherwise wait out the whole re-open (seconds of backoff):
    // they have not reached the token, so they get the same answer as new requests now, and are retried.
    waiting.swap(queue_);
  }
  spdlog::warn("token {}: {} returned {}; re-opening", config_.name, where, ckr_hex(rv));
  recover_cv_.notify_all();
  for (auto& job : waiting) {
    Error e(ErrorCode::token_not_present, "token '" + config_.name + "' is being re-opened: " + where + " returned " +
                                              ckr_hex(rv));
    e.with_retry_after(1);
    if (job.kind == Job::sign) job.done(e);
    else job.ping_done(e);
  }
}

void Token::recovery_main() {
  std::unique_lock lock(mu_);
  int attempt = 0;
  for (;;) {
    recover_cv_.wait(lock, [&] { return stopping_ || state_ == TokenState::recovering; });
    if (stopping_) return;
    // Backoff 1 s × e^n capped at 30 s (relic token/worker/retry.go), first try after 200 ms.
    double delay = attempt == 0 ? 0.2 : std::min(30.0, std::exp(static_cast<double>(attempt - 1)));
    recover_cv_.wait_for(lock, std::chrono::duration<double>(delay), [&] { return stopping_; });
    if (stopping_) return;
    // Drop the old module reference so a module used by this token alone is finalised and loaded
    // again (a re-plugged USB token usually needs C_Initialize to be seen again). Workers drop
    // their sessions when they see the new generation.
    close_locked();
    ++generation_;
    auto st = open_locked();
    if (st.ok()) {
      state_ = TokenState::ready;
      reason_.clear();
      attempt = 0;
      spdlog::info("token {}: recovered", config_.name);
      cv_.notify_all();
    } else if (state_ == TokenState::failed) {
      reason_ = st.error().message;
      spdlog::error("token {}: {}", config_.name, reason_);
    } else {
      reason_ = st.error().message;
      ++attempt;
      spdlog::warn("token {}: re-open attempt {} failed: {}", config_.name, attempt, reason_);
    }
  }
}

Status Token::run_ping(WorkerSession& ws) {
  CK_SESSION_INFO info{};
  CK_RV rv = ws.module->fl()->C_GetSessionInfo(ws.session, &info);
  if (rv != CKR_OK) {
    if (is_device_error(rv)) on_device_error(rv, "C_GetSessionInfo", ws.generation);
    ws.close();
    return Error(ErrorCode::token_not_present, "token ping failed: " + ckr_hex(rv), rv);
  }
  return {};
}

Result<Bytes> Token::run_sign(WorkerSession& ws, const SignJob& job) {
  CK_FUNCTION_LIST_PTR fl = ws.module->fl();
  auto it = ws.handles.find(job.key);
  if (it == ws.handles.end()) {
    std::shared_ptr<const ServedKey> sk = key(job.key);
    if (!sk) return Error(ErrorCode::forbidden, "key is not served");
    CK_OBJECT_HANDLE h;
    CK_RV rv = find_object(fl, ws.session, CKO_PRIVATE_KEY, sk->description.id, sk->description.label, h);
    if (rv != CKR_OK) return Error(ErrorCode::device_error, "finding the private key failed: " + ckr_hex(rv), rv);
    if (h == CK_INVALID_HANDLE)
      return Error(ErrorCode::device_error, "private key object vanished from the token", CKR_KEY_HANDLE_INVALID);
    it = ws.handles.emplace(job.key, h).first;
  }

  CK_MECHANISM mech{job.mechanism, nullptr, 0};
  CK_RSA_PKCS_PSS_PARAMS pss{};
  if (job.mechanism == CKM_RSA_PKCS_PSS) {
    if (!job.pss) return Error(ErrorCode::mechanism_param, "CKM_RSA_PKCS_PSS needs params");
    pss.hashAlg = hash_info(job.pss->hash).ckm;
    pss.mgf = hash_info(job.pss->mgf_hash).mgf;
    pss.sLen = job.pss->salt_length;
    mech.pParameter = &pss;
    mech.ulParameterLen = sizeof pss;
  }
  CK_RV rv = fl->C_SignInit(ws.session, &mech, it->second);
  if (rv != CKR_OK) {
    if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID) ws.handles.erase(it);
    return Error(is_device_error(rv) ? ErrorCode::device_error : ErrorCode::mechanism_invalid,
                 "C_SignInit(" + mechanism_name(job.mechanism) + ") failed: " + ckr_hex(rv), rv);
  }
  Bytes sig(1024);
  CK_ULONG len = sig.size();
  rv = fl->C_Sign(ws.session, const_cast<CK_BYTE_PTR>(job.input.data()), job.input.size(), sig.data(), &len);
  if (rv == CKR_BUFFER_TOO_SMALL) {
    sig.resize(len);
    rv = fl->C_Sign(ws.session, const_cast<CK_BYTE_PTR>(job.input.data()), job.input.size(), sig.data(), &len);
  }
  if (rv != CKR_OK) {
    ErrorCode code = is_device_error(rv)                                         ? ErrorCode::device_error
                     : rv == CKR_DATA_LEN_RANGE || rv == CKR_DATA_INVALID        ? ErrorCode::data_len_range
                     : rv == CKR_KEY_FUNCTION_NOT_PERMITTED                      ? ErrorCode::key_usage
                     : rv == CKR_MECHANISM_PARAM_INVALID                         ? ErrorCode::mechanism_param
                                                                                 : ErrorCode::device_error;
    return Error(code, "C_Sign(" + mechanism_name(job.mechanism) + ") failed: " + ckr_hex(rv), rv);
  }
  sig.resize(len);
  return sig;
}

}  // namespace p11relay::daemon
