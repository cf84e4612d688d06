"""Block GETs over plain HTTP/1.1 whose body the kernel writes straight into the caller's buffer.

aiohttp hands a body out as chunks it has already copied; here an asyncio BufferedProtocol gives
the socket the destination memoryview itself (recv_into), so a block crosses user space once.
Only block bodies use this path; everything else stays on aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlencode, urlsplit

import xxhash

_HEADER_MAX = 64 * 1024


class _Response:
    def __init__(self, dest: memoryview) -> None:
        self.dest = dest
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: memoryview | None = None  # where the body goes: dest, or a bytearray for errors
        self.length = -1
        self.got = 0
        # The body's digest, computed as each piece lands while it is still in the CPU cache
        # (a separate pass after the block re-reads 8 MiB from memory: 12% of this VM's CPU).
        self.hasher = None
        self.hash_seconds = 0.0  # loop time spent hashing: one perf_counter pair per recv, cheap
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    @property
    def digest(self) -> str | None:
        """xxh3-128 of the body if it went into dest, else None."""
        return self.hasher.hexdigest() if self.hasher is not None else None


class _BlockProtocol(asyncio.BufferedProtocol):
    """One keep-alive connection; one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._head = bytearray(_HEADER_MAX)
        self._head_len = 0
        self.resp: _Response | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.resp is not None and not self.resp.done.done():
            self.resp.done.set_exception(ConnectionResetError(f"connection closed mid-response: {exc}"))

    def begin(self, resp: _Response) -> None:
        self.resp = resp
        self._head_len = 0

    def get_buffer(self, sizehint: int):
        # Never an empty buffer: asyncio treats that as a fatal error with a traceback, and an
        # idle pooled connection is read (for its EOF) when its node goes away. Bytes that
        # belong to no response land in the head buffer and drop the connection below.
        r = self.resp
        if r is None:
            return memoryview(self._head)
        if r.body is not None:
            rest = r.body[r.got:]
            return rest if len(rest) else memoryview(self._head)
        return memoryview(self._head)[self._head_len:]  # not full: a full head fails the response

    def buffer_updated(self, nbytes: int) -> None:
        r = self.resp
        if r is None or (r.body is not None and r.got >= r.length):
            self.transport.abort()  # bytes outside a response: protocol error, drop the connection
            return
        if r.body is not None:
            if r.hasher is not None:
                t0 = time.perf_counter()
                r.hasher.update(r.body[r.got:r.got + nbytes])
                r.hash_seconds += time.perf_counter() - t0
            r.got += nbytes
        else:
            self._head_len += nbytes
            end = self._head.find(b"\r\n\r\n", 0, self._head_len)
            if end < 0:
                if self._head_len == _HEADER_MAX:
                    self._fail(UnexpectedFraming(f"a response header over {_HEADER_MAX} bytes"))
                return
            if not self._parse_head(bytes(self._head[:end])):
                return
            extra = self._head_len - (end + 4)
            if extra > r.length:
                self._fail(UnexpectedFraming(f"HTTP {r.status}: more bytes than its Content-Length {r.length}"))
                return
            r.body[:extra] = self._head[end + 4:self._head_len]
            if r.hasher is not None:
                r.hasher.update(r.body[:extra])
            r.got = extra
        if r.got >= r.length:
            self.resp = None
            self._head_len = 0
            if not r.done.done():
                r.done.set_result(None)

    def _parse_head(self, head: bytes) -> bool:
        r = self.resp
        lines = head.decode("latin-1").split("\r\n")
        try:
            version, code = lines[0].split(" ", 2)[:2]
            if not version.startswith("HTTP/1.") or len(code) != 3:
                raise ValueError(lines[0])
            r.status = int(code)
        except (IndexError, ValueError):
            self._fail(UnexpectedFraming(f"a bad status line {lines[0][:120]!r}"))
            return False
        for line in lines[1:]:
            k, _, v = line.partition(":")
            r.headers[k.strip().lower()] = v.strip()
        try:
            r.length = int(r.headers["content-length"])
            if r.length < 0:
                raise ValueError(r.length)
        except (KeyError, ValueError):
            what = r.headers.get("content-length")
            self._fail(UnexpectedFraming(f"HTTP {r.status} {'without a Content-Length' if what is None else f'with Content-Length {what!r}'}"
                                         f" (headers: {', '.join(sorted(r.headers))[:200]})"))
            return False
        if r.status == 200 and r.length == len(r.dest):
            r.body = r.dest  # the kernel now writes the body straight into the caller's buffer
            r.hasher = xxhash.xxh3_128()
        else:
            r.body = memoryview(bytearray(r.length))  # an error body, or a wrong size: not into dest
        return True

    def _fail(self, exc: Exception) -> None:
        r, self.resp = self.resp, None
        if r is not None and not r.done.done():
            r.done.set_exception(exc)
        self.transport.abort()


async def _progressing(resp: _Response, timeout: float, patience: int) -> None:
    """Wait for `resp` to complete: within `timeout`, or (`patience` > 0) for as long as a
    byte keeps coming at least every `patience` timeouts."""
    if patience <= 0:
        await asyncio.wait_for(asyncio.shield(resp.done), timeout)
        return
    seen, quiet = (resp.got, len(resp.headers)), 0
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(resp.done), timeout)
            return
        except asyncio.TimeoutError:
            now = (resp.got, len(resp.headers))
            quiet = 0 if now != seen else quiet + 1
            seen = now
            if quiet >= patience:
                raise


class UnexpectedFraming(ValueError):
    """The reply is not an HTTP response we can frame (bad status line, no Content-Length,
    more bytes than announced, a header too large): says what came back."""


class ConnectFailed(ConnectionError):
    """No connection could be made: nothing was sent, nothing landed in the buffer."""


class FastBlockGetter:
    """A small keep-alive pool of raw connections to one node, for block GETs only."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port or 80
        self._host_header = parts.netloc
        self._headers = headers
        self._idle: list[_BlockProtocol] = []
        self.digest_seconds = 0.0  # summed over every block body received (see LoadStats)

    async def get(self, path: str, params: dict, dest: memoryview, extra_headers: dict, timeout: float,
                  patience: int = 0) -> tuple[int, dict[str, str], memoryview, str | None]:
        """(status, headers, body, digest): body is `dest` itself on a 200 of the right size, and
        digest then the xxh3-128 of what landed in it.

        The response must be whole within `timeout`; with `patience` > 0 (a paced background
        body) it may take longer as long as no `patience` timeouts pass without a byte.
        """
        proto = None
        while self._idle:
            cand = self._idle.pop()
            if not cand.closed:
                proto = cand
                break
        if proto is None:
            loop = asyncio.get_running_loop()
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(_BlockProtocol, self.host, self.port), timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        resp = _Response(dest)
        proto.begin(resp)
        lines = [f"GET {path}?{urlencode(params)} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{k}: {v}" for k, v in {**self._headers, **extra_headers}.items()]
        proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            await _progressing(resp, timeout, patience)
        except BaseException:
            proto.transport.abort()  # nothing more may land in dest after we give up
            if not resp.done.done():
                resp.done.cancel()
            raise
        self.digest_seconds += resp.hash_seconds
        if resp.headers.get("connection", "").lower() != "close" and not proto.closed:
            self._idle.append(proto)
        else:
            proto.transport.close()
        return resp.status, resp.headers, resp.body, resp.digest

    def close(self) -> None:
        for p in self._idle:
            p.transport.close()
        self._idle.clear()
