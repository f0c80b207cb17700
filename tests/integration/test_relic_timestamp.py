#!/usr/bin/python3
"""Server-side RFC 3161 timestamps on relic pe-coff signatures (docs/relic-protocol.md §10): a local TSA
(`openssl ts` behind tsa_server.py), failover across timestamp.urls, the configured timeout, a 502 problem
and no signature when no TSA answers; osslsigncode verifies the countersignature."""
import json
import shutil
import socket
import time
import unittest

import harness
import relic_client
from test_relic_pecoff import osslsigncode_verify, tiny_pe


@unittest.skipUnless(shutil.which("osslsigncode"), "osslsigncode not installed")
class RelicTimestamps(harness.TsaDaemonTest):
    @classmethod
    def configure(cls, cfg):
        # A TSA that accepts the connection and never answers: only the timeout ends the wait.
        cls.silent = socket.socket()
        cls.silent.bind(("127.0.0.1", 0))
        cls.silent.listen(8)
        cls.silent_url = f"http://127.0.0.1:{cls.silent.getsockname()[1]}/"
        cls.closed_url = f"http://127.0.0.1:{harness.free_port()}/"
        cfg["timestamp"] = {
            # the first TSA refuses the connection: every signature fails over to the second
            "urls": [cls.closed_url, cls.tsa.url],
            "namedurls": {"dead": [cls.tsa.url + "fail", cls.silent_url, cls.closed_url]},
            "timeout": 2,
            "cacert": str(cls.tsa.ca),
        }
        cfg["keys"]["ec256"]["timestamper"] = "dead"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pe = tiny_pe(cls.tmp, "x86_64")

    @classmethod
    def tearDownClass(cls):
        cls.silent.close()
        super().tearDownClass()

    def audit_records(self):
        return [json.loads(line) for line in self.st.audit_file.read_text().splitlines()]

    def verify(self, name, signed, key):
        path = self.tmp / name
        path.write_bytes(signed)
        p = harness.run(["osslsigncode", "verify", "-in", str(path), "-CAfile", str(self.st.keys[key].certfile),
                         "-TSA-CAfile", str(self.tsa.ca)], check=False)
        return p.returncode, (p.stdout + p.stderr).decode(errors="replace")

    def test_signature_carries_a_verified_timestamp_after_failover(self):
        st, h, body, signed = relic_client.sign_pe(self.daemon, "rsa2048", self.pe, filename="ts.exe")
        self.assertEqual(st, 200, body)
        rc, out = self.verify("ts.exe", signed, "rsa2048")
        self.assertEqual(rc, 0, out)
        self.assertNotIn("Timestamp is not available", out)
        self.assertIn("CN=p11relay test TSA", out)  # the countersignature's signer, shown by osslsigncode
        self.assertIn("Timestamp Server Signature verification: ok", out)
        rec = self.audit_records()[-1]
        self.assertEqual(rec["client.filename"], "ts.exe")
        self.assertEqual(rec["sig.ts.url"], self.tsa.url)  # the refused first URL was skipped
        self.assertIn("p11relay test TSA", rec["sig.ts.timestamper"])
        self.assertRegex(rec["sig.ts.timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(rec["sig.ts.hash"], "SHA-256")

    def test_page_hashes_with_a_timestamp(self):
        st, _, body, signed = relic_client.sign_pe(self.daemon, "rsa2048", self.pe, page_hashes=True)
        self.assertEqual(st, 200, body)
        rc, out = self.verify("ts-ph.exe", signed, "rsa2048")
        self.assertEqual(rc, 0, out)
        self.assertIn("Page hash", out)
        self.assertIn("Timestamp Server Signature verification: ok", out)

    def test_no_timestamp_flag_is_relics_opt_out(self):
        st, _, body, signed = relic_client.sign_pe(self.daemon, "rsa2048", self.pe,
                                                   params={"no-timestamp": "true"})
        self.assertEqual(st, 200, body)
        rc, out = self.verify("nots.exe", signed, "rsa2048")
        self.assertEqual(rc, 0, out)
        self.assertNotIn("Timestamp Server Signature verification", out)
        self.assertNotIn("sig.ts.url", self.audit_records()[-1])

    def test_no_tsa_answers_is_a_502_and_no_signature(self):
        before = len(self.audit_records())
        t0 = time.monotonic()
        st, h, body, signed = relic_client.sign_pe(self.daemon, "ec256", self.pe, filename="dead.exe")
        elapsed = time.monotonic() - t0
        self.assertEqual(st, 502, body)
        self.assertEqual(h["content-type"], "application/problem+json")
        self.assertIsNone(signed)
        doc = json.loads(body)
        self.assertEqual(doc["type"], "https://relic.sas.com/timestamp-failed")
        # every URL is named with its own failure, the silent one after the configured 2 s timeout
        self.assertIn(self.tsa.url + "fail: timestamp server answered HTTP 500", doc["detail"])
        self.assertIn(self.silent_url + ": timestamp server timed out", doc["detail"])
        self.assertIn(self.closed_url + ": cannot connect", doc["detail"])
        self.assertGreaterEqual(elapsed, 2.0)
        self.assertLess(elapsed, 15.0)
        self.assertEqual(len(self.audit_records()), before)  # nothing signed, nothing audited
        self.assertIn("Timestamping failed", doc.get("title", ""))


if __name__ == "__main__":
    harness.main()
