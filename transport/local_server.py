"""The node side of the local transport: a unix socket for this host's loaders, each block handed over as its own sealed memfd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from . import local_wire as lw
from . import wire

log = logging.getLogger("cachenode.local")


class LocalServer:
    """Serves blocks to loaders on this host over a unix socket at `path`.

    A request carries the token and the block fields, as HTTP's query does; the node service
    checks the token, the allow-list and the block size before any copy is looked at
    (NodeService.host_copy), and answers with a descriptor of a memfd holding exactly that
    block. The socket is made owner-only (umask 077) and the token is checked too. Kubernetes:
    a hostPath directory mounted in the node's and the loaders' pods, the same user (or
    fsGroup) on both sides; no hostIPC: a descriptor passes over the socket, no name in
    /dev/shm.
    """

    def __init__(self, service, path: str, max_connections: int = 512) -> None:
        self.service = service  # the node service (base.NodeApi), the same as HTTP's
        self.path = path
        self._max = max_connections
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> str:
        try:
            os.unlink(self.path)  # a socket file left by a crashed node; nothing listens on it
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        old = os.umask(0o077)  # only this user (or root) may connect; the token is checked too
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(128)
        self._sock = sock
        self._accepting = asyncio.ensure_future(self._accept())
        return self.path

    async def close(self) -> None:
        tasks = [t for t in (self._accepting, *self._conns) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            if len(self._conns) >= self._max:
                self.service.connection_shed()
                conn.close()
                continue
            conn.setblocking(False)
            task = asyncio.ensure_future(self._serve(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                try:
                    fields, fd = await lw.recv(conn)
                except EOFError:
                    return
                except ValueError as exc:
                    log.warning("dropped a malformed local request: %s", exc)
                    return
                if fd is not None:
                    os.close(fd)  # a loader has nothing to hand us
                await self._answer(conn, fields)
        except (ConnectionError, OSError) as exc:
            self.service.client_gone()
            log.debug("local connection ended: %s", exc)
        finally:
            conn.close()

    async def _answer(self, conn: socket.socket, fields: dict) -> None:
        try:
            self.service.authorize(str(fields.get(wire.UCX_TOKEN) or "") or None)
            call = wire.decode_block_call({k: str(v) for k, v in fields.items()})
            fd, length, digest = await self.service.host_copy(call.req, verify=call.options["verify"])
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
            status, body = self.service.failed(exc)
            await lw.send(conn, {"status": status, **body})
            return
        try:
            await lw.send(conn, {"status": 200, wire.BLOCK_LENGTH: length, wire.BLOCK_DIGEST: digest,
                                 wire.BLOCK_TIER: "host"}, fd)
        finally:
            os.close(fd)  # ours (a dup): the loader has its own now
