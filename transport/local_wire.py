"""The local (same-host) transport's framing: length-prefixed JSON over a unix socket, a block's memfd riding along as SCM_RIGHTS."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct

_LEN = struct.Struct("!I")
MAX_MESSAGE = 64 * 1024  # a request or reply header; a block never travels on the socket


def pack(fields: dict) -> bytes:
    body = json.dumps(fields, separators=(",", ":")).encode()
    return _LEN.pack(len(body)) + body


async def _ready(sock: socket.socket, writing: bool) -> None:
    """Wait until `sock` can be written (or read) without blocking."""
    loop = asyncio.get_running_loop()
    add, remove = (loop.add_writer, loop.remove_writer) if writing else (loop.add_reader, loop.remove_reader)
    fut = loop.create_future()
    add(sock.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        remove(sock.fileno())


async def send(sock: socket.socket, fields: dict, fd: int | None = None) -> None:
    """One message, with `fd` attached (the receiver gets its own descriptor of the same memfd)."""
    data = pack(fields)
    fds = [fd] if fd is not None else []
    while data:
        try:
            sent = socket.send_fds(sock, [data], fds) if fds else sock.send(data)
        except (BlockingIOError, InterruptedError):
            await _ready(sock, writing=True)
            continue
        data, fds = data[sent:], []  # the descriptor goes with the first byte sent


async def recv(sock: socket.socket) -> tuple[dict, int | None]:
    """One message and the descriptor that came with it (None if none). EOFError: peer closed."""
    buf, fd = bytearray(), None
    want = _LEN.size
    while True:
        while len(buf) < want:
            try:
                data, fds, _, _ = socket.recv_fds(sock, want - len(buf), 1)
            except (BlockingIOError, InterruptedError):
                await _ready(sock, writing=False)
                continue
            for extra in fds[1:] if fd is None else fds:
                _close(extra)  # more than we asked for: not ours to keep
            if fds and fd is None:
                fd = fds[0]
            if not data:
                _close(fd)
                raise EOFError("the node closed the local connection")
            buf += data
        if want == _LEN.size:
            (n,) = _LEN.unpack(buf)
            if n > MAX_MESSAGE:
                _close(fd)
                raise ValueError(f"a local message of {n} bytes (at most {MAX_MESSAGE})")
            want += n
            if n:
                continue
        try:
            return json.loads(bytes(buf[_LEN.size:]) or b"{}"), fd
        except ValueError:
            _close(fd)
            raise


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
