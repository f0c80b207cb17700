#!/usr/bin/python3
"""Operating p11relayd (issue 7): RFC 7512 pkcs11: URIs in the config, against a real SoftHSMv2 token over
real mutual TLS."""
import base64
import json
import os
import re
import tempfile
import unittest
from pathlib import Path

import harness
from harness import Daemon, make_state, openssl_verify, run


class UriConfig(unittest.TestCase):
    """tokens.T.uri and keys.K.uri select the same token and keys as label/serial and label/id."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-ops-"))
        cls.st = make_state(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        harness.remove_tmp(cls.tmp)

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


if __name__ == "__main__":
    harness.main()
