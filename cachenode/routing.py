"""The owner-read routine: a block from its owner, else the next member in rank (loader and node)."""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol

from .blocks import BlockRequest
from .errors import BlockCorrupt, PeerUnavailable

log = logging.getLogger("cachenode.routing")


class Channel(Protocol):
    """What a transport client offers for blocks (HTTP and UCX both implement it)."""

    async def read_block(self, req: BlockRequest, dest: memoryview, *, verify: bool = False,
                         forwarded: str | None = None, avoid: Iterable[str] = (),
                         background: bool = False) -> tuple[str, str]:
        """Fill `dest` (exactly the block's length); (tier that served it, digest). After a
        failure `dest` holds garbage. `background`: nobody waits for it yet (wire.PRIORITY)."""


async def read_from_owners(req: BlockRequest, dest: memoryview, candidates: Iterable[str],
                           channel: Callable[[str], Channel], down: set[str], *,
                           forwarded: str | None = None, background: bool = False,
                           on_down: Callable[[str, Exception], None] | None = None) -> tuple[str, str] | None:
    """Read `req` into `dest` from the first candidate (in rank order) that serves it.

    A member that fails or sends a corrupt block twice is added to `down` (the caller's avoid
    list, also sent along so the receiver does not forward into the same stall) and the next is
    tried; each one overwrites all of `dest`. A corrupt block is asked for once more with
    `verify`, so the node re-checks its copy (and drops and refetches a bad one). Returns
    (tier, digest), or None when every candidate failed (the caller then serves it itself, or
    reads the origin).
    """
    for member_id in candidates:
        if member_id in down:
            continue
        try:
            ch = channel(member_id)
            try:
                return await ch.read_block(req, dest, forwarded=forwarded, avoid=tuple(down),
                                           background=background)
            except BlockCorrupt:
                return await ch.read_block(req, dest, verify=True, forwarded=forwarded, avoid=tuple(down),
                                           background=background)
        except (PeerUnavailable, BlockCorrupt) as exc:
            log.warning("block %d of %s from %s: %s; trying the next member", req.index, req.ref,
                        member_id, exc)
            down.add(member_id)
            if on_down is not None:
                on_down(member_id, exc)
    return None
