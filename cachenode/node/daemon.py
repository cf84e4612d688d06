"""Running a node: its service behind the HTTP (and UCX) servers, shut down cleanly on a signal."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal

from aiohttp import web

from ..placement import Member
from .cache import Node
from .config import NodeConfig
from .membership import member_id_of
from .service import NodeService

log = logging.getLogger("cachenode.daemon")


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


class CannotListen(Exception):
    """The node's address could not be bound (in use, not ours, no permission), or UCX not started."""


class NodeServer:
    """A node service plus its listeners; usable in-process (tests, benchmarks) or as the daemon."""

    def __init__(self, config: NodeConfig, node: Node | None = None) -> None:
        from ..transport.http_server import create_app

        self.config = config
        self.service = NodeService(config, node)
        self.node = self.service.node
        self.membership = self.service.membership
        # The app's cleanup context starts and closes the service with the HTTP server.
        self._runner = web.AppRunner(create_app(self.service), handle_signals=False, access_log=None,
                                     keepalive_timeout=config.idle_timeout)
        self._ucx = None
        self.url = ""

    async def start(self) -> str:
        await self._runner.setup()
        try:
            await self._listen()
        except BaseException:
            await self.stop()  # the service's sessions and tasks are up already: close them
            raise
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        # Our own id is known only now that the port is bound (--port 0 in tests).
        advertised = self.config.advertise_url or self.url
        self.membership.set_self(Member(self.config.member_id or member_id_of(advertised), advertised,
                                        transports=dict(self.service.transports)))
        return self.url

    async def _listen(self) -> None:
        if self.config.ucx:
            from ..transport.ucx_server import UcxServer

            ucx = UcxServer(self.service)
            try:
                address = await ucx.start()
            except Exception as exc:  # noqa: BLE001 - ucxx raises its own types; all mean the same here
                raise CannotListen(f"cannot start UCX ({type(exc).__name__}: {exc}); check UCX_TLS and "
                                   f"UCX_NET_DEVICES={os.environ.get('UCX_NET_DEVICES', '(unset)')}") from exc
            self._ucx = ucx
            self.service.transports["ucx"] = base64.b64encode(address).decode()
        site = _CappedSite(self._runner, self.config.host, self.config.port, backlog=1024,
                           max_connections=self.config.max_connections)
        try:
            await site.start()
        except OSError as exc:
            raise CannotListen(f"cannot listen on {self.config.host}:{self.config.port}: "
                               f"{exc.strerror or exc}") from exc

    async def stop(self) -> None:
        if self._ucx is not None:
            await self._ucx.close()
        await self._runner.cleanup()

    async def __aenter__(self) -> "NodeServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def serve_forever(config: NodeConfig, announce=print) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight disk writes and close connections."""
    server = NodeServer(config)
    url = await server.start()
    announce(f"cachenode listening on {url} (cache {config.cache_dir})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    try:
        await asyncio.wait_for(server.stop(), 30)  # pending disk writes finish in here
    except asyncio.TimeoutError:
        log.warning("shutdown took longer than 30s; exiting anyway")
    if config.ucx:
        # ucxx's notifier and progress threads do not end on their own; everything of ours is
        # closed and flushed by now, so leave without waiting for interpreter teardown.
        logging.shutdown()
        os._exit(0)
