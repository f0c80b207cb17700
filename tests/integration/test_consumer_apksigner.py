#!/usr/bin/python3
"""apksigner (Debian package apksigner) signing an APK with a remote key through Java's SunPKCS11 provider
loading p11relay-pkcs11.so; `apksigner verify` checks the v2/v3 signatures and the signer certificate is
the key's. The APK is the minimum apksigner accepts with --min-sdk-version: a zip holding an
AndroidManifest.xml (its content is not read then) and a file. Skipped without apksigner or a JDK."""
import hashlib
import shutil
import unittest
import zipfile

import harness
from shim_util import PIN, SHIM, ShimTest, main, run

# apksigner instantiates the provider class by reflection; since Java 9 that needs the package exported.
JAVA_OPTIONS = "--add-exports=jdk.crypto.cryptoki/sun.security.pkcs11=ALL-UNNAMED"


class ApksignerTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not (shutil.which("apksigner") and shutil.which("java")):
            raise unittest.SkipTest("apksigner or a JDK (default-jdk-headless) not installed")
        if harness.SANITIZER_PRELOAD:
            raise unittest.SkipTest("the JVM cannot run with a preloaded sanitizer runtime")
        super().setUpClass()
        cls.p11cfg = cls.tmp / "sunpkcs11.cfg"
        cls.p11cfg.write_text(f"name = p11relay\nlibrary = {SHIM}\nslotListIndex = 0\n")
        cls.apk = cls.tmp / "unsigned.apk"
        with zipfile.ZipFile(cls.apk, "w") as z:
            z.writestr("AndroidManifest.xml", b"")
            z.writestr("assets/hello.txt", b"hello from p11relay\n")
        # The PIN reaches apksigner through the environment (--ks-pass env:NAME), not its command line.
        cls.env = dict(cls.env, JDK_JAVA_OPTIONS=JAVA_OPTIONS, P11RELAY_TOKEN_PIN=PIN)

    def sign(self, alias: str, *extra, min_sdk="24"):
        signed = self.tmp / f"signed-{alias}.apk"
        self.run_tool(["apksigner", "sign", "--ks", "NONE", "--ks-type", "PKCS11",
                       "--provider-class", "sun.security.pkcs11.SunPKCS11", "--provider-arg", str(self.p11cfg),
                       "--ks-pass", "env:P11RELAY_TOKEN_PIN", "--ks-key-alias", alias, "--min-sdk-version", min_sdk,
                       *extra, "--out", str(signed), str(self.apk)], timeout=300)
        return signed

    def verify(self, alias: str, signed, *schemes, min_sdk="24"):
        out = self.run_tool(["apksigner", "verify", "--min-sdk-version", min_sdk, "-v", "--print-certs", str(signed)],
                            timeout=300).stdout.decode()
        self.assertTrue(out.startswith("Verifies"), out)
        for scheme in schemes:
            self.assertIn(f"Verified using {scheme}): true", out)
        der = run(["openssl", "x509", "-outform", "DER", "-in", str(self.cert(alias))]).stdout
        self.assertIn(f"certificate SHA-256 digest: {hashlib.sha256(der).hexdigest()}", out)

    def test_rsa_v2_v3(self):
        signed = self.sign("rsa2048")
        self.verify("rsa2048", signed, "v2 scheme (APK Signature Scheme v2", "v3 scheme (APK Signature Scheme v3")

    def test_rsa_with_v1_jar_signature(self):
        # Below API level 24 Android checks the v1 (JAR) signature, so apksigner makes and verifies one.
        signed = self.sign("rsa2048", min_sdk="21")
        self.verify("rsa2048", signed, "v1 scheme (JAR signing", "v2 scheme (APK Signature Scheme v2", min_sdk="21")

    def test_ecdsa(self):
        self.verify("ec256", self.sign("ec256"), "v2 scheme (APK Signature Scheme v2")

    def test_tampered_apk_fails_verification(self):
        signed = self.sign("rsa2048")
        data = bytearray(signed.read_bytes())
        i = data.index(b"hello from p11relay")
        data[i] ^= 0x01
        tampered = self.tmp / "tampered.apk"
        tampered.write_bytes(bytes(data))
        p = self.run_tool(["apksigner", "verify", "--min-sdk-version", "24", str(tampered)], check=False,
                          timeout=300)
        self.assertNotEqual(p.returncode, 0)


if __name__ == "__main__":
    main()
