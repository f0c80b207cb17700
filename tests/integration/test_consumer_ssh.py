#!/usr/bin/python3
"""OpenSSH with p11relay-pkcs11.so as its PKCS#11 provider: `ssh-keygen -D` lists the token's public keys
(checked against the certificates' keys), `ssh -I` and `-o PKCS11Provider=` log in to an sshd this test
starts on 127.0.0.1 with the token key, and `ssh-add -s` loads the key into an ssh-agent the test starts,
through which ssh logs in again. sshd is the verifier: it accepts the login only with a valid signature by a
key in its AuthorizedKeysFile. Skipped without openssh-client and openssh-server."""
import os
import shutil
import subprocess
import time
import unittest
from pathlib import Path

import harness
from shim_util import PIN, SHIM, ShimTest, main, run

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class OpenSSHTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not (shutil.which("ssh") and shutil.which("ssh-keygen") and shutil.which("ssh-agent")):
            raise unittest.SkipTest("openssh-client not installed")
        if not Path(SSHD).exists():
            raise unittest.SkipTest("openssh-server not installed (sshd)")
        if harness.SANITIZER_PRELOAD:
            raise unittest.SkipTest("ssh-pkcs11-helper clears LD_PRELOAD: the instrumented shim cannot load")
        super().setUpClass()
        cls.user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        cls.ssh_dir = cls.tmp / "ssh"
        cls.ssh_dir.mkdir()
        # ssh asks for the token PIN through SSH_ASKPASS when it has no terminal.
        askpass = cls.ssh_dir / "askpass"
        askpass.write_text(f"#!/bin/sh\necho '{PIN}'\n")
        askpass.chmod(0o700)
        cls.env = dict(cls.env, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        cls.env.pop("SSH_AUTH_SOCK", None)
        cls.public_keys = cls.keygen_d()
        cls.start_sshd()

    @classmethod
    def tearDownClass(cls):
        for proc in (getattr(cls, "sshd", None), getattr(cls, "agent", None)):
            if proc and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        super().tearDownClass()

    @classmethod
    def keygen_d(cls) -> list[str]:
        p = subprocess.run(["ssh-keygen", "-D", SHIM], env=cls.env, capture_output=True, timeout=120)
        if p.returncode != 0:
            raise AssertionError(f"ssh-keygen -D failed: {p.stderr.decode()}")
        return p.stdout.decode().splitlines()

    @classmethod
    def start_sshd(cls):
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        host_key = cls.ssh_dir / "host_ed25519"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        # Only the rsa2048 key may log in: a login proves that this key signed.
        cls.authorized = cls.ssh_dir / "authorized_keys"
        cls.authorized.write_text(cls.ssh_key_of("rsa2048") + "\n")
        cls.port = harness.free_port()
        cfg = cls.ssh_dir / "sshd_config"
        cfg.write_text(f"""ListenAddress 127.0.0.1:{cls.port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {cls.authorized}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
LogLevel VERBOSE
""")
        cls.sshd_log = cls.ssh_dir / "sshd.log"
        with open(cls.sshd_log, "wb") as log:
            cls.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=log,
                                        env={"PATH": "/usr/sbin:/usr/bin:/bin"})
        known = cls.ssh_dir / "known_hosts"
        known.write_text(f"[127.0.0.1]:{cls.port} " + Path(str(host_key) + ".pub").read_text())
        cls.known = known
        deadline = time.monotonic() + 10
        while b"Server listening" not in cls.sshd_log.read_bytes():
            if cls.sshd.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sshd did not start:\n{cls.sshd_log.read_text()}")
            time.sleep(0.05)

    @classmethod
    def ssh_key_of(cls, label: str) -> str:
        """The certificate's public key in OpenSSH form, computed without the module."""
        pub = cls.tmp / f"{label}.pub.pem"
        run(["openssl", "x509", "-in", str(Path(cls.st.keys[label].certfile)), "-pubkey", "-noout",
             "-out", str(pub)])
        return " ".join(run(["ssh-keygen", "-i", "-m", "PKCS8", "-f", str(pub)]).stdout.decode().split()[:2])

    def ssh(self, *opts, check=True, env=None):
        cmd = ["ssh", "-F", "/dev/null", "-p", str(self.port), "-o", f"UserKnownHostsFile={self.known}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=no", "-o", "PasswordAuthentication=no",
               "-o", "KbdInteractiveAuthentication=no", "-o", "IdentitiesOnly=no", *opts,
               f"{self.user}@127.0.0.1", "echo", "logged-in-with-token-key"]
        return self.run_tool(cmd, check=check, env=env, timeout=120)

    def accepted(self) -> int:
        return self.sshd_log.read_bytes().count(b"Accepted publickey")

    def assert_logged_in(self, before: int, p):
        self.assertIn(b"logged-in-with-token-key", p.stdout, p.stderr)
        self.assertEqual(self.accepted(), before + 1, self.sshd_log.read_text()[-2000:])

    def test_keygen_d_lists_the_token_keys(self):
        for label in ("rsa2048", "ec256", "ec384"):
            self.assertIn(self.ssh_key_of(label), [" ".join(line.split()[:2]) for line in self.public_keys])

    def test_ssh_dash_i(self):
        self.assert_logged_in(self.accepted(), self.ssh("-o", "IdentityAgent=none", "-I", SHIM))

    def test_pkcs11provider_option(self):
        before = self.accepted()
        self.assert_logged_in(before, self.ssh("-o", "IdentityAgent=none", "-o", f"PKCS11Provider={SHIM}"))

    def test_without_the_token_login_fails(self):
        p = self.ssh("-o", "IdentityAgent=none", "-o", f"IdentityFile={self.ssh_dir / 'none'}", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"Permission denied", p.stderr)

    def test_ssh_add_into_agent(self):
        sock = self.tmp / "agent.sock"
        # -P: the agent loads PKCS#11 modules only from an allow-list (default /usr/lib*/*).
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock), "-P", SHIM], env=self.env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        type(self).agent = agent
        deadline = time.monotonic() + 10
        while not sock.exists():
            self.assertLess(time.monotonic(), deadline, "ssh-agent did not start")
            time.sleep(0.05)
        env = dict(self.env, SSH_AUTH_SOCK=str(sock))
        self.run_tool(["ssh-add", "-s", SHIM], env=env)
        listed = self.run_tool(["ssh-add", "-L"], env=env).stdout.decode()
        self.assertIn(self.ssh_key_of("rsa2048"), listed)
        self.assert_logged_in(self.accepted(), self.ssh("-o", f"IdentityAgent={sock}", env=env))
        self.run_tool(["ssh-add", "-e", SHIM], env=env)
        p = self.run_tool(["ssh-add", "-L"], env=env, check=False)
        self.assertNotIn(self.ssh_key_of("rsa2048").encode(), p.stdout)


if __name__ == "__main__":
    main()
