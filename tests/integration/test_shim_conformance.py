"""PKCS#11 v2.40 conformance of p11relay-pkcs11.so against the real p11relayd on SoftHSMv2 over mutual TLS,
driven through its function list with ctypes (pkcs11_ctypes.py): R/O and R/W sessions, several at once
from threads, login with pkcs11.pin (a wrong PIN is CKR_PIN_INCORRECT), token information, random
numbers, the rules that end a signing operation, what the token refuses, C_WaitForSlotEvent; every
signature verified with openssl. And what a program sees when the appliance's login to its token is
refused: a slot without a token, CKR_TOKEN_NOT_PRESENT, one line on stderr."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import unittest
from ctypes import byref, create_string_buffer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import pkcs11_ctypes as p11  # noqa: E402
from pkcs11_ctypes import CK_ULONG, CKR  # noqa: E402
from shim_util import SHIM, Daemon, ShimTest, main, write_client_config  # noqa: E402

CONFIG_PIN = "conformance-pin"
DATA = b"signed through p11relay-pkcs11.so by a ctypes PKCS#11 caller\n" * 20


def probe_unusable_token() -> dict:
    """Run as a separate program (stderr is what a user sees): the codes a program gets for the slot."""
    m = p11.Module(SHIM)
    out: dict = {"initialize": m.C_Initialize(None), "present": m.slots(True), "all": m.slots(False)}
    if out["all"]:
        slot = CK_ULONG(out["all"][0])
        si = p11.CK_SLOT_INFO()
        out["slot_info"] = m.C_GetSlotInfo(slot, byref(si))
        out["slot_flags"] = si.flags
        out["slot_description"] = bytes(si.slotDescription).decode().rstrip()
        out["token_info"] = m.C_GetTokenInfo(slot, byref(p11.CK_TOKEN_INFO()))
        out["open"] = m.open(out["all"][0], p11.CKF_SERIAL_SESSION | p11.CKF_RW_SESSION)[0]
    m.C_Finalize(None)
    return out


class ShimConformance(ShimTest):
    @classmethod
    def setUpClass(cls):
        if harness.SANITIZER_PRELOAD:
            # ctypes loads the instrumented module into this Python, which did not start with the sanitizer
            # runtime first: ASan aborts. The module's rules are covered by unit-shim under the sanitizers.
            raise unittest.SkipTest("an instrumented module cannot load into an uninstrumented Python (ctypes)")
        super().setUpClass()
        write_client_config(cls.client_config, cls.st, [cls.daemon.url],
                            pkcs11={"pin": CONFIG_PIN, "keycacheseconds": 1})
        os.environ["P11RELAY_CONFIG"] = str(cls.client_config)
        cls.m = p11.Module(SHIM)
        assert cls.m.C_Initialize(None) == 0
        cls.slot = cls.m.slots(True)[0]

    @classmethod
    def tearDownClass(cls):
        cls.m.C_Finalize(None)
        super().tearDownClass()

    def setUp(self):
        self.assertEqual(self.m.C_CloseAllSessions(CK_ULONG(self.slot)), 0)

    def openssl_verify(self, label: str, signature: bytes, data: bytes = DATA) -> None:
        d = Path(self.tmp)
        pub = d / f"{label}.pub.pem"
        if not pub.exists():
            self.run_tool(["openssl", "x509", "-in", str(self.cert(label)), "-pubkey", "-noout", "-out", str(pub)])
        sig, dat = d / "sig.bin", d / "data.bin"
        sig.write_bytes(signature)
        dat.write_bytes(data)
        if label.startswith("ec"):  # PKCS#11 r||s → DER for openssl
            half = len(signature) // 2
            r, s = (int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
            sig.write_bytes(der_ecdsa(r, s))
        self.run_tool(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(dat)])

    def logged_in_rw(self) -> int:
        rv, h = self.m.open(self.slot, p11.CKF_SERIAL_SESSION | p11.CKF_RW_SESSION)
        self.assertEqual(rv, 0)
        self.assertEqual(self.m.login(h, CONFIG_PIN.encode()), 0)
        return h

    def test_token_info_claims_no_write_protection(self):
        ti = p11.CK_TOKEN_INFO()
        self.assertEqual(self.m.C_GetTokenInfo(CK_ULONG(self.slot), byref(ti)), 0)
        self.assertEqual(bytes(ti.label).decode().rstrip(), "p11relay-demo")
        self.assertFalse(ti.flags & p11.CKF_WRITE_PROTECTED)
        self.assertTrue(ti.flags & p11.CKF_LOGIN_REQUIRED)
        self.assertEqual(ti.ulMaxRwSessionCount, 0)  # CK_EFFECTIVELY_INFINITE (R/W sessions allowed)
        self.assertEqual(ti.ulMaxSessionCount, 0)

    def test_sessions_ro_and_rw_and_the_login_state(self):
        rv, ro = self.m.open(self.slot, p11.CKF_SERIAL_SESSION)
        self.assertEqual(rv, 0)
        rv, rw = self.m.open(self.slot, p11.CKF_SERIAL_SESSION | p11.CKF_RW_SESSION)
        self.assertEqual(rv, 0)
        self.assertEqual(self.m.open(self.slot, p11.CKF_RW_SESSION)[0], CKR["SESSION_PARALLEL_NOT_SUPPORTED"])
        self.assertEqual((self.m.state(ro), self.m.state(rw)), (p11.CKS_RO_PUBLIC_SESSION, p11.CKS_RW_PUBLIC_SESSION))
        self.assertEqual(self.m.login(rw, b"wrong"), CKR["PIN_INCORRECT"])
        self.assertEqual(self.m.find(rw, p11.CKO_PRIVATE_KEY, b"rsa2048"), [])
        self.assertEqual(self.m.login(rw, b"1234", p11.CKU_SO), CKR["SESSION_READ_ONLY_EXISTS"])
        self.assertEqual(self.m.login(ro, CONFIG_PIN.encode()), 0)
        self.assertEqual((self.m.state(ro), self.m.state(rw)), (p11.CKS_RO_USER_FUNCTIONS, p11.CKS_RW_USER_FUNCTIONS))
        self.assertEqual(self.m.login(rw, CONFIG_PIN.encode()), CKR["USER_ALREADY_LOGGED_IN"])
        self.assertEqual(len(self.m.find(rw, p11.CKO_PRIVATE_KEY, b"rsa2048")), 1)
        self.assertEqual(self.m.C_Logout(CK_ULONG(rw)), 0)
        self.assertEqual(self.m.state(ro), p11.CKS_RO_PUBLIC_SESSION)

    def test_sign_in_rw_sessions_from_threads(self):
        h0 = self.logged_in_rw()
        key = self.m.find(h0, p11.CKO_PRIVATE_KEY, b"rsa2048")[0]
        results: list = []
        lock = threading.Lock()

        def worker():
            rv, h = self.m.open(self.slot, p11.CKF_SERIAL_SESSION | p11.CKF_RW_SESSION)
            out = [rv]
            for _ in range(3):
                out.append(self.m.sign_init(h, p11.CKM_SHA256_RSA_PKCS, key))
                rv2, sig, _ = self.m.sign(h, DATA, 256)
                out.append(rv2)
                with lock:
                    results.append((out, sig))
            self.m.C_CloseSession(CK_ULONG(h))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(results), 24)
        for codes, sig in results:
            self.assertEqual(set(codes), {0})
        for sig in {sig for _, sig in results}:  # PKCS#1 v1.5 is deterministic: one distinct signature
            self.openssl_verify("rsa2048", sig)

    def test_sign_operation_ends_as_the_specification_says(self):
        h = self.logged_in_rw()
        key = self.m.find(h, p11.CKO_PRIVATE_KEY, b"ec256")[0]
        self.assertEqual(self.m.sign_init(h, p11.CKM_ECDSA_SHA256, key), 0)
        self.assertEqual(self.m.sign_init(h, p11.CKM_ECDSA_SHA256, key), CKR["OPERATION_ACTIVE"])
        rv, _, n = self.m.sign(h, DATA, None)  # length query: kept
        self.assertEqual((rv, n), (0, 64))
        rv, _, n = self.m.sign(h, DATA, 10)  # too small: kept
        self.assertEqual((rv, n), (CKR["BUFFER_TOO_SMALL"], 64))
        rv, sig, _ = self.m.sign(h, DATA, 64)
        self.assertEqual(rv, 0)
        self.openssl_verify("ec256", sig)
        self.assertEqual(self.m.sign(h, DATA, 64)[0], CKR["OPERATION_NOT_INITIALIZED"])  # success ended it
        # A NULL pulSignatureLen ends it too.
        self.assertEqual(self.m.sign_init(h, p11.CKM_ECDSA_SHA256, key), 0)
        d = create_string_buffer(DATA, len(DATA))
        self.assertEqual(self.m.C_Sign(CK_ULONG(h), d, CK_ULONG(len(DATA)), None, None), CKR["ARGUMENTS_BAD"])
        self.assertEqual(self.m.sign(h, DATA, 64)[0], CKR["OPERATION_NOT_INITIALIZED"])
        # C_Sign after C_SignUpdate fails and ends the operation.
        self.assertEqual(self.m.sign_init(h, p11.CKM_ECDSA_SHA256, key), 0)
        self.assertEqual(self.m.C_SignUpdate(CK_ULONG(h), d, CK_ULONG(10)), 0)
        self.assertEqual(self.m.sign(h, DATA, 64)[0], CKR["OPERATION_ACTIVE"])
        n = CK_ULONG(64)
        out = create_string_buffer(64)
        self.assertEqual(self.m.C_SignFinal(CK_ULONG(h), out, byref(n)), CKR["OPERATION_NOT_INITIALIZED"])

    def test_what_the_token_refuses_and_random_numbers(self):
        h = self.logged_in_rw()
        key = self.m.find(h, p11.CKO_PRIVATE_KEY, b"rsa2048")[0]
        self.assertEqual(self.m.C_DestroyObject(CK_ULONG(h), CK_ULONG(key)), CKR["ACTION_PROHIBITED"])
        self.assertEqual(self.m.C_SetAttributeValue(CK_ULONG(h), CK_ULONG(key), None, CK_ULONG(0)),
                         CKR["ACTION_PROHIBITED"])
        rv, ro = self.m.open(self.slot, p11.CKF_SERIAL_SESSION)
        self.assertEqual(self.m.C_DestroyObject(CK_ULONG(ro), CK_ULONG(key)), CKR["SESSION_READ_ONLY"])
        m = p11.CK_MECHANISM(0x0, None, 0)  # CKM_RSA_PKCS_KEY_PAIR_GEN
        a, b = CK_ULONG(0), CK_ULONG(0)
        self.assertEqual(self.m.C_GenerateKeyPair(CK_ULONG(h), byref(m), None, CK_ULONG(0), None, CK_ULONG(0),
                                                  byref(a), byref(b)), CKR["MECHANISM_INVALID"])
        self.assertEqual(self.m.state(h), p11.CKS_RW_USER_FUNCTIONS)  # the session is unharmed
        r1, r2 = create_string_buffer(32), create_string_buffer(32)
        self.assertEqual(self.m.C_GenerateRandom(CK_ULONG(ro), r1, CK_ULONG(32)), 0)
        self.assertEqual(self.m.C_GenerateRandom(CK_ULONG(ro), r2, CK_ULONG(32)), 0)
        self.assertNotEqual(r1.raw, r2.raw)

    def test_wait_for_slot_event_does_not_block_with_dont_block(self):
        slot = CK_ULONG(0)
        self.assertEqual(self.m.C_WaitForSlotEvent(CK_ULONG(p11.CKF_DONT_BLOCK), byref(slot), None), CKR["NO_EVENT"])

    def test_appliance_login_refused_is_said_once_and_the_slot_has_no_token(self):
        # A second daemon on the same token whose PIN file holds a wrong PIN.
        state = Path(self.st.config).parent
        (state / "wrong-pins.yml").write_text(f"{self.st.token_name}: \"not-the-pin\"\n")
        os.chmod(state / "wrong-pins.yml", 0o600)
        cfg = Path(self.st.config).read_text().replace("pinfile: pins.yml", "pinfile: wrong-pins.yml")
        self.assertIn("wrong-pins.yml", cfg)
        (state / "wrong.yml").write_text(cfg)
        bad = Daemon(self.st, config=state / "wrong.yml").start()
        try:
            client = write_client_config(Path(self.tmp) / "client-wrong.yml", self.st, [bad.url],
                                         pkcs11={"loglevel": "warning"})
            env = dict(self.env, P11RELAY_CONFIG=str(client))
            p = self.run_tool([sys.executable, __file__, "--probe"], env=env)
        finally:
            bad.stop()
        out = json.loads(p.stdout)
        err = p.stderr.decode()
        self.assertEqual(out["initialize"], 0)
        self.assertEqual(out["present"], [])
        self.assertEqual(len(out["all"]), 1, out)
        self.assertFalse(out["slot_flags"] & p11.CKF_TOKEN_PRESENT)
        self.assertIn("login refused", out["slot_description"])
        self.assertEqual(out["token_info"], CKR["TOKEN_NOT_PRESENT"])
        self.assertEqual(out["open"], CKR["TOKEN_NOT_PRESENT"])
        lines = [l for l in err.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("p11relay-pkcs11: the appliance cannot use its token 'p11relay-demo' "
                                            "(its login to the token was refused)"), lines[0])
        self.assertIn("wrong PIN", lines[0])
        self.assertNotIn("not-the-pin", err)


def der_ecdsa(r: int, s: int) -> bytes:
    def integer(v: int) -> bytes:
        b = v.to_bytes((v.bit_length() + 8) // 8, "big")
        return b"\x02" + bytes([len(b)]) + b
    body = integer(r) + integer(s)
    return b"\x30" + bytes([len(body)]) + body


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        print(json.dumps(probe_unusable_token()))
        sys.exit(0)
    main()
