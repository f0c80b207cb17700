#!/usr/bin/python3
"""sbsigntool through OpenSSL's pkcs11 engine (libp11) loading p11relay-pkcs11.so: `sbsign --engine pkcs11
--key pkcs11:...` signs an EFI application with the remote RSA and EC keys; `sbverify --cert` and
`osslsigncode verify` check the result. The engine gets the module and the PIN from an OpenSSL config, so
the PIN is not on a command line. Skipped without sbsigntool, the engine or mingw-w64."""
import shutil
import unittest
from pathlib import Path

from shim_util import ENGINE, PIN, TOKEN_LABEL, ShimTest, main, make_efi, run, write_engine_config


class SbsignTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not (shutil.which("sbsign") and shutil.which("sbverify")):
            raise unittest.SkipTest("sbsigntool not installed")
        if not Path(ENGINE).exists():
            raise unittest.SkipTest("libengine-pkcs11-openssl not installed")
        super().setUpClass()
        cls.efi = make_efi(cls.tmp)
        cnf = write_engine_config(cls.tmp / "openssl-pkcs11.cnf", pin=PIN)
        cls.env = dict(cls.env, OPENSSL_CONF=str(cnf))

    def sign(self, label: str) -> Path:
        out = self.tmp / f"signed-{label}.efi"
        key = f"pkcs11:token={TOKEN_LABEL};object={label};type=private"
        self.run_tool(["sbsign", "--engine", "pkcs11", "--key", key, "--cert", str(self.cert(label)),
                       "--output", str(out), str(self.efi)])
        return out

    def verify(self, label: str, signed: Path):
        p = run(["sbverify", "--cert", str(self.cert(label)), str(signed)], check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(b"Signature verification OK", p.stdout)
        if shutil.which("osslsigncode"):
            p = run(["osslsigncode", "verify", "-in", str(signed), "-CAfile", str(self.cert(label))], check=False)
            self.assertIn(b"Signature verification: ok", p.stdout, p.stdout + p.stderr)

    def test_rsa(self):
        signed = self.sign("rsa2048")
        self.verify("rsa2048", signed)
        # Against another key's certificate the same signature does not verify.
        p = run(["sbverify", "--cert", str(self.cert("ec256")), str(signed)], check=False)
        self.assertNotEqual(p.returncode, 0)

    def test_ecdsa(self):
        self.verify("ec256", self.sign("ec256"))

    def test_unsigned_binary_does_not_verify(self):
        p = run(["sbverify", "--cert", str(self.cert("rsa2048")), str(self.efi)], check=False)
        self.assertNotEqual(p.returncode, 0)


if __name__ == "__main__":
    main()
