"""A TCP relay on a thread: lets a namespace reach a service on another link without IP forwarding.

It runs in the root namespace, so no forwarding is turned on for the whole machine.
"""

from __future__ import annotations

import asyncio
import threading


class Relay:
    """Accepts on `listen_host` (a free port, `port` once started) and pipes each connection to `upstream`.

    Runs its own event loop on a thread, so several relays can live in one process.
    """

    def __init__(self, listen_host: str, upstream_host: str, upstream_port: int,
                 chunk: int = 1 << 18) -> None:
        self.listen_host, self.port = listen_host, 0  # bound in start(): no pick-then-bind race
        self.upstream = (upstream_host, upstream_port)
        self.chunk = chunk
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, limit: int | None = None) -> bool:
        """Copy r to w until EOF; with `limit`, cut the connection after that many bytes (a
        transfer dropped half way, injected by a subclass): True if it was cut."""
        sent = 0
        try:
            while data := await r.read(self.chunk):
                if limit is not None and sent + len(data) > limit:
                    w.write(data[:limit - sent])
                    await w.drain()
                    w.transport.abort()
                    return True
                sent += len(data)
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()
        return False

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.upstream, limit=self.chunk)
        except OSError:
            w.close()
            return
        await asyncio.gather(self._pipe(r, uw), self._downstream(ur, w, uw))

    async def _downstream(self, r: asyncio.StreamReader, w: asyncio.StreamWriter,
                          upstream: asyncio.StreamWriter) -> None:
        """The upstream's replies to the client (a subclass may injure them: faults by subclassing)."""
        await self._pipe(r, w)

    def start(self) -> "Relay":
        async def start():
            return await asyncio.start_server(self._handle, self.listen_host, 0, limit=self.chunk)

        self._server = self._loop.run_until_complete(start())
        self.port = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="relay")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        async def shut() -> None:
            # Connections still piped (a client's keep-alive) end here, so no coroutine is
            # left to a closed loop (its "Event loop is closed" at garbage collection).
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
