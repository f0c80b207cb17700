#!/usr/bin/python3
"""The approver's web UI (docs/operator-guide.md "Web UI") in a real browser: headless Chromium driven by
Selenium, talking mutual TLS to a real p11relayd on a SoftHSMv2 token. The browser's client certificate comes
from an NSS database the test creates ($HOME/.pki/nssdb of a temporary HOME) and is chosen without a dialog by
the AutoSelectCertificateForUrls policy, written to Chromium's managed policy directory for the duration of
the run and removed afterwards.

The submitter is the real p11relay CLI (sign-digest, waiting on its held request); its signature is verified
with openssl. A screenshot of each page is saved to $P11RELAY_SCREENSHOTS, else the build's meson-logs/webui/.
Exits 77 (skip) without chromium, chromedriver, python3-selenium, certutil/pk12util or a writable policy dir.
"""
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
from pathlib import Path

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    # Debian's python3-selenium is installed for Debian's python3; meson may have found another one.
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    webdriver = None

import harness
from harness import Daemon, make_state, openssl_verify, run
from test_cli import write_client_config

CLI = harness.CLI
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
CERTUTIL = shutil.which("certutil")
PK12UTIL = shutil.which("pk12util")
POLICY_DIR = Path("/etc/chromium/policies/managed")
POLICY_FILE = POLICY_DIR / "p11relay-webui-test.json"
WAIT = 60
SCRIPT_NAME = '<script>alert("pwned")</script>setup.exe'


def missing_tools() -> str:
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER),
                                        ("python3-selenium", webdriver), ("certutil", CERTUTIL),
                                        ("pk12util", PK12UTIL)) if not found]
    if missing:
        return "not installed: " + ", ".join(missing)
    try:
        POLICY_DIR.mkdir(parents=True, exist_ok=True)
        if not os.access(POLICY_DIR, os.W_OK):
            return f"{POLICY_DIR} is not writable (run as root)"
    except OSError as e:
        return f"cannot create {POLICY_DIR}: {e}"
    return ""


def screenshot_dir() -> Path:
    d = Path(os.environ.get("P11RELAY_SCREENSHOTS") or
             Path(os.environ.get("P11RELAY_BUILD", ".")) / "meson-logs" / "webui")
    d.mkdir(parents=True, exist_ok=True)
    return d


class Browser:
    """Headless Chromium whose NSS database holds one client certificate (and trusts the daemon's CA)."""

    def __init__(self, tmp: Path, name: str, client, ca_cert: Path):
        self.home = tmp / f"home-{name}"
        nssdb = self.home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        db = f"sql:{nssdb}"
        run([CERTUTIL, "-N", "-d", db, "--empty-password"])
        run([CERTUTIL, "-A", "-d", db, "-n", "p11relay test CA", "-t", "CT,C,C", "-i", str(ca_cert)])
        p12 = tmp / f"{name}.p12"
        run(["openssl", "pkcs12", "-export", "-in", str(client.certfile), "-inkey", str(client.keyfile),
             "-name", name, "-out", str(p12), "-passout", "pass:webui"])
        run([PK12UTIL, "-i", str(p12), "-d", db, "-W", "webui"])
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1400,900", f"--user-data-dir={self.home / 'profile'}", "--no-first-run",
                  "--password-store=basic"):
            opts.add_argument(a)
        env = dict(os.environ, HOME=str(self.home))
        service = ChromeService(executable_path=CHROMEDRIVER, env=env,
                                log_path=str(tmp / f"chromedriver-{name}.log"))
        self.driver = webdriver.Chrome(service=service, options=opts)
        self.driver.set_page_load_timeout(WAIT)

    def get(self, url: str):
        self.driver.get(url)
        return self.driver

    def quit(self):
        self.driver.quit()


class WebUI(unittest.TestCase):
    """rsa2048: approval required, approvers [admin]. Clients: demo (signers) submits with the CLI, admin
    (admin) approves in the browser, dev2 (signers) has a browser too but no approver role."""

    @classmethod
    def setUpClass(cls):
        why = missing_tools()
        if why:
            raise unittest.SkipTest(why)
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-webui-"))
        cls.browsers = []
        cls.st = make_state(cls.tmp, harness.provision.DEFAULT_KEYS)
        cls.admin = cls.st.make_client("admin", roles=["admin"], issuer="ca")
        cls.dev2 = cls.st.make_client("dev2", roles=["signers"], issuer="ca")
        cfg = cls.st.daemon_config(clients=[cls.st.client, cls.admin, cls.dev2])
        cfg["keys"]["rsa2048"]["policy"] = {"approval": "required", "approvers": ["admin"], "approvaltimeout": 600}
        cfg["server"]["statedir"] = str(cls.st.state_dir / "policy-state")
        cls.st.write_config(config=cfg)
        cls.daemon = Daemon(cls.st).start()
        cls.base = f"https://127.0.0.1:{cls.daemon.port}"
        cls.demo_cfg = write_client_config(cls.tmp / "demo.yml", cls.daemon.url, cls.st)
        cls.shots = screenshot_dir()
        POLICY_FILE.write_text(json.dumps({"AutoSelectCertificateForUrls": [
            json.dumps({"pattern": cls.base, "filter": {}})]}))
        try:
            cls.approver = Browser(cls.tmp, "admin", cls.admin, cls.st.ca_cert)
            cls.browsers.append(cls.approver)
            cls.outsider = Browser(cls.tmp, "dev2", cls.dev2, cls.st.ca_cert)
            cls.browsers.append(cls.outsider)
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for b in cls.browsers:
            b.quit()
        POLICY_FILE.unlink(missing_ok=True)
        cls.daemon.stop()
        harness.remove_tmp(cls.tmp)

    def tearDown(self):
        for r in self.pending_requests():
            self.daemon.request("POST", f"/v1/requests/{r['id']}/deny", {"reason": "test cleanup"}, client=self.admin)

    # -- helpers -----------------------------------------------------------------------------------------
    def pending_requests(self) -> list:
        status, _, body = self.daemon.request("GET", "/v1/requests", client=self.admin)
        self.assertEqual(status, 200, body)
        return json.loads(body)["requests"]

    def submit(self, digest: bytes, filename: str, out: Path):
        env = dict(os.environ, HOME=str(self.tmp / "cli-home"))
        env.pop("P11RELAY_CONFIG", None)
        proc = subprocess.Popen([CLI, "-c", str(self.demo_cfg), "sign-digest", "--key", "rsa2048", "--digest-alg",
                                 "sha256", "--hex", digest.hex(), "--filename", filename, "--out", str(out)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            mine = [r for r in self.pending_requests() if r["filename"] == filename]
            if mine:
                return proc, mine[0]
            if proc.poll() is not None:
                self.fail(f"the CLI ended before its request was held: {proc.communicate()}")
            time.sleep(0.2)
        proc.kill()
        self.fail("no held request appeared")

    def finish(self, proc):
        out, err = proc.communicate(timeout=WAIT)
        return proc.returncode, out.decode(errors="replace") + err.decode(errors="replace")

    def click_decision(self, proc, row, field: str, text: str, button: str, outcome: str):
        """Types `text` into the row's `field`, clicks its `button`; the page says `outcome`. The CLI's result."""
        row.find_element(By.NAME, field).send_keys(text)
        row.find_element(By.CSS_SELECTOR, f"button.{button}").click()
        self.wait_for_text(self.approver, "main", outcome)
        return self.finish(proc)

    def wait_for_text(self, browser: Browser, tag: str, text: str):
        """Until the page that a click loads has `text` in its element `tag`."""
        try:
            WebDriverWait(browser.driver, WAIT, ignored_exceptions=(NoSuchElementException,
                                                                    StaleElementReferenceException)).until(
                lambda d: text in d.find_element(By.TAG_NAME, tag).text)
        except Exception:
            self.fail(f"the page never showed {text!r}: {browser.driver.page_source[:3000]}")

    def shot(self, browser: Browser, name: str):
        browser.driver.save_screenshot(str(self.shots / name))

    def row(self, driver, request_id: str):
        return driver.find_element(By.ID, request_id)

    def assert_no_script(self, driver):
        # No page has a script: they work with JavaScript off, and an injected one would show up here.
        self.assertEqual(driver.find_elements(By.TAG_NAME, "script"), [])

    def ui_post(self, path: str, fields: dict, client, origin: str = None):
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if origin:
            headers["Origin"] = origin
        return self.daemon.request("POST", path, urllib.parse.urlencode(fields).encode(), headers=headers,
                                   client=client)

    def csrf_token(self, client) -> str:
        status, _, body = self.daemon.request("GET", "/ui/pending", client=client)
        self.assertEqual(status, 200)
        m = re.search(rb'name="csrf" value="([0-9a-f]{64})"', body)
        self.assertIsNotNone(m, body[:2000])
        return m.group(1).decode()

    # -- cases -------------------------------------------------------------------------------------------
    def test_1_approve_by_click_signs_for_the_waiting_client(self):
        digest = hashlib.sha256(b"release 1.2.3").digest()
        sig = self.tmp / "approved.sig"
        proc, req = self.submit(digest, SCRIPT_NAME, sig)
        try:
            d = self.approver.get(self.base + "/ui/pending")
            row = self.row(d, req["id"])
            self.assertEqual(row.find_element(By.CLASS_NAME, "filename").text, SCRIPT_NAME)  # shown as text
            self.assertIn("demo", row.text)
            self.assertIn("rsa2048", row.text)
            self.assertIn(req["input_sha256"], row.text)
            self.assertRegex(row.text, r"9 min|10 min")  # time to expiry
            self.assert_no_script(d)
            self.shot(self.approver, "webui-pending.png")
            code, out = self.click_decision(proc, row, "comment", "release build, checked", "approve",
                                            f"Request {req['id']} approved and signed.")
        finally:
            proc.kill()
        self.assertEqual(code, 0, out)
        self.assertTrue(openssl_verify(self.st.keys["rsa2048"].certfile, digest, sig.read_bytes(), self.tmp))
        status, _, body = self.daemon.request("GET", f"/v1/requests/{req['id']}", client=self.admin)
        self.assertEqual(json.loads(body)["decided_by"], "admin")

    def test_2_deny_with_a_reason_reaches_the_submitter(self):
        proc, req = self.submit(hashlib.sha256(b"nightly").digest(), "nightly.msi", self.tmp / "denied.sig")
        try:
            row = self.row(self.approver.get(self.base + "/ui/pending"), req["id"])
            code, out = self.click_decision(proc, row, "reason", "nightly builds are not released", "deny",
                                            f"Request {req['id']} denied.")
        finally:
            proc.kill()
        self.assertEqual(code, 9, out)  # not approved (docs/cli.md)
        self.assertIn("nightly builds are not released", out)

    def test_3_non_approver_sees_no_buttons_and_forged_posts_are_refused(self):
        proc, req = self.submit(hashlib.sha256(b"forged").digest(), "forged.exe", self.tmp / "forged.sig")
        try:
            d = self.outsider.get(self.base + "/ui/pending")
            self.assertEqual(d.find_elements(By.TAG_NAME, "button"), [])
            self.assertEqual(d.find_elements(By.ID, req["id"]), [])  # not theirs to see
            self.assertIn("no approver role", d.find_element(By.TAG_NAME, "main").text)
            self.outsider.get(self.base + "/ui/history")
            self.assertIn("for approvers", d.find_element(By.TAG_NAME, "main").text)
            path = f"/ui/requests/{req['id']}/approve"
            token = self.csrf_token(self.admin)
            own = self.base
            refused = [
                ("no token", {}, self.admin, own),
                ("wrong token", {"csrf": "0" * 64}, self.admin, own),
                ("foreign Origin", {"csrf": token}, self.admin, "https://evil.example"),
                ("no Origin or Referer", {"csrf": token}, self.admin, None),
                ("another certificate's token", {"csrf": token}, self.dev2, own),
            ]
            for why, fields, client, origin in refused:
                status, headers, body = self.ui_post(path, fields, client, origin)
                self.assertEqual(status, 403, f"{why}: {body[:500]}")
                self.assertEqual([r["id"] for r in self.pending_requests()], [req["id"]], why)
            status, _, body = self.ui_post(path, {"csrf": self.csrf_token(self.admin)}, self.admin, own)
            self.assertEqual(status, 200, body[:1000])  # the same POST with token and origin is accepted
            code, out = self.finish(proc)
            self.assertEqual(code, 0, out)
        finally:
            proc.kill()
        self.assertIn("refused: the form was sent from another site", self.daemon.log())

    def test_4_history_shows_the_audit_trail_escaped_and_the_chain_intact(self):
        d = self.approver.get(self.base + "/ui/history")
        self.assertEqual(d.find_element(By.ID, "chain").text, "intact")
        self.assert_no_script(d)
        self.shot(self.approver, "webui-history.png")
        d.find_element(By.NAME, "q").send_keys("<script>")
        d.find_element(By.CSS_SELECTOR, "button.search").click()
        WebDriverWait(d, WAIT).until(lambda drv: "q=%3Cscript%3E" in drv.current_url)
        files = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#history td.filename")]
        self.assertTrue(files, "no audit rows for the <script> file name")
        self.assertEqual(set(files), {SCRIPT_NAME})
        results = d.find_element(By.ID, "history").text
        self.assertIn("signed (approved by admin)", results)
        self.assertIn("approve by admin: release build, checked", results)
        self.assert_no_script(d)
        # Raw HTML: the file name is escaped, never markup.
        status, headers, body = self.daemon.request("GET", "/ui/history?q=script", client=self.admin)
        self.assertIn(html.escape(SCRIPT_NAME, quote=True).replace("&#x27;", "&#39;").encode(), body)
        self.assertNotIn(b"<script>", body)

    def test_5_status_page_and_headers(self):
        d = self.approver.get(self.base + "/ui/status")
        tokens = d.find_element(By.ID, "tokens").text
        self.assertIn("ready", tokens)
        keys = d.find_element(By.ID, "keys").text
        self.assertIn("required; approvers: admin", keys)
        self.assertIsNotNone(d.find_element(By.ID, "plot"))
        self.assertRegex(d.find_element(By.ID, "plot-total").text, r"^[1-9]\d* signature")
        self.assertIn("loaded", d.find_element(By.ID, "config-age").text)
        self.assert_no_script(d)
        self.shot(self.approver, "webui-status.png")
        status, headers, body = self.daemon.request("GET", "/ui/status", client=self.admin)
        self.assertEqual(status, 200)
        csp = headers["content-security-policy"]
        self.assertIn("default-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        status, _, body = self.daemon.request("GET", "/ui/pending", cert=False)
        self.assertEqual(status, 401)


if __name__ == "__main__":
    harness.main()
