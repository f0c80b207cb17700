// shim-driver: a small PKCS#11 application for the shim's integration tests and benchmarks. It dlopens a
// module (the shim, or SoftHSM directly for comparison) and signs through the plain C API.
//
//   shim-driver MODULE PIN KEYLABEL MECH COMMAND [ARGS]
//     MECH: SHA256_RSA_PKCS | SHA256_RSA_PKCS_PSS | ECDSA_SHA256 | ECDSA | RSA_PKCS ...
//     restart            C_SignInit, print READY, wait for a line on stdin, then C_Sign (recovery test)
//     loop N             N signatures in one session, progress on stdout every 50
//     threads T N        T threads, each with its own session, N signatures each
//     fork               sign in the parent, fork, sign in the child with the parent's session and a new one
//     bench T SECONDS    C_SignInit + C_Sign in T threads for SECONDS; prints ops/s and p50 (ms)
//     load T SECONDS     as bench, but every signature (over a distinct message) is verified and the JSON
//                        line adds p99 and max (ms); the first failure stops only its own thread
// Every signature is verified with C_Verify against the public key object. Exit status 0 = all good.
#include <p11-kit/pkcs11.h>

#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

CK_FUNCTION_LIST_PTR f = nullptr;
std::string pin, key_label;
CK_MECHANISM mech{};
CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
CK_SLOT_ID slot = 0;

#define CHECK_RV(call)                                                                 \
  do {                                                                                 \
    CK_RV rv_ = (call);                                                                \
    if (rv_ != CKR_OK) {                                                               \
      std::fprintf(stderr, "%s failed: 0x%08lx (pid %d)\n", #call, rv_, (int)getpid()); \
      return rv_;                                                                      \
    }                                                                                  \
  } while (0)

CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls) {
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void*)key_label.data(), key_label.size()}};
  if (f->C_FindObjectsInit(h, t, 2) != CKR_OK) return 0;
  CK_OBJECT_HANDLE o = 0;
  CK_ULONG n = 0;
  f->C_FindObjects(h, &o, 1, &n);
  f->C_FindObjectsFinal(h);
  return n == 1 ? o : 0;
}

CK_RV open_session(CK_SESSION_HANDLE* h) {
  CHECK_RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, h));
  CK_RV rv = f->C_Login(*h, CKU_USER, (CK_UTF8CHAR_PTR)pin.data(), pin.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) return rv;
  return CKR_OK;
}

// One C_SignInit + C_Sign (size query included), then C_Verify with the public key.
CK_RV sign_once(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE priv, CK_OBJECT_HANDLE pub, const std::string& msg,
                bool verify = true) {
  CHECK_RV(f->C_SignInit(h, &mech, priv));
  CK_BYTE sig[1024];
  CK_ULONG len = sizeof sig;
  CHECK_RV(f->C_Sign(h, (CK_BYTE_PTR)msg.data(), msg.size(), sig, &len));
  if (verify) {
    CHECK_RV(f->C_VerifyInit(h, &mech, pub));
    CHECK_RV(f->C_Verify(h, (CK_BYTE_PTR)msg.data(), msg.size(), sig, len));
  }
  return CKR_OK;
}

struct Keys {
  CK_SESSION_HANDLE h = 0;
  CK_OBJECT_HANDLE priv = 0, pub = 0;
};

CK_RV session_with_keys(Keys& k) {
  CHECK_RV(open_session(&k.h));
  k.priv = find_key(k.h, CKO_PRIVATE_KEY);
  k.pub = find_key(k.h, CKO_PUBLIC_KEY);
  if (!k.priv || !k.pub) {
    std::fprintf(stderr, "key '%s' not found\n", key_label.c_str());
    return CKR_KEY_HANDLE_INVALID;
  }
  return CKR_OK;
}

CK_RV choose_slot() {
  CK_ULONG n = 0;
  CHECK_RV(f->C_GetSlotList(CK_TRUE, nullptr, &n));
  std::vector<CK_SLOT_ID> slots(n);
  CHECK_RV(f->C_GetSlotList(CK_TRUE, slots.data(), &n));
  for (CK_ULONG i = 0; i < n; ++i) {
    slot = slots[i];
    Keys k;
    if (open_session(&k.h) != CKR_OK) continue;
    bool found = find_key(k.h, CKO_PRIVATE_KEY) != 0;
    f->C_CloseSession(k.h);
    if (found) return CKR_OK;
  }
  std::fprintf(stderr, "no slot holds key '%s'\n", key_label.c_str());
  return CKR_SLOT_ID_INVALID;
}

int cmd_restart() {
  Keys k;
  if (session_with_keys(k) != CKR_OK) return 1;
  CHECK_RV(f->C_SignInit(k.h, &mech, k.priv));
  std::printf("READY\n");
  std::fflush(stdout);
  std::string line;
  std::getline(std::cin, line);
  std::string msg = "signed across a daemon restart";
  CK_ULONG len = 0;
  CHECK_RV(f->C_Sign(k.h, (CK_BYTE_PTR)msg.data(), msg.size(), nullptr, &len));
  std::vector<CK_BYTE> sig(len);
  CHECK_RV(f->C_Sign(k.h, (CK_BYTE_PTR)msg.data(), msg.size(), sig.data(), &len));
  CHECK_RV(f->C_VerifyInit(k.h, &mech, k.pub));
  CHECK_RV(f->C_Verify(k.h, (CK_BYTE_PTR)msg.data(), msg.size(), sig.data(), len));
  std::printf("OK\n");
  return 0;
}

int cmd_loop(int n) {
  Keys k;
  if (session_with_keys(k) != CKR_OK) return 1;
  int failures = 0;
  for (int i = 0; i < n; ++i) {
    if (sign_once(k.h, k.priv, k.pub, "loop message " + std::to_string(i)) != CKR_OK) ++failures;
    if ((i + 1) % 50 == 0) {
      std::printf("%d\n", i + 1);
      std::fflush(stdout);
    }
  }
  std::printf("DONE %d signatures, %d failures\n", n, failures);
  return failures ? 1 : 0;
}

int cmd_threads(int threads, int n) {
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      Keys k;
      if (session_with_keys(k) != CKR_OK) {
        failed += n;
        return;
      }
      for (int i = 0; i < n; ++i) {
        if (sign_once(k.h, k.priv, k.pub, "thread " + std::to_string(t) + " message " + std::to_string(i)) == CKR_OK)
          ++ok;
        else
          ++failed;
      }
      f->C_CloseSession(k.h);
    });
  }
  for (auto& th : pool) th.join();
  std::printf("DONE ok=%d failed=%d\n", ok.load(), failed.load());
  return failed ? 1 : 0;
}

int cmd_fork() {
  Keys k;
  if (session_with_keys(k) != CKR_OK) return 1;
  if (sign_once(k.h, k.priv, k.pub, "parent before fork") != CKR_OK) return 1;
  pid_t child = fork();
  if (child == 0) {
    // The child uses the parent's initialised module and session without calling C_Initialize.
    int bad = 0;
    for (int i = 0; i < 5; ++i) bad += sign_once(k.h, k.priv, k.pub, "child " + std::to_string(i)) != CKR_OK;
    Keys k2;
    if (session_with_keys(k2) != CKR_OK || sign_once(k2.h, k2.priv, k2.pub, "child new session") != CKR_OK) ++bad;
    std::printf("CHILD %s\n", bad ? "FAIL" : "OK");
    std::fflush(stdout);
    _exit(bad ? 1 : 0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  bool parent_ok = sign_once(k.h, k.priv, k.pub, "parent after fork") == CKR_OK;
  std::printf("PARENT %s\n", parent_ok ? "OK" : "FAIL");
  return (WIFEXITED(status) && WEXITSTATUS(status) == 0 && parent_ok) ? 0 : 1;
}

int cmd_bench(int threads, double seconds, bool verify) {
  std::atomic<long> total{0};
  std::atomic<int> failed{0};
  std::vector<std::vector<double>> lat(threads);
  std::vector<std::thread> pool;
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      Keys k;
      if (session_with_keys(k) != CKR_OK) {
        ++failed;
        return;
      }
      // Raw mechanisms get what a real caller sends (the daemon's default key policy refuses raw input that
      // is not a digest): a SHA-256-sized value for CKM_ECDSA, a SHA-256 DigestInfo for CKM_RSA_PKCS.
      std::string msg = "benchmark message";
      if (mech.mechanism == CKM_ECDSA) msg.assign(32, 'b');
      if (mech.mechanism == CKM_RSA_PKCS)
        msg = std::string("\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20", 19) +
              std::string(32, 'b');
      for (long i = 0; std::chrono::steady_clock::now() < end; ++i) {
        if (verify) msg = "load thread " + std::to_string(t) + " message " + std::to_string(i);
        auto t0 = std::chrono::steady_clock::now();
        if (sign_once(k.h, k.priv, k.pub, msg, verify) != CKR_OK) {
          ++failed;
          return;
        }
        lat[t].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        ++total;
      }
    });
  }
  for (auto& th : pool) th.join();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double q) { return all.empty() ? 0 : all[std::min(all.size() - 1, size_t(q * all.size()))]; };
  std::printf("{\"ops\": %ld, \"ops_per_s\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, "
              "\"failed\": %d}\n",
              total.load(), total.load() / seconds, pct(0.5), pct(0.99), all.empty() ? 0 : all.back(),
              failed.load());
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s MODULE PIN KEYLABEL MECH COMMAND [ARGS]\n", argv[0]);
    return 2;
  }
  pin = argv[2];
  key_label = argv[3];
  static const std::map<std::string, CK_MECHANISM_TYPE> mechs = {
      {"RSA_PKCS", CKM_RSA_PKCS},           {"SHA256_RSA_PKCS", CKM_SHA256_RSA_PKCS},
      {"SHA384_RSA_PKCS", CKM_SHA384_RSA_PKCS}, {"SHA256_RSA_PKCS_PSS", CKM_SHA256_RSA_PKCS_PSS},
      {"ECDSA", CKM_ECDSA},                 {"ECDSA_SHA256", CKM_ECDSA_SHA256},
      {"ECDSA_SHA384", CKM_ECDSA_SHA384},
  };
  auto it = mechs.find(argv[4]);
  if (it == mechs.end()) {
    std::fprintf(stderr, "unknown mechanism %s\n", argv[4]);
    return 2;
  }
  mech = {it->second, nullptr, 0};
  if (it->second == CKM_SHA256_RSA_PKCS_PSS) mech = {it->second, &pss, sizeof pss};

  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
  if (!get || get(&f) != CKR_OK) return 2;
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  if (f->C_Initialize(&args) != CKR_OK) {
    std::fprintf(stderr, "C_Initialize failed\n");
    return 2;
  }
  if (choose_slot() != CKR_OK) return 1;
  std::string cmd = argv[5];
  int rc = 2;
  if (cmd == "restart") rc = cmd_restart();
  else if (cmd == "loop" && argc > 6) rc = cmd_loop(std::atoi(argv[6]));
  else if (cmd == "threads" && argc > 7) rc = cmd_threads(std::atoi(argv[6]), std::atoi(argv[7]));
  else if (cmd == "fork") rc = cmd_fork();
  else if (cmd == "bench" && argc > 7) rc = cmd_bench(std::atoi(argv[6]), std::atof(argv[7]), false);
  else if (cmd == "load" && argc > 7) rc = cmd_bench(std::atoi(argv[6]), std::atof(argv[7]), true);
  else std::fprintf(stderr, "unknown command %s\n", cmd.c_str());
  f->C_Finalize(nullptr);
  return rc;
}
