#!/usr/bin/python3
"""`p11relay sign` on scripts (PowerShell .ps1/.psm1, .ps1xml), end to end: a real p11relayd in front of a
SoftHSMv2 token over real mutual TLS. osslsigncode verifies every output and signs the same file with the same
token key (pkcs11 engine) to compare the digests; UTF-8 (with characters outside the BMP) and UTF-16LE sources.
"""
import os
import re
import unittest

import harness
from test_cli import CliTest, OSSLSIGNCODE, osslsigncode_verify

SCRIPT = ('# p11relay test script: Grüße, ✓, 𝄞\r\n'
          'param([string]$Name = "world")\r\n'
          'Write-Output "hello $Name"\r\n')
XML = ('<?xml version="1.0" encoding="utf-8"?>\r\n'
       '<Types><Type><Name>P11relay.Test</Name></Type></Types>\r\n')


@unittest.skipUnless(OSSLSIGNCODE, "osslsigncode not installed")
class Scripts(CliTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.utf8 = cls.tmp / "hello.ps1"
        cls.utf8.write_bytes(SCRIPT.encode())
        cls.utf16 = cls.tmp / "module.psm1"
        cls.utf16.write_bytes(b"\xff\xfe" + SCRIPT.encode("utf-16-le"))
        cls.xml = cls.tmp / "types.ps1xml"
        cls.xml.write_bytes(XML.encode())

    def verify(self, path, key, **kw):
        return osslsigncode_verify(self, path, self.cert(key), **kw)[1]

    @staticmethod
    def digest_of(out: str) -> str:
        return re.search(r"Current message digest\s*:\s*([0-9A-Fa-f]+)", out).group(1).lower()

    def test_sign_each_type_and_encoding_verified_by_osslsigncode(self):
        for src, key, alg in ((self.utf8, "rsa2048", "sha256"), (self.utf16, "ec256", "sha256"),
                              (self.xml, "ec384", "sha384")):
            with self.subTest(src=src.name, key=key):
                before = src.read_bytes()
                out = self.tmp / f"signed-{key}{src.suffix}"
                p = self.cli("-v", "sign", "--key", key, "--file", src, "--output", out, "--digest", alg,
                             "--description", "p11relay test", "--url", "https://example.org/")
                self.assertIn(f"script digest: {alg} ".encode(), p.stderr)
                text = self.verify(out, key)
                self.assertIn("Number of verified signatures: 1", text)
                v = self.cli("verify", "--file", out, "--cafile", self.cert(key), config=False).stdout.decode()
                self.assertIn("signature (primary): OK", v)
                self.assertIn("type:        script", v)
                self.assertIn(f"digest:      {alg} ", v)
                data = out.read_bytes()
                self.assertTrue(data.startswith(before), "the script text must stay as it was")
                enc = "utf-16-le" if src is self.utf16 else "utf-8"
                tail = data[len(before):].decode(enc)
                opener = "<!-- " if src is self.xml else "# "
                self.assertTrue(tail.startswith(f"\r\n{opener}SIG # Begin signature block"), tail[:60])
                self.assertTrue(tail.endswith("SIG # End signature block" + (" -->" if src is self.xml else "")
                                              + "\r\n"), tail[-60:])
                self.assertEqual(src.read_bytes(), before, "the input was modified")

    def test_same_digest_as_osslsigncode_with_the_token_key(self):
        for src in (self.utf8, self.utf16):
            with self.subTest(src=src.name):
                ours, theirs = self.tmp / f"ours{src.suffix}", self.tmp / f"theirs{src.suffix}"
                self.cli("sign", "--key", "rsa2048", "--file", src, "--output", ours)
                self.osslsigncode_sign(src, theirs)
                self.assertEqual(self.digest_of(self.verify(ours, "rsa2048")),
                                 self.digest_of(self.verify(theirs, "rsa2048")))
                # p11relay verify reads what osslsigncode wrote
                self.assertIn(b"signature (primary): OK", self.cli("verify", "--file", theirs, config=False).stdout)

    def test_resign_in_place_replaces_the_block_and_timestamps(self):
        f = self.tmp / "inplace.ps1"
        f.write_bytes(SCRIPT.encode())
        self.resign_timestamped(f)
        self.assertEqual(f.read_bytes().count(b"SIG # Begin signature block"), 1)
        self.assertTrue(f.read_bytes().startswith(SCRIPT.encode()))
        self.assertEqual([x for x in os.listdir(self.tmp) if ".p11relay-" in x], [])

    def test_tampered_and_hostile_scripts(self):
        out = self.tmp / "tamper.ps1"
        self.cli("sign", "--key", "rsa2048", "--file", self.utf8, "--output", out)
        out.write_bytes(out.read_bytes().replace(b"hello $Name", b"HELLO $Name"))
        self.assertNotEqual(osslsigncode_verify(self, out, self.cert("rsa2048"), check=False)[0], 0)
        p = self.cli("verify", "--file", out, config=False, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"changed after signing", p.stderr)
        p = self.cli("verify", "--file", self.utf8, config=False, check=False)
        self.assertIn(b"the script is not signed", p.stderr)
        self.assert_sign_refused((("bad-utf8.ps1", b"Write-Output \xff\xfe\xfd\r\n", b"not UTF-8 text at byte 13"),
                                  ("odd.ps1", b"\xff\xfeW\x00r", b"even number of bytes"),
                                  ("surrogate.ps1", b"\xff\xfe\x00\xd8A\x00", b"not UTF-16LE text at byte 2"),
                                  ("onlysig.ps1", b"# SIG # Begin signature block\r\nAAAA\r\n", b"nothing to sign")))

    def test_append_nests_a_second_signature(self):
        for src in (self.utf8, self.utf16):
            with self.subTest(src=src.name):
                f = self.tmp / f"nested{src.suffix}"
                self.cli("sign", "--key", "rsa2048", "--file", src, "--output", f)
                p = self.cli("sign", "--key", "ec256", "--file", f, "--append", "--digest", "sha384")
                self.assertIn(b"nested", p.stderr)
                v = self.cli("verify", "--file", f, config=False).stdout.decode()
                self.assertIn("signature (primary): OK", v)
                self.assertIn("signature (nested 1): OK", v)
                self.assertIn("Number of verified signatures: 2", self.verify(f, "rsa2048"))
                self.assertEqual(f.read_bytes().count("SIG # Begin".encode("utf-16-le" if src is self.utf16 else "utf-8")), 1)


if __name__ == "__main__":
    harness.main()
