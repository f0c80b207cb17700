#!/usr/bin/python3
"""p11relayd end to end: relic API and relay API over real mTLS against a SoftHSMv2 token."""
import base64
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import unittest
from pathlib import Path

import harness
from harness import DaemonTest, KeySpec, openssl_verify, ecdsa_raw_to_der

RELIC = "https://relic.sas.com/"


class RelicApi(DaemonTest):
    def test_health_directory_home(self):
        st, h, body = self.daemon.request("GET", "/health")
        self.assertEqual(st, 200)
        self.assertEqual(body, b"OK\r\n")
        self.assertEqual(h["accept-encoding"], "x-snappy-framed, gzip")
        st, h, body = self.daemon.request("GET", "/directory", headers={"Accept": "application/json, */*"})
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "application/json")
        self.assertEqual(body, b'{"hosts":[],"auth":[{"type":"https://relic.sas.com/auth/certificate"}]}')
        st, h, body = self.daemon.request("GET", "/directory", headers={"Host": "relay.example:6300"})
        self.assertEqual(body, b"https://relay.example:6300\r\n")
        st, _, body = self.daemon.request("GET", "/")
        self.assertEqual((st, body), (200, b"Welcome to relic!\n"))

    def test_unknown_path_and_method(self):
        st, h, body = self.daemon.request("GET", "/nope")
        self.assertEqual((st, body), (404, b"404 page not found\n"))
        st, h, body = self.daemon.request("DELETE", "/list_keys")
        self.assertEqual((st, body), (405, b""))

    def test_list_keys_hides_keys_without_the_clients_role(self):
        st, h, body = self.daemon.request("GET", "/list_keys")
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "application/json")
        names = json.loads(body)
        self.assertEqual(names, sorted(["rsa2048", "ec256", "ec384", "rsapss"]))
        self.assertNotIn("otherrole", names)

    def test_get_key_returns_the_pem_chain(self):
        st, h, body = self.daemon.request("GET", "/keys/rsa2048")
        self.assertEqual(st, 200)
        doc = json.loads(body)
        self.assertEqual(list(doc), ["X509Certificate", "PGPCertificate"])
        self.assertEqual(doc["X509Certificate"], self.st.keys["rsa2048"].certfile.read_text())
        self.assertEqual(doc["PGPCertificate"], "")
        # ec256's certificate comes from the token (no x509certificate in the config)
        st, h, body = self.daemon.request("GET", "/keys/ec256")
        self.assertEqual(st, 200)
        self.assertIn("BEGIN CERTIFICATE", json.loads(body)["X509Certificate"])

    def test_unknown_or_foreign_key_is_403_forbidden(self):
        for key in ("otherrole", "doesnotexist"):
            st, h, body = self.daemon.request("GET", f"/keys/{key}")
            self.assertEqual(st, 403)
            self.assertEqual(h["content-type"], "application/problem+json")
            self.assertEqual(body, b'{\n  "status": 403,\n  "type": "https://relic.sas.com/forbidden"\n}')
            st, h, body = self.daemon.request("POST", f"/sign?key={key}&filename=a.exe&sigtype=pe-coff", body=b"MZ")
            self.assertEqual(st, 403)

    def test_sign_parameter_errors_in_relic_order(self):
        st, _, body = self.daemon.request("POST", "/sign?filename=a.exe&sigtype=pe-coff", body=b"x")
        self.assertEqual(st, 400)
        p = self.problem(body)
        self.assertEqual((p["type"], p["param"]), (RELIC + "missing-parameter", "key"))
        st, _, body = self.daemon.request("POST", "/sign?key=rsa2048&sigtype=pe-coff", body=b"x")
        self.assertEqual(self.problem(body)["detail"], "Parameter filename is required")
        st, _, body = self.daemon.request("POST", "/sign?key=rsa2048&filename=a&sigtype=rpm", body=b"x")
        self.assertEqual(st, 400)
        self.assertEqual(self.problem(body)["type"], RELIC + "unknown-signature-type")

    def test_no_client_certificate_is_401_certificate_required(self):
        st, h, body = self.daemon.request("GET", "/list_keys", cert=False)
        self.assertEqual(st, 401)
        p = self.problem(body)
        self.assertEqual(p["type"], RELIC + "certificate-required")
        self.assertEqual(p["detail"], "A client certificate must be provided to use this service")
        # /health needs no certificate
        self.assertEqual(self.daemon.request("GET", "/health", cert=False)[0], 200)

    def test_unknown_client_certificate_is_401_and_nothing_is_signed(self):
        stranger = self.st.make_client("stranger")
        before = self.st.audit_file.read_text() if self.st.audit_file.exists() else ""
        st, h, body = self.daemon.request("GET", "/list_keys", client=stranger)
        self.assertEqual(st, 401)
        self.assertEqual(self.problem(body)["type"], RELIC + "certificate-not-recognized")
        st, h, body = self.daemon.sign("ec256", "CKM_ECDSA", bytes(32), client=stranger)
        self.assertEqual(st, 401)
        self.assertEqual(json.loads(body)["code"], "unauthenticated")
        after = self.st.audit_file.read_text() if self.st.audit_file.exists() else ""
        self.assertEqual(before, after)

    def test_curl_lists_keys_like_a_relic_client(self):
        p = harness.run(["curl", "-sS", "--cacert", str(self.st.ca_cert), "--cert", str(self.st.client.certfile),
                         "--key", str(self.st.client.keyfile), self.daemon.url + "list_keys"])
        self.assertIn(b'"rsa2048"', p.stdout)


class RelayApi(DaemonTest):
    # SHA-1 is refused unless a key's policy lists it (docs/policy.md); test_ecdsa_… signs one.
    config_overrides = {"keys": {"ec256": {"policy": {"digests": ["sha1", "sha256"]}}}}
    def digest(self, data=b"p11relay", alg="sha256"):
        return hashlib.new(alg, data).digest()

    def test_key_list_has_what_the_shim_needs(self):
        st, h, body = self.daemon.request("GET", "/v1/keys")
        self.assertEqual(st, 200)
        keys = {k["name"]: k for k in json.loads(body)["keys"]}
        self.assertEqual(set(keys), {"rsa2048", "ec256", "ec384", "rsapss"})
        rsa = keys["rsa2048"]
        self.assertEqual((rsa["key_type"], rsa["bits"], rsa["id"], rsa["label"]), ("RSA", 2048, "01", "rsa2048"))
        self.assertEqual(rsa["token"]["label"], "p11relay-demo")
        self.assertIn("CKM_RSA_PKCS_PSS", rsa["mechanisms"])
        self.assertEqual(keys["ec384"]["curve"], "P-384")
        self.assertEqual(keys["ec256"]["mechanisms"], ["CKM_ECDSA"])
        cert = base64.b64decode(rsa["certificates"][0])
        pem = self.st.keys["rsa2048"].certfile.read_text()
        self.assertEqual(cert, ssl.PEM_cert_to_DER_cert(pem))

    def test_rsa_pkcs1_signature_verifies(self):
        d = self.digest()
        di = bytes.fromhex("3031300d060960864801650304020105000420") + d
        st, _, body = self.daemon.sign("rsa2048", "CKM_RSA_PKCS", di)
        self.assertEqual(st, 200, body)
        sig = base64.b64decode(json.loads(body)["signature"])
        self.assertEqual(len(sig), 256)
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, d, sig, self.tmp))
        self.assertFalse(openssl_verify(self.st.keys["rsa2048"].certfile, self.digest(b"other"), sig, self.tmp))

    def test_rsa_pss_signature_verifies(self):
        for alg, salt in (("sha256", 32), ("sha384", 48), ("sha512", 20)):
            d = self.digest(alg=alg)
            st, _, body = self.daemon.sign("rsapss", "CKM_RSA_PKCS_PSS", d,
                                           params={"hash": alg, "mgf": alg, "salt_length": salt})
            self.assertEqual(st, 200, body)
            sig = base64.b64decode(json.loads(body)["signature"])
            self.assertTrue(openssl_verify(self.st.keys["rsapss"].certfile, d, sig, self.tmp, hash_name=alg,
                                           pss_salt=salt), alg)

    def test_ecdsa_p256_and_p384_signatures_verify(self):
        for key, alg in (("ec256", "sha256"), ("ec384", "sha384"), ("ec256", "sha1")):
            d = self.digest(alg=alg)
            st, _, body = self.daemon.sign(key, "CKM_ECDSA", d)
            self.assertEqual(st, 200, body)
            raw = base64.b64decode(json.loads(body)["signature"])
            self.assertEqual(len(raw), 64 if key == "ec256" else 96)
            self.assertTrue(openssl_verify(self.st.keys[key].certfile, d, ecdsa_raw_to_der(raw), self.tmp,
                                           hash_name=alg))

    def test_every_signature_is_audited_and_the_chain_verifies(self):
        st, _, _ = self.daemon.sign("ec256", "CKM_ECDSA", self.digest(b"audited"))
        self.assertEqual(st, 200)
        lines = self.st.audit_file.read_text().splitlines()
        last = json.loads(lines[-1])
        self.assertEqual(last["sig.keyname"], "ec256")
        self.assertEqual(last["client.fingerprint"], self.st.client.fingerprint)
        self.assertEqual(last["client.name"], "demo")
        self.assertEqual(last["sig.type"], "CKM_ECDSA")
        self.assertEqual(last["sig.hash"], "SHA-256")
        self.assertEqual(last["outcome"], "ok")
        # relic's certificate fields: SHA-1 of the whole signing certificate, RFC 2253 names
        der = ssl.PEM_cert_to_DER_cert(self.st.keys["ec256"].certfile.read_text())
        self.assertEqual(last["sig.x509.fingerprint"], hashlib.sha1(der).hexdigest())
        self.assertIn("CN=ec256", last["sig.x509.subject"].split(","))
        self.assertIn("sig.x509.issuer", last)
        # CKM_RSA_PKCS: the hash is named from the DigestInfo
        sha384_di = bytes.fromhex("3041300d060960864801650304020205000430")
        st, _, _ = self.daemon.sign("rsa2048", "CKM_RSA_PKCS", sha384_di + hashlib.sha384(b"audited").digest())
        self.assertEqual(st, 200)
        last = json.loads(self.st.audit_file.read_text().splitlines()[-1])
        self.assertEqual((last["sig.type"], last["sig.hash"]), ("CKM_RSA_PKCS", "SHA-384"))
        p = harness.run([harness.DAEMON, "audit-verify", str(self.st.audit_file)])
        self.assertIn(b"chain intact", p.stdout)

    def test_forbidden_and_unknown_keys_are_403(self):
        for key in ("otherrole", "nope"):
            st, _, body = self.daemon.sign(key, "CKM_ECDSA", self.digest())
            self.assertEqual(st, 403)
            p = json.loads(body)
            self.assertEqual((p["code"], p["ckr"]), ("forbidden", "0x00000060"))

    def test_bad_requests(self):
        st, h, body = self.daemon.request("POST", "/v1/keys/ec256/sign", body=b"{not json")
        self.assertEqual(st, 400)
        self.assertEqual(h["content-type"], "application/problem+json")
        self.assertEqual(json.loads(body)["code"], "bad-json")
        st, _, body = self.daemon.sign("ec256", "CKM_RSA_PKCS", self.digest())
        self.assertEqual((st, json.loads(body)["code"]), (400, "mechanism-invalid"))
        st, _, body = self.daemon.sign("ec256", "CKM_ECDSA", b"short")
        self.assertEqual((st, json.loads(body)["code"]), (400, "data-len-range"))
        st, _, body = self.daemon.sign("rsapss", "CKM_RSA_PKCS_PSS", self.digest())
        self.assertEqual((st, json.loads(body)["code"]), (400, "mechanism-param-invalid"))
        st, _, body = self.daemon.request("GET", "/v1/keys/ec256/sign")
        self.assertEqual(st, 405)

    def test_oversized_body_is_413(self):
        big = b'{"mechanism":"CKM_ECDSA","input":"' + b"A" * (2 << 20) + b'"}'
        st, _, body = self.daemon.request("POST", "/v1/keys/ec256/sign", body=big)
        self.assertEqual(st, 413)
        self.assertEqual(json.loads(body)["code"], "payload-too-large")

    def test_expect_100_continue_gets_its_interim_answer_before_the_body(self):
        body = json.dumps({"mechanism": "CKM_ECDSA", "input": base64.b64encode(self.digest(b"x")).decode()}).encode()
        raw = socket.create_connection(("127.0.0.1", self.daemon.port), timeout=10)
        with self.daemon.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /v1/keys/ec256/sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
            interim = tls.recv(64)   # nothing of the body sent yet: the daemon must answer first
            self.assertEqual(interim, b"HTTP/1.1 100 Continue\r\n\r\n")
            tls.sendall(body)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += tls.recv(4096)
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)

    def test_keep_alive_serves_many_requests_on_one_connection(self):
        conn = self.daemon.connect()
        for i in range(20):
            st, _, body = self.daemon.request("POST", "/v1/keys/ec256/sign", conn=conn,
                                              body={"mechanism": "CKM_ECDSA",
                                                    "input": base64.b64encode(self.digest(bytes([i]))).decode()})
            self.assertEqual(st, 200)
        conn.close()


class KeysWithoutPublicKeyObjects(DaemonTest):
    """A token holding only private keys (docs/architecture.md, failure mode 12). The daemon reads an RSA key's public half from the
    private key's CKA_MODULUS/CKA_PUBLIC_EXPONENT (rsabare has no certificate anywhere, so nothing else could
    give it) and an EC key's from the certificate on the token; both are served and sign verifiably."""
    keys = (KeySpec("rsabare", "21", "rsa:2048", config_cert=False, cert_on_token=False, public_on_token=False),
            KeySpec("ecnopub", "22", "EC:prime256v1", config_cert=False, public_on_token=False))

    def spki_of(self, certfile) -> bytes:
        pem = subprocess.run(["openssl", "x509", "-in", str(certfile), "-pubkey", "-noout"], check=True,
                             capture_output=True).stdout
        return subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem, check=True,
                              capture_output=True).stdout

    def test_both_keys_are_served_with_the_right_public_key_and_sign(self):
        st, _, body = self.daemon.request("GET", "/v1/keys")
        self.assertEqual(st, 200, body)
        keys = {k["name"]: k for k in json.loads(body)["keys"]}
        self.assertEqual(set(keys), {"rsabare", "ecnopub"}, self.daemon.log()[-2000:])
        self.assertEqual(keys["rsabare"]["certificates"], [])
        for name in keys:
            self.assertEqual(base64.b64decode(keys[name]["spki"]), self.spki_of(self.st.keys[name].certfile), name)
        d = hashlib.sha256(b"no public key object").digest()
        st, _, body = self.daemon.sign("rsabare", "CKM_RSA_PKCS", bytes.fromhex("3031300d060960864801650304020105000420") + d)
        self.assertEqual(st, 200, body)
        self.assertTrue(openssl_verify(self.st.keys["rsabare"].certfile, d, base64.b64decode(json.loads(body)["signature"]),
                                       self.tmp))
        st, _, body = self.daemon.sign("ecnopub", "CKM_ECDSA", d)
        self.assertEqual(st, 200, body)
        raw = base64.b64decode(json.loads(body)["signature"])
        self.assertTrue(openssl_verify(self.st.keys["ecnopub"].certfile, d, ecdsa_raw_to_der(raw), self.tmp))


class Timeouts(DaemonTest):
    config_overrides = {"server": {"readheadertimeout": 1, "idletimeout": 2}}

    def test_slow_header_client_is_cut_off_while_others_are_served(self):
        ctx = self.daemon.context()
        raw = socket.create_connection(("127.0.0.1", self.daemon.port))
        slow = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        slow.sendall(b"GET /list_keys HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        t0 = time.monotonic()
        # meanwhile another client is served at once
        st, _, _ = self.daemon.request("GET", "/list_keys")
        self.assertEqual(st, 200)
        self.assertLess(time.monotonic() - t0, 1.0)
        slow.settimeout(10)
        try:
            data = slow.recv(100)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        self.assertEqual(data, b"")  # closed by the daemon
        self.assertLess(time.monotonic() - t0, 5)
        slow.close()

    def test_tls_1_1_refused_tls_1_2_accepted(self):
        base = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.daemon.port}", "-CAfile",
                str(self.st.ca_cert), "-cert", str(self.st.client.certfile), "-key", str(self.st.client.keyfile)]
        old = harness.run(base + ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], check=False, input=b"")
        self.assertNotEqual(old.returncode, 0)
        new = harness.run(base + ["-tls1_2"], check=False, input=b"")
        self.assertEqual(new.returncode, 0, new.stderr)
        self.assertIn(b"Protocol  : TLSv1.2", new.stdout)


class IdleConnections(DaemonTest):
    """A connection waiting for its next request keeps no coroutine in the daemon (Server::park): it is still
    served when the request comes, and still cut at its deadline while it waits."""
    config_overrides = {"server": {"readheadertimeout": 1, "idletimeout": 3}}

    def seconds_until_closed(self, sock) -> float:
        t0 = time.monotonic()
        sock.settimeout(10)
        try:
            data = sock.recv(100)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        self.assertEqual(data, b"")  # closed by the daemon
        return time.monotonic() - t0

    def test_silent_after_the_handshake_is_cut_at_readheadertimeout(self):
        raw = socket.create_connection(("127.0.0.1", self.daemon.port))
        with self.daemon.context().wrap_socket(raw, server_hostname="127.0.0.1") as s:
            # readheadertimeout (1 s), not handshaketimeout (10 s) nor idletimeout (3 s)
            self.assertLess(self.seconds_until_closed(s), 2.5)

    def test_idle_connection_is_served_after_a_pause_then_cut_at_idletimeout(self):
        conn = self.daemon.connect()
        try:
            sock = None
            for pause in (0, 0, 1.8):  # the last one waits past readheadertimeout, under idletimeout
                time.sleep(pause)
                conn.request("GET", "/list_keys")
                r = conn.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
                sock = sock or conn.sock
                self.assertIs(conn.sock, sock)  # the same keep-alive connection
            waited = self.seconds_until_closed(conn.sock)
            self.assertGreater(waited, 2.0)
            self.assertLess(waited, 5.0)
        finally:
            conn.close()


class Metrics(DaemonTest):
    metrics_port = harness.free_port()
    config_overrides = {"server": {"listenmetrics": f"127.0.0.1:{metrics_port}"}}

    def scrape(self, path="/metrics"):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()

    def test_metrics_count_requests_signatures_and_token_state(self):
        for i in range(3):
            st, _, _ = self.daemon.sign("ec256", "CKM_ECDSA", hashlib.sha256(bytes([i])).digest())
            self.assertEqual(st, 200)
        self.daemon.sign("nope", "CKM_ECDSA", bytes(32))
        status, text = self.scrape()
        self.assertEqual(status, 200)
        self.assertIn('p11relay_signatures_total{key="ec256",client="demo",outcome="ok"} 3', text)
        self.assertIn('p11relay_requests_total{api="relay",status="403"} 1', text)
        self.assertIn('p11relay_token_up{token="demo"} 1', text)
        self.assertIn('p11relay_sign_duration_seconds_count{key="ec256"} 3', text)
        # plaintext health for load balancers; nothing else is served there
        self.assertEqual(self.scrape("/health"), (200, "OK\r\n"))
        self.assertEqual(self.scrape("/list_keys")[0], 404)


class Configuration(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-cfg-"))
        cls.st = harness.make_state(cls.tmp)

    def check(self, cfg_text: str):
        p = self.st.state_dir / "bad.yml"
        p.write_text(cfg_text)
        return harness.run([harness.DAEMON, "--check-config", str(p)], check=False, env=self.st.env())

    def test_check_config_accepts_the_provisioned_config_and_redacts_the_pin(self):
        p = harness.run([harness.DAEMON, "--check-config", str(self.st.config)], env=self.st.env())
        self.assertIn(b"<redacted>", p.stdout)
        self.assertNotIn(self.st.user_pin.encode(), p.stdout + p.stderr)

    def test_bad_configs_exit_2_naming_file_and_line(self):
        good = self.st.config.read_text()
        cases = {
            "unknown key": (good.replace("tokencheckinterval: 60", "tokencheckinterval: 60\n  colour: red"), b"colour"),
            "wrong type": (good.replace("tokencheckinterval: 60", "tokencheckinterval: [60]"), b"wrong type"),
            "unknown token": (good.replace("token: demo", "token: nosuch", 1), b"unknown token 'nosuch'"),
            "missing file": (good.replace("certfile: tls/server.pem", "certfile: tls/none.pem"), b"none.pem"),
            "yaml syntax": (good.replace("tokens:", "tokens: [unclosed", 1), b"bad.yml:"),
        }
        for name, (text, needle) in cases.items():
            with self.subTest(name):
                p = self.check(text)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn(needle, p.stderr)
                self.assertRegex(p.stderr.decode(), r"bad\.yml:\d+")

    def test_module_outside_allow_list_is_refused(self):
        copy = self.tmp / "libsofthsm2.so"
        copy.write_bytes(Path(provision.SOFTHSM_MODULE).read_bytes())
        text = self.st.config.read_text().replace(provision.SOFTHSM_MODULE, str(copy))
        p = self.check(text)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"outside the allowed module directories", p.stderr)
        # and the daemon itself refuses to start with it
        bad = self.st.state_dir / "bad.yml"
        d = harness.run([harness.DAEMON, "--config", str(bad)], check=False, env=self.st.env(), timeout=20)
        self.assertEqual(d.returncode, 2)

    def test_check_config_runs_the_start_up_checks_of_the_daemon(self):
        """Each bad setup: --check-config exits 2, and the daemon exits 2 at start with the same message."""
        good = self.st.config.read_text()
        client_cert = str(self.st.client.certfile)
        cases = {
            "world-writable config": (good, "config", 0o666, b"is writable by group or others (mode 0666): chmod go-w "),
            "group-writable server key": (good, "key", 0o620, b"server.keyfile"),
            "cert/key mismatch": (good.replace("certfile: tls/server.pem", f"certfile: {client_cert}"), None, 0,
                                  b"does not match"),
            "certfile is the pinfile": (good.replace("certfile: tls/server.pem", "certfile: pins.yml"), None, 0,
                                        b"pins.yml' is the pinfile"),
            "audit directory missing": (good.replace("auditfile: audit.log", "auditfile: nodir/audit.log"), None, 0,
                                        b"does not exist"),
            "listen port out of range": (re.sub(r"(?m)^  listen: .*$", "  listen: 127.0.0.1:99999", good), None, 0,
                                         b"port from 0 to 65535"),
            "duplicate server block": (good + "server:\n  listen: 127.0.0.1:1\n", None, 0, b"appears twice"),
        }
        bad = self.st.state_dir / "bad.yml"
        for name, (text, chmod, mode, needle) in cases.items():
            with self.subTest(name):
                self.assertNotEqual(text if chmod is None else "changed", good, name)
                bad.write_text(text)
                os.chmod(bad, 0o644)
                target = {"config": bad, "key": self.st.server_key}.get(chmod)
                old_mode = target.stat().st_mode & 0o7777 if target else 0
                if target:
                    os.chmod(target, mode)
                try:
                    c = harness.run([harness.DAEMON, "--check-config", str(bad)], check=False, env=self.st.env())
                    d = harness.run([harness.DAEMON, "--config", str(bad)], check=False, env=self.st.env(), timeout=20)
                finally:
                    if target:
                        os.chmod(target, old_mode)
                self.assertEqual(c.returncode, 2, c.stderr)
                self.assertIn(needle, c.stderr)
                if chmod:
                    self.assertIn(b"chmod go-w " + str(target).encode(), c.stderr)
                self.assertEqual(d.returncode, 2, d.stderr)
                self.assertIn(c.stderr.strip().splitlines()[-1], d.stderr)

    def test_listen_override_out_of_range_is_refused(self):
        p = harness.run([harness.DAEMON, "--config", str(self.st.config), "--listen", "127.0.0.1:99999"], check=False,
                        env=self.st.env(), timeout=20)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"--listen '127.0.0.1:99999' must be HOST:PORT with a port from 0 to 65535", p.stderr)

    def test_world_readable_pinfile_is_refused(self):
        os.chmod(self.st.pinfile, 0o644)
        try:
            p = harness.run([harness.DAEMON, "--check-config", str(self.st.config)], check=False, env=self.st.env())
            self.assertEqual(p.returncode, 2)
            self.assertIn(b"chmod 600", p.stderr)
        finally:
            os.chmod(self.st.pinfile, 0o600)

    def test_tampered_audit_line_is_detected(self):
        d = harness.Daemon(self.st).start()
        try:
            for i in range(3):
                st, _, _ = d.sign("ec256", "CKM_ECDSA", hashlib.sha256(bytes([i])).digest())
                self.assertEqual(st, 200)
        finally:
            d.stop()
        lines = self.st.audit_file.read_text().splitlines()
        self.assertEqual(harness.run([harness.DAEMON, "audit-verify", str(self.st.audit_file)],
                                     check=False).returncode, 0)
        rec = json.loads(lines[1])
        rec["client.name"] = "someone-else"
        lines[1] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
        self.st.audit_file.write_text("\n".join(lines) + "\n")
        p = harness.run([harness.DAEMON, "audit-verify", str(self.st.audit_file)], check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"line 3", p.stdout)


class WrongPin(DaemonTest):
    start_daemon = False

    def test_wrong_pin_is_tried_once_and_reported(self):
        pins = self.st.pinfile
        good = pins.read_text()
        pins.write_text('demo: "wrongpin-7391"\n')
        os.chmod(pins, 0o600)
        try:
            self.daemon.start()
            time.sleep(2.5)  # several recovery periods: a retry loop would show up in the log
            log = self.daemon.log()
            self.assertEqual(log.count("wrong PIN"), 1, log)
            self.assertNotIn("wrongpin-7391", log)
            st, _, body = self.daemon.sign("ec256", "CKM_ECDSA", bytes(32))
            self.assertEqual(st, 503)
            self.assertEqual(json.loads(body)["code"], "token-login-failed")  # docs/relay-api.md
            self.assertNotIn("wrongpin-7391", body.decode() if isinstance(body, bytes) else body)
            # The key list leaves the token's keys out and says why (GET /v1/keys "unavailable").
            st, _, body = self.daemon.request("GET", "/v1/keys")
            self.assertEqual(st, 200)
            listing = json.loads(body)
            self.assertEqual(listing["keys"], [])
            self.assertEqual([u["code"] for u in listing["unavailable"]], ["token-login-failed"])
            self.assertIn("wrong PIN", listing["unavailable"][0]["detail"])
            self.assertEqual(listing["unavailable"][0]["token"]["label"], self.st.token_label)
            self.assertEqual(self.daemon.request("GET", "/health")[0], 503)
        finally:
            self.daemon.stop()
            pins.write_text(good)


import provision  # noqa: E402  (used by Configuration)

if __name__ == "__main__":
    harness.main()
