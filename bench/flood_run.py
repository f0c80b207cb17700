"""bench/run --only flood: a legitimate client's latency under an unauthenticated connection flood
(tests/integration/flood.py: idle TCP connections that never send a byte plus slow ones trickling a ClientHello,
re-opened as soon as the daemon drops them). Each client operation opens a NEW connection (full mutual-TLS
handshake) and signs once, so the handshake admission is what is measured. Baseline: the same client, same
daemon, same run, before the flood starts."""
from __future__ import annotations

import statistics

import flood


def measure(bench, daemon, n_idle: int, n_slow: int, seconds: float) -> dict:
    """The client signs for `seconds` without the flood, then for `seconds` with it (longer than the daemon's
    handshake timeout, so the flood's connections reaching their deadline and re-opening are included)."""
    def client(secs: float = seconds) -> tuple:
        return flood.legit_latencies(daemon, 0, secs)

    client(1.0)   # warm-up (first connections, allocator)
    base, base_failed = client()
    load_before = bench.loadavg()
    f = flood.Flood(daemon.port, n_idle, n_slow).start(settle=3.0)
    try:
        under, under_failed = client()
        stats = f.stats()
        load_under = bench.loadavg()
    finally:
        f.stop()
    pct = flood.percentile
    return {"idle": n_idle, "slow": n_slow, "seconds": seconds, "ops": len(under) + under_failed, "flood": stats,
            "base_ms": {"p50": pct(base, 50) * 1e3, "p99": pct(base, 99) * 1e3}, "base_failed": base_failed,
            "under_ms": {"p50": pct(under, 50) * 1e3, "p99": pct(under, 99) * 1e3}, "under_failed": under_failed,
            "p99_ratio": pct(under, 99) / pct(base, 99) if base and under else float("nan"),
            "mean_ratio": statistics.mean(under) / statistics.mean(base) if base and under else float("nan"),
            "load_before": load_before, "load_under": load_under}


def report(r: dict) -> list:
    b, u = r["base_ms"], r["under_ms"]
    print(f"connection flood: {r['idle']} idle TCP + {r['slow']} slow-ClientHello connections "
          f"({r['flood']['opened']} opened, {r['flood']['closed_by_server']} dropped by the daemon) for {r['seconds']:.0f} s; "
          f"a client making new mutual-TLS connections, one ECDSA signature each ({r['ops']} under the flood): p50/p99 {b['p50']:.1f}/{b['p99']:.1f} ms "
          f"-> {u['p50']:.1f}/{u['p99']:.1f} ms under the flood, failed {r['base_failed']} -> {r['under_failed']} "
          f"(load {r['load_before']} -> {r['load_under']})")
    return [("flood: legitimate client p99 under the flood ÷ without", r["p99_ratio"], "<=", 2.0)]
