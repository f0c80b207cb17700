#!/usr/bin/python3
"""relic clients signing PowerShell scripts on the server (`relic remote sign -T ps`): the client uploads the
script with its style, the daemon answers with relic's binary patch (the signature block appended, or an old
one replaced), the client applies it; osslsigncode verifies every result. UTF-8 and UTF-16LE, the three
comment styles, a server-side timestamp, the audit record, hostile uploads answered 400 with nothing signed."""
import json
import shutil
import unittest

import harness
import relic_client
from test_cli import osslsigncode_verify
from test_cli_script import SCRIPT, XML

OSSLSIGNCODE = shutil.which("osslsigncode")


@unittest.skipUnless(OSSLSIGNCODE, "osslsigncode not installed")
class RelicPs(harness.TsaDaemonTest):
    def check(self, name: str, signed: bytes, key: str) -> str:
        out = self.tmp / name
        out.write_bytes(signed)
        text = osslsigncode_verify(self, out, self.st.keys[key].certfile, tsa_ca=self.tsa.ca)[1]
        self.assertIn("Number of verified signatures: 1", text)
        return text

    def test_styles_and_encodings_verify(self):
        utf16 = b"\xff\xfe" + SCRIPT.encode("utf-16-le")
        for name, data, key, style in (("deploy.ps1", SCRIPT.encode(), "ec256", None),
                                       ("module.psm1", utf16, "rsa2048", None),
                                       ("types.ps1xml", XML.encode(), "ec256", None),
                                       ("upload.bin", SCRIPT.encode(), "ec256", ".ps1")):
            with self.subTest(name=name):
                st, h, body, signed = relic_client.sign_ps(self.daemon, key, data, filename=name, style=style)
                self.assertEqual(st, 200, body)
                self.assertEqual(h["content-type"], "application/x-binary-patch")
                self.assertTrue(signed.startswith(data))
                text = self.check(name if style is None else "upload.ps1", signed, key)
                # rsa2048 timestamps on the server (timestamp: true in its key config)
                self.assertEqual("Timestamp is not available" in text, key != "rsa2048", text)

    def test_resign_replaces_the_block_and_audit_record(self):
        _, _, _, first = relic_client.sign_ps(self.daemon, "ec256", SCRIPT.encode())
        st, _, body, again = relic_client.sign_ps(self.daemon, "rsa2048", first, filename="audited.ps1")
        self.assertEqual(st, 200, body)
        self.check("again.ps1", again, "rsa2048")
        self.assertEqual(again.count(b"SIG # Begin signature block"), 1)
        self.assertTrue(again.startswith(SCRIPT.encode()))
        rec = json.loads(self.st.audit_file.read_text().splitlines()[-1])
        self.assertEqual((rec["sig.type"], rec["client.filename"]), ("ps", "audited.ps1"))
        self.assertEqual(rec["content-type"], "application/x-binary-patch")
        self.assertEqual(rec["perf.size.in"], len(first))

    def test_hostile_uploads_are_a_4xx_problem(self):
        self.assert_upload_refused(
            (("bad.ps1", "not UTF-8 text", b"Write-Output \xff\xfe\xfd\r\n", "bad.ps1", None),
             ("odd.ps1", "even number of bytes", b"\xff\xfeW\x00r", "odd.ps1", None),
             ("a.exe", "unknown PowerShell signature style", SCRIPT.encode(), "a.exe", ""),
             ("a.ps1 .docx", "unknown PowerShell signature style", SCRIPT.encode(), "a.ps1", ".docx")),
            lambda data, name, style: relic_client.sign_ps(self.daemon, "ec256", data, filename=name, style=style))


if __name__ == "__main__":
    harness.main()
