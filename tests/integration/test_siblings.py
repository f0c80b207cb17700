#!/usr/bin/python3
"""Siblings from GET /directory (docs/relic-protocol.md §2.2): a client configured with one daemon and a
directory URL learns the directory's siblings and fails over to one when its own daemon is down; without
the directory it cannot. `p11relay requests --url` reaches a given daemon instead of the configured ones."""
import json
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

import harness
from harness import Daemon, free_port, make_state


class Siblings(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-siblings-"))
        cls.st = make_state(cls.tmp)
        cls.a = Daemon(cls.st).start()
        # B: a second daemon on the same token, with its own audit log, listing A and itself as siblings.
        b_port = free_port()
        cfg = cls.st.daemon_config()
        cfg["auditfile"] = "audit-b.log"
        cfg["server"]["siblings"] = [cls.a.url, f"https://127.0.0.1:{b_port}/"]
        cls.b = Daemon(cls.st, config=cls.st.write_config(cls.st.config.parent / "b.yml", config=cfg))
        cls.b.start(port=b_port)
        cls.a_url = cls.a.url
        cls.a.stop()  # the configured daemon is down from here on
        c = cls.st.client
        base = (f"remote:\n  url: {cls.a_url}\n  certfile: {c.certfile}\n  keyfile: {c.keyfile}\n"
                f"  cacert: {cls.st.ca_cert}\n  retries: 2\n")
        cls.plain = cls.tmp / "plain.yml"
        cls.plain.write_text(base)
        cls.with_directory = cls.tmp / "directory.yml"
        cls.with_directory.write_text(base + f"  directoryurl: {cls.b.url}\n")

    @classmethod
    def tearDownClass(cls):
        cls.b.stop()
        harness.remove_tmp(cls.tmp)

    def cli(self, config, *args):
        env = dict(os.environ, HOME=str(self.tmp / "home"))
        env.pop("P11RELAY_CONFIG", None)
        return subprocess.run([harness.CLI, "-c", str(config), *args], env=env, capture_output=True, timeout=120)

    def sign(self, config):
        return self.cli(config, "sign-digest", "--key", "rsa2048", "--digest-alg", "sha256", "--hex", "ab" * 32,
                        "--format", "hex")

    def test_fails_over_to_a_sibling_learned_from_the_directory(self):
        audit_b = self.st.config.parent / "audit-b.log"
        before = len(audit_b.read_text().splitlines()) if audit_b.exists() else 0
        p = self.sign(self.with_directory)
        self.assertEqual(p.returncode, 0, p.stderr)
        sig = bytes.fromhex(p.stdout.decode().strip())
        self.assertEqual(len(sig), 256)
        records = [json.loads(line) for line in audit_b.read_text().splitlines()]
        self.assertEqual(len(records), before + 1)  # B signed it
        # the control: the same client without the directory has only the dead daemon
        p = self.sign(self.plain)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"127.0.0.1", p.stderr)

    def test_requests_url_reaches_the_given_daemon(self):
        # B answers (it keeps no held requests: no server.statedir), although the configured A is down
        p = self.cli(self.plain, "requests", "--url", self.b.url, "list", "--json")
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertIn(b"no held requests here (server.statedir is not set)", p.stderr)
        p = self.cli(self.plain, "requests", "list")  # without --url: only the dead daemon
        self.assertNotEqual(p.returncode, 4, p.stderr)
        self.assertNotIn(b"no held requests here", p.stderr)
        p = self.cli(self.plain, "requests", "--url", "http://127.0.0.1:1/", "list")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"not an https:// URL", p.stderr)


if __name__ == "__main__":
    harness.main()
