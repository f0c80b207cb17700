"""bench/run --wan: what a console across a WAN waits for. Every operation runs twice, straight to the daemon on
loopback and through bench/wan.py's delaying proxy, as a fresh process each time (a cold start: new TCP and
TLS connection), and is reported as wall time and round trips (wall / RTT). "Added" round trips are the
difference to loopback, i.e. what the network costs on top of the processes' own work.

p11-kit's remoting is the peer: `p11-kit server` on a unix socket, bridged to TCP with socat on both sides,
through the same proxy (p11-kit has no TCP transport of its own and no TLS).

The CLI and shim rows run twice: as the first process on the machine (no key list kept on disk: it is
removed before each run) and as a later one, which starts from the key list the client kept
(remote.keylistcache, docs/client-guide.md) and so skips GET /v1/keys. The goals apply to the later one.
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

from wan import WanProxy

GOALS = {"cold_cli_rt": 3.5, "cold_shim_rt": 3.5, "later_sig_rt": 1.1}


def wall(cmd, env, what: str) -> float:
    t = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=900)
    took = time.monotonic() - t
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-1500:]}")
    return took


def big_pe(bench, tmp: Path, mb: int) -> Path:
    """A real mingw PE with `mb` MiB of random (incompressible) data appended after its sections."""
    path = tmp / f"random{mb}m.exe"
    small = bench.make_pe(tmp / "pe-small.exe", 64 * 1024)
    with open(path, "wb") as f:
        f.write(small.read_bytes())
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    return path


class Socat:
    """socat bridging LISTEN to CONNECT, forking per connection."""

    def __init__(self, listen: str, connect: str):
        self.proc = subprocess.Popen(["socat", listen + ",fork,reuseaddr", connect], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def client_config(path: Path, st, url: str) -> Path:
    path.write_text(f"remote:\n  url: {url}\n  certfile: {st.client.certfile}\n  keyfile: {st.client.keyfile}\n"
                    f"  cacert: {st.ca_cert}\npkcs11:\n  loglevel: warning\n  logfile: {path.parent / 'shim.log'}\n")
    return path


def main(a, bench) -> int:
    import harness
    import provision
    if not shutil.which("socat"):
        print("bench/run --wan needs socat (Debian package socat) for the p11-kit peer")
        return 1
    reps = a.reps or (1 if a.quick else 3)
    rtt = a.rtt_ms / 1000.0
    harness.DAEMON = str(bench.DAEMON)
    tmp = Path(tempfile.mkdtemp(prefix="p11relay-wan-"))
    procs = []
    results = {"machine": bench.machine(), "rtt_ms": a.rtt_ms, "mbit": a.mbit, "reps": reps, "ops": {}}
    daemon = None
    try:
        st = provision.provision(tmp / "state", listen="127.0.0.1:0", keys=provision.DEFAULT_KEYS)
        cfg = st.daemon_config()
        cfg["server"]["idletimeout"] = 300
        st.write_config(config=cfg)
        daemon = harness.Daemon(st).start()
        p11kit = bench.P11KitServer(st.env(), tmp).start()
        procs.append(p11kit)
        kit_sock = p11kit.address.split("path=", 1)[1]
        kit_tcp = harness.free_port()
        procs.append(Socat(f"TCP-LISTEN:{kit_tcp},bind=127.0.0.1", f"UNIX-CONNECT:{kit_sock}"))
        mb = 4 if a.quick else 100
        small = bench.make_pe(tmp / "pe-small.exe", 64 * 1024)
        big = big_pe(bench, tmp, mb)
        data = tmp / "data.bin"
        data.write_bytes(os.urandom(1000))
        cert = st.keys["rsa2048"].certfile
        with WanProxy(daemon.port, a.rtt_ms, a.mbit) as relay_wan, WanProxy(kit_tcp, a.rtt_ms, a.mbit) as kit_wan:
            wan_sock = tmp / "p11kit-wan.sock"
            procs.append(Socat(f"UNIX-LISTEN:{wan_sock}", f"TCP:127.0.0.1:{kit_wan.port}"))
            time.sleep(0.3)
            paths = {
                "loopback": {"cfg": client_config(tmp / "loop.yml", st, daemon.url), "kit": kit_sock,
                             "relic": f"https://127.0.0.1:{daemon.port}"},
                "wan": {"cfg": client_config(tmp / "wan.yml", st, f"https://127.0.0.1:{relay_wan.port}/"),
                        "kit": str(wan_sock), "relic": f"https://127.0.0.1:{relay_wan.port}"},
            }

            def env_for(path: str, kit: bool = False) -> dict:
                e = dict(os.environ)
                e.pop("SOFTHSM2_CONF", None)
                e["P11RELAY_CONFIG"] = str(paths[path]["cfg"])
                e["XDG_CACHE_HOME"] = str(tmp / f"cache-{path}")  # where the client keeps the key list
                if kit:
                    e["P11_KIT_SERVER_ADDRESS"] = "unix:path=" + paths[path]["kit"]
                return e

            def ops(path: str) -> dict:
                cfgf = str(paths[path]["cfg"])
                out = tmp / f"out-{path}.exe"
                tool = ["pkcs11-tool", "--token-label", bench.TOKEN, "--login", "--sign", "--id", "01",
                        "-m", "SHA256-RSA-PKCS", "-i", str(data), "-o", str(tmp / "sig.bin")]
                return {
                    "p11relay sign, 64 KiB PE (cold CLI)": (
                        [str(bench.CLI), "-c", cfgf, "sign", "-k", "rsa2048", "-f", str(small), "-o", str(out)],
                        env_for(path), out),
                    f"p11relay sign, {mb} MiB PE (cold CLI)": (
                        [str(bench.CLI), "-c", cfgf, "sign", "-k", "rsa2048", "-f", str(big), "-o", str(out)],
                        env_for(path), out),
                    "osslsigncode through the shim, 64 KiB PE (cold shim)": (
                        ["osslsigncode", "sign", "-pkcs11engine", bench.PKCS11_ENGINE, "-pkcs11module",
                         str(bench.SHIM), "-key", f"pkcs11:token={bench.TOKEN};object=rsa2048;type=private;"
                         "pin-value=unused", "-certs", str(cert), "-h", "sha256", "-in", str(small),
                         "-out", str(out)], env_for(path), out),
                    "pkcs11-tool signature through the shim (cold shim)": (
                        [tool[0], "--module", str(bench.SHIM), *tool[1:], "--pin", "unused"], env_for(path), None),
                    "pkcs11-tool signature through p11-kit remoting (peer)": (
                        [tool[0], "--module", bench.P11KIT_CLIENT, *tool[1:], "--pin", st.user_pin],
                        env_for(path, kit=True), None),
                    f"relic-style pe-coff upload, {mb} MiB random PE (curl)": (
                        ["curl", "-sS", "--fail", "--cacert", str(st.ca_cert), "--cert", str(st.client.certfile),
                         "--key", str(st.client.keyfile), "-H", "Transfer-Encoding: chunked",
                         "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{big}", "-o", os.devnull,
                         paths[path]["relic"] + "/sign?digest=SHA-256&filename=app.exe&key=rsa2048&sigtype=pe-coff"],
                        env_for(path), None),
                }

            names = list(ops("loopback"))
            for name in names:
                for kept in ((False, True) if "(cold " in name else (None,)):
                    label = name if kept is None else name + (", key list kept" if kept else ", first run")
                    row = {path: timed(ops(path)[name], reps, kept, relay_wan, kit_wan) for path in ("loopback", "wan")}
                    row["round_trips"] = row["wan"]["median_s"] / rtt
                    row["added_round_trips"] = (row["wan"]["median_s"] - row["loopback"]["median_s"]) / rtt
                    row["load"] = bench.loadavg()
                    results["ops"][label] = row
                    bench.log(f"  {label}: loopback {row['loopback']['median_s']:.3f} s, WAN "
                              f"{row['wan']['median_s']:.3f} s = {row['round_trips']:.2f} RTT "
                              f"(+{row['added_round_trips']:.2f}), connections {row['wan']['connections']} "
                              f"(load {row['load']})")
            # Later signatures in one process: p11bench's p50 over a warm connection.
            later = {}
            for name, module, kit in (("shim", str(bench.SHIM), False), ("p11kit", bench.P11KIT_CLIENT, True)):
                env = env_for("wan", kit=kit)
                env["P11BENCH_PIN"] = st.user_pin if kit else "unused"
                r = bench.p11bench(module, "ec256", "ECDSA", 1, 5 if a.quick else 20, env, name, warmup=2)
                later[name] = {"p50_us": r["p50_us"], "round_trips": r["p50_us"] / 1e6 / rtt, "errors": r["errors"]}
            results["later"] = later
        results["machine"]["load_end"] = bench.loadavg()
    finally:
        for p in reversed(procs):
            p.stop()
        if daemon:
            daemon.stop()
        out = a.json or (tmp / "wan-results.json")
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        bench.log(f"results: {out}")
        if not a.keep:
            for p in list(tmp.iterdir()):
                if p != out:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    report(results)
    return 0 if all(v["errors"] == 0 for v in results.get("later", {}).values()) else 1


def timed(op, reps: int, kept, relay_wan, kit_wan) -> dict:
    """`reps` fresh runs of one operation: median wall time and the proxies' connection count per run. `kept`
    False removes the client's kept key list before each run, True makes it (one unmeasured run) first."""
    cmd, env, out = op
    cache = Path(env["XDG_CACHE_HOME"])
    if kept:
        shutil.rmtree(cache, ignore_errors=True)
        if out:
            out.unlink(missing_ok=True)
        wall(cmd, env, "warm-up")
    ts, conns = [], []
    for _ in range(reps):
        if out:
            out.unlink(missing_ok=True)
        if kept is False:
            shutil.rmtree(cache, ignore_errors=True)
        c0 = relay_wan.connections + kit_wan.connections
        ts.append(wall(cmd, env, " ".join(cmd[:2])))
        conns.append(relay_wan.connections + kit_wan.connections - c0)
    return {"seconds": ts, "median_s": statistics.median(ts), "connections": conns}


def report(r: dict) -> None:
    m = r["machine"]
    print(f"# p11relay through a simulated WAN: RTT {r['rtt_ms']:.0f} ms, {r['mbit']:.0f} Mbit/s each way")
    print(f"date {m['date']}; nproc {m['nproc']}; {m['cpu']}; load at start {m['load_start']}, at end "
          f"{m.get('load_end', '?')}; medians of {r['reps']} run(s), each a fresh process\n")
    print("| operation | loopback s | WAN s | round trips (WAN ÷ RTT) | added round trips | TCP connections |")
    print("|---|---|---|---|---|---|")
    for name, row in r["ops"].items():
        print(f"| {name} | {row['loopback']['median_s']:.3f} | {row['wan']['median_s']:.3f} | "
              f"{row['round_trips']:.2f} | {row['added_round_trips']:+.2f} | {max(row['wan']['connections'])} |")
    for name, v in r.get("later", {}).items():
        print(f"| later signature in the same process, {name} (p50) | | {v['p50_us'] / 1e6:.3f} | "
              f"{v['round_trips']:.2f} | | |")
    checks = []
    ops = r["ops"]
    for name, row in ops.items():
        if "key list kept" not in name:
            continue
        if "(cold CLI)" in name and "64 KiB" in name:
            checks.append((name, row["round_trips"], GOALS["cold_cli_rt"]))
        if "(cold shim)" in name:
            checks.append((name, row["round_trips"], GOALS["cold_shim_rt"]))
    if "shim" in r.get("later", {}):
        checks.append(("later signature in the same process (shim)", r["later"]["shim"]["round_trips"],
                       GOALS["later_sig_rt"]))
    print("\n| measure | round trips | goal | met |\n|---|---|---|---|")
    for name, v, goal in checks:
        print(f"| {name} | {v:.2f} | <= {goal} | {'yes' if v <= goal else 'NO'} |")
