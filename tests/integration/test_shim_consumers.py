#!/usr/bin/python3
"""Real PKCS#11 consumers against p11relay-pkcs11.so and a real p11relayd + SoftHSMv2 token:
OpenSSL with the pkcs11 engine (libp11) and RFC 7512 URIs, osslsigncode on a real PE file (URI form and
the fields a backup console asks for: token label, key ID in hex, PIN, module path), and GnuTLS p11tool."""
import shutil
import subprocess
import unittest
from pathlib import Path

from shim_util import ENGINE, PIN, SHIM, TOKEN_LABEL, ShimTest, main, run, write_engine_config


class OpenSSLEngineTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not Path(ENGINE).exists():
            raise unittest.SkipTest("libengine-pkcs11-openssl not installed")
        super().setUpClass()
        cnf = write_engine_config(cls.tmp / "openssl.cnf")
        cls.env = dict(cls.env, OPENSSL_CONF=str(cnf))

    def uri(self, label: str) -> str:
        return f"pkcs11:token={TOKEN_LABEL};object={label};type=private;pin-value={PIN}"

    def pubkey(self, label: str) -> Path:
        pub = self.tmp / f"{label}.pub.pem"
        run(["openssl", "x509", "-in", str(self.cert(label)), "-pubkey", "-noout", "-out", str(pub)])
        return pub

    def sign_and_verify(self, label: str):
        data = self.tmp / f"engine-{label}.txt"
        data.write_bytes(b"signed by openssl through the pkcs11 engine\n" * 50)
        sig = self.tmp / f"engine-{label}.sig"
        self.run_tool(["openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine",
                       "-sign", self.uri(label), "-out", str(sig), str(data)])
        p = run(["openssl", "dgst", "-sha256", "-verify", str(self.pubkey(label)), "-signature", str(sig), str(data)],
                env={"PATH": "/usr/bin:/bin"})
        self.assertIn(b"Verified OK", p.stdout)

    def test_rsa_with_pkcs11_uri(self):
        self.sign_and_verify("rsa2048")

    def test_ecdsa_with_pkcs11_uri(self):
        self.sign_and_verify("ec256")

    def test_uri_by_id(self):
        data = self.tmp / "by-id.txt"
        data.write_bytes(b"by id")
        sig = self.tmp / "by-id.sig"
        uri = f"pkcs11:token={TOKEN_LABEL};id=%01;type=private;pin-value={PIN}"
        self.run_tool(["openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign", uri,
                       "-out", str(sig), str(data)])
        p = run(["openssl", "dgst", "-sha256", "-verify", str(self.pubkey("rsa2048")), "-signature", str(sig),
                 str(data)], env={"PATH": "/usr/bin:/bin"})
        self.assertIn(b"Verified OK", p.stdout)


class OsslsigncodeTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("osslsigncode"):
            raise unittest.SkipTest("osslsigncode not installed")
        super().setUpClass()
        cls.pe = cls.make_pe()

    @classmethod
    def make_pe(cls) -> Path:
        out = cls.tmp / "hello.exe"
        cc = shutil.which("x86_64-w64-mingw32-gcc")
        if cc:
            src = cls.tmp / "hello.c"
            src.write_text('#include <stdio.h>\nint main(void){puts("hello from p11relay");return 0;}\n')
            if subprocess.run([cc, "-O1", "-o", str(out), str(src)], capture_output=True).returncode == 0:
                return out
        for cand in ("/usr/x86_64-w64-mingw32/lib/libwinpthread-1.dll",):
            if Path(cand).exists():
                shutil.copy(cand, out)
                return out
        raise unittest.SkipTest("no PE file available (mingw-w64 not installed)")

    def sign(self, key_args, out: Path, label="rsa2048"):
        if out.exists():
            out.unlink()
        self.run_tool(["osslsigncode", "sign", "-pkcs11module", SHIM, *key_args,
                       "-certs", str(self.cert(label)), "-h", "sha256", "-n", "p11relay test",
                       "-in", str(self.pe), "-out", str(out)])
        p = self.run_tool(["osslsigncode", "verify", "-in", str(out), "-CAfile", str(self.cert(label))], check=False)
        text = (p.stdout + p.stderr).decode(errors="replace")
        self.assertIn("Signature verification: ok", text, text)
        self.assertIn("Message digest", text)

    def test_sign_pe_with_uri(self):
        self.sign(["-key", f"pkcs11:token={TOKEN_LABEL};object=rsa2048;type=private", "-pass", PIN],
                  self.tmp / "signed-uri.exe")

    def test_sign_pe_with_console_fields(self):
        # What a backup console asks for: module path, token label, key ID in hex, PIN.
        self.sign(["-key", f"pkcs11:token={TOKEN_LABEL};id=%01", "-pass", PIN], self.tmp / "signed-id.exe")

    def test_sign_pe_with_ecdsa(self):
        self.sign(["-key", f"pkcs11:token={TOKEN_LABEL};object=ec256;type=private", "-pass", PIN],
                  self.tmp / "signed-ec.exe", label="ec256")


class P11ToolTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("p11tool"):
            raise unittest.SkipTest("p11tool not installed")
        super().setUpClass()

    def test_list_tokens(self):
        out = self.run_tool(["p11tool", "--provider", SHIM, "--list-tokens"]).stdout.decode()
        self.assertIn(f"token={TOKEN_LABEL}", out)
        self.assertIn("Manufacturer", out)

    def test_list_all_objects_after_login(self):
        env = dict(self.env, GNUTLS_PIN=PIN)
        url = f"pkcs11:token={TOKEN_LABEL}"
        out = self.run_tool(["p11tool", "--provider", SHIM, "--login", "--list-all", url], env=env).stdout.decode()
        for label in ("rsa2048", "ec256"):
            self.assertIn(f"object={label};type=private", out)
            self.assertIn(f"object={label};type=cert", out)
        out = self.run_tool(["p11tool", "--provider", SHIM, "--list-all-certs", url]).stdout.decode()
        self.assertIn("object=rsa2048;type=cert", out)

    def test_export_certificate(self):
        url = f"pkcs11:token={TOKEN_LABEL};object=rsa2048;type=cert"
        out = self.run_tool(["p11tool", "--provider", SHIM, "--export", url]).stdout.decode()
        self.assertEqual(out.strip(), self.cert("rsa2048").read_text().strip())


if __name__ == "__main__":
    main()
