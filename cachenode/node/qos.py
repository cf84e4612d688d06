"""Idle-bandwidth QoS: foreground (a loader waits) vs background (warming) cache traffic.

Background fills are paced by a token bucket whose rate follows what the link has left: the
NIC's byte counters (/proc/net/dev) minus the cache's own bytes are "other traffic" (the GPU
jobs'), and background gets link speed x (1 - headroom) minus that, re-read several times a
second. Foreground traffic only ever meets the optional overall cap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger("cachenode.qos")


@dataclass(frozen=True)
class QosConfig:
    max_rate: float | None = None     # bytes/s for all cache traffic (--max-egress)
    link_speed: float | None = None   # bytes/s of the NIC; enables idle mode (--link-speed)
    iface: str | None = None          # NIC to watch (--idle-iface); default: busiest non-loopback
    headroom: float = 0.1             # fraction of the link never used by background traffic
    direction: str = "rx"             # which counter carries background traffic: rx (fills) or tx
    interval: float = 0.1             # seconds between counter samples
    window: float = 0.5               # seconds over which rates are measured
    min_share: float = 0.01           # background never stops completely (progress guarantee)


class TokenBucket:
    """Bytes per second with a small burst; waits are where throttling happens."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._t = time.monotonic()
        self.throttled = 0.0

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now

    async def take(self, n: int, cancel: asyncio.Event | None = None) -> None:
        """Wait until the bucket holds min(n, burst), then take `n` (a block larger than the
        burst runs into debt, which paces the next one). Waits run in short slices at the
        *current* rate, so a limit that rises again takes effect at once."""
        self._refill()
        start = time.monotonic()
        need = min(n, self.burst)
        while self._tokens < need and self.rate > 0:
            if cancel is not None and cancel.is_set():
                break  # a waiting loader made this foreground
            await asyncio.sleep(min(0.05, (need - self._tokens) / self.rate))
            self._refill()
        self._tokens -= n
        self.throttled += time.monotonic() - start


def read_counters(iface: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of one interface from /proc/net/dev."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, sep, rest = line.partition(":")
            if sep and name.strip() == iface:
                fields = rest.split()
                return int(fields[0]), int(fields[8])
    raise ValueError(f"network interface {iface!r} not found in /proc/net/dev")


def default_iface() -> str:
    """The non-loopback interface that has moved the most bytes."""
    best, best_bytes = None, -1
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, rest = line.partition(":")
            name = name.strip()
            fields = rest.split()
            total = int(fields[0]) + int(fields[8])
            if name != "lo" and total > best_bytes:
                best, best_bytes = name, total
    if best is None:
        raise ValueError("no network interface besides loopback; pass --idle-iface")
    return best


class Governor:
    """Paces background traffic into the link's idle capacity; counts bytes by class."""

    def __init__(self, cfg: QosConfig) -> None:
        self.cfg = cfg
        self.iface = cfg.iface or (default_iface() if cfg.link_speed else None)
        cap = cfg.max_rate or float("inf")
        # Bursts of ~0.1 s of traffic: enough to keep a block moving, small enough to react.
        self._cap = TokenBucket(cfg.max_rate, max(64 << 10, cfg.max_rate / 10)) if cfg.max_rate else None
        start = min(cap, (cfg.link_speed or cap) * (1 - cfg.headroom))
        self._bg = TokenBucket(start, max(64 << 10, start / 10)) if start != float("inf") else None
        self.bytes = {"foreground": 0, "background": 0}
        self.other_rate = 0.0
        self._own = 0
        self._task: asyncio.Task | None = None

    @property
    def background_limit(self) -> float | None:
        return self._bg.rate if self._bg else None

    @property
    def throttled_seconds(self) -> float:
        return (self._bg.throttled if self._bg else 0.0) + (self._cap.throttled if self._cap else 0.0)

    def start(self) -> None:
        if self.cfg.link_speed and self._task is None:
            read_counters(self.iface)  # fail at start, naming the interface, not later
            self._task = asyncio.ensure_future(self._follow_link())
            log.info("idle mode on %s: link %.0f MB/s, headroom %.0f%%", self.iface,
                     self.cfg.link_speed / 1e6, 100 * self.cfg.headroom)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def foreground(self, n: int) -> None:
        self.bytes["foreground"] += n
        if self._cap:
            await self._cap.take(n)

    async def background(self, n: int, boost: asyncio.Event | None = None) -> None:
        """Wait until `n` background bytes fit; returns early if `boost` is set (a loader
        started waiting for this very block, which makes it foreground)."""
        self.bytes["background"] += n
        if self._bg:
            await self._bg.take(n, boost)
        if self._cap and not (boost and boost.is_set()):
            await self._cap.take(n)

    def own(self, n: int, direction: str) -> None:
        """Bytes the cache itself moved ("rx" or "tx"); those on the watched counter are
        subtracted from it, so only other traffic squeezes the background limit."""
        if direction == self.cfg.direction:
            self._own += n

    async def _follow_link(self) -> None:
        cfg = self.cfg
        idx = 0 if cfg.direction == "rx" else 1
        usable = cfg.link_speed * (1 - cfg.headroom)
        floor = cfg.link_speed * cfg.min_share
        # Rates over a sliding window: our own bytes are counted a whole block at a time, so a
        # single 0.1 s sample would swing between "all ours" and "all someone else's".
        samples: deque[tuple[float, int, int]] = deque()
        while True:
            now = time.monotonic()
            samples.append((now, read_counters(self.iface)[idx], self._own))
            while len(samples) > 2 and now - samples[1][0] >= cfg.window:
                samples.popleft()
            t0, total0, own0 = samples[0]
            if now - t0 >= cfg.interval:
                dt = now - t0
                own = (self._own - own0) / dt
                other = max(0.0, (samples[-1][1] - total0) / dt - own)
                self.other_rate = other
                if other > 2 * floor and other + own > usable:
                    # The link is full and someone else is on it: a TCP flow only shows what we
                    # leave it, so back off multiplicatively rather than trust `usable - other`.
                    limit = max(floor, min(self._bg.rate, max(own, floor)) * 0.5)
                else:
                    limit = max(floor, usable - other)
                if cfg.max_rate:
                    limit = min(limit, cfg.max_rate)
                self._bg.rate = limit
            await asyncio.sleep(cfg.interval)
