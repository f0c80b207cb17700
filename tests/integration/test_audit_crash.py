#!/usr/bin/python3
"""The audit log across crashes (docs/reliability.md "Audit durability"), on the real p11relayd, SoftHSMv2 and
mutual TLS: SIGKILL during a burst of signatures from several clients, after which `audit-verify` accepts the
log and every signature a client received (verified in Python) has its line; and a torn last line (a write cut
short, as a power loss leaves it): `audit-verify` reports it and exits 0, the daemon cuts it at its next start
and the chain goes on."""
from __future__ import annotations

import base64
import hashlib
import json
import signal
import threading
import time
import unittest

import harness
from test_faults import RsaVerifier, SHA256_DI, sign_body

CLIENTS = 4


class AuditCrash(harness.StateTest):
    tmp_prefix = "p11relay-auditcrash-"

    def verify_log(self):
        p = harness.run([harness.DAEMON, "audit-verify", str(self.st.audit_file)], check=False)
        return p.returncode, p.stdout.decode()

    def audited_filenames(self) -> set:
        names = set()
        for line in self.st.audit_file.read_bytes().splitlines():
            rec = json.loads(line)
            if "client.filename" in rec:
                names.add(rec["client.filename"])
        return names

    def sign_one(self, daemon, name: str) -> int:
        digest = hashlib.sha256(name.encode()).digest()
        status, _, _ = daemon.request("POST", "/v1/keys/rsa2048/sign", sign_body("CKM_RSA_PKCS", SHA256_DI + digest, name))
        return status

    def client(self, daemon, tid: int, verifier: RsaVerifier, received: list, stop: threading.Event) -> None:
        conn = daemon.connect(timeout=10)
        i = 0
        while not stop.is_set():
            name = f"crash-{tid}-{i}.bin"
            i += 1
            digest = hashlib.sha256(name.encode()).digest()
            try:
                status, _, data = daemon.request("POST", "/v1/keys/rsa2048/sign",
                                                 sign_body("CKM_RSA_PKCS", SHA256_DI + digest, name), conn=conn)
            except (OSError, ConnectionError, harness.http.client.HTTPException):
                return  # the daemon is gone
            if status == 200:
                sig = base64.b64decode(json.loads(data)["signature"])
                received.append((name, verifier.verify(digest, sig)))

    def test_1_sigkill_during_a_burst_loses_no_returned_signature(self):
        verifier = RsaVerifier(self.st.keys["rsa2048"].certfile)
        daemon = harness.Daemon(self.st).start()
        received, stop = [], threading.Event()
        threads = [threading.Thread(target=self.client, args=(daemon, t, verifier, received, stop))
                   for t in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(received) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.proc.send_signal(signal.SIGKILL)  # mid-burst: the clients are still sending
        daemon.proc.wait()
        stop.set()
        for t in threads:
            t.join(30)
        self.assertGreaterEqual(len(received), 200)
        self.assertTrue(all(ok for _, ok in received), "a returned signature does not verify")
        rc, out = self.verify_log()
        self.assertEqual(rc, 0, out)
        self.assertNotIn("torn", out)  # a SIGKILL does not cut a write(2) to a regular file short
        missing = {n for n, _ in received} - self.audited_filenames()
        self.assertEqual(missing, set(), f"{len(missing)} returned signatures have no audit line")
        records = int(out.split(": ")[1].split()[0])
        # Restarted, the daemon continues the chain.
        daemon.start()
        try:
            self.assertEqual(self.sign_one(daemon, "after-restart.bin"), 200)
        finally:
            daemon.stop()
        rc, out = self.verify_log()
        self.assertEqual(rc, 0, out)
        self.assertIn(f"{records + 1} records, chain intact", out)
        print(f"SIGKILL after {len(received)} returned signatures from {CLIENTS} clients: {records} audit lines, "
              f"0 returned signatures missing, chain intact", flush=True)

    def test_2_torn_last_line_is_reported_then_cut_at_start(self):
        daemon = harness.Daemon(self.st).start()
        try:
            for i in range(3):
                self.assertEqual(self.sign_one(daemon, f"torn-{i}.bin"), 200)
        finally:
            daemon.stop()
        rc, out = self.verify_log()
        self.assertEqual(rc, 0, out)
        records = int(out.split(": ")[1].split()[0])
        data = self.st.audit_file.read_bytes()
        last = data[data.rindex(b"\n", 0, len(data) - 1) + 1:]
        self.st.audit_file.write_bytes(data[:len(data) - len(last) // 2])  # half of the last line is on disk
        rc, out = self.verify_log()
        self.assertEqual(rc, 0, out)
        self.assertIn(f"{records - 1} records, chain intact", out)
        self.assertIn(f"the last line is torn ({len(last) - len(last) // 2} bytes without a newline)", out)
        daemon.start()
        try:
            self.assertEqual(self.sign_one(daemon, "after-torn.bin"), 200)
        finally:
            daemon.stop()
        self.assertIn("cut a torn last line", daemon.log())
        rc, out = self.verify_log()
        self.assertEqual(rc, 0, out)
        self.assertIn(f"{records} records, chain intact", out)
        self.assertNotIn("torn", out)
        self.assertNotIn("torn-2.bin", self.audited_filenames())
        self.assertIn("after-torn.bin", self.audited_filenames())
        # A broken line that is not the last one is damage: the chain breaks (exit 1).
        data = self.st.audit_file.read_bytes()
        self.st.audit_file.write_bytes(data[:40] + data[41:])
        self.assertEqual(self.verify_log()[0], 1)


if __name__ == "__main__":
    harness.main()
