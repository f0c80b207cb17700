"""An unauthenticated connection flood against a TLS listener, for tests/integration/test_connection_flood.py and
bench/run --only flood: `idle` TCP connections that never send a byte, and `slow` ones that send a real TLS
ClientHello one byte every `interval` seconds. A connection the server closes is opened again at once, as an
attacker who repeats would. Runs in a background thread (one epoll loop); stdlib only."""
from __future__ import annotations

import base64
import errno
import hashlib
import json
import resource
import selectors
import socket
import ssl
import threading
import time


def client_hello(host: str = "127.0.0.1") -> bytes:
    """The bytes of a real ClientHello (Python's TLS client), without a server."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n), hard))


class Flood:
    def __init__(self, port: int, idle: int, slow: int, interval: float = 1.0, host: str = "127.0.0.1"):
        self.addr = (host, port)
        self.idle, self.slow, self.interval = idle, slow, interval
        self.hello = client_hello(host)
        self.sel = selectors.DefaultSelector()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.opened = 0     # connections made (first ones and re-opened ones)
        self.closed_by_server = 0
        self.refused = 0    # connect() failed (backlog full, fd limit)
        self.open_now = 0
        raise_fd_limit(idle + slow + 1024)

    # one connection: state = bytes of the ClientHello sent so far (None for an idle one)
    def _open(self, slow: bool) -> None:
        s = socket.socket()
        s.setblocking(False)
        rc = s.connect_ex(self.addr)
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            self.refused += 1
            return
        self.opened += 1
        self.open_now += 1
        self.sel.register(s, selectors.EVENT_READ, {"slow": slow, "sent": 0})

    def _reopen(self, key) -> None:
        self.sel.unregister(key.fileobj)
        key.fileobj.close()
        self.open_now -= 1
        self.closed_by_server += 1
        if not self.stop_flag.is_set():
            self._open(key.data["slow"])

    def _trickle(self) -> None:
        for key in list(self.sel.get_map().values()):
            d = key.data
            if d["slow"] and d["sent"] < len(self.hello) - 1:   # never the last byte
                try:
                    key.fileobj.send(self.hello[d["sent"]:d["sent"] + 1])
                    d["sent"] += 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass   # closed by the server: the read event reopens it

    def _run(self) -> None:
        for _ in range(self.idle):
            self._open(False)
        for _ in range(self.slow):
            self._open(True)
        next_trickle = time.monotonic() + self.interval
        while not self.stop_flag.is_set():
            for key, _ in self.sel.select(timeout=0.05):
                try:
                    data = key.fileobj.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._reopen(key)
            if time.monotonic() >= next_trickle:
                self._trickle()
                next_trickle = time.monotonic() + self.interval
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()

    def start(self, settle: float = 2.0) -> "Flood":
        self.thread.start()
        time.sleep(settle)
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(30)

    def stats(self) -> dict:
        return {"opened": self.opened, "closed_by_server": self.closed_by_server, "refused": self.refused,
                "open_now": self.open_now}


def sign_once(conn, i: int, key: str = "ec256") -> bool:
    """One ECDSA signature over sha256(str(i)) on an open HTTPSConnection; True when it was answered 200."""
    body = json.dumps({"mechanism": "CKM_ECDSA",
                       "input": base64.b64encode(hashlib.sha256(str(i).encode()).digest()).decode()})
    conn.request("POST", f"/v1/keys/{key}/sign", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    return r.status == 200


def percentile(values: list, p: float) -> float:
    """The p-th percentile (nearest rank); NaN for no values."""
    v = sorted(values)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def legit_latencies(daemon, n: int, seconds: float = 0.0) -> tuple[list, int]:
    """A legitimate client's operations, each on a NEW connection (full mutual-TLS handshake, then one ECDSA
    signature, sign_once): `n` of them, or as many as fit in `seconds` when that is given. Returns (seconds
    of each successful one, failures)."""
    lat, failed = [], 0
    end = time.monotonic() + seconds
    while (time.monotonic() < end) if seconds else (len(lat) + failed < n):
        t = time.monotonic()
        try:
            conn = daemon.connect(timeout=30)
            try:
                ok = sign_once(conn, len(lat) + failed)
            finally:
                conn.close()
        except (OSError, ssl.SSLError):
            ok = False
        if ok:
            lat.append(time.monotonic() - t)
        else:
            failed += 1
    return lat, failed
