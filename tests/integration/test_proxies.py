#!/usr/bin/python3
"""p11relayd behind a real HAProxy on 127.0.0.1 (docs/operator-guide.md, "Behind a reverse proxy";
docs/relic-protocol.md §4.2).

(a) TLS passthrough (mode tcp) in front of two daemons on the same token: the relic-style client's own
    certificate reaches the daemons; both serve; osslsigncode verifies every signature.
(b) TLS termination (mode http): HAProxy authenticates to the daemon with its own certificate (a
    `proxy: true` client entry, no roles), forwards the client's certificate in Ssl-Client-Cert and its
    address in X-Forwarded-For; the daemon is configured with server.trustedproxies. The signature verifies and
    the audit record names the real client and its address (the client connects from 127.0.0.2).
Refused: a client without a certificate through the proxy (401), an Ssl-Client-Cert header sent directly by
an ordinary client (403), the proxy's certificate from an address outside server.trustedproxies (403), the
proxy's certificate without a forwarded one (401: a proxy never signs itself). None of them leaves an audit
record."""
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import unittest
import urllib.parse
from pathlib import Path

import harness
import relic_client
from harness import Daemon, DaemonTest, free_port
from test_relic_pecoff import osslsigncode_verify, tiny_pe

HAPROXY = shutil.which("haproxy")
OSSLSIGNCODE = shutil.which("osslsigncode")


class Endpoint:
    """Where relic_client.post_sign connects: an address and port, TLS trusting the test CA, optionally
    from a given source address (127.0.0.2 stands for a client host other than the proxy's)."""

    def __init__(self, st, port, source="127.0.0.1"):
        self.st, self.port, self.source = st, port, source

    def connect(self, client=None, *, cert=True):
        ctx = ssl.create_default_context(cafile=str(self.st.ca_cert))
        if cert:
            c = client or self.st.client
            ctx.load_cert_chain(str(c.certfile), str(c.keyfile))
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=60,
                                           source_address=(self.source, 0))


def haproxy_config(tmp: Path, st, daemons, pass_port: int, term_port: int, proxy_pem: Path) -> Path:
    server_pem = tmp / "haproxy-server.pem"  # HAProxy's TLS certificate for clients: certificate + key
    server_pem.write_text(st.server_cert.read_text() + (st.state_dir / "tls" / "server.key").read_text())
    servers_tcp = "".join(f"  server d{i} 127.0.0.1:{d.port} check port {m}\n"
                          for i, (d, m) in enumerate(daemons))
    servers_tls = "".join(
        f"  server d{i} 127.0.0.1:{d.port} ssl verify required ca-file {st.ca_cert} crt {proxy_pem}\n"
        for i, (d, _) in enumerate(daemons))
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""global
  maxconn 100
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s

# (a) TLS passthrough: the client's TLS session ends at a daemon.
frontend passthrough
  mode tcp
  bind 127.0.0.1:{pass_port}
  default_backend daemons_tcp
backend daemons_tcp
  mode tcp
  balance roundrobin
  option httpchk GET /health
{servers_tcp}
# (b) TLS termination: the client certificate is requested, not judged (the daemon decides by its key).
frontend termination
  mode http
  bind 127.0.0.1:{term_port} ssl crt {server_pem} verify optional ca-file {st.ca_cert} ca-ignore-err all crt-ignore-err all
  http-request del-header Ssl-Client-Cert
  http-request set-header Ssl-Client-Cert %[ssl_c_der,base64] if {{ ssl_c_used }}
  option forwardfor
  default_backend daemons_tls
backend daemons_tls
  mode http
  balance roundrobin
{servers_tls}""")
    return cfg


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited with {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"haproxy did not listen on {port}")


@unittest.skipUnless(HAPROXY and OSSLSIGNCODE, "haproxy or osslsigncode not installed")
class BehindHaproxy(DaemonTest):
    start_daemon = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pe = tiny_pe(cls.tmp, "x86_64")
        st = cls.st
        cls.proxy = st.make_client("haproxy", roles=())
        cls.other = st.make_client("other", roles=("signers",))
        cfg = st.daemon_config(clients=[st.client, cls.other, cls.proxy])
        cfg["clients"][cls.proxy.fingerprint] = {"nickname": "haproxy", "proxy": True}
        cfg["server"]["trustedproxies"] = ["127.0.0.1"]
        metrics = [free_port(), free_port()]  # plain /health for HAProxy's checks
        cfg["server"]["listenmetrics"] = f"127.0.0.1:{metrics[0]}"
        st.write_config(config=cfg)
        cls.daemon = Daemon(st).start()
        cfg["auditfile"] = "audit-b.log"
        cfg["server"]["listenmetrics"] = f"127.0.0.1:{metrics[1]}"
        cls.daemon_b = Daemon(st, config=st.write_config(st.config.parent / "b.yml", config=cfg)).start()
        proxy_pem = cls.tmp / "haproxy-client.pem"  # what HAProxy shows the daemons: certificate + key
        proxy_pem.write_text(cls.proxy.certfile.read_text() + cls.proxy.keyfile.read_text())
        cls.pass_port, cls.term_port = free_port(), free_port()
        cfg_path = haproxy_config(cls.tmp, st, list(zip([cls.daemon, cls.daemon_b], metrics)), cls.pass_port,
                                  cls.term_port, proxy_pem)
        check = subprocess.run([HAPROXY, "-c", "-f", str(cfg_path)], capture_output=True)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        cls.haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg_path)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
        wait_listening(cls.pass_port, cls.haproxy)
        wait_listening(cls.term_port, cls.haproxy)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "haproxy", None):
            cls.haproxy.terminate()
            cls.haproxy.wait(timeout=10)
        if getattr(cls, "daemon_b", None):
            cls.daemon_b.stop()
        super().tearDownClass()

    def audit(self):
        out = []
        for name in ("audit.log", "audit-b.log"):
            p = self.st.config.parent / name
            out += [json.loads(line) | {"_log": name} for line in p.read_text().splitlines()] if p.exists() else []
        return out

    def sign_verified(self, endpoint, name):
        status, h, body, signed = relic_client.sign_pe(endpoint, "rsa2048", self.pe, filename=name)
        self.assertEqual(status, 200, body)
        out = self.tmp / name
        out.write_bytes(signed)
        osslsigncode_verify(out, self.st.keys["rsa2048"].certfile)
        return [r for r in self.audit() if r.get("client.filename") == name]

    def refused(self, endpoint, name, status, client=None, cert=True, headers=None):
        conn = endpoint.connect(client, cert=cert)
        q = urllib.parse.urlencode({"key": "rsa2048", "sigtype": "pe-coff", "digest": "SHA-256", "filename": name})
        conn.request("POST", "/sign?" + q, body=self.pe, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        self.assertEqual(r.status, status, body)
        self.assertEqual([r for r in self.audit() if r.get("client.filename") == name], [])
        return json.loads(body)

    def test_a_passthrough_reaches_both_daemons_with_the_clients_own_certificate(self):
        ep = Endpoint(self.st, self.pass_port)
        logs = set()
        for i in range(4):
            (rec,) = self.sign_verified(ep, f"pass{i}.exe")
            self.assertEqual(rec["client.name"], self.st.client.name)
            self.assertNotIn("client.proxy", rec)
            logs.add(rec["_log"])
        self.assertEqual(logs, {"audit.log", "audit-b.log"})  # round robin over the two appliances

    def test_b_termination_forwards_the_client_certificate_and_address(self):
        ep = Endpoint(self.st, self.term_port, source="127.0.0.2")
        for i, client in enumerate([self.st.client, self.other]):
            status, h, body, signed = relic_client.sign_pe(ep, "rsa2048", self.pe, filename=f"term{i}.exe",
                                                           client=client)
            self.assertEqual(status, 200, body)
            out = self.tmp / f"term{i}.exe"
            out.write_bytes(signed)
            osslsigncode_verify(out, self.st.keys["rsa2048"].certfile)
            (rec,) = [r for r in self.audit() if r.get("client.filename") == f"term{i}.exe"]
            self.assertEqual(rec["client.name"], client.name)
            self.assertEqual(rec["client.fingerprint"], client.fingerprint)
            self.assertEqual(rec["client.ip"], "127.0.0.2")
            self.assertEqual(rec["client.proxy"], "127.0.0.1")

    def test_b_relay_api_through_termination_with_the_cli(self):
        # The client library (the CLI's and the PKCS#11 module's) through the terminating proxy.
        c = self.other
        cfg = self.tmp / "client-term.yml"
        cfg.write_text(f"remote:\n  url: https://127.0.0.1:{self.term_port}/\n  certfile: {c.certfile}\n"
                       f"  keyfile: {c.keyfile}\n  cacert: {self.st.ca_cert}\n")
        before = len(self.audit())
        digest = hashlib.sha256(b"through the proxy").digest()
        p = subprocess.run([harness.CLI, "-c", str(cfg), "sign-digest", "--key", "rsa2048", "--digest-alg", "sha256",
                            "--hex", digest.hex(), "--format", "hex"], capture_output=True, timeout=120,
                           env=dict(os.environ, HOME=str(self.tmp / "home")))
        self.assertEqual(p.returncode, 0, p.stderr)
        (self.tmp / "sig").write_bytes(bytes.fromhex(p.stdout.decode().strip()))
        (self.tmp / "digest").write_bytes(digest)
        pub = harness.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(self.st.keys["rsa2048"].certfile)])
        (self.tmp / "pub.pem").write_bytes(pub.stdout)
        harness.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(self.tmp / "pub.pem"), "-in",
                     str(self.tmp / "digest"), "-sigfile", str(self.tmp / "sig"), "-pkeyopt", "digest:sha256"])
        new = self.audit()[before:]
        self.assertEqual([(r["client.name"], r["client.proxy"]) for r in new], [(c.name, "127.0.0.1")])

    def test_b_termination_without_a_client_certificate_is_401(self):
        p = self.refused(Endpoint(self.st, self.term_port, source="127.0.0.2"), "nocert.exe", 401, cert=False)
        self.assertIn("certificate-required", p["type"])

    def test_forged_header_sent_directly_is_403(self):
        forged = urllib.parse.quote(self.other.certfile.read_text())
        p = self.refused(Endpoint(self.st, self.daemon.port), "forged.exe", 403,
                         headers={"Ssl-Client-Cert": forged, "X-Forwarded-For": "192.0.2.1"})
        self.assertIn("trustedproxies", p["detail"])
        self.assertIn("Ssl-Client-Cert header from 127.0.0.1", self.daemon.log())

    def test_proxy_certificate_from_an_untrusted_address_is_403(self):
        forged = urllib.parse.quote(self.other.certfile.read_text())
        p = self.refused(Endpoint(self.st, self.daemon.port, source="127.0.0.3"), "untrusted.exe", 403,
                         client=self.proxy, headers={"Ssl-Client-Cert": forged, "X-Forwarded-For": "192.0.2.1"})
        self.assertIn("127.0.0.3 is not in server.trustedproxies", p["detail"])

    def test_proxy_certificate_alone_never_signs(self):
        p = self.refused(Endpoint(self.st, self.daemon.port), "proxyself.exe", 401, client=self.proxy)
        self.assertIn("certificate-required", p["type"])

    def test_nginx_style_escaped_pem_from_the_trusted_proxy(self):
        # What nginx sends with proxy_set_header Ssl-Client-Cert $ssl_client_escaped_cert.
        ep = Endpoint(self.st, self.daemon.port)
        conn = ep.connect(self.proxy)
        q = urllib.parse.urlencode({"key": "rsa2048", "sigtype": "pe-coff", "digest": "SHA-256",
                                    "filename": "nginx.exe"})
        conn.request("POST", "/sign?" + q, body=self.pe,
                     headers={"Ssl-Client-Cert": urllib.parse.quote(self.other.certfile.read_text()),
                              "X-Forwarded-For": "198.51.100.4"})
        r = conn.getresponse()
        patch = r.read()
        conn.close()
        self.assertEqual(r.status, 200, patch)
        out = self.tmp / "nginx.exe"
        out.write_bytes(relic_client.fix_checksum(relic_client.apply_binpatch(self.pe, patch)))
        osslsigncode_verify(out, self.st.keys["rsa2048"].certfile)
        (rec,) = [r for r in self.audit() if r.get("client.filename") == "nginx.exe"]
        self.assertEqual((rec["client.name"], rec["client.ip"]), (self.other.name, "198.51.100.4"))


if __name__ == "__main__":
    harness.main()
