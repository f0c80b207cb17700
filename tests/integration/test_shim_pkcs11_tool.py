#!/usr/bin/python3
"""OpenSC's pkcs11-tool (which selects the signing key by --id, not --label) against p11relay-pkcs11.so and a real p11relayd + SoftHSMv2 token: list slots and
objects, sign with SHA256-RSA-PKCS, RSA-PKCS-PSS, SHA256-RSA-PKCS-PSS and ECDSA-SHA256, verify with openssl
against the certificate."""
import hashlib
from pathlib import Path

from shim_util import PIN, TOKEN_LABEL, ShimTest, main, run


class PkcsToolTest(ShimTest):
    def setUp(self):
        self.data = self.tmp / "data.bin"
        self.data.write_bytes(b"signed through p11relay by pkcs11-tool\n" * 100)
        self.sig = self.tmp / "sig.bin"
        if self.sig.exists():
            self.sig.unlink()

    def pubkey(self, label: str):
        pub = self.tmp / f"{label}.pub.pem"
        run(["openssl", "x509", "-in", str(self.cert(label)), "-pubkey", "-noout", "-out", str(pub)])
        return pub

    def test_list_slots(self):
        out = self.pkcs11_tool("-L").stdout.decode()
        self.assertIn(TOKEN_LABEL, out)
        self.assertIn("SoftHSM", out)
        self.assertIn("token flags", out)

    def test_list_objects_before_and_after_login(self):
        out = self.pkcs11_tool("-O").stdout.decode()
        self.assertNotIn("Private Key Object", out)
        self.assertIn("Public Key Object", out)
        self.assertIn("Certificate Object", out)
        out = self.pkcs11_tool("-O", "--login", "--pin", PIN).stdout.decode()
        self.assertEqual(out.count("Private Key Object"), 4, out)  # rsa2048 ec256 ec384 rsapss
        for label in ("rsa2048", "ec256", "ec384", "rsapss"):
            self.assertIn(f"label:      {label}", out)
        self.assertNotIn("otherrole", out)  # not this client's role

    def test_mechanisms(self):
        out = self.pkcs11_tool("-M").stdout.decode()
        for m in ("SHA256-RSA-PKCS", "RSA-PKCS-PSS", "ECDSA-SHA256", "SHA256"):
            self.assertIn(m, out)

    def test_sign_sha256_rsa_pkcs(self):
        self.pkcs11_tool("--login", "--pin", PIN, "-s", "-m", "SHA256-RSA-PKCS", "--id", "01",
                         "-i", str(self.data), "-o", str(self.sig))
        p = run(["openssl", "dgst", "-sha256", "-verify", str(self.pubkey("rsa2048")), "-signature", str(self.sig),
                 str(self.data)])
        self.assertIn(b"Verified OK", p.stdout)

    def test_sign_rsa_pkcs_pss_digest(self):
        digest = hashlib.sha256(self.data.read_bytes()).digest()
        dfile = self.tmp / "digest.bin"
        dfile.write_bytes(digest)
        self.pkcs11_tool("--login", "--pin", PIN, "-s", "-m", "RSA-PKCS-PSS", "--hash-algorithm", "SHA256",
                         "--mgf", "MGF1-SHA256", "--salt-len", "32", "--id", "01",
                         "-i", str(dfile), "-o", str(self.sig))
        from harness import openssl_verify
        self.assertTrue(openssl_verify(self.cert("rsa2048"), digest, self.sig.read_bytes(), self.tmp, pss_salt=32))

    def test_sign_sha256_rsa_pkcs_pss(self):
        self.pkcs11_tool("--login", "--pin", PIN, "-s", "-m", "SHA256-RSA-PKCS-PSS", "--id", "04",
                         "-i", str(self.data), "-o", str(self.sig))
        p = run(["openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                 "-verify", str(self.pubkey("rsapss")), "-signature", str(self.sig), str(self.data)])
        self.assertIn(b"Verified OK", p.stdout)

    def test_sign_ecdsa_sha256(self):
        self.pkcs11_tool("--login", "--pin", PIN, "-s", "-m", "ECDSA-SHA256", "--id", "02",
                         "--signature-format", "openssl", "-i", str(self.data), "-o", str(self.sig))
        p = run(["openssl", "dgst", "-sha256", "-verify", str(self.pubkey("ec256")), "-signature", str(self.sig),
                 str(self.data)])
        self.assertIn(b"Verified OK", p.stdout)

    def test_sign_ecdsa_p384_raw_digest(self):
        digest = hashlib.sha384(self.data.read_bytes()).digest()
        dfile = self.tmp / "digest384.bin"
        dfile.write_bytes(digest)
        self.pkcs11_tool("--login", "--pin", PIN, "-s", "-m", "ECDSA", "--id", "03",
                         "--signature-format", "openssl", "-i", str(dfile), "-o", str(self.sig))
        p = run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(self.pubkey("ec384")), "-in", str(dfile),
                 "-sigfile", str(self.sig)], check=False)
        self.assertIn(b"Signature Verified Successfully", p.stdout, p.stderr)

    def test_sign_without_login_fails_cleanly(self):
        p = self.pkcs11_tool("-s", "-m", "SHA256-RSA-PKCS", "--id", "01", "-i", str(self.data), "-o", str(self.sig),
                             check=False)
        self.assertNotEqual(p.returncode, 0)

    def test_pin_never_reaches_the_log(self):
        self.pkcs11_tool("-O", "--login", "--pin", "Pin-Marker-7319")
        self.assertNotIn("Pin-Marker-7319", self.shim_log())
        self.assertNotIn("Pin-Marker-7319", self.daemon.log())

    def test_broken_config_is_a_clear_error_not_a_crash(self):
        bad = self.tmp / "bad.yml"
        bad.write_text(self.client_config.read_text().replace("remote:\n", "remote:\n  colour: blue\n", 1))
        p = self.pkcs11_tool("-L", check=False, env=dict(self.env, P11RELAY_CONFIG=str(bad)))
        self.assertNotEqual(p.returncode, 0)
        err = p.stderr.decode()
        self.assertIn("CKR_GENERAL_ERROR", err)
        self.assertIn(f"{bad}:2: unknown key 'colour' in 'remote'", err)
        self.assertNotIn(b"p11relay-pkcs11", p.stdout)  # never on stdout

    def test_no_config_at_all_is_silent_and_has_no_slots(self):
        # What every p11-kit program does for a user without a client config once the package registered
        # the module: no slots, no stderr line; C_GetInfo says why.
        if Path("/etc/p11relay/client.yml").exists():
            self.skipTest("/etc/p11relay/client.yml exists on this machine")
        home = self.tmp / "empty-home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in self.env.items() if k not in ("P11RELAY_CONFIG", "XDG_CONFIG_HOME")}
        env["HOME"] = str(home)
        listed = self.pkcs11_tool("-L", env=env, check=False)  # pkcs11-tool exits 1 on "No slots."
        self.assertEqual(listed.stderr.replace(b"No slots.\n", b""), b"")  # pkcs11-tool's own line only
        self.assertNotIn(TOKEN_LABEL, listed.stdout.decode())
        info = self.pkcs11_tool("-I", env=env, check=False).stdout.decode()
        self.assertIn("p11relay (no client config)", info)
        self.assertIn(b"p11relay remote signing token", self.pkcs11_tool("-I").stdout)  # configured


if __name__ == "__main__":
    main()
