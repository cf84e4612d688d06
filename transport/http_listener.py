"""The HTTP listener: the node's endpoints on a TCP site that refuses connections beyond a cap."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .base import NodeApi, ServerOptions
from .http_server import create_app


class _Refuse(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class _CappedSite(web.TCPSite):
    """A TCP site that closes connections beyond `max_connections` on accept: with the idle
    timeout, clients that open connections and send nothing cannot use up our descriptors."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, max_connections: int,
                 **kwargs) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.max_connections = max_connections

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; TCPSite.start would bind without the cap
        server = self._runner.server
        assert server is not None

        loop = asyncio.get_running_loop()
        pending = 0  # accepted, connection_made not run yet: a burst is accepted before any runs

        def settled() -> None:
            nonlocal pending
            pending -= 1

        def factory() -> asyncio.Protocol:
            nonlocal pending
            if len(server.connections) + pending >= self.max_connections:
                return _Refuse()
            pending += 1
            # The transport queues connection_made right after this returns; settle after it.
            loop.call_soon(loop.call_soon, settled)
            return server()

        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


class HttpServer:
    """The node's HTTP server: the app in front of a NodeApi, on one capped TCP site."""

    def __init__(self, service: NodeApi, options: ServerOptions) -> None:
        self._options = options
        self._runner = web.AppRunner(create_app(service), handle_signals=False, access_log=None,
                                     keepalive_timeout=options.idle_timeout)
        self.url = ""

    async def start(self) -> str:
        """Listen; the node's URL (its port known only now with port 0). OSError if it cannot bind."""
        await self._runner.setup()
        site = _CappedSite(self._runner, self._options.host, self._options.port, backlog=1024,
                           max_connections=self._options.max_connections)
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
