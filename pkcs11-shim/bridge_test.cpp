// Drives the whole module through its function list (entry.cpp → bridge → module) with a fake
// transport: every CKR_ path the shim returns, the size-query conventions, and what goes on the wire.
#include "pkcs11-shim/bridge.h"
#include "tests/shim/shim_fixture.h"

#include "common/digest.h"
#include "common/x509.h"

#include <doctest/doctest.h>
#include <openssl/rsa.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

using namespace p11relay;
using namespace p11relay::shim;
using namespace p11relay::shim::testing;

// entry.cpp's exported PKCS#11 3.0 discovery function, declared as entry.cpp defines it.
namespace p11relay::shim::entry {
struct Interface;
}
extern "C" CK_RV C_GetInterfaceList(p11relay::shim::entry::Interface* pInterfacesList, CK_ULONG_PTR pulCount);

TEST_CASE("before C_Initialize every function answers CKR_CRYPTOKI_NOT_INITIALIZED") {
  Shim s(false);
  CK_INFO info;
  CK_ULONG n = 0;
  CK_SESSION_HANDLE h;
  CHECK(s.f->C_GetInfo(&info) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(s.f->C_GetSlotList(CK_FALSE, nullptr, &n) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(s.f->C_OpenSession(1, CKF_SERIAL_SESSION, nullptr, nullptr, &h) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(s.f->C_Sign(1, nullptr, 0, nullptr, &n) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(s.f->C_EncryptInit(1, nullptr, 0) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(s.f->C_WaitForSlotEvent(0, nullptr, nullptr) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(s.f->C_Finalize(nullptr) == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(C_GetFunctionList(nullptr) == CKR_ARGUMENTS_BAD);
}

TEST_CASE("C_Initialize argument checks and double initialisation") {
  Shim s(false);
  CK_C_INITIALIZE_ARGS args{};
  int reserved;
  args.pReserved = &reserved;
  CHECK(s.f->C_Initialize(&args) == CKR_ARGUMENTS_BAD);
  args = {};
  args.CreateMutex = reinterpret_cast<CK_CREATEMUTEX>(1);
  CHECK(s.f->C_Initialize(&args) == CKR_ARGUMENTS_BAD);
  args.DestroyMutex = reinterpret_cast<CK_DESTROYMUTEX>(1);
  args.LockMutex = reinterpret_cast<CK_LOCKMUTEX>(1);
  args.UnlockMutex = reinterpret_cast<CK_UNLOCKMUTEX>(1);
  CHECK(s.f->C_Initialize(&args) == CKR_CANT_LOCK);
  args.flags = CKF_OS_LOCKING_OK;
  CHECK(s.f->C_Initialize(&args) == CKR_OK);
  CHECK(s.f->C_Initialize(nullptr) == CKR_CRYPTOKI_ALREADY_INITIALIZED);
  CHECK(s.f->C_Finalize(&reserved) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_Finalize(nullptr) == CKR_OK);
  CHECK(s.f->C_Initialize(nullptr) == CKR_OK);
  CHECK(s.state->list_calls == 0);  // C_Initialize is local
}

TEST_CASE("a broken factory (config error) is CKR_GENERAL_ERROR at C_Initialize, not a crash") {
  Shim s(false);
  bridge::set_module_factory([]() -> Result<std::unique_ptr<Module>> {
    return ck(CKR_GENERAL_ERROR, "configuration: /x/client.yml:3: unknown key 'bogus'");
  });
  CHECK(s.f->C_Initialize(nullptr) == CKR_GENERAL_ERROR);
  CK_INFO info;
  CHECK(s.f->C_GetInfo(&info) == CKR_CRYPTOKI_NOT_INITIALIZED);
}

TEST_CASE("C_GetInfo, C_GetInterface") {
  Shim s;
  CK_INFO info;
  CHECK(s.f->C_GetInfo(nullptr) == CKR_ARGUMENTS_BAD);
  REQUIRE(s.f->C_GetInfo(&info) == CKR_OK);
  CHECK(info.cryptokiVersion.major == 2);
  CHECK(info.cryptokiVersion.minor == 40);
  CHECK(std::string((char*)info.manufacturerID, 32).rfind("p11relay ", 0) == 0);
  CHECK(s.f->version.major == 2);
  CK_ULONG n = 0;
  CHECK(C_GetInterfaceList(nullptr, &n) == CKR_OK);
  CHECK(n == 1);
}

TEST_CASE("slot list: size query, short buffer, stable IDs derived from the token identity") {
  Shim s;
  CK_ULONG n = 0;
  CHECK(s.f->C_GetSlotList(CK_TRUE, nullptr, nullptr) == CKR_ARGUMENTS_BAD);
  REQUIRE(s.f->C_GetSlotList(CK_TRUE, nullptr, &n) == CKR_OK);
  CHECK(n == 1);
  CHECK(s.state->list_calls == 1);
  CK_SLOT_ID slots[2] = {0, 0};
  n = 0;
  CHECK(s.f->C_GetSlotList(CK_TRUE, slots, &n) == CKR_BUFFER_TOO_SMALL);
  CHECK(n == 1);
  n = 2;
  REQUIRE(s.f->C_GetSlotList(CK_TRUE, slots, &n) == CKR_OK);
  CHECK(s.state->list_calls == 1);  // cached
  CK_SLOT_ID first = slots[0];
  CHECK(first < 0x80000000UL);
  // A new module (another process, a restart) derives the same ID.
  s.f->C_Finalize(nullptr);
  REQUIRE(s.f->C_Initialize(nullptr) == CKR_OK);
  CHECK(s.slot() == first);
  // Keys on a second token: a second slot, and the first keeps its ID.
  auto other = ec_key().desc;
  other.name = "other";
  other.token.serial = "99";
  s.state->keys.push_back(other);
  s.f->C_Finalize(nullptr);
  REQUIRE(s.f->C_Initialize(nullptr) == CKR_OK);
  n = 2;
  REQUIRE(s.f->C_GetSlotList(CK_FALSE, slots, &n) == CKR_OK);
  CHECK(n == 2);
  CHECK(slots[0] == first);
  CHECK(slots[1] != first);
}

TEST_CASE("slot and token info") {
  Shim s;
  CK_SLOT_ID slot = s.slot();
  CK_SLOT_INFO si;
  CK_TOKEN_INFO ti;
  CHECK(s.f->C_GetSlotInfo(slot, nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_GetSlotInfo(slot + 1, &si) == CKR_SLOT_ID_INVALID);
  REQUIRE(s.f->C_GetSlotInfo(slot, &si) == CKR_OK);
  CHECK((si.flags & CKF_TOKEN_PRESENT));
  CHECK(s.f->C_GetTokenInfo(slot + 1, &ti) == CKR_SLOT_ID_INVALID);
  CHECK(s.f->C_GetTokenInfo(slot, nullptr) == CKR_ARGUMENTS_BAD);
  REQUIRE(s.f->C_GetTokenInfo(slot, &ti) == CKR_OK);
  CHECK(std::string((char*)ti.label, 32) == "p11relay-demo                   ");
  CHECK(std::string((char*)ti.serialNumber, 16) == "0123456789abcdef");
  CHECK(std::string((char*)ti.model, 16) == "SoftHSM v2      ");
  CHECK_FALSE((ti.flags & CKF_WRITE_PROTECTED));  // R/W sessions open, as on a USB signing token
  CHECK(ti.ulMaxRwSessionCount == CK_EFFECTIVELY_INFINITE);
  CHECK((ti.flags & CKF_LOGIN_REQUIRED));
  CHECK((ti.flags & CKF_TOKEN_INITIALIZED));
  CHECK((ti.flags & CKF_USER_PIN_INITIALIZED));
  CHECK_FALSE((ti.flags & CKF_PROTECTED_AUTHENTICATION_PATH));
}

TEST_CASE("the key list is cached for keycacheseconds; a failing daemon gives an empty list, not an error") {
  Shim s(true, std::nullopt, 0);
  s.state->list_error = Error(ErrorCode::network, "connection refused");
  CK_ULONG n = 7;
  CHECK(s.f->C_GetSlotList(CK_TRUE, nullptr, &n) == CKR_OK);
  CHECK(n == 0);
  s.state->list_error.reset();
  CHECK(s.f->C_GetSlotList(CK_TRUE, nullptr, &n) == CKR_OK);
  CHECK(n == 1);
  // The token disappears from the daemon: its slot stays (stable IDs), without a token.
  CK_SLOT_ID slot = s.slot();
  s.state->keys.clear();
  CHECK(s.f->C_GetSlotList(CK_TRUE, nullptr, &n) == CKR_OK);
  CHECK(n == 0);
  CHECK(s.f->C_GetSlotList(CK_FALSE, nullptr, &n) == CKR_OK);
  CHECK(n == 1);
  CK_TOKEN_INFO ti;
  CHECK(s.f->C_GetTokenInfo(slot, &ti) == CKR_TOKEN_NOT_PRESENT);
  CK_SESSION_HANDLE h;
  CHECK(s.f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &h) == CKR_TOKEN_NOT_PRESENT);
}

TEST_CASE("mechanism list and info") {
  Shim s;
  CK_SLOT_ID slot = s.slot();
  CK_ULONG n = 0;
  CHECK(s.f->C_GetMechanismList(slot, nullptr, nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_GetMechanismList(slot + 1, nullptr, &n) == CKR_SLOT_ID_INVALID);
  REQUIRE(s.f->C_GetMechanismList(slot, nullptr, &n) == CKR_OK);
  CHECK(n == 18 + 5);  // 12 RSA + 6 ECDSA + 5 digests
  std::vector<CK_MECHANISM_TYPE> mechs(n);
  CK_ULONG small = 3;
  CHECK(s.f->C_GetMechanismList(slot, mechs.data(), &small) == CKR_BUFFER_TOO_SMALL);
  CHECK(small == n);
  REQUIRE(s.f->C_GetMechanismList(slot, mechs.data(), &n) == CKR_OK);
  CK_MECHANISM_INFO mi;
  REQUIRE(s.f->C_GetMechanismInfo(slot, CKM_SHA256_RSA_PKCS, &mi) == CKR_OK);
  CHECK(mi.ulMinKeySize == 2048);
  CHECK(mi.ulMaxKeySize == 2048);
  CHECK(mi.flags == (CKF_SIGN | CKF_VERIFY));
  REQUIRE(s.f->C_GetMechanismInfo(slot, CKM_ECDSA_SHA256, &mi) == CKR_OK);
  CHECK(mi.ulMinKeySize == 256);
  CHECK((mi.flags & CKF_EC_NAMEDCURVE));
  REQUIRE(s.f->C_GetMechanismInfo(slot, CKM_SHA384, &mi) == CKR_OK);
  CHECK(mi.flags == CKF_DIGEST);
  CHECK(s.f->C_GetMechanismInfo(slot, CKM_AES_CBC, &mi) == CKR_MECHANISM_INVALID);
  CHECK(s.f->C_GetMechanismInfo(slot, CKM_AES_CBC, nullptr) == CKR_ARGUMENTS_BAD);
}

TEST_CASE("R/W sessions open (CKF_SERIAL_SESSION | CKF_RW_SESSION, as Go's pkcs11 and OpenSSH open them)") {
  Shim s;
  CK_SLOT_ID slot = s.slot();
  CK_SESSION_HANDLE rw = 0, ro = 0;
  REQUIRE(s.f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &rw) == CKR_OK);
  CK_SESSION_INFO si;
  REQUIRE(s.f->C_GetSessionInfo(rw, &si) == CKR_OK);
  CHECK(si.state == CKS_RW_PUBLIC_SESSION);
  CHECK(si.flags == (CKF_SERIAL_SESSION | CKF_RW_SESSION));
  REQUIRE(s.f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &ro) == CKR_OK);
  CK_TOKEN_INFO ti;
  REQUIRE(s.f->C_GetTokenInfo(slot, &ti) == CKR_OK);
  CHECK(ti.ulSessionCount == 2);
  CHECK(ti.ulRwSessionCount == 1);
  // v2.40 C_Login: the state rules for CKU_SO first; the relay token has no security officer.
  CHECK(s.f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR) "x", 1) == CKR_SESSION_READ_ONLY_EXISTS);
  REQUIRE(s.f->C_CloseSession(ro) == CKR_OK);
  CHECK(s.f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR) "x", 1) == CKR_PIN_INCORRECT);
  REQUIRE(s.f->C_Login(rw, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4) == CKR_OK);
  CHECK(s.f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR) "x", 1) == CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
  REQUIRE(s.f->C_GetSessionInfo(rw, &si) == CKR_OK);
  CHECK(si.state == CKS_RW_USER_FUNCTIONS);
  // Signing works in a R/W session like in a R/O one.
  CK_OBJECT_HANDLE ec = s.key(rw, CKO_PRIVATE_KEY, "ec256");
  CHECK(s.sign(rw, {CKM_ECDSA_SHA256, nullptr, 0}, ec, kData).ok());
  REQUIRE(s.f->C_Logout(rw) == CKR_OK);
  REQUIRE(s.f->C_GetSessionInfo(rw, &si) == CKR_OK);
  CHECK(si.state == CKS_RW_PUBLIC_SESSION);
}

TEST_CASE("serial sessions; session info follows the login state") {
  Shim s;
  CK_SLOT_ID slot = s.slot();
  CK_SESSION_HANDLE h = 0;
  CHECK(s.f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_OpenSession(slot + 1, CKF_SERIAL_SESSION, nullptr, nullptr, &h) == CKR_SLOT_ID_INVALID);
  CHECK(s.f->C_OpenSession(slot, 0, nullptr, nullptr, &h) == CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  REQUIRE(s.f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &h) == CKR_OK);
  CK_SESSION_INFO si;
  CHECK(s.f->C_GetSessionInfo(h, nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_GetSessionInfo(h + 100, &si) == CKR_SESSION_HANDLE_INVALID);
  REQUIRE(s.f->C_GetSessionInfo(h, &si) == CKR_OK);
  CHECK(si.state == CKS_RO_PUBLIC_SESSION);
  CHECK(si.slotID == slot);
  CHECK(si.flags == CKF_SERIAL_SESSION);

  CHECK(s.f->C_Logout(h) == CKR_USER_NOT_LOGGED_IN);
  CHECK(s.f->C_Login(h, CKU_SO, (CK_UTF8CHAR_PTR) "x", 1) == CKR_SESSION_READ_ONLY_EXISTS);
  CHECK(s.f->C_Login(h, CKU_CONTEXT_SPECIFIC, (CK_UTF8CHAR_PTR) "x", 1) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.f->C_Login(h, 77, (CK_UTF8CHAR_PTR) "x", 1) == CKR_USER_TYPE_INVALID);
  CHECK(s.f->C_Login(h, CKU_USER, nullptr, 4) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_Login(h + 100, CKU_USER, (CK_UTF8CHAR_PTR) "x", 1) == CKR_SESSION_HANDLE_INVALID);
  CHECK(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "any pin", 7) == CKR_OK);
  CHECK(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "any pin", 7) == CKR_USER_ALREADY_LOGGED_IN);
  REQUIRE(s.f->C_GetSessionInfo(h, &si) == CKR_OK);
  CHECK(si.state == CKS_RO_USER_FUNCTIONS);

  // Login state belongs to the application: a second session is logged in too.
  CK_SESSION_HANDLE h2 = 0;
  REQUIRE(s.f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &h2) == CKR_OK);
  REQUIRE(s.f->C_GetSessionInfo(h2, &si) == CKR_OK);
  CHECK(si.state == CKS_RO_USER_FUNCTIONS);
  CK_TOKEN_INFO ti;
  REQUIRE(s.f->C_GetTokenInfo(slot, &ti) == CKR_OK);
  CHECK(ti.ulSessionCount == 2);
  CHECK(s.f->C_CloseSession(h2) == CKR_OK);
  CHECK(s.f->C_CloseSession(h2) == CKR_SESSION_HANDLE_INVALID);
  CHECK(s.f->C_Logout(h) == CKR_OK);
  CHECK(s.f->C_Login(h, CKU_USER, nullptr, 0) == CKR_OK);  // no PIN configured: any PIN, even none
  // Closing the last session logs the user out.
  CHECK(s.f->C_CloseAllSessions(slot + 1) == CKR_SLOT_ID_INVALID);
  CHECK(s.f->C_CloseAllSessions(slot) == CKR_OK);
  REQUIRE(s.f->C_OpenSession(slot, CKF_SERIAL_SESSION, nullptr, nullptr, &h) == CKR_OK);
  REQUIRE(s.f->C_GetSessionInfo(h, &si) == CKR_OK);
  CHECK(si.state == CKS_RO_PUBLIC_SESSION);
}

TEST_CASE("a PIN in the client config is required and compared locally") {
  Shim s(true, std::string("s3cret"));
  CK_SESSION_HANDLE h = s.open(false);
  CHECK(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "s3cre", 5) == CKR_PIN_INCORRECT);
  CHECK(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "s3cret!", 7) == CKR_PIN_INCORRECT);
  CHECK(s.f->C_Login(h, CKU_USER, nullptr, 0) == CKR_PIN_INCORRECT);
  CHECK(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "s3cret", 6) == CKR_OK);
  CHECK(s.state->sign_requests.empty());
  CHECK(s.state->list_calls == 1);  // the PIN went nowhere
}

TEST_CASE("objects: private keys only after login; public key, certificate and chain always") {
  Shim s;
  CK_SESSION_HANDLE h = s.open(false);
  auto all = s.find(h, {});
  CHECK(all.size() == 2 /* public keys */ + 3 /* rsa cert, ec cert, CA cert */);
  CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE t = {CKA_CLASS, &priv, sizeof priv};
  CHECK(s.find(h, {t}).empty());
  REQUIRE(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "0", 1) == CKR_OK);
  CHECK(s.find(h, {}).size() == 7);
  CHECK(s.find(h, {t}).size() == 2);
  CK_BYTE id1 = 0x01;
  CK_ATTRIBUTE by_id = {CKA_ID, &id1, 1};
  CHECK(s.find(h, {by_id}).size() == 3);  // private key, public key, certificate share CKA_ID
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE signers = {CKA_SIGN, &yes, 1};
  CHECK(s.find(h, {signers}).size() == 2);

  CHECK(s.f->C_FindObjectsInit(h, nullptr, 1) == CKR_ARGUMENTS_BAD);
  CK_ULONG n;
  CK_OBJECT_HANDLE out[4];
  CHECK(s.f->C_FindObjects(h, out, 4, &n) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.f->C_FindObjectsFinal(h) == CKR_OPERATION_NOT_INITIALIZED);
  REQUIRE(s.f->C_FindObjectsInit(h, nullptr, 0) == CKR_OK);
  CHECK(s.f->C_FindObjectsInit(h, nullptr, 0) == CKR_OPERATION_ACTIVE);
  CHECK(s.f->C_FindObjects(h, nullptr, 4, &n) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_FindObjects(h, out, 4, nullptr) == CKR_ARGUMENTS_BAD);
  REQUIRE(s.f->C_FindObjects(h, out, 4, &n) == CKR_OK);
  CHECK(n == 4);
  REQUIRE(s.f->C_FindObjects(h, out, 4, &n) == CKR_OK);
  CHECK(n == 3);
  REQUIRE(s.f->C_FindObjects(h, out, 4, &n) == CKR_OK);
  CHECK(n == 0);
  CHECK(s.f->C_FindObjectsFinal(h) == CKR_OK);

  // Handles are stable across sessions and cache refreshes.
  CK_OBJECT_HANDLE k1 = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CK_SESSION_HANDLE h2 = s.open(false);
  CHECK(s.key(h2, CKO_PRIVATE_KEY, "rsa2048") == k1);

  // A private object is invisible after logout.
  REQUIRE(s.f->C_Logout(h) == CKR_OK);
  CK_ATTRIBUTE a = {CKA_CLASS, nullptr, 0};
  CHECK(s.f->C_GetAttributeValue(h, k1, &a, 1) == CKR_OBJECT_HANDLE_INVALID);
}

TEST_CASE("C_GetAttributeValue: size queries, short buffers, sensitive and unknown attributes") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE priv = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CK_OBJECT_HANDLE pub = s.key(h, CKO_PUBLIC_KEY, "rsa2048");
  CK_OBJECT_HANDLE cert = s.key(h, CKO_CERTIFICATE, "rsa2048");

  CK_ULONG bits = 0;
  CK_BBOOL sensitive = CK_FALSE;
  CK_BYTE small[4];
  CK_ATTRIBUTE t[] = {
      {CKA_MODULUS_BITS, &bits, sizeof bits},
      {CKA_MODULUS, nullptr, 0},                   // size query
      {CKA_PRIVATE_EXPONENT, nullptr, 0},          // sensitive
      {CKA_VALUE_LEN, nullptr, 0},                 // not an attribute of this object
      {CKA_PUBLIC_EXPONENT, small, 1},             // too small (65537 is 3 bytes)
      {CKA_SENSITIVE, &sensitive, sizeof sensitive},
  };
  CHECK(s.f->C_GetAttributeValue(h, priv, t, 6) == CKR_ATTRIBUTE_SENSITIVE);
  CHECK(bits == 2048);
  CHECK(t[1].ulValueLen == 256);
  CHECK(t[2].ulValueLen == CK_UNAVAILABLE_INFORMATION);
  CHECK(t[3].ulValueLen == CK_UNAVAILABLE_INFORMATION);
  CHECK(t[4].ulValueLen == CK_UNAVAILABLE_INFORMATION);
  CHECK(sensitive == CK_TRUE);
  CK_ATTRIBUTE unknown = {CKA_VALUE_LEN, nullptr, 0};
  CHECK(s.f->C_GetAttributeValue(h, priv, &unknown, 1) == CKR_ATTRIBUTE_TYPE_INVALID);
  CK_ATTRIBUTE shorty = {CKA_PUBLIC_EXPONENT, small, 1};
  CHECK(s.f->C_GetAttributeValue(h, priv, &shorty, 1) == CKR_BUFFER_TOO_SMALL);
  CHECK(s.f->C_GetAttributeValue(h, priv, nullptr, 1) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_GetAttributeValue(h + 100, priv, t, 1) == CKR_SESSION_HANDLE_INVALID);
  CHECK(s.f->C_GetAttributeValue(h, 9999, t, 1) == CKR_OBJECT_HANDLE_INVALID);

  CHECK(s.attr(h, priv, CKA_EXTRACTABLE) == attr_bool(false));
  CHECK(s.attr(h, priv, CKA_NEVER_EXTRACTABLE) == attr_bool(true));
  CHECK(s.attr(h, priv, CKA_ALWAYS_SENSITIVE) == attr_bool(true));
  CHECK(s.attr(h, priv, CKA_PRIVATE) == attr_bool(true));
  CHECK(s.attr(h, priv, CKA_TOKEN) == attr_bool(true));
  CHECK(s.attr(h, priv, CKA_KEY_TYPE) == attr_ulong(CKK_RSA));
  CHECK(s.attr(h, priv, CKA_PUBLIC_EXPONENT) == Bytes{0x01, 0x00, 0x01});
  CHECK(s.attr(h, pub, CKA_MODULUS) == s.attr(h, priv, CKA_MODULUS));
  CHECK(s.attr(h, pub, CKA_VERIFY) == attr_bool(true));
  CHECK(s.attr(h, pub, CKA_PUBLIC_KEY_INFO) == rsa_key().desc.spki);
  Bytes allowed = s.attr(h, priv, CKA_ALLOWED_MECHANISMS);
  CHECK(allowed.size() == 12 * sizeof(CK_MECHANISM_TYPE));

  CHECK(s.attr(h, cert, CKA_VALUE) == rsa_key().desc.certificates[0]);
  CHECK(s.attr(h, cert, CKA_CERTIFICATE_TYPE) == attr_ulong(CKC_X_509));
  auto x = parse_certificate_der(rsa_key().desc.certificates[0]);
  REQUIRE(x.ok());
  Bytes subject = s.attr(h, cert, CKA_SUBJECT);
  CHECK(subject == s.attr(h, priv, CKA_SUBJECT));
  CHECK(s.attr(h, cert, CKA_SERIAL_NUMBER) == Bytes{0x02, 0x02, 0x10, 0x92});  // INTEGER 4242
  CHECK(s.attr(h, cert, CKA_ID) == Bytes{0x01});

  CK_ULONG size = 0;
  CHECK(s.f->C_GetObjectSize(h, cert, &size) == CKR_OK);
  CHECK(size > rsa_key().desc.certificates[0].size());
  CHECK(s.f->C_GetObjectSize(h, cert, nullptr) == CKR_ARGUMENTS_BAD);
}

TEST_CASE("EC objects: CKA_EC_PARAMS is the curve OID, CKA_EC_POINT a DER OCTET STRING; chain cert has its own ID") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE priv = s.key(h, CKO_PRIVATE_KEY, "ec256");
  CK_OBJECT_HANDLE pub = s.key(h, CKO_PUBLIC_KEY, "ec256");
  const Bytes p256 = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CHECK(s.attr(h, pub, CKA_EC_PARAMS) == p256);
  CHECK(s.attr(h, priv, CKA_EC_PARAMS) == p256);
  Bytes point = s.attr(h, pub, CKA_EC_POINT);
  REQUIRE(point.size() == 67);
  CHECK(point[0] == 0x04);
  CHECK(point[1] == 65);
  CHECK(point[2] == 0x04);
  CK_ATTRIBUTE v = {CKA_VALUE, nullptr, 0};
  CHECK(s.f->C_GetAttributeValue(h, priv, &v, 1) == CKR_ATTRIBUTE_SENSITIVE);
  CK_OBJECT_HANDLE ca = s.key(h, CKO_CERTIFICATE, "Test CA");
  CHECK(s.attr(h, ca, CKA_ID) != Bytes{0x02});
  CHECK(s.attr(h, ca, CKA_CERTIFICATE_CATEGORY) == attr_ulong(2));
  CHECK(s.attr(h, ca, CKA_VALUE) == ec_key().desc.certificates[1]);
}

TEST_CASE("hash-and-sign mechanisms hash locally and send only the DigestInfo / digest") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE rsa = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CK_OBJECT_HANDLE rsa_pub = s.key(h, CKO_PUBLIC_KEY, "rsa2048");
  CK_OBJECT_HANDLE ec = s.key(h, CKO_PRIVATE_KEY, "ec256");
  CK_OBJECT_HANDLE ec_pub = s.key(h, CKO_PUBLIC_KEY, "ec256");

  struct Case {
    CK_MECHANISM_TYPE mech;
    HashAlg hash;
  };
  for (auto [mech, alg] : {Case{CKM_SHA1_RSA_PKCS, HashAlg::sha1}, Case{CKM_SHA224_RSA_PKCS, HashAlg::sha224},
                           Case{CKM_SHA256_RSA_PKCS, HashAlg::sha256}, Case{CKM_SHA384_RSA_PKCS, HashAlg::sha384},
                           Case{CKM_SHA512_RSA_PKCS, HashAlg::sha512}}) {
    CAPTURE(mech);
    s.state->sign_requests.clear();
    auto sig = s.sign(h, {mech, nullptr, 0}, rsa, kData);
    REQUIRE(sig.ok());
    CHECK(sig->size() == 256);
    REQUIRE(s.state->sign_requests.size() == 1);
    const auto& [name, req] = s.state->sign_requests[0];
    CHECK(name == "rsa2048");
    CHECK(req.mechanism == "CKM_RSA_PKCS");
    CHECK(req.input == digest_info(alg, hash(alg, kData)));
    CHECK(s.verify(h, {mech, nullptr, 0}, rsa_pub, kData, *sig) == CKR_OK);
  }
  for (auto [mech, alg] : {Case{CKM_ECDSA_SHA1, HashAlg::sha1}, Case{CKM_ECDSA_SHA256, HashAlg::sha256},
                           Case{CKM_ECDSA_SHA384, HashAlg::sha384}, Case{CKM_ECDSA_SHA512, HashAlg::sha512},
                           Case{CKM_ECDSA_SHA224, HashAlg::sha224}}) {
    CAPTURE(mech);
    s.state->sign_requests.clear();
    auto sig = s.sign(h, {mech, nullptr, 0}, ec, kData);
    REQUIRE(sig.ok());
    CHECK(sig->size() == 64);
    const auto& req = s.state->sign_requests.at(0).second;
    CHECK(req.mechanism == "CKM_ECDSA");
    CHECK(req.input == hash(alg, kData));
    CHECK(s.verify(h, {mech, nullptr, 0}, ec_pub, kData, *sig) == CKR_OK);
  }
  // PSS, hashed locally, params carried explicitly.
  CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA384, CKG_MGF1_SHA256, 20};
  s.state->sign_requests.clear();
  auto sig = s.sign(h, {CKM_SHA384_RSA_PKCS_PSS, &pss, sizeof pss}, rsa, kData);
  REQUIRE(sig.ok());
  const auto& req = s.state->sign_requests.at(0).second;
  CHECK(req.mechanism == "CKM_RSA_PKCS_PSS");
  CHECK(req.input == hash(HashAlg::sha384, kData));
  REQUIRE(req.pss.has_value());
  CHECK(req.pss->hash == HashAlg::sha384);
  CHECK(req.pss->mgf_hash == HashAlg::sha256);
  CHECK(req.pss->salt_length == 20);
  CHECK(s.verify(h, {CKM_SHA384_RSA_PKCS_PSS, &pss, sizeof pss}, rsa_pub, kData, *sig) == CKR_OK);
  // Raw mechanisms pass the input through.
  Bytes di = digest_info(HashAlg::sha256, hash(HashAlg::sha256, kData));
  s.state->sign_requests.clear();
  sig = s.sign(h, {CKM_RSA_PKCS, nullptr, 0}, rsa, di);
  REQUIRE(sig.ok());
  CHECK(s.state->sign_requests.at(0).second.input == di);
  CHECK(s.verify(h, {CKM_SHA256_RSA_PKCS, nullptr, 0}, rsa_pub, kData, *sig) == CKR_OK);
  CK_RSA_PKCS_PSS_PARAMS pss256 = {CKM_SHA256, CKG_MGF1_SHA256, 32};
  Bytes d256 = hash(HashAlg::sha256, kData);
  sig = s.sign(h, {CKM_RSA_PKCS_PSS, &pss256, sizeof pss256}, rsa, d256);
  REQUIRE(sig.ok());
  CHECK(s.verify(h, {CKM_SHA256_RSA_PKCS_PSS, &pss256, sizeof pss256}, rsa_pub, kData, *sig) == CKR_OK);
  sig = s.sign(h, {CKM_ECDSA, nullptr, 0}, ec, d256);
  REQUIRE(sig.ok());
  CHECK(s.verify(h, {CKM_ECDSA_SHA256, nullptr, 0}, ec_pub, kData, *sig) == CKR_OK);
}

TEST_CASE("multi-part signing equals single-part; the size query sends nothing") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE rsa = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CK_OBJECT_HANDLE rsa_pub = s.key(h, CKO_PUBLIC_KEY, "rsa2048");
  CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, nullptr, 0};
  REQUIRE(s.f->C_SignInit(h, &m, rsa) == CKR_OK);
  CHECK(s.f->C_SignInit(h, &m, rsa) == CKR_OPERATION_ACTIVE);
  REQUIRE(s.f->C_SignUpdate(h, (CK_BYTE_PTR)kData.data(), 10) == CKR_OK);
  REQUIRE(s.f->C_SignUpdate(h, (CK_BYTE_PTR)kData.data() + 10, kData.size() - 10) == CKR_OK);
  CK_ULONG len = 0;
  REQUIRE(s.f->C_SignFinal(h, nullptr, &len) == CKR_OK);
  CHECK(len == 256);
  Bytes sig(255);
  len = 255;
  CHECK(s.f->C_SignFinal(h, sig.data(), &len) == CKR_BUFFER_TOO_SMALL);
  CHECK(len == 256);
  CHECK(s.state->sign_requests.empty());
  sig.resize(len);
  REQUIRE(s.f->C_SignFinal(h, sig.data(), &len) == CKR_OK);
  CHECK(s.state->sign_requests.size() == 1);
  CHECK(s.state->sign_requests[0].second.input == digest_info(HashAlg::sha256, hash(HashAlg::sha256, kData)));
  CHECK(s.f->C_SignFinal(h, sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.verify(h, m, rsa_pub, kData, sig) == CKR_OK);

  // Single-part, with a short buffer first: the operation survives CKR_BUFFER_TOO_SMALL.
  REQUIRE(s.f->C_SignInit(h, &m, rsa) == CKR_OK);
  len = 10;
  CHECK(s.f->C_Sign(h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_BUFFER_TOO_SMALL);
  CHECK(len == 256);
  REQUIRE(s.f->C_Sign(h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_OK);
  CHECK(s.f->C_Sign(h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.verify(h, m, rsa_pub, kData, sig) == CKR_OK);
}

TEST_CASE("C_SignInit checks: handles, key classes, mechanisms and PSS parameters") {
  Shim s;
  CK_SESSION_HANDLE h = s.open(false);
  CK_OBJECT_HANDLE rsa_pub = s.key(h, CKO_PUBLIC_KEY, "rsa2048");
  CK_OBJECT_HANDLE cert = s.key(h, CKO_CERTIFICATE, "rsa2048");
  CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, nullptr, 0};
  REQUIRE(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "0", 1) == CKR_OK);
  CK_OBJECT_HANDLE rsa = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CK_OBJECT_HANDLE ec = s.key(h, CKO_PRIVATE_KEY, "ec256");
  REQUIRE(s.f->C_Logout(h) == CKR_OK);
  CHECK(s.f->C_SignInit(h, &m, rsa) == CKR_USER_NOT_LOGGED_IN);
  REQUIRE(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "0", 1) == CKR_OK);

  CHECK(s.f->C_SignInit(h, nullptr, rsa) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_SignInit(h + 100, &m, rsa) == CKR_SESSION_HANDLE_INVALID);
  CHECK(s.f->C_SignInit(h, &m, 9999) == CKR_KEY_HANDLE_INVALID);
  CHECK(s.f->C_SignInit(h, &m, cert) == CKR_KEY_HANDLE_INVALID);
  CHECK(s.f->C_SignInit(h, &m, rsa_pub) == CKR_KEY_FUNCTION_NOT_PERMITTED);
  CK_MECHANISM aes = {CKM_AES_CBC, nullptr, 0};
  CHECK(s.f->C_SignInit(h, &aes, rsa) == CKR_MECHANISM_INVALID);
  CK_MECHANISM ecdsa = {CKM_ECDSA_SHA256, nullptr, 0};
  CHECK(s.f->C_SignInit(h, &ecdsa, rsa) == CKR_KEY_TYPE_INCONSISTENT);
  CHECK(s.f->C_SignInit(h, &m, ec) == CKR_KEY_TYPE_INCONSISTENT);
  CK_MECHANISM pss = {CKM_SHA256_RSA_PKCS_PSS, nullptr, 0};
  CHECK(s.f->C_SignInit(h, &pss, rsa) == CKR_MECHANISM_PARAM_INVALID);
  CK_RSA_PKCS_PSS_PARAMS p = {CKM_SHA384, CKG_MGF1_SHA256, 32};
  pss = {CKM_SHA256_RSA_PKCS_PSS, &p, sizeof p};
  CHECK(s.f->C_SignInit(h, &pss, rsa) == CKR_MECHANISM_PARAM_INVALID);  // hashAlg ≠ mechanism hash
  p = {CKM_SHA256, 0x999, 32};
  CHECK(s.f->C_SignInit(h, &pss, rsa) == CKR_MECHANISM_PARAM_INVALID);  // unknown MGF
  p = {CKM_SHA256, CKG_MGF1_SHA256, 300};
  CHECK(s.f->C_SignInit(h, &pss, rsa) == CKR_MECHANISM_PARAM_INVALID);  // salt too long for 2048 bits
  p = {CKM_SHA256, CKG_MGF1_SHA256, 32};
  pss.ulParameterLen = 3;
  CHECK(s.f->C_SignInit(h, &pss, rsa) == CKR_MECHANISM_PARAM_INVALID);
  pss.ulParameterLen = sizeof p;
  CHECK(s.f->C_SignInit(h, &pss, rsa) == CKR_OK);

  // A key whose daemon entry does not allow PSS offers no PSS mechanism.
  CK_ULONG len = 0;
  CHECK(s.f->C_Sign(h + 100, nullptr, 0, nullptr, &len) == CKR_SESSION_HANDLE_INVALID);
  CHECK(s.f->C_Sign(h, nullptr, 5, nullptr, &len) == CKR_ARGUMENTS_BAD);  // and the operation ends
  CHECK(s.f->C_SignUpdate(h, nullptr, 5) == CKR_OPERATION_NOT_INITIALIZED);
  REQUIRE(s.f->C_SignInit(h, &pss, rsa) == CKR_OK);
  CHECK(s.f->C_SignUpdate(h, nullptr, 5) == CKR_ARGUMENTS_BAD);
  REQUIRE(s.f->C_SignInit(h, &pss, rsa) == CKR_OK);
  CHECK(s.f->C_SignFinal(h, nullptr, nullptr) == CKR_ARGUMENTS_BAD);
  CK_SESSION_HANDLE h2 = s.open(false);
  CHECK(s.f->C_Sign(h2, nullptr, 0, nullptr, &len) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.f->C_SignUpdate(h2, nullptr, 0) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.f->C_SignFinal(h2, nullptr, &len) == CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE("raw mechanisms check input lengths locally") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE rsa = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CK_OBJECT_HANDLE ec = s.key(h, CKO_PRIVATE_KEY, "ec256");
  CK_MECHANISM raw = {CKM_RSA_PKCS, nullptr, 0};
  auto r = s.sign(h, raw, rsa, Bytes(246));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().ckr == CKR_DATA_LEN_RANGE);
  CK_RSA_PKCS_PSS_PARAMS p = {CKM_SHA256, CKG_MGF1_SHA256, 32};
  r = s.sign(h, {CKM_RSA_PKCS_PSS, &p, sizeof p}, rsa, Bytes(31));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().ckr == CKR_DATA_LEN_RANGE);
  r = s.sign(h, {CKM_ECDSA, nullptr, 0}, ec, Bytes{});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().ckr == CKR_DATA_LEN_RANGE);
  // Longer than the curve order: truncated to the leftmost 32 bytes (X9.62), as a token does.
  s.state->sign_requests.clear();
  r = s.sign(h, {CKM_ECDSA, nullptr, 0}, ec, hash(HashAlg::sha512, kData));
  REQUIRE(r.ok());
  CHECK(s.state->sign_requests.at(0).second.input.size() == 32);
  CHECK(s.state->sign_requests.size() == 1);
}

TEST_CASE("daemon errors map to the problem's CKR and end the operation") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE ec = s.key(h, CKO_PRIVATE_KEY, "ec256");
  CK_MECHANISM m = {CKM_ECDSA_SHA256, nullptr, 0};
  struct Case {
    Error error;
    CK_RV expect;
  } cases[] = {
      {Error(ErrorCode::forbidden, "not yours"), CKR_KEY_HANDLE_INVALID},
      {Error(ErrorCode::network, "connection refused"), CKR_DEVICE_ERROR},
      {Error(ErrorCode::token_not_present, "re-opening"), CKR_TOKEN_NOT_PRESENT},
      {Error(ErrorCode::unavailable, "busy"), CKR_DEVICE_ERROR},
      {Error(ErrorCode::policy_denied, "policy"), CKR_FUNCTION_REJECTED},
      {Error(ErrorCode::quota, "100 per hour"), CKR_FUNCTION_REJECTED},
      {Error(ErrorCode::request_denied, "denied by alice: not a release"), CKR_FUNCTION_REJECTED},
      {Error(ErrorCode::request_expired, "no decision"), CKR_FUNCTION_CANCELED},
      {relay::decode_problem(400, relay::encode_problem(Error(ErrorCode::data_len_range, "too long"))),
       CKR_DATA_LEN_RANGE},
  };
  for (const auto& c : cases) {
    CAPTURE(c.error.message);
    s.state->sign_error = c.error;
    REQUIRE(s.f->C_SignInit(h, &m, ec) == CKR_OK);
    Bytes sig(64);
    CK_ULONG len = sig.size();
    CHECK(s.f->C_Sign(h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == c.expect);
    CHECK(s.f->C_Sign(h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  }
}

TEST_CASE("C_Verify with the public key: bad signatures, wrong lengths, multi-part") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE rsa = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CK_OBJECT_HANDLE pub = s.key(h, CKO_PUBLIC_KEY, "rsa2048");
  CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, nullptr, 0};
  auto sig = s.sign(h, m, rsa, kData);
  REQUIRE(sig.ok());
  Bytes bad = *sig;
  bad[10] ^= 1;
  CHECK(s.verify(h, m, pub, kData, bad) == CKR_SIGNATURE_INVALID);
  CHECK(s.verify(h, m, pub, kData, Bytes(sig->begin(), sig->end() - 1)) == CKR_SIGNATURE_LEN_RANGE);
  CHECK(s.verify(h, m, rsa, kData, *sig) == CKR_KEY_FUNCTION_NOT_PERMITTED);
  REQUIRE(s.f->C_VerifyInit(h, &m, pub) == CKR_OK);
  CHECK(s.f->C_VerifyInit(h, &m, pub) == CKR_OPERATION_ACTIVE);
  REQUIRE(s.f->C_VerifyUpdate(h, (CK_BYTE_PTR)kData.data(), 5) == CKR_OK);
  REQUIRE(s.f->C_VerifyUpdate(h, (CK_BYTE_PTR)kData.data() + 5, kData.size() - 5) == CKR_OK);
  CHECK(s.f->C_VerifyFinal(h, sig->data(), sig->size()) == CKR_OK);
  CHECK(s.f->C_VerifyFinal(h, sig->data(), sig->size()) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.f->C_Verify(h, (CK_BYTE_PTR)kData.data(), kData.size(), sig->data(), sig->size()) ==
        CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.state->sign_requests.size() == 1);  // verification is local
}

TEST_CASE("C_Digest: local hashing with size queries, multi-part") {
  Shim s;
  CK_SESSION_HANDLE h = s.open(false);
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  CK_MECHANISM bad = {CKM_SHA256_RSA_PKCS, nullptr, 0};
  CHECK(s.f->C_DigestInit(h, nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_DigestInit(h, &bad) == CKR_MECHANISM_INVALID);
  CK_ULONG len = 0;
  CHECK(s.f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, nullptr, &len) == CKR_OPERATION_NOT_INITIALIZED);
  REQUIRE(s.f->C_DigestInit(h, &m) == CKR_OK);
  CHECK(s.f->C_DigestInit(h, &m) == CKR_OPERATION_ACTIVE);
  REQUIRE(s.f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, nullptr, &len) == CKR_OK);
  CHECK(len == 32);
  Bytes d(32);
  len = 31;
  CHECK(s.f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, d.data(), &len) == CKR_BUFFER_TOO_SMALL);
  len = 32;
  REQUIRE(s.f->C_Digest(h, (CK_BYTE_PTR) "abc", 3, d.data(), &len) == CKR_OK);
  CHECK(to_hex(d) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  REQUIRE(s.f->C_DigestInit(h, &m) == CKR_OK);
  REQUIRE(s.f->C_DigestUpdate(h, (CK_BYTE_PTR) "a", 1) == CKR_OK);
  REQUIRE(s.f->C_DigestUpdate(h, (CK_BYTE_PTR) "bc", 2) == CKR_OK);
  REQUIRE(s.f->C_DigestFinal(h, d.data(), &len) == CKR_OK);
  CHECK(to_hex(d) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(s.f->C_DigestFinal(h, d.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
}

TEST_CASE("random, and what a signing token does not do") {
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  Bytes r(48, 0);
  CHECK(s.f->C_GenerateRandom(h, nullptr, 4) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_GenerateRandom(h + 100, r.data(), 4) == CKR_SESSION_HANDLE_INVALID);
  REQUIRE(s.f->C_GenerateRandom(h, r.data(), r.size()) == CKR_OK);
  CHECK(r != Bytes(48, 0));
  CHECK(s.f->C_SeedRandom(h, r.data(), 4) == CKR_RANDOM_SEED_NOT_SUPPORTED);

  CK_MECHANISM m = {CKM_RSA_PKCS, nullptr, 0};
  CK_OBJECT_HANDLE o;
  CK_ULONG n = 0;
  CK_OBJECT_HANDLE cert = s.find(h, {}).at(0);
  CHECK(s.f->C_InitToken(s.slot(), nullptr, 0, nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_InitToken(s.slot() + 1, nullptr, 0, (CK_UTF8CHAR_PTR) "label") == CKR_SLOT_ID_INVALID);
  CHECK(s.f->C_InitToken(s.slot(), nullptr, 0, (CK_UTF8CHAR_PTR) "label") == CKR_SESSION_EXISTS);
  CHECK(s.f->C_InitPIN(h, (CK_UTF8CHAR_PTR) "1", 1) == CKR_USER_NOT_LOGGED_IN);
  CHECK(s.f->C_InitPIN(h, nullptr, 1) == CKR_ARGUMENTS_BAD);
  // R/O session: token objects are not changed there (v2.40 C_DestroyObject, C_SetAttributeValue, C_SetPIN).
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE token_obj = {CKA_TOKEN, &yes, sizeof yes};
  CHECK(s.f->C_CreateObject(h, &token_obj, 1, &o) == CKR_SESSION_READ_ONLY);
  CHECK(s.f->C_CreateObject(h, nullptr, 0, &o) == CKR_FUNCTION_NOT_SUPPORTED);  // a session object
  CHECK(s.f->C_CreateObject(h, nullptr, 1, &o) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_DestroyObject(h, cert) == CKR_SESSION_READ_ONLY);
  CHECK(s.f->C_SetAttributeValue(h, cert, &token_obj, 1) == CKR_SESSION_READ_ONLY);
  CHECK(s.f->C_SetPIN(h, (CK_UTF8CHAR_PTR) "1", 1, (CK_UTF8CHAR_PTR) "2", 1) == CKR_SESSION_READ_ONLY);
  CHECK(s.f->C_CopyObject(h, cert, nullptr, 0, &o) == CKR_ACTION_PROHIBITED);
  CHECK(s.f->C_DestroyObject(h, 999999) == CKR_OBJECT_HANDLE_INVALID);
  CHECK(s.f->C_CopyObject(h, 999999, nullptr, 0, &o) == CKR_OBJECT_HANDLE_INVALID);
  CHECK(s.f->C_SetAttributeValue(h, 999999, nullptr, 0) == CKR_OBJECT_HANDLE_INVALID);
  // R/W session: the objects say CKA_DESTROYABLE / CKA_MODIFIABLE / CKA_COPYABLE false.
  CK_SESSION_HANDLE rw = 0;
  REQUIRE(s.f->C_OpenSession(s.slot(), CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &rw) == CKR_OK);
  CHECK(s.f->C_DestroyObject(rw, cert) == CKR_ACTION_PROHIBITED);
  CHECK(s.f->C_SetAttributeValue(rw, cert, &token_obj, 1) == CKR_ACTION_PROHIBITED);
  CHECK(s.f->C_CopyObject(rw, cert, nullptr, 0, &o) == CKR_ACTION_PROHIBITED);
  CHECK(s.f->C_CreateObject(rw, &token_obj, 1, &o) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_SetPIN(rw, (CK_UTF8CHAR_PTR) "1", 1, (CK_UTF8CHAR_PTR) "2", 1) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_GenerateKeyPair(rw, &m, nullptr, 0, nullptr, 0, &o, &o) == CKR_MECHANISM_INVALID);
  CHECK(s.f->C_GenerateKeyPair(rw, nullptr, nullptr, 0, nullptr, 0, &o, &o) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_GenerateKey(rw, &m, nullptr, 0, &o) == CKR_MECHANISM_INVALID);
  CHECK(s.f->C_GenerateKey(rw + 100, &m, nullptr, 0, &o) == CKR_SESSION_HANDLE_INVALID);
  // Nothing above harmed the sessions.
  CK_SESSION_INFO si;
  CHECK(s.f->C_GetSessionInfo(rw, &si) == CKR_OK);
  CHECK(s.f->C_GetSessionInfo(h, &si) == CKR_OK);
  CHECK(s.f->C_EncryptInit(h, &m, 1) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_DecryptInit(h, &m, 1) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_Encrypt(h, nullptr, 0, nullptr, &n) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_Decrypt(h, nullptr, 0, nullptr, &n) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_SignRecoverInit(h, &m, 1) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_VerifyRecoverInit(h, &m, 1) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_WrapKey(h, &m, 1, 1, nullptr, &n) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_UnwrapKey(h, &m, 1, nullptr, 0, nullptr, 0, &o) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_DeriveKey(h, &m, 1, nullptr, 0, &o) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_DigestKey(h, 1) == CKR_OPERATION_NOT_INITIALIZED);
  CHECK(s.f->C_GetOperationState(h, nullptr, &n) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_SetOperationState(h, nullptr, 0, 0, 0) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_DigestEncryptUpdate(h, nullptr, 0, nullptr, &n) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_SignEncryptUpdate(h, nullptr, 0, nullptr, &n) == CKR_FUNCTION_NOT_SUPPORTED);
  CHECK(s.f->C_GetFunctionStatus(h) == CKR_FUNCTION_NOT_PARALLEL);
  CHECK(s.f->C_CancelFunction(h) == CKR_FUNCTION_NOT_PARALLEL);
  CHECK(s.f->C_WaitForSlotEvent(0, nullptr, nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_EncryptInit(h + 100, &m, 1) == CKR_SESSION_HANDLE_INVALID);
  CHECK(s.f->C_CreateObject(h + 100, nullptr, 0, &o) == CKR_SESSION_HANDLE_INVALID);
}

TEST_CASE("keys whose daemon entry allows only CKM_RSA_PKCS offer no PSS") {
  Shim s(false);
  auto k = rsa_key().desc;
  k.mechanisms = {"CKM_RSA_PKCS"};
  s.state->keys = {k};
  REQUIRE(s.f->C_Initialize(nullptr) == CKR_OK);
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE rsa = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CK_RSA_PKCS_PSS_PARAMS p = {CKM_SHA256, CKG_MGF1_SHA256, 32};
  CK_MECHANISM pss = {CKM_SHA256_RSA_PKCS_PSS, &p, sizeof p};
  CHECK(s.f->C_SignInit(h, &pss, rsa) == CKR_MECHANISM_INVALID);
  CK_MECHANISM_INFO mi;
  CHECK(s.f->C_GetMechanismInfo(s.slot(), CKM_SHA256_RSA_PKCS_PSS, &mi) == CKR_MECHANISM_INVALID);
}

TEST_CASE("8 threads sign concurrently, each in its own session, while others open and close sessions") {
  Shim s;
  CK_SESSION_HANDLE login = s.open();
  CK_OBJECT_HANDLE ec = s.key(login, CKO_PRIVATE_KEY, "ec256");
  CK_OBJECT_HANDLE pub = s.key(login, CKO_PUBLIC_KEY, "ec256");
  std::atomic<int> ok{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      CK_SESSION_HANDLE h = 0;
      if (s.f->C_OpenSession(s.slot(), CKF_SERIAL_SESSION, nullptr, nullptr, &h) != CKR_OK) {
        bad += 50;
        return;
      }
      for (int i = 0; i < 50; ++i) {
        Bytes msg = to_bytes("thread " + std::to_string(t) + " message " + std::to_string(i));
        auto sig = s.sign(h, {CKM_ECDSA_SHA256, nullptr, 0}, ec, msg);
        if (sig.ok() && s.verify(h, {CKM_ECDSA_SHA256, nullptr, 0}, pub, msg, *sig) == CKR_OK) ++ok;
        else ++bad;
      }
      s.f->C_CloseSession(h);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(ok == 400);
  CHECK(bad == 0);
}

TEST_CASE("a C_Sign held for approval blocks only its own session; denial and expiry end C_SignFinal too") {
  Shim s;
  CK_SESSION_HANDLE h1 = s.open();
  CK_SESSION_HANDLE h2 = s.open(false);
  CK_OBJECT_HANDLE rsa = s.key(h1, CKO_PRIVATE_KEY, "rsa2048");
  CK_OBJECT_HANDLE rsa_pub = s.key(h1, CKO_PUBLIC_KEY, "rsa2048");
  CK_OBJECT_HANDLE ec = s.key(h1, CKO_PRIVATE_KEY, "ec256");
  std::mutex mu;
  std::condition_variable cv;
  bool waiting = false, approved = false;
  s.state->hold = [&](const std::string& key) {
    if (key != "rsa2048") return;
    std::unique_lock<std::mutex> l(mu);
    waiting = true;
    cv.notify_all();
    cv.wait(l, [&] { return approved; });
  };
  Result<Bytes> held = Error(ErrorCode::internal, "not run");
  std::thread t([&] { held = s.sign(h1, {CKM_SHA256_RSA_PKCS, nullptr, 0}, rsa, kData); });
  {
    std::unique_lock<std::mutex> l(mu);
    REQUIRE(cv.wait_for(l, std::chrono::seconds(10), [&] { return waiting; }));
  }
  CHECK(s.sign(h2, {CKM_ECDSA_SHA256, nullptr, 0}, ec, kData).ok());  // another session is not blocked
  {
    std::lock_guard<std::mutex> l(mu);
    approved = true;
  }
  cv.notify_all();
  t.join();
  REQUIRE(held.ok());
  CHECK(s.verify(h1, {CKM_SHA256_RSA_PKCS, nullptr, 0}, rsa_pub, kData, *held) == CKR_OK);

  s.state->hold = nullptr;
  CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, nullptr, 0};
  for (auto [error, expect] : {std::pair{Error(ErrorCode::request_denied, "denied by alice: no"), CKR_FUNCTION_REJECTED},
                               std::pair{Error(ErrorCode::request_expired, "expired"), CKR_FUNCTION_CANCELED}}) {
    s.state->sign_error = error;
    REQUIRE(s.f->C_SignInit(h1, &m, rsa) == CKR_OK);
    REQUIRE(s.f->C_SignUpdate(h1, (CK_BYTE_PTR)kData.data(), kData.size()) == CKR_OK);
    Bytes sig(256);
    CK_ULONG len = sig.size();
    CHECK(s.f->C_SignFinal(h1, sig.data(), &len) == expect);
    CHECK(s.f->C_SignFinal(h1, sig.data(), &len) == CKR_OPERATION_NOT_INITIALIZED);
  }
}

TEST_CASE("the key list kept on disk: no list call, a search it cannot answer asks the daemon, key_version on the wire") {
  Shim s(false);
  s.state->kept = std::vector<relay::KeyDescription>{ec_key().desc};  // kept before rsa2048 was added
  REQUIRE(s.f->C_Initialize(nullptr) == CKR_OK);
  CK_SESSION_HANDLE h = s.open(false);
  // Before the login a private key is not shown, but it is in the kept list: that is no reason to ask.
  CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY;
  CHECK(s.find(h, {{CKA_CLASS, &priv, sizeof priv}}).empty());
  CHECK(s.state->list_calls == 0);
  REQUIRE(s.f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4) == CKR_OK);
  CK_OBJECT_HANDLE ec = s.key(h, CKO_PRIVATE_KEY, "ec256");
  CHECK(s.state->list_calls == 0);
  REQUIRE(s.sign(h, {CKM_ECDSA_SHA256, nullptr, 0}, ec, kData).ok());
  REQUIRE(s.state->sign_requests.size() == 1);
  CHECK(s.state->sign_requests[0].second.key_version == relay::key_version(ec_key().desc));
  CHECK(s.state->list_calls == 0);
  // rsa2048 is not in the kept list: the search asks the daemon once and finds it.
  CK_OBJECT_HANDLE rsa = s.key(h, CKO_PRIVATE_KEY, "rsa2048");
  CHECK(s.state->list_calls == 1);
  REQUIRE(s.sign(h, {CKM_SHA256_RSA_PKCS, nullptr, 0}, rsa, kData).ok());
  CHECK(s.state->sign_requests[1].second.key_version == relay::key_version(rsa_key().desc));
  // A search that finds nothing in the daemon's list does not ask again.
  std::string none = "none";
  CHECK(s.find(h, {{CKA_LABEL, none.data(), none.size()}}).empty());
  CHECK(s.state->list_calls == 1);
}

TEST_CASE("412 key-changed (the kept list is stale) is CKR_KEY_CHANGED, and the next session asks the daemon") {
  Shim s(false);
  s.state->kept = std::vector<relay::KeyDescription>{rsa_key().desc, ec_key().desc};
  REQUIRE(s.f->C_Initialize(nullptr) == CKR_OK);
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE ec = s.key(h, CKO_PRIVATE_KEY, "ec256");
  s.state->sign_error = relay::decode_problem(412, relay::encode_problem(Error(ErrorCode::key_changed, "renewed")));
  CK_MECHANISM m = {CKM_ECDSA_SHA256, nullptr, 0};
  REQUIRE(s.f->C_SignInit(h, &m, ec) == CKR_OK);
  Bytes sig(64);
  CK_ULONG len = sig.size();
  CHECK(s.f->C_Sign(h, (CK_BYTE_PTR)kData.data(), kData.size(), sig.data(), &len) == CKR_KEY_CHANGED);
  CHECK(s.state->list_calls == 0);
  s.state->sign_error.reset();
  s.state->kept.reset();  // the client dropped its kept copy
  s.open(false);
  CHECK(s.state->list_calls == 1);
}
