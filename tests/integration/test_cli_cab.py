#!/usr/bin/python3
"""`p11relay sign` on cabinet files (.cab), end to end: a real p11relayd in front of a SoftHSMv2 token over real
mutual TLS. Cabinets are made with gcab (compressed and stored, one and several folders); osslsigncode verifies
every output and signs the same cabinet with the same token key (pkcs11 engine) to compare the digests; gcab
lists and extracts every signed cabinet (the offsets moved by the signature reserve must still be right)."""
import os
import re
import shutil
import subprocess
import unittest

import harness
from test_cli import CliTest, OSSLSIGNCODE, osslsigncode_verify

GCAB = shutil.which("gcab")


@unittest.skipUnless(OSSLSIGNCODE and GCAB, "osslsigncode or gcab not installed")
class Cabinets(CliTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.src = cls.tmp / "payload"
        cls.src.mkdir()
        cls.files = {"readme.txt": b"p11relay cabinet test\r\n" * 50, "data.bin": os.urandom(200_000),
                     "empty.txt": b""}
        for name, data in cls.files.items():
            (cls.src / name).write_bytes(data)
        cls.zipped = cls.make("zipped.cab", "-z")
        cls.stored = cls.make("stored.cab")

    @classmethod
    def make(cls, name, *flags):
        out = cls.tmp / name
        subprocess.run([GCAB, "-c", *flags, str(out), *sorted(cls.files)], cwd=cls.src, check=True, timeout=60)
        return out

    def verify(self, path, key, **kw):
        return osslsigncode_verify(self, path, self.cert(key), **kw)[1]

    def extracts_the_same(self, cab):
        listing = subprocess.run([GCAB, "-t", str(cab)], capture_output=True, check=True, timeout=60).stdout.decode()
        self.assertEqual(sorted(listing.split()), sorted(self.files))
        out = self.tmp / ("x-" + cab.name)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        subprocess.run([GCAB, "-x", "-C", str(out), str(cab)], check=True, timeout=60, capture_output=True)
        for name, data in self.files.items():
            self.assertEqual((out / name).read_bytes(), data, name)

    @staticmethod
    def digest_of(out: str) -> str:
        return re.search(r"Current message digest\s*:\s*([0-9A-Fa-f]+)", out).group(1).lower()

    def test_sign_compressed_and_stored_cabinets_verified_and_extractable(self):
        for src, key, alg in ((self.zipped, "rsa2048", "sha256"), (self.stored, "ec256", "sha384")):
            with self.subTest(src=src.name, key=key):
                before = src.read_bytes()
                out = self.tmp / f"signed-{key}.cab"
                p = self.cli("-v", "sign", "--key", key, "--file", src, "--output", out, "--digest", alg,
                             "--description", "p11relay test", "--url", "https://example.org/")
                self.assertIn(f"cabinet digest: {alg} ".encode(), p.stderr)
                self.assertIn("Number of verified signatures: 1", self.verify(out, key))
                self.extracts_the_same(out)
                v = self.cli("verify", "--file", out, "--cafile", self.cert(key), config=False).stdout.decode()
                self.assertIn("signature (primary): OK", v)
                self.assertIn("type:        cabinet", v)
                self.assertIn(f"digest:      {alg} ", v)
                self.assertEqual(src.read_bytes(), before, "the input was modified")
                data = out.read_bytes()
                sig_at, sig_len = int.from_bytes(data[44:48], "little"), int.from_bytes(data[48:52], "little")
                self.assertEqual((sig_at + sig_len, sig_len % 8), (len(data), 0))   # padded to 8, ends the file
                self.assertEqual(int.from_bytes(data[8:12], "little"), sig_at)      # cbCabinet: up to it

    def test_progress_bar_on_a_large_cabinet(self):
        d = self.tmp / "big-payload"
        d.mkdir(exist_ok=True)
        (d / "big.bin").write_bytes(os.urandom(6 << 20))
        big = self.tmp / "big.cab"
        subprocess.run([GCAB, "-c", str(big), "big.bin"], cwd=d, check=True, timeout=60)
        out = self.assert_progress_only_on_a_terminal(big)
        self.assertIn("Number of verified signatures: 1", self.verify(out, "ec256"))

    def test_same_digest_as_osslsigncode_with_the_token_key(self):
        ours, theirs = self.tmp / "ours.cab", self.tmp / "theirs.cab"
        self.cli("sign", "--key", "rsa2048", "--file", self.zipped, "--output", ours)
        self.osslsigncode_sign(self.zipped, theirs)
        self.assertEqual(self.digest_of(self.verify(ours, "rsa2048")), self.digest_of(self.verify(theirs, "rsa2048")))
        # the cabinets before their signatures are byte for byte the same, but for the signature's size
        a, b = ours.read_bytes(), theirs.read_bytes()
        sig_at = int.from_bytes(a[44:48], "little")
        self.assertEqual(sig_at, int.from_bytes(b[44:48], "little"))
        self.assertEqual(a[:48] + a[52:sig_at], b[:48] + b[52:sig_at])
        # and a cabinet osslsigncode signed is re-signed by p11relay (its signature replaced)
        again = self.tmp / "resigned-theirs.cab"
        p = self.cli("sign", "--key", "ec256", "--file", theirs, "--output", again)
        self.assertIn(b"signature replaced", p.stderr)
        self.assertIn("Number of verified signatures: 1", self.verify(again, "ec256"))
        self.extracts_the_same(again)
        # p11relay verify reads a cabinet osslsigncode signed
        self.assertIn(b"signature (primary): OK", self.cli("verify", "--file", theirs, config=False).stdout)

    def test_resign_in_place_replaces_the_signature_and_timestamps(self):
        f = self.tmp / "inplace.cab"
        shutil.copyfile(self.zipped, f)
        self.resign_timestamped(f)
        # one signature area, right after the cabinet (the unsigned one plus the 24-byte reserve), not two
        data = f.read_bytes()
        sig_at, sig_len = int.from_bytes(data[44:48], "little"), int.from_bytes(data[48:52], "little")
        self.assertEqual((sig_at, sig_at + sig_len), (len(self.zipped.read_bytes()) + 24, len(data)))
        self.extracts_the_same(f)
        self.assertEqual([x for x in os.listdir(self.tmp) if ".p11relay-" in x], [])

    def test_tampered_and_hostile_cabinets(self):
        out = self.tmp / "tamper.cab"
        self.cli("sign", "--key", "rsa2048", "--file", self.stored, "--output", out)
        data = bytearray(out.read_bytes())
        data[data.index(b"p11relay cabinet test")] ^= 0x20
        out.write_bytes(bytes(data))
        self.assertNotEqual(osslsigncode_verify(self, out, self.cert("rsa2048"), check=False)[0], 0)
        p = self.cli("verify", "--file", out, config=False, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"changed after signing", p.stderr)
        p = self.cli("verify", "--file", self.zipped, config=False, check=False)
        self.assertIn(b"the cabinet is not signed", p.stderr)
        good = self.zipped.read_bytes()
        bad_reserve = bytearray(good)
        bad_reserve[30] |= 0x04   # claims a reserve the header does not have
        cb = bytearray(good)
        cb[8:12] = (len(good) + 5).to_bytes(4, "little")
        prev = bytearray(good)
        prev[30] |= 0x01
        self.assert_sign_refused((("short.cab", good[:30], b"no MSCF header"),
                                  ("truncated.cab", good[:len(good) // 2], b"cbCabinet says"),
                                  ("reserve.cab", bytes(bad_reserve), b"not a signature reserve"),
                                  ("cbcabinet.cab", bytes(cb), b"cbCabinet says"),
                                  ("prev.cab", bytes(prev), b"continues another cabinet")))

    def test_append_nests_a_second_signature(self):
        f = self.tmp / "nested.cab"
        self.cli("sign", "--key", "rsa2048", "--file", self.zipped, "--output", f)
        p = self.cli("sign", "--key", "ec256", "--file", f, "--append", "--digest", "sha384")
        self.assertIn(b"nested", p.stderr)
        v = self.cli("verify", "--file", f, config=False).stdout.decode()
        self.assertIn("signature (primary): OK", v)
        self.assertIn("signature (nested 1): OK", v)
        self.assertIn("digest:      sha384 ", v)
        self.assertIn("Number of verified signatures: 2", osslsigncode_verify(self, f, self.cert("rsa2048"))[1])
        self.extracts_the_same(f)
        # --append on an unsigned cabinet just signs it
        g = self.tmp / "first.cab"
        self.cli("sign", "--key", "ec256", "--file", self.stored, "--output", g, "--append")
        self.assertIn("signature (primary): OK", self.cli("verify", "--file", g, config=False).stdout.decode())


if __name__ == "__main__":
    harness.main()
