// The Cryptoki C ABI of p11relay-pkcs11.so, and nothing else (after kmsp11's main.cc): each C_X is
// noexcept, calls its bridge function and turns the result, or any exception, into a CK_RV. Only
// C_GetFunctionList, C_GetInterfaceList and C_GetInterface are exported (p11relay-pkcs11.map); the
// functions below are reached through the function list, so they never interpose on another module's.
#include "pkcs11-shim/bridge.h"

#include <p11-kit/pkcs11.h>

#include <cstring>

namespace p11relay::shim::entry {
namespace {

#define P11R_ENTRY(name, params, call)                  \
  CK_RV name params noexcept {                          \
    try {                                               \
      return bridge::resolve(#name, call);              \
    } catch (...) {                                     \
      return bridge::resolve_exception(#name);          \
    }                                                   \
  }

P11R_ENTRY(C_Initialize, (CK_VOID_PTR pInitArgs),
           bridge::Initialize(pInitArgs))
P11R_ENTRY(C_Finalize, (CK_VOID_PTR pReserved),
           bridge::Finalize(pReserved))
P11R_ENTRY(C_GetInfo, (CK_INFO_PTR pInfo),
           bridge::GetInfo(pInfo))
P11R_ENTRY(C_GetSlotList, (CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount),
           bridge::GetSlotList(tokenPresent, pSlotList, pulCount))
P11R_ENTRY(C_GetSlotInfo, (CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo),
           bridge::GetSlotInfo(slotID, pInfo))
P11R_ENTRY(C_GetTokenInfo, (CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo),
           bridge::GetTokenInfo(slotID, pInfo))
P11R_ENTRY(C_GetMechanismList, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount),
           bridge::GetMechanismList(slotID, pMechanismList, pulCount))
P11R_ENTRY(C_GetMechanismInfo, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo),
           bridge::GetMechanismInfo(slotID, type, pInfo))
P11R_ENTRY(C_InitToken, (CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel),
           bridge::InitToken(slotID, pPin, ulPinLen, pLabel))
P11R_ENTRY(C_InitPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),
           bridge::InitPIN(hSession, pPin, ulPinLen))
P11R_ENTRY(C_SetPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen),
           bridge::SetPIN(hSession, pOldPin, ulOldLen, pNewPin, ulNewLen))
P11R_ENTRY(C_OpenSession, (CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR, CK_NOTIFY, CK_SESSION_HANDLE_PTR phSession),
           bridge::OpenSession(slotID, flags, phSession))
P11R_ENTRY(C_CloseSession, (CK_SESSION_HANDLE hSession),
           bridge::CloseSession(hSession))
P11R_ENTRY(C_CloseAllSessions, (CK_SLOT_ID slotID),
           bridge::CloseAllSessions(slotID))
P11R_ENTRY(C_GetSessionInfo, (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo),
           bridge::GetSessionInfo(hSession, pInfo))
P11R_ENTRY(C_GetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_SetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_Login, (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen),
           bridge::Login(hSession, userType, pPin, ulPinLen))
P11R_ENTRY(C_Logout, (CK_SESSION_HANDLE hSession),
           bridge::Logout(hSession))
P11R_ENTRY(C_CreateObject, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject),
           bridge::CreateObject(hSession, pTemplate, ulCount, phObject))
P11R_ENTRY(C_CopyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject),
           bridge::CopyObject(hSession, hObject, pTemplate, ulCount, phNewObject))
P11R_ENTRY(C_DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject),
           bridge::DestroyObject(hSession, hObject))
P11R_ENTRY(C_GetObjectSize, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize),
           bridge::GetObjectSize(hSession, hObject, pulSize))
P11R_ENTRY(C_GetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
           bridge::GetAttributeValue(hSession, hObject, pTemplate, ulCount))
P11R_ENTRY(C_SetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
           bridge::SetAttributeValue(hSession, hObject, pTemplate, ulCount))
P11R_ENTRY(C_FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount),
           bridge::FindObjectsInit(hSession, pTemplate, ulCount))
P11R_ENTRY(C_FindObjects, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount),
           bridge::FindObjects(hSession, phObject, ulMaxObjectCount, pulObjectCount))
P11R_ENTRY(C_FindObjectsFinal, (CK_SESSION_HANDLE hSession),
           bridge::FindObjectsFinal(hSession))
P11R_ENTRY(C_EncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR, CK_OBJECT_HANDLE),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_Encrypt, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_EncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_EncryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_DecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR, CK_OBJECT_HANDLE),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_Decrypt, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_DecryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_DecryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism),
           bridge::DigestInit(hSession, pMechanism))
P11R_ENTRY(C_Digest, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen),
           bridge::Digest(hSession, pData, ulDataLen, pDigest, pulDigestLen))
P11R_ENTRY(C_DigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
           bridge::DigestUpdate(hSession, pPart, ulPartLen))
P11R_ENTRY(C_DigestKey, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey),
           bridge::DigestKey(hSession, hKey))
P11R_ENTRY(C_DigestFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen),
           bridge::DigestFinal(hSession, pDigest, pulDigestLen))
P11R_ENTRY(C_SignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
           bridge::SignInit(hSession, pMechanism, hKey))
P11R_ENTRY(C_Sign, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen),
           bridge::Sign(hSession, pData, ulDataLen, pSignature, pulSignatureLen))
P11R_ENTRY(C_SignUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
           bridge::SignUpdate(hSession, pPart, ulPartLen))
P11R_ENTRY(C_SignFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen),
           bridge::SignFinal(hSession, pSignature, pulSignatureLen))
P11R_ENTRY(C_SignRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR, CK_OBJECT_HANDLE),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_SignRecover, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_VerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey),
           bridge::VerifyInit(hSession, pMechanism, hKey))
P11R_ENTRY(C_Verify, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen),
           bridge::Verify(hSession, pData, ulDataLen, pSignature, ulSignatureLen))
P11R_ENTRY(C_VerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen),
           bridge::VerifyUpdate(hSession, pPart, ulPartLen))
P11R_ENTRY(C_VerifyFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen),
           bridge::VerifyFinal(hSession, pSignature, ulSignatureLen))
P11R_ENTRY(C_VerifyRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR, CK_OBJECT_HANDLE),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_VerifyRecover, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_DigestEncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_DecryptDigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_SignEncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_GenerateKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey),
           bridge::GenerateKey(hSession, pMechanism, pTemplate, ulCount, phKey))
P11R_ENTRY(C_GenerateKeyPair, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey),
           bridge::GenerateKeyPair(hSession, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount, pPrivateKeyTemplate, ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey))
P11R_ENTRY(C_WrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_UnwrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_DeriveKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG, CK_OBJECT_HANDLE_PTR),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_SUPPORTED))
P11R_ENTRY(C_SeedRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen),
           bridge::SeedRandom(hSession, pSeed, ulSeedLen))
P11R_ENTRY(C_GenerateRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pRandomData, CK_ULONG ulRandomLen),
           bridge::GenerateRandom(hSession, pRandomData, ulRandomLen))
P11R_ENTRY(C_GetFunctionStatus, (CK_SESSION_HANDLE hSession),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_PARALLEL))
P11R_ENTRY(C_CancelFunction, (CK_SESSION_HANDLE hSession),
           bridge::UnsupportedInSession(hSession, CKR_FUNCTION_NOT_PARALLEL))
P11R_ENTRY(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved),
           bridge::WaitForSlotEvent(flags, pSlot, pReserved))

#undef P11R_ENTRY

}  // namespace

CK_RV GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) noexcept;

// v2.40 function list, in the order of the specification's CK_FUNCTION_LIST.
CK_FUNCTION_LIST function_list = {
    {CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR},
    C_Initialize,
    C_Finalize,
    C_GetInfo,
    GetFunctionList,
    C_GetSlotList,
    C_GetSlotInfo,
    C_GetTokenInfo,
    C_GetMechanismList,
    C_GetMechanismInfo,
    C_InitToken,
    C_InitPIN,
    C_SetPIN,
    C_OpenSession,
    C_CloseSession,
    C_CloseAllSessions,
    C_GetSessionInfo,
    C_GetOperationState,
    C_SetOperationState,
    C_Login,
    C_Logout,
    C_CreateObject,
    C_CopyObject,
    C_DestroyObject,
    C_GetObjectSize,
    C_GetAttributeValue,
    C_SetAttributeValue,
    C_FindObjectsInit,
    C_FindObjects,
    C_FindObjectsFinal,
    C_EncryptInit,
    C_Encrypt,
    C_EncryptUpdate,
    C_EncryptFinal,
    C_DecryptInit,
    C_Decrypt,
    C_DecryptUpdate,
    C_DecryptFinal,
    C_DigestInit,
    C_Digest,
    C_DigestUpdate,
    C_DigestKey,
    C_DigestFinal,
    C_SignInit,
    C_Sign,
    C_SignUpdate,
    C_SignFinal,
    C_SignRecoverInit,
    C_SignRecover,
    C_VerifyInit,
    C_Verify,
    C_VerifyUpdate,
    C_VerifyFinal,
    C_VerifyRecoverInit,
    C_VerifyRecover,
    C_DigestEncryptUpdate,
    C_DecryptDigestUpdate,
    C_SignEncryptUpdate,
    C_DecryptVerifyUpdate,
    C_GenerateKey,
    C_GenerateKeyPair,
    C_WrapKey,
    C_UnwrapKey,
    C_DeriveKey,
    C_SeedRandom,
    C_GenerateRandom,
    C_GetFunctionStatus,
    C_CancelFunction,
    C_WaitForSlotEvent,
};

CK_RV GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) noexcept {
  if (!ppFunctionList) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &function_list;
  return CKR_OK;
}

// PKCS#11 3.0 discovery (C_GetInterfaceList / C_GetInterface) offering the 2.40 list as "PKCS 11":
// p11-kit 0.24's header predates 3.0, so the CK_INTERFACE layout is spelt out here.
struct Interface {
  CK_UTF8CHAR* pInterfaceName;
  CK_VOID_PTR pFunctionList;
  CK_FLAGS flags;
};
CK_UTF8CHAR interface_name[] = "PKCS 11";
Interface interface = {interface_name, &function_list, 0};

}  // namespace p11relay::shim::entry

extern "C" {

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  return p11relay::shim::entry::GetFunctionList(ppFunctionList);
}

__attribute__((visibility("default"))) CK_RV C_GetInterfaceList(p11relay::shim::entry::Interface* pInterfacesList,
                                                                CK_ULONG_PTR pulCount) {
  if (!pulCount) return CKR_ARGUMENTS_BAD;
  if (!pInterfacesList) {
    *pulCount = 1;
    return CKR_OK;
  }
  if (*pulCount < 1) {
    *pulCount = 1;
    return CKR_BUFFER_TOO_SMALL;
  }
  pInterfacesList[0] = p11relay::shim::entry::interface;
  *pulCount = 1;
  return CKR_OK;
}

__attribute__((visibility("default"))) CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                                            p11relay::shim::entry::Interface** ppInterface,
                                                            CK_FLAGS flags) {
  if (!ppInterface) return CKR_ARGUMENTS_BAD;
  if (pInterfaceName && std::strcmp(reinterpret_cast<const char*>(pInterfaceName), "PKCS 11") != 0)
    return CKR_ARGUMENTS_BAD;
  if (pVersion && (pVersion->major != CRYPTOKI_VERSION_MAJOR || pVersion->minor != CRYPTOKI_VERSION_MINOR))
    return CKR_ARGUMENTS_BAD;
  if (flags != 0) return CKR_ARGUMENTS_BAD;
  *ppInterface = &p11relay::shim::entry::interface;
  return CKR_OK;
}

}  // extern "C"
