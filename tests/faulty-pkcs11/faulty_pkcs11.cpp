// faulty-pkcs11: a PKCS#11 module for the fault-injection tests (tests/integration/test_faults.py). It
// dlopens SoftHSMv2 (env FAULTY_PKCS11_MODULE, default /usr/lib/softhsm/libsofthsm2.so), forwards its whole
// function list and, on command, injects the faults a real token shows. Commands come from a control file
// named by env FAULTY_PKCS11_CONTROL, re-read whenever it changes (one stat() per call; write it with a
// rename so a rewrite with the same content re-arms the counters). Lines `key=value`, `#` comments:
//
//   removed=1              token pulled out: C_GetSlotInfo clears CKF_TOKEN_PRESENT, C_GetSlotList(TRUE)
//                          omits the slot, C_GetTokenInfo / C_OpenSession / C_Login give CKR_TOKEN_NOT_PRESENT,
//                          session calls give CKR_DEVICE_REMOVED. On removal every session on the real
//                          token is closed (so it is logged out, as a re-plugged token is). removed=0 re-inserts.
//   device_error_signs=N   the next N C_Sign calls return CKR_DEVICE_ERROR
//   session_invalid_signs=N the next N C_Sign calls return CKR_SESSION_HANDLE_INVALID
//   hang_ms=T              every C_Sign sleeps T ms first (while set)
//   fault_label=LABEL      restrict the three C_Sign faults above to sessions on the token with this label
//   pin_incorrect=1        C_Login returns CKR_PIN_INCORRECT (without asking the real token)
//
// Every C_Login call appends one line to the counter file (env FAULTY_PKCS11_LOGINS, default
// <control>.logins) so a test can assert how often the daemon tried to log in. Every C_Sign that produced a
// signature appends one line to env FAULTY_PKCS11_SIGNS (default <control>.signs): the audit tests count
// signatures made against audit lines written. Counters are re-armed only
// when the file changes. Linked with -z nodelete: state survives the daemon's finalize + reload.
#include <p11-kit/pkcs11.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

namespace {

CK_FUNCTION_LIST real_fl{};  // copy of the real module's list
CK_FUNCTION_LIST our_fl{};
CK_FUNCTION_LIST_PTR real = nullptr;
std::mutex mu;
bool loaded = false;

struct Control {
  bool removed = false;
  long device_error_signs = 0;
  long session_invalid_signs = 0;
  long hang_ms = 0;
  std::string fault_label;
  bool pin_incorrect = false;
};
Control ctl;
// identity of the last control file read
dev_t c_dev = 0;
ino_t c_ino = 0;
timespec c_mtime{};
off_t c_size = -1;
bool c_seen = false;

std::string env_or(const char* name, const std::string& def) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : def;
}

std::string control_path() { return env_or("FAULTY_PKCS11_CONTROL", ""); }

std::string logins_path() {
  std::string c = control_path();
  return env_or("FAULTY_PKCS11_LOGINS", c.empty() ? std::string() : c + ".logins");
}

void close_all_real_sessions() {
  CK_ULONG n = 0;
  if (real->C_GetSlotList(CK_TRUE, nullptr, &n) != CKR_OK || n == 0) return;
  CK_SLOT_ID ids[64];
  if (n > 64) n = 64;
  if (real->C_GetSlotList(CK_TRUE, ids, &n) != CKR_OK) return;
  for (CK_ULONG i = 0; i < n; ++i) real->C_CloseAllSessions(ids[i]);
}

// Re-reads the control file if it changed. Called with `mu` held.
void refresh_locked() {
  std::string path = control_path();
  if (path.empty()) return;
  struct stat sb {};
  if (stat(path.c_str(), &sb) != 0) {
    if (c_seen) {
      bool was_removed = ctl.removed;
      ctl = Control{};
      (void)was_removed;
      c_seen = false;
    }
    return;
  }
  if (c_seen && sb.st_dev == c_dev && sb.st_ino == c_ino && sb.st_size == c_size &&
      sb.st_mtim.tv_sec == c_mtime.tv_sec && sb.st_mtim.tv_nsec == c_mtime.tv_nsec)
    return;
  c_seen = true;
  c_dev = sb.st_dev;
  c_ino = sb.st_ino;
  c_size = sb.st_size;
  c_mtime = sb.st_mtim;
  Control next;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string k = line.substr(0, eq), v = line.substr(eq + 1);
    while (!k.empty() && (k.back() == ' ' || k.back() == '\t')) k.pop_back();
    while (!v.empty() && (v.back() == ' ' || v.back() == '\r' || v.back() == '\t')) v.pop_back();
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.erase(0, 1);
    long n = std::strtol(v.c_str(), nullptr, 10);
    if (k == "removed") next.removed = n != 0;
    else if (k == "device_error_signs") next.device_error_signs = n;
    else if (k == "session_invalid_signs") next.session_invalid_signs = n;
    else if (k == "hang_ms") next.hang_ms = n;
    else if (k == "fault_label") next.fault_label = v;
    else if (k == "pin_incorrect") next.pin_incorrect = n != 0;
  }
  if (next.removed && !ctl.removed && real) close_all_real_sessions();
  ctl = next;
}

Control snapshot() {
  std::lock_guard lock(mu);
  refresh_locked();
  return ctl;
}

bool removed() { return snapshot().removed; }

std::string trim(const unsigned char* s, size_t n) {
  std::string out(reinterpret_cast<const char*>(s), n);
  while (!out.empty() && (out.back() == ' ' || out.back() == '\0')) out.pop_back();
  return out;
}

bool session_matches(CK_SESSION_HANDLE h, const std::string& label) {
  if (label.empty()) return true;
  CK_SESSION_INFO si{};
  if (real->C_GetSessionInfo(h, &si) != CKR_OK) return false;
  CK_TOKEN_INFO ti{};
  if (real->C_GetTokenInfo(si.slotID, &ti) != CKR_OK) return false;
  return trim(ti.label, sizeof ti.label) == label;
}

// ---- wrapped functions ----------------------------------------------------------------------------------

CK_RV w_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp);

CK_RV w_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
  if (present && removed()) {
    if (!count) return CKR_ARGUMENTS_BAD;
    *count = 0;
    return CKR_OK;
  }
  return real->C_GetSlotList(present, list, count);
}

CK_RV w_GetSlotInfo(CK_SLOT_ID id, CK_SLOT_INFO_PTR info) {
  CK_RV rv = real->C_GetSlotInfo(id, info);
  if (rv == CKR_OK && info && removed()) info->flags &= ~static_cast<CK_FLAGS>(CKF_TOKEN_PRESENT);
  return rv;
}

CK_RV w_GetTokenInfo(CK_SLOT_ID id, CK_TOKEN_INFO_PTR info) {
  if (removed()) return CKR_TOKEN_NOT_PRESENT;
  return real->C_GetTokenInfo(id, info);
}

CK_RV w_GetMechanismList(CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR l, CK_ULONG_PTR n) {
  if (removed()) return CKR_TOKEN_NOT_PRESENT;
  return real->C_GetMechanismList(id, l, n);
}

CK_RV w_GetMechanismInfo(CK_SLOT_ID id, CK_MECHANISM_TYPE t, CK_MECHANISM_INFO_PTR i) {
  if (removed()) return CKR_TOKEN_NOT_PRESENT;
  return real->C_GetMechanismInfo(id, t, i);
}

CK_RV w_OpenSession(CK_SLOT_ID id, CK_FLAGS f, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR h) {
  if (removed()) return CKR_TOKEN_NOT_PRESENT;
  return real->C_OpenSession(id, f, app, notify, h);
}

std::string signs_path() {
  std::string c = control_path();
  return env_or("FAULTY_PKCS11_SIGNS", c.empty() ? std::string() : c + ".signs");
}

void append_line(const std::string& path, std::string_view line) {
  if (path.empty()) return;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  (void)!::write(fd, line.data(), line.size());
  ::close(fd);
}

CK_RV w_Login(CK_SESSION_HANDLE h, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
  append_line(logins_path(), "login\n");
  Control c = snapshot();
  if (c.removed) return CKR_DEVICE_REMOVED;
  if (c.pin_incorrect) return CKR_PIN_INCORRECT;
  return real->C_Login(h, u, pin, len);
}

CK_RV w_GetSessionInfo(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR i) {
  if (removed()) return CKR_DEVICE_REMOVED;
  return real->C_GetSessionInfo(h, i);
}

CK_RV w_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  if (removed()) return CKR_DEVICE_REMOVED;
  return real->C_FindObjectsInit(h, t, n);
}

CK_RV w_FindObjects(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n) {
  if (removed()) return CKR_DEVICE_REMOVED;
  return real->C_FindObjects(h, o, max, n);
}

CK_RV w_GetAttributeValue(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
  if (removed()) return CKR_DEVICE_REMOVED;
  return real->C_GetAttributeValue(h, o, t, n);
}

CK_RV w_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) {
  if (removed()) return CKR_DEVICE_REMOVED;
  return real->C_SignInit(h, m, k);
}

CK_RV w_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR sig, CK_ULONG_PTR siglen) {
  if (!sig) return real->C_Sign(h, data, len, sig, siglen);  // size query: never a fault
  CK_RV inject = CKR_OK;
  long hang = 0;
  {
    std::lock_guard lock(mu);
    refresh_locked();
    if (ctl.removed) {
      inject = CKR_DEVICE_REMOVED;
    } else if ((ctl.device_error_signs > 0 || ctl.session_invalid_signs > 0 || ctl.hang_ms > 0) &&
               session_matches(h, ctl.fault_label)) {
      hang = ctl.hang_ms;
      if (ctl.device_error_signs > 0) {
        --ctl.device_error_signs;
        inject = CKR_DEVICE_ERROR;
      } else if (ctl.session_invalid_signs > 0) {
        --ctl.session_invalid_signs;
        inject = CKR_SESSION_HANDLE_INVALID;
      }
    }
  }
  if (inject == CKR_DEVICE_REMOVED) return inject;
  if (hang > 0) std::this_thread::sleep_for(std::chrono::milliseconds(hang));
  CK_RV rv = real->C_Sign(h, data, len, sig, siglen);  // also ends the real operation
  if (inject != CKR_OK) {
    if (rv == CKR_OK) std::memset(sig, 0, *siglen);  // the signature is lost with the "device"
    if (inject == CKR_SESSION_HANDLE_INVALID) real->C_CloseSession(h);  // and it really is invalid now
    return inject;
  }
  if (rv == CKR_OK) append_line(signs_path(), "sign\n");
  return rv;
}

CK_RV load_real() {
  std::lock_guard lock(mu);
  if (loaded) return CKR_OK;
  std::string path = env_or("FAULTY_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so");
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::fprintf(stderr, "faulty-pkcs11: dlopen %s: %s\n", path.c_str(), dlerror());
    return CKR_GENERAL_ERROR;
  }
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
  CK_FUNCTION_LIST_PTR p = nullptr;
  if (!get || get(&p) != CKR_OK || !p) return CKR_GENERAL_ERROR;
  real_fl = *p;
  real = &real_fl;
  our_fl = real_fl;
  our_fl.C_GetFunctionList = w_GetFunctionList;
  our_fl.C_GetSlotList = w_GetSlotList;
  our_fl.C_GetSlotInfo = w_GetSlotInfo;
  our_fl.C_GetTokenInfo = w_GetTokenInfo;
  our_fl.C_GetMechanismList = w_GetMechanismList;
  our_fl.C_GetMechanismInfo = w_GetMechanismInfo;
  our_fl.C_OpenSession = w_OpenSession;
  our_fl.C_Login = w_Login;
  our_fl.C_GetSessionInfo = w_GetSessionInfo;
  our_fl.C_FindObjectsInit = w_FindObjectsInit;
  our_fl.C_FindObjects = w_FindObjects;
  our_fl.C_GetAttributeValue = w_GetAttributeValue;
  our_fl.C_SignInit = w_SignInit;
  our_fl.C_Sign = w_Sign;
  loaded = true;
  return CKR_OK;
}

CK_RV w_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp) {
  if (!pp) return CKR_ARGUMENTS_BAD;
  CK_RV rv = load_real();
  if (rv != CKR_OK) return rv;
  *pp = &our_fl;
  return CKR_OK;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp) {
  return w_GetFunctionList(pp);
}
