#!/usr/bin/python3
"""Security catalogs (.cat), end to end: a real p11relayd in front of a SoftHSMv2 token over real mutual TLS.
Catalogs are made by catalog.py (makecat's layout). `p11relay sign` and relic's `cat` type through the relic
API (the whole catalog uploaded, the signed catalog answered) sign them; osslsigncode verifies every output
and signs the same catalog with the same token key (pkcs11 engine): the messageDigest must be the same."""
import json
import re
import shutil
import subprocess
import unittest

import catalog
import harness
import relic_client
from test_cli import CliTest, OSSLSIGNCODE

MEMBERS = {"driver.sys": b"\x4d\x5a" + bytes(4000), "driver.inf": b"[Version]\r\nSignature=$Windows NT$\r\n"}


def osslsigncode_verify_cat(test, path, ca, tsa_ca=None, check=True):
    """osslsigncode verify of a catalog (it prints the messageDigest it checked). Returns (exit code, output)."""
    cmd = [OSSLSIGNCODE, "verify", "-in", str(path), "-CAfile", str(ca)] + (["-TSA-CAfile", str(tsa_ca)] if tsa_ca else [])
    p = subprocess.run(cmd, capture_output=True, timeout=120)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    if check:
        test.assertEqual(p.returncode, 0, out)
        test.assertIn("Signature verification: ok", out)
    return p.returncode, out


def message_digests(out: str) -> list:
    return [d.lower() for d in re.findall(r"Message digest: ([0-9A-Fa-f]+)", out)]


@unittest.skipUnless(OSSLSIGNCODE, "osslsigncode not installed")
class Catalogs(CliTest):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.unsigned = cls.tmp / "driver.cat"
        cls.unsigned.write_bytes(catalog.unsigned_catalog(MEMBERS))

    def test_sign_rsa_and_ec_verified_by_osslsigncode_and_here(self):
        for key, alg in (("rsa2048", "sha256"), ("ec256", "sha384")):
            with self.subTest(key=key):
                before = self.unsigned.read_bytes()
                out = self.tmp / f"signed-{key}.cat"
                p = self.cli("-v", "sign", "--key", key, "--file", self.unsigned, "--output", out, "--digest", alg,
                             "--description", "p11relay test", "--url", "https://example.org/")
                self.assertIn(b"catalog trust list:", p.stderr)
                self.assertIn(b"(catalog, " + alg.encode(), p.stderr)
                text = osslsigncode_verify_cat(self, out, self.cert(key))[1]
                self.assertIn("Number of verified signatures: 1", text)
                self.assertIn(f"Message digest algorithm: {alg.upper()}", text)
                v = self.cli("verify", "--file", out, "--cafile", self.cert(key), config=False).stdout.decode()
                self.assertIn("signature (primary): OK", v)
                self.assertIn("type:        catalog", v)
                self.assertIn(f"digest:      {alg} " + message_digests(text)[0], v)
                self.assertEqual(self.unsigned.read_bytes(), before, "the input was modified")
                # the trust list (the unsigned catalog's content, before its empty signerInfos) is carried over
                self.assertTrue(before[47:-2] in out.read_bytes())

    def test_same_digest_as_osslsigncode_with_the_token_key(self):
        ours, theirs = self.tmp / "ours.cat", self.tmp / "theirs.cat"
        self.cli("sign", "--key", "rsa2048", "--file", self.unsigned, "--output", ours)
        self.osslsigncode_sign(self.unsigned, theirs)
        a = message_digests(osslsigncode_verify_cat(self, ours, self.cert("rsa2048"))[1])
        b = message_digests(osslsigncode_verify_cat(self, theirs, self.cert("rsa2048"))[1])
        self.assertEqual(a, b)
        # a catalog osslsigncode signed: p11relay verifies it and re-signs it (the signature replaced)
        self.assertIn(b"signature (primary): OK", self.cli("verify", "--file", theirs, config=False).stdout)
        again = self.tmp / "resigned-theirs.cat"
        p = self.cli("sign", "--key", "ec256", "--file", theirs, "--output", again)
        self.assertIn(b"signature replaced", p.stderr)
        self.assertIn("Number of verified signatures: 1", osslsigncode_verify_cat(self, again, self.cert("ec256"))[1])

    def test_resign_in_place_with_a_timestamp(self):
        f = self.tmp / "inplace.cat"
        shutil.copyfile(self.unsigned, f)
        text = self.resign_timestamped(f, verify=osslsigncode_verify_cat)
        self.assertIn("Timestamp", text)

    def test_append_nests_a_second_signature(self):
        f = self.tmp / "nested.cat"
        self.cli("sign", "--key", "rsa2048", "--file", self.unsigned, "--output", f)
        p = self.cli("sign", "--key", "ec256", "--file", f, "--append", "--digest", "sha384")
        self.assertIn(b"nested", p.stderr)
        v = self.cli("verify", "--file", f, config=False).stdout.decode()
        self.assertIn("signature (primary): OK", v)
        self.assertIn("signature (nested 1): OK", v)
        self.assertIn("Number of verified signatures: 2", osslsigncode_verify_cat(self, f, self.cert("rsa2048"))[1])

    def test_tampered_and_hostile_catalogs(self):
        out = self.tmp / "tamper.cat"
        self.cli("sign", "--key", "rsa2048", "--file", self.unsigned, "--output", out)
        data = bytearray(out.read_bytes())
        data[data.index("driver.inf".encode("utf-16-le"))] ^= 0x20
        out.write_bytes(bytes(data))
        self.assertNotEqual(osslsigncode_verify_cat(self, out, self.cert("rsa2048"), check=False)[0], 0)
        p = self.cli("verify", "--file", out, config=False, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"messageDigest does not match a certificate trust list", p.stderr)
        p = self.cli("verify", "--file", self.unsigned, config=False, check=False)
        self.assertIn(b"the catalog is not signed", p.stderr)
        good = self.unsigned.read_bytes()
        data_content = catalog.seq(catalog.oid(catalog.SIGNED_DATA), catalog.tlv(0xA0, catalog.seq(
            catalog.integer(1), catalog.set_of(), catalog.seq(catalog.oid("1.2.840.113549.1.7.1")), catalog.set_of())))
        self.assert_sign_refused((("truncated.cat", good[:len(good) // 2], b"not a security catalog"),
                                  ("trailing.cat", good + b"\0" * 8, b"not a security catalog"),
                                  ("p7-data.cat", data_content, b"content is not a certificate trust list"),
                                  ("inner-length.cat", good[:19] + b"\x30\x82\xff\xff" + good[23:],
                                   b"not a security catalog")))


@unittest.skipUnless(OSSLSIGNCODE, "osslsigncode not installed")
class RelicCatalogs(harness.TsaDaemonTest):
    """`relic remote sign -T cat`: the whole catalog is uploaded; the answer is the signed catalog."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cat = catalog.unsigned_catalog(MEMBERS)

    def sign(self, key, body, **kw):
        return relic_client.sign_cat(self.daemon, key, body, **kw)

    def test_rsa_and_ec_signatures_verify_and_are_audited(self):
        for key in ("ec256", "rsa2048"):
            with self.subTest(key=key):
                st, h, body = self.sign(key, self.cat, filename=f"{key}.cat", encoding="gzip")
                self.assertEqual(st, 200, body)
                self.assertEqual(h["content-type"], "application/pkcs7-mime")
                out = self.tmp / f"relic-{key}.cat"
                out.write_bytes(body)
                text = osslsigncode_verify_cat(self, out, self.st.keys[key].certfile, tsa_ca=self.tsa.ca)[1]
                self.assertIn("Number of verified signatures: 1", text)
                # rsa2048 timestamps on the server (timestamp: true in its key config)
                self.assertEqual("Timestamp is not available" in text, key != "rsa2048", text)
                rec = json.loads(self.st.audit_file.read_text().splitlines()[-1])
                self.assertEqual((rec["sig.type"], rec["client.filename"]), ("cat", f"{key}.cat"))
                self.assertEqual(rec["perf.size.in"], len(self.cat))

    def test_hostile_uploads_are_a_4xx_problem(self):
        self.assert_upload_refused(
            (("truncated", "not a security catalog", self.cat[:200]),
             ("not pkcs7", "not a PKCS#7 SignedData", b"\x01" * 3000), ("empty", "not a PKCS#7", b""),
             ("trailing bytes", "not a security catalog", self.cat + b"junk")),
            lambda body: self.sign("ec256", body))


if __name__ == "__main__":
    harness.main()
