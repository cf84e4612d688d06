"""The HTTP listener: the node's endpoints on a TCP site that sheds silent connections at its cap."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .base import NodeApi, ServerOptions
from .http_server import create_app

log = logging.getLogger("cachenode.http")


class _Refuse(asyncio.Protocol):
    """A connection over the cap, with none to shed: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class _Heard(asyncio.Protocol):
    """aiohttp's connection handler, with the time it last received a byte noted in `heard`
    (the handler has __slots__: it cannot be given attributes or wrapped methods)."""

    def __init__(self, handler, heard: dict, loop: asyncio.AbstractEventLoop) -> None:
        self._handler = handler
        self._heard = heard
        self._loop = loop

    def connection_made(self, transport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._heard[self._handler] = self._loop.time()
        self._handler.data_received(data)

    def eof_received(self):
        return self._handler.eof_received()

    def connection_lost(self, exc) -> None:
        self._heard.pop(self._handler, None)
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


class _CappedSite(web.TCPSite):
    """A TCP site that holds at most `max_connections` open, and when full makes room.

    A client that opens connections and sends a byte of a request line, or nothing, holds a
    descriptor until the idle timeout. Refusing new connections at the cap would shut out the
    members, loaders and health checks that arrive after such a flood (on loopback every client
    has the same address, so per-address caps cannot tell them apart). So at the cap the
    connection that has been silent the longest without a request in progress is closed for
    the newcomer; only when every connection is busy with a request is the newcomer refused.
    """

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, max_connections: int,
                 on_shed=None, **kwargs) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.max_connections = max_connections
        self.shed = 0
        self._on_shed = on_shed

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; TCPSite.start would bind without the cap
        server = self._runner.server
        assert server is not None

        loop = asyncio.get_running_loop()
        pending = 0  # accepted, connection_made not run yet: a burst is accepted before any runs
        heard: dict[object, float] = {}  # handler -> when it last sent us a byte

        def settled() -> None:
            nonlocal pending
            pending -= 1

        def make_room() -> bool:
            # (transport None: closed by an earlier make_room, gone at its connection_lost)
            idle = [h for h in server.connections
                    if h.transport is not None and not getattr(h, "_request_in_progress", True)]
            if not idle:
                return False
            victim = min(idle, key=lambda h: heard.get(h, 0.0))
            heard.pop(victim, None)
            victim.force_close()  # its transport closes now; aiohttp forgets it on connection_lost
            self.shed += 1
            if self.shed == 1:
                log.warning("connection cap %d reached: closing the longest-silent connections that have "
                            "no request in progress to admit new ones (counted in "
                            "cachenode_connections_shed_total)", self.max_connections)
            if self._on_shed is not None:
                self._on_shed()
            return True

        def factory() -> asyncio.Protocol:
            nonlocal pending
            if len(server.connections) + pending >= self.max_connections and not make_room():
                return _Refuse()
            pending += 1
            # The transport queues connection_made right after this returns; settle after it.
            loop.call_soon(loop.call_soon, settled)
            handler = server()
            heard[handler] = loop.time()
            return _Heard(handler, heard, loop)

        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


class HttpServer:
    """The node's HTTP server: the app in front of a NodeApi, on one capped TCP site."""

    def __init__(self, service: NodeApi, options: ServerOptions) -> None:
        self._options = options
        self._service = service
        self._runner = web.AppRunner(create_app(service), handle_signals=False, access_log=None,
                                     keepalive_timeout=options.idle_timeout)
        self.url = ""

    async def start(self) -> str:
        """Listen; the node's URL (its port known only now with port 0). OSError if it cannot bind."""
        await self._runner.setup()
        site = _CappedSite(self._runner, self._options.host, self._options.port, backlog=1024,
                           max_connections=self._options.max_connections, on_shed=self._service.connection_shed)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()  # not listed as started: nobody else will
            raise
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        return self.url

    async def close(self) -> None:
        await self._runner.cleanup()
