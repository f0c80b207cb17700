// p11bench: sign rate and latency of any PKCS#11 module, measured the way a real consumer signs.
//
//   p11bench --module SO --token LABEL --key LABEL [--mech ECDSA|RSA_PKCS|SHA256_RSA_PKCS]
//            [--threads T] [--ops N] [--warmup W] [--pin-file F] [--name TEXT]
//
// The module is dlopen()ed and reached through C_GetFunctionList only; C_Initialize gets CKF_OS_LOCKING_OK.
// The token is found by its label, the private key by CKA_LABEL. The PIN comes from $P11BENCH_PIN or from
// --pin-file (first line), never from the command line. C_Login is done once (login state is per
// application); each of the T threads then opens its own session and, for every signature, calls
// C_SignInit + C_Sign (one call with a large enough buffer, no separate size query) — nothing is reused
// between signatures except the session and the key handle.
//
// Mechanisms (the same for every module being compared):
//   ECDSA            CKM_ECDSA over a 32-byte digest
//   RSA_PKCS         CKM_RSA_PKCS over a SHA-256 DigestInfo (51 bytes) — hash computed by the caller
//   SHA256_RSA_PKCS  CKM_SHA256_RSA_PKCS over a 32-byte message (the token hashes)
//
// Each thread signs W warm-up signatures (not counted), all threads wait at a barrier, then N signatures are
// shared among the threads (an atomic counter). Output: one JSON line on stdout, e.g.
//   {"name":"direct","mech":"ECDSA","threads":1,"ops":2000,"errors":0,"seconds":0.15,
//    "ops_per_s":13300.0,"p50_us":72.1,"p99_us":110.3,"mean_us":75.0,"cpu_us_per_op":74.0}
// cpu_us_per_op: this process's CPU time (user+system, all threads) over the timed phase ÷ signatures —
// unlike ops/s it hardly moves with the machine's load (bench/run adds the server process's CPU).
// Exit status: 0 if every signature succeeded, 1 if any failed, 2 on a setup error.
// There are no timed assertions: the numbers are for bench/run to compare, not to judge.
#include <p11-kit/pkcs11.h>

#include <dlfcn.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string module, token, key, mech = "ECDSA", pin_file, name;
  int threads = 1;
  long ops = 1000;
  long warmup = 20;
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "p11bench: %s\n"
               "usage: p11bench --module SO --token LABEL --key LABEL [--mech ECDSA|RSA_PKCS|SHA256_RSA_PKCS]\n"
               "                [--threads T] [--ops N] [--warmup W] [--pin-file F] [--name TEXT]\n"
               "PIN: $P11BENCH_PIN or --pin-file (never on the command line)\n",
               msg);
  std::exit(2);
}

[[noreturn]] void die(const char* what, CK_RV rv) {
  std::fprintf(stderr, "p11bench: %s failed: CKR 0x%08lx\n", what, static_cast<unsigned long>(rv));
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + a).c_str());
      return argv[++i];
    };
    if (a == "--module") o.module = val();
    else if (a == "--token") o.token = val();
    else if (a == "--key") o.key = val();
    else if (a == "--mech") o.mech = val();
    else if (a == "--pin-file") o.pin_file = val();
    else if (a == "--name") o.name = val();
    else if (a == "--threads") o.threads = std::atoi(val().c_str());
    else if (a == "--ops") o.ops = std::atol(val().c_str());
    else if (a == "--warmup") o.warmup = std::atol(val().c_str());
    else if (a == "-h" || a == "--help") usage("help");
    else usage(("unknown argument " + a).c_str());
  }
  if (o.module.empty() || o.token.empty() || o.key.empty()) usage("--module, --token and --key are required");
  if (o.threads < 1 || o.ops < 1 || o.warmup < 0) usage("bad --threads / --ops / --warmup");
  return o;
}

std::string read_pin(const Options& o) {
  if (const char* p = std::getenv("P11BENCH_PIN")) return p;
  if (o.pin_file.empty()) usage("no PIN: set P11BENCH_PIN or pass --pin-file");
  std::ifstream in(o.pin_file);
  std::string line;
  if (!in || !std::getline(in, line)) usage("cannot read --pin-file");
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n' || line.back() == ' ')) line.pop_back();
  return line;
}

std::string padded(const std::string& s) {  // CK_TOKEN_INFO.label: 32 bytes, blank padded
  std::string r = s.substr(0, 32);
  r.resize(32, ' ');
  return r;
}

double cpu_seconds() {  // user + system CPU of the whole process (every thread)
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  std::string pin = read_pin(o);

  void* lib = dlopen(o.module.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr, "p11bench: dlopen %s: %s\n", o.module.c_str(), dlerror());
    return 2;
  }
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
  if (!get_list) {
    std::fprintf(stderr, "p11bench: %s has no C_GetFunctionList\n", o.module.c_str());
    return 2;
  }
  CK_FUNCTION_LIST_PTR f = nullptr;
  if (CK_RV rv = get_list(&f); rv != CKR_OK) die("C_GetFunctionList", rv);

  CK_C_INITIALIZE_ARGS init{};
  init.flags = CKF_OS_LOCKING_OK;
  if (CK_RV rv = f->C_Initialize(&init); rv != CKR_OK) die("C_Initialize", rv);

  // Token by label.
  CK_ULONG nslots = 0;
  if (CK_RV rv = f->C_GetSlotList(CK_TRUE, nullptr, &nslots); rv != CKR_OK) die("C_GetSlotList", rv);
  std::vector<CK_SLOT_ID> slots(nslots);
  if (CK_RV rv = f->C_GetSlotList(CK_TRUE, slots.data(), &nslots); rv != CKR_OK) die("C_GetSlotList", rv);
  slots.resize(nslots);
  CK_SLOT_ID slot = 0;
  bool found = false;
  for (CK_SLOT_ID s : slots) {
    CK_TOKEN_INFO ti{};
    if (f->C_GetTokenInfo(s, &ti) != CKR_OK) continue;
    if (std::memcmp(ti.label, padded(o.token).data(), 32) == 0) {
      slot = s;
      found = true;
      break;
    }
  }
  if (!found) {
    std::fprintf(stderr, "p11bench: no token labelled '%s' in %s (%lu slots)\n", o.token.c_str(), o.module.c_str(),
                 static_cast<unsigned long>(nslots));
    return 2;
  }

  // Log in once, find the private key by CKA_LABEL.
  CK_SESSION_HANDLE login = 0;
  if (CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &login); rv != CKR_OK)
    die("C_OpenSession", rv);
  if (CK_RV rv = f->C_Login(login, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
      rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
    die("C_Login", rv);
  std::fill(pin.begin(), pin.end(), '\0');
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, o.key.data(), o.key.size()}};
  if (CK_RV rv = f->C_FindObjectsInit(login, tmpl, 2); rv != CKR_OK) die("C_FindObjectsInit", rv);
  CK_OBJECT_HANDLE key = 0;
  CK_ULONG nfound = 0;
  if (CK_RV rv = f->C_FindObjects(login, &key, 1, &nfound); rv != CKR_OK) die("C_FindObjects", rv);
  f->C_FindObjectsFinal(login);
  if (nfound != 1) {
    std::fprintf(stderr, "p11bench: no private key labelled '%s'\n", o.key.c_str());
    return 2;
  }

  // Mechanism and input.
  CK_MECHANISM mech{};
  std::vector<unsigned char> input;
  std::vector<unsigned char> digest(32);
  for (size_t i = 0; i < digest.size(); ++i) digest[i] = static_cast<unsigned char>(0xA5 ^ (i * 7));
  if (o.mech == "ECDSA") {
    mech.mechanism = CKM_ECDSA;
    input = digest;
  } else if (o.mech == "RSA_PKCS") {
    mech.mechanism = CKM_RSA_PKCS;
    static const unsigned char prefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                           0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    input.assign(prefix, prefix + sizeof prefix);
    input.insert(input.end(), digest.begin(), digest.end());
  } else if (o.mech == "SHA256_RSA_PKCS") {
    mech.mechanism = CKM_SHA256_RSA_PKCS;
    input = digest;
  } else {
    usage(("unknown --mech " + o.mech).c_str());
  }

  // Threads: own session each; warm-up; barrier; timed phase.
  std::atomic<long> next{0};
  std::atomic<long> errors{0};
  std::atomic<int> setup_failed{0};
  std::vector<std::vector<double>> lat(static_cast<size_t>(o.threads));
  Clock::time_point t0{};
  double cpu0 = 0;
  std::barrier start(o.threads, [&]() noexcept {
    cpu0 = cpu_seconds();
    t0 = Clock::now();
  });
  std::vector<Clock::time_point> t_end(static_cast<size_t>(o.threads));
  CK_RV first_error = CKR_OK;
  std::atomic<bool> first_error_set{false};

  auto sign_once = [&](CK_SESSION_HANDLE h) -> CK_RV {
    CK_RV rv = f->C_SignInit(h, &mech, key);
    if (rv != CKR_OK) return rv;
    unsigned char sig[1024];
    CK_ULONG len = sizeof sig;
    return f->C_Sign(h, input.data(), input.size(), sig, &len);
  };
  auto note_error = [&](CK_RV rv) {
    errors.fetch_add(1, std::memory_order_relaxed);
    bool expected = false;
    if (first_error_set.compare_exchange_strong(expected, true)) first_error = rv;
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < o.threads; ++t) {
    threads.emplace_back([&, t] {
      CK_SESSION_HANDLE h = 0;
      CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &h);
      if (rv != CKR_OK) {
        note_error(rv);
        setup_failed.fetch_add(1);
      }
      for (long i = 0; rv == CKR_OK && i < o.warmup; ++i)
        if (CK_RV r = sign_once(h); r != CKR_OK) note_error(r);
      auto& mine = lat[static_cast<size_t>(t)];
      mine.reserve(static_cast<size_t>(o.ops / o.threads + 16));
      start.arrive_and_wait();
      if (rv == CKR_OK) {
        while (next.fetch_add(1, std::memory_order_relaxed) < o.ops) {
          auto a = Clock::now();
          CK_RV r = sign_once(h);
          auto b = Clock::now();
          if (r != CKR_OK) note_error(r);
          else mine.push_back(std::chrono::duration<double, std::micro>(b - a).count());
        }
        f->C_CloseSession(h);
      }
      t_end[static_cast<size_t>(t)] = Clock::now();
    });
  }
  for (auto& th : threads) th.join();
  auto t1 = *std::max_element(t_end.begin(), t_end.end());
  double cpu = cpu_seconds() - cpu0;

  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  double secs = std::chrono::duration<double>(t1 - t0).count();
  double mean = 0;
  for (double x : all) mean += x;
  if (!all.empty()) mean /= static_cast<double>(all.size());

  f->C_Logout(login);
  f->C_CloseSession(login);
  f->C_Finalize(nullptr);

  std::printf("{\"name\":\"%s\",\"mech\":\"%s\",\"threads\":%d,\"ops\":%zu,\"errors\":%ld,\"seconds\":%.4f,"
              "\"ops_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f,\"cpu_us_per_op\":%.1f}\n",
              o.name.c_str(), o.mech.c_str(), o.threads, all.size(), errors.load(), secs,
              secs > 0 ? static_cast<double>(all.size()) / secs : 0.0, percentile(all, 0.50), percentile(all, 0.99),
              mean, all.empty() ? 0.0 : cpu * 1e6 / static_cast<double>(all.size()));
  std::fflush(stdout);
  if (errors.load() != 0)
    std::fprintf(stderr, "p11bench: %ld signature(s) failed, first CKR 0x%08lx\n", errors.load(),
                 static_cast<unsigned long>(first_error));
  return errors.load() == 0 ? 0 : 1;
}
