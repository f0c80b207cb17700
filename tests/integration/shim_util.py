"""Helpers for the PKCS#11 shim's integration tests (test_shim_*.py): a daemon from harness.py plus a
client.yml pointing the shim at it, and small wrappers around the tools that load the module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import Daemon, run  # noqa: E402,F401

SHIM = harness.SHIM
BUILD = harness.BUILD
DRIVER = os.environ.get("P11RELAY_SHIM_DRIVER", str(BUILD / "tests" / "shim-driver" / "shim-driver"))
PIN = "any-pin-works"   # the shim accepts any PIN unless the client config names one
TOKEN_LABEL = "p11relay-demo"


def write_client_config(path: Path, st, urls: Sequence[str], *, extra_remote: Optional[dict] = None,
                        pkcs11: Optional[dict] = None) -> Path:
    remote = {"urls": list(urls), "certfile": str(st.client.certfile), "keyfile": str(st.client.keyfile),
              "cacert": str(st.ca_cert), "connecttimeout": 5, "timeout": 60, "retries": 8}
    remote.update(extra_remote or {})
    p11 = {"logfile": str(path.parent / "shim.log"), "loglevel": "debug", "keycacheseconds": 30}
    p11.update(pkcs11 or {})
    lines = ["remote:"]
    for k, v in remote.items():
        if isinstance(v, list):
            lines.append(f"  {k}:")
            lines += [f"    - {x}" for x in v]
        else:
            lines.append(f"  {k}: {v}")
    lines.append("pkcs11:")
    for k, v in p11.items():
        lines.append(f"  {k}: {v}")
    path.write_text("\n".join(lines) + "\n")
    return path


class ShimTest(unittest.TestCase):
    """A provisioned token, a started daemon and a client.yml for the shim (P11RELAY_CONFIG in self.env)."""

    @classmethod
    def setUpClass(cls):
        if not Path(SHIM).exists():
            raise unittest.SkipTest(f"{SHIM} not built")
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-shim-"))
        cls.st = harness.make_state(cls.tmp)
        cls.daemon = Daemon(cls.st).start()
        cls.client_config = write_client_config(cls.tmp / "client.yml", cls.st, [cls.daemon.url])
        cls.env = harness.foreign_env(dict(os.environ))
        cls.env["P11RELAY_CONFIG"] = str(cls.client_config)
        cls.env.pop("SOFTHSM2_CONF", None)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        harness.remove_tmp(cls.tmp)

    def cert(self, label: str) -> Path:
        return Path(self.st.keys[label].certfile)

    def shim_log(self) -> str:
        p = self.tmp / "shim.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def run_tool(self, cmd, *, check=True, input=None, timeout=120, env=None) -> subprocess.CompletedProcess:
        p = subprocess.run(cmd, env=env or self.env, input=input, capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout.decode(errors='replace')}\n"
                                 f"{p.stderr.decode(errors='replace')}\n--- shim log ---\n{self.shim_log()[-3000:]}"
                                 f"\n--- daemon log ---\n{self.daemon.log()[-2000:]}")
        return p

    def driver(self, key: str, mech: str, *args, module: str = SHIM, pin: str = PIN, env=None, **kw):
        return self.run_tool([DRIVER, module, pin, key, mech, *map(str, args)], env=env, **kw)

    def pkcs11_tool(self, *args, **kw) -> subprocess.CompletedProcess:
        return self.run_tool(["pkcs11-tool", "--module", SHIM, *args], **kw)


def main():
    harness.main()


def make_efi(tmp: Path) -> Path:
    """A minimal EFI application (PE32+, subsystem 10) built with mingw-w64, for the EFI signers (pesign,
    sbsign). SkipTest when the cross compiler is missing."""
    cc = shutil.which("x86_64-w64-mingw32-gcc")
    if not cc:
        raise unittest.SkipTest("x86_64-w64-mingw32-gcc not installed (gcc-mingw-w64-x86-64): no EFI binary")
    src, out = tmp / "efi_main.c", tmp / "hello.efi"
    src.write_text("unsigned long long efi_main(void *image, void *systab)\n"
                   "{ (void)image; (void)systab; return 0; }\n")
    run([cc, "-nostdlib", "-ffreestanding", "-O1", "-Wl,--subsystem,10", "-Wl,-e,efi_main", "-o", str(out),
         str(src)])
    return out


ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"  # libengine-pkcs11-openssl (libp11)


def write_engine_config(path: Path, *, pin: Optional[str] = None) -> Path:
    """An OpenSSL config that loads the pkcs11 engine with the shim (docs/recipes.md); with pin, the engine
    logs in with it, so the PIN is on no command line (the file is made private)."""
    pin_line = f"PIN = {pin}\n" if pin is not None else ""
    path.write_text(f"""openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = {ENGINE}
MODULE_PATH = {SHIM}
{pin_line}init = 0
""")
    path.chmod(0o600)
    return path
