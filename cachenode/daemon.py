"""Running a node: bind the HTTP app, report the address, shut down cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .config import NodeConfig
from .node import Node

log = logging.getLogger("cachenode.daemon")


class NodeServer:
    """A node plus its HTTP listener; usable in-process (tests, benchmarks) or as the daemon."""

    def __init__(self, config: NodeConfig, node: Node | None = None) -> None:
        from cachenode.transport.http_server import create_app

        self.config = config
        self.node = node or Node(config)
        self._runner = web.AppRunner(create_app(self.node, config.token), handle_signals=False,
                                     access_log=None)
        self.url = ""

    async def start(self) -> str:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, backlog=1024)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
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
    await server.stop()
