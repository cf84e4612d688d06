"""Running a node: its service behind the HTTP (and UCX) servers, shut down cleanly on a signal."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import resource
import signal

from aiohttp import web

from ..placement import Member
from .cache import Node
from .config import NodeConfig
from .membership import member_id_of
from .service import NodeService

log = logging.getLogger("cachenode.daemon")


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


def connection_cap(configured: int, nofile: int | None = None) -> int:
    """Connections a node holds at most: the configured cap, but never more than the process's
    descriptor limit allows. Each connection may hold a second descriptor (the block file it is
    sending), and a reserve stays free for the origin, peers, UCX and the disk writer."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            return configured
    reserve = max(32, nofile // 8)
    return max(8, min(configured, (nofile - reserve) // 2))


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

            # Each reply endpoint holds descriptors (a socket on TCP lanes): the same cap as HTTP's.
            ucx = UcxServer(self.service, max_endpoints=connection_cap(self.config.max_connections))
            try:
                address = await ucx.start()
            except Exception as exc:  # noqa: BLE001 - ucxx raises its own types; all mean the same here
                raise CannotListen(f"cannot start UCX ({type(exc).__name__}: {exc}); check UCX_TLS and "
                                   f"UCX_NET_DEVICES={os.environ.get('UCX_NET_DEVICES', '(unset)')}") from exc
            self._ucx = ucx
            self.service.transports["ucx"] = base64.b64encode(address).decode()
        cap = connection_cap(self.config.max_connections)
        if cap < self.config.max_connections:
            log.info("at most %d connections (--max-connections %d; descriptor limit %d)", cap,
                     self.config.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        site = _CappedSite(self._runner, self.config.host, self.config.port, backlog=1024,
                           max_connections=cap, on_shed=self.node.metrics.connections_shed.inc)
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
