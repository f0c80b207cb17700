#!/usr/bin/python3
"""relic clients signing PE files on the server: upload, binpatch, osslsigncode verify."""
import glob
import json
import os
import re
import shutil
import subprocess
import unittest
from pathlib import Path

import harness
import relic_client
from harness import DaemonTest


def tiny_pe(tmp: Path, arch: str) -> bytes:
    cc = shutil.which(f"{arch}-w64-mingw32-gcc")
    if not cc:
        raise unittest.SkipTest(f"{arch}-w64-mingw32-gcc not installed")
    src = tmp / "hello.c"
    src.write_text('#include <stdio.h>\nint main(void){puts("hello from p11relay tests");return 0;}\n')
    out = tmp / f"hello-{arch}.exe"
    harness.run([cc, "-O1", "-s", "-o", str(out), str(src)])
    return out.read_bytes()


def system_dlls():
    pats = ["/usr/lib/gcc/x86_64-w64-mingw32/*/*.dll", "/usr/lib/gcc/i686-w64-mingw32/*/*.dll",
            "/usr/x86_64-w64-mingw32/lib/*.dll", "/usr/i686-w64-mingw32/lib/*.dll"]
    found = []
    for p in pats:
        found += sorted(glob.glob(p))
    return found[:3]


def osslsigncode_verify(path: Path, cafile: Path) -> str:
    p = harness.run(["osslsigncode", "verify", "-in", str(path), "-CAfile", str(cafile)], check=False)
    out = (p.stdout + p.stderr).decode(errors="replace")
    if p.returncode != 0:
        raise AssertionError("osslsigncode verify failed:\n" + out)
    return out


class RelicPeCoff(DaemonTest):
    def write(self, name, data) -> Path:
        p = self.tmp / name
        p.write_bytes(data)
        return p

    def check_signed(self, name: str, signed: bytes, key: str = "rsa2048", expect_page_hashes=False) -> str:
        # the demo certificates are self-signed: each is its own trust anchor
        out = osslsigncode_verify(self.write(name, signed), self.st.keys[key].certfile)
        cur = re.search(r"Current message digest\s*:\s*([0-9A-F]+)", out)
        calc = re.search(r"Calculated message digest\s*:\s*([0-9A-F]+)", out)
        self.assertTrue(cur and calc and cur.group(1) == calc.group(1), out)
        if expect_page_hashes:
            self.assertIn("Page hash", out)
        return out

    def test_pe32_and_pe32plus_rsa_and_ecdsa(self):
        for arch in ("i686", "x86_64"):
            pe = tiny_pe(self.tmp, arch)
            for key in ("rsa2048", "ec256"):
                with self.subTest(arch=arch, key=key):
                    st, h, body, signed = relic_client.sign_pe(self.daemon, key, pe, filename=f"{arch}.exe")
                    self.assertEqual(st, 200, body)
                    self.assertEqual(h["content-type"], "application/x-binary-patch")
                    self.assertEqual(body[:8], b"\0\0\0\x01\0\0\0\x02")  # version 1, 2 records (§9.5)
                    out = self.check_signed(f"{arch}-{key}.exe", signed, key)
                    self.assertIn("Signature verification: ok", out)

    def test_page_hashes_description_and_resign(self):
        pe = tiny_pe(self.tmp, "x86_64")
        st, _, body, signed = relic_client.sign_pe(self.daemon, "rsa2048", pe, page_hashes=True,
                                                   description="Test app", url="https://example.com/")
        self.assertEqual(st, 200, body)
        out = self.check_signed("ph.exe", signed, expect_page_hashes=True)
        # re-signing an already signed file replaces the signature
        st, _, body, resigned = relic_client.sign_pe(self.daemon, "ec256", signed)
        self.assertEqual(st, 200, body)
        out2 = self.check_signed("resigned.exe", resigned, "ec256")
        self.assertNotIn("Page hash", out2)
        self.assertEqual(out2.count("Signer's certificate:"), out.count("Signer's certificate:"))

    def test_real_dlls_from_debian_packages(self):
        dlls = system_dlls()
        if not dlls:
            self.skipTest("no mingw DLLs installed")
        for dll in dlls:
            with self.subTest(dll=dll):
                pe = Path(dll).read_bytes()
                st, _, body, signed = relic_client.sign_pe(self.daemon, "rsa2048", pe, filename=os.path.basename(dll))
                self.assertEqual(st, 200, body)
                self.check_signed(os.path.basename(dll), signed)

    def test_compressed_uploads(self):
        pe = tiny_pe(self.tmp, "i686")
        for enc in ("gzip", "x-snappy-framed"):
            with self.subTest(enc=enc):
                st, _, body, signed = relic_client.sign_pe(self.daemon, "rsa2048", pe, encoding=enc)
                self.assertEqual(st, 200, body)
                self.check_signed(f"{enc}.exe", signed)

    def test_audit_record_like_relic(self):
        pe = tiny_pe(self.tmp, "i686")
        st, _, body, _ = relic_client.sign_pe(self.daemon, "rsa2048", pe, filename="audited.exe")
        self.assertEqual(st, 200)
        rec = json.loads(self.st.audit_file.read_text().splitlines()[-1])
        self.assertEqual(rec["sig.type"], "pe-coff")
        self.assertEqual(rec["client.filename"], "audited.exe")
        self.assertEqual(rec["content-type"], "application/x-binary-patch")
        self.assertEqual(rec["perf.size.in"], len(pe))
        self.assertEqual(rec["perf.size.patch"], len(body))
        self.assertEqual(rec["sig.hash"], "SHA-256")

    def test_hostile_pe_is_a_4xx_problem(self):
        pe = tiny_pe(self.tmp, "x86_64")
        cases = {
            "not a PE": b"-----BEGIN CERTIFICATE-----\nnot a pe\n",
            "truncated": pe[:300],
            "empty": b"",
        }
        import struct
        bad = bytearray(pe)
        e_lfanew = struct.unpack_from("<I", bad, 0x3C)[0]
        struct.pack_into("<H", bad, e_lfanew + 6, 0xFFFF)  # NumberOfSections
        cases["huge section count"] = bytes(bad)
        bad2 = bytearray(pe)
        struct.pack_into("<I", bad2, 0x3C, 0x7FFFFFF0)  # e_lfanew past EOF
        cases["e_lfanew past EOF"] = bytes(bad2)
        for name, data in cases.items():
            with self.subTest(name):
                st, h, body, _ = relic_client.sign_pe(self.daemon, "rsa2048", data)
                self.assertTrue(400 <= st < 500, (st, body))
                self.assertEqual(h["content-type"], "application/problem+json")
                self.assertIn("PE", json.loads(body)["detail"])
        # the daemon is still fine
        st, _, _, signed = relic_client.sign_pe(self.daemon, "rsa2048", pe)
        self.assertEqual(st, 200)


if __name__ == "__main__":
    harness.main()
