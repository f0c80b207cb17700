#!/usr/bin/python3
"""The audit invariant (docs/reliability.md "No signature without an audit line"): the real p11relayd in front
of tests/faulty-pkcs11, which appends one line per C_Sign that made a signature to <control>.signs. Thousands of
normal and hostile requests; afterwards C_Sign calls == audit lines, every signature a client received verifies
and its request's filename is in the audit log, every hostile request got a 4xx/5xx answer (never a dropped
connection), and the daemon's log has no forged line and no NUL byte. Needs root (as test_faults.py)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import threading
import time
import unittest
from pathlib import Path

import harness
from test_faults import FaultsBase, RsaVerifier, SHA256_DI, measure, sign_body

NORMAL_PER_THREAD = 400
HOSTILE_ROUNDS = 60
THREADS = 4
SALT_WRAP = 2 ** 64 - 32


def raw_exchange(daemon, request: bytes, timeout: float = 10.0):
    """Sends raw bytes over mutual TLS; returns the status of the answer, or None when the connection was closed
    without one."""
    ctx = daemon.context()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(request)
            data = b""
            try:
                while b"\r\n" not in data:
                    chunk = t.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except (ConnectionResetError, ssl.SSLError, socket.timeout):
                pass
    if not data.startswith(b"HTTP/1."):
        return None
    return int(data.split()[1])


def relic_request(query: str, body: bytes) -> bytes:
    return (f"POST /sign?{query} HTTP/1.1\r\nHost: x\r\nUser-Agent: relic/8.2.0\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class AuditInvariant(FaultsBase):
    token_timeout = 30

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.signs = cls.control.with_name(cls.control.name + ".signs")
        try:
            from test_relic_pecoff import tiny_pe
            cls.pe = tiny_pe(cls.tmp, "x86_64")
        except unittest.SkipTest:
            cls.pe = b"MZ" + b"\0" * 510  # not a PE: the relic requests then fail before signing either way

    def hostile(self):
        """(name, raw request) pairs a hostile registered client sends; each must be answered with >= 400."""
        pe = self.pe
        di = SHA256_DI + hashlib.sha256(b"hostile").digest()
        pss = {"mechanism": "CKM_RSA_PKCS_PSS", "input": base64.b64encode(hashlib.sha256(b"x").digest()).decode(),
               "params": {"hash": "sha256", "mgf": "sha256", "salt_length": SALT_WRAP}}

        def relay(path: str, body: bytes) -> bytes:
            return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body

        return [
            ("relic filename %FF", relic_request("digest=SHA-256&filename=%FF.exe&key=rsa2048&sigtype=pe-coff", pe)),
            ("relic filename overlong", relic_request("filename=%C0%AF.exe&key=rsa2048&sigtype=pe-coff", pe)),
            ("relic key %0A", relic_request("filename=a.exe&key=rsa2048%0AINFO+forged&sigtype=pe-coff", pe)),
            ("relic key %00", relic_request("filename=a.exe&key=rsa2048%00&sigtype=pe-coff", pe)),
            ("relic filename %0A", relic_request("filename=a%0Aforged.exe&key=rsa2048&sigtype=pe-coff", pe)),
            ("relay key %C0%AF", relay("/v1/keys/%C0%AF/sign", sign_body("CKM_RSA_PKCS", di))),
            ("GET /v1/%FF", b"GET /v1/%FF HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("GET /keys/%FF", b"GET /keys/%FF HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("relay raw 0xFF in JSON", relay("/v1/keys/rsa2048/sign",
                                             sign_body("CKM_RSA_PKCS", di, "x").replace(b'"x"', b'"\xff.exe"'))),
            ("relay lone surrogate", relay("/v1/keys/rsa2048/sign",
                                           sign_body("CKM_RSA_PKCS", di, "x").replace(b'"x"', b'"\\ud800"'))),
            ("relay filename newline", relay("/v1/keys/rsa2048/sign", sign_body("CKM_RSA_PKCS", di, "a\nforged"))),
            ("relay filename 900 KB", relay("/v1/keys/rsa2048/sign", sign_body("CKM_RSA_PKCS", di, "a" * 900_000))),
            ("relay PSS salt 2^64-32", relay("/v1/keys/rsa2048/sign", json.dumps(pss).encode())),
            ("HTTP/0.9", b"GET /\r\n\r\n"),
            ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
        ]

    def normal_worker(self, tid: int, verifier: RsaVerifier, results: list, errors: list) -> None:
        conn = self.daemon.connect()
        try:
            for i in range(NORMAL_PER_THREAD):
                name = f"normal-{tid}-{i}.bin"
                digest = hashlib.sha256(name.encode()).digest()
                body = sign_body("CKM_RSA_PKCS", SHA256_DI + digest, name)
                status, _, data = self.daemon.request("POST", "/v1/keys/rsa2048/sign", body, conn=conn)
                if status != 200:
                    errors.append((name, status, data[:200]))
                    continue
                sig = base64.b64decode(json.loads(data)["signature"])
                results.append((name, verifier.verify(digest, sig)))
        finally:
            conn.close()

    def hostile_worker(self, answers: list) -> None:
        cases = self.hostile()
        for _ in range(HOSTILE_ROUNDS // 2):
            for name, req in cases:
                answers.append((name, raw_exchange(self.daemon, req)))

    def test_c_sign_calls_equal_audit_lines_under_hostile_load(self):
        verifier = RsaVerifier(self.st.keys["rsa2048"].certfile)
        results, errors, answers = [], [], []
        threads = [threading.Thread(target=self.normal_worker, args=(t, verifier, results, errors))
                   for t in range(THREADS)]
        threads += [threading.Thread(target=self.hostile_worker, args=(answers,)) for _ in range(2)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        self.assertEqual(errors, [])
        self.assertEqual(len(results), THREADS * NORMAL_PER_THREAD)
        self.assertTrue(all(ok for _, ok in results), "a returned signature does not verify")
        by_case = {}
        for name, status in answers:
            by_case.setdefault(name, set()).add(status)
        for name, statuses in by_case.items():
            self.assertTrue(all(s is not None and s >= 400 for s in statuses), f"{name}: answered {statuses}")
        self.assertEqual(by_case["relic filename %FF"], {400})
        self.assertEqual(by_case["relay PSS salt 2^64-32"], {400})
        self.assertEqual(by_case["HTTP/0.9"], {505})
        self.assertEqual(by_case["HTTP/9.9"], {505})

        audit_lines = [json.loads(ln) for ln in self.st.audit_file.read_text().splitlines() if ln]
        c_sign = len(self.signs.read_text().splitlines()) if self.signs.exists() else 0
        measure("audit invariant requests", f"{len(results)} normal + {len(answers)} hostile in {elapsed:.1f} s")
        measure("audit invariant C_Sign calls / audit lines", f"{c_sign} / {len(audit_lines)}")
        self.assertEqual(c_sign, len(audit_lines), "a signature was made without an audit line (or the reverse)")
        audited = {rec.get("client.filename") for rec in audit_lines}
        missing = [name for name, _ in results if name not in audited]
        self.assertEqual(missing, [], "a signature was returned whose request has no audit line")
        self.assertTrue(all(len(json.dumps(rec)) < 8192 for rec in audit_lines))
        r = harness.run([harness.DAEMON, "audit-verify", str(self.st.audit_file)], check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        log = self.daemon.log_path.read_bytes()
        self.assertNotIn(b"\0", log)
        self.assertFalse([ln for ln in log.splitlines() if ln.startswith((b"INFO forged", b"forged"))])


if __name__ == "__main__":
    harness.main()
