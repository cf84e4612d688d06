"""Send a background block over HTTP in the node service's paced pieces, each out of the socket before the next."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
import time

from aiohttp import web

from cachenode.blocks import Block

# Unsent (and, between pieces, unacknowledged) bytes a socket may hold while it carries a
# background block; how often that is looked at; and how long a client may acknowledge nothing
# before its connection is dropped.
UNSENT_BACKGROUND = 16 << 10
ACK_POLL = 0.002
STALL = 60.0
# Linux's SO_MAX_PACING_RATE (not in Python's socket module) and its "no limit" value.
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)
UNPACED = 0xFFFFFFFF


async def send_background(request: web.Request, service, block: Block, headers: dict) -> web.StreamResponse:
    """A background block in the service's paced pieces, each one out of the socket (sent and
    acknowledged) before its slot goes to the next.

    A piece must be on the wire when its tokens say so, not sit in the socket: with deep send
    buffers and several connections in flight, queued pieces fill the link's queue, a flow that
    starts then loses its first packets and backs off to a trickle the governor takes for noise
    (measured: an iperf3 flow at 0.2 MB/s of 12 for 2-4 s), and the governor, which counts a
    piece as sent when it is written, cannot tell. TCP_NOTSENT_LOWAT keeps the unsent part small
    so aiohttp's write waits while the piece goes out; the kernel's send-queue count tells when
    it has been acknowledged.
    """
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "application/octet-stream"
    resp.content_length = block.length
    await resp.prepare(request)
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or lowat is None:
        await service.send_background(block, resp.write, service.piece_size(block))
        await resp.write_eof()
        return resp

    async def write(view: memoryview) -> None:
        pace = service.background_pace()
        _set_pace(sock, pace)
        await resp.write(view)
        await _until_acknowledged(request, sock.fileno())

    sock.setsockopt(socket.IPPROTO_TCP, lowat, UNSENT_BACKGROUND)
    try:
        await service.send_background(block, write, service.piece_size(block))
    finally:
        if sock.fileno() >= 0:
            sock.setsockopt(socket.IPPROTO_TCP, lowat, 0)  # 0: back to the system default
            _set_pace(sock, None)
    await resp.write_eof()
    return resp


def _set_pace(sock, pace: float | None) -> None:
    """The kernel's pacing rate for this socket (SO_MAX_PACING_RATE; None: unpaced)."""
    value = UNPACED if pace is None else max(1, min(UNPACED - 1, int(pace)))
    sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, struct.pack("I", value))


async def _until_acknowledged(request: web.Request, fd: int) -> None:
    """Wait until the socket holds at most UNSENT_BACKGROUND bytes its peer has not
    acknowledged; a peer that acknowledges nothing for STALL seconds loses the connection."""
    last, since = -1, time.monotonic()
    while True:
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the client went away during a background block")
        queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        if queued <= UNSENT_BACKGROUND:
            return
        if queued != last:
            last, since = queued, time.monotonic()
        elif time.monotonic() - since > STALL:
            request.transport.abort()
            raise ConnectionResetError(f"the client acknowledged nothing for {STALL:.0f} s")
        await asyncio.sleep(ACK_POLL)
