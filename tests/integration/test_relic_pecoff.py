#!/usr/bin/python3
"""relic clients signing PE files on the server: upload, binpatch, osslsigncode verify."""
import glob
import hashlib
import json
import os
import re
import shutil
import struct
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


# Real PE files from Debian packages with layouts that a single forward pass over sections in file order
# cannot page-hash: win32-loader.exe (NSIS: .reloc lies inside .rsrc) and systemd-bootx64.efi
# (SizeOfHeaders 1024 > SectionAlignment 512: osslsigncode refuses it, relic hashes 4 KiB pages).
DEBIAN_PES = {"win32-loader.exe": ("win32-loader", "usr/share/win32/win32-loader.exe"),
              "systemd-bootx64.efi": ("systemd-boot-efi", "usr/lib/systemd/boot/efi/systemd-bootx64.efi")}


def debian_pe(name: str) -> bytes:
    """The file from its Debian package, fetched once per build tree with apt-get download."""
    package, member = DEBIAN_PES[name]
    cache = harness.BUILD / "tests" / "debian-pe"
    out = cache / name
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True)
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if p.returncode != 0 or not debs:
            raise unittest.SkipTest(f"apt-get download {package} failed: {p.stderr.decode(errors='replace')}")
        harness.run(["dpkg-deb", "-x", str(debs[-1]), str(cache / package)])
        shutil.copyfile(cache / package / member, out)
    return out.read_bytes()


def der_len(b: bytes, i: int):
    """(length, offset of the content) of the DER element whose length octets start at i."""
    n = b[i]
    if n < 0x80:
        return n, i + 1
    k = n & 0x7F
    return int.from_bytes(b[i + 1:i + 1 + k], "big"), i + 1 + k


def embedded_page_hashes(signed: bytes) -> tuple:
    """(algorithm, serialized page hashes) from the SpcPeImageData moniker of the signature (§9.3)."""
    pe = struct.unpack_from("<I", signed, 0x3C)[0]
    plus = struct.unpack_from("<H", signed, pe + 24)[0] == 0x20B
    va, size = struct.unpack_from("<II", signed, pe + 24 + (144 if plus else 128))
    pkcs7 = signed[va + 8:va + size]
    for alg, oid in (("sha256", bytes.fromhex("060a2b0601040182370203 02".replace(" ", ""))),
                     ("sha1", bytes.fromhex("060a2b060104018237020301"))):
        at = pkcs7.find(oid)
        if at < 0:
            continue
        i = at + len(oid)
        assert pkcs7[i] == 0x31, "page hash value is not a SET"
        _, i = der_len(pkcs7, i + 1)
        assert pkcs7[i] == 0x04, "page hash SET holds no OCTET STRING"
        n, i = der_len(pkcs7, i + 1)
        return alg, pkcs7[i:i + n]
    return None, b""


def expected_page_hashes(pe_bytes: bytes, alg: str) -> bytes:
    """Page hashes written from the layout description (osslsigncode's pages of SectionAlignment when the
    headers fit in one, else relic's 4 KiB pages): the header page without CheckSum and the certificate
    directory, then each section's pages in section-table order, then the end offset with a zero digest."""
    pe = struct.unpack_from("<I", pe_bytes, 0x3C)[0]
    nsec, optsize = struct.unpack_from("<H", pe_bytes, pe + 6)[0], struct.unpack_from("<H", pe_bytes, pe + 20)[0]
    opt = pe + 24
    plus = struct.unpack_from("<H", pe_bytes, opt)[0] == 0x20B
    salign, falign = struct.unpack_from("<II", pe_bytes, opt + 32)
    hdr = struct.unpack_from("<I", pe_bytes, opt + 60)[0]
    page = salign if 512 <= falign <= salign and hdr <= salign else 4096
    ck, cd = opt + 64, opt + (144 if plus else 128)
    h = hashlib.new(alg)
    h.update(pe_bytes[:ck] + pe_bytes[ck + 4:cd] + pe_bytes[cd + 8:hdr] + bytes(page - hdr))
    out = bytes(4) + h.digest()
    last = 0
    for i in range(nsec):
        size, ptr = struct.unpack_from("<II", pe_bytes, opt + optsize + 40 * i + 16)
        for off in range(0, size, page):
            chunk = pe_bytes[ptr + off:ptr + min(size, off + page)]
            out += struct.pack("<I", ptr + off) + hashlib.new(alg, chunk + bytes(page - len(chunk))).digest()
        if size:
            last = ptr + size
    return out + struct.pack("<I", last) + bytes(hashlib.new(alg).digest_size)


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

    def test_debian_files_with_page_hashes(self):
        for name in DEBIAN_PES:
            pe = debian_pe(name)
            for alg in ("sha256",):  # SHA-1 is refused by the default key policy
                with self.subTest(file=name):
                    st, _, body, signed = relic_client.sign_pe(self.daemon, "rsa2048", pe, filename=name,
                                                               page_hashes=True)
                    self.assertEqual(st, 200, body)
                    got_alg, got = embedded_page_hashes(signed)
                    self.assertEqual(got_alg, alg)
                    self.assertEqual(got.hex(), expected_page_hashes(pe, alg).hex())
                    path = self.write(f"{alg}-{name}", signed)
                    if name.endswith(".exe"):
                        # osslsigncode recomputes the page hashes and the image digest
                        out = self.check_signed(f"{alg}-{name}", signed, expect_page_hashes=True)
                        self.assertNotIn("MISMATCH", out)
                    else:
                        # osslsigncode cannot page-hash 1 KiB of headers in 512-byte pages; sbverify checks
                        # the image digest and the signature, the page hashes are compared above
                        if not shutil.which("sbverify"):
                            self.skipTest("sbverify (sbsigntool) not installed")
                        p = harness.run(["sbverify", "--cert", str(self.st.keys["rsa2048"].certfile), str(path)],
                                        check=False)
                        self.assertEqual(p.returncode, 0, (p.stdout + p.stderr).decode(errors="replace"))

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
