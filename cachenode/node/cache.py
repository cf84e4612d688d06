"""The node's block cache: tiers, single-flight fills from the origin, allow-list."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Callable

from ..blocks import Block, BlockRequest, ObjectInfo, block_key, block_span, digest
from ..errors import Forbidden, OriginUnavailable
from ..origin import Origin, Origins
from ..source import SourceRef
from ..store.disk import DiskFull, DiskTier
from ..store.memory import MemoryTier
from .budgets import Budgets
from .config import NodeConfig
from .metrics import NodeMetrics
from .qos import Governor
from .singleflight import SingleFlight

log = logging.getLogger("cachenode.node")


class BlockCache:
    """One node's block cache over the tiers, origins, governor and budgets it is given.
    Several may live in one process (tests): no global state."""

    def __init__(self, config: NodeConfig, *, memory: MemoryTier, disk: DiskTier, origins: Origins,
                 governor: Governor, budgets: Budgets, metrics: NodeMetrics,
                 buffers: Callable[[int], bytearray | memoryview] = bytearray) -> None:
        self.config = config
        # Where a filled block's bytes live (store/shm.py: memfds, when this host's loaders are
        # handed blocks by descriptor; plain memory otherwise).
        self.buffers = buffers
        self.metrics = metrics
        self.memory = memory
        self.disk = disk
        self.origins = origins
        self.governor = governor
        self.budgets = budgets
        self._flights: SingleFlight[Block] = SingleFlight()
        self._writes: set[asyncio.Task] = set()
        self._boost: dict[str, asyncio.Event] = {}  # background fills a loader now waits for
        self._stats: OrderedDict[SourceRef, tuple[float, ObjectInfo]] = OrderedDict()  # last stat answers
        self._warned_full = False
        self.metrics.memory_capacity.set(config.memory_bytes)
        self.metrics.disk_capacity.set(config.disk_bytes)

    async def start(self) -> None:
        """Load the disk tier's index (blocks cached before a restart are served again)."""
        n = await asyncio.to_thread(self.disk.rebuild)
        log.info("disk tier %s: %d blocks, %d bytes (%d files dropped: truncated or not ours)",
                 self.disk.root, n, self.disk.used, self.disk.dropped)
        self._update_gauges()

    async def flush_disk_writes(self) -> None:
        """Wait for the disk writes started so far (shutdown; tests that need a block on disk)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        """Finish the disk writes still pending, then close the disk tier they write to."""
        await self.flush_disk_writes()
        await asyncio.to_thread(self.disk.close)

    def origin_for(self, ref: SourceRef) -> Origin:
        if not self.config.allows(ref):
            raise Forbidden(f"{ref} is not on this node's allow-list")
        return self.origins.for_ref(ref)

    async def stat(self, ref: SourceRef) -> ObjectInfo:
        """The object's size and ETag from the origin; while the origin is unreachable, the
        last answer for it if younger than --stale-stat, so a warm cluster keeps serving the
        blocks it holds through a short origin outage (a changed blob cannot be noticed then;
        every block read is still pinned to that ETag)."""
        origin = self.origin_for(ref)
        try:
            info = await self._bounded(origin, origin.stat(ref), f"stat of {ref}")
        except OriginUnavailable:
            known = self._stats.get(ref)
            if known is None or time.monotonic() - known[0] > self.config.stale_stat:
                raise
            self.metrics.stale_stats.inc()
            log.warning("origin unreachable: answering the stat of %s from %.0f s ago", ref,
                        time.monotonic() - known[0])
            return known[1]
        self._stats[ref] = (time.monotonic(), info)
        self._stats.move_to_end(ref)
        while len(self._stats) > 10_000:
            self._stats.popitem(last=False)
        return info

    async def list(self, ref: SourceRef, prefix: str) -> list[tuple[SourceRef, ObjectInfo]]:
        origin = self.origin_for(ref)
        return await self._bounded(origin, origin.list(ref, prefix), f"listing {ref}")

    async def _bounded(self, origin: Origin, op, what: str):
        """One origin call, retries included, within --origin-timeout: a hung origin (accepts,
        never answers) fails the request with its name while the loader still waits for us,
        instead of outliving the loader's peer timeout on every node in turn."""
        try:
            return await asyncio.wait_for(op, self.config.origin_timeout)
        except asyncio.TimeoutError:
            where = getattr(origin, "url", "the origin")
            raise OriginUnavailable(f"blob endpoint {where} timed out after {self.config.origin_timeout:g} s "
                                    f"({what})") from None

    async def get_block(self, req: BlockRequest, *, verify: bool = False, background: bool = False) -> Block:
        """The block's bytes from memory, disk, or (once, however many ask) the origin.

        Background requests (warming) are paced into the link's idle capacity; a foreground
        request that finds a background fill of the same block in flight lifts its pacing, so
        a waiting loader never queues behind background traffic.
        """
        origin = self.origin_for(req.ref)
        offset, length = block_span(req.size, req.block_size, req.index)
        key = block_key(req.ref, req.etag, req.size, req.block_size, req.index)
        block = await self._lookup(key, verify)
        if block is not None:
            self.metrics.hits.labels(block.tier).inc()
            return block
        self.metrics.misses.inc()
        if not background and key in self._boost:
            self._boost[key].set()
        block, shared = await self._flights.do(
            key, lambda: self._fill(origin, req, key, offset, length, background))
        if shared:
            self.metrics.fills_deduplicated.inc()
        return block

    async def warm_block(self, req: BlockRequest) -> bool:
        """Make sure the block is cached here; True if it already was."""
        block = await self.get_block(req, background=True)
        block.close()
        cached = block.tier != "origin"
        self.metrics.warm_blocks.labels("cached" if cached else "filled").inc()
        return cached

    async def _lookup(self, key: str, verify: bool) -> Block | None:
        item = self.memory.get(key)
        if item is not None:
            data, dg = item
            if not verify or digest(data) == dg:
                return Block(len(data), dg, "memory", data=data)
            self.memory.discard(key)
            self.metrics.corrupt_blocks.inc()
        entry = self.disk.get(key)
        if entry is None:
            return None
        if entry.verified and not verify:
            opened = self.disk.open(key)
            if opened is None:
                return None
            f, release = opened
            return Block(entry.length, entry.digest, "disk", file=f, release=release)
        data = await self.disk.read_verified(key)
        if data is None:
            log.warning("dropped corrupt cached block %s", key)
            self.metrics.corrupt_blocks.inc()
            self._update_gauges()
            return None
        self.memory.put(key, data, entry.digest)
        self._update_gauges()
        return Block(len(data), entry.digest, "disk", data=data)

    async def _fill(self, origin: Origin, req: BlockRequest, key: str, offset: int, length: int,
                    background: bool = False) -> Block:
        # Check again inside the flight: a flight for this key may have finished between our
        # miss and this one starting, and the block must not be read from the origin twice.
        block = await self._lookup(key, False)
        if block is not None:
            # Every waiter of the flight gets this one Block: an open file would be closed
            # by the first sender under the others, so hand out its bytes instead.
            return await _in_memory(block)
        async with self.budgets.fill_slots(background):
            return await self._fill_now(origin, req, key, offset, length, background)

    async def _fill_now(self, origin: Origin, req: BlockRequest, key: str, offset: int, length: int,
                        background: bool) -> Block:
        buf = self.buffers(length)

        async def read(pos: int, view: memoryview) -> None:
            await self._bounded(origin, origin.read_into(req.ref, req.etag, offset + pos, view),
                                f"block {req.index} of {req.ref}")

        boost = self._boost.setdefault(key, asyncio.Event()) if background else None
        try:
            await self.governor.fill(memoryview(buf), read, boost, background=background)
        finally:
            if background:
                self._boost.pop(key, None)
        self.metrics.fills.inc()
        self.metrics.origin_bytes.inc(length)
        dg = digest(buf)
        self.memory.put(key, buf, dg)  # never mutated from here on: shared with responses
        task = asyncio.ensure_future(self._write_disk(key, buf, dg))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        self._update_gauges()
        return Block(length, dg, "origin", data=buf)

    async def _write_disk(self, key: str, data, dg: str) -> None:
        try:
            await self.disk.write(key, data, dg)
        except DiskFull as exc:
            self.metrics.disk_full.inc()
            if not self._warned_full:
                log.warning("%s; serving without caching on disk", exc.strerror)
                self._warned_full = True
        except OSError as exc:
            self.metrics.errors.labels("disk_write").inc()
            log.warning("could not cache block %s on disk: %s", key, exc)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.memory_used.set(self.memory.used)
        self.metrics.disk_used.set(self.disk.used)
        self.metrics.disk_held_evicted.set(self.disk.held_evicted_bytes)

    def refresh_metrics(self) -> None:
        """Gauges read at scrape time."""
        self._update_gauges()
        g, m = self.governor, self.metrics
        limits = g.background_limit
        for d, other in g.other_rate.items():
            m.qos_limit.labels(d).set(-1 if limits is None else limits[d])
            m.qos_other.labels(d).set(other)
        m.qos_throttled.set(g.throttled_seconds)
        for cls, n in g.bytes.items():
            m.qos_bytes.labels(cls).set(n)


async def _in_memory(block: Block) -> Block:
    """`block` with its bytes in memory (a file block is read and closed)."""
    if block.file is None:
        return block
    try:
        data = await asyncio.to_thread(block.read_file)
    finally:
        block.close()
    return Block(block.length, block.digest, block.tier, data=data)
