// Helpers shared by the bridge's files (bridge.cpp, bridge_write.cpp): the argument and state checks
// every C_X makes in the same order (initialised → session → object).
#pragma once

#include "pkcs11-shim/module.h"

#include <p11-kit/pkcs11.h>

#include <memory>
#include <string>

namespace p11relay::shim::bridge::detail {

// CKR_CRYPTOKI_NOT_INITIALIZED before C_Initialize.
Result<std::shared_ptr<Module>> module();
// CKR_SESSION_HANDLE_INVALID for a handle this application does not hold.
Result<std::shared_ptr<Session>> session_of(Module& m, CK_SESSION_HANDLE h);
// An object the session may see: private ones only after C_Login (v2.40 §4.1 CKA_PRIVATE). `invalid`
// is the code for an unknown handle (CKR_OBJECT_HANDLE_INVALID or CKR_KEY_HANDLE_INVALID).
Result<std::shared_ptr<const Object>> visible_object(Module& m, const Session& s, CK_OBJECT_HANDLE h, CK_RV invalid);
// The PIN against pkcs11.pin of the client config (true when none is configured); constant time.
bool pin_matches(Module& m, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen);
// "CKR_PIN_INCORRECT" etc. for log lines.
std::string ckr_text(CK_RV rv);
// CKR_SLOT_ID_INVALID / CKR_TOKEN_NOT_PRESENT.
Result<std::shared_ptr<const TokenView>> present_token(Module& m, CK_SLOT_ID slotID);

}  // namespace p11relay::shim::bridge::detail
