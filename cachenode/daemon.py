"""Running a node: bind the HTTP app, report the address, shut down cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from .config import NodeConfig
from .membership import Member, Membership, member_id_of
from .node import Node
from .router import Router

log = logging.getLogger("cachenode.daemon")


class NodeServer:
    """A node plus its HTTP listener; usable in-process (tests, benchmarks) or as the daemon."""

    def __init__(self, config: NodeConfig, node: Node | None = None) -> None:
        from cachenode.transport.http_server import create_app

        self.config = config
        self.node = node or Node(config)
        self.membership = Membership(
            peers=config.peers, peers_file=config.peers_file, peers_dns=config.peers_dns,
            health_interval=config.health_interval, health_timeout=min(2.0, config.peer_timeout))
        self.router = Router(self.node, self.membership, config.token, config.peer_timeout,
                             config.forward_secret())
        self._runner = web.AppRunner(create_app(self.node, config.token, self.router),
                                     handle_signals=False, access_log=None)
        self.url = ""

    async def start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, backlog=1024)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        # Our own id is known only now that the port is bound (--port 0 in tests).
        advertised = self.config.advertise_url or self.url
        transports = {"ucx": self.router.ucx_address} if self.router.ucx_address else {}
        self.membership.set_self(Member(self.config.member_id or member_id_of(advertised), advertised,
                                        transports=transports))
        return self.url

    async def stop(self) -> None:
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
