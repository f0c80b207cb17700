#!/usr/bin/python3
"""scripts/demo as a user runs it twice: the first run provisions ./state and starts p11relayd; the second
keeps the p11relayd.yml the user edited (a client added by hand, as docs/quickstart.md §5 says) and says so."""
import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import harness
import provision
from harness import Daemon

ROOT = Path(__file__).resolve().parents[2]


class DemoKeepsConfig(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="p11relay-demo-"))
        self.addCleanup(harness.remove_tmp, self.tmp)
        self.port = harness.free_port()
        self.state = self.tmp / "state"
        self.env = {**os.environ, "P11RELAY_SKIP_APT": "1", "P11RELAY_STATE": str(self.state),
                    "P11RELAY_LISTEN": f"127.0.0.1:{self.port}",
                    "P11RELAY_BUILD_DIR": os.environ.get("P11RELAY_BUILD", str(ROOT / "build"))}

    def run_demo(self) -> str:
        """Start scripts/demo, wait for the daemon to listen, stop it; returns what the demo printed."""
        out = self.tmp / "demo.out"
        with open(out, "wb") as f:
            p = subprocess.Popen([str(ROOT / "scripts" / "demo")], env=self.env, stdout=f, stderr=f,
                                 stdin=subprocess.DEVNULL, cwd=self.tmp, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                self.assertIsNone(p.poll(), f"scripts/demo exited {p.returncode}:\n{out.read_text()}")
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                self.fail("the demo daemon did not listen:\n" + out.read_text())
            return out.read_text()
        finally:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)

    def test_second_run_keeps_an_edited_config(self):
        first = self.run_demo()
        self.assertNotIn("kept   ", first)
        st = provision.load(self.state, f"127.0.0.1:{self.port}")  # keep_configs off: same content as the demo's
        ops = st.make_client("ops", roles=["signers"])
        st.write_config(clients=[st.client, ops])
        edited = st.config.read_text()
        client_yml = st.client_config.read_text()

        second = self.run_demo()
        self.assertIn(f"kept              {st.config} (exists; delete it to have it generated again)", second)
        self.assertEqual(st.config.read_text(), edited)
        self.assertEqual(st.client_config.read_text(), client_yml)
        # The daemon of the second run serves the client added by hand.
        p = subprocess.Popen([str(ROOT / "scripts" / "demo")], env=self.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            d = Daemon(st)
            d.port = self.port
            deadline = time.monotonic() + 120
            while True:
                try:
                    status, _, body = d.request("GET", "/v1/keys", client=ops)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            self.assertEqual(status, 200, body)
            self.assertIn(b"rsa2048", body)
        finally:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


if __name__ == "__main__":
    harness.main()
