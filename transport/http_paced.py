"""Send a background block over HTTP in the node service's paced pieces, each out of the socket before the next."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios

from aiohttp import web

from cachenode.blocks import Block, BlockRequest

from . import wire

log = logging.getLogger("cachenode.http")

# Unsent (and, between pieces, unacknowledged) bytes a socket may hold while it carries a
# background block, and how often the acknowledged part is looked at.
UNSENT_BACKGROUND = 16 << 10
ACK_POLL = 0.002
# Linux's SO_MAX_PACING_RATE (not in Python's socket module) and its "no limit" value (64-bit).
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)
UNPACED = (1 << 64) - 1


async def send_background(request: web.Request, service, req: BlockRequest, args: dict) -> web.StreamResponse:
    """Answer a background block request through `service.serve_background`.

    What "a piece was written" means here is what the governor needs it to mean: the piece has
    left. With deep send buffers and several connections in flight, queued pieces fill the
    link's queue, a flow that starts then loses its first packets and backs off to a trickle
    the governor takes for noise (measured: an iperf3 flow at 0.2 MB/s of 12 for 2-4 s). So
    while the node paces background traffic, TCP_NOTSENT_LOWAT keeps the unsent part of the
    socket small, the kernel paces the piece at its share of the limit, and the write returns
    once the socket's send queue shows the piece acknowledged.
    """
    resp = web.StreamResponse()
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    paced = False

    async def begin(block: Block, piece: int) -> None:
        nonlocal paced
        resp.headers.update({wire.DIGEST_HEADER: block.digest, wire.TIER_HEADER: block.tier})
        resp.content_type = "application/octet-stream"
        resp.content_length = block.length
        await resp.prepare(request)
        paced = sock is not None and service.background_pace() is not None and _setsockopt(
            sock, socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25), UNSENT_BACKGROUND)

    async def write(view: memoryview) -> None:
        if paced:
            pace = service.background_pace()
            _setsockopt(sock, socket.SOL_SOCKET, SO_MAX_PACING_RATE,
                        struct.pack("Q", UNPACED if pace is None else max(1, int(pace))))
        await resp.write(view)
        if paced:
            await _until_acknowledged(request, sock.fileno())

    try:
        await service.serve_background(req, begin=begin, write=write, transport="http", **args)
    except Exception as exc:
        if not resp.prepared:
            raise  # nothing sent yet: the ordinary error reply
        # Mid-body: no other answer fits on this connection any more.
        if request.transport is not None:
            request.transport.abort()
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            raise ConnectionResetError("the client took no piece of a background block in time") from exc
        if not isinstance(exc, ConnectionError):
            log.warning("background block %d of %s failed mid-body: %s", req.index, req.ref, exc)
        raise ConnectionResetError(f"background block failed mid-body: {exc}") from exc
    finally:
        if paced and sock.fileno() >= 0:  # the connection may carry foreground blocks next
            _setsockopt(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25), 0)
            _setsockopt(sock, socket.SOL_SOCKET, SO_MAX_PACING_RATE, struct.pack("Q", UNPACED))
    await resp.write_eof()
    return resp


def _setsockopt(sock, level: int, option: int, value) -> bool:
    """Set an option the kernel may not have (an old or sandboxed one): False if it refused."""
    try:
        sock.setsockopt(level, option, value)
        return True
    except OSError:
        return False


async def _until_acknowledged(request: web.Request, fd: int) -> None:
    """Wait until the socket holds at most UNSENT_BACKGROUND bytes its peer has not
    acknowledged (the service's deadline bounds how long)."""
    while True:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the client went away during a background block")
        queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        if queued <= UNSENT_BACKGROUND:
            return
        await asyncio.sleep(ACK_POLL)
