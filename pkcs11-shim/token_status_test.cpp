// What a PKCS#11 program sees when the appliance cannot use its token (docs/relay-api.md, GET /v1/keys
// "unavailable" and the token-not-present / token-login-failed problems): a slot without a token,
// CKR_TOKEN_NOT_PRESENT, one stderr line naming the cause; and C_WaitForSlotEvent (PKCS#11 v2.40 §5.5).
#include "pkcs11-shim/log.h"
#include "tests/shim/shim_fixture.h"

#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <mutex>
#include <thread>

using namespace p11relay;
using namespace p11relay::shim;
using namespace p11relay::shim::testing;

namespace {

// Collects the module's stderr notices for one test.
struct Notices {
  std::mutex mu;
  std::vector<std::string> lines;
  Notices() {
    set_notice_sink([this](const std::string& l) {
      std::lock_guard<std::mutex> g(mu);
      lines.push_back(l);
    });
  }
  ~Notices() { set_notice_sink(nullptr); }
  std::vector<std::string> get() {
    std::lock_guard<std::mutex> g(mu);
    return lines;
  }
};

relay::TokenProblem login_refused() {
  relay::TokenDescription t;
  t.label = test_token().label;
  t.serial = test_token().serial;
  return {t, "token-login-failed", "login to token 'demo' refused (0x000000a0, wrong PIN); not retrying"};
}

CK_SLOT_ID only_slot(Shim& s) {  // the usual pattern: a size query (which fetches the list), then the list
  CK_SLOT_ID slots[4];
  CK_ULONG n = 0;
  REQUIRE(s.f->C_GetSlotList(CK_FALSE, nullptr, &n) == CKR_OK);
  n = 4;
  REQUIRE(s.f->C_GetSlotList(CK_FALSE, slots, &n) == CKR_OK);
  REQUIRE(n == 1);
  return slots[0];
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("the appliance's login to its token was refused: a slot without a token and one stderr line") {
  Notices notices;
  Shim s(true, std::nullopt, 0);
  s.state->keys.clear();
  s.state->unavailable = {login_refused()};
  CK_ULONG n = 9;
  REQUIRE(s.f->C_GetSlotList(CK_TRUE, nullptr, &n) == CKR_OK);
  CHECK(n == 0);
  CK_SLOT_ID slot = only_slot(s);
  CK_SLOT_INFO si;
  REQUIRE(s.f->C_GetSlotInfo(slot, &si) == CKR_OK);
  CHECK_FALSE((si.flags & CKF_TOKEN_PRESENT));
  CHECK(contains(std::string((char*)si.slotDescription, sizeof si.slotDescription), "login refused"));
  CK_TOKEN_INFO ti;
  CHECK(s.f->C_GetTokenInfo(slot, &ti) == CKR_TOKEN_NOT_PRESENT);
  CK_SESSION_HANDLE h;
  CHECK(s.f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h) == CKR_TOKEN_NOT_PRESENT);
  // Every C_GetSlotList fetched the list again (keycacheseconds 0): still one line.
  REQUIRE(s.f->C_GetSlotList(CK_FALSE, nullptr, &n) == CKR_OK);
  auto lines = notices.get();
  REQUIRE(lines.size() == 1);
  CHECK(contains(lines[0], "p11relay-pkcs11: the appliance cannot use its token 'p11relay-demo'"));
  CHECK(contains(lines[0], "its login to the token was refused"));
  CHECK(contains(lines[0], "wrong PIN"));
  CHECK(lines[0].back() == '\n');
  CHECK(std::count(lines[0].begin(), lines[0].end(), '\n') == 1);
}

TEST_CASE("a served token whose login then fails keeps its slot, without a token; it comes back in place") {
  Notices notices;
  Shim s(true, std::nullopt, 0);
  CK_SLOT_ID slot = s.slot();
  s.state->keys.clear();
  s.state->unavailable = {login_refused()};
  CHECK(only_slot(s) == slot);  // matched by label and serial: no second slot
  CK_TOKEN_INFO ti;
  CHECK(s.f->C_GetTokenInfo(slot, &ti) == CKR_TOKEN_NOT_PRESENT);
  CHECK(notices.get().size() == 1);
  // The operator fixes the PIN: the token is back in the same slot, and a later failure is reported again.
  s.state->keys = {rsa_key().desc, ec_key().desc};
  s.state->unavailable.clear();
  CHECK(only_slot(s) == slot);
  CHECK(s.f->C_GetTokenInfo(slot, &ti) == CKR_OK);
  s.state->keys.clear();
  s.state->unavailable = {login_refused()};
  CHECK(only_slot(s) == slot);
  CHECK(notices.get().size() == 2);
}

TEST_CASE("the daemon cannot open the token (503 token-not-present): one stderr line, no slot invented") {
  Notices notices;
  Shim s(true, std::nullopt, 0);
  s.state->list_error = Error(ErrorCode::token_not_present, "token 'demo' is being re-opened: token 'demo' (label "
                                                            "'p11relay-demo') is not present");
  CK_ULONG n = 9;
  REQUIRE(s.f->C_GetSlotList(CK_FALSE, nullptr, &n) == CKR_OK);
  CHECK(n == 0);
  REQUIRE(s.f->C_GetSlotList(CK_FALSE, nullptr, &n) == CKR_OK);
  auto lines = notices.get();
  REQUIRE(lines.size() == 1);
  CHECK(contains(lines[0], "the appliance cannot use its token: "));
  CHECK(contains(lines[0], "is not present"));
  // A plain network failure is not a token problem: no line (the log file has it).
  s.state->list_error = Error(ErrorCode::network, "connection refused");
  REQUIRE(s.f->C_GetSlotList(CK_FALSE, nullptr, &n) == CKR_OK);
  CHECK(notices.get().size() == 1);
}

TEST_CASE("C_Sign on a token the appliance cannot use: CKR_TOKEN_NOT_PRESENT and one line, not 'no such key'") {
  Notices notices;
  Shim s;
  CK_SESSION_HANDLE h = s.open();
  CK_OBJECT_HANDLE ec = s.key(h, CKO_PRIVATE_KEY, "ec256");
  s.state->sign_error = Error(ErrorCode::token_login_failed,
                              "token of key 'ec256' is not available: login to token 'demo' refused (wrong PIN)");
  for (int i = 0; i < 3; ++i) {
    auto sig = s.sign(h, {CKM_ECDSA_SHA256, nullptr, 0}, ec, kData);
    REQUIRE_FALSE(sig.ok());
    CHECK(sig.error().ckr == CKR_TOKEN_NOT_PRESENT);
  }
  auto lines = notices.get();
  REQUIRE(lines.size() == 1);
  CHECK(contains(lines[0], "the appliance cannot use its token 'p11relay-demo' to sign with key 'ec256'"));
  CHECK(contains(lines[0], "wrong PIN"));
}

// ---------------------------------------------------------------------------------------------
// C_WaitForSlotEvent

TEST_CASE("C_WaitForSlotEvent with CKF_DONT_BLOCK: CKR_NO_EVENT, then the slot whose token vanished or came back") {
  Notices notices;
  Shim s(true, std::nullopt, 0);
  CK_SLOT_ID slot = s.slot(), got = 0;
  int reserved = 0;
  CHECK(s.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, nullptr, nullptr) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &got, &reserved) == CKR_ARGUMENTS_BAD);
  CHECK(s.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &got, nullptr) == CKR_NO_EVENT);  // the first list is no event
  s.state->keys.clear();
  REQUIRE(s.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &got, nullptr) == CKR_OK);
  CHECK(got == slot);
  CHECK(s.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &got, nullptr) == CKR_NO_EVENT);
  s.state->keys = {rsa_key().desc, ec_key().desc};
  got = 0;
  REQUIRE(s.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &got, nullptr) == CKR_OK);
  CHECK(got == slot);
  // A token whose login fails is an event too (its slot loses the token).
  s.state->keys.clear();
  s.state->unavailable = {login_refused()};
  REQUIRE(s.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &got, nullptr) == CKR_OK);
  CHECK(got == slot);
  CHECK(s.f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &got, nullptr) == CKR_NO_EVENT);
}

TEST_CASE("C_WaitForSlotEvent blocks until a token vanishes, polling the daemon at keycacheseconds") {
  Shim s(true, std::nullopt, 1);
  CK_SLOT_ID slot = s.slot(), got = 0;
  int calls_before = s.state->list_calls;
  auto waiter = std::async(std::launch::async, [&] { return s.f->C_WaitForSlotEvent(0, &got, nullptr); });
  CHECK(waiter.wait_for(std::chrono::milliseconds(1500)) == std::future_status::timeout);
  {
    std::lock_guard<std::mutex> g(s.state->mu);
    s.state->keys.clear();
  }
  REQUIRE(waiter.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(waiter.get() == CKR_OK);
  CHECK(got == slot);
  // At most one GET /v1/keys per keycacheseconds while waiting (here ~3 s: a handful, not a storm).
  CHECK(s.state->list_calls - calls_before <= 5);
}

TEST_CASE("C_Finalize wakes a thread blocked in C_WaitForSlotEvent with CKR_CRYPTOKI_NOT_INITIALIZED") {
  Shim s(true, std::nullopt, 30);
  s.slot();
  CK_SLOT_ID got = 0;
  auto waiter = std::async(std::launch::async, [&] { return s.f->C_WaitForSlotEvent(0, &got, nullptr); });
  CHECK(waiter.wait_for(std::chrono::milliseconds(300)) == std::future_status::timeout);
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(s.f->C_Finalize(nullptr) == CKR_OK);
  REQUIRE(waiter.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(waiter.get() == CKR_CRYPTOKI_NOT_INITIALIZED);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  REQUIRE(s.f->C_Initialize(nullptr) == CKR_OK);  // for the fixture's C_Finalize
}
