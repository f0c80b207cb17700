#!/usr/bin/python3
"""Operating p11relayd: RFC 7512 pkcs11: URIs in the config and socket activation, against a
real SoftHSMv2 token over real mutual TLS."""
import base64
import http.client
import json
import os
import re
import socket
import subprocess
import time

import harness
from harness import Daemon, StateTest, openssl_verify, run


class OpsTest(StateTest):
    tmp_prefix = "p11relay-ops-"


class UriConfig(OpsTest):
    """tokens.T.uri and keys.K.uri select the same token and keys as label/serial and label/id."""

    def uri_config(self, token_uri: str) -> dict:
        st = self.st
        cfg = st.daemon_config(keys=["rsa2048", "ec256"])
        cfg["tokens"][st.token_name] = {"provider": st.module, "uri": token_uri}
        rsa = cfg["keys"]["rsa2048"]
        del rsa["label"], rsa["id"]
        rsa["uri"] = "pkcs11:object=rsa2048;id=%01;type=private"
        # The full URI p11tool prints names the token too: keys.K.token may then be left out.
        ec = cfg["keys"]["ec256"]
        del ec["label"], ec["id"], ec["token"]
        ec["uri"] = st.keys["ec256"].uri
        return cfg

    def start(self, name: str, cfg: dict) -> Daemon:
        d = Daemon(self.st, config=self.st.write_config(self.st.state_dir / name, config=cfg)).start()
        self.addCleanup(d.stop)
        return d

    def p11tool(self, *args: str) -> list:
        """The URIs p11tool prints (the operator guide's commands)."""
        env = self.st.env(dict(os.environ, GNUTLS_PIN=self.st.user_pin))
        out = run(["p11tool", "--provider", self.st.module, *args], env=env).stdout.decode()
        return re.findall(r"URL: (pkcs11:\S+)", out)

    def test_keys_found_and_signing_through_uris(self):
        token_uri = [u for u in self.p11tool("--list-tokens") if "token=p11relay-demo" in u]
        self.assertEqual(len(token_uri), 1)
        self.assertIn("manufacturer=SoftHSM%20project;serial=", token_uri[0])
        cfg = self.uri_config(token_uri[0])
        key_uri = [u for u in self.p11tool("--login", "--list-privkeys", token_uri[0]) if "object=ec256;" in u]
        self.assertEqual(len(key_uri), 1)
        cfg["keys"]["ec256"]["uri"] = key_uri[0]
        d = self.start("uri.yml", cfg)
        st, _, body = d.request("GET", "/v1/keys")
        self.assertEqual(st, 200, body)
        keys = {k["name"]: k for k in json.loads(body)["keys"]}
        self.assertEqual(set(keys), {"rsa2048", "ec256"})
        self.assertEqual((keys["ec256"]["label"], keys["ec256"]["id"]), ("ec256", "02"))
        digest = bytes(range(32))
        prefix = bytes.fromhex("3031300d060960864801650304020105000420")
        status, _, body = d.sign("rsa2048", "CKM_RSA_PKCS", prefix + digest)
        self.assertEqual(status, 200, body)
        sig = base64.b64decode(json.loads(body)["signature"])
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, digest, sig, self.tmp))

    def test_a_token_uri_that_does_not_fit_finds_no_token(self):
        d = self.start("wrong-model.yml", self.uri_config("pkcs11:token=p11relay-demo;model=Other"))
        st, _, body = d.request("GET", "/v1/keys")
        self.assertEqual(st, 503, body)
        self.assertIn("is not present", json.loads(body)["detail"])

    def test_bad_uris_are_config_errors_with_file_and_line(self):
        cfg = self.uri_config("pkcs11:token=p11relay-demo?pin-value=secret123")
        path = self.st.write_config(self.st.state_dir / "pin.yml", config=cfg)
        p = run([harness.DAEMON, "--check-config", str(path)], check=False, env=self.st.env())
        self.assertEqual(p.returncode, 2)
        err = p.stderr.decode()
        self.assertRegex(err, r"pin\.yml:\d+: tokens\.\w+\.uri: a PIN cannot be given in the URI")
        self.assertNotIn("secret123", err)
        cfg = self.uri_config("pkcs11:token=p11relay-demo")
        cfg["keys"]["rsa2048"]["uri"] = "pkcs11:object=rsa2048;colour=red"
        path = self.st.write_config(self.st.state_dir / "colour.yml", config=cfg)
        p = run([harness.DAEMON, "--check-config", str(path)], check=False, env=self.st.env())
        self.assertEqual(p.returncode, 2)
        self.assertRegex(p.stderr.decode(), r"colour\.yml:\d+: keys\.rsa2048\.uri: pkcs11 URI: unknown path attribute")


class SocketActivation(OpsTest):
    """Listening sockets passed as systemd does (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES; fds from 3 on)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # server.listen names another port: an activated daemon must not bind it.
        cls.config_port = harness.free_port()
        cls.config = cls.st.write_config(cls.st.state_dir / "activated.yml", listen=f"127.0.0.1:{cls.config_port}")

    def listening(self) -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        self.addCleanup(s.close)
        return s

    def activate(self, fds: list, names: str, *, listen_pid: str = "$$") -> Daemon:
        """Starts p11relayd with `fds` as fds 3, 4, ... and LISTEN_PID set to its own pid (`$$` of the shell
        that execs it), as systemd does. Returns the Daemon once it wrote its port file."""
        d = Daemon(self.st, config=self.config)
        self.addCleanup(d.stop)
        env = self.st.env()
        env.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names)

        def place_fds():
            high = [os.dup(fd) for fd in fds]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)  # inheritable, like systemd's

        log = open(d.log_path, "ab")
        d.proc = subprocess.Popen(["/bin/sh", "-c", f'LISTEN_PID={listen_pid} exec "$@"', "sh", harness.DAEMON,
                                   "--config", str(self.config), "--port-file", str(d.port_file)],
                                  env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, close_fds=False,
                                  preexec_fn=place_fds)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and d.proc.poll() is None:
            if d.port_file.exists() and d.port_file.read_text().strip():
                d.port = int(d.port_file.read_text())
                return d
            time.sleep(0.02)
        d.proc.wait(5)
        return d

    def test_signs_through_the_passed_socket_and_serves_metrics_on_the_named_one(self):
        tls, metrics = self.listening(), self.listening()
        d = self.activate([tls.fileno(), metrics.fileno()], "p11relayd.socket:metrics")
        self.assertIsNone(d.proc.poll(), d.log())
        self.assertEqual(d.port, tls.getsockname()[1])
        digest = bytes(range(32))
        status, _, body = d.sign("ec256", "CKM_ECDSA", digest)
        self.assertEqual(status, 200, body)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.config_port), timeout=5).close()
        conn = http.client.HTTPConnection("127.0.0.1", metrics.getsockname()[1], timeout=10)
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        self.assertIn(b'p11relay_signatures_total{key="ec256",client="demo",outcome="ok"} 1', r.read())
        conn.close()
        self.assertIn("socket from systemd", d.log())

    def test_sockets_meant_for_another_process_are_ignored(self):
        tls = self.listening()
        d = self.activate([tls.fileno()], "p11relayd.socket", listen_pid="1")
        self.assertIsNone(d.proc.poll(), d.log())
        self.assertEqual(d.port, self.config_port)

    def test_a_passed_socket_that_is_not_listening_is_refused(self):
        s = socket.socket()
        self.addCleanup(s.close)
        d = self.activate([s.fileno()], "p11relayd.socket")
        self.assertEqual(d.proc.returncode, 2, d.log())
        self.assertIn("file descriptor 3 is not a listening TCP socket", d.log())


class JournalStream(OpsTest):
    """Under systemd (JOURNAL_STREAM names stderr), log lines carry "<N>" syslog priorities for journald."""

    def start(self, journal_stream) -> str:
        d = Daemon(self.st)
        d.log_path.write_bytes(b"")  # a fresh file (ids, hence log names, can repeat)
        s = d.log_path.stat()
        d.env = self.st.env()
        d.env["JOURNAL_STREAM"] = journal_stream(s)
        d.start()
        d.request("GET", "/v1/keys/nope/sign", cert=False)  # a 401: logged at info
        d.stop()
        return d.log()

    def test_priority_prefixes_only_when_stderr_is_the_journal(self):
        log = self.start(lambda s: f"{s.st_dev}:{s.st_ino}")
        self.assertRegex(log, r"(?m)^<6>info listening on https://127\.0\.0\.1:\d+/$")
        self.assertRegex(log, r"(?m)^<6>info signal 15: shutting down$")
        self.assertNotRegex(log, r"(?m)^\d{4}-")  # no timestamps: journald has its own
        log = self.start(lambda s: f"{s.st_dev}:{s.st_ino + 1}")  # some other stream: plain stderr format
        self.assertRegex(log, r"(?m)^\d{4}-\d\d-\d\dT[\d:.]+ info listening on ")
        self.assertNotIn("<6>", log)



class Probe(OpsTest):
    """p11relayd --check-config FILE --probe opens the tokens as the daemon would and names what is wrong."""

    def probe(self, name: str, cfg: dict, pinfile=None) -> subprocess.CompletedProcess:
        if pinfile:
            cfg["pinfile"] = str(pinfile)
        path = self.st.write_config(self.st.state_dir / name, config=cfg)
        return subprocess.run([harness.DAEMON, "--check-config", str(path), "--probe"], env=self.st.env(),
                              capture_output=True, text=True, timeout=60)

    def test_a_good_config_opens_every_token(self):
        p = self.probe("probe-ok.yml", self.st.daemon_config(keys=["rsa2048", "ec256"]))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("token demo: open, 2 of 2 key(s) found: ec256 rsa2048", p.stdout)

    def test_a_label_that_matches_no_token_lists_the_present_ones(self):
        cfg = self.st.daemon_config(keys=["ec256"])
        cfg["tokens"][self.st.token_name]["label"] = self.st.token_label + "x"
        p = self.probe("probe-label.yml", cfg)
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
        self.assertIn(f"label '{self.st.token_label}x') is not present", p.stdout)
        # the tokens the module sees go to the operator's log, never into what clients are told
        self.assertIn(f"tokens present: '{self.st.token_label}' (serial '", p.stderr)
        self.assertIn(f"did you mean '{self.st.token_label}'?", p.stderr)
        self.assertIn("set tokens.NAME.label", p.stderr)

    def test_a_wrong_pin_and_a_missing_key_are_named(self):
        pins = self.st.state_dir / "wrong-pins.yml"
        pins.write_text(f"{self.st.token_name}: '0000'\n")
        pins.chmod(0o600)
        p = self.probe("probe-pin.yml", self.st.daemon_config(keys=["ec256"]), pinfile=pins)
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"(?i)token demo: .*(PIN|login)")
        cfg = self.st.daemon_config(keys=["ec256"])
        cfg["keys"]["ec256"]["label"] = "no-such-key"
        p = self.probe("probe-key.yml", cfg)
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
        self.assertIn("token demo: open, 0 of 1 key(s) found", p.stdout)
        self.assertIn("not found on the token", p.stderr)

if __name__ == "__main__":
    harness.main()
