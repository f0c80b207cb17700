#!/usr/bin/python3
"""Keep the man pages (docs/man/*.md) in step with the code: every option and subcommand that
`p11relayd --help` and `p11relay [SUBCOMMAND] --help` print, and every key p11relayd's config loader
accepts (the only_keys({...}) lists in daemon/config/config.cpp), must appear in the page that documents it.

Usage: check.py P11RELAYD P11RELAY SOURCE_ROOT    (registered as the unit test `man-pages`)
"""

import re
import subprocess
import sys
from pathlib import Path


def help_text(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def options(text):
    """Long options and subcommand names from CLI11 help output."""
    opts = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    subs = []
    if "Subcommands:" in text:
        for line in text.split("Subcommands:", 1)[1].splitlines():
            m = re.match(r"^  ([a-z][a-z0-9-]*)\s", line)
            if m:
                subs.append(m.group(1))
    return opts, subs


def page(root, name):
    # pandoc Markdown escapes "--" as "\-\-" so that it is not turned into a dash.
    return (root / "docs" / "man" / name).read_text().replace("\\-", "-")


def main():
    daemon, cli, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    missing = []

    def need(words, text, where):
        for w in sorted(words):
            if not re.search(r"(?<![\w-])" + re.escape(w) + r"(?![\w-])", text):
                missing.append(f"{where}: {w}")

    daemon_page = page(root, "p11relayd.8.md")
    opts, subs = options(help_text(daemon, "--help"))
    need(opts | set(subs), daemon_page, "p11relayd.8.md")

    cli_page = page(root, "p11relay.1.md")
    opts, subs = options(help_text(cli, "--help"))
    need(opts | set(subs), cli_page, "p11relay.1.md")
    for sub in subs:
        sub_opts, _ = options(help_text(cli, sub, "--help"))
        need(sub_opts - {"--help"}, cli_page, f"p11relay.1.md ({sub})")

    source = (root / "daemon" / "config" / "config.cpp").read_text()
    keys = set()
    for block in re.findall(r"only_keys\([^{]*\{([^}]*)\}", source):
        keys.update(re.findall(r'"([a-z0-9_]+)"', block))
    if len(keys) < 20:
        missing.append(f"daemon/config/config.cpp: found only {len(keys)} config keys; has the loader changed shape?")
    need(keys, page(root, "p11relayd.yml.5.md"), "p11relayd.yml.5.md (config key)")

    for m in missing:
        print("not documented in docs/man/" + m)
    print(f"man pages: {len(missing)} missing")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
