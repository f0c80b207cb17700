"""A simulated WAN on 127.0.0.1 for bench/run --wan: a TCP proxy that delays every byte by half the round-trip
time in each direction and limits each direction to a bandwidth, like a long, thin link. Nothing leaves the
machine: it listens on 127.0.0.1 and connects to a port on 127.0.0.1.

    with WanProxy(target_port, rtt_ms=50, mbit=100) as proxy:
        ... connect to 127.0.0.1:proxy.port ...
    proxy.connections  # how many TCP connections went through it

Each direction is a queue of (arrival time, bytes): a chunk leaves no earlier than its arrival plus RTT/2 and
no earlier than the link is free (bytes / bandwidth after the previous chunk). The queue is bounded, so a
fast sender is slowed down by TCP's own flow control, as on a real link.
"""
from __future__ import annotations

import asyncio
import threading
import time

CHUNK = 64 * 1024
QUEUE_CHUNKS = 64   # 4 MiB in flight per direction, well above the bandwidth-delay product of 100 Mbit x 100 ms


class WanProxy:
    def __init__(self, target_port: int, rtt_ms: float = 50.0, mbit: float = 100.0, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.one_way_s = rtt_ms / 2000.0
        self.bytes_per_s = mbit * 1e6 / 8.0
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="wan-proxy", daemon=True)
        self._ready = threading.Event()
        self._server = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> "WanProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("WAN proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    # -- one connection ----------------------------------------------------------------------------------
    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        # A real TCP connect costs one round trip (SYN, SYN-ACK) before the client's first byte can travel;
        # the local connect to this proxy is instant, so the connection's data waits one RTT here.
        await asyncio.sleep(2 * self.one_way_s)
        await asyncio.gather(self._direction(c_reader, s_writer), self._direction(s_reader, c_writer))

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        q: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        sender = asyncio.ensure_future(self._send(q, writer))
        try:
            while True:
                data = await reader.read(CHUNK)
                await q.put((time.monotonic(), data))
                if not data:
                    break
        except (ConnectionError, OSError):
            await q.put((time.monotonic(), b""))
        await sender

    async def _send(self, q: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        link_free = 0.0
        while True:
            arrived, data = await q.get()
            now = time.monotonic()
            due = max(arrived + self.one_way_s, link_free)
            if due > now:
                await asyncio.sleep(due - now)
            if not data:
                try:
                    writer.write_eof()
                except (OSError, RuntimeError):
                    pass
                return
            link_free = max(time.monotonic(), link_free) + len(data) / self.bytes_per_s
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                return
