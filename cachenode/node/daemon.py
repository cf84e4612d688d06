"""Running a node: its composed parts behind the HTTP (and UCX) servers, shut down cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal

from ..placement import Member
from ..store.shm import ShmBuffers
from ..transport.base import Server, ServerOptions
from ..transport.registry import LOCAL, TCP, Registry, default_registry
from .compose import build_node
from .config import NodeConfig
from .membership import member_id_of

log = logging.getLogger("cachenode.daemon")


def connection_cap(configured: int, nofile: int | None = None, held: int = 0) -> int:
    """Connections a node holds at most: the configured cap, but never more than the process's
    descriptor limit allows. Each connection may hold a second descriptor (the block file it is
    sending), and a reserve stays free for the origin, peers, UCX and the disk writer, beside
    the `held` descriptors of memfd block buffers."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            return configured
    reserve = max(32, nofile // 8)
    return max(8, min(configured, (nofile - reserve - held) // 2))


class CannotListen(Exception):
    """The node's address could not be bound (in use, not ours, no permission), or UCX not started."""


class NodeServer:
    """A node (compose.build_node) plus its listeners; usable in-process (tests, benchmarks) or as
    the daemon. Serves HTTP, UCX with --ucx, and any other `serve` transports of its registry."""

    def __init__(self, config: NodeConfig, *, registry: Registry | None = None, serve: tuple[str, ...] = (),
                 **build) -> None:
        """`build`: build_node's keywords (origins, a service subclass) for tests."""
        self.config = config
        self.registry = registry or default_registry()
        self.parts = build_node(config, registry=self.registry, **build)
        self.service = self.parts.service
        self.membership = self.parts.membership
        # HTTP last (as before): once a loader can reach the node, its other transports are up.
        self._names = (*(("ucx",) if config.ucx else ()), *((LOCAL,) if config.local_socket else ()), *serve, TCP)
        self._servers: list[Server] = []
        self.url = ""

    async def start(self) -> str:
        await self.parts.start()
        buffers = self.parts.cache.buffers
        held = buffers.limit if isinstance(buffers, ShmBuffers) else 0
        cap = connection_cap(self.config.max_connections, held=held)
        if cap < self.config.max_connections:
            log.info("at most %d connections (--max-connections %d; descriptor limit %d)", cap,
                     self.config.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        # The cap holds for HTTP connections and for UCX reply endpoints alike.
        options = ServerOptions(host=self.config.host, port=self.config.port,
                                max_connections=cap, idle_timeout=self.config.idle_timeout,
                                local_socket=self.config.local_socket_path())
        transports: dict[str, str] = {}
        try:
            for name in self._names:
                transports[name] = await self._listen(name, self.registry.server(name, self.service, options))
        except BaseException:
            await self.stop()  # the node's sessions and tasks are up already: close them
            raise
        self.url = transports.pop(TCP)
        transports.pop(LOCAL, None)  # this host's loaders find it by path; other hosts must not
        # Our own id is known only now that the port is bound (--port 0 in tests).
        advertised = self.config.advertise_url or self.url
        self.membership.set_self(Member(self.config.member_id or member_id_of(advertised), advertised,
                                        transports=transports))
        return self.url

    async def _listen(self, name: str, server: Server) -> str:
        """Start one transport's server; CannotListen says why it could not."""
        try:
            address = await server.start()
        except Exception as exc:  # noqa: BLE001 - ucxx raises its own types; all mean the same here
            if name == TCP and not isinstance(exc, OSError):
                raise
            raise CannotListen(self._why(name, exc)) from exc
        self._servers.append(server)
        return address

    def _why(self, name: str, exc: Exception) -> str:
        if name == TCP:
            return f"cannot listen on {self.config.host}:{self.config.port}: {getattr(exc, 'strerror', None) or exc}"
        if name == "ucx":
            return (f"cannot start UCX ({type(exc).__name__}: {exc}); check UCX_TLS and "
                    f"UCX_NET_DEVICES={os.environ.get('UCX_NET_DEVICES', '(unset)')}")
        return f"cannot start the {name} transport ({type(exc).__name__}: {exc})"

    async def stop(self) -> None:
        for server in self._servers:
            await server.close()
        self._servers = []
        await self.parts.close()  # pending disk writes finish in here

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
        # Everything of ours is closed and flushed by now (the UCX engine too); ucxx's C++
        # objects are not made to be torn down in interpreter-exit order, so leave now.
        logging.shutdown()
        os._exit(0)
