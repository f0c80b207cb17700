"""A minimal PKCS#11 v2.40 caller in ctypes (Python stdlib only): loads a module, and calls the functions
of its CK_FUNCTION_LIST by name, returning the raw CK_RV so tests can assert the specification's codes."""
from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, byref, c_ubyte, c_ulong, c_void_p

CK_ULONG = c_ulong

# Values from the PKCS#11 v2.40 headers.
CKR = {"OK": 0x0, "ARGUMENTS_BAD": 0x7, "NO_EVENT": 0x8, "ACTION_PROHIBITED": 0x1b, "KEY_HANDLE_INVALID": 0x60,
       "MECHANISM_INVALID": 0x70, "OPERATION_ACTIVE": 0x90, "OPERATION_NOT_INITIALIZED": 0x91,
       "PIN_INCORRECT": 0xa0, "SESSION_READ_ONLY": 0xb5, "SESSION_READ_ONLY_EXISTS": 0xb7,
       "SIGNATURE_INVALID": 0xc0, "TOKEN_NOT_PRESENT": 0xe0, "USER_ALREADY_LOGGED_IN": 0x100,
       "USER_NOT_LOGGED_IN": 0x101, "BUFFER_TOO_SMALL": 0x150, "CRYPTOKI_NOT_INITIALIZED": 0x190,
       "FUNCTION_NOT_SUPPORTED": 0x54, "SESSION_PARALLEL_NOT_SUPPORTED": 0xb4}
CKF_RW_SESSION, CKF_SERIAL_SESSION, CKF_DONT_BLOCK = 0x2, 0x4, 0x1
CKF_TOKEN_PRESENT, CKF_WRITE_PROTECTED, CKF_LOGIN_REQUIRED = 0x1, 0x2, 0x4
CKU_SO, CKU_USER = 0, 1
CKS_RO_PUBLIC_SESSION, CKS_RO_USER_FUNCTIONS, CKS_RW_PUBLIC_SESSION, CKS_RW_USER_FUNCTIONS = 0, 1, 2, 3
CKA_CLASS, CKA_LABEL = 0x0, 0x3
CKO_PUBLIC_KEY, CKO_PRIVATE_KEY = 2, 3
CKM_SHA256, CKM_SHA256_RSA_PKCS, CKM_ECDSA_SHA256 = 0x250, 0x40, 0x1044

FUNCTIONS = (
    "C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetSlotList C_GetSlotInfo C_GetTokenInfo "
    "C_GetMechanismList C_GetMechanismInfo C_InitToken C_InitPIN C_SetPIN C_OpenSession C_CloseSession "
    "C_CloseAllSessions C_GetSessionInfo C_GetOperationState C_SetOperationState C_Login C_Logout "
    "C_CreateObject C_CopyObject C_DestroyObject C_GetObjectSize C_GetAttributeValue C_SetAttributeValue "
    "C_FindObjectsInit C_FindObjects C_FindObjectsFinal C_EncryptInit C_Encrypt C_EncryptUpdate C_EncryptFinal "
    "C_DecryptInit C_Decrypt C_DecryptUpdate C_DecryptFinal C_DigestInit C_Digest C_DigestUpdate C_DigestKey "
    "C_DigestFinal C_SignInit C_Sign C_SignUpdate C_SignFinal C_SignRecoverInit C_SignRecover C_VerifyInit "
    "C_Verify C_VerifyUpdate C_VerifyFinal C_VerifyRecoverInit C_VerifyRecover C_DigestEncryptUpdate "
    "C_DecryptDigestUpdate C_SignEncryptUpdate C_DecryptVerifyUpdate C_GenerateKey C_GenerateKeyPair C_WrapKey "
    "C_UnwrapKey C_DeriveKey C_SeedRandom C_GenerateRandom C_GetFunctionStatus C_CancelFunction "
    "C_WaitForSlotEvent").split()
assert len(FUNCTIONS) == 68


class CK_VERSION(Structure):
    _fields_ = [("major", c_ubyte), ("minor", c_ubyte)]


class CK_FUNCTION_LIST(Structure):
    _fields_ = [("version", CK_VERSION)] + [(n, c_void_p) for n in FUNCTIONS]


class CK_TOKEN_INFO(Structure):
    _fields_ = [("label", c_ubyte * 32), ("manufacturerID", c_ubyte * 32), ("model", c_ubyte * 16),
                ("serialNumber", c_ubyte * 16)] + [(n, CK_ULONG) for n in (
                    "flags ulMaxSessionCount ulSessionCount ulMaxRwSessionCount ulRwSessionCount ulMaxPinLen "
                    "ulMinPinLen ulTotalPublicMemory ulFreePublicMemory ulTotalPrivateMemory "
                    "ulFreePrivateMemory").split()] + [
                ("hardwareVersion", CK_VERSION), ("firmwareVersion", CK_VERSION), ("utcTime", c_ubyte * 16)]


class CK_SLOT_INFO(Structure):
    _fields_ = [("slotDescription", c_ubyte * 64), ("manufacturerID", c_ubyte * 32), ("flags", CK_ULONG),
                ("hardwareVersion", CK_VERSION), ("firmwareVersion", CK_VERSION)]


class CK_SESSION_INFO(Structure):
    _fields_ = [("slotID", CK_ULONG), ("state", CK_ULONG), ("flags", CK_ULONG), ("ulDeviceError", CK_ULONG)]


class CK_ATTRIBUTE(Structure):
    _fields_ = [("type", CK_ULONG), ("pValue", c_void_p), ("ulValueLen", CK_ULONG)]


class CK_MECHANISM(Structure):
    _fields_ = [("mechanism", CK_ULONG), ("pParameter", c_void_p), ("ulParameterLen", CK_ULONG)]


class Module:
    """p = Module(path); p.C_Initialize(None) -> CK_RV. Arguments are passed as ctypes values/pointers."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        fl = POINTER(CK_FUNCTION_LIST)()
        get = self.lib.C_GetFunctionList
        get.restype = CK_ULONG
        rv = get(byref(fl))
        if rv != 0:
            raise RuntimeError(f"C_GetFunctionList: {rv:#x}")
        self.fl = fl.contents

    def __getattr__(self, name: str):
        if name not in FUNCTIONS:
            raise AttributeError(name)
        # No argtypes: callers pass ctypes values (CK_ULONG(...), byref(...), buffers, None), so every
        # argument has its C width.
        return ctypes.CFUNCTYPE(CK_ULONG)(getattr(self.fl, name))

    # Conveniences (each asserts nothing; they return (rv, value)).
    def slots(self, present: bool = True) -> list[int]:
        n = CK_ULONG(0)
        assert self.C_GetSlotList(ctypes.c_ubyte(present), None, byref(n)) == 0
        arr = (CK_ULONG * max(n.value, 1))()
        assert self.C_GetSlotList(ctypes.c_ubyte(present), arr, byref(n)) == 0
        return list(arr[:n.value])

    def open(self, slot: int, flags: int) -> tuple[int, int]:
        h = CK_ULONG(0)
        rv = self.C_OpenSession(CK_ULONG(slot), CK_ULONG(flags), None, None, byref(h))
        return rv, h.value

    def state(self, h: int) -> int:
        si = CK_SESSION_INFO()
        assert self.C_GetSessionInfo(CK_ULONG(h), byref(si)) == 0
        return si.state

    def login(self, h: int, pin: bytes, user: int = CKU_USER) -> int:
        buf = ctypes.create_string_buffer(pin, len(pin))
        return self.C_Login(CK_ULONG(h), CK_ULONG(user), buf, CK_ULONG(len(pin)))

    def find(self, h: int, cls: int, label: bytes) -> list[int]:
        c = CK_ULONG(cls)
        lab = ctypes.create_string_buffer(label, len(label))
        t = (CK_ATTRIBUTE * 2)(CK_ATTRIBUTE(CKA_CLASS, ctypes.cast(byref(c), c_void_p), ctypes.sizeof(c)),
                               CK_ATTRIBUTE(CKA_LABEL, ctypes.cast(lab, c_void_p), len(label)))
        assert self.C_FindObjectsInit(CK_ULONG(h), t, CK_ULONG(2)) == 0
        out = (CK_ULONG * 16)()
        n = CK_ULONG(0)
        assert self.C_FindObjects(CK_ULONG(h), out, CK_ULONG(16), byref(n)) == 0
        assert self.C_FindObjectsFinal(CK_ULONG(h)) == 0
        return list(out[:n.value])

    def sign_init(self, h: int, mech: int, key: int) -> int:
        m = CK_MECHANISM(mech, None, 0)
        return self.C_SignInit(CK_ULONG(h), byref(m), CK_ULONG(key))

    def sign(self, h: int, data: bytes, size: int | None) -> tuple[int, bytes, int]:
        """C_Sign with a buffer of `size` bytes (None: a length query). Returns (rv, signature, length)."""
        d = ctypes.create_string_buffer(data, len(data))
        n = CK_ULONG(size or 0)
        buf = ctypes.create_string_buffer(size) if size else None
        rv = self.C_Sign(CK_ULONG(h), d, CK_ULONG(len(data)), buf, byref(n))
        return rv, (buf.raw[:n.value] if buf is not None and rv == 0 else b""), n.value
