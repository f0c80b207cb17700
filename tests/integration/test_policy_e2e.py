#!/usr/bin/python3
"""Approval workflow end to end (docs/policy.md): a real p11relayd with a key whose policy needs an
administrator's approval, a real SoftHSMv2 token, real mutual TLS, and real clients: the PKCS#11 module loaded
by OpenSC's pkcs11-tool, and the p11relay CLI — one certificate submits, an admin's second certificate decides.

Independent checks: openssl verifies the signatures, osslsigncode the Authenticode file.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import harness
from harness import Daemon, make_state, openssl_verify, run
from shim_util import PIN, write_client_config as write_shim_config
from test_cli import system_dlls, write_client_config as write_cli_config

CLI = harness.CLI
SHIM = harness.SHIM
OSSLSIGNCODE = shutil.which("osslsigncode")
PKCS11_TOOL = shutil.which("pkcs11-tool")
EXPIRY = 5  # seconds: approvaltimeout of the ec256 key
WAIT = 60   # bound on any single wait in these tests


class PolicyE2E(unittest.TestCase):
    """rsa2048 (CKA_ID 01): approval required, approvers [admin]. ec256 (02): approval required, expires after
    EXPIRY seconds. Clients: demo (signers) submits, admin (admin) decides, dev2 (signers) may not decide."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-policy-"))
        cls.st = make_state(cls.tmp, harness.provision.DEFAULT_KEYS)
        cls.admin = cls.st.make_client("admin", roles=["admin"])
        cls.dev2 = cls.st.make_client("dev2", roles=["signers"])
        cfg = cls.st.daemon_config(clients=[cls.st.client, cls.admin, cls.dev2])
        cfg["keys"]["rsa2048"]["policy"] = {"approval": "required", "approvers": ["admin"], "approvaltimeout": 600}
        cfg["keys"]["ec256"]["policy"] = {"approval": "required", "approvers": ["admin"], "approvaltimeout": EXPIRY}
        cfg["server"]["statedir"] = str(cls.st.state_dir / "policy-state")
        cls.st.write_config(config=cfg)
        cls.cfg = cfg
        cls.daemon = Daemon(cls.st).start()
        url = cls.daemon.url
        cls.demo_cfg = write_cli_config(cls.tmp / "demo.yml", url, cls.st)
        cls.admin_cfg = write_cli_config(cls.tmp / "admin.yml", url, cls.st, cls.admin)
        cls.dev2_cfg = write_cli_config(cls.tmp / "dev2.yml", url, cls.st, cls.dev2)
        cls.shim_cfg = write_shim_config(cls.tmp / "shim.yml", cls.st, [url])

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        harness.remove_tmp(cls.tmp)

    def tearDown(self):
        # No test leaves a request pending for the next one.
        for r in self.requests(self.admin_cfg):
            self.decide("deny", r, "--reason", "test cleanup", check=False)

    # -- helpers -----------------------------------------------------------------------------------------
    def env(self, **extra):
        e = dict(os.environ)
        e.pop("P11RELAY_CONFIG", None)
        e.pop("SOFTHSM2_CONF", None)
        e["HOME"] = str(self.tmp / "home")
        e.update(extra)
        return e

    def cli(self, config, *args, check=True, timeout=WAIT):
        p = subprocess.run([CLI, "-c", str(config), *map(str, args)], env=self.env(), capture_output=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"p11relay {args} failed ({p.returncode}):\n{p.stdout.decode(errors='replace')}\n"
                                 f"{p.stderr.decode(errors='replace')}\n--- daemon log ---\n{self.daemon.log()[-3000:]}")
        return p

    def start_cli(self, *args, config=None) -> subprocess.Popen:
        return subprocess.Popen([CLI, "-c", str(config or self.demo_cfg), *map(str, args)], env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def start_sign_digest(self, key: str, digest: bytes, out: Path, *extra, config=None) -> subprocess.Popen:
        """`p11relay sign-digest` of a SHA-256 `digest` with `key`, as the demo client, in the background."""
        return self.start_cli("sign-digest", "--key", key, "--digest-alg", "sha256", "--hex", digest.hex(), *extra,
                              "--out", out, config=config)

    def start_pkcs11_tool(self, mech: str, key_id: str, sig: Path) -> subprocess.Popen:
        # Input of its own per test: the daemon hands a signed request back to a repeated identical one.
        self.data = self.tmp / f"{self.id()}.data"
        self.data.write_bytes(f"{self.id()}: signed only after an administrator said yes\n".encode() * 100)
        return subprocess.Popen([PKCS11_TOOL, "--module", SHIM, "--login", "--pin", PIN, "-s", "-m", mech,
                                 "--id", key_id, "-i", str(self.data), "-o", str(sig)],
                                env=harness.foreign_env(self.env(P11RELAY_CONFIG=str(self.shim_cfg))),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def requests(self, config, *extra) -> list:
        return json.loads(self.cli(config, "requests", "list", "--json", *extra).stdout)["requests"]

    def wait_pending(self, key: str, proc: subprocess.Popen) -> dict:
        """The one pending request for `key`, as the admin sees it, once the submitter is blocked on it."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            mine = [r for r in self.requests(self.admin_cfg) if r["key"] == key]
            if mine:
                self.assertEqual(len(mine), 1, mine)
                self.assertIsNone(proc.poll(), "the submitter did not wait for the decision")
                return mine[0]
            if proc.poll() is not None:
                out, err = proc.communicate()
                self.fail(f"the submitter ended ({proc.returncode}) before its request was pending:\n"
                          f"{out.decode(errors='replace')}\n{err.decode(errors='replace')}\n{self.daemon.log()[-3000:]}")
            time.sleep(0.2)
        self.fail("no pending request appeared")

    @contextlib.contextmanager
    def pending(self, key: str, proc: subprocess.Popen):
        """The submitter's pending request for `key` once `proc` waits on it (see wait_pending); `proc` is
        killed on the way out, so a failing test leaves no process behind."""
        try:
            yield self.wait_pending(key, proc)
        finally:
            proc.kill()

    def decide(self, action: str, req: dict, *args, config=None, check=True):
        """p11relay requests ACTION ID ARGS, as the admin unless `config` names another client."""
        return self.cli(config or self.admin_cfg, "requests", action, req["id"], *args, check=check)

    def finish(self, proc: subprocess.Popen):
        out, err = proc.communicate(timeout=WAIT)
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def pubkey(self, label: str) -> Path:
        pub = self.tmp / f"{label}.pub.pem"
        run(["openssl", "x509", "-in", str(self.st.keys[label].certfile), "-pubkey", "-noout", "-out", str(pub)])
        return pub

    # -- the shim ----------------------------------------------------------------------------------------
    @unittest.skipUnless(PKCS11_TOOL, "pkcs11-tool not installed")
    def test_shim_c_sign_blocks_until_an_admin_approves(self):
        sig = self.tmp / "approved.sig"
        proc = self.start_pkcs11_tool("SHA256-RSA-PKCS", "01", sig)
        with self.pending("rsa2048", proc) as req:
            self.assertEqual(req["client"], "demo")
            self.assertEqual(req["mechanism"], "CKM_RSA_PKCS")
            self.assertEqual(req["digest"], "sha256")
            time.sleep(1)
            self.assertIsNone(proc.poll(), "C_Sign returned before the decision")
            p = self.decide("approve", req, "--comment", "e2e")
            self.assertIn("approved", p.stdout.decode())
            code, out, err = self.finish(proc)
        self.assertEqual(code, 0, out + err)
        v = run(["openssl", "dgst", "-sha256", "-verify", str(self.pubkey("rsa2048")), "-signature", str(sig),
                 str(self.data)])
        self.assertIn(b"Verified OK", v.stdout)
        done = [r for r in self.requests(self.admin_cfg, "--all") if r["id"] == req["id"]]
        self.assertEqual(done[0]["state"], "signed", done)
        self.assertEqual(done[0]["decided_by"], "admin", done)
        self.assertNotIn("signature", done[0])  # never to the approver

    @unittest.skipUnless(PKCS11_TOOL, "pkcs11-tool not installed")
    def test_shim_denial_is_ckr_function_rejected(self):
        proc = self.start_pkcs11_tool("SHA256-RSA-PKCS", "01", self.tmp / "denied.sig")
        with self.pending("rsa2048", proc) as req:
            self.decide("deny", req, "--reason", "not a release build")
            code, out, err = self.finish(proc)
        self.assertNotEqual(code, 0)
        self.assertRegex(out + err, r"CKR_FUNCTION_REJECTED|\(0x200\)")  # older OpenSC prints only the value

    @unittest.skipUnless(PKCS11_TOOL, "pkcs11-tool not installed")
    def test_shim_expiry_is_ckr_function_canceled(self):
        proc = self.start_pkcs11_tool("ECDSA-SHA256", "02", self.tmp / "expired.sig")
        with self.pending("ec256", proc):
            code, out, err = self.finish(proc)  # nobody decides
        self.assertNotEqual(code, 0)
        self.assertRegex(out + err, r"CKR_FUNCTION_CANCELED|\(0x50\)")

    # -- the CLI -----------------------------------------------------------------------------------------
    def test_list_keys_and_doctor_know_which_keys_wait_for_an_approver(self):
        p = self.cli(self.demo_cfg, "list-keys", "--long")
        self.assertEqual(p.stdout.decode().count("approval:     required"), 2, p.stdout)
        p = self.cli(self.demo_cfg, "doctor")
        out = p.stdout.decode()
        for key in ("rsa2048", "ec256"):
            self.assertIn(f"key {key} needs an approver's decision for each signature by this client: no test "
                          "signature", out)
        self.assertNotIn("[WARN] test signature", out)
        self.assertEqual(self.requests(self.admin_cfg), [])  # doctor left no request for the approvers

    def test_cli_denial_exits_9_with_the_reason(self):
        proc = self.start_sign_digest("rsa2048", hashlib.sha256(b"denied").digest(), self.tmp / "cli-denied.sig",
                                      "--filename", "setup.msi", "--filesize", "4242")
        with self.pending("rsa2048", proc) as req:
            self.assertEqual(req["filename"], "setup.msi")
            self.assertEqual(req["filesize"], 4242)
            self.decide("deny", req, "--reason", "not a release build")
            code, out, err = self.finish(proc)
        self.assertEqual(code, 9, err)  # not approved (docs/cli.md)
        self.assertIn(f"waiting for approval of request {req['id']} (expires ", err)
        self.assertIn("not a release build", err)
        self.assertIn("denied by admin", err)
        self.assertFalse((self.tmp / "cli-denied.sig").exists())

    def test_cli_expiry_exits_9(self):
        proc = self.start_sign_digest("ec256", hashlib.sha256(b"expires").digest(), self.tmp / "cli-expired.sig")
        with self.pending("ec256", proc) as req:
            code, out, err = self.finish(proc)
        self.assertEqual(code, 9, err)
        self.assertIn(f"request {req['id']}", err)
        self.assertIn("expired", err)

    def test_non_admin_cannot_see_or_approve(self):
        digest = hashlib.sha256(b"four eyes").digest()
        sig = self.tmp / "cli-approved.sig"
        proc = self.start_sign_digest("rsa2048", digest, sig)
        with self.pending("rsa2048", proc) as req:
            self.assertEqual(self.requests(self.dev2_cfg), [])
            for cfg in (self.dev2_cfg, self.demo_cfg):  # another signer, and the submitter itself
                p = self.decide("approve", req, config=cfg, check=False)
                self.assertEqual(p.returncode, 4, p.stderr)
                err = p.stderr.decode()
                self.assertEqual(err.count("\n"), 1, err)
                self.assertIn(f"request {req['id']} does not exist or this client may not see or decide it", err)
                self.assertIsNone(proc.poll())
            p = self.decide("show", req)
            self.assertIn("state:        pending", p.stdout.decode())
            self.decide("approve", req)
            code, out, err = self.finish(proc)
        self.assertEqual(code, 0, err)
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, digest, sig.read_bytes(), self.tmp))
        p = self.decide("approve", req, check=False)
        self.assertEqual(p.returncode, 4, p.stderr)
        self.assertIn("no longer pending", p.stderr.decode())

    def test_waiting_survives_a_daemon_restart(self):
        digest = hashlib.sha256(b"restart").digest()
        sig = self.tmp / "restart.sig"
        proc = self.start_sign_digest("rsa2048", digest, sig)
        with self.pending("rsa2048", proc) as req:
            self.daemon.restart()
            time.sleep(1)
            self.assertIsNone(proc.poll(), "the client gave up when the daemon restarted")
            self.decide("approve", req)
            code, out, err = self.finish(proc)
        self.assertEqual(code, 0, err)
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, digest, sig.read_bytes(), self.tmp))
        self.assertEqual(len(re.findall(r"waiting for approval", err)), 1, err)

    def test_the_wait_stays_with_the_daemon_that_holds_the_request(self):
        """remote.urls names this daemon and a sibling with its own state directory. While the daemon holding the
        request is down, the client waits for it: the sibling does not know the request (403)."""
        sibling_cfg = json.loads(json.dumps(self.cfg))
        sibling_cfg["server"]["statedir"] = str(self.st.state_dir / "policy-state-sibling")
        sibling = Daemon(self.st, config=self.st.write_config(self.st.state_dir / "sibling.yml", config=sibling_cfg))
        sibling.start()
        self.addCleanup(sibling.stop)
        both = write_cli_config(self.tmp / "both.yml", self.daemon.url, self.st)
        both.write_text(both.read_text().replace(f"url: {self.daemon.url}", f"urls: [{self.daemon.url}, {sibling.url}]"))
        digest = hashlib.sha256(b"held by the first daemon").digest()
        sig = self.tmp / "sibling.sig"
        proc = self.start_sign_digest("rsa2048", digest, sig, config=both)
        with self.pending("rsa2048", proc) as req:
            self.daemon.stop()
            try:
                time.sleep(2)  # the client's polls fail meanwhile; the sibling is up
                self.assertIsNone(proc.poll(), "the client gave up (or asked the sibling) while its daemon was down")
            finally:
                self.daemon.start(port=self.daemon.port)
            self.decide("approve", req)
            code, out, err = self.finish(proc)
        self.assertEqual(code, 0, err)
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, digest, sig.read_bytes(), self.tmp))

    @unittest.skipUnless(OSSLSIGNCODE, "osslsigncode not installed")
    def test_authenticode_sign_completes_after_approval(self):
        dlls = system_dlls()
        if not dlls:
            self.skipTest("no mingw DLLs installed")
        pe = self.tmp / "app.dll"
        shutil.copyfile(dlls[0], pe)
        signed = self.tmp / "app-signed.dll"
        proc = self.start_cli("sign", "--key", "rsa2048", "--file", pe, "--output", signed)
        with self.pending("rsa2048", proc) as req:
            self.assertEqual(req["filename"], "app.dll")
            self.assertEqual(req["filesize"], pe.stat().st_size)
            self.decide("approve", req)
            code, out, err = self.finish(proc)
        self.assertEqual(code, 0, err)
        v = subprocess.run([OSSLSIGNCODE, "verify", "-in", str(signed), "-CAfile", str(self.st.keys["rsa2048"].certfile)],
                           capture_output=True, timeout=WAIT)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertIn(b"Signature verification: ok", v.stdout + v.stderr)


if __name__ == "__main__":
    harness.main()
