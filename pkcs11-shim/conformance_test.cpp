// Conformance with the PKCS#11 v2.40 base specification (section numbers are the spec's): sessions
// (R/O and R/W, several at once), login state, slot/token/mechanism information, random numbers and
// the rules that end a cryptographic operation. Each case states the rule it checks.
#include "tests/shim/shim_fixture.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>
#include <thread>

using namespace p11relay;
using namespace p11relay::shim;
using namespace p11relay::shim::testing;

namespace {

CK_STATE state_of(Shim& s, CK_SESSION_HANDLE h) {
  CK_SESSION_INFO si;
  REQUIRE(s.f->C_GetSessionInfo(h, &si) == CKR_OK);
  return si.state;
}

CK_SESSION_HANDLE open_flags(Shim& s, CK_FLAGS flags) {
  CK_SESSION_HANDLE h = 0;
  REQUIRE(s.f->C_OpenSession(s.slot(), flags, nullptr, nullptr, &h) == CKR_OK);
  return h;
}

constexpr CK_FLAGS kRO = CKF_SERIAL_SESSION;
constexpr CK_FLAGS kRW = CKF_SERIAL_SESSION | CKF_RW_SESSION;

// A blank-padded, NUL-free field (v2.40 §3.2: CK_UTF8CHAR arrays are padded with blanks, not terminated).
bool blank_padded(const CK_UTF8CHAR* p, size_t n) {
  return std::none_of(p, p + n, [](CK_UTF8CHAR c) { return c == 0; });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Sessions (§5.6, C_OpenSession, C_GetSessionInfo, C_CloseSession, C_CloseAllSessions)

TEST_CASE("conformance: R/O and R/W sessions side by side; the state follows the application's login") {
  Shim s;
  CK_SESSION_HANDLE ro = open_flags(s, kRO), rw = open_flags(s, kRW);
  CHECK(ro != rw);
  CHECK(state_of(s, ro) == CKS_RO_PUBLIC_SESSION);
  CHECK(state_of(s, rw) == CKS_RW_PUBLIC_SESSION);
  // Logging in on one session logs the application in on all of its sessions with the token.
  REQUIRE(s.f->C_Login(ro, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4) == CKR_OK);
  CHECK(state_of(s, ro) == CKS_RO_USER_FUNCTIONS);
  CHECK(state_of(s, rw) == CKS_RW_USER_FUNCTIONS);
  // A session opened while logged in starts in a user state.
  CK_SESSION_HANDLE later = open_flags(s, kRW);
  CHECK(state_of(s, later) == CKS_RW_USER_FUNCTIONS);
  // C_Logout on any session logs all of them out.
  REQUIRE(s.f->C_Logout(later) == CKR_OK);
  CHECK(state_of(s, ro) == CKS_RO_PUBLIC_SESSION);
  CHECK(state_of(s, rw) == CKS_RW_PUBLIC_SESSION);
  CHECK(s.f->C_Logout(rw) == CKR_USER_NOT_LOGGED_IN);
}

TEST_CASE("conformance: CKF_SERIAL_SESSION is required; flags are reported back") {
  Shim s;
  CK_SESSION_HANDLE h = 0;
  CHECK(s.f->C_OpenSession(s.slot(), CKF_RW_SESSION, nullptr, nullptr, &h) == CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  CHECK(s.f->C_OpenSession(s.slot(), 0, nullptr, nullptr, &h) == CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  h = open_flags(s, kRW);
  CK_SESSION_INFO si;
  REQUIRE(s.f->C_GetSessionInfo(h, &si) == CKR_OK);
  CHECK(si.flags == kRW);
  CHECK(si.slotID == s.slot());
  CHECK(si.ulDeviceError == 0);
}

TEST_CASE("conformance: many sessions at once, opened and used from several threads") {
  Shim s;
  CK_SLOT_ID slot = s.slot();
  constexpr int kThreads = 6, kPerThread = 20;
  std::vector<std::vector<CK_SESSION_HANDLE>> handles(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        CK_SESSION_HANDLE h = 0;
        if (s.f->C_OpenSession(slot, (i % 2) ? kRW : kRO, nullptr, nullptr, &h) != CKR_OK) ++failures;
        CK_BYTE r[8];
        if (s.f->C_GenerateRandom(h, r, sizeof r) != CKR_OK) ++failures;
        handles[t].push_back(h);
      }
    });
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  std::set<CK_SESSION_HANDLE> all;
  for (const auto& v : handles) all.insert(v.begin(), v.end());
  CHECK(all.size() == kThreads * kPerThread);  // every handle distinct
  CK_TOKEN_INFO ti;
  REQUIRE(s.f->C_GetTokenInfo(slot, &ti) == CKR_OK);
  CHECK(ti.ulSessionCount == kThreads * kPerThread);
  CHECK(ti.ulRwSessionCount == kThreads * kPerThread / 2);
  // Closing one session leaves the others usable; C_CloseAllSessions ends them all.
  CK_SESSION_HANDLE first = handles[0][0], second = handles[0][1];
  REQUIRE(s.f->C_CloseSession(first) == CKR_OK);
  CK_SESSION_INFO si;
  CHECK(s.f->C_GetSessionInfo(first, &si) == CKR_SESSION_HANDLE_INVALID);
  CHECK(s.f->C_GetSessionInfo(second, &si) == CKR_OK);
  REQUIRE(s.f->C_CloseAllSessions(slot) == CKR_OK);
  CHECK(s.f->C_GetSessionInfo(second, &si) == CKR_SESSION_HANDLE_INVALID);
  REQUIRE(s.f->C_GetTokenInfo(slot, &ti) == CKR_OK);
  CHECK(ti.ulSessionCount == 0);
  CHECK(ti.ulRwSessionCount == 0);
}

TEST_CASE("conformance: closing the application's last session with the token logs the user out") {
  Shim s;
  CK_SESSION_HANDLE a = open_flags(s, kRO), b = open_flags(s, kRW);
  REQUIRE(s.f->C_Login(a, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4) == CKR_OK);
  REQUIRE(s.f->C_CloseSession(a) == CKR_OK);
  CHECK(state_of(s, b) == CKS_RW_USER_FUNCTIONS);  // still one session: still logged in
  REQUIRE(s.f->C_CloseSession(b) == CKR_OK);
  CHECK(state_of(s, open_flags(s, kRW)) == CKS_RW_PUBLIC_SESSION);
}

TEST_CASE("conformance: sessions belong to the C_Initialize that made them") {
  Shim s;
  CK_SESSION_HANDLE h = open_flags(s, kRW);
  REQUIRE(s.f->C_Finalize(nullptr) == CKR_OK);
  CK_SESSION_INFO si;
  CHECK(s.f->C_GetSessionInfo(h, &si) == CKR_CRYPTOKI_NOT_INITIALIZED);
  REQUIRE(s.f->C_Initialize(nullptr) == CKR_OK);
  CHECK(s.f->C_GetSessionInfo(h, &si) == CKR_SESSION_HANDLE_INVALID);
}

// ---------------------------------------------------------------------------------------------
// Login (C_Login, C_Logout)

TEST_CASE("conformance: with pkcs11.pin set, a wrong PIN is CKR_PIN_INCORRECT and changes nothing") {
  Shim s(true, std::string("correct horse"));
  CK_SESSION_HANDLE h = open_flags(s, kRW);
  CHECK(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "wrong", 5) == CKR_PIN_INCORRECT);
  CHECK(state_of(s, h) == CKS_RW_PUBLIC_SESSION);
  CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
  CHECK(s.find(h, {{CKA_CLASS, &priv, sizeof priv}}).empty());  // private objects stay hidden
  REQUIRE(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "correct horse", 13) == CKR_OK);
  CHECK(s.find(h, {{CKA_CLASS, &priv, sizeof priv}}).size() == 2);
  CHECK(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "correct horse", 13) == CKR_USER_ALREADY_LOGGED_IN);
  CHECK(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "wrong", 5) == CKR_USER_ALREADY_LOGGED_IN);
  CHECK(s.f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR) "x", 1) == CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
  CHECK(s.f->C_Login(h, 42, (CK_UTF8CHAR_PTR) "x", 1) == CKR_USER_TYPE_INVALID);
}

TEST_CASE("conformance: CKU_SO: R/O sessions forbid it, and the relay token has no security officer") {
  Shim s(true, std::string("1234"));
  CK_SESSION_HANDLE ro = open_flags(s, kRO), rw = open_flags(s, kRW);
  CHECK(s.f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR) "1234", 4) == CKR_SESSION_READ_ONLY_EXISTS);
  REQUIRE(s.f->C_CloseSession(ro) == CKR_OK);
  CHECK(s.f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR) "1234", 4) == CKR_PIN_INCORRECT);
  CHECK(state_of(s, rw) == CKS_RW_PUBLIC_SESSION);
  CHECK(s.f->C_InitPIN(rw, (CK_UTF8CHAR_PTR) "1", 1) == CKR_USER_NOT_LOGGED_IN);
}

// ---------------------------------------------------------------------------------------------
// Slot, token and mechanism information (C_GetInfo, C_GetSlotInfo, C_GetTokenInfo, C_GetMechanism*)

TEST_CASE("conformance: information structures are blank padded and consistent") {
  Shim s;
  CK_INFO info;
  REQUIRE(s.f->C_GetInfo(&info) == CKR_OK);
  CHECK(info.cryptokiVersion.major == 2);
  CHECK(info.cryptokiVersion.minor == 40);
  CHECK(info.flags == 0);
  CHECK(blank_padded(info.manufacturerID, sizeof info.manufacturerID));
  CHECK(blank_padded(info.libraryDescription, sizeof info.libraryDescription));
  CK_SLOT_INFO si;
  REQUIRE(s.f->C_GetSlotInfo(s.slot(), &si) == CKR_OK);
  CHECK(blank_padded(si.slotDescription, sizeof si.slotDescription));
  CHECK(blank_padded(si.manufacturerID, sizeof si.manufacturerID));
  CHECK((si.flags & CKF_TOKEN_PRESENT));
  CK_TOKEN_INFO ti;
  REQUIRE(s.f->C_GetTokenInfo(s.slot(), &ti) == CKR_OK);
  for (auto [p, n] : {std::pair{ti.label, sizeof ti.label}, {ti.manufacturerID, sizeof ti.manufacturerID},
                      {ti.model, sizeof ti.model}, {ti.serialNumber, sizeof ti.serialNumber}})
    CHECK(blank_padded(p, n));
  CHECK((ti.flags & (CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_LOGIN_REQUIRED | CKF_RNG)) ==
        (CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_LOGIN_REQUIRED | CKF_RNG));
  CHECK_FALSE((ti.flags & CKF_WRITE_PROTECTED));
  CHECK(ti.ulMinPinLen <= ti.ulMaxPinLen);
  CHECK(ti.ulSessionCount <= ti.ulMaxSessionCount);
  CHECK(ti.ulRwSessionCount <= ti.ulMaxRwSessionCount);
  // No clock on the token: utcTime is blank (CKF_CLOCK_ON_TOKEN not set).
  CHECK_FALSE((ti.flags & CKF_CLOCK_ON_TOKEN));
}

TEST_CASE("conformance: every listed mechanism has C_GetMechanismInfo, with a sign or digest function") {
  Shim s;
  CK_ULONG n = 0;
  REQUIRE(s.f->C_GetMechanismList(s.slot(), nullptr, &n) == CKR_OK);
  REQUIRE(n > 0);
  std::vector<CK_MECHANISM_TYPE> mechs(n);
  REQUIRE(s.f->C_GetMechanismList(s.slot(), mechs.data(), &n) == CKR_OK);
  for (auto mech : mechs) {
    CAPTURE(mech);
    CK_MECHANISM_INFO mi;
    REQUIRE(s.f->C_GetMechanismInfo(s.slot(), mech, &mi) == CKR_OK);
    CHECK((mi.flags & (CKF_SIGN | CKF_DIGEST)));
    CHECK(mi.ulMinKeySize <= mi.ulMaxKeySize);
    // A signing token: nothing encrypts, wraps, derives or generates keys.
    CHECK_FALSE((mi.flags & (CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP | CKF_DERIVE | CKF_GENERATE |
                             CKF_GENERATE_KEY_PAIR)));
  }
}

// ---------------------------------------------------------------------------------------------
// Random numbers (C_GenerateRandom, C_SeedRandom)

TEST_CASE("conformance: C_GenerateRandom in any session state; zero length is fine") {
  Shim s;
  CK_SESSION_HANDLE ro = open_flags(s, kRO);
  CHECK(s.f->C_GenerateRandom(ro, nullptr, 0) == CKR_OK);
  Bytes a(32), b(32);
  REQUIRE(s.f->C_GenerateRandom(ro, a.data(), a.size()) == CKR_OK);
  REQUIRE(s.f->C_GenerateRandom(ro, b.data(), b.size()) == CKR_OK);
  CHECK(a != b);
  Bytes big(100000);
  REQUIRE(s.f->C_GenerateRandom(ro, big.data(), big.size()) == CKR_OK);
  CHECK(std::count(big.begin(), big.end(), 0) < 1000);  // ~390 expected
  CHECK(s.f->C_SeedRandom(ro, a.data(), a.size()) == CKR_RANDOM_SEED_NOT_SUPPORTED);
}

// ---------------------------------------------------------------------------------------------
// Ending operations (§5.2 and the description of each function)

namespace {

// A session with a signing operation on the EC key ready.
struct SignSetup {
  Shim s;
  CK_SESSION_HANDLE h;
  CK_OBJECT_HANDLE key, pub;
  CK_MECHANISM mech = {CKM_ECDSA_SHA256, nullptr, 0};
  SignSetup() : h(s.open()), key(s.key(h, CKO_PRIVATE_KEY, "ec256")), pub(s.key(h, CKO_PUBLIC_KEY, "ec256")) {}
  void init() { REQUIRE(s.f->C_SignInit(h, &mech, key) == CKR_OK); }
  bool active() {  // C_SignInit answers CKR_OPERATION_ACTIVE only while an operation is active
    CK_RV rv = s.f->C_SignInit(h, &mech, key);
    REQUIRE((rv == CKR_OK || rv == CKR_OPERATION_ACTIVE));
    return rv == CKR_OPERATION_ACTIVE;
  }
};

}  // namespace

TEST_CASE("conformance: C_Sign keeps the operation only for CKR_BUFFER_TOO_SMALL and a length query") {
  SignSetup t;
  Bytes sig(64);
  CK_ULONG len = 0;
  t.init();
  REQUIRE(t.s.f->C_Sign(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), nullptr, &len) == CKR_OK);
  CHECK(len == 64);
  len = 10;
  REQUIRE(t.s.f->C_Sign(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_BUFFER_TOO_SMALL);
  CHECK(t.active());
  CHECK(t.s.state->sign_requests.empty());
  // Success ends it.
  len = sig.size();
  REQUIRE(t.s.f->C_Sign(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_OK);
  CHECK_FALSE(t.active());  // (and starts a new one)
  // A NULL argument ends it.
  CHECK(t.s.f->C_Sign(t.h, nullptr, 5, sig.data(), &len) == CKR_ARGUMENTS_BAD);
  CHECK_FALSE(t.active());
  CHECK(t.s.f->C_Sign(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), nullptr) == CKR_ARGUMENTS_BAD);
  CHECK_FALSE(t.active());
  // A daemon error ends it.
  t.s.state->sign_error = Error(ErrorCode::policy_denied, "not now");
  CHECK(t.s.f->C_Sign(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_FUNCTION_REJECTED);
  CHECK_FALSE(t.active());
  t.s.state->sign_error.reset();
  // C_Sign cannot finish a multi-part operation: the attempt fails and ends it.
  REQUIRE(t.s.f->C_SignUpdate(t.h, (CK_BYTE_PTR)kData.data(), 3) == CKR_OK);
  CHECK(t.s.f->C_Sign(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_OPERATION_ACTIVE);
  CHECK(t.s.f->C_SignFinal(t.h, sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE("conformance: C_SignUpdate errors and C_SignFinal results end the operation as C_Sign's do") {
  SignSetup t;
  Bytes sig(64);
  CK_ULONG len = 0;
  t.init();
  CHECK(t.s.f->C_SignUpdate(t.h, nullptr, 3) == CKR_ARGUMENTS_BAD);
  CHECK(t.s.f->C_SignFinal(t.h, sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  t.init();
  REQUIRE(t.s.f->C_SignUpdate(t.h, (CK_BYTE_PTR)kData.data(), kData.size()) == CKR_OK);
  REQUIRE(t.s.f->C_SignFinal(t.h, nullptr, &len) == CKR_OK);
  len = 1;
  REQUIRE(t.s.f->C_SignFinal(t.h, sig.data(), &len) == CKR_BUFFER_TOO_SMALL);
  CHECK(t.s.f->C_SignFinal(t.h, sig.data(), nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(t.s.f->C_SignFinal(t.h, sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  t.init();
  REQUIRE(t.s.f->C_SignUpdate(t.h, (CK_BYTE_PTR)kData.data(), kData.size()) == CKR_OK);
  len = sig.size();
  REQUIRE(t.s.f->C_SignFinal(t.h, sig.data(), &len) == CKR_OK);
  CHECK(t.s.verify(t.h, t.mech, t.pub, kData, Bytes(sig.begin(), sig.begin() + len)) == CKR_OK);
  CHECK(t.s.f->C_SignUpdate(t.h, (CK_BYTE_PTR)kData.data(), 1) == CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE("conformance: C_SignInit while active is CKR_OPERATION_ACTIVE and the active one goes on") {
  SignSetup t;
  t.init();
  REQUIRE(t.s.f->C_SignUpdate(t.h, (CK_BYTE_PTR)kData.data(), 10) == CKR_OK);
  CK_MECHANISM other = {CKM_ECDSA_SHA384, nullptr, 0};
  CHECK(t.s.f->C_SignInit(t.h, &other, t.key) == CKR_OPERATION_ACTIVE);
  REQUIRE(t.s.f->C_SignUpdate(t.h, (CK_BYTE_PTR)kData.data() + 10, kData.size() - 10) == CKR_OK);
  Bytes sig(64);
  CK_ULONG len = sig.size();
  REQUIRE(t.s.f->C_SignFinal(t.h, sig.data(), &len) == CKR_OK);
  CHECK(t.s.verify(t.h, t.mech, t.pub, kData, sig) == CKR_OK);  // signed with ECDSA-SHA256, the first one
  // A failed C_SignInit leaves no operation behind.
  CK_MECHANISM bad = {CKM_SHA256_RSA_PKCS, nullptr, 0};
  CHECK(t.s.f->C_SignInit(t.h, &bad, t.key) == CKR_KEY_TYPE_INCONSISTENT);
  CHECK(t.s.f->C_SignFinal(t.h, sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE("conformance: operations are per session, and C_CloseSession ends them") {
  SignSetup t;
  CK_SESSION_HANDLE other = t.s.open(false);
  t.init();
  Bytes sig(64);
  CK_ULONG len = sig.size();
  CHECK(t.s.f->C_SignFinal(other, sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(t.active());
  REQUIRE(t.s.f->C_CloseSession(t.h) == CKR_OK);
  CHECK(t.s.f->C_SignFinal(t.h, sig.data(), &len) == CKR_SESSION_HANDLE_INVALID);
}

TEST_CASE("conformance: C_Digest / C_DigestFinal / C_DigestUpdate / C_DigestKey end the digest per the rules") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  Bytes d(32);
  CK_ULONG len = 0;
  auto active = [&] { return s.f->C_DigestInit(h, &m) == CKR_OPERATION_ACTIVE; };
  REQUIRE(s.f->C_DigestInit(h, &m) == CKR_OK);
  REQUIRE(s.f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, nullptr, &len) == CKR_OK);
  len = 31;
  REQUIRE(s.f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, d.data(), &len) == CKR_BUFFER_TOO_SMALL);
  CHECK(active());
  CHECK(s.f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, d.data(), nullptr) == CKR_ARGUMENTS_BAD);
  CHECK_FALSE(active());  // ended; a new one is active now
  CHECK(s.f->C_Digest(h, nullptr, 3, d.data(), &len) == CKR_ARGUMENTS_BAD);
  CHECK_FALSE(active());
  REQUIRE(s.f->C_DigestUpdate(h, (CK_BYTE_PTR) "a", 1) == CKR_OK);
  CHECK(s.f->C_Digest(h, (CK_BYTE_PTR) "bc", 2, d.data(), &len) == CKR_OPERATION_ACTIVE);
  CHECK_FALSE(active());
  CHECK(s.f->C_DigestUpdate(h, nullptr, 1) == CKR_ARGUMENTS_BAD);
  CHECK_FALSE(active());
  REQUIRE(s.f->C_DigestUpdate(h, (CK_BYTE_PTR) "abc", 3) == CKR_OK);
  len = 1;
  CHECK(s.f->C_DigestFinal(h, d.data(), &len) == CKR_BUFFER_TOO_SMALL);
  CHECK(s.f->C_DigestFinal(h, d.data(), nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_DigestFinal(h, d.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  // C_DigestKey: the relay token has no secret key to digest; the failure ends the digest.
  REQUIRE(s.f->C_DigestInit(h, &m) == CKR_OK);
  CHECK(s.f->C_DigestKey(h, s.key(h, CKO_PRIVATE_KEY, "ec256")) == CKR_KEY_INDIGESTIBLE);
  CHECK(s.f->C_DigestFinal(h, d.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  REQUIRE(s.f->C_DigestInit(h, &m) == CKR_OK);
  CHECK(s.f->C_DigestKey(h, 999999) == CKR_KEY_HANDLE_INVALID);
  CHECK(s.f->C_DigestFinal(h, d.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE("conformance: C_Verify and C_VerifyFinal end the operation whatever they answer") {
  SignSetup t;
  Bytes sig(64);
  CK_ULONG len = sig.size();
  t.init();
  REQUIRE(t.s.f->C_Sign(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_OK);
  auto verify_active = [&] { return t.s.f->C_VerifyInit(t.h, &t.mech, t.pub) == CKR_OPERATION_ACTIVE; };
  Bytes bad = sig;
  bad[5] ^= 1;
  REQUIRE(t.s.f->C_VerifyInit(t.h, &t.mech, t.pub) == CKR_OK);
  CHECK(t.s.f->C_Verify(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), bad.data(), bad.size()) == CKR_SIGNATURE_INVALID);
  CHECK_FALSE(verify_active());
  CHECK(t.s.f->C_Verify(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), 3) == CKR_SIGNATURE_LEN_RANGE);
  CHECK_FALSE(verify_active());
  CHECK(t.s.f->C_Verify(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), nullptr, 0) == CKR_ARGUMENTS_BAD);
  CHECK_FALSE(verify_active());
  REQUIRE(t.s.f->C_VerifyUpdate(t.h, (CK_BYTE_PTR)kData.data(), 4) == CKR_OK);
  CHECK(t.s.f->C_Verify(t.h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), sig.size()) == CKR_OPERATION_ACTIVE);
  CHECK_FALSE(verify_active());
  CHECK(t.s.f->C_VerifyUpdate(t.h, nullptr, 4) == CKR_ARGUMENTS_BAD);
  CHECK_FALSE(verify_active());
  REQUIRE(t.s.f->C_VerifyUpdate(t.h, (CK_BYTE_PTR)kData.data(), kData.size()) == CKR_OK);
  CHECK(t.s.f->C_VerifyFinal(t.h, bad.data(), bad.size()) == CKR_SIGNATURE_INVALID);
  CHECK_FALSE(verify_active());
  CHECK(t.s.f->C_VerifyFinal(t.h, nullptr, 0) == CKR_ARGUMENTS_BAD);
  CHECK_FALSE(verify_active());
  REQUIRE(t.s.f->C_VerifyUpdate(t.h, (CK_BYTE_PTR)kData.data(), kData.size()) == CKR_OK);
  CHECK(t.s.f->C_VerifyFinal(t.h, sig.data(), sig.size()) == CKR_OK);
  CHECK(t.s.f->C_VerifyFinal(t.h, sig.data(), sig.size()) == CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE("conformance: the functions a signing token lacks answer without touching the session") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_MECHANISM m = {CKM_RSA_PKCS, nullptr, 0};
  CK_ULONG n = 0;
  CHECK(s.f->C_EncryptInit(h, &m, 1) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_GetOperationState(h, nullptr, &n) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_GetFunctionStatus(h) == CKR_FUNCTION_NOT_PARALLEL);
  CHECK(s.f->C_CancelFunction(h) == CKR_FUNCTION_NOT_PARALLEL);
  CHECK(state_of(s, h) == CKS_RO_USER_FUNCTIONS);
}
