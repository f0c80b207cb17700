"""bench/run's "consoles" part: many client processes signing at once through one daemon, as a fleet of signing
consoles does. Each console is its own process (tests/shim-driver/shim-driver, one thread) with its own connection;
the baseline is what the token gives two local threads (bench/p11bench on SoftHSM directly).

Reported per mechanism: total signatures/s and its ratio to the baseline, p50/p99 latency over the consoles,
fairness (most ÷ fewest signatures completed by one console), errors. Then the same fleet against a slow
token (tests/faulty-pkcs11 adding 200 ms to every C_Sign): every console must get its signatures, none may
time out, and the queue must serve them in turn.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

MECHS = (("ECDSA", "ec256"), ("RSA_PKCS", "rsa2048"))


def run_fleet(driver: Path, shim: Path, env: dict, n: int, key: str, mech: str, args: list) -> list:
    """Starts n shim-driver processes at once; returns (exit code, JSON line or None, wall s) per process."""
    procs = []
    t0 = time.monotonic()
    for _ in range(n):
        procs.append(subprocess.Popen([str(driver), str(shim), "unused", key, mech, *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for p in procs:
        so, se = p.communicate(timeout=600)
        line = next((x for x in so.decode().splitlines() if x.startswith("{")), None)
        out.append((p.returncode, json.loads(line) if line else None, time.monotonic() - t0,
                    se.decode(errors="replace")[-300:]))
    return out


def fleet_throughput(bench, driver: Path, env: dict, n: int, seconds: float) -> dict:
    res = {}
    for mech, key in MECHS:
        direct_env = dict(env["direct"])
        base = bench.p11bench(bench.SOFTHSM, key, mech, 2, 300 if mech == "ECDSA" else 100, direct_env, "direct")
        runs = run_fleet(driver, bench.SHIM, env["shim"], n, key, mech, ["bench", "1", str(seconds)])
        good = [r[1] for r in runs if r[0] == 0 and r[1]]
        ops = [g["ops"] for g in good]
        errors = sum(1 for r in runs if r[0] != 0 or not r[1]) + sum(g["failed"] for g in good)
        total = sum(ops) / seconds
        res[mech] = {
            "consoles": n, "seconds": seconds, "ops_per_s": total, "baseline_2_threads_ops_per_s": base["ops_per_s"],
            "ratio": total / base["ops_per_s"] if base["ops_per_s"] else 0.0,
            "p50_ms": statistics.median(g["p50_ms"] for g in good) if good else 0.0,
            "p99_ms": statistics.median(g["p99_ms"] for g in good) if good else 0.0,
            "worst_p99_ms": max((g["p99_ms"] for g in good), default=0.0),
            "fairness_max_over_min": (max(ops) / min(ops)) if ops and min(ops) else float("inf"),
            "errors": errors, "first_error": next((r[3] for r in runs if r[0] != 0), ""), "load": bench.loadavg(),
        }
        bench.log(f"  {n} consoles {mech}: {total:.0f} sig/s vs {base['ops_per_s']:.0f} (2 local threads) = "
                  f"{res[mech]['ratio']:.2f}; p50 {res[mech]['p50_ms']:.1f} ms p99 {res[mech]['p99_ms']:.1f} ms; "
                  f"fairness {res[mech]['fairness_max_over_min']:.2f}; errors {errors} (load {bench.loadavg()})")
    return res


def slow_token(bench, driver: Path, st, n: int, per_console: int, hang_ms: int) -> dict:
    """A second daemon whose token module is faulty-pkcs11 with hang_ms: n consoles, per_console signatures
    each. Needs root (the module directory must be root-owned); skipped otherwise."""
    import harness
    faulty = bench.BUILD / "tests" / "faulty-pkcs11" / "faulty-pkcs11.so"
    if os.geteuid() != 0 or not faulty.exists():
        return {"skipped": "needs root and tests/faulty-pkcs11 built"}
    moddir = Path(tempfile.mkdtemp(prefix="p11relay-bench-faulty-", dir="/var/lib"))
    daemon = None
    try:
        os.chown(moddir, 0, 0)
        os.chmod(moddir, 0o755)
        module = moddir / "faulty-pkcs11.so"
        shutil.copyfile(faulty, module)
        os.chmod(module, 0o755)
        control = st.state_dir / "slow.ctl"
        control.write_text(f"hang_ms={hang_ms}\n")
        cfg = st.daemon_config()
        cfg["server"]["moduledirs"] = [str(moddir)]
        cfg["tokens"][st.token_name]["provider"] = str(module)
        timeout = cfg["tokens"][st.token_name].get("timeout", 60)
        cfg_path = st.state_dir / "slow.yml"
        import provision
        provision.write_yaml(cfg_path, cfg)
        os.chmod(cfg_path, 0o600)
        env = st.env()
        env["FAULTY_PKCS11_CONTROL"] = str(control)
        daemon = harness.Daemon(st, config=cfg_path, env=env).start()
        ccfg = st.state_dir / "slow-client.yml"
        ccfg.write_text(f"remote:\n  url: {daemon.url}\n  certfile: {st.client.certfile}\n"
                        f"  keyfile: {st.client.keyfile}\n  cacert: {st.ca_cert}\n  timeout: {timeout + 30}\n"
                        f"pkcs11:\n  loglevel: warning\n  logfile: {st.state_dir / 'slow-shim.log'}\n")
        cenv = dict(os.environ)
        cenv.pop("SOFTHSM2_CONF", None)
        cenv["P11RELAY_CONFIG"] = str(ccfg)
        t0 = time.monotonic()
        runs = run_fleet(driver, bench.SHIM, cenv, n, "ec256", "ECDSA_SHA256", ["loop", str(per_console)])
        took = time.monotonic() - t0
        walls = sorted(r[2] for r in runs)
        failed = [r for r in runs if r[0] != 0]
        workers = cfg["server"].get("numworkers", 0) or "default"
        res = {"consoles": n, "signatures_each": per_console, "hang_ms": hang_ms, "token_timeout_s": timeout,
               "numworkers": workers, "total_s": took, "failed_consoles": len(failed),
               "first_error": failed[0][3] if failed else "", "fastest_console_s": walls[0],
               "slowest_console_s": walls[-1], "median_console_s": statistics.median(walls),
               "ideal_serial_s": n * per_console * hang_ms / 1000.0, "load": bench.loadavg()}
        bench.log(f"  slow token ({hang_ms} ms/signature): {n} consoles x {per_console}: {took:.1f} s total, "
                  f"console finish times {walls[0]:.1f}..{walls[-1]:.1f} s (median {res['median_console_s']:.1f}), "
                  f"{len(failed)} failed (load {bench.loadavg()})")
        return res
    finally:
        if daemon:
            daemon.stop()
        shutil.rmtree(moddir, ignore_errors=True)


def report(r: dict) -> list:
    """Prints the part's lines; returns (name, value, op, goal) checks for the summary table."""
    checks = []
    for mech, v in r.get("fleet", {}).items():
        print(f"{v['consoles']} consoles (processes), {mech}: {v['ops_per_s']:.0f} sig/s; 2 local threads on the "
              f"token {v['baseline_2_threads_ops_per_s']:.0f} sig/s; ratio {v['ratio']:.2f}; p50 {v['p50_ms']:.1f} "
              f"ms, p99 {v['p99_ms']:.1f} ms (worst console {v['worst_p99_ms']:.1f}); fairness max/min "
              f"{v['fairness_max_over_min']:.2f}; errors {v['errors']} (load {v['load']})")
        checks.append((f"{v['consoles']} consoles {mech} ÷ 2 local threads", v["ratio"], ">=", 0.9))
        checks.append((f"{v['consoles']} consoles {mech}: errors", v["errors"], "<=", 0))
    s = r.get("slow")
    if s and "skipped" not in s:
        print(f"slow token ({s['hang_ms']} ms per signature, numworkers {s['numworkers']}): {s['consoles']} consoles "
              f"x {s['signatures_each']}: all done in {s['total_s']:.1f} s (serial floor {s['ideal_serial_s']:.1f} s); "
              f"consoles finished between {s['fastest_console_s']:.1f} and {s['slowest_console_s']:.1f} s; "
              f"{s['failed_consoles']} failed; token timeout {s['token_timeout_s']} s (load {s['load']})")
        checks.append(("slow token: consoles that failed or timed out", s["failed_consoles"], "<=", 0))
    elif s:
        print(f"slow token: skipped ({s['skipped']})")
    return checks
