#!/usr/bin/python3
"""NSS with p11relay-pkcs11.so: `modutil -add` registers the module in a fresh NSS database, `certutil -L -h
all` lists the token's certificates, and pesign (an NSS signer) signs an EFI application with the remote RSA
key; `pesign -S`, `sbverify --cert` and `osslsigncode verify` check the signature. pesign reads the token
PIN from its terminal only, so the test gives it one (a pty). Skipped without libnss3-tools or pesign."""
import os
import pty
import select
import shutil
import termios
import time
import unittest
from pathlib import Path

import harness
from shim_util import PIN, SHIM, TOKEN_LABEL, ShimTest, main, make_efi, run


def answer_when_echo_is_off(fd: int, pin: str) -> None:
    """NSS turns echo off after its prompt with TCSAFLUSH, which discards input typed before: wait for it."""
    deadline = time.monotonic() + 5
    while termios.tcgetattr(fd)[3] & termios.ECHO and time.monotonic() < deadline:
        time.sleep(0.01)
    os.write(fd, pin.encode() + b"\n")


def run_with_pin_prompt(cmd, pin: str, env: dict, timeout: float = 120) -> tuple[int, bytes]:
    """Runs cmd on a pseudo-terminal and answers NSS's "Enter Password or Pin" prompts with pin."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal (/dev/tty)
        os.execvpe(cmd[0], cmd, env)
    out, answered, deadline = b"", 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if out.count(b"Enter Password or Pin") > answered:
                answer_when_echo_is_off(fd, pin)
                answered += 1
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)  # before closing the terminal, which would send the child SIGHUP
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out


class NSSTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        for tool in ("modutil", "certutil"):
            if not shutil.which(tool):
                raise unittest.SkipTest("libnss3-tools not installed (modutil, certutil)")
        super().setUpClass()
        cls.db = f"sql:{cls.tmp / 'nssdb'}"
        (cls.tmp / "nssdb").mkdir()
        cls.pwfile = cls.tmp / "token-pin.txt"
        cls.pwfile.write_text(PIN + "\n")
        cls.pwfile.chmod(0o600)
        run(["certutil", "-N", "-d", cls.db, "--empty-password"])
        # modutil asks for confirmation on a terminal unless -force.
        p = run(["modutil", "-dbdir", cls.db, "-add", "p11relay", "-libfile", SHIM, "-force"], env=cls.env)
        assert b"added to database" in p.stdout, p.stdout + p.stderr

    def test_modutil_lists_the_module_and_token(self):
        out = self.run_tool(["modutil", "-dbdir", self.db, "-list", "p11relay"]).stdout.decode()
        self.assertIn(f"Token Name: {TOKEN_LABEL}", out)

    def test_certutil_lists_the_token_certificates(self):
        out = self.run_tool(["certutil", "-L", "-h", "all", "-d", self.db, "-f", str(self.pwfile)]).stdout.decode()
        for label in ("rsa2048", "ec256", "ec384"):
            self.assertIn(f"{TOKEN_LABEL}:{label}", out)
        # The certificate NSS reads from the token is the daemon's. A lookup by nickname logs in to the
        # token (certutil asks for the PIN on its terminal then, ignoring -f).
        rc, out = run_with_pin_prompt(["certutil", "-L", "-d", self.db, "-n", f"{TOKEN_LABEL}:rsa2048", "-a"], PIN,
                                      harness.foreign_env(self.env))
        self.assertEqual(rc, 0, out)
        pem = out[out.index(b"-----BEGIN CERTIFICATE-----"):].replace(b"\r", b"")
        der_nss = run(["openssl", "x509", "-outform", "DER"], input=pem).stdout
        der_daemon = run(["openssl", "x509", "-outform", "DER", "-in", str(self.cert("rsa2048"))]).stdout
        self.assertEqual(der_nss, der_daemon)

    def test_pesign_signs_an_efi_binary(self):
        if not shutil.which("pesign"):
            self.skipTest("pesign not installed")
        efi = make_efi(self.tmp)
        signed = self.tmp / "pesign-signed.efi"
        # -t names the NSS token, -c the certificate's nickname within it (its CKA_LABEL).
        rc, out = run_with_pin_prompt(["pesign", "-n", self.db, "-t", TOKEN_LABEL, "-c", "rsa2048", "-s",
                                       "-i", str(efi), "-o", str(signed), "-f"], PIN, harness.foreign_env(self.env))
        self.assertEqual(rc, 0, out.decode(errors="replace") + self.shim_log()[-2000:])
        shown = run(["pesign", "-S", "-i", str(signed)]).stdout.decode()
        self.assertIn("The signer's common name is rsa2048", shown)
        if shutil.which("sbverify"):
            p = run(["sbverify", "--cert", str(self.cert("rsa2048")), str(signed)], check=False)
            self.assertIn(b"Signature verification OK", p.stdout, p.stdout + p.stderr)
            p = run(["sbverify", "--cert", str(self.cert("ec256")), str(signed)], check=False)
            self.assertNotEqual(p.returncode, 0)
        if shutil.which("osslsigncode"):
            p = run(["osslsigncode", "verify", "-in", str(signed), "-CAfile", str(self.cert("rsa2048"))],
                    check=False)
            self.assertIn(b"Signature verification: ok", p.stdout, p.stdout + p.stderr)


if __name__ == "__main__":
    main()
