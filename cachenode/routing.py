"""The owner-read routine: a block from its owner, else the next member in rank (loader and node)."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable, Protocol

from .blocks import BlockRequest
from .errors import BlockCorrupt, CacheError, PeerUnavailable
from .pauses import FIRST_PAUSE, Pauses

log = logging.getLogger("cachenode.routing")

PROBE_POLL = 0.05  # how often a read that waits for a member's probe looks again


class Channel(Protocol):
    """What a transport client offers for blocks (HTTP and UCX both implement it)."""

    async def read_block(self, req: BlockRequest, dest: memoryview, *, verify: bool = False,
                         forwarded: str | None = None, avoid: Iterable[str] = (),
                         background: bool = False) -> tuple[str, str]:
        """Fill `dest` (exactly the block's length); (tier that served it, digest). After a
        failure `dest` holds garbage. `background`: nobody waits for it yet (wire.PRIORITY)."""


async def read_from_owners(req: BlockRequest, dest: memoryview, candidates: Iterable[str],
                           channel: Callable[[str], Channel], pauses: Pauses, *,
                           avoid: frozenset[str] = frozenset(), forwarded: str | None = None,
                           background: bool = False,
                           on_down: Callable[[str, Exception], None] | None = None) -> tuple[str, str] | None:
    """Read `req` into `dest` from the first candidate (in rank order) that serves it.

    Members in `avoid` are skipped, and so are paused ones (see Pauses: a member that failed
    sits out a short, growing pause, then gets one probe). A member that fails, or sends a
    corrupt block twice, is paused and the next is tried; each one overwrites all of `dest`.
    The receiver is told which members to avoid, so it does not forward into the same stall.
    A corrupt block is asked for once more with `verify`, so the node re-checks its copy (and
    drops and refetches a bad one). A member that answers with an error of ours (the source
    changed, forbidden, ...) is alive: that error is the answer. When every candidate sits out
    and one of them has failed only once, the read waits for that one's probe (at most two
    first pauses) instead of giving up. Returns (tier, digest), or None when every candidate
    failed (the caller then serves it itself, or reads the origin).
    """
    candidates = list(candidates)
    waited = 0.0
    while True:
        for member_id in candidates:
            if member_id in avoid or not pauses.admit(member_id):
                continue
            got = await _try_member(req, dest, member_id, channel, pauses, avoid, forwarded, background, on_down)
            if got is not None:
                return got
        briefly_paused = any(pauses.briefly(m) for m in candidates if m not in avoid)
        # Every candidate failed or sits out. One that failed only once (its first, 1 s pause,
        # or its probe out now) is waited for rather than read around: a single bad reply must
        # not send the block to the origin (with one member, every read for a second). A member
        # whose probe failed too is down for longer: give up, the caller reads around it.
        if not briefly_paused or waited >= 2 * FIRST_PAUSE:
            return None
        await asyncio.sleep(PROBE_POLL)
        waited += PROBE_POLL


async def _try_member(req: BlockRequest, dest: memoryview, member_id: str, channel: Callable[[str], Channel],
                      pauses: Pauses, avoid: frozenset[str], forwarded: str | None, background: bool,
                      on_down: Callable[[str, Exception], None] | None) -> tuple[str, str] | None:
    """One member's answer (tier, digest), or None if it failed (it is then paused)."""
    probe = pauses.is_paused(member_id)
    told = tuple(sorted(avoid | pauses.paused()))
    verdict = False
    try:
        ch = channel(member_id)
        try:
            got = await ch.read_block(req, dest, forwarded=forwarded, avoid=told, background=background)
        except BlockCorrupt:
            got = await ch.read_block(req, dest, verify=True, forwarded=forwarded, avoid=told,
                                      background=background)
        verdict = True
        pauses.succeeded(member_id)
        return got
    except (PeerUnavailable, BlockCorrupt) as exc:
        verdict = True
        pauses.failed(member_id, probe=probe)
        log.warning("block %d of %s from %s: %s; trying the next member (%s paused for %.1f s)",
                    req.index, req.ref, member_id, exc, member_id, pauses.pause_left(member_id))
        if on_down is not None:
            on_down(member_id, exc)
        return None
    except CacheError:
        verdict = True
        pauses.succeeded(member_id)  # it answered, with an error that is the answer
        raise
    finally:
        if not verdict:
            pauses.abandoned(member_id)  # cancelled mid-read: let the next request probe
