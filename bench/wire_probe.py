"""Warm block-read throughput of one transport, or of a raw TCP socket: probe kinds (bench/probe.py).

Blocks land in a buffer that is touched beforehand, so the figure is the wire's, not first-touch
page faults'.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Callable

from .probe import run_together


def probe_transport(spec: dict) -> dict:
    from cachenode.blocks import block_count
    from cachenode.client.api import AsyncClient
    from cachenode.placement import Member
    from cachenode.blocks import BlockRequest
    from cachenode.source import parse_source

    async def run() -> dict:
        client = AsyncClient(nodes=[spec["node"]], token=spec["token"], transports=spec["transport"])
        try:
            st = await client.stat(spec["url"])
            me = (await client.members())[0]
            ch = client.cluster.channel(Member(me.id, me.url, True, me.transports))
            size, bs = st["size"], st["block_size"]
            buf = bytearray(size)  # zero-filled: every page touched before timing
            view = memoryview(buf)
            ref = parse_source(spec["url"])
            sem = asyncio.Semaphore(spec.get("window", 8))

            async def one(i: int) -> None:
                async with sem:
                    req = BlockRequest(ref, st["etag"], size, bs, i)
                    await ch.read_block(req, view[i * bs:min(size, (i + 1) * bs)])

            best = None
            for _ in range(spec.get("repeat", 3)):
                t0 = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(block_count(size, bs))))
                dt = time.perf_counter() - t0
                best = dt if best is None else min(best, dt)
            return {"gb_per_s": size / best / 1e9, "seconds": best, "bytes": size,
                    "channel": type(ch).__name__}
        finally:
            await client.close()

    return asyncio.run(run())


def _send_raw(port: int, size: int, repeat: int, chunk: int = 1 << 20) -> None:
    payload = memoryview(bytes(chunk))
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(repeat):
            left = size
            while left:
                left -= s.send(payload[:min(chunk, left)])


def probe_raw_tcp(spec: dict) -> dict:
    """A plain socket sender and receiver on loopback, 1 MiB writes: the ceiling for a TCP wire.

    By default the sender is a separate process, as a node is to its loader (and iperf3's client
    to its server); with "same_process" it is a thread of the receiver, which this VM runs
    about 1.7x faster (no context switch between the two ends).
    """
    size, repeat = spec["bytes"], spec.get("repeat", 3)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    received: dict = {}
    try:
        if spec.get("same_process"):
            threading.Thread(target=_send_raw, args=(port, size, repeat), daemon=True).start()
            received = _receive_raw(srv, size, repeat)
        else:
            def receive() -> None:
                received.update(_receive_raw(srv, size, repeat))

            run_together([{"kind": "raw_sender", "port": port, "bytes": size, "repeat": repeat}], 900,
                         beside=receive)
    finally:
        srv.close()
    return received


def _receive_raw(srv: socket.socket, size: int, repeat: int) -> dict:
    """Accept the sender and time `repeat` passes of `size` bytes into a pre-touched buffer (the best)."""
    conn, _ = srv.accept()
    buf = bytearray(size)  # zero-filled: every page touched before timing
    view = memoryview(buf)
    best = None
    for _ in range(repeat):
        got, t0 = 0, time.perf_counter()
        while got < size:
            n = conn.recv_into(view[got:], min(1 << 20, size - got))
            if not n:
                raise ConnectionError("raw TCP sender stopped early")
            got += n
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    conn.close()
    return {"gb_per_s": size / best / 1e9, "seconds": best, "bytes": size}


def prepare(spec: dict) -> Callable[[], dict]:
    """The probe kinds "wire" (a transport), "raw_tcp" (a socket receiver) and "raw_sender" (its
    sender in a process of its own, as a node is to its loader)."""
    if spec["kind"] == "raw_sender":
        def send() -> dict:
            _send_raw(spec["port"], spec["bytes"], spec["repeat"])
            return {}
        return send
    return lambda: probe_raw_tcp(spec) if spec["kind"] == "raw_tcp" else probe_transport(spec)
