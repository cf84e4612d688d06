"""Core block types: object versions, block requests and blocks, their geometry, keys and digests."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import xxhash

from .errors import BadRequest
from .source import SourceRef

DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 256 * 1024 * 1024
OFF_LOOP_DIGEST = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """Size and version of an object; the ETag pins every later read."""

    size: int
    etag: str
    # Last-modified time (Unix seconds) as the origin reports it, for listings and fsspec's
    # modified(); informational only, never part of a key or of equality (the ETag is).
    modified: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class BlockRequest:
    """Everything needed to fill one block; the node keeps no per-file state."""

    ref: SourceRef
    etag: str
    size: int
    block_size: int
    index: int

    @property
    def key(self) -> str:
        return block_key(self.ref, self.etag, self.size, self.block_size, self.index)

    @property
    def span(self) -> tuple[int, int]:
        """(offset, length) in the object; BadRequest if the index is out of range."""
        return block_span(self.size, self.block_size, self.index)


# A block request's fields on the wire (the source's own are SourceRef.to_params); a fill names
# several blocks of one object, with INDICES in place of INDEX. transport/wire.py uses these.
ETAG, SIZE, BLOCK_SIZE, INDEX, INDICES = "etag", "size", "bs", "index", "indices"


def fill_payload(ref: SourceRef, info: ObjectInfo, block_size: int, indices: list[int]) -> dict:
    """A fill request's body (POST FILL_PATH): fill these blocks of one object on the receiving node."""
    return {**ref.to_params(), ETAG: info.etag, SIZE: info.size, BLOCK_SIZE: block_size, INDICES: indices}


@dataclass(frozen=True)
class Block:
    """A block ready to send: bytes in memory, or an open, verified file to sendfile.

    A file block holds its file open (`file`) from the moment the tier hands it out: the tier
    may evict and unlink the file meanwhile (another fill needs the room), and the open file
    keeps its bytes readable until the block is closed. Whoever sends a block closes it
    (`close()`, idempotent), which also releases the tier's hold on those bytes.
    """

    length: int
    digest: str
    tier: str
    data: bytes | bytearray | None = None
    file: BinaryIO | None = None
    release: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def read_file(self) -> bytes:
        """The bytes of a file block, read once (where sendfile cannot be used); positional, so
        it never moves the file's offset."""
        assert self.file is not None
        out = os.pread(self.file.fileno(), self.length, 0)
        if len(out) != self.length:
            raise OSError(f"cached block file is {len(out)} bytes, expected {self.length}")
        return out

    def close(self) -> None:
        """Done with the block: close its file and release the tier's hold (no-op for memory)."""
        if self.file is not None and not self.file.closed:
            self.file.close()
            if self.release is not None:
                self.release()


def check_block_size(block_size: int) -> int:
    """Return block_size if it is sane, else raise ValueError naming it."""
    if not (MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE):
        raise ValueError(
            f"block size {block_size} out of range ({MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE} bytes)"
        )
    return block_size


def block_count(size: int, block_size: int) -> int:
    """Number of blocks of an object of `size` bytes (0 for an empty object)."""
    return -(-size // block_size)


def block_span(size: int, block_size: int, index: int) -> tuple[int, int]:
    """(offset, length) of block `index`; the last block may be short."""
    if index < 0 or index >= block_count(size, block_size):
        raise BadRequest(
            f"block index {index} out of range: object of {size} bytes has "
            f"{block_count(size, block_size)} blocks of {block_size} bytes"
        )
    offset = index * block_size
    return offset, min(block_size, size - offset)


def block_key(ref: SourceRef, etag: str, size: int, block_size: int, index: int) -> str:
    """xxh3-128 hex key over (account, container, path, ETag + size, block size, index).

    The version (ETag plus size, DESIGN.md) is part of the key, so a replaced blob can never be
    served from old blocks, and a request lying about the size cannot plant a short block under
    the key honest readers use. Keys are immutable; old versions age out of the LRU.
    """
    h = xxhash.xxh3_128()
    fields = (ref.kind, ref.account, ref.container, ref.path, etag, str(size), str(block_size), str(index))
    for field in fields:
        data = field.encode()
        h.update(len(data).to_bytes(4, "little"))  # length-prefixed: no ambiguity between fields
        h.update(data)
    return h.hexdigest()


def digest(data) -> str:
    """xxh3-128 hex digest of a block's bytes (end-to-end integrity check)."""
    return xxhash.xxh3_128_hexdigest(data)


async def digest_off_loop(data) -> str:
    """digest() on a worker thread for large blocks: xxhash releases the GIL, so the event loop
    keeps receiving other blocks meanwhile (0.11 s of loop time per GiB otherwise)."""
    if len(data) < OFF_LOOP_DIGEST:
        return digest(data)
    return await asyncio.to_thread(digest, data)
