#!/usr/bin/python3
"""Transparent recovery, concurrency and fork safety of p11relay-pkcs11.so against a real p11relayd:
a daemon restart between C_SignInit and C_Sign, failover to a second daemon in the middle of 1000
signatures, 8 threads signing at once, and a forked child signing with its parent's initialised module.
Driven by shim-driver (tests/shim-driver/shim_driver.cpp), which dlopens the module; every signature is
verified with C_Verify against the public key."""
import json
import os
import subprocess
import time

from shim_util import DRIVER, PIN, SHIM, Daemon, ShimTest, main, write_client_config


class RecoveryTest(ShimTest):
    def restart_between_init_and_sign(self, key, mech, action, env=None):
        p = subprocess.Popen([DRIVER, SHIM, PIN, key, mech, "restart"], env=env or self.env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with p:
            try:
                line = p.stdout.readline()
                self.assertEqual(line.strip(), b"READY", p.stderr.read() if not line else line)
                action()
                out, err = p.communicate(b"go\n", timeout=120)
            finally:
                if p.poll() is None:
                    p.kill()
        return p.returncode, out, err

    def test_daemon_restart_between_signinit_and_sign(self):
        # With the default retry budget (retries: 3).
        cfg = write_client_config(self.tmp / "client-default-retries.yml", self.st, [self.daemon.url],
                                  extra_remote={"retries": 3})
        env = dict(self.env, P11RELAY_CONFIG=str(cfg))
        for key, mech in (("rsa2048", "SHA256_RSA_PKCS"), ("ec256", "ECDSA_SHA256")):
            with self.subTest(key=key):
                rc, out, err = self.restart_between_init_and_sign(key, mech, self.daemon.restart, env=env)
                self.assertEqual(rc, 0, err.decode() + self.shim_log()[-2000:])
                self.assertIn(b"OK", out)

    def test_daemon_down_for_a_while(self):
        def outage():
            self.daemon.stop()
            time.sleep(1.5)
            self.daemon.start(port=self.daemon.port)
        rc, out, err = self.restart_between_init_and_sign("rsapss", "SHA256_RSA_PKCS_PSS", outage)
        self.assertEqual(rc, 0, err.decode() + self.shim_log()[-2000:])

    def test_errors_after_retries_are_device_errors(self):
        cfg = write_client_config(self.tmp / "client-noretry.yml", self.st, [self.daemon.url],
                                  extra_remote={"retries": 1, "connecttimeout": 1})
        env = dict(self.env, P11RELAY_CONFIG=str(cfg))
        try:
            t0 = time.monotonic()
            rc, out, err = self.restart_between_init_and_sign("ec256", "ECDSA_SHA256", self.daemon.stop, env=env)
            self.assertNotEqual(rc, 0)
            self.assertIn(b"C_Sign", err)
            self.assertIn(b"0x00000030", err)  # CKR_DEVICE_ERROR
            self.assertLess(time.monotonic() - t0, 30)
        finally:
            self.daemon.start(port=self.daemon.port)

    def test_eight_threads(self):
        for key, mech in (("ec256", "ECDSA_SHA256"), ("rsa2048", "SHA256_RSA_PKCS")):
            with self.subTest(key=key):
                p = self.driver(key, mech, "threads", 8, 25)
                self.assertIn(b"DONE ok=200 failed=0", p.stdout)

    def test_forked_child_signs_with_the_parents_module(self):
        p = self.driver("ec256", "ECDSA_SHA256", "fork")
        self.assertIn(b"CHILD OK", p.stdout)
        self.assertIn(b"PARENT OK", p.stdout)


class FailoverTest(ShimTest):
    """Two daemons serving the same token; the first is stopped in the middle of 1000 signatures."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.second = Daemon(cls.st).start()
        cls.client_config = write_client_config(cls.tmp / "client.yml", cls.st, [cls.daemon.url, cls.second.url])

    @classmethod
    def tearDownClass(cls):
        cls.second.stop()
        super().tearDownClass()

    def test_stop_one_daemon_mid_run(self):
        p = subprocess.Popen([DRIVER, SHIM, PIN, "ec256", "ECDSA_SHA256", "loop", "1000"], env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stopped_at = None
        lines = []
        with p:
            try:
                for raw in p.stdout:
                    line = raw.decode().strip()
                    lines.append(line)
                    if stopped_at is None and line.isdigit() and int(line) >= 200:
                        self.daemon.kill()  # no goodbye: connections just die
                        stopped_at = int(line)
                p.wait(timeout=300)
            finally:
                if p.poll() is None:
                    p.kill()
            err = p.stderr.read().decode()
        self.assertIsNotNone(stopped_at, lines)
        self.assertEqual(p.returncode, 0, err + self.shim_log()[-3000:])
        self.assertIn("DONE 1000 signatures, 0 failures", lines)
        # The second daemon did the rest: the first was killed at signature ~200, and every one of the 1000
        # has its audit line (both daemons append to the same state directory's audit file).
        audited = [json.loads(line) for line in self.st.audit_file.read_text().splitlines() if line.strip()]
        self.assertGreaterEqual(sum(1 for a in audited if a.get("sig.keyname") == "ec256" and a.get("outcome") == "ok"),
                                1000)


if __name__ == "__main__":
    main()
