#!/usr/bin/python3
"""`p11relay sign` / `verify` on Windows Installer files, end to end: a real p11relayd in front of a SoftHSMv2
token over real mutual TLS. The MSIs are built by wixl; osslsigncode verifies every output and signs the same
file with the same token key (pkcs11 engine) to compare the digests.
"""
import os
import re
import shutil
import subprocess
import unittest
from pathlib import Path

import harness
from harness import Tsa
from test_cli import CliTest, OSSLSIGNCODE, osslsigncode_verify

WIXL = shutil.which("wixl")

WXS = """<?xml version='1.0'?><Wix xmlns='http://schemas.microsoft.com/wix/2006/wi'>
<Product Id='*' Name='p11relay msi test' Language='1033' Version='1.0.0' Manufacturer='p11relay'
 UpgradeCode='12345678-1234-1234-1234-123456789012'>
<Package InstallerVersion='200' Compressed='yes'/><Media Id='1' Cabinet='p.cab' EmbedCab='yes'/>
<Directory Id='TARGETDIR' Name='SourceDir'><Directory Id='ProgramFilesFolder'><Directory Id='INSTALLDIR' Name='p11r'>
<Component Id='C' Guid='12345678-1234-1234-1234-123456789013'>
<File Id='F1' Source='small.txt'/><File Id='F2' Source='big.bin'/></Component></Directory></Directory></Directory>
<Feature Id='Main' Level='1'><ComponentRef Id='C'/></Feature></Product></Wix>
"""


def build_msi(d: Path, big: int = 300_000) -> Path:
    """An MSI made by wixl with two files, `big` random bytes in one (bench/run builds a 100 MB one)."""
    d.mkdir(exist_ok=True)
    (d / "small.txt").write_text("hello\n")
    (d / "big.bin").write_bytes(os.urandom(big))  # regular sectors and an embedded cabinet
    (d / "p.wxs").write_text(WXS)
    subprocess.run([WIXL, "-o", "p.msi", "p.wxs"], cwd=d, check=True, capture_output=True, timeout=120)
    return d / "p.msi"


@unittest.skipUnless(OSSLSIGNCODE and WIXL, "osslsigncode or wixl not installed")
class Msi(CliTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.msi = build_msi(cls.tmp / "msi")

    def osslverify(self, path: Path, ca, tsa_ca=None, check=True):
        return osslsigncode_verify(self, path, ca, tsa_ca, check, field="DigitalSignature")

    @staticmethod
    def digest_of(out: str) -> str:
        return re.search(r"Current DigitalSignature\s*:\s*([0-9A-Fa-f]+)", out).group(1).lower()

    def test_sign_rsa_and_ec_verified_by_osslsigncode_and_p11relay(self):
        before = self.msi.read_bytes()
        for key, alg in (("rsa2048", "sha256"), ("ec256", "sha256"), ("ec384", "sha384")):
            with self.subTest(key=key):
                out = self.tmp / f"signed-{key}.msi"
                p = self.cli("-v", "sign", "--key", key, "--file", self.msi, "--output", out, "--digest", alg,
                             "--description", "p11relay test", "--url", "https://example.org/")
                self.assertIn(f"MSI digest: {alg} ".encode(), p.stderr)
                _, text = self.osslverify(out, self.cert(key))
                self.assertIn("Number of verified signatures: 1", text)
                v = self.cli("verify", "--file", out, "--cafile", self.cert(key), config=False).stdout.decode()
                self.assertIn("type:        MSI", v)
                self.assertIn(f"CN={key}", v)
                self.assertIn(self.digest_of(text), v)
                self.assertIn("chain:         trusted by", v)
        self.assertEqual(self.msi.read_bytes(), before, "the input was modified")

    def test_progress_bar_on_a_large_msi(self):
        big = build_msi(self.tmp / "msi-big", big=6 << 20)
        out = self.assert_progress_only_on_a_terminal(big)
        self.assertIn("Number of verified signatures: 1", self.osslverify(out, self.cert("ec256"))[1])

    def test_same_digest_as_osslsigncode_with_the_token_key(self):
        for extra, ours_flag in (([], []), (["-add-msi-dse"], ["--msi-extended"])):
            with self.subTest(extended=bool(extra)):
                ours = self.tmp / "ours.msi"
                theirs = self.tmp / "theirs.msi"
                self.cli("sign", "--key", "rsa2048", "--file", self.msi, "--output", ours, *ours_flag)
                self.osslsigncode_sign(self.msi, theirs, *extra)
                _, a = self.osslverify(ours, self.cert("rsa2048"))
                _, b = self.osslverify(theirs, self.cert("rsa2048"))
                self.assertEqual(self.digest_of(a), self.digest_of(b))
                if extra:
                    self.assertNotIn("MsiDigitalSignatureEx stream doesn't exist", a)
                # p11relay verify accepts osslsigncode's signature
                self.assertIn("CN=rsa2048", self.cli("verify", "--file", theirs, config=False).stdout.decode())

    def test_timestamp_in_place_and_append(self):
        tsa = Tsa(self.tmp)
        try:
            f = self.tmp / "inplace.msi"
            shutil.copyfile(self.msi, f)
            self.cli("sign", "--key", "rsa2048", "--file", f, "--timestamp-url", tsa.url, "--timestamp-cafile", tsa.ca)
            _, text = self.osslverify(f, self.cert("rsa2048"), tsa_ca=tsa.ca)
            self.assertIn("Timestamp", text)
            self.assertIn("timestamp:   yes", self.cli("verify", "--file", f, config=False).stdout.decode())
        finally:
            tsa.stop()
        out = self.tmp / "nested.msi"
        self.cli("sign", "--key", "ec256", "--file", f, "--output", out, "--append")
        both = self.tmp / "both-ca.pem"
        both.write_text(self.cert("rsa2048").read_text() + self.cert("ec256").read_text())
        _, text = self.osslverify(out, both, tsa_ca=self.tmp / "tsa" / "tsa.crt")
        self.assertIn("Number of verified signatures: 2", text)
        v = self.cli("verify", "--file", out, config=False).stdout.decode()
        self.assertIn("signature (nested 1): OK", v)
        self.assertEqual([x for x in os.listdir(self.tmp) if ".p11relay-" in x], [])

    def test_tampered_and_hostile_files(self):
        out = self.tmp / "tamper.msi"
        self.cli("sign", "--key", "rsa2048", "--file", self.msi, "--output", out)
        data = bytearray(out.read_bytes())
        i = data.find(b"hello\n")
        self.assertGreater(i, 0)
        data[i] ^= 0x20
        out.write_bytes(bytes(data))
        p = self.cli("verify", "--file", out, config=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"the MSI's digest is not the one its signature carries", p.stderr)
        self.assertNotEqual(self.osslverify(out, self.cert("rsa2048"), check=False)[0], 0)
        # a truncated compound file: a clear error, nothing written
        bad = self.tmp / "truncated.msi"
        bad.write_bytes(self.msi.read_bytes()[:4096])
        dst = self.tmp / "never.msi"
        p = self.cli("sign", "--key", "rsa2048", "--file", bad, "--output", dst, check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"not a valid OLE compound file", p.stderr)
        self.assertFalse(dst.exists())
        p = self.cli("sign", "--key", "rsa2048", "--file", self.msi, "--output", dst, "--page-hashes", check=False)
        self.assertIn(b"PE files only", p.stderr)
        self.assertFalse(dst.exists())


if __name__ == "__main__":
    harness.main()
