"""bench/run's "audit" part: signatures/s with the audit log on the machine's disk (the state directory, not a
tmpfs), every line made durable before its signature is returned, two ways in the same run:

    each    the writer calls fdatasync for its own line under the log's lock (P11RELAYD_AUDIT_SYNC=each)
    group   group commit, the default: lines written while one fdatasync runs share the next one

Same daemon binary, same token, the same fleet of client processes (tests/shim-driver/shim-driver, one connection
each, ECDSA P-256), the two modes interleaved --reps times; the median of each and group / each are reported
with the load average. Every run also checks that the audit log holds one line per signature and verifies.
"""
from __future__ import annotations

import os
import statistics
import subprocess
from pathlib import Path

import consoles


def run_mode(bench, st, tmp: Path, mode: str, rep: int, n: int, seconds: float) -> dict:
    import harness
    import provision
    audit = tmp / f"audit-{mode}-{rep}.log"
    cfg = st.daemon_config()
    cfg["auditfile"] = str(audit)
    config = st.write_config(st.state_dir / f"p11relayd-audit-{mode}.yml", config=cfg)
    env = st.env()
    if mode == "each":
        env["P11RELAYD_AUDIT_SYNC"] = "each"
    daemon = harness.Daemon(st, config=config, env=env).start()
    try:
        client = provision.write_yaml(tmp / f"client-audit-{mode}.yml", {
            "remote": {"url": daemon.url, "certfile": str(st.client.certfile), "keyfile": str(st.client.keyfile),
                       "cacert": str(st.ca_cert)},
            "pkcs11": {"loglevel": "warning", "logfile": str(tmp / "shim-audit.log")}})
        shim_env = dict(os.environ)
        shim_env.pop("SOFTHSM2_CONF", None)
        shim_env["P11RELAY_CONFIG"] = str(client)
        runs = consoles.run_fleet(bench.DRIVER, bench.SHIM, shim_env, n, "ec256", "ECDSA", ["bench", "1", str(seconds)])
    finally:
        daemon.stop()
    good = [r[1] for r in runs if r[0] == 0 and r[1]]
    ops = sum(g["ops"] for g in good)
    errors = sum(1 for r in runs if r[0] != 0 or not r[1]) + sum(g["failed"] for g in good)
    lines = sum(1 for _ in audit.open()) if audit.exists() else 0
    verify = subprocess.run([str(bench.DAEMON), "audit-verify", str(audit)], capture_output=True)
    res = {"mode": mode, "consoles": n, "seconds": seconds, "ops_per_s": ops / seconds, "signatures": ops,
           "audit_lines": lines, "audit_verify": verify.returncode == 0, "errors": errors,
           "p50_ms": statistics.median(g["p50_ms"] for g in good) if good else 0.0,
           "p99_ms": statistics.median(g["p99_ms"] for g in good) if good else 0.0, "load": bench.loadavg()}
    audit.unlink(missing_ok=True)
    bench.log(f"  audit {mode:5}: {res['ops_per_s']:.0f} sig/s, p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, "
              f"{lines} audit lines for >= {ops} signatures, verify {'ok' if res['audit_verify'] else 'FAILED'}, "
              f"errors {errors} (load {res['load']})")
    return res


def compare(bench, st, tmp: Path, n: int, seconds: float, reps: int) -> dict:
    runs = {"each": [], "group": []}
    for rep in range(reps):
        for mode in ("each", "group"):
            runs[mode].append(run_mode(bench, st, tmp, mode, rep, n, seconds))
    med = {m: statistics.median(r["ops_per_s"] for r in v) for m, v in runs.items()}
    ratio = med["group"] / med["each"] if med["each"] else 0.0
    bench.log(f"  audit group commit / fdatasync per line: {med['group']:.0f} / {med['each']:.0f} sig/s = {ratio:.2f}")
    # The shim counts a signature once C_Sign returned; the daemon wrote its line before answering, and a
    # console stopped mid-request leaves a line for a signature it did not count: lines >= signatures.
    sound = all(r["errors"] == 0 and r["audit_verify"] and r["audit_lines"] >= r["signatures"]
                for v in runs.values() for r in v)
    return {"runs": runs, "median_ops_per_s": med, "group_over_each": ratio, "sound": sound}
