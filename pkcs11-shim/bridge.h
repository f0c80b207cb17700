// The testable C++ layer behind entry.cpp (kmsp11's bridge.cc): one function per C_X, argument checks
// in the order the spec and SoftHSM use (initialised → NULL arguments → session → operation state),
// then the work. Each returns a Status whose Error carries the CK_RV.
#pragma once

#include "pkcs11-shim/module.h"

#include <p11-kit/pkcs11.h>

#include <functional>
#include <memory>

namespace p11relay::shim::bridge {

// Tests inject a module (fake transport, config without files). nullptr restores the default, which
// loads the client config and talks to p11relayd through client::Client.
using ModuleFactory = std::function<Result<std::unique_ptr<Module>>()>;
void set_module_factory(ModuleFactory factory);
Result<std::unique_ptr<Module>> default_module_factory();

Status Initialize(CK_VOID_PTR pInitArgs);
Status Finalize(CK_VOID_PTR pReserved);
Status GetInfo(CK_INFO_PTR pInfo);
Status GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount);
Status GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo);
Status GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo);
Status GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount);
Status GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo);
Status OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_SESSION_HANDLE_PTR phSession);
Status CloseSession(CK_SESSION_HANDLE hSession);
Status CloseAllSessions(CK_SLOT_ID slotID);
Status GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo);
Status Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen);
Status Logout(CK_SESSION_HANDLE hSession);
Status GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize);
Status GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                         CK_ULONG ulCount);
Status FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount);
Status FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount,
                   CK_ULONG_PTR pulObjectCount);
Status FindObjectsFinal(CK_SESSION_HANDLE hSession);
Status DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism);
Status Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest,
              CK_ULONG_PTR pulDigestLen);
Status DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen);
Status DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey);
Status DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen);
Status SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey);
Status Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
            CK_ULONG_PTR pulSignatureLen);
Status SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen);
Status SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen);
Status VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey);
Status Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
              CK_ULONG ulSignatureLen);
Status VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen);
Status VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen);
Status GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData, CK_ULONG ulRandomLen);
Status SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen);
Status WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved);

// What the token does not allow, with the spec's code for each call (bridge_write.cpp).
Status InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel);
Status InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen);
Status SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin,
              CK_ULONG ulNewLen);
Status CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                    CK_OBJECT_HANDLE_PTR phObject);
Status CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount,
                  CK_OBJECT_HANDLE_PTR phNewObject);
Status DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject);
Status SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate,
                         CK_ULONG ulCount);
Status GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate,
                   CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey);
Status GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate,
                       CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate,
                       CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey,
                       CK_OBJECT_HANDLE_PTR phPrivateKey);

// What a signing token does not do at all: CKR_CRYPTOKI_NOT_INITIALIZED, then (for session
// functions) CKR_SESSION_HANDLE_INVALID, then `rv`.
Status UnsupportedInSession(CK_SESSION_HANDLE hSession, CK_RV rv);

// Turns a bridge result into the CK_RV and logs it once (kmsp11's LogAndResolve).
CK_RV resolve(const char* function, const Status& status) noexcept;
CK_RV resolve_exception(const char* function) noexcept;

}  // namespace p11relay::shim::bridge
