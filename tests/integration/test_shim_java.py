#!/usr/bin/python3
"""Java's SunPKCS11 provider with a config pointing at p11relay-pkcs11.so: keytool lists the key entries,
jarsigner signs a jar with the remote key, and `jarsigner -verify` passes. Skipped without a JDK
(apt-get install default-jdk-headless)."""
import shutil
import unittest

import harness

from shim_util import PIN, SHIM, ShimTest, main


class JarsignerTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not (shutil.which("jarsigner") and shutil.which("jar") and shutil.which("keytool")):
            raise unittest.SkipTest("no JDK (default-jdk-headless)")
        if harness.SANITIZER_PRELOAD:
            # The JVM handles SIGSEGV itself (implicit null checks), which a preloaded ASan runtime breaks.
            raise unittest.SkipTest("the JVM cannot run with a preloaded sanitizer runtime")
        super().setUpClass()
        cls.p11cfg = cls.tmp / "sunpkcs11.cfg"
        cls.p11cfg.write_text(f"name = p11relay\nlibrary = {SHIM}\nslotListIndex = 0\n")
        src = cls.tmp / "jar-src"
        src.mkdir()
        (src / "hello.txt").write_text("hello from p11relay\n")
        cls.jar = cls.tmp / "unsigned.jar"
        cls.run_tool_cls(["jar", "cf", str(cls.jar), "-C", str(src), "hello.txt"])

    @classmethod
    def run_tool_cls(cls, cmd):
        import subprocess
        p = subprocess.run(cmd, env=cls.env, capture_output=True, timeout=300)
        if p.returncode != 0:
            raise AssertionError(f"{cmd}: {p.stdout.decode()} {p.stderr.decode()}")
        return p

    def pkcs11_args(self):
        return ["-keystore", "NONE", "-storetype", "PKCS11", "-providerClass", "sun.security.pkcs11.SunPKCS11",
                "-providerArg", str(self.p11cfg), "-storepass", PIN]

    def test_keytool_lists_entries(self):
        out = self.run_tool(["keytool", "-list", *self.pkcs11_args()], timeout=300).stdout.decode()
        self.assertIn("rsa2048", out)
        self.assertIn("PrivateKeyEntry", out)

    def sign_and_verify(self, alias: str, extra=()):
        signed = self.tmp / f"signed-{alias}.jar"
        self.run_tool(["jarsigner", *self.pkcs11_args(), *extra, "-signedjar", str(signed), str(self.jar), alias],
                      timeout=300)
        p = self.run_tool(["jarsigner", "-verify", "-verbose", str(signed)], timeout=300)
        out = p.stdout.decode()
        self.assertIn("jar verified", out)

    def test_jarsigner_rsa(self):
        self.sign_and_verify("rsa2048", ["-sigalg", "SHA256withRSA", "-digestalg", "SHA-256"])

    def test_jarsigner_ecdsa(self):
        self.sign_and_verify("ec256", ["-sigalg", "SHA256withECDSA", "-digestalg", "SHA-256"])


if __name__ == "__main__":
    main()
