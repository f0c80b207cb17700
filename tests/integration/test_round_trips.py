#!/usr/bin/python3
"""Round trips per operation, counted instead of timed: a real p11relayd (SoftHSMv2, mutual TLS) counts the
TCP connections it accepted, its TLS handshakes (full or resumed) and the requests it answered; each test
runs one client operation and asserts those counts. Over a WAN every extra connection, handshake or request is
a round trip the user waits for (bench/run --wan measures the seconds), so a regression fails here, not on a
stopwatch.

A process that finds the key list the client kept on disk (remote.keylistcache) does not ask for it: one
request less. A kept list that is stale (the key's certificate changed) signs nothing with it: the daemon
answers 412 key-changed; the CLI asks again and signs for the key as it is, the PKCS#11 module answers
CKR_KEY_CHANGED and the next process starts from the daemon's list.

Also: a reconnect after the daemon closed an idle connection resumes the TLS 1.3 session (no certificate
exchange), and a resumed session still goes through the identity check of the current config."""
import base64
import hashlib
import json
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


def key_version(key: dict) -> str:
    """relay::key_version (docs/relay-api.md): SHA-256 over the SPKI and the certificates, each length-prefixed."""
    data = b""
    for part in [key["spki"], *key["certificates"]]:
        der = base64.b64decode(part)
        data += len(der).to_bytes(4, "big") + der
    return hashlib.sha256(data).hexdigest()


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
        cls.cache = cls.tmp / "cache"
        cls.env["XDG_CACHE_HOME"] = str(cls.cache)

    def setUp(self):
        shutil.rmtree(self.cache, ignore_errors=True)  # every case starts without a kept key list

    def kept_file(self) -> Path:
        files = list((self.cache / "p11relay").glob("keys-*.json"))
        self.assertEqual(len(files), 1, files)
        return files[0]

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

    def small_pe(self) -> Path:
        cc = shutil.which("x86_64-w64-mingw32-gcc")
        if not cc or not Path(harness.CLI).exists():
            self.skipTest("needs x86_64-w64-mingw32-gcc and the p11relay CLI")
        src = self.tmp / "small.c"
        src.write_text("int main(void) { return 0; }\n")
        exe = self.tmp / "small.exe"
        subprocess.run([cc, "-O1", "-s", "-o", str(exe), str(src)], check=True)
        return exe

    def cli_sign(self, exe: Path, key: str = "rsa2048") -> Path:
        out = self.tmp / "small-signed.exe"
        self.run_ok([harness.CLI, "-c", str(self.client_config), "sign", "-k", key, "-f", str(exe), "-o", str(out)])
        return out

    def test_cli_sign_of_a_pe_is_one_connection_one_handshake_two_requests_then_one(self):
        exe = self.small_pe()
        d = self.counted(lambda: self.cli_sign(exe))
        # the key list (GET /v1/keys: the key's certificate chain) and the signature (POST .../sign)
        self.assertEqual((d["connections"], d["full"], d["resumed"], d["requests"]), (1, 1, 0, 2), d)
        # the next process starts from the key list kept on disk: the signature is the only request
        d = self.counted(lambda: self.cli_sign(exe))
        self.assertEqual((d["connections"], d["full"] + d["resumed"], d["requests"]), (1, 1, 1), d)

    def make_kept_list_stale(self, key: str) -> None:
        """Gives `key` another key's certificates in the kept list, as if the daemon had renewed it since."""
        path = self.kept_file()
        fetched, body = path.read_text().split("\n", 1)
        doc = json.loads(body)
        by_name = {k["name"]: k for k in doc["keys"]}
        other = next(n for n in by_name if n != key)
        by_name[key]["certificates"] = by_name[other]["certificates"]
        by_name[key]["version"] = key_version(by_name[key])  # as the daemon would have said it then
        path.write_text(fetched + "\n" + json.dumps(doc))

    def test_a_kept_list_whose_versions_do_not_add_up_is_not_used(self):
        exe = self.small_pe()
        self.cli_sign(exe)
        path = self.kept_file()
        fetched, body = path.read_text().split("\n", 1)
        doc = json.loads(body)
        doc["keys"][0]["certificates"] = doc["keys"][1]["certificates"]  # "version" left as it was
        path.write_text(fetched + "\n" + json.dumps(doc))
        d = self.counted(lambda: self.cli_sign(exe))
        self.assertEqual(d["requests"], 2, d)  # the key list again, then the signature

    def test_cli_with_a_stale_kept_list_signs_for_the_key_as_it_is(self):
        exe = self.small_pe()
        self.cli_sign(exe)
        self.make_kept_list_stale("rsa2048")
        audit_before = len(self.st.audit_file.read_text().splitlines())
        d = self.counted(lambda: self.cli_sign(exe))
        # the refused signature (412), the key list, the signature
        self.assertEqual(d["requests"], 3, d)
        self.assertEqual(len(self.st.audit_file.read_text().splitlines()), audit_before + 1)  # one signature
        # osslsigncode verifies it with the daemon's certificate of rsa2048 as the only trust anchor: the
        # signature carries the key's certificate as it is now, not the one of the stale list
        if not shutil.which("osslsigncode"):
            return
        out = self.tmp / "small-signed.exe"
        v = subprocess.run(["osslsigncode", "verify", "-in", str(out), "-CAfile", str(self.st.keys["rsa2048"].certfile)],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertIn("Signature verification: ok", v.stdout + v.stderr)

    def pkcs11_tool_sign(self, check=True) -> subprocess.CompletedProcess:
        if not shutil.which("pkcs11-tool"):
            self.skipTest("pkcs11-tool (opensc) not installed")
        data = self.tmp / "data.bin"
        data.write_bytes(b"x" * 100)
        cmd = ["pkcs11-tool", "--module", harness.SHIM, "--token-label", shim_util.TOKEN_LABEL, "--login", "--pin",
               shim_util.PIN, "--sign", "--id", "02", "-m", "ECDSA-SHA256", "-i", str(data),
               "-o", str(self.tmp / "sig.bin")]
        if check:
            return self.run_ok(cmd)
        return subprocess.run(cmd, env=self.env, capture_output=True, timeout=120)

    def test_pkcs11_tool_signature_is_one_connection_two_requests_then_one(self):
        d = self.counted(self.pkcs11_tool_sign)
        # the key list (GET /v1/keys, once per process) and the signature; C_SignInit is local
        self.assertEqual((d["connections"], d["full"], d["requests"]), (1, 1, 2), d)
        d = self.counted(self.pkcs11_tool_sign)  # the next process starts from the kept key list
        self.assertEqual((d["connections"], d["full"] + d["resumed"], d["requests"]), (1, 1, 1), d)

    def test_osslsigncode_through_the_shim_with_a_kept_list_is_one_request(self):
        """libp11 (osslsigncode's engine) searches for private keys before it logs in: those are in the kept
        list, hidden until the login, and must not send the module to the daemon for a fresh list."""
        if not shutil.which("osslsigncode") or not Path(shim_util.ENGINE).exists():
            self.skipTest("needs osslsigncode and libengine-pkcs11-openssl")
        exe = self.small_pe()
        out = self.tmp / "ossl-signed.exe"

        def sign():
            out.unlink(missing_ok=True)
            self.run_ok(["osslsigncode", "sign", "-pkcs11engine", shim_util.ENGINE, "-pkcs11module", harness.SHIM,
                         "-key", f"pkcs11:token={shim_util.TOKEN_LABEL};object=rsa2048;type=private",
                         "-pass", shim_util.PIN, "-certs", str(self.st.keys["rsa2048"].certfile), "-h", "sha256",
                         "-in", str(exe), "-out", str(out)])
        self.assertEqual(self.counted(sign)["requests"], 2)
        d = self.counted(sign)
        self.assertEqual((d["connections"], d["requests"]), (1, 1), d)

    def test_shim_with_a_stale_kept_list_signs_nothing_and_the_next_process_is_right(self):
        self.pkcs11_tool_sign()
        self.make_kept_list_stale("ec256")
        audit_before = len(self.st.audit_file.read_text().splitlines())
        p = self.pkcs11_tool_sign(check=False)
        self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(b"run the program again", p.stderr)
        self.assertEqual(len(self.st.audit_file.read_text().splitlines()), audit_before)  # nothing signed
        self.assertFalse(list((self.cache / "p11relay").glob("keys-*.json")))  # the stale list is gone
        d = self.counted(self.pkcs11_tool_sign)
        self.assertEqual(d["requests"], 2, d)
        self.assertEqual(len(self.st.audit_file.read_text().splitlines()), audit_before + 1)

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
