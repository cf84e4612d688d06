"""A counting, fault-injecting HTTP proxy in front of Azurite: the origin-side witness in tests."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import aiohttp
from aiohttp import web

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class BlobProxy:
    """Forwards everything to Azurite and counts ranged GETs (block reads) per blob path.

    Counts are taken here, outside the node, so tests do not trust the node's own counters.
    """

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.reads: Counter[str] = Counter()
        self.read_bytes: Counter[str] = Counter()
        self.ranges: Counter[tuple[str, str]] = Counter()  # (path, range header) -> reads
        self._fail: list = []  # [(path substring, status, remaining)]
        self._lock = threading.Lock()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> "BlobProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        async def _stop():
            await self._runner.cleanup()
            await self._session.close()
        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reads_of(self, blob_path: str) -> int:
        with self._lock:
            return sum(n for p, n in self.reads.items() if p.endswith(blob_path))

    def ranges_of(self, blob_path: str) -> dict[str, int]:
        """{range header: times read} for one blob."""
        with self._lock:
            return {r: n for (p, r), n in self.ranges.items() if p.endswith(blob_path)}

    def fail_next(self, path_part: str, count: int, status: int = 503) -> None:
        with self._lock:
            self._fail.append([path_part, status, count])

    def _injected(self, path: str) -> int | None:
        with self._lock:
            for rule in self._fail:
                if rule[0] in path and rule[2] > 0:
                    rule[2] -= 1
                    return rule[1]
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ranged = request.method == "GET" and ("x-ms-range" in request.headers or "Range" in request.headers)
        status = self._injected(request.path) if ranged else None
        if status is not None:
            return web.Response(status=status, text="injected by BlobProxy")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers,
                data=body or None, allow_redirects=False,
                skip_auto_headers=("Content-Type", "Accept-Encoding")) as r:
            payload = await r.read()
            if ranged and r.status in (200, 206):
                with self._lock:
                    self.reads[request.path] += 1
                    self.read_bytes[request.path] += len(payload)
                    rng = request.headers.get("x-ms-range") or request.headers.get("Range", "")
                    self.ranges[(request.path, rng)] += 1
            out_headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD" and "Content-Length" in r.headers:
                # A HEAD answer's Content-Length is the blob's size: pass it through as is.
                out_headers["Content-Length"] = r.headers["Content-Length"]
                return web.Response(status=r.status, headers=out_headers)
            return web.Response(status=r.status, headers=out_headers, body=payload)
