#!/usr/bin/python3
"""Each failure class of the p11relay CLI has its own one-line message and exit code (docs/cli.md, "Exit codes
and errors"): a real p11relayd on a SoftHSMv2 token over real mutual TLS, set up to fail in one way at a time.

    3 unreachable   5 TLS trust   6 not registered   7 token unavailable   8 policy   9 approval   10 TSA
"""
import glob
import hashlib
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

import harness
from harness import Daemon, free_port, make_state, run

CLI = harness.CLI


def client_config(path: Path, url: str, client, cacert: Path, **extra) -> Path:
    lines = ["remote:", f"  url: {url}", f"  certfile: {client.certfile}", f"  keyfile: {client.keyfile}",
             f"  cacert: {cacert}", "  retries: 1"]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def a_pe_file():
    """A real PE DLL from Debian's mingw-w64 packages (test dependencies), or None."""
    for pattern in ("/usr/x86_64-w64-mingw32/lib/libwinpthread-1.dll", "/usr/i686-w64-mingw32/lib/libwinpthread-1.dll",
                    "/usr/lib/gcc/x86_64-w64-mingw32/*/libgcc_s_seh-1.dll"):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


class CliErrorTest(unittest.TestCase):
    """A daemon per class on its own token copy, set up by configure(); the CLI with its own HOME."""

    @classmethod
    def configure(cls, st):
        pass

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-cli-errors-"))
        cls.st = make_state(cls.tmp)
        cls.configure(cls.st)
        cls.daemon = Daemon(cls.st).start()
        cls.config = client_config(cls.tmp / "client.yml", cls.daemon.url, cls.st.client, cls.st.ca_cert)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        harness.remove_tmp(cls.tmp)

    def cli(self, *args, config=None):
        env = dict(os.environ, HOME=str(self.tmp / "home"))
        env.pop("P11RELAY_CONFIG", None)
        return subprocess.run([CLI, "-c", str(config or self.config), *map(str, args)], env=env,
                              capture_output=True, timeout=120)

    def assert_class(self, p, code, *needles):
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, code, err)
        lines = err.splitlines()
        # One line for the error; before it only the progress line of a held request.
        self.assertTrue(all("waiting for approval" in line for line in lines[:-1]), err)
        self.assertTrue(lines[-1].startswith("p11relay: error: "), err)
        for n in needles:
            self.assertIn(n, lines[-1])


class ErrorClasses(CliErrorTest):
    """rsa2048 plain, ec256 refused by policy for SHA-256, ec384 held for an approver."""

    @classmethod
    def configure(cls, st):
        cfg = st.daemon_config()
        cfg["keys"]["ec256"]["policy"] = {"digests": ["sha384"]}
        cfg["keys"]["ec384"]["policy"] = {"approval": "required", "approvers": ["admin"], "approvaltimeout": 600}
        cfg["server"]["statedir"] = str(st.state_dir / "policy-state")
        st.write_config(config=cfg)

    def sign_digest(self, key, *extra, config=None, alg="sha256"):
        d = hashlib.new(alg, b"error classes").hexdigest()
        return self.cli("sign-digest", "--key", key, "--digest-alg", alg, "--hex", d, "--format", "hex", *extra,
                        config=config)

    def test_it_works_when_nothing_is_wrong(self):
        self.assertEqual(self.sign_digest("rsa2048").returncode, 0)

    def test_3_unreachable(self):
        cfg = client_config(self.tmp / "down.yml", f"https://127.0.0.1:{free_port()}/", self.st.client,
                            self.st.ca_cert)
        self.assert_class(self.sign_digest("rsa2048", config=cfg), 3, "cannot reach the daemon", "connect")

    def test_5_tls_trust(self):
        other = self.tmp / "other-ca"
        other.mkdir(exist_ok=True)
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(other / "ca.key"), "-out", str(other / "ca.pem"), "-subj", "/CN=Some other CA",
             "-days", "2"])
        cfg = client_config(self.tmp / "wrong-ca.yml", self.daemon.url, self.st.client, other / "ca.pem")
        for args in (["list-keys"], ["sign-digest", "--key", "rsa2048", "--hex", "00" * 32, "--format", "hex"]):
            p = self.cli(*args, config=cfg)
            self.assert_class(p, 5, "certificate is not trusted", "remote.cacert")
            self.assertNotIn(b"cannot reach", p.stderr)
        # A daemon key other than the pinned one.
        cfg = client_config(self.tmp / "wrong-pin.yml", self.daemon.url, self.st.client, self.st.ca_cert,
                            serverfingerprint="ab" * 32)
        self.assert_class(self.cli("list-keys", config=cfg), 5, "does not match serverfingerprint")

    def test_6_not_registered(self):
        stranger = self.st.make_client("errors-stranger")
        cfg = client_config(self.tmp / "stranger.yml", self.daemon.url, stranger, self.st.ca_cert)
        self.assert_class(self.cli("list-keys", config=cfg), 6, "p11relay register", stranger.fingerprint)
        self.assert_class(self.sign_digest("rsa2048", config=cfg), 6, "p11relay register")
        p = self.cli("doctor", config=cfg)
        self.assertEqual(p.returncode, 6, p.stdout)
        self.assertIn(b"does not accept this client", p.stderr)

    def test_4_refused_unknown_key(self):
        self.assert_class(self.cli("get-key", "no-such-key"), 4, "key 'no-such-key' does not exist")

    def test_8_policy(self):
        self.assert_class(self.sign_digest("ec256"), 8, "policy refused", "sha256")
        self.assertEqual(self.sign_digest("ec256", alg="sha384").returncode, 0)

    def test_9_approval_not_given_in_time(self):
        cfg = client_config(self.tmp / "impatient.yml", self.daemon.url, self.st.client, self.st.ca_cert,
                            approvalwait=1)
        self.assert_class(self.sign_digest("ec384", config=cfg, alg="sha384"), 9, "no decision on request",
                          "remote.approvalwait")

    def test_10_timestamp_authority(self):
        pe = a_pe_file()
        if pe is None:
            self.skipTest("no mingw-w64 PE file (packages in scripts/packages.txt [test])")
        f = self.tmp / pe.name
        f.write_bytes(pe.read_bytes())
        out = self.tmp / ("signed-" + pe.name)
        p = self.cli("sign", "--key", "rsa2048", "--file", f, "--output", out,
                     "--timestamp-url", f"http://127.0.0.1:{free_port()}/")
        self.assert_class(p, 10, "timestamp authority failed")
        self.assertFalse(out.exists())


class TokenUnavailable(CliErrorTest):
    """The daemon's login to its token was refused (a wrong PIN on the appliance): exit 7 and that cause, never
    "key does not exist" or an empty list with exit 0."""

    @classmethod
    def configure(cls, st):
        st.pinfile.write_text('demo: "wrongpin-5521"\n')
        os.chmod(st.pinfile, 0o600)

    def test_7_login_refused(self):
        for args in (["list-keys"], ["get-key", "rsa2048"],
                     ["sign-digest", "--key", "rsa2048", "--hex", "00" * 32, "--format", "hex"]):
            p = self.cli(*args)
            self.assert_class(p, 7, "refused its login", self.st.token_label)
            self.assertNotIn(b"does not exist", p.stderr)
            self.assertNotIn(b"wrongpin-5521", p.stderr)
        p = self.cli("doctor")
        self.assertEqual(p.returncode, 7, p.stdout)
        self.assertIn(b"token is not available", p.stdout)


if __name__ == "__main__":
    harness.main()
