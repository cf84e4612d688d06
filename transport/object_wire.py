"""Object calls on the wire: the framed batch body (length-prefixed JSON header, then the bytes) and its one decoder."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

from cachenode.blocks import digest
from cachenode.errors import BadRequest, BlockCorrupt
from cachenode.objects import check_keys, check_namespace

# A frame: MAGIC, the header's length (u32 little-endian), the JSON header, then the objects'
# bytes back to back in header order (sizes in the header; -1 in a get answer: a miss).
MAGIC = b"CNO1"
_PREFIX = struct.Struct("<4sI")
PREFIX_SIZE = _PREFIX.size
# Bounds a node holds every request to before it reads a byte of objects: the header is read
# whole, the objects one at a time into buffers of their announced (checked) size.
MAX_HEADER = 4 << 20
MAX_BATCH_KEYS = 2048
MAX_BATCH_BYTES = 256 << 20  # a put's objects together; clients split bigger batches

# Operations and header fields.
PUT, GET, EXISTS, DELETE = "put", "get", "exists", "delete"
OPS = (PUT, GET, EXISTS, DELETE)
NAMESPACE, KEYS, SIZES, DIGESTS, PRIORITY, BACKGROUND = "ns", "keys", "sizes", "digests", "priority", "background"
# UCX carries in its request what HTTP carries in the path and headers.
UCX_OP, UCX_WRITER, UCX_UPLOAD, UCX_HEADER_LENGTH = "op", "writer", "upload", "hlen"
# A call's header (or an answer) small enough rides inside the request (the reply header)
# instead of a message of its own: one message less each way for a typical batch.
UCX_INLINE = "inline"
UCX_INLINE_LIMIT = 4096  # the request also holds the reply address (REQUEST_SIZE 8192)
# The writer credential of the namespace (puts and deletes), beside the cluster token.
WRITER_HEADER = "X-Cachenode-Writer"
MISSING = -1


@dataclass(frozen=True)
class ObjectCall:
    """A decoded object call: what the node service's object methods take."""

    op: str
    namespace: str
    keys: list[str]
    sizes: list[int]      # put only
    digests: list[str]    # put only
    background: bool


def pack_prefix(header_length: int) -> bytes:
    return _PREFIX.pack(MAGIC, header_length)


def unpack_prefix(buf: bytes) -> int:
    """The header length a frame's prefix announces; BadRequest when it is not our frame or too big."""
    magic, n = _PREFIX.unpack(buf)
    if magic != MAGIC:
        raise BadRequest("object call body is not a cachenode object frame (bad magic)")
    if n > MAX_HEADER:
        raise BadRequest(f"object call header of {n} bytes exceeds {MAX_HEADER}")
    return n


def frame(header: dict) -> bytes:
    """Prefix + JSON header (the objects follow it)."""
    body = json.dumps(header, separators=(",", ":")).encode()
    return pack_prefix(len(body)) + body


def parse_header(raw: bytes | bytearray) -> dict:
    try:
        header = json.loads(bytes(raw))
    except ValueError:
        raise BadRequest("object call header is not JSON") from None
    if not isinstance(header, dict):
        raise BadRequest("object call header must be a JSON object")
    return header


def call_header(op: str, namespace: str, keys, sizes=None, digests=None, background: bool = False) -> dict:
    header = {NAMESPACE: namespace, KEYS: list(keys)}
    if op == PUT:
        header.update({SIZES: list(sizes), DIGESTS: list(digests)})
    if background:
        header[PRIORITY] = BACKGROUND
    return header


def decode_object_call(op: str, header: dict) -> ObjectCall:
    """The one decoder of an object call, for every server; BadRequest names the first bad field."""
    if op not in OPS:
        raise BadRequest(f"object operation {str(op)[:40]!r}: expected one of {', '.join(OPS)}")
    namespace = check_namespace(header.get(NAMESPACE))
    keys = header.get(KEYS)
    if not isinstance(keys, list) or not keys:
        raise BadRequest(f"object call needs {KEYS!r}: a non-empty list of keys")
    if len(keys) > MAX_BATCH_KEYS:
        raise BadRequest(f"object call of {len(keys)} keys exceeds {MAX_BATCH_KEYS} per batch")
    keys = check_keys(keys)
    priority = header.get(PRIORITY)
    if priority not in (None, "foreground", BACKGROUND):
        raise BadRequest(f"{PRIORITY}={str(priority)[:40]!r}: expected 'foreground' or 'background'")
    sizes: list[int] = []
    digests: list[str] = []
    if op == PUT:
        sizes, digests = header.get(SIZES), header.get(DIGESTS)
        if (not isinstance(sizes, list) or len(sizes) != len(keys)
                or not all(type(s) is int and s >= 0 for s in sizes)):
            raise BadRequest(f"object put needs {SIZES!r}: one byte count (>= 0) per key")
        if not isinstance(digests, list) or len(digests) != len(keys) or not all(isinstance(d, str) for d in digests):
            raise BadRequest(f"object put needs {DIGESTS!r}: one xxh3-128 hex digest per key")
        if sum(sizes) > MAX_BATCH_BYTES:
            raise BadRequest(f"object put of {sum(sizes)} bytes exceeds {MAX_BATCH_BYTES} per batch")
    return ObjectCall(op, namespace, keys, sizes, digests, priority == BACKGROUND)


def answer_header(found: list[tuple[int, str] | None]) -> dict:
    """A get answer's header: per key its size and digest, MISSING for a miss."""
    return {SIZES: [MISSING if f is None else f[0] for f in found],
            DIGESTS: ["" if f is None else f[1] for f in found]}


def parse_answer(header: dict, n: int) -> list[tuple[int, str] | None]:
    """A get answer's header back into per-key (size, digest) or None; ValueError if malformed."""
    sizes, digests = header.get(SIZES), header.get(DIGESTS)
    if not isinstance(sizes, list) or not isinstance(digests, list) or len(sizes) != n or len(digests) != n:
        raise ValueError("object answer header does not match the keys asked for")
    out: list[tuple[int, str] | None] = []
    for s, d in zip(sizes, digests):
        if type(s) is not int or s < MISSING or not isinstance(d, str):
            raise ValueError(f"object answer header has a bad entry: {s!r}, {d!r:.40}")
        out.append(None if s == MISSING else (s, d))
    return out


def object_buffer(key: str, size: int, dest: memoryview | None) -> memoryview:
    """Where an object of `size` bytes lands: the caller's buffer (a view of that length), or a
    fresh one. A caller's buffer that is too small is the caller's error, named."""
    if dest is None:
        return memoryview(bytearray(size))
    if dest.format != "B" or dest.ndim != 1:
        dest = dest.cast("B")
    if len(dest) < size:
        raise BadRequest(f"object {key[:80]!r} has {size} bytes: the buffer given for it holds {len(dest)}")
    return dest[:size]


async def land(keys: list[str], found: list[tuple[int, str] | None], into: list[memoryview | None],
               read_into: Callable[[int, memoryview], Awaitable[None]], where: str) -> list[memoryview | None]:
    """A get answer's objects, in order: `read_into(i, view)` fills key i's bytes into its
    buffer (the caller's, or a fresh one), then its digest is checked; None for a miss."""
    out: list[memoryview | None] = []
    for i, (key, item, dest) in enumerate(zip(keys, found, into)):
        if item is None:
            out.append(None)
            continue
        size, expected = item
        view = object_buffer(key, size, dest)
        await read_into(i, view)
        if digest(view) != expected:
            raise BlockCorrupt(f"object {key[:80]!r} from {where} failed its digest check")
        out.append(view)
    return out
