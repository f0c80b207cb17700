#!/usr/bin/python3
"""A Go signing console against p11relay-pkcs11.so: tests/consumers/go/p11console, built here from Debian's
golang-github-miekg-pkcs11-dev and golang-github-thalesignite-crypto11-dev in GOPATH mode (no module proxy,
no network), gets the five fields of a console's PKCS#11 option (module path, token label, key ID in hex,
certificate, PIN), finds the token and the key, checks the certificate object and signs with RSA PKCS#1 v1.5,
RSA-PSS and ECDSA; openssl verifies every signature against the certificate. Skipped without Go or the
Debian Go packages (apt-get install golang-go golang-github-thalesignite-crypto11-dev)."""
import os
import shutil
import subprocess
import unittest
from pathlib import Path

import harness
from shim_util import PIN, SHIM, TOKEN_LABEL, ShimTest, main, run, write_client_config

GOCODE = Path("/usr/share/gocode")
SOURCE = harness.SOURCE_ROOT / "tests" / "consumers" / "go" / "p11console" / "main.go"


def go_env(tmp: Path) -> dict:
    """GOPATH mode over Debian's packaged sources: no modules, no proxy, no network. The build cache sits in
    the build tree so a second run does not recompile cgo."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(GO111MODULE="off", GOPATH=f"{tmp / 'gopath'}:{GOCODE}", GOPROXY="off", GOFLAGS="",
               GOCACHE=str(harness.BUILD / "tests" / "go-cache"), GOTOOLCHAIN="local", CGO_ENABLED="1")
    return env


class GoConsoleTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("go"):
            raise unittest.SkipTest("go not installed (golang-go)")
        for pkg in ("github.com/miekg/pkcs11", "github.com/ThalesIgnite/crypto11"):
            if not (GOCODE / "src" / pkg).is_dir():
                raise unittest.SkipTest(f"{pkg} not installed (Debian golang-*-dev package)")
        if harness.SANITIZER_PRELOAD:
            raise unittest.SkipTest("a Go program cannot run with a preloaded sanitizer runtime")
        super().setUpClass()
        cls.console = cls.tmp / "p11console"
        p = subprocess.run(["go", "build", "-o", str(cls.console), str(SOURCE)], env=go_env(cls.tmp),
                           capture_output=True, timeout=600)
        if p.returncode != 0:
            raise AssertionError(f"go build failed:\n{p.stdout.decode()}{p.stderr.decode()}")
        cls.message = cls.tmp / "message.txt"
        cls.message.write_bytes(b"signed by a Go console through p11relay\n" * 100)

    def console_sign(self, label: str, key_id: str, *, pin: str = PIN) -> tuple[Path, str]:
        out = self.tmp / f"go-{label}"
        out.mkdir(exist_ok=True)
        # The PIN goes on stdin, like a console's PIN field; never in argv.
        p = self.run_tool([str(self.console), "-module", SHIM, "-token", TOKEN_LABEL, "-id", key_id,
                           "-cert", str(self.cert(label)), "-in", str(self.message), "-out", str(out)],
                          input=(pin + "\n").encode())
        return out, p.stdout.decode()

    def verify(self, label: str, sig: Path, *pss):
        pub = self.tmp / f"{label}.pub.pem"
        run(["openssl", "x509", "-in", str(self.cert(label)), "-pubkey", "-noout", "-out", str(pub)])
        opts = [a for o in pss for a in ("-sigopt", o)]
        p = run(["openssl", "dgst", "-sha256", "-verify", str(pub), *opts, "-signature", str(sig),
                 str(self.message)], check=False)
        self.assertIn(b"Verified OK", p.stdout, p.stdout + p.stderr)
        # A signature over other data must not verify: the check above is not vacuous.
        other = self.tmp / "other.txt"
        other.write_bytes(b"not the signed message")
        p = run(["openssl", "dgst", "-sha256", "-verify", str(pub), *opts, "-signature", str(sig), str(other)],
                check=False)
        self.assertNotEqual(p.returncode, 0)

    def test_rsa_pkcs1_and_pss(self):
        out, stdout = self.console_sign("rsa2048", "01")
        self.assertIn("certificate ok", stdout)
        self.assertIn("signed pkcs1 256", stdout)
        self.assertIn("signed pss 256", stdout)
        self.verify("rsa2048", out / "pkcs1.sig")
        self.verify("rsa2048", out / "pss.sig", "rsa_padding_mode:pss", "rsa_pss_saltlen:32")

    def test_ecdsa(self):
        out, stdout = self.console_sign("ec256", "02")
        self.assertIn("certificate ok", stdout)
        self.assertIn("signed ecdsa", stdout)
        self.verify("ec256", out / "ecdsa.sig")

    def test_ecdsa_p384_by_id(self):
        out, stdout = self.console_sign("ec384", "03")
        self.assertIn("signed ecdsa", stdout)
        self.verify("ec384", out / "ecdsa.sig")

    def test_configured_pin(self):
        # With pkcs11.pin in the client configuration, the console's PIN field must hold that PIN: a wrong
        # one fails C_Login with CKR_PIN_INCORRECT, as a local token would answer.
        config = write_client_config(self.tmp / "client-pin.yml", self.st, [self.daemon.url],
                                     pkcs11={"pin": "'4711-right'"})
        env = dict(self.env, P11RELAY_CONFIG=str(config))
        args = [str(self.console), "-module", SHIM, "-token", TOKEN_LABEL, "-id", "01",
                "-cert", str(self.cert("rsa2048")), "-in", str(self.message), "-out", str(self.tmp)]
        p = self.run_tool(args, input=b"wrong-pin\n", env=env, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"C_Login: pkcs11: 0xA0: CKR_PIN_INCORRECT", p.stderr)
        out = self.run_tool(args, input=b"4711-right\n", env=env).stdout.decode()
        self.assertIn("signed pkcs1 256", out)

    def test_unknown_key_id_is_refused(self):
        p = self.run_tool([str(self.console), "-module", SHIM, "-token", TOKEN_LABEL, "-id", "7f",
                           "-cert", str(self.cert("rsa2048")), "-in", str(self.message), "-out", str(self.tmp)],
                          input=(PIN + "\n").encode(), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"CKA_ID 7f: 0 found", p.stderr)

    def test_certificate_of_another_key_is_refused(self):
        p = self.run_tool([str(self.console), "-module", SHIM, "-token", TOKEN_LABEL, "-id", "01",
                           "-cert", str(self.cert("ec256")), "-in", str(self.message), "-out", str(self.tmp)],
                          input=(PIN + "\n").encode(), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"is not the certificate file", p.stderr)


if __name__ == "__main__":
    main()
