// The unit tests' view of the module: its function list after C_Initialize, over a fake transport
// (test_support.h) and a client config without files.
#pragma once

#include "pkcs11-shim/bridge.h"
#include "tests/shim/test_support.h"

#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <vector>

namespace p11relay::shim::testing {

struct Shim {
  CK_FUNCTION_LIST_PTR f = nullptr;
  std::shared_ptr<FakeState> state = std::make_shared<FakeState>();
  client::Config config;

  explicit Shim(bool init = true, std::optional<std::string> pin = std::nullopt, int cache_seconds = 10) {
    state->keys = {rsa_key().desc, ec_key().desc};
    config.urls = {"https://fake.invalid/"};
    config.pin = std::move(pin);
    config.key_cache_seconds = cache_seconds;
    config.log_level = "off";
    bridge::set_module_factory([st = state, cfg = config]() -> Result<std::unique_ptr<Module>> {
      return std::make_unique<Module>(cfg, std::make_unique<FakeTransport>(st));
    });
    REQUIRE(C_GetFunctionList(&f) == CKR_OK);
    if (init) REQUIRE(f->C_Initialize(nullptr) == CKR_OK);
  }
  ~Shim() {
    f->C_Finalize(nullptr);
    bridge::set_module_factory(nullptr);
  }

  CK_SLOT_ID slot() {
    CK_SLOT_ID slots[4];
    CK_ULONG n = 4;
    REQUIRE(f->C_GetSlotList(CK_TRUE, slots, &n) == CKR_OK);
    REQUIRE(n == 1);
    return slots[0];
  }
  CK_SESSION_HANDLE open(bool login = true) {
    CK_SESSION_HANDLE h = 0;
    REQUIRE(f->C_OpenSession(slot(), CKF_SERIAL_SESSION, nullptr, nullptr, &h) == CKR_OK);
    if (login) REQUIRE(f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4) == CKR_OK);
    return h;
  }
  std::vector<CK_OBJECT_HANDLE> find(CK_SESSION_HANDLE h, std::vector<CK_ATTRIBUTE> templ) {
    REQUIRE(f->C_FindObjectsInit(h, templ.empty() ? nullptr : templ.data(), templ.size()) == CKR_OK);
    std::vector<CK_OBJECT_HANDLE> out(64);
    CK_ULONG n = 0;
    REQUIRE(f->C_FindObjects(h, out.data(), out.size(), &n) == CKR_OK);
    REQUIRE(f->C_FindObjectsFinal(h) == CKR_OK);
    out.resize(n);
    return out;
  }
  CK_OBJECT_HANDLE key(CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls, const std::string& label) {
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void*)label.data(), label.size()}};
    auto found = find(h, {t[0], t[1]});
    REQUIRE(found.size() == 1);
    return found[0];
  }
  Bytes attr(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type) {
    CK_ATTRIBUTE a = {type, nullptr, 0};
    REQUIRE(f->C_GetAttributeValue(h, o, &a, 1) == CKR_OK);
    Bytes v(a.ulValueLen);
    a.pValue = v.data();
    REQUIRE(f->C_GetAttributeValue(h, o, &a, 1) == CKR_OK);
    return v;
  }
  Result<Bytes> sign(CK_SESSION_HANDLE h, CK_MECHANISM mech, CK_OBJECT_HANDLE key, const Bytes& data) {
    CK_RV rv = f->C_SignInit(h, &mech, key);
    if (rv != CKR_OK) return Error(ErrorCode::internal, "init", rv);
    CK_ULONG len = 0;
    rv = f->C_Sign(h, (CK_BYTE_PTR)data.data(), data.size(), nullptr, &len);
    if (rv != CKR_OK) return Error(ErrorCode::internal, "len", rv);
    Bytes sig(len);
    rv = f->C_Sign(h, (CK_BYTE_PTR)data.data(), data.size(), sig.data(), &len);
    if (rv != CKR_OK) return Error(ErrorCode::internal, "sign", rv);
    sig.resize(len);
    return sig;
  }
  CK_RV verify(CK_SESSION_HANDLE h, CK_MECHANISM mech, CK_OBJECT_HANDLE pub, const Bytes& data, const Bytes& sig) {
    CK_RV rv = f->C_VerifyInit(h, &mech, pub);
    if (rv != CKR_OK) return rv;
    return f->C_Verify(h, (CK_BYTE_PTR)data.data(), data.size(), (CK_BYTE_PTR)sig.data(), sig.size());
  }
};

inline const Bytes kData = to_bytes("the quick brown fox jumps over the lazy dog");

}  // namespace p11relay::shim::testing
