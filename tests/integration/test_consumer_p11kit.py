#!/usr/bin/python3
"""p11-kit: p11relay-pkcs11.so registered by a module file (the one the package installs, config/p11relay.module,
with the module's absolute path) in a user's p11-kit configuration, then used through p11-kit-proxy.so:
`p11-kit list-modules` shows the module and the token, pkcs11-tool signs through the proxy with the RSA and
EC keys and openssl verifies. p11-kit ignores the user configuration of a program running as root, so as
root the programs run as the unprivileged user nobody with their own copy of the client configuration.
Skipped without p11-kit or pkcs11-tool."""
import os
import shutil
import tempfile
import unittest
from pathlib import Path
from types import SimpleNamespace

import harness
from shim_util import PIN, SHIM, TOKEN_LABEL, ShimTest, main, run, write_client_config

PROXY = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"
NOBODY = 65534


class P11KitProxyTest(ShimTest):
    @classmethod
    def setUpClass(cls):
        if not (shutil.which("p11-kit") and Path(PROXY).exists()):
            raise unittest.SkipTest("p11-kit not installed")
        if not shutil.which("pkcs11-tool"):
            raise unittest.SkipTest("pkcs11-tool not installed (opensc)")
        super().setUpClass()
        cls.as_user = []
        cls.home = cls.tmp / "home"
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                raise unittest.SkipTest("running as root without setpriv: p11-kit would skip the user config")
            cls.as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
            cls.home = Path(tempfile.mkdtemp(prefix="p11relay-p11kit-"))  # not under the 0700 test dir
        cls.env = dict(cls.env, HOME=str(cls.home), P11RELAY_CONFIG=str(cls.user_client_config()))
        cls.env.pop("XDG_CONFIG_HOME", None)
        modules = cls.home / ".config" / "pkcs11" / "modules"
        modules.mkdir(parents=True)
        shipped = (harness.SOURCE_ROOT / "config" / "p11relay.module").read_text()
        (modules / "p11relay.module").write_text(shipped.replace("module: p11relay-pkcs11.so", f"module: {SHIM}"))
        if cls.as_user:
            for p in [cls.home, *cls.home.rglob("*")]:
                os.chown(p, NOBODY, NOBODY)
            if run([*cls.as_user, "test", "-r", SHIM], check=False).returncode != 0:
                raise unittest.SkipTest(f"user nobody cannot read {SHIM}")

    @classmethod
    def tearDownClass(cls):
        if cls.as_user:
            harness.remove_tmp(cls.home)
        super().tearDownClass()

    @classmethod
    def user_client_config(cls) -> Path:
        """The client configuration and TLS files, readable by the user the p11-kit programs run as."""
        conf = cls.home / ".config" / "p11relay"
        conf.mkdir(parents=True)
        copy = {}
        for f in (cls.st.client.certfile, cls.st.client.keyfile, cls.st.ca_cert):
            copy[f] = conf / Path(f).name
            shutil.copy(f, copy[f])
        files = SimpleNamespace(ca_cert=copy[cls.st.ca_cert], client=SimpleNamespace(
            certfile=copy[cls.st.client.certfile], keyfile=copy[cls.st.client.keyfile]))
        return write_client_config(conf / "client.yml", files, [cls.daemon.url])

    def tool(self, *args, **kw):
        return self.run_tool([*self.as_user, *args], **kw)

    def test_list_modules_shows_the_token(self):
        out = self.tool("p11-kit", "list-modules").stdout.decode()
        self.assertIn("p11relay:", out)
        self.assertIn(f"token: {TOKEN_LABEL}", out)

    def sign_through_proxy(self, key_id: str, mech: str, label: str, *sigopt):
        data = self.home / f"data-{label}.txt"
        data.write_bytes(b"signed through p11-kit-proxy\n" * 20)
        sig = self.home / f"data-{label}.sig"
        if self.as_user:
            os.chown(data, NOBODY, NOBODY)
        self.tool("pkcs11-tool", "--module", PROXY, "--token-label", TOKEN_LABEL, "--login", "--pin", PIN,
                  "--sign", "--mechanism", mech, "--id", key_id, *sigopt, "-i", str(data), "-o", str(sig))
        pub = self.tmp / f"{label}.pub.pem"
        run(["openssl", "x509", "-in", str(self.cert(label)), "-pubkey", "-noout", "-out", str(pub)])
        p = run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(data)], check=False)
        self.assertIn(b"Verified OK", p.stdout, p.stdout + p.stderr)

    def test_rsa_sign_through_proxy(self):
        self.sign_through_proxy("01", "SHA256-RSA-PKCS", "rsa2048")

    def test_ecdsa_sign_through_proxy(self):
        self.sign_through_proxy("02", "ECDSA-SHA256", "ec256", "--signature-format", "openssl")


if __name__ == "__main__":
    main()
