"""UCX message layout: a fixed-size request, a fixed-size reply header, then the block body."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import struct
from collections import OrderedDict

from .wire import MAX_PIECES

log = logging.getLogger("cachenode.ucx")

REQUEST_SIZE = 8192
HEADER_SIZE = 1024
REQUEST_TAG = 0x6361_6368_656E_6F64  # "cachenod": every request goes to the node's worker on it
_HDR, _BODY, _UP = 1 << 62, 2 << 62, 3 << 62
_ID_MASK = (1 << 48) - 1
# A body sent in pieces (a background block) tags each one: bits 48-61 number them.
assert MAX_PIECES <= 1 << 14
_REQ = struct.Struct("<4sHHIQ")  # magic, version, address length, json length, request id
_REP = struct.Struct("<HI")  # status, json length
MAGIC = b"CNU1"


def header_tag(req_id: int) -> int:
    return _HDR | (req_id & _ID_MASK)


def body_tag(req_id: int, piece: int = 0) -> int:
    if not 0 <= piece < MAX_PIECES:
        raise ValueError(f"piece {piece} out of range (a body has at most {MAX_PIECES})")
    return _BODY | (piece << 48) | (req_id & _ID_MASK)


def upload_tag(upload_id: int, piece: int) -> int:
    """Tag of a message a client sends a node after an object call's request (piece 0: the call's
    header, then one per object). The node matches these on its worker, among every client's: the
    id is random (48 bits), never a per-client counter, so two clients' uploads cannot collide."""
    if not 0 <= piece < MAX_PIECES:
        raise ValueError(f"piece {piece} out of range (a call has at most {MAX_PIECES})")
    return _UP | (piece << 48) | (upload_id & _ID_MASK)


def new_upload_id() -> int:
    return secrets.randbits(48)


def pack_request(req_id: int, reply_address: bytes, fields: dict) -> bytearray:
    body = json.dumps(fields, separators=(",", ":")).encode()
    need = _REQ.size + len(reply_address) + len(body)
    if need > REQUEST_SIZE:
        raise ValueError(f"UCX request of {need} bytes exceeds {REQUEST_SIZE}")
    # Only what is used (the node's receive buffer is REQUEST_SIZE): padded to 8 KiB, a request
    # reached ucxx's rendezvous threshold (UCX_RNDV_THRESH=8192), which cost every block one
    # more round trip and a fetch by the node before the node could even read the request.
    out = bytearray(need)
    _REQ.pack_into(out, 0, MAGIC, 1, len(reply_address), len(body), req_id)
    out[_REQ.size:_REQ.size + len(reply_address)] = reply_address
    out[_REQ.size + len(reply_address):need] = body
    return out


def unpack_request(buf: bytes | bytearray) -> tuple[int, bytes, dict]:
    magic, version, alen, jlen, req_id = _REQ.unpack_from(buf, 0)
    if magic != MAGIC or version != 1 or _REQ.size + alen + jlen > len(buf):
        raise ValueError("not a cachenode UCX request")
    addr = bytes(buf[_REQ.size:_REQ.size + alen])
    fields = json.loads(bytes(buf[_REQ.size + alen:_REQ.size + alen + jlen]))
    return req_id, addr, fields


def pack_header(status: int, fields: dict) -> bytearray:
    body = json.dumps(fields, separators=(",", ":")).encode()[:HEADER_SIZE - _REP.size]
    out = bytearray(_REP.size + len(body))  # only what is used: the receive buffer is HEADER_SIZE
    _REP.pack_into(out, 0, status, len(body))
    out[_REP.size:_REP.size + len(body)] = body
    return out


def unpack_header(buf: bytes | bytearray) -> tuple[int, dict]:
    status, jlen = _REP.unpack_from(buf, 0)
    return status, json.loads(bytes(buf[_REP.size:_REP.size + jlen]))


def load_ucxx():
    """Import ucxx with UCX's own logging at the level a user expects.

    A peer that went away is a normal event in a cache cluster, and we report it once, as
    PeerUnavailable. UCX itself logs it again as ERROR lines on stderr when the endpoint to
    that peer is flushed at close (often at exit). Its own log stays at fatal unless the user
    asks for more (UCX_LOG_LEVEL / UCXX_LOG_LEVEL, read when the library loads).
    """
    import os

    os.environ.setdefault("UCX_LOG_LEVEL", "fatal")
    os.environ.setdefault("UCXX_LOG_LEVEL", "FATAL")
    import ucxx

    return ucxx


class Endpoints:
    """Endpoints to peers by worker address, created once each (concurrent first users wait).

    Error handling is off on both sides: UCX then uses shared memory/CMA lanes (measured ~3x
    faster here), and the setting must match on both ends or UCX refuses the endpoint.

    With a `cap` (the node's side: one endpoint per client that ever asked), at most that many
    are kept: a new one closes the least recently used endpoint that no reply is using, so a
    flood of requests with ever new reply addresses cannot use up the node's descriptors.
    """

    def __init__(self, engine, cap: int | None = None) -> None:
        self._engine = engine  # a UcxEngine: makes and progresses the endpoints
        self._eps: OrderedDict[bytes, object] = OrderedDict()
        self._busy: dict[bytes, int] = {}
        self._lock = asyncio.Lock()
        self._cap = cap
        self.shed = 0
        self._closing: set[asyncio.Task] = set()

    async def get(self, address: bytes):
        ep = self._eps.get(address)
        if ep is None:
            async with self._lock:
                ep = self._eps.get(address)
                if ep is None:
                    self._make_room()
                    addr = self._engine.get_ucx_address_from_buffer(address)
                    ep = await self._engine.create_endpoint_from_worker_address(addr, endpoint_error_handling=False)
                    self._eps[address] = ep
        self._eps.move_to_end(address)
        return ep

    async def acquire(self, address: bytes):
        """`get`, and the endpoint is not shed until `release(address)`."""
        self._busy[address] = self._busy.get(address, 0) + 1
        try:
            return await self.get(address)
        except BaseException:
            self.release(address)
            raise

    def release(self, address: bytes) -> None:
        left = self._busy.get(address, 0) - 1
        if left > 0:
            self._busy[address] = left
        else:
            self._busy.pop(address, None)

    def _make_room(self) -> None:
        if self._cap is None:
            return
        for address in list(self._eps):
            if len(self._eps) < self._cap:
                return
            if self._busy.get(address):
                continue
            ep = self._eps.pop(address)
            self.shed += 1
            if self.shed == 1:
                log.warning("UCX endpoint cap %d reached: closing the least recently used endpoints that "
                            "no reply is using", self._cap)
            task = asyncio.ensure_future(_close(ep))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def forget(self, address: bytes) -> None:
        self._eps.pop(address, None)


async def _close(ep) -> None:
    try:
        await ep.close()
    except Exception as exc:  # noqa: BLE001 - an endpoint to a peer that is gone
        log.debug("closing a shed UCX endpoint: %s", exc)
