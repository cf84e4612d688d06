"""The loader side of the local transport: blocks from this host's node as memfd descriptors, read once into the caller's buffer."""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import time
from typing import Iterable

from cachenode.blocks import BlockRequest, digest
from cachenode.errors import BlockCorrupt, CacheError, PeerUnavailable

from . import local_wire as lw
from .base import ChannelOptions
from .wire import BLOCK_DIGEST, BLOCK_LENGTH, BLOCK_TIER, UCX_TOKEN, error_from_body, request_params


def _read_fd(fd: int, dest: memoryview, check: bool) -> str | None:
    """Copy the memfd into `dest`, close it, and digest the copy if `check` (on a worker thread:
    preadv and xxhash release the GIL, so two blocks copy at once on two cores). One copy, from
    the node's pages; the fd holds exactly this block, so nothing else of the node is readable
    through it."""
    try:
        done = 0
        while done < len(dest):
            n = os.preadv(fd, [dest[done:]], done)
            if n == 0:
                raise BlockCorrupt(f"the node's copy ended at {done} of {len(dest)} bytes")
            done += n
    finally:
        os.close(fd)
    return digest(dest) if check else None


class LocalNodeClient:
    """Block reads from the node at a unix socket path, `window` at once (one per connection)."""

    def __init__(self, path: str, token: str | None, *, timeout: float = 10.0, window: int = 8) -> None:
        self.path = path
        self.base_url = f"unix:{path}"
        self._token = token
        self._timeout = timeout
        self._sem = asyncio.Semaphore(window)
        self._idle: list[socket.socket] = []
        self.digest_seconds = 0.0

    def __repr__(self) -> str:
        return f"LocalNodeClient({self.path})"

    async def _connect(self) -> socket.socket:
        if self._idle:
            return self._idle.pop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.path)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _ask(self, req: BlockRequest, length: int, verify: bool, background: bool) -> tuple[dict, int]:
        """Ask for the block; its reply and descriptor (the caller's to close). The caller holds
        the window."""
        fields = {**request_params(req, verify, background), UCX_TOKEN: self._token or ""}
        sock, fd, in_step = None, None, False
        try:
            sock = await self._connect()
            await asyncio.wait_for(lw.send(sock, fields), self._timeout)
            info, fd = await asyncio.wait_for(lw.recv(sock), self._timeout)
            in_step = True  # a whole reply was read: the connection can take the next request
            if info.get("status") != 200:
                raise error_from_body(info, f"node {self.base_url}")
            if info.get(BLOCK_LENGTH) != length or fd is None:
                raise BlockCorrupt(f"{self.base_url} announced {info.get(BLOCK_LENGTH)!r} bytes "
                                   f"{'with' if fd is not None else 'without'} a descriptor for a "
                                   f"{length}-byte block {req.index} of {req.ref}")
            fd, got = None, fd
            return info, got
        except CacheError:
            raise
        except (asyncio.TimeoutError, TimeoutError, OSError, EOFError, ValueError) as exc:
            in_step = False
            raise PeerUnavailable(f"this host's node at {self.path} failed: {exc!r}") from exc
        except BaseException:
            in_step = False  # cancelled mid-request: a reply may still come on this socket
            raise
        finally:
            if fd is not None:
                os.close(fd)
            if sock is not None:
                (self._idle.append if in_step else socket.socket.close)(sock)

    async def read_block(self, req: BlockRequest, dest: memoryview, *, verify: bool = False,
                         forwarded: str | None = None, avoid: Iterable[str] = (),
                         background: bool = False) -> tuple[str, str]:
        async with self._sem:
            info, fd = await self._ask(req, len(dest), verify, background)
            t0 = time.perf_counter()
            # The thread owns the descriptor from here, and writes into `dest`: if we are
            # cancelled we still wait for it, so the caller never gets `dest` back while it
            # is being written, and the fd number is not closed under its preadv.
            work = asyncio.ensure_future(asyncio.to_thread(_read_fd, fd, dest, verify))
            try:
                got = await asyncio.shield(work)
            except asyncio.CancelledError:
                await asyncio.wait([work])
                raise
            except OSError as exc:
                raise PeerUnavailable(f"this host's node at {self.path} failed: {exc!r}") from exc
            self.digest_seconds += time.perf_counter() - t0  # copy included: both are its cost
        # Checked only when asked: the memfd is sealed and holds the node's own bytes, whose
        # digest it took from them (a fill) or checked (a forward); a copy within this host's
        # memory has no wire to corrupt it. A loader that wants the check passes verify.
        if got is not None and got != info[BLOCK_DIGEST]:
            raise BlockCorrupt(f"block {req.index} of {req.ref} from {self.base_url} failed its digest check")
        return info.get(BLOCK_TIER, ""), info[BLOCK_DIGEST]

    async def map_block(self, req: BlockRequest, length: int) -> memoryview:
        """The block as a read-only mapping of the node's sealed memfd: no copy in this process
        at all, for readers that keep whole blocks and hand out views of them (the mount, whose
        replies the kernel copies into the page cache from these very pages). The mapping
        lives while a view of it does; the node may drop its copy meanwhile."""
        async with self._sem:
            info, fd = await self._ask(req, length, False, False)
        try:
            # Populated at once: the kernel's copy of a reply would otherwise fault page by page.
            return memoryview(mmap.mmap(fd, length, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                                        prot=mmap.PROT_READ))
        except OSError as exc:
            raise PeerUnavailable(f"mapping block {req.index} from {self.path} failed: {exc!r}") from exc
        finally:
            os.close(fd)  # the mapping holds its own

    def close(self) -> None:
        for sock in self._idle:
            sock.close()
        self._idle.clear()


class LocalConnector:
    """The loader's channel to its own host's node (one socket path, so one channel)."""

    def __init__(self, options: ChannelOptions) -> None:
        self._options = options
        self._clients: dict[str, LocalNodeClient] = {}

    def channel(self, url: str, address: str | None = None) -> LocalNodeClient:
        """The channel to the node listening at `address` (a unix socket path)."""
        path = address or url.removeprefix("unix:")
        client = self._clients.get(path)
        if client is None:
            client = self._clients[path] = LocalNodeClient(path, self._options.token, timeout=self._options.timeout,
                                                           window=self._options.window)
        return client

    def digest_seconds(self) -> float:
        return sum(c.digest_seconds for c in self._clients.values())

    async def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()
