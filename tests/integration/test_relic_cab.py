#!/usr/bin/python3
"""relic clients signing cabinets on the server (`relic remote sign -T cab`): the client uploads the whole
cabinet, the daemon answers with relic's binary patch, the client applies it. gcab makes the cabinets (and
lists the signed ones); osslsigncode verifies every result. RSA and EC, a server-side timestamp, a compressed
upload, re-signing a signed cabinet, the audit record, hostile uploads answered 400 with nothing signed."""
import json
import os
import shutil
import subprocess
import unittest

import harness
import relic_client
from test_cli import osslsigncode_verify

OSSLSIGNCODE = shutil.which("osslsigncode")
GCAB = shutil.which("gcab")


@unittest.skipUnless(OSSLSIGNCODE and GCAB, "osslsigncode or gcab not installed")
class RelicCab(harness.TsaDaemonTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        src = cls.tmp / "payload"
        src.mkdir()
        cls.files = {"readme.txt": b"relic cabinet\r\n" * 40, "data.bin": os.urandom(150_000)}
        for name, data in cls.files.items():
            (src / name).write_bytes(data)
        cab = cls.tmp / "driver.cab"
        subprocess.run([GCAB, "-cz", str(cab), *sorted(cls.files)], cwd=src, check=True, timeout=60)
        cls.cab = cab.read_bytes()

    def check(self, name: str, signed: bytes, key: str) -> str:
        out = self.tmp / f"{name}.cab"
        out.write_bytes(signed)
        text = osslsigncode_verify(self, out, self.st.keys[key].certfile, tsa_ca=self.tsa.ca)[1]
        self.assertIn("Number of verified signatures: 1", text)
        listing = subprocess.run([GCAB, "-t", str(out)], capture_output=True, check=True, timeout=60).stdout.decode()
        self.assertEqual(sorted(listing.split()), sorted(self.files))
        return text

    def test_rsa_and_ec_signatures_verify(self):
        for key in ("ec256", "rsa2048"):
            with self.subTest(key=key):
                st, h, body, signed = relic_client.sign_cab(self.daemon, key, self.cab)
                self.assertEqual(st, 200, body)
                self.assertEqual(h["content-type"], "application/x-binary-patch")
                text = self.check(key, signed, key)
                # rsa2048 timestamps on the server (timestamp: true in its key config)
                self.assertEqual("Timestamp is not available" in text, key != "rsa2048", text)

    def test_resign_compressed_upload_and_audit_record(self):
        _, _, _, first = relic_client.sign_cab(self.daemon, "ec256", self.cab)
        st, _, body, again = relic_client.sign_cab(self.daemon, "rsa2048", first, encoding="gzip",
                                                   filename="audited.cab")
        self.assertEqual(st, 200, body)
        self.check("again", again, "rsa2048")
        sig_at = int.from_bytes(again[44:48], "little")
        self.assertEqual(again[:44] + again[52:sig_at], first[:44] + first[52:sig_at])  # one signature, replaced
        rec = json.loads(self.st.audit_file.read_text().splitlines()[-1])
        self.assertEqual(rec["sig.type"], "cab")
        self.assertEqual(rec["client.filename"], "audited.cab")
        self.assertEqual(rec["content-type"], "application/x-binary-patch")
        self.assertEqual(rec["perf.size.in"], len(first))

    def test_hostile_uploads_are_a_4xx_problem(self):
        prev = bytearray(self.cab)
        prev[30] |= 0x01
        self.assert_upload_refused(
            (("truncated", "cbCabinet says", self.cab[:1000]), ("not a cabinet", "no MSCF header", b"\x01" * 3000),
             ("empty", "no MSCF header", b""), ("multi-volume", "continues another cabinet", bytes(prev)),
             ("trailing bytes", "cbCabinet says", self.cab + b"junk")),
            lambda body: relic_client.sign_cab(self.daemon, "ec256", body))


if __name__ == "__main__":
    harness.main()
