#!/usr/bin/python3
"""The documentation and the samples say what the daemon accepts (docs/operator-guide.md section 3,
docs/policy.md "Configuring policy", config/p11relayd.yml):

- every key in the operator guide's and the policy guide's key tables is one `p11relayd --check-config`
  accepts in that section (a made-up key in the same place is refused, so the check can fail);
- the sample config and every commented-out key in it are accepted keys;
- every /var/lib and /var/log path in docs/ and config/ is one the systemd unit makes writable
  (StateDirectory=, LogsDirectory= under ProtectSystem=strict).
"""
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SAMPLE = ROOT / "config" / "p11relayd.yml"
UNIT = ROOT / "systemd" / "p11relayd.service"

# Where a key of each documented section goes in a YAML file ({k}: the key). The server section the loader
# reads first is complete, so a later section's keys are reached.
SERVER = "server:\n  listen: 127.0.0.1:0\n  certfile: c.pem\n  keyfile: k.pem\n"
PLACES = {
    "server": "server:\n  {k}: ~\n",
    "tokens.&lt;name&gt;": SERVER + "tokens:\n  t:\n    {k}: ~\n",
    "keys.&lt;name&gt;": SERVER + "keys:\n  k:\n    {k}: ~\n",
    "timestamp": SERVER + "timestamp:\n  {k}: ~\n",
    "clients.&lt;fingerprint&gt;": SERVER + "clients:\n  " + "ab" * 32 + ":\n    {k}: ~\n",
    "top level": "{k}: ~\n",
    "policy": SERVER + "keys:\n  k:\n    policy:\n      {k}: ~\n",
}


def table_keys(text: str, heading: str) -> list:
    """The back-quoted names in the first column of the table under `### heading` (or `## heading`)."""
    m = re.search(r"^#{2,3} " + re.escape(heading) + r"\s*$(.*?)(?=^#{1,3} )", text, re.M | re.S)
    if not m:
        raise AssertionError(f"no section '{heading}'")
    keys = []
    for line in m.group(1).splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        keys += re.findall(r"`([a-z][a-z0-9]*)`", first)
    return keys


def documented() -> dict:
    guide = (DOCS / "operator-guide.md").read_text()
    ref = guide[guide.index("## 3. Configuration reference"):guide.index("## 4.")] + "\n# end\n"
    out = {s: table_keys(ref, s) for s in PLACES if s != "policy"}
    policy = (DOCS / "policy.md").read_text() + "\n# end\n"
    out["policy"] = table_keys(policy, "Configuring policy")
    return out


class ConfigDocs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="p11relay-config-docs-"))
        for name in ("c.pem", "k.pem"):  # SERVER's files: present (their content is checked after the keys)
            (cls.tmp / name).write_text("")
            (cls.tmp / name).chmod(0o600)

    @classmethod
    def tearDownClass(cls):
        harness.remove_tmp(cls.tmp)

    def check(self, yaml: str) -> str:
        f = self.tmp / "c.yml"
        f.write_text(yaml)
        f.chmod(0o600)
        p = subprocess.run([harness.DAEMON, "--check-config", str(f)], capture_output=True, timeout=30)
        return (p.stdout + p.stderr).decode(errors="replace")

    def test_every_documented_key_is_accepted_where_documented(self):
        found = documented()
        for section, keys in found.items():
            self.assertGreater(len(keys), 1, f"no keys read from the table of '{section}'")
            # The control: a key nobody accepts is refused in the same place.
            self.assertIn("unknown key 'nosuchkey'", self.check(PLACES[section].format(k="nosuchkey")), section)
            for k in keys:
                with self.subTest(section=section, key=k):
                    self.assertNotIn(f"unknown key '{k}'", self.check(PLACES[section].format(k=k)))

    def test_the_sample_and_its_commented_keys_are_accepted(self):
        text = SAMPLE.read_text()
        self.assertNotIn("unknown key", self.check(text))
        # "  # name: value" lines at a key's indentation: options shown commented out.
        uncommented = re.sub(r"^(\s*)# ([a-z][a-z0-9]*:( |$))", r"\1\2", text, flags=re.M)
        out = self.check(uncommented)
        self.assertNotIn("unknown key", out)

    def test_state_and_log_paths_are_the_units(self):
        unit = UNIT.read_text()
        allowed = {f"/var/lib/{d}" for d in re.findall(r"^StateDirectory=(\S+)", unit, re.M)}
        allowed |= {f"/var/log/{d}" for d in re.findall(r"^LogsDirectory=(\S+)", unit, re.M)}
        self.assertEqual(allowed, {"/var/lib/p11relay", "/var/log/p11relay"})
        files = list(DOCS.rglob("*.md")) + [SAMPLE]
        for f in files:
            for path in re.findall(r"/var/(?:lib|log)/[A-Za-z0-9_.-]+", f.read_text()):
                if path.startswith("/var/lib/p11relay-faulty-"):
                    continue  # a test's scratch directory (docs/reliability.md), not the daemon's
                with self.subTest(file=str(f.relative_to(ROOT)), path=path):
                    self.assertIn(path, allowed)


if __name__ == "__main__":
    harness.main()
