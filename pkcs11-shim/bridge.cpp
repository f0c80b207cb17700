#include "pkcs11-shim/bridge.h"

#include "pkcs11-shim/bridge_internal.h"

#include "common/mechanism.h"
#include "pkcs11-shim/log.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>

namespace p11relay::shim::bridge {
namespace {

// The one global. atomic<shared_ptr>: a C_Finalize racing other calls leaves them holding a
// live module; no lock that a fork() could copy in the locked state is taken on the hot path.
std::atomic<std::shared_ptr<Module>> g_module;
std::mutex g_init_mu;  // serialises C_Initialize / C_Finalize only
ModuleFactory g_factory;

}  // namespace

namespace detail {

Result<std::shared_ptr<Module>> module() {
  auto m = g_module.load();
  if (!m) return ck(CKR_CRYPTOKI_NOT_INITIALIZED, "C_Initialize has not been called");
  // A forked child that did not call C_Initialize keeps using the parent's module: sessions are local
  // state, and the client library notices the pid change and opens its own connections.
  return m;
}

Result<std::shared_ptr<Session>> session_of(Module& m, CK_SESSION_HANDLE h) {
  auto s = m.session(h);
  if (!s) return ck(CKR_SESSION_HANDLE_INVALID, "unknown session handle " + std::to_string(h));
  return s;
}

Result<std::shared_ptr<const Object>> visible_object(Module& m, const Session& s, CK_OBJECT_HANDLE h, CK_RV invalid) {
  auto o = s.token ? s.token->object(h) : nullptr;
  if (!o) return ck(invalid, "unknown object handle " + std::to_string(h));
  if (o->is_private && !m.logged_in(s.slot)) {
    if (invalid == CKR_KEY_HANDLE_INVALID) return ck(CKR_USER_NOT_LOGGED_IN, "the private key needs C_Login first");
    return ck(invalid, "object " + std::to_string(h) + " is private and the user is not logged in");
  }
  return o;
}

Result<std::shared_ptr<const TokenView>> present_token(Module& m, CK_SLOT_ID slotID) {
  auto t = m.token(slotID);
  if (!t) return ck(CKR_SLOT_ID_INVALID, "unknown slot " + std::to_string(slotID));
  if (!t->present) return ck(CKR_TOKEN_NOT_PRESENT, "token '" + t->desc.label + "' is no longer served");
  return t;
}

std::string ckr_text(CK_RV rv) {
  static const std::pair<CK_RV, const char*> names[] = {
      {CKR_OK, "CKR_OK"},
      {CKR_HOST_MEMORY, "CKR_HOST_MEMORY"},
      {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID"},
      {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"},
      {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"},
      {CKR_CANT_LOCK, "CKR_CANT_LOCK"},
      {CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE"},
      {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID"},
      {CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE"},
      {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"},
      {CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED"},
      {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED"},
      {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID"},
      {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT"},
      {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED"},
      {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"},
      {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID"},
      {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"},
      {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE"},
      {CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED"},
      {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"},
      {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"},
      {CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID"},
      {CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE"},
      {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"},
      {CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED"},
      {CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED"},
      {CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY"},
      {CKR_SESSION_READ_ONLY_EXISTS, "CKR_SESSION_READ_ONLY_EXISTS"},
      {CKR_SESSION_EXISTS, "CKR_SESSION_EXISTS"},
      {CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN"},
      {CKR_NO_EVENT, "CKR_NO_EVENT"},
      {CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN"},
      {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"},
      {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL"},
      {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"},
      {CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED"},
      {CKR_FUNCTION_REJECTED, "CKR_FUNCTION_REJECTED"},
  };
  for (const auto& [v, n] : names)
    if (v == rv) return n;
  char buf[32];
  std::snprintf(buf, sizeof buf, "CKR_0x%08lx", static_cast<unsigned long>(rv));
  return buf;
}

}  // namespace detail

using namespace detail;

namespace {

void pad(CK_UTF8CHAR* dst, size_t n, const std::string& s) {
  std::memset(dst, ' ', n);
  std::memcpy(dst, s.data(), std::min(n, s.size()));
}

// v2.40 §5.6 (session states): R/O or R/W, public or user, from the application's login state.
CK_STATE session_state(Module& m, const Session& s) {
  bool user = m.logged_in(s.slot);
  if (s.flags & CKF_RW_SESSION) return user ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION;
  return user ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION;
}

template <typename T>
Status copy_list(const std::vector<T>& items, T* out, CK_ULONG_PTR count) {
  if (!out) {
    *count = items.size();
    return {};
  }
  if (*count < items.size()) {
    *count = items.size();
    return ck(CKR_BUFFER_TOO_SMALL, "list buffer too small");
  }
  std::copy(items.begin(), items.end(), out);
  *count = items.size();
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// General purpose

// The module p11-kit loads for a user who has no client configuration: no slots and not a word on stderr
// (every p11-kit program would print it). C_GetInfo says why the list is empty.
class UnconfiguredTransport : public Transport {
 public:
  Result<relay::KeyList> list_keys() override { return relay::KeyList{}; }
  Result<Bytes> sign(const std::string&, const relay::SignRequest&) override {
    return config_error("no client configuration");
  }
};

Result<std::unique_ptr<Module>> default_module_factory() {
  if (!client::config_present()) {
    logger().open("", LogLevel::off);
    return std::make_unique<Module>(client::Config{}, std::make_unique<UnconfiguredTransport>());
  }
  auto config = client::load_config();
  if (!config.ok()) {
    // No log file is known yet: this one line goes to stderr (never stdout).
    logger().open("", LogLevel::error);
    return ck(CKR_GENERAL_ERROR, "configuration: " + config.error().message);
  }
  logger().open(config->log_file, parse_log_level(config->log_level));
  auto c = client::Client::create(*config);
  if (!c.ok()) return ck(CKR_GENERAL_ERROR, "client: " + c.error().message);
  SHIM_LOG(info, "initialised from " + config->source + " (" + std::to_string(config->urls.size()) + " daemon URL(s))");
  return std::make_unique<Module>(*config, std::make_unique<ClientTransport>(std::move(c).value()));
}

void set_module_factory(ModuleFactory factory) {
  std::lock_guard<std::mutex> g(g_init_mu);
  g_factory = std::move(factory);
}

Status Initialize(CK_VOID_PTR pInitArgs) {
  if (pInitArgs) {
    auto* a = static_cast<CK_C_INITIALIZE_ARGS*>(pInitArgs);
    if (a->pReserved) return ck(CKR_ARGUMENTS_BAD, "CK_C_INITIALIZE_ARGS.pReserved must be NULL");
    bool all = a->CreateMutex && a->DestroyMutex && a->LockMutex && a->UnlockMutex;
    bool none = !a->CreateMutex && !a->DestroyMutex && !a->LockMutex && !a->UnlockMutex;
    if (!all && !none) return ck(CKR_ARGUMENTS_BAD, "mutex callbacks must be all set or all NULL");
    // We only use the OS's locks (v2.40 §5.4 case 3 is fine, case 2 is not).
    if (all && !(a->flags & CKF_OS_LOCKING_OK))
      return ck(CKR_CANT_LOCK, "application mutex callbacks without CKF_OS_LOCKING_OK are not supported");
  }
  std::lock_guard<std::mutex> g(g_init_mu);
  auto current = g_module.load();
  if (current && current->pid() == ::getpid()) return ck(CKR_CRYPTOKI_ALREADY_INITIALIZED, "already initialised");
  if (current) {
    // Inherited from the parent across fork(): do not run its destructors (its locks and TLS state
    // were copied mid-flight); leak it deliberately and start afresh.
    new std::shared_ptr<Module>(std::move(current));
    g_module.store(nullptr);
  }
  auto made = g_factory ? g_factory() : default_module_factory();
  if (!made.ok()) return made.take_error();
  g_module.store(std::shared_ptr<Module>(std::move(made).value()));
  return {};
}

Status Finalize(CK_VOID_PTR pReserved) {
  if (pReserved) return ck(CKR_ARGUMENTS_BAD, "pReserved must be NULL");
  std::lock_guard<std::mutex> g(g_init_mu);
  auto current = g_module.exchange(nullptr);
  if (!current) return ck(CKR_CRYPTOKI_NOT_INITIALIZED, "not initialised");
  current->shutdown();  // a thread blocked in C_WaitForSlotEvent returns CKR_CRYPTOKI_NOT_INITIALIZED
  if (current->pid() != ::getpid()) new std::shared_ptr<Module>(std::move(current));  // see Initialize
  current.reset();
  SHIM_LOG(debug, "finalised");
  return {};
}

Status GetInfo(CK_INFO_PTR pInfo) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pInfo) return ck(CKR_ARGUMENTS_BAD, "pInfo is NULL");
  std::memset(pInfo, 0, sizeof *pInfo);
  pInfo->cryptokiVersion = {CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR};
  pad(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "p11relay");
  pInfo->flags = 0;
  pad(pInfo->libraryDescription, sizeof pInfo->libraryDescription,
      m->config().source.empty() ? "p11relay (no client config)" : "p11relay remote signing token");
  pInfo->libraryVersion = {0, 1};
  return {};
}

// ---------------------------------------------------------------------------------------------
// Slots and tokens

Status GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pulCount) return ck(CKR_ARGUMENTS_BAD, "pulCount is NULL");
  // Refresh on the size query only, so the two calls of the usual pattern see the same list. A daemon
  // that cannot be reached gives an empty list, not an error: p11-kit's proxy fails for every module
  // if one module's C_GetSlotList fails.
  if (!pSlotList) m->refresh_if_stale();
  else if (m->slot_ids(false).empty()) m->refresh_if_stale();
  return copy_list(m->slot_ids(tokenPresent == CK_TRUE), pSlotList, pulCount);
}

Status GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pInfo) return ck(CKR_ARGUMENTS_BAD, "pInfo is NULL");
  auto t = m->token(slotID);
  if (!t) return ck(CKR_SLOT_ID_INVALID, "unknown slot " + std::to_string(slotID));
  std::memset(pInfo, 0, sizeof *pInfo);
  pad(pInfo->slotDescription, sizeof pInfo->slotDescription,
      "p11relay: " + t->desc.label + (t->problem.empty() ? "" : " (appliance: " + t->problem + ")"));
  pad(pInfo->manufacturerID, sizeof pInfo->manufacturerID,
      t->desc.manufacturer.empty() ? "p11relay" : t->desc.manufacturer);
  pInfo->flags = CKF_REMOVABLE_DEVICE | (t->present ? CKF_TOKEN_PRESENT : 0);
  pInfo->hardwareVersion = {0, 1};
  pInfo->firmwareVersion = {0, 1};
  return {};
}

Status GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pInfo) return ck(CKR_ARGUMENTS_BAD, "pInfo is NULL");
  auto t = m->token(slotID);
  if (!t) return ck(CKR_SLOT_ID_INVALID, "unknown slot " + std::to_string(slotID));
  if (!t->present) return ck(CKR_TOKEN_NOT_PRESENT, "token '" + t->desc.label + "' is no longer served");
  std::memset(pInfo, 0, sizeof *pInfo);
  pad(pInfo->label, sizeof pInfo->label, t->desc.label);
  pad(pInfo->manufacturerID, sizeof pInfo->manufacturerID, t->desc.manufacturer);
  pad(pInfo->model, sizeof pInfo->model, t->desc.model);
  pad(pInfo->serialNumber, sizeof pInfo->serialNumber, t->desc.serial);
  // Not CKF_WRITE_PROTECTED: like a USB signing token, R/W sessions open and what the token does not
  // allow is refused call by call (bridge_write.cpp). Login required: private keys appear after C_Login,
  // as on the real token (the PIN itself never leaves this process).
  pInfo->flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
  pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
  pInfo->ulSessionCount = m->session_count(slotID);
  pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
  pInfo->ulRwSessionCount = m->session_count(slotID, true);
  pInfo->ulMaxPinLen = 255;
  pInfo->ulMinPinLen = 0;
  pInfo->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->hardwareVersion = {0, 1};
  pInfo->firmwareVersion = {0, 1};
  std::memset(pInfo->utcTime, ' ', sizeof pInfo->utcTime);
  return {};
}

namespace {

std::vector<CK_MECHANISM_TYPE> all_mechanisms(const TokenView& t) {
  auto out = t.mechanisms();
  for (auto d : digest_mechanisms()) out.push_back(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

Status GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pulCount) return ck(CKR_ARGUMENTS_BAD, "pulCount is NULL");
  ASSIGN_OR_RETURN(auto t, present_token(*m, slotID));
  return copy_list(all_mechanisms(*t), pMechanismList, pulCount);
}

Status GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pInfo) return ck(CKR_ARGUMENTS_BAD, "pInfo is NULL");
  ASSIGN_OR_RETURN(auto t, present_token(*m, slotID));
  std::memset(pInfo, 0, sizeof *pInfo);
  if (digest_mechanism_hash(type)) {
    pInfo->flags = CKF_DIGEST;
    return {};
  }
  const SignMech* sm = find_sign_mechanism(type);
  bool found = false;
  for (const auto& k : t->keys) {
    if (!sm || !k->allows(type)) continue;
    CK_ULONG bits = static_cast<CK_ULONG>(k->bits);
    pInfo->ulMinKeySize = found ? std::min(pInfo->ulMinKeySize, bits) : bits;
    pInfo->ulMaxKeySize = found ? std::max(pInfo->ulMaxKeySize, bits) : bits;
    found = true;
  }
  if (!found) return ck(CKR_MECHANISM_INVALID, "mechanism " + mechanism_name(type) + " is not offered by this token");
  pInfo->flags = CKF_SIGN | CKF_VERIFY;
  if (sm->kind == SignKind::ecdsa) pInfo->flags |= CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
  return {};
}

// ---------------------------------------------------------------------------------------------
// Sessions and login

Status OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_SESSION_HANDLE_PTR phSession) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!phSession) return ck(CKR_ARGUMENTS_BAD, "phSession is NULL");
  // At most one network call per session start, and only when the cached key list is stale.
  m->refresh_if_stale();
  auto t = m->token(slotID);
  if (!t) return ck(CKR_SLOT_ID_INVALID, "unknown slot " + std::to_string(slotID));
  if (!(flags & CKF_SERIAL_SESSION)) return ck(CKR_SESSION_PARALLEL_NOT_SUPPORTED, "CKF_SERIAL_SESSION must be set");
  if (!t->present) return ck(CKR_TOKEN_NOT_PRESENT, "token '" + t->desc.label + "' is no longer served");
  auto s = m->open_session(slotID, flags, t);
  *phSession = s->handle;
  return {};
}

Status CloseSession(CK_SESSION_HANDLE hSession) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!m->close_session(hSession)) return ck(CKR_SESSION_HANDLE_INVALID, "unknown session handle");
  return {};
}

Status CloseAllSessions(CK_SLOT_ID slotID) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!m->token(slotID)) return ck(CKR_SLOT_ID_INVALID, "unknown slot " + std::to_string(slotID));
  m->close_all_sessions(slotID);
  return {};
}

Status GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pInfo) return ck(CKR_ARGUMENTS_BAD, "pInfo is NULL");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  pInfo->slotID = s->slot;
  pInfo->state = session_state(*m, *s);
  pInfo->flags = s->flags;
  pInfo->ulDeviceError = 0;
  return {};
}

namespace detail {

// The PIN is never forwarded (docs/architecture.md, invariant 1): identity is the client certificate. If the
// client config names a PIN (pkcs11.pin), it must match; the comparison is over SHA-256 digests with
// CRYPTO_memcmp so neither content nor length leaks through timing. No configured PIN: any PIN matches.
bool pin_matches(Module& m, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  const auto& want = m.config().pin;
  if (!want) return true;
  unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256(pPin ? pPin : reinterpret_cast<const unsigned char*>(""), pPin ? ulPinLen : 0, a);
  SHA256(reinterpret_cast<const unsigned char*>(want->data()), want->size(), b);
  return CRYPTO_memcmp(a, b, sizeof a) == 0;
}

}  // namespace detail

namespace {

// v2.40 C_Login with CKU_SO: the relay token has no security officer, so every SO PIN is incorrect;
// the state rules come first (a logged-in user, then any R/O session of the application).
Status login_so(Module& m, const Session& s) {
  if (m.logged_in(s.slot)) return ck(CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "the normal user is logged in");
  if (m.session_count(s.slot) > m.session_count(s.slot, true))
    return ck(CKR_SESSION_READ_ONLY_EXISTS, "an SO login needs every session of the application to be R/W");
  return ck(CKR_PIN_INCORRECT, "the relay token has no security officer (CKU_SO); log in as CKU_USER");
}

}  // namespace

Status Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  ASSIGN_OR_RETURN(auto m, module());
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  if (!pPin && ulPinLen) return ck(CKR_ARGUMENTS_BAD, "pPin is NULL");
  if (userType == CKU_SO) return login_so(*m, *s);
  if (userType == CKU_CONTEXT_SPECIFIC)
    return ck(CKR_OPERATION_NOT_INITIALIZED, "no key here needs CKA_ALWAYS_AUTHENTICATE");
  if (userType != CKU_USER) return ck(CKR_USER_TYPE_INVALID, "unknown user type");
  if (m->logged_in(s->slot)) return ck(CKR_USER_ALREADY_LOGGED_IN, "already logged in");
  if (!pin_matches(*m, pPin, ulPinLen))
    return ck(CKR_PIN_INCORRECT, "the PIN does not match pkcs11.pin in the client config");
  m->set_logged_in(s->slot, true);
  SHIM_LOG(info, "C_Login accepted for slot " + std::to_string(s->slot) + " (the PIN is not forwarded)");
  return {};
}

Status Logout(CK_SESSION_HANDLE hSession) {
  ASSIGN_OR_RETURN(auto m, module());
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  if (!m->logged_in(s->slot)) return ck(CKR_USER_NOT_LOGGED_IN, "not logged in");
  m->set_logged_in(s->slot, false);
  return {};
}

// ---------------------------------------------------------------------------------------------
// Objects

Status GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pulSize) return ck(CKR_ARGUMENTS_BAD, "pulSize is NULL");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  ASSIGN_OR_RETURN(auto o, visible_object(*m, *s, hObject, CKR_OBJECT_HANDLE_INVALID));
  CK_ULONG size = 0;
  for (const auto& [type, value] : o->attrs) size += value.size();
  *pulSize = size;
  return {};
}

Status GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                         CK_ULONG ulCount) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pTemplate && ulCount) return ck(CKR_ARGUMENTS_BAD, "pTemplate is NULL");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  ASSIGN_OR_RETURN(auto o, visible_object(*m, *s, hObject, CKR_OBJECT_HANDLE_INVALID));
  CK_RV rv = o->get_attributes(pTemplate, ulCount);
  if (rv != CKR_OK) return ck(rv, "some attributes could not be returned");
  return {};
}

namespace {
FindOp find_in(const Session& s, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, bool logged_in) {
  FindOp op;
  if (s.token)
    for (const auto& o : s.token->objects)
      if ((!o->is_private || logged_in) && o->matches(pTemplate, ulCount)) op.results.push_back(o->handle);
  return op;
}
}  // namespace

Status FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pTemplate && ulCount) return ck(CKR_ARGUMENTS_BAD, "pTemplate is NULL");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  bool logged_in = m->logged_in(s->slot);
  std::lock_guard<std::mutex> g(s->mu);
  if (s->find) return ck(CKR_OPERATION_ACTIVE, "a search is active");
  FindOp op = find_in(*s, pTemplate, ulCount, logged_in);
  // Nothing matches, not even among the private objects a login would show: the kept key list may
  // predate the key searched for, so the daemon is asked once and its list searched.
  if (op.results.empty() && ulCount > 0 && m->view_from_disk() &&
      find_in(*s, pTemplate, ulCount, true).results.empty()) {
    m->refresh_from_daemon();
    if (auto fresh = m->token(s->slot); fresh && fresh->present) s->token = fresh;
    op = find_in(*s, pTemplate, ulCount, logged_in);
  }
  s->find = std::move(op);
  return {};
}

Status FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
                   CK_ULONG_PTR pulObjectCount) {
  ASSIGN_OR_RETURN(auto m, module());
  if ((!phObject && ulMaxObjectCount) || !pulObjectCount) return ck(CKR_ARGUMENTS_BAD, "NULL output");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  std::lock_guard<std::mutex> g(s->mu);
  if (!s->find) return ck(CKR_OPERATION_NOT_INITIALIZED, "no search active");
  CK_ULONG n = 0;
  while (n < ulMaxObjectCount && s->find->pos < s->find->results.size()) phObject[n++] = s->find->results[s->find->pos++];
  *pulObjectCount = n;
  return {};
}

Status FindObjectsFinal(CK_SESSION_HANDLE hSession) {
  ASSIGN_OR_RETURN(auto m, module());
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  std::lock_guard<std::mutex> g(s->mu);
  if (!s->find) return ck(CKR_OPERATION_NOT_INITIALIZED, "no search active");
  s->find.reset();
  return {};
}

// C_WaitForSlotEvent: slot events come from the key list the daemon sends (a token appears, vanishes or
// cannot be used), fetched at most once per pkcs11.keycacheseconds, so the blocking form polls the
// daemon at that pace (at least 1 s apart) and C_Finalize wakes it.
Status WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pSlot || pReserved) return ck(CKR_ARGUMENTS_BAD, "pSlot must be set and pReserved NULL");
  auto pace = std::chrono::seconds(std::max(1, m->config().key_cache_seconds));
  for (;;) {
    m->refresh_if_stale();
    if (auto slot = m->take_event()) {
      *pSlot = *slot;
      return {};
    }
    if (flags & CKF_DONT_BLOCK) return ck(CKR_NO_EVENT, "no slot event");
    if (!m->wait_event(pace)) return ck(CKR_CRYPTOKI_NOT_INITIALIZED, "C_Finalize was called while waiting");
  }
}

// ---------------------------------------------------------------------------------------------
// Random (local)

Status GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData, CK_ULONG ulRandomLen) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pRandomData && ulRandomLen) return ck(CKR_ARGUMENTS_BAD, "pRandomData is NULL");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  (void)s;
  CK_ULONG done = 0;
  while (done < ulRandomLen) {
    int chunk = static_cast<int>(std::min<CK_ULONG>(ulRandomLen - done, 1 << 20));
    if (RAND_bytes(pRandomData + done, chunk) != 1) return ck(CKR_DEVICE_ERROR, "RAND_bytes failed");
    done += static_cast<CK_ULONG>(chunk);
  }
  return {};
}

Status SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pSeed && ulSeedLen) return ck(CKR_ARGUMENTS_BAD, "pSeed is NULL");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  (void)s;
  return ck(CKR_RANDOM_SEED_NOT_SUPPORTED, "the RNG is OpenSSL's and takes no seed");
}

// ---------------------------------------------------------------------------------------------

Status UnsupportedInSession(CK_SESSION_HANDLE hSession, CK_RV rv) {
  ASSIGN_OR_RETURN(auto m, module());
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  (void)s;
  return ck(rv, "not supported by the relay token");
}

CK_RV resolve(const char* function, const Status& status) noexcept {
  try {
    if (status.ok()) {
      SHIM_LOG(trace, std::string(function) + " -> CKR_OK");
      return CKR_OK;
    }
    CK_RV rv = status.error().ckr;
    switch (rv) {
      // Normal answers in the size-query and probing patterns applications use.
      case CKR_BUFFER_TOO_SMALL:
      case CKR_ATTRIBUTE_TYPE_INVALID:
      case CKR_ATTRIBUTE_SENSITIVE:
      case CKR_USER_ALREADY_LOGGED_IN:
      case CKR_USER_NOT_LOGGED_IN:
      case CKR_CRYPTOKI_ALREADY_INITIALIZED:
      case CKR_FUNCTION_NOT_SUPPORTED:
      case CKR_MECHANISM_INVALID:
      case CKR_NO_EVENT:
        SHIM_LOG(debug, std::string(function) + " -> " + ckr_text(rv) + ": " + status.error().message);
        break;
      case CKR_GENERAL_ERROR:
        SHIM_LOG(error, std::string(function) + " -> " + ckr_text(rv) + ": " + status.error().message);
        break;
      default:
        SHIM_LOG(warning, std::string(function) + " -> " + ckr_text(rv) + ": " + status.error().message);
    }
    return rv;
  } catch (...) {
    return status.ok() ? CKR_OK : status.error().ckr;
  }
}

CK_RV resolve_exception(const char* function) noexcept {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return CKR_HOST_MEMORY;
  } catch (const std::exception& e) {
    try {
      SHIM_LOG(error, std::string(function) + ": unexpected exception: " + e.what());
    } catch (...) {
    }
  } catch (...) {
  }
  return CKR_GENERAL_ERROR;
}

}  // namespace p11relay::shim::bridge
