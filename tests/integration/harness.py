"""Integration test harness: a real p11relayd on 127.0.0.1 (free port) in front of a real SoftHSMv2 token,
reached over real mutual TLS. Provisioning is provision.py's; this file starts and talks to daemons.

Environment (set by meson): P11RELAYD (daemon binary), P11RELAY_BUILD (build dir), P11RELAY_SHIM (module),
P11RELAY_CLI (CLI binary). Each test gets its own state directory (its own token copy) under a temp dir.
"""
from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provision  # noqa: E402
from provision import KeySpec  # noqa: E402,F401

HERE = Path(__file__).resolve().parent
SOURCE_ROOT = HERE.parent.parent
BUILD = Path(os.environ.get("P11RELAY_BUILD", SOURCE_ROOT / "build")).resolve()
DAEMON = os.environ.get("P11RELAYD", str(BUILD / "daemon" / "p11relayd"))
SHIM = os.environ.get("P11RELAY_SHIM", str(BUILD / "pkcs11-shim" / "p11relay-pkcs11.so"))
CLI = os.environ.get("P11RELAY_CLI", str(BUILD / "client" / "cli" / "p11relay"))
# Provisioned templates are cached per build tree: a copy takes milliseconds, a new RSA key a second.
TSA_SCRIPT = SOURCE_ROOT / "common" / "authenticode" / "test" / "tsa_server.py"
TEMPLATE_ROOT = Path(os.environ.get("P11RELAY_TEMPLATE_DIR", BUILD / "tests" / "template-cache"))
# Sanitizer runs (.ci/run builds the whole suite with ASan+UBSan): P11RELAY_SANITIZER_PRELOAD names the
# runtime libraries that programs we did not build (pkcs11-tool, openssl, osslsigncode, p11tool) need
# preloaded to load our instrumented shim. Our own binaries link them; a report in a daemon log fails the test.
SANITIZER_PRELOAD = os.environ.get("P11RELAY_SANITIZER_PRELOAD", "")
# The clients keep the daemon's key list in $XDG_CACHE_HOME/p11relay (docs/client-guide.md): each test
# program gets its own directory, never the user's ~/.cache.
CACHE_HOME = Path(tempfile.mkdtemp(prefix="p11relay-test-cache-"))
os.environ["XDG_CACHE_HOME"] = str(CACHE_HOME)
atexit.register(shutil.rmtree, CACHE_HOME, True)
SANITIZER_REPORT = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer")


def foreign_env(env: dict) -> dict:
    """env for a program we did not build that loads our shim: the sanitizer runtimes preloaded (their leak
    reports about that program are not ours to fix, so leak detection is off there)."""
    if not SANITIZER_PRELOAD:
        return env
    env = dict(env)
    env["LD_PRELOAD"] = SANITIZER_PRELOAD
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"  # the last setting wins
    return env

ALL_KEYS = provision.DEFAULT_KEYS + (
    KeySpec("ec384", "03", "EC:secp384r1"),
    KeySpec("rsapss", "04", "rsa:2048"),
    KeySpec("otherrole", "05", "EC:prime256v1", roles=("nobody",)),
)


def make_state(tmp: Path, keys=ALL_KEYS) -> provision.State:
    name = "tpl-" + "-".join(k.label for k in keys)
    return provision.provision(tmp / "state", listen="127.0.0.1:0", keys=keys, template_dir=TEMPLATE_ROOT / name)


class Daemon:
    """One p11relayd process. Bound to a free port (port 0 + --port-file)."""

    def __init__(self, st: provision.State, config: Optional[Path] = None, env: Optional[dict] = None,
                 args: tuple = ()):
        self.st = st
        self.config = Path(config or st.config)
        self.env = env or st.env()
        self.args = args
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.log_path = self.config.parent / f"daemon-{os.getpid()}-{id(self)}.log"
        self.port_file = self.config.parent / f"port-{id(self)}"

    def start(self, timeout: float = 15.0, port: int = 0) -> "Daemon":
        if self.port_file.exists():
            self.port_file.unlink()
        log = open(self.log_path, "ab")
        listen = f"127.0.0.1:{port or self.port or 0}"
        self.proc = subprocess.Popen([DAEMON, "--config", str(self.config), "--listen", listen,
                                      "--port-file", str(self.port_file), *self.args],
                                     env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"p11relayd exited with {self.proc.returncode}:\n{self.log()}")
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.port = int(self.port_file.read_text())
                return self
            time.sleep(0.02)
        raise RuntimeError("p11relayd did not start:\n" + self.log())

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30 if SANITIZER_PRELOAD else 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        log = self.log()
        for marker in SANITIZER_REPORT:
            if marker in log:
                i = log.index(marker)
                raise AssertionError(f"sanitizer report in {self.log_path}:\n{log[max(0, i - 200):i + 4000]}")
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> "Daemon":
        self.stop()
        return self.start(port=self.port)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    # -- talking to it -----------------------------------------------------------------------------------
    def context(self, client=None, *, cert: bool = True, min_tls=None, max_tls=None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.st.ca_cert))
        if cert:
            c = client or self.st.client
            ctx.load_cert_chain(str(c.certfile), str(c.keyfile))
        if min_tls:
            ctx.minimum_version = min_tls
        if max_tls:
            ctx.maximum_version = max_tls
        return ctx

    def connect(self, client=None, *, cert: bool = True, timeout: float = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(client, cert=cert),
                                           timeout=timeout)

    def request(self, method: str, path: str, body=None, headers=None, client=None, cert: bool = True,
                conn: Optional[http.client.HTTPSConnection] = None):
        """Returns (status, headers (lower-case keys), body bytes)."""
        own = conn is None
        conn = conn or self.connect(client, cert=cert)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            if own:
                conn.close()

    def sign(self, key: str, mechanism: str, data: bytes, params=None, client=None):
        body = {"mechanism": mechanism, "input": base64.b64encode(data).decode()}
        if params:
            body["params"] = params
        status, headers, resp = self.request("POST", f"/v1/keys/{key}/sign", body, client=client)
        return status, headers, resp


class StateTest(unittest.TestCase):
    """Base class: a fresh state dir (own token copy) per test class, in cls.tmp; cls.st is its State."""
    keys = ALL_KEYS
    tmp_prefix = "p11relay-it-"

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix=cls.tmp_prefix))
        cls.st = make_state(cls.tmp, cls.keys)

    @classmethod
    def tearDownClass(cls):
        remove_tmp(cls.tmp)


class DaemonTest(StateTest):
    """Base class: a fresh state dir (own token copy) and a started daemon per test class."""
    config_overrides: dict = {}
    start_daemon = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if cls.config_overrides:
            cfg = cls.st.daemon_config()
            deep_update(cfg, cls.config_overrides)
            cls.st.write_config(config=cfg)
        cls.daemon = Daemon(cls.st)
        if cls.start_daemon:
            cls.daemon.start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        super().tearDownClass()

    def problem(self, body: bytes) -> dict:
        return json.loads(body.decode())


class Tsa:
    """A local RFC 3161 TSA: tsa_server.py (`openssl ts -reply` behind a small HTTP responder on 127.0.0.1)
    with a fresh TSA certificate. POST /fail answers 500, /garbage junk."""

    def __init__(self, tmp: Path):
        d = tmp / "tsa"
        d.mkdir(exist_ok=True)
        (d / "tsa.cnf").write_text(
            "[ tsa ]\ndefault_tsa = tsa_config1\n[ tsa_config1 ]\n"
            f"dir = {d}\nserial = $dir/serial\ncrypto_device = builtin\n"
            "signer_cert = $dir/tsa.crt\ncerts = $dir/tsa.crt\nsigner_key = $dir/tsa.key\n"
            "signer_digest = sha256\ndefault_policy = 1.2.3.4.1\n"
            "digests = sha1, sha256, sha384, sha512\naccuracy = secs:1\nordering = yes\n"
            "tsa_name = no\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n")
        (d / "serial").write_text("01\n")
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=p11relay test TSA",
             "-addext", "extendedKeyUsage=critical,timeStamping", "-addext", "keyUsage=critical,digitalSignature",
             "-keyout", str(d / "tsa.key"), "-out", str(d / "tsa.crt")])
        self.ca = d / "tsa.crt"
        self.proc = subprocess.Popen([sys.executable, str(TSA_SCRIPT), str(d)], stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self.proc.stdout.close()


class TsaDaemonTest(DaemonTest):
    """A daemon per class with a local TSA (cls.tsa) as its timestamp.urls and server-side timestamps on
    rsa2048 (relic's signers); a subclass changes the config in configure(cfg) before the start."""
    start_daemon = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tsa = Tsa(cls.tmp)
        cfg = cls.st.daemon_config()
        cfg["timestamp"] = {"urls": [cls.tsa.url], "timeout": 10, "cacert": str(cls.tsa.ca)}
        cfg["keys"]["rsa2048"]["timestamp"] = True
        cls.configure(cfg)
        cls.st.write_config(config=cfg)
        cls.daemon.start()

    @classmethod
    def configure(cls, cfg: dict) -> None:
        pass

    def audit_lines(self) -> int:
        return len(self.st.audit_file.read_text().splitlines()) if self.st.audit_file.exists() else 0

    def assert_upload_refused(self, cases, upload):
        """Each (name, why, *args): `upload(*args)` (a relic_client.sign_* call returning status, headers, body,
        ...) is answered 400 with `why` in relic's problem detail, and nothing is signed (no audit line)."""
        for name, why, *args in cases:
            with self.subTest(name=name):
                before = self.audit_lines()
                st, _, data, *_ = upload(*args)
                self.assertEqual(st, 400, data)
                self.assertIn(why, json.loads(data)["detail"])
                self.assertEqual(self.audit_lines(), before)

    @classmethod
    def tearDownClass(cls):
        cls.tsa.stop()
        super().tearDownClass()


def remove_tmp(tmp: Path) -> None:
    """Deletes a test's temp dir, unless P11RELAY_KEEP_TMP asks to keep it for a post-mortem."""
    if os.environ.get("P11RELAY_KEEP_TMP"):
        print("kept", tmp, file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            deep_update(d[k], v)
        else:
            d[k] = v
    return d


def run(cmd, *, check=True, env=None, input=None, timeout=120) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, input=input, capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout.decode(errors='replace')}\n"
                             f"{p.stderr.decode(errors='replace')}")
    return p


def ecdsa_raw_to_der(sig: bytes) -> bytes:
    """PKCS#11 CKM_ECDSA returns r||s; OpenSSL verifies a DER Ecdsa-Sig-Value."""
    n = len(sig) // 2

    def integer(b: bytes) -> bytes:
        b = b.lstrip(b"\0") or b"\0"
        if b[0] & 0x80:
            b = b"\0" + b
        return b"\x02" + der_len(len(b)) + b

    body = integer(sig[:n]) + integer(sig[n:])
    return b"\x30" + der_len(len(body)) + body


def der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def openssl_verify(certfile: Path, digest: bytes, signature: bytes, tmp: Path, *, hash_name="sha256",
                   pss_salt: Optional[int] = None) -> bool:
    """Verifies a signature over `digest` with the certificate's public key, using the openssl CLI."""
    pub = tmp / "pub.pem"
    run(["openssl", "x509", "-in", str(certfile), "-pubkey", "-noout", "-out", str(pub)])
    dg, sg = tmp / "digest.bin", tmp / "sig.bin"
    dg.write_bytes(digest)
    sg.write_bytes(signature)
    cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-in", str(dg), "-sigfile", str(sg),
           "-pkeyopt", f"digest:{hash_name}"]
    if pss_salt is not None:
        cmd += ["-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", f"rsa_pss_saltlen:{pss_salt}"]
    p = run(cmd, check=False)
    return p.returncode == 0 and b"Signature Verified Successfully" in p.stdout


def free_port() -> int:
    """A free port for a listener the test configures itself (listenmetrics, a second address). Taken below the
    kernel's ephemeral range: a port the kernel handed out with bind(0) and got back goes to the next bind(0)
    soon, e.g. the daemon's own `--listen 127.0.0.1:0`, which then collided with listenmetrics."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def main():
    """Runs the test module's cases. Exit code for meson: 1 when any case failed, 77 (SKIP) when none failed
    but some were skipped (a tool they need is missing), so a skip shows in meson's totals, else 0."""
    program = unittest.main(verbosity=2, exit=False)
    result = program.result
    if not result.wasSuccessful():
        sys.exit(1)
    if result.skipped:
        print(f"{len(result.skipped)} case(s) skipped: {'; '.join(why for _, why in result.skipped)[:2000]}",
              file=sys.stderr)
        sys.exit(77)
    sys.exit(0)
