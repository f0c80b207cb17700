#!/usr/bin/python3
"""relic clients signing MSI files on the server (`relic remote sign -T msi`): the client uploads the tar of the
MSI's streams (msi_tar.py, a reader independent of the daemon's), the daemon answers with the PKCS#7 signature,
osslsigncode attaches it to the MSI (with MsiDigitalSignatureEx when it was asked for) and verifies it. With and
without the extended signature, RSA and EC, server-side timestamps, compressed uploads, the audit record, and
hostile uploads answered 400."""
import json
import re
import shutil
import unittest

import harness
import msi_tar
import relic_client
from test_cli_msi import build_msi, WIXL

OSSLSIGNCODE = shutil.which("osslsigncode")


@unittest.skipUnless(OSSLSIGNCODE and WIXL, "osslsigncode or wixl not installed")
class RelicMsi(harness.TsaDaemonTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.msi = build_msi(cls.tmp / "msi")
        cls.upload = msi_tar.msi_to_tar(cls.msi.read_bytes())

    def attach_and_verify(self, name: str, sig: bytes, key: str, extended: bool) -> str:
        """osslsigncode puts the signature into the MSI and checks it: the digest it computes from the file must
        be the one the daemon signed."""
        p7 = self.tmp / f"{name}.p7"
        p7.write_bytes(sig)
        out = self.tmp / f"{name}.msi"
        cmd = [OSSLSIGNCODE, "attach-signature", "-sigin", str(p7), "-in", str(self.msi), "-out", str(out)]
        if extended:
            cmd.append("-add-msi-dse")
        p = harness.run(cmd + ["-CAfile", str(self.st.keys[key].certfile), "-TSA-CAfile", str(self.tsa.ca)],
                        check=False)
        text = (p.stdout + p.stderr).decode(errors="replace")
        self.assertEqual(p.returncode, 0, text)
        p = harness.run([OSSLSIGNCODE, "verify", "-in", str(out), "-CAfile", str(self.st.keys[key].certfile),
                         "-TSA-CAfile", str(self.tsa.ca)], check=False)
        text = (p.stdout + p.stderr).decode(errors="replace")
        self.assertEqual(p.returncode, 0, text)
        cur = re.search(r"Current DigitalSignature\s*:\s*([0-9A-F]+)", text)
        calc = re.search(r"Calculated DigitalSignature\s*:\s*([0-9A-F]+)", text)
        self.assertTrue(cur and calc and cur.group(1) == calc.group(1), text)
        self.assertEqual("MsiDigitalSignatureEx stream doesn't exist" not in text, extended, text)
        return text

    def test_rsa_and_ec_with_and_without_the_extended_signature(self):
        for key in ("ec256", "rsa2048"):
            for extended in (True, False):
                with self.subTest(key=key, extended=extended):
                    st, h, body = relic_client.sign_msi(self.daemon, key, self.upload, extended=extended)
                    self.assertEqual(st, 200, body)
                    self.assertEqual(h["content-type"], "application/pkcs7-mime")
                    text = self.attach_and_verify(f"{key}-{extended}", body, key, extended)
                    # rsa2048 timestamps on the server (timestamp: true in its key config)
                    self.assertEqual("Timestamp is not available" in text, key != "rsa2048", text)

    def test_compressed_upload_and_audit_record(self):
        st, _, body = relic_client.sign_msi(self.daemon, "ec256", self.upload, encoding="gzip", filename="audited.msi")
        self.assertEqual(st, 200, body)
        self.attach_and_verify("gzip", body, "ec256", True)
        rec = json.loads(self.st.audit_file.read_text().splitlines()[-1])
        self.assertEqual(rec["sig.type"], "msi")
        self.assertEqual(rec["client.filename"], "audited.msi")
        self.assertEqual(rec["content-type"], "application/pkcs7-mime")
        self.assertEqual(rec["perf.size.in"], len(self.upload))
        self.assertTrue(rec["msi.extended"])

    def test_hostile_uploads_are_a_4xx_problem(self):
        for name, body in (("truncated", self.upload[:1000]), ("not a tar", b"\x01" * 3000), ("empty", b""),
                           ("bad size", b"x" * 124 + b"99999999999\0" + bytes(376))):
            with self.subTest(name=name):
                st, h, data = relic_client.sign_msi(self.daemon, "ec256", body)
                self.assertEqual(st, 400, data)
                self.assertIn("not an MSI upload", json.loads(data)["detail"])


if __name__ == "__main__":
    harness.main()
