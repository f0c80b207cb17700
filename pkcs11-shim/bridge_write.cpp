// What a signing token refuses, answered call by call with the PKCS#11 v2.40 base specification's
// codes (as a USB code-signing token does): R/W sessions open, but the relay's objects are token
// objects with CKA_MODIFIABLE, CKA_COPYABLE and CKA_DESTROYABLE false, no mechanism generates keys,
// there is no security officer, and the user PIN is the client config's pkcs11.pin.
#include "pkcs11-shim/bridge.h"

#include "common/mechanism.h"
#include "pkcs11-shim/bridge_internal.h"

namespace p11relay::shim::bridge {
using namespace detail;

namespace {

bool attribute_true(const Object& o, CK_ATTRIBUTE_TYPE type) {
  auto it = o.attrs.find(type);
  return it != o.attrs.end() && it->second.size() == 1 && it->second[0] == CK_TRUE;
}

// CKA_TOKEN of a template (default CK_FALSE: a session object).
bool template_token(CK_ATTRIBUTE_PTR templ, CK_ULONG count) {
  for (CK_ULONG i = 0; i < count; ++i)
    if (templ[i].type == CKA_TOKEN && templ[i].pValue && templ[i].ulValueLen == sizeof(CK_BBOOL))
      return *static_cast<const CK_BBOOL*>(templ[i].pValue) == CK_TRUE;
  return false;
}

bool read_only(const Session& s) { return !(s.flags & CKF_RW_SESSION); }

Status no_key_generation(CK_MECHANISM_PTR pMechanism) {
  return ck(CKR_MECHANISM_INVALID, "the relay token generates no keys (" + mechanism_name(pMechanism->mechanism) +
                                       "); keys are created on the appliance by its operator");
}

}  // namespace

Status InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel) {
  ASSIGN_OR_RETURN(auto m, module());
  if ((!pPin && ulPinLen) || !pLabel) return ck(CKR_ARGUMENTS_BAD, "NULL argument");
  ASSIGN_OR_RETURN(auto t, present_token(*m, slotID));
  if (m->session_count(slotID) > 0) return ck(CKR_SESSION_EXISTS, "sessions are open with the token");
  return ck(CKR_PIN_INCORRECT, "the relay token has no security officer; it is initialised on the appliance");
}

Status InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pPin && ulPinLen) return ck(CKR_ARGUMENTS_BAD, "pPin is NULL");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  // Only in the "R/W SO Functions" state, which the relay token never enters.
  return ck(CKR_USER_NOT_LOGGED_IN, "C_InitPIN needs an SO login; the relay token has no security officer");
}

Status SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin,
              CK_ULONG ulNewLen) {
  ASSIGN_OR_RETURN(auto m, module());
  if ((!pOldPin && ulOldLen) || (!pNewPin && ulNewLen)) return ck(CKR_ARGUMENTS_BAD, "NULL PIN");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  if (read_only(*s)) return ck(CKR_SESSION_READ_ONLY, "C_SetPIN needs a R/W session");
  if (!pin_matches(*m, pOldPin, ulOldLen))
    return ck(CKR_PIN_INCORRECT, "the old PIN does not match pkcs11.pin in the client config");
  return ck(CKR_FUNCTION_NOT_SUPPORTED, "the PIN is pkcs11.pin in the client config; change it there");
}

Status CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                    CK_OBJECT_HANDLE_PTR phObject) {
  ASSIGN_OR_RETURN(auto m, module());
  if ((!pTemplate && ulCount) || !phObject) return ck(CKR_ARGUMENTS_BAD, "NULL argument");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  if (read_only(*s) && template_token(pTemplate, ulCount))
    return ck(CKR_SESSION_READ_ONLY, "a token object cannot be created in a R/O session");
  return ck(CKR_FUNCTION_NOT_SUPPORTED, "the relay token creates no objects; keys and certificates are "
                                        "managed on the appliance");
}

Status CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                  CK_OBJECT_HANDLE_PTR phNewObject) {
  ASSIGN_OR_RETURN(auto m, module());
  if ((!pTemplate && ulCount) || !phNewObject) return ck(CKR_ARGUMENTS_BAD, "NULL argument");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  ASSIGN_OR_RETURN(auto o, visible_object(*m, *s, hObject, CKR_OBJECT_HANDLE_INVALID));
  if (!attribute_true(*o, CKA_COPYABLE)) return ck(CKR_ACTION_PROHIBITED, "the object is not copyable (CKA_COPYABLE)");
  return ck(CKR_FUNCTION_NOT_SUPPORTED, "the relay token creates no objects");
}

Status DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject) {
  ASSIGN_OR_RETURN(auto m, module());
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  ASSIGN_OR_RETURN(auto o, visible_object(*m, *s, hObject, CKR_OBJECT_HANDLE_INVALID));
  if (read_only(*s) && attribute_true(*o, CKA_TOKEN))
    return ck(CKR_SESSION_READ_ONLY, "a token object cannot be destroyed in a R/O session");
  if (!attribute_true(*o, CKA_DESTROYABLE))
    return ck(CKR_ACTION_PROHIBITED, "the object is not destroyable (CKA_DESTROYABLE)");
  return ck(CKR_FUNCTION_NOT_SUPPORTED, "the relay token destroys no objects");
}

Status SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                         CK_ULONG ulCount) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pTemplate && ulCount) return ck(CKR_ARGUMENTS_BAD, "pTemplate is NULL");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  ASSIGN_OR_RETURN(auto o, visible_object(*m, *s, hObject, CKR_OBJECT_HANDLE_INVALID));
  if (read_only(*s) && attribute_true(*o, CKA_TOKEN))
    return ck(CKR_SESSION_READ_ONLY, "a token object cannot be modified in a R/O session");
  if (!attribute_true(*o, CKA_MODIFIABLE))
    return ck(CKR_ACTION_PROHIBITED, "the object is not modifiable (CKA_MODIFIABLE)");
  return ck(CKR_FUNCTION_NOT_SUPPORTED, "the relay token modifies no objects");
}

Status GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate,
                   CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pMechanism || (!pTemplate && ulCount) || !phKey) return ck(CKR_ARGUMENTS_BAD, "NULL argument");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  return no_key_generation(pMechanism);
}

Status GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate,
                       CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate,
                       CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey,
                       CK_OBJECT_HANDLE_PTR phPrivateKey) {
  ASSIGN_OR_RETURN(auto m, module());
  if (!pMechanism || (!pPublicKeyTemplate && ulPublicKeyAttributeCount) ||
      (!pPrivateKeyTemplate && ulPrivateKeyAttributeCount) || !phPublicKey || !phPrivateKey)
    return ck(CKR_ARGUMENTS_BAD, "NULL argument");
  ASSIGN_OR_RETURN(auto s, session_of(*m, hSession));
  return no_key_generation(pMechanism);
}

}  // namespace p11relay::shim::bridge
