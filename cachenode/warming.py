"""The warm coordinator (loader and node): every owner fills its blocks of some objects in parallel."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable

from .blocks import ObjectInfo, block_count, block_key, block_span, fill_payload
from .errors import PeerUnavailable
from .placement import Member, rank
from .source import SourceRef

SendFill = Callable[[Member, dict], Awaitable[dict]]


@dataclass
class WarmSummary:
    objects: int = 0
    blocks: int = 0
    bytes: int = 0
    already_cached: int = 0
    seconds: float = 0.0
    per_member: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


async def warm_objects(objects: list[tuple[SourceRef, ObjectInfo]], block_size: int,
                       members: list[Member], send_fill: SendFill, *, batch: int = 4,
                       concurrency: int | None = None,
                       progress: Callable[[int], None] | None = None) -> WarmSummary:
    """Send each block to its owner in small batches; a dead owner's blocks go to the next in rank."""
    t0 = time.perf_counter()
    summary = WarmSummary(objects=len(objects))
    by_id = {m.id: m for m in members if m.healthy}
    dead: set[str] = set()
    sem = asyncio.Semaphore(concurrency or max(2, 2 * len(by_id)))

    async def send(ref: SourceRef, info: ObjectInfo, indices: list[int]) -> None:
        keys = {i: block_key(ref, info.etag, info.size, block_size, i) for i in indices}
        pending = list(indices)
        while pending:
            alive = [m for m in by_id if m not in dead]
            if not alive:
                raise PeerUnavailable(f"no cache node left to warm {ref}")
            groups: dict[str, list[int]] = {}
            for i in pending:
                groups.setdefault(rank(keys[i], alive)[0], []).append(i)
            pending = []
            for mid, idx in groups.items():
                try:
                    async with sem:
                        res = await send_fill(by_id[mid], fill_payload(ref, info, block_size, idx))
                except PeerUnavailable:
                    dead.add(mid)
                    pending.extend(idx)
                    continue
                nbytes = sum(block_span(info.size, block_size, i)[1] for i in idx)
                summary.blocks += len(idx)
                summary.bytes += nbytes
                summary.already_cached += int(res.get("cached", 0))
                summary.per_member[mid] = summary.per_member.get(mid, 0) + len(idx)
                if progress:
                    progress(nbytes)

    jobs = []
    span = batch * max(1, len(by_id))  # about `batch` blocks per member per round
    for ref, info in objects:
        # Batches of consecutive indices per object; send() regroups them by owner.
        n = block_count(info.size, block_size)
        for start in range(0, n, span):
            jobs.append(send(ref, info, list(range(start, min(n, start + span)))))
    await asyncio.gather(*jobs)
    summary.seconds = time.perf_counter() - t0
    return summary


def select_objects(listing: list[tuple[SourceRef, ObjectInfo]], prefix: str) -> list[tuple[SourceRef, ObjectInfo]]:
    """An exact name match means that one object; otherwise everything under the prefix."""
    exact = [(r, i) for r, i in listing if r.path == prefix]
    return exact or listing
