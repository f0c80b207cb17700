#!/usr/bin/python3
"""The p11relay CLI end to end: a real p11relayd in front of a SoftHSMv2 token, reached over real mutual TLS.

Independent checks: the openssl CLI (fingerprints, signature verification), osslsigncode (Authenticode
verification, and signing the same file directly with the SoftHSM key through the pkcs11 engine).
"""
import glob
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import harness
from harness import Daemon, Tsa, make_state, openssl_verify, ecdsa_raw_to_der, free_port, run

CLI = harness.CLI
HERE = Path(__file__).resolve().parent
OSSLSIGNCODE = shutil.which("osslsigncode")
PKCS11_ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
KEYS = {"rsa2048", "ec256", "ec384", "rsapss"}


def write_client_config(path: Path, url: str, st, client=None) -> Path:
    c = client or st.client
    path.write_text("remote:\n"
                    f"  url: {url}\n"
                    f"  certfile: {c.certfile}\n"
                    f"  keyfile: {c.keyfile}\n"
                    f"  cacert: {st.ca_cert}\n"
                    "  retries: 1\n")
    return path


def spki_sha256_by_openssl(certfile: Path) -> str:
    """openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum"""
    pem = run(["openssl", "x509", "-in", str(certfile), "-pubkey", "-noout"]).stdout
    der = run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem).stdout
    return hashlib.sha256(der).hexdigest()


class CliTest(unittest.TestCase):
    """A daemon per class; the CLI runs with its own HOME so no real config is ever read."""

    key_policies: dict = {}  # key label -> keys.K.policy for the daemon config

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-cli-"))
        cls.st = make_state(cls.tmp)
        if cls.key_policies:
            cfg = cls.st.daemon_config()
            for label, policy in cls.key_policies.items():
                cfg["keys"][label]["policy"] = policy
            cls.st.write_config(config=cfg)
        cls.daemon = Daemon(cls.st).start()
        cls.config = write_client_config(cls.tmp / "client.yml", cls.daemon.url, cls.st)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        harness.remove_tmp(cls.tmp)

    def env(self, **extra):
        e = dict(os.environ)
        e.pop("P11RELAY_CONFIG", None)
        e["HOME"] = str(self.tmp / "home")
        e.pop("XDG_CONFIG_HOME", None)
        e.update(extra)
        return e

    def cli(self, *args, config=None, check=True, env=None, input=None, timeout=300):
        cmd = [CLI]
        if config is not False:
            cmd += ["-c", str(config or self.config)]
        cmd += [str(a) for a in args]
        p = subprocess.run(cmd, env=env or self.env(), input=input, capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout.decode(errors='replace')}\n"
                                 f"{p.stderr.decode(errors='replace')}")
        return p

    def assert_sign_refused(self, cases, key="rsa2048"):
        """Each (file name, bytes, why): `p11relay sign` exits 2 naming `why` and writes no output."""
        for name, data, why in cases:
            with self.subTest(name=name):
                src, dst = self.tmp / name, self.tmp / ("never-" + name)
                src.write_bytes(data)
                p = self.cli("sign", "--key", key, "--file", src, "--output", dst, check=False)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn(why, p.stderr)
                self.assertFalse(dst.exists())

    def cert(self, key):
        """The certificate file of the token key `key`."""
        return self.st.keys[key].certfile

    def osslsigncode_sign(self, src, dst, *extra, key="rsa2048"):
        """osslsigncode signs `src` into `dst` (removed first) with the same token key through its pkcs11 engine,
        SHA-256 (the independent signer whose digest ours must equal)."""
        uri = f"pkcs11:token={self.st.token_label};object={key};type=private;pin-value={self.st.user_pin}"
        Path(dst).unlink(missing_ok=True)
        p = subprocess.run([OSSLSIGNCODE, "sign", "-pkcs11engine", PKCS11_ENGINE, "-pkcs11module", self.st.module,
                            "-key", uri, "-certs", str(self.cert(key)), "-h", "sha256", *extra,
                            "-in", str(src), "-out", str(dst)], env=self.st.env(), capture_output=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace").replace(self.st.user_pin, "***"))

    def assert_progress_only_on_a_terminal(self, src, key="ec256") -> Path:
        """Signs `src` (over 4 MiB) twice: with stderr a pipe, no progress bar; with stderr a pseudo-terminal
        (script(1), as a user runs it), the bar ends at 100% of the file's MiB. The second output."""
        self.assertGreater(Path(src).stat().st_size, 4 << 20)
        plain = self.tmp / ("piped-" + Path(src).name)
        p = self.cli("sign", "--key", key, "--file", src, "--output", plain)
        self.assertNotIn(b"hashing", p.stderr)
        if not shutil.which("script"):
            self.skipTest("script (bsdutils) not installed")
        out = self.tmp / ("tty-" + Path(src).name)
        cmd = f"{CLI} -c {self.config} sign --key {key} --file {src} --output {out}"
        p = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, env=self.env(), timeout=300)
        self.assertEqual(p.returncode, 0, p.stdout)
        mib = Path(src).stat().st_size >> 20
        self.assertIn(f"hashing {Path(src).name} [".encode(), p.stdout)
        self.assertIn(f"100% {mib}/{mib} MiB".encode(), p.stdout)
        return out

    def resign_timestamped(self, f, verify=None) -> str:
        """Signs `f` in place with rsa2048, then again with ec256 and a timestamp from a local TSA: the first
        signature must be replaced, osslsigncode (`verify`, default osslsigncode_verify) must verify one
        timestamped signature. Its report."""
        verify = verify or osslsigncode_verify
        self.cli("sign", "--key", "rsa2048", "--file", f)
        tsa = Tsa(self.tmp)
        try:
            p = self.cli("sign", "--key", "ec256", "--file", f, "--timestamp-url", tsa.url,
                         "--timestamp-cafile", tsa.ca)
            self.assertIn(b"signature replaced", p.stderr)
            text = verify(self, f, self.st.keys["ec256"].certfile, tsa_ca=tsa.ca)[1]
        finally:
            tsa.stop()
        self.assertIn("Timestamp", text)
        self.assertIn("Number of verified signatures: 1", text)
        return text

    def assert_one_line_error(self, p, code, *needles):
        self.assertEqual(p.returncode, code, p.stderr)
        err = p.stderr.decode()
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("p11relay: "), err)
        for n in needles:
            self.assertIn(n, err)


class Basics(CliTest):
    def test_help_on_every_command(self):
        for cmd in ([], ["register"], ["list-keys"], ["get-key"], ["health"], ["sign-digest"], ["sign"], ["verify"],
                    ["doctor"]):
            p = self.cli(*cmd, "--help", config=False)
            self.assertIn(b"Usage", p.stdout + p.stderr, cmd)

    def test_no_command_and_bad_option_are_usage_errors(self):
        p = self.cli(config=False, check=False)
        self.assertEqual(p.returncode, 2)
        p = self.cli("list-keys", "--bogus", check=False)
        self.assertEqual(p.returncode, 2)

    def test_missing_config_names_the_places_looked_at(self):
        p = self.cli("list-keys", config=False, check=False)
        self.assert_one_line_error(p, 2, "P11RELAY_CONFIG", "client.yml")
        # P11RELAY_CONFIG is honoured
        p = self.cli("list-keys", config=False, env=self.env(P11RELAY_CONFIG=str(self.config)))
        self.assertEqual(set(p.stdout.decode().split()), KEYS)

    def test_list_keys(self):
        p = self.cli("list-keys")
        self.assertEqual(sorted(p.stdout.decode().splitlines()), sorted(KEYS))
        self.assertNotIn(b"otherrole", p.stdout)
        p = self.cli("list-keys", "--long")
        out = p.stdout.decode()
        block = out[out.index("rsa2048\n"):]
        self.assertIn("RSA 2048", block)
        self.assertIn("CKM_RSA_PKCS", block)
        self.assertIn("p11relay-demo", block)
        self.assertIn("P-384", out)

    def test_get_key_prints_the_pem_chain(self):
        for k in ("rsa2048", "ec256"):
            p = self.cli("get-key", k)
            got = run(["openssl", "x509", "-outform", "DER"], input=p.stdout).stdout
            want = run(["openssl", "x509", "-outform", "DER", "-in", str(self.st.keys[k].certfile)]).stdout
            self.assertEqual(got, want, k)

    def test_unknown_key_is_one_clear_line(self):
        p = self.cli("get-key", "nope", check=False)
        self.assert_one_line_error(p, 4, "key 'nope'")
        p = self.cli("sign-digest", "--key", "otherrole", "--hex", "00" * 32, "--format", "hex", check=False)
        self.assert_one_line_error(p, 4, "key 'otherrole'")

    def test_key_as_pkcs11_uri(self):
        # The URI p11tool would print for the key (token=, object=, id=, type=) names it like its name does.
        want = self.cli("get-key", "ec256").stdout
        self.assertEqual(self.cli("get-key", self.st.keys["ec256"].uri).stdout, want)
        self.assertEqual(self.cli("get-key", "pkcs11:id=%02").stdout, want)
        p = self.cli("sign-digest", "--key", "pkcs11:object=rsa2048;type=private", "--hex", "00" * 32,
                     "--format", "hex")
        self.assertEqual(len(bytes.fromhex(p.stdout.decode().strip())), 256)
        p = self.cli("get-key", "pkcs11:token=p11relay-demo", check=False)
        self.assert_one_line_error(p, 2, "matches several keys")
        p = self.cli("get-key", "pkcs11:object=rsa2048;id=%02", check=False)
        self.assert_one_line_error(p, 4, "does not exist or this client may not use it")
        p = self.cli("get-key", "pkcs11:object=rsa 2048", check=False)
        self.assert_one_line_error(p, 2, "must be percent-encoded")
        p = self.cli("get-key", "pkcs11:object=rsa2048?pin-value=1234", check=False)
        self.assert_one_line_error(p, 2, "query attribute 'pin-value' is not used")
        self.assertNotIn(b"1234", p.stderr)

    def test_health(self):
        p = self.cli("health")
        self.assertIn(b": OK", p.stdout)

    def test_daemon_down_is_one_clear_line(self):
        cfg = write_client_config(self.tmp / "down.yml", f"https://127.0.0.1:{free_port()}/", self.st)
        for args in (["list-keys"], ["sign-digest", "--key", "rsa2048", "--hex", "00" * 32, "--format", "hex"]):
            t0 = time.monotonic()
            p = self.cli(*args, config=cfg, check=False)
            self.assert_one_line_error(p, 3, "cannot reach the daemon", "connect")
            self.assertLess(time.monotonic() - t0, 30)
        p = self.cli("health", config=cfg, check=False)
        self.assertEqual(p.returncode, 3)

    def test_doctor_passes_and_explains_a_dead_daemon(self):
        p = self.cli("doctor")
        out = p.stdout.decode()
        self.assertIn("all checks passed", out)
        self.assertIn("key list kept for new processes in " + os.environ["XDG_CACHE_HOME"] + "/p11relay/keys-", out)
        for k in KEYS:
            self.assertIn(f"test signature with key {k}", out)
        cfg = write_client_config(self.tmp / "down2.yml", f"https://127.0.0.1:{free_port()}/", self.st)
        p = self.cli("doctor", config=cfg, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"is p11relayd running", p.stdout)

    def test_doctor_explains_an_unregistered_client(self):
        stranger = self.st.make_client("doctor-stranger")
        cfg = write_client_config(self.tmp / "stranger.yml", self.daemon.url, self.st, client=stranger)
        p = self.cli("doctor", config=cfg, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(stranger.fingerprint.encode(), p.stdout)
        self.assertIn(b"clients:", p.stdout)
        p = self.cli("list-keys", config=cfg, check=False)
        self.assert_one_line_error(p, 6, "p11relay register")


class SignDigest(CliTest):
    def sign(self, key, digest: bytes, *extra, alg="sha256"):
        out = self.tmp / f"sig-{key}-{alg}.bin"
        self.cli("sign-digest", "--key", key, "--digest-alg", alg, "--hex", digest.hex(), "--out", out, *extra)
        return out.read_bytes()

    def test_rsa_pkcs1(self):
        d = hashlib.sha256(b"rsa pkcs1").digest()
        sig = self.sign("rsa2048", d)
        self.assertEqual(len(sig), 256)
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, d, sig, self.tmp))
        self.assertFalse(openssl_verify(self.st.keys["rsa2048"].certfile, hashlib.sha256(b"x").digest(), sig, self.tmp))

    def test_rsa_pkcs1_sha512_from_binary_file(self):
        d = hashlib.sha512(b"rsa pkcs1 512").digest()
        f = self.tmp / "d512.bin"
        f.write_bytes(d)
        p = self.cli("sign-digest", "--key", "rsa2048", "--digest-alg", "sha512", "--in", f, "--format", "base64")
        import base64
        sig = base64.b64decode(p.stdout)
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, d, sig, self.tmp, hash_name="sha512"))

    def test_rsa_pss(self):
        for key in ("rsapss", "rsa2048"):
            d = hashlib.sha256(b"pss " + key.encode()).digest()
            sig = self.sign(key, d, "--mechanism", "pss")
            self.assertTrue(openssl_verify(self.st.keys[key].certfile, d, sig, self.tmp, pss_salt=32), key)

    def test_ecdsa_raw_and_der(self):
        d = hashlib.sha256(b"ecdsa").digest()
        raw = self.sign("ec256", d)
        self.assertEqual(len(raw), 64)  # r||s as PKCS#11 returns it
        self.assertTrue(openssl_verify(self.st.keys["ec256"].certfile, d, ecdsa_raw_to_der(raw), self.tmp))
        der = self.sign("ec256", d, "--format", "der")
        self.assertEqual(der[0], 0x30)
        self.assertTrue(openssl_verify(self.st.keys["ec256"].certfile, d, der, self.tmp))

    def test_ecdsa_p384_sha384(self):
        d = hashlib.sha384(b"ecdsa 384").digest()
        raw = self.sign("ec384", d, alg="sha384")
        self.assertEqual(len(raw), 96)
        self.assertTrue(openssl_verify(self.st.keys["ec384"].certfile, d, ecdsa_raw_to_der(raw), self.tmp,
                                       hash_name="sha384"))

    def test_data_is_hashed_locally(self):
        f = self.tmp / "payload.bin"
        f.write_bytes(os.urandom(100000))
        out = self.tmp / "payload.sig"
        self.cli("sign-digest", "--key", "rsa2048", "--data", f, "--out", out)
        d = hashlib.sha256(f.read_bytes()).digest()
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, d, out.read_bytes(), self.tmp))

    def test_bad_inputs(self):
        p = self.cli("sign-digest", "--key", "rsa2048", "--hex", "abcd", "--format", "hex", check=False)
        self.assert_one_line_error(p, 2, "bytes")
        p = self.cli("sign-digest", "--key", "ec256", "--hex", "00" * 32, "--mechanism", "pss", "--format", "hex",
                     check=False)
        self.assert_one_line_error(p, 2, "not an RSA key")
        p = self.cli("sign-digest", "--key", "rsa2048", "--format", "hex", check=False)
        self.assertEqual(p.returncode, 2)


# ------------------------------------------------------------------------------------------------------------
# Authenticode

def mingw_pe(tmp: Path, bits: int):
    cc = shutil.which("i686-w64-mingw32-gcc" if bits == 32 else "x86_64-w64-mingw32-gcc")
    if not cc:
        return None
    src = tmp / "tiny.c"
    src.write_text('#include <stdio.h>\nstatic const char big[20000] = "hello";\n'
                   'int main(int argc, char** argv) { (void)argv; printf("%s %d\\n", big + argc, argc); return 0; }\n')
    out = tmp / f"tiny{bits}.exe"
    if subprocess.run([cc, "-O1", "-s", "-o", str(out), str(src)], capture_output=True).returncode != 0:
        return None
    return out


def system_dlls():
    """Real PE DLLs from Debian's mingw-w64 packages: one 32-bit and one 64-bit of each kind found."""
    picks = []
    for pattern in ("/usr/lib/gcc/x86_64-w64-mingw32/*/libstdc++-6.dll", "/usr/lib/gcc/i686-w64-mingw32/*/libstdc++-6.dll",
                    "/usr/x86_64-w64-mingw32/lib/libwinpthread-1.dll", "/usr/i686-w64-mingw32/lib/libwinpthread-1.dll",
                    "/usr/lib/gcc/x86_64-w64-mingw32/*/libgcc_s_seh-1.dll"):
        found = sorted(glob.glob(pattern))
        if found:
            picks.append(Path(found[0]))
    return picks


def pe_is_plus(path: Path) -> bool:
    b = path.read_bytes()[:4096]
    off = int.from_bytes(b[0x3c:0x40], "little")
    return int.from_bytes(b[off + 24:off + 26], "little") == 0x20b


def pe_checksum_ok(path: Path) -> bool:
    """Independent PE CheckSum (16-bit end-around-carry sum of the file with the field as zero, plus the length)."""
    import array
    data = bytearray(path.read_bytes())
    off = int.from_bytes(data[0x3c:0x40], "little") + 88
    stored = int.from_bytes(data[off:off + 4], "little")
    data[off:off + 4] = bytes(4)
    n = len(data)
    if n % 2:
        data += b"\0"
    total = sum(array.array("H", bytes(data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return stored == total + n


def osslsigncode_verify(test: unittest.TestCase, path: Path, ca: Path, tsa_ca=None, check=True,
                        field="message digest"):
    """osslsigncode verify; with check, it must succeed and the digest it read from the signature
    ("Current <field>") must equal the one it computed from the file ("Calculated <field>"; MSI files
    print "DigitalSignature" there). Returns (exit code, output)."""
    cmd = [OSSLSIGNCODE, "verify", "-in", str(path), "-CAfile", str(ca)]
    if tsa_ca:
        cmd += ["-TSA-CAfile", str(tsa_ca)]
    p = subprocess.run(cmd, capture_output=True, timeout=120)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    if check:
        test.assertEqual(p.returncode, 0, out)
        test.assertIn("Signature verification: ok", out)
        cur = re.search(rf"Current {field}\s*:\s*([0-9A-Fa-f]+)", out)
        calc = re.search(rf"Calculated {field}\s*:\s*([0-9A-Fa-f]+)", out)
        test.assertTrue(cur and calc, out)
        test.assertEqual(cur.group(1).lower(), calc.group(1).lower(), out)
    return p.returncode, out


@unittest.skipUnless(OSSLSIGNCODE, "osslsigncode not installed")
class Authenticode(CliTest):
    # test_sha1_and_sha384_digests signs a SHA-1 Authenticode digest: refused unless the key's policy allows it.
    key_policies = {"rsa2048": {"digests": ["sha1", "sha256", "sha384", "sha512"]}}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pe = cls.tmp / "pe"
        cls.pe.mkdir()
        cls.files = {}
        for bits in (32, 64):
            f = mingw_pe(cls.pe, bits)
            if f:
                cls.files[f"tiny{bits}"] = f
        for dll in system_dlls():
            dst = cls.pe / (dll.parent.parent.name.split("-")[0] + "-" + dll.name)
            shutil.copyfile(dll, dst)
            cls.files[dst.stem] = dst

    def osslverify(self, path: Path, key="rsa2048", tsa_ca=None, check=True):
        return osslsigncode_verify(self, path, self.st.keys[key].certfile, tsa_ca, check)

    @staticmethod
    def digest_of(out: str) -> str:
        return re.search(r"Current message digest\s*:\s*([0-9A-Fa-f]+)", out).group(1).lower()

    def p11verify(self, path: Path, key="rsa2048"):
        p = self.cli("verify", "--file", path, "--cafile", self.st.keys[key].certfile, config=False)
        return p.stdout.decode()

    def test_sign_pe32_and_pe32plus_with_and_without_page_hashes(self):
        self.assertTrue(self.files, "no PE files (mingw-w64 not installed?)")
        kinds = set()
        for name, f in self.files.items():
            kinds.add(pe_is_plus(f))
            before = hashlib.sha256(f.read_bytes()).digest()
            for key, extra in (("rsa2048", []), ("rsa2048", ["--page-hashes"]), ("ec256", [])):
                with self.subTest(file=name, key=key, extra=extra):
                    out = self.tmp / f"{name}-{key}{'-ph' if extra else ''}.signed"
                    self.cli("sign", "--key", key, "--file", f, "--output", out, *extra,
                             "--description", "p11relay test", "--url", "https://example.org/")
                    _, text = self.osslverify(out, key)
                    if extra:
                        self.assertIn("Page hash", text)
                    self.assertIn("Number of verified signatures: 1", text)
                    v = self.p11verify(out, key)
                    self.assertIn("CN=" + key, v)
                    self.assertIn("digest:      sha256", v)
                    self.assertIn("(correct)", v)
                    self.assertTrue(pe_checksum_ok(out), "PE checksum")
                    self.assertIn("yes (checked)" if extra else "page hashes: no", v)
                    self.assertIn(self.digest_of(text), v)
                    self.assertEqual(hashlib.sha256(f.read_bytes()).digest(), before, "the input was modified")
        self.assertEqual(kinds, {False, True}, "want both PE32 and PE32+")

    def test_sha1_and_sha384_digests(self):
        f = next(iter(self.files.values()))
        for alg, key in (("sha1", "rsa2048"), ("sha384", "rsa2048"), ("sha384", "ec384"), ("sha512", "ec256")):
            out = self.tmp / f"digest-{alg}-{key}.signed"
            p = self.cli("-v", "sign", "--key", key, "--file", f, "--output", out, "--digest", alg, "--signing-time")
            self.assertIn(f"image digest: {alg} ".encode(), p.stderr)
            _, text = self.osslverify(out, key)
            self.assertIn("Signing time", text)
            v = self.p11verify(out, key)
            self.assertIn(f"digest:      {alg}", v)
            self.assertIn(f"CN={key}", v)

    def test_timestamp_from_local_tsa(self):
        tsa = Tsa(self.tmp)
        try:
            for name in ("tiny32", "tiny64"):
                if name not in self.files:
                    continue
                out = self.tmp / f"{name}-ts.exe"
                self.cli("sign", "--key", "rsa2048", "--file", self.files[name], "--output", out,
                         "--timestamp-url", tsa.url, "--timestamp-cafile", tsa.ca)
                _, text = self.osslverify(out, tsa_ca=tsa.ca)
                self.assertIn("Timestamp", text)
                self.assertIn("timestamp:   yes", self.p11verify(out))
            # a TSA that fails is an error and writes nothing
            out = self.tmp / "ts-fail.exe"
            p = self.cli("sign", "--key", "rsa2048", "--file", next(iter(self.files.values())), "--output", out,
                         "--timestamp-url", tsa.url + "fail", check=False)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn(b"timestamp", p.stderr)
            self.assertFalse(out.exists())
        finally:
            tsa.stop()

    def test_resign_in_place_and_append(self):
        f = self.tmp / "resign.exe"
        shutil.copyfile(next(iter(self.files.values())), f)
        os.chmod(f, 0o750)
        self.cli("sign", "--key", "rsa2048", "--file", f)  # in place
        self.osslverify(f)
        self.assertEqual(stat.S_IMODE(f.stat().st_mode), 0o750)
        first = f.read_bytes()
        # re-sign replaces the signature
        self.cli("sign", "--key", "ec256", "--file", f)
        _, text = self.osslverify(f, "ec256")
        self.assertIn("Number of verified signatures: 1", text)
        v = self.p11verify(f, "ec256")
        self.assertIn("CN=ec256", v)
        self.assertNotIn("nested", v)
        self.assertLess(abs(len(f.read_bytes()) - len(first)), 2048)
        # --append nests a second signature
        out = self.tmp / "nested.exe"
        self.cli("sign", "--key", "rsa2048", "--file", f, "--output", out, "--append")
        both = self.tmp / "both-ca.pem"
        both.write_text(self.st.keys["rsa2048"].certfile.read_text() + self.st.keys["ec256"].certfile.read_text())
        p = subprocess.run([OSSLSIGNCODE, "verify", "-in", str(out), "-CAfile", str(both)], capture_output=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        v = self.cli("verify", "--file", out, config=False).stdout.decode()
        self.assertIn("signature (nested 1): OK", v)
        self.assertIn("CN=ec256", v)
        self.assertIn("CN=rsa2048", v)
        self.assertIn(b"Number of verified signatures: 2", p.stdout + p.stderr)
        # no temp files left behind
        self.assertEqual([x for x in os.listdir(self.tmp) if "p11relay" in x and "tmp" in x], [])

    def test_same_digest_as_osslsigncode_with_the_token_key(self):
        for name in ("tiny32", "tiny64"):
            if name not in self.files:
                continue
            src = self.files[name]
            ours = self.tmp / f"{name}-ours.exe"
            theirs = self.tmp / f"{name}-ossl.exe"
            self.cli("sign", "--key", "rsa2048", "--file", src, "--output", ours)
            self.osslsigncode_sign(src, theirs)
            _, a = self.osslverify(ours)
            _, b = self.osslverify(theirs)
            self.assertEqual(self.digest_of(a), self.digest_of(b))
            # the Python checksum agrees with osslsigncode's, and with ours
            self.assertTrue(pe_checksum_ok(theirs))
            self.assertTrue(pe_checksum_ok(ours))
            # and p11relay verify accepts osslsigncode's signature
            self.assertIn("CN=rsa2048", self.p11verify(theirs))

    def test_tampered_file_fails_both_verifiers(self):
        f = self.files.get("tiny64") or next(iter(self.files.values()))
        out = self.tmp / "tamper.exe"
        self.cli("sign", "--key", "rsa2048", "--file", f, "--output", out)
        b = bytearray(out.read_bytes())
        b[0x400 + 100] ^= 0xFF  # inside the first section
        out.write_bytes(bytes(b))
        p = self.cli("verify", "--file", out, config=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"FAILED", p.stderr)
        rc, _ = self.osslverify(out, check=False)
        self.assertNotEqual(rc, 0)
        # a valid signature by a signer the given CA file does not trust
        good = self.tmp / "untrusted.exe"
        self.cli("sign", "--key", "ec256", "--file", f, "--output", good)
        self.cli("verify", "--file", good, config=False)
        p = self.cli("verify", "--file", good, "--cafile", self.st.keys["rsa2048"].certfile, config=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"not trusted", p.stderr)

    def test_progress_bar_only_on_a_terminal_and_trailing_data(self):
        big = self.tmp / "big.exe"
        with open(big, "wb") as w:
            w.write(next(iter(self.files.values())).read_bytes())
            w.write(os.urandom(1 << 20) * 6)  # 6 MiB of trailing data (hashed as part of the image)
        out = self.assert_progress_only_on_a_terminal(big)
        self.osslverify(self.tmp / "piped-big.exe", "ec256")
        self.osslverify(out, "ec256")

    def test_errors_write_nothing(self):
        f = next(iter(self.files.values()))
        out = self.tmp / "nokey.exe"
        p = self.cli("sign", "--key", "nope", "--file", f, "--output", out, check=False)
        self.assert_one_line_error(p, 4, "key 'nope'")
        self.assertFalse(out.exists())
        notpe = self.tmp / "notpe.exe"
        notpe.write_bytes(b"MZ" + os.urandom(300))
        p = self.cli("sign", "--key", "rsa2048", "--file", notpe, "--output", out, check=False)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertFalse(out.exists())
        p = self.cli("verify", "--file", f, config=False, check=False)  # unsigned
        self.assertEqual(p.returncode, 1)


# ------------------------------------------------------------------------------------------------------------
# register

class Register(CliTest):
    def test_register_then_the_daemon_accepts_the_client_once_its_fingerprint_is_configured(self):
        d = self.tmp / "reg"
        cfg = d / "client.yml"
        p = self.cli("register", "--dir", d, "--url", self.daemon.url, "--cacert", self.st.ca_cert,
                     "--nickname", "ci-runner", config=cfg)
        out = p.stdout.decode()
        fp = re.search(r"^fingerprint: ([0-9a-f]{64})$", out, re.M).group(1)
        self.assertEqual(fp, spki_sha256_by_openssl(d / "client.pem"))
        self.assertIn(f"  {fp}:\n    nickname: ci-runner\n    roles: [signers]\n", out)
        self.assertEqual(stat.S_IMODE((d / "client.key").stat().st_mode), 0o600)
        self.assertNotIn(b"PRIVATE KEY", p.stdout + p.stderr)
        key_pem = (d / "client.key").read_text()
        self.assertIn("PRIVATE KEY", key_pem)
        run(["openssl", "pkey", "-in", str(d / "client.key"), "-noout"])
        cert_text = run(["openssl", "x509", "-in", str(d / "client.pem"), "-noout", "-text"]).stdout.decode()
        self.assertIn("prime256v1", cert_text)

        # idempotent: a second run keeps the key (same fingerprint)
        p2 = self.cli("register", "--dir", d, config=cfg)
        self.assertIn(fp, p2.stdout.decode())

        # not yet known to the daemon: refused with a hint
        p = self.cli("list-keys", config=cfg, check=False)
        self.assert_one_line_error(p, 6, "p11relay register")

        # paste the snippet into p11relayd.yml (as an operator would) and restart
        conf = self.st.daemon_config()
        conf["clients"][fp] = {"nickname": "ci-runner", "roles": ["signers"]}
        self.st.write_config(config=conf)
        self.daemon.restart()
        p = self.cli("list-keys", config=cfg)
        self.assertEqual(set(p.stdout.decode().split()), KEYS)
        dg = hashlib.sha256(b"registered").digest()
        sig = self.tmp / "reg.sig"
        self.cli("sign-digest", "--key", "ec256", "--hex", dg.hex(), "--format", "der", "--out", sig, config=cfg)
        self.assertTrue(openssl_verify(self.st.keys["ec256"].certfile, dg, sig.read_bytes(), self.tmp))

        # --force makes a new key: a new fingerprint the daemon does not know
        p3 = self.cli("register", "--dir", d, "--force", config=cfg)
        fp3 = re.search(r"^fingerprint: ([0-9a-f]{64})$", p3.stdout.decode(), re.M).group(1)
        self.assertNotEqual(fp3, fp)
        self.assertEqual(fp3, spki_sha256_by_openssl(d / "client.pem"))

    def test_register_without_url_writes_only_the_key(self):
        d = self.tmp / "home" / ".config" / "p11relay"
        p = self.cli("register", config=False)
        self.assertTrue((d / "client.key").exists())
        self.assertIn(b"not written", p.stdout)
        self.assertFalse((d / "client.yml").exists())


if __name__ == "__main__":
    harness.main()
