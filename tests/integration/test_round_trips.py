#!/usr/bin/python3
"""Round trips per operation, counted instead of timed: a real p11relayd (SoftHSMv2, mutual TLS) counts the
TCP connections it accepted, its TLS handshakes (full or resumed) and the requests it answered; each test
runs one client operation and asserts those counts. Over a WAN every extra connection, handshake or request is
a round trip the user waits for (bench/run --wan measures the seconds), so a regression fails here, not on a
stopwatch.

Also: a reconnect after the daemon closed an idle connection resumes the TLS 1.3 session (no certificate
exchange), and a resumed session still goes through the identity check of the current config."""
import os
import shutil
import signal
import subprocess
import time
import unittest
import http.client
from pathlib import Path

import harness
import shim_util
from harness import DaemonTest


def metrics(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {"connections": 0, "full": 0, "resumed": 0, "requests": 0}
    for line in text.splitlines():
        if line.startswith("p11relay_connections_accepted_total "):
            out["connections"] = int(line.split()[-1])
        elif line.startswith('p11relay_tls_handshakes_total{resumed="false"}'):
            out["full"] = int(line.split()[-1])
        elif line.startswith('p11relay_tls_handshakes_total{resumed="true"}'):
            out["resumed"] = int(line.split()[-1])
        elif line.startswith("p11relay_requests_total{"):
            out["requests"] += int(line.split()[-1])
    return out


class RoundTrips(DaemonTest):
    metrics_port = harness.free_port()
    # idletimeout 1 s: the reconnect tests wait for the daemon to close an idle keep-alive connection
    config_overrides = {"server": {"listenmetrics": f"127.0.0.1:{metrics_port}", "idletimeout": 1}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.client_config = shim_util.write_client_config(cls.tmp / "client.yml", cls.st, [cls.daemon.url])
        cls.env = harness.foreign_env(dict(os.environ))
        cls.env["P11RELAY_CONFIG"] = str(cls.client_config)
        cls.env.pop("SOFTHSM2_CONF", None)

    def counted(self, fn) -> dict:
        """Runs fn() and returns how much each counter grew (after the daemon closed everything fn left)."""
        before = metrics(self.metrics_port)
        fn()
        after = metrics(self.metrics_port)
        return {k: after[k] - before[k] for k in after}

    def run_ok(self, cmd, **kw) -> subprocess.CompletedProcess:
        p = subprocess.run(cmd, env=self.env, capture_output=True, timeout=120, **kw)
        self.assertEqual(p.returncode, 0, f"{cmd}: {p.stdout.decode(errors='replace')}"
                                          f"{p.stderr.decode(errors='replace')}\n{self.daemon.log()[-2000:]}")
        return p

    def test_cli_sign_of_a_pe_is_one_connection_one_handshake_two_requests(self):
        cc = shutil.which("x86_64-w64-mingw32-gcc")
        if not cc or not Path(harness.CLI).exists():
            self.skipTest("needs x86_64-w64-mingw32-gcc and the p11relay CLI")
        src = self.tmp / "small.c"
        src.write_text("int main(void) { return 0; }\n")
        exe = self.tmp / "small.exe"
        subprocess.run([cc, "-O1", "-s", "-o", str(exe), str(src)], check=True)
        out = self.tmp / "small-signed.exe"
        d = self.counted(lambda: self.run_ok([harness.CLI, "-c", str(self.client_config), "sign", "-k", "rsa2048",
                                              "-f", str(exe), "-o", str(out)]))
        # the key's certificate chain (GET /v1/keys/rsa2048) and the signature (POST .../sign)
        self.assertEqual((d["connections"], d["full"], d["resumed"], d["requests"]), (1, 1, 0, 2), d)

    def test_pkcs11_tool_signature_is_one_connection_two_requests(self):
        if not shutil.which("pkcs11-tool"):
            self.skipTest("pkcs11-tool (opensc) not installed")
        data = self.tmp / "data.bin"
        data.write_bytes(b"x" * 100)
        d = self.counted(lambda: self.run_ok(
            ["pkcs11-tool", "--module", harness.SHIM, "--token-label", shim_util.TOKEN_LABEL, "--login", "--pin",
             shim_util.PIN, "--sign", "--id", "02", "-m", "ECDSA-SHA256", "-i", str(data),
             "-o", str(self.tmp / "sig.bin")]))
        # the key list (GET /v1/keys, once per process) and the signature; C_SignInit is local
        self.assertEqual((d["connections"], d["full"], d["requests"]), (1, 1, 2), d)

    def test_later_signatures_in_one_process_reuse_the_connection(self):
        n = 25
        d = self.counted(lambda: self.run_ok([shim_util.DRIVER, harness.SHIM, shim_util.PIN, "ec256",
                                              "ECDSA_SHA256", "loop", str(n)]))
        self.assertEqual((d["connections"], d["full"], d["requests"]), (1, 1, n + 1), d)

    def idle_then_sign(self, between=None) -> subprocess.CompletedProcess:
        """shim-driver signs after the daemon closed its idle connection (idletimeout 1 s)."""
        p = subprocess.Popen([shim_util.DRIVER, harness.SHIM, shim_util.PIN, "ec256", "ECDSA_SHA256", "restart"],
                             env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = p.stdout.readline()
            self.assertIn(b"READY", line, p.stderr.read1(4000) if p.poll() is not None else b"")
            time.sleep(2.5)   # > idletimeout: the daemon closes the keep-alive connection
            if between:
                between()
            out, err = p.communicate(b"go\n", timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)

    def test_reconnect_after_an_idle_close_resumes_the_tls_session(self):
        d = self.counted(self.idle_then_sign)
        self.assertEqual(d["connections"], 2, d)
        self.assertEqual((d["full"], d["resumed"]), (1, 1), d)


class ResumedSessionIdentity(DaemonTest):
    """A resumed session carries the client certificate; the daemon looks the identity up in the config it
    runs now, so a client removed by a reload gets 401 on its resumed connection."""
    metrics_port = harness.free_port()
    config_overrides = {"server": {"listenmetrics": f"127.0.0.1:{metrics_port}", "idletimeout": 1}}

    def test_removed_client_is_refused_on_a_resumed_session(self):
        cfg_path = self.tmp / "client.yml"
        shim_util.write_client_config(cfg_path, self.st, [self.daemon.url], extra_remote={"retries": 0})
        env = harness.foreign_env(dict(os.environ))
        env["P11RELAY_CONFIG"] = str(cfg_path)
        env.pop("SOFTHSM2_CONF", None)
        p = subprocess.Popen([shim_util.DRIVER, harness.SHIM, shim_util.PIN, "ec256", "ECDSA_SHA256", "restart"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.assertIn(b"READY", p.stdout.readline())
            cfg = self.st.daemon_config()
            harness.deep_update(cfg, self.config_overrides)
            cfg["clients"] = {k: v for k, v in cfg["clients"].items() if v.get("nickname") != "demo"}
            self.st.write_config(config=cfg)
            before = self.daemon.log().count("reload")
            self.daemon.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while self.daemon.log().count("reload") == before:
                self.assertLess(time.monotonic(), deadline, self.daemon.log())
                time.sleep(0.05)
            time.sleep(2.5)   # the idle connection is closed; the next one resumes
            out, err = p.communicate(b"go\n", timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertNotEqual(p.returncode, 0, out + err)
        m = metrics(self.metrics_port)
        self.assertGreaterEqual(m["resumed"], 1, m)
        self.assertIn("unrecognized client certificate", self.daemon.log())
        self.assertIn("client certificate not recognized", (self.tmp / "shim.log").read_text(errors="replace"))


if __name__ == "__main__":
    harness.main()
