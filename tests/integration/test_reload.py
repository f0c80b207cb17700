#!/usr/bin/python3
"""p11relayd reloads clients and key roles on SIGHUP without dropping connections: a real daemon,
SoftHSMv2 token and mutual TLS; connections held open (keep-alive) across the reload."""
import base64
import http.client
import json
import os
import signal
import socket
import tempfile
import time
import unittest
from pathlib import Path

import harness
from harness import Daemon, free_port, make_state, run

PKCS1_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420") + bytes(32)


class Reload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-reload-"))
        cls.st = make_state(cls.tmp)
        cls.b = cls.st.make_client("build-b")
        cls.c = cls.st.make_client("build-c")
        cls.metrics_port = free_port()

    @classmethod
    def tearDownClass(cls):
        harness.remove_tmp(cls.tmp)

    def config(self, clients) -> dict:
        cfg = self.st.daemon_config(clients=clients)
        cfg["server"]["idletimeout"] = 300  # the held connections must outlive the test's steps
        cfg["server"]["listenmetrics"] = f"127.0.0.1:{self.metrics_port}"
        return cfg

    def hangup(self, d: Daemon, expect: str) -> None:
        before = d.log().count(expect)
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while d.log().count(expect) == before:
            self.assertLess(time.monotonic(), deadline, d.log())
            time.sleep(0.05)

    def status(self, d: Daemon, conn, key: str) -> int:
        """Signs over the held connection `conn`; the HTTP status."""
        rsa = key.startswith("rsa")
        body = {"mechanism": "CKM_RSA_PKCS" if rsa else "CKM_ECDSA",
                "input": base64.b64encode(PKCS1_SHA256 if rsa else bytes(32)).decode()}
        return d.request("POST", f"/v1/keys/{key}/sign", body, conn=conn)[0]

    def metric(self, result: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.close()
        return int(body.split(f'p11relay_config_reload_total{{result="{result}"}} ', 1)[1].split()[0])

    def test_clients_and_roles_change_under_held_connections(self):
        st = self.st
        st.write_config(config=self.config([st.client, self.b]))
        d = Daemon(st).start()
        self.addCleanup(d.stop)
        demo, b = d.connect(), d.connect(self.b)
        self.addCleanup(demo.close)
        self.addCleanup(b.close)
        self.assertEqual(self.status(d, demo, "rsa2048"), 200)
        self.assertEqual(self.status(d, demo, "ec256"), 200)
        self.assertEqual(self.status(d, b, "rsa2048"), 200)
        self.assertEqual(d.request("GET", "/v1/keys", client=self.c)[0], 401)
        audit_before = st.audit_file.read_bytes()
        held = demo.sock

        # Remove client b, take ec256 away from the signers role, add client c.
        cfg = self.config([st.client, self.c])
        cfg["keys"]["ec256"]["roles"] = ["nobody"]
        st.write_config(config=cfg)
        self.hangup(d, "config reloaded")
        self.assertEqual(self.status(d, demo, "rsa2048"), 200)
        self.assertEqual(self.status(d, demo, "ec256"), 403)
        self.assertEqual(self.status(d, b, "rsa2048"), 401)
        self.assertEqual(d.sign("rsa2048", "CKM_RSA_PKCS", PKCS1_SHA256, client=self.c)[0], 200)
        status, _, body = d.request("GET", "/list_keys", conn=demo)
        self.assertEqual((status, json.loads(body)), (200, ["ec384", "rsa2048", "rsapss"]))
        self.assertIs(demo.sock, held)  # the same connection, never re-opened (b's may close after its 401)

        # An invalid file is refused whole: the previous reload stays in force.
        st.config.write_text(st.config.read_text() + "bogus: 1\n")
        self.hangup(d, "config reload refused")
        self.assertIn("unknown key 'bogus'", d.log())
        self.assertEqual(self.status(d, demo, "rsa2048"), 200)
        self.assertEqual(self.status(d, demo, "ec256"), 403)
        self.assertEqual(self.status(d, b, "rsa2048"), 401)
        self.assertEqual(d.sign("rsa2048", "CKM_RSA_PKCS", PKCS1_SHA256, client=self.c)[0], 200)

        # A reload runs the start-up checks too: a config file others may write is refused, not obeyed.
        good = st.config.read_text()
        st.write_config(config=self.config([st.client]))   # would remove client c
        os.chmod(st.config, 0o666)
        self.hangup(d, "config reload refused")
        self.assertIn("writable", d.log().rsplit("config reload refused", 1)[1].splitlines()[0])
        self.assertEqual(d.sign("rsa2048", "CKM_RSA_PKCS", PKCS1_SHA256, client=self.c)[0], 200)
        st.config.write_text(good)
        os.chmod(st.config, 0o600)

        # What only a restart applies is reported, the rest applied.
        cfg = self.config([st.client, self.b, self.c])
        cfg["tokens"][st.token_name]["numworkers"] = 2
        cfg["server"]["readtimeout"] = 300
        st.write_config(config=cfg)
        self.hangup(d, "config reloaded")
        log = d.log()
        self.assertIn("tokens.demo changed: needs a restart", log)
        self.assertIn("server changed: needs a restart", log)
        self.assertEqual(self.status(d, demo, "ec256"), 200)
        self.assertEqual(self.status(d, b, "rsa2048"), 200)
        self.assertIs(demo.sock, held)
        self.assertEqual((self.metric("ok"), self.metric("rejected")), (2, 2))

        # The audit log was appended to, never reopened from scratch, and its chain is intact.
        audit = st.audit_file.read_bytes()
        self.assertTrue(audit.startswith(audit_before) and len(audit) > len(audit_before))
        run([harness.DAEMON, "audit-verify", str(st.audit_file)])

    def test_notify_reloading_then_ready(self):
        """sd_notify(3) as systemd's Type=notify sees it: READY=1, then RELOADING=1 (with MONOTONIC_USEC)
        and READY=1 again around a reload, also around a refused one."""
        st = self.st
        st.write_config(config=self.config([st.client]))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(str(self.tmp / "notify.sock"))
        sock.settimeout(20)
        d = Daemon(st, env=st.env({**os.environ, "NOTIFY_SOCKET": str(self.tmp / "notify.sock")}))
        d.start()
        self.addCleanup(d.stop)

        def next_state() -> str:  # skips STATUS=/WATCHDOG= updates from the health loop
            while True:
                msg = sock.recv(4096).decode()
                if "READY=1" in msg or "RELOADING=1" in msg:
                    return msg

        self.assertEqual(next_state(), "READY=1")
        d.proc.send_signal(signal.SIGHUP)
        self.assertRegex(next_state(), r"^RELOADING=1\nMONOTONIC_USEC=\d+$")
        self.assertEqual(next_state(), "READY=1")
        st.config.write_text("not: [valid\n")
        d.proc.send_signal(signal.SIGHUP)
        self.assertRegex(next_state(), r"^RELOADING=1\n")
        self.assertEqual(next_state(), "READY=1")
        self.assertEqual(d.request("GET", "/v1/keys")[0], 200)


if __name__ == "__main__":
    harness.main()
