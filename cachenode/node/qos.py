"""Idle-bandwidth QoS: foreground (a loader waits) vs background (warming, prefetch) cache traffic.

Background traffic is paced by a token bucket per direction whose rate follows what the link
has left: the NIC's byte counters (/proc/net/dev) minus the cache's own bytes (plus their
framing) are "other traffic" (the GPU jobs'), and background gets link speed x (1 - headroom)
minus that, re-read twenty times a second. Warm fills arrive on rx, read from the origin in
small paced pieces; background block reads (a loader's prefetch) leave on tx, sent in small
paced pieces; so a lower limit takes effect within a piece, not after a whole block. Foreground
traffic only ever meets the optional overall cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..flags import flag
from ..transport.wire import MAX_PIECES

log = logging.getLogger("cachenode.qos")


@dataclass(frozen=True)
class QosConfig:
    """The governor's settings; the first four are `cachenode serve` options (cachenode/flags.py)."""

    max_rate: float | None = flag(None, "--max-egress", "Cap for all cache traffic, e.g. 10Gbit or 1GB/s.",
                                  kind="rate")  # bytes/s
    link_speed: float | None = flag(None, "--link-speed", "NIC speed (e.g. 100Gbit): turns on idle mode, where "
                                    "background traffic (warming in, background reads out) uses only what the "
                                    "other traffic on the link leaves free, each direction on its own.",
                                    kind="rate")  # bytes/s
    iface: str | None = flag(None, "--idle-iface", "NIC whose byte counters idle mode watches.",
                             default_text="busiest non-loopback")
    headroom: float = flag(0.1, "--idle-headroom", "Fraction of the link background traffic never uses.",
                           range=(0, 0.9))
    interval: float = 0.05            # seconds between counter samples
    window: float = 0.5               # seconds over which rates are measured
    min_share: float = 0.01           # background never stops completely (progress guarantee)
    # Other traffic below this share of the link is not acted on: too little to matter, and
    # measurement noise (sample timing, other processes' small flows).
    noise: float = 0.1
    # Background origin reads go out in pieces of `piece_time` of the link (64 KiB to 4 MiB),
    # each waiting for its tokens, at most `pieces_in_flight` at once per node. What is already
    # on the wire when the limit drops is then ~20 ms of the link, and so is what the counters
    # see of our pieces before they land and count as ours (below `noise` at a 0.5 s window).
    piece: int | None = None
    piece_time: float = 0.01
    pieces_in_flight: int = 2
    # Bytes on the wire per payload byte beyond the payload (TCP/IP/Ethernet headers at MTU 1500
    # are ~4.6%): without it the cache's own headers look like someone else's traffic.
    framing: float = 0.05
    increase: float = 0.05            # additive increase per sample (share of the link) while others are on it

    @property
    def piece_bytes(self) -> int:
        rate = self.link_speed or self.max_rate or 0
        return self.piece or int(min(4 << 20, max(64 << 10, rate * self.piece_time)))


# Each direction of the link is its own budget: warm fills arrive on rx, background reads leave on tx.
DIRECTIONS = ("rx", "tx")


def decide(cfg: QosConfig, current: float, own: float, other: float, recent: float | None = None) -> float:
    """The background limit (bytes/s) for the next interval, from the measured rates.

    Pure, so its decisions can be replayed on recorded samples. `own` is the cache's payload
    rate on the watched counter, `other` everything else on it, both over the window; `recent`
    is other traffic over the last samples only. AIMD, as TCP itself: cut hard when someone
    else is squeezed, grow gently while they are there, take the link when alone.
    """
    usable = cfg.link_speed * (1 - cfg.headroom)  # on the wire, where the headroom must show
    floor = cfg.link_speed * cfg.min_share
    # A flow that starts beside us gets at first about the headroom, more only as TCP wins it
    # from our flows: at 10% of noise tolerance and 5% of headroom it could sit below notice
    # (seen: an iperf3 flow held at 1.1 of 12 MB/s for a second and more). So what counts as
    # noise is never more than the headroom.
    quiet = max(2 * floor, min(cfg.noise, cfg.headroom) * cfg.link_speed)
    wire = 1 + cfg.framing  # the limit paces payload; each payload byte takes this much link

    def room(taken: float) -> float:
        """The payload rate that puts background's wire bytes at `usable` minus `taken`."""
        return (usable - taken) / wire

    if other <= quiet:
        return max(floor, room(other))  # nobody else on the link: take what is left at once
    if recent is not None and recent < min(0.25 * cfg.link_speed, 0.5 * other):
        # Others' traffic just fell away (stopped or paused): take what they leave now rather
        # than after their bytes have left the window. Only on a clear fall: a flow we squeeze
        # to a trickle shows a low but steady rate, and must get the cut below instead.
        return max(floor, room(recent))
    step = cfg.increase * cfg.link_speed
    if other + own * wire > usable - step:
        # The link is full (one more step would not fit) and someone else is on it. A TCP flow
        # only shows what we leave it, so `usable - other` understates its demand: cut hard (a
        # quarter per sample reaches the floor from a full link in ~4 samples) instead of
        # trusting the difference.
        return max(floor, min(current, own, room(other)) * 0.25)
    # Others are on the link but it has room: grow gently (additive increase), never past what
    # they leave, so a flow that slowed for a moment does not find its share taken.
    return max(floor, min(room(other), current + step))


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

    def clip(self) -> None:
        self._tokens = min(self._tokens, self.burst)

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
    """Paces background traffic into the link's idle capacity, each direction on its own
    (fills arrive on rx, background reads leave on tx); counts bytes by class."""

    def __init__(self, cfg: QosConfig) -> None:
        self.cfg = cfg
        self.iface = cfg.iface or (default_iface() if cfg.link_speed else None)
        cap = cfg.max_rate or float("inf")
        # Bursts of ~0.1 s of traffic: enough to keep a block moving, small enough to react.
        self._cap = TokenBucket(cfg.max_rate, max(64 << 10, cfg.max_rate / 10)) if cfg.max_rate else None
        # With a link speed, the headroom is on the wire (framing included, as in decide()).
        start = (min(cap, cfg.link_speed * (1 - cfg.headroom) / (1 + cfg.framing)) if cfg.link_speed
                 else cap * (1 - cfg.headroom))
        self._bg = ({d: TokenBucket(start, max(64 << 10, start / 10)) for d in DIRECTIONS}
                    if start != float("inf") else {})
        self.bytes = {"foreground": 0, "background": 0}
        self.other_rate = {d: 0.0 for d in DIRECTIONS}
        self._own = {d: 0 for d in DIRECTIONS}
        # A slot first, tokens second: tokens are spent only when a piece can go, and slots are
        # handed out in arrival order, so concurrent paced transfers take turns piece by piece.
        self._pieces = {d: asyncio.Semaphore(cfg.pieces_in_flight) for d in DIRECTIONS}
        self._task: asyncio.Task | None = None

    @property
    def background_limit(self) -> dict[str, float] | None:
        return {d: b.rate for d, b in self._bg.items()} if self._bg else None

    @property
    def throttled_seconds(self) -> float:
        return sum(b.throttled for b in self._bg.values()) + (self._cap.throttled if self._cap else 0.0)

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

    async def background(self, n: int, boost: asyncio.Event | None = None, direction: str = "rx") -> None:
        """Wait until `n` background bytes fit; returns early if `boost` is set (a loader
        started waiting for this very block, which makes it foreground)."""
        self.bytes["background"] += n
        if self._bg:
            await self._bg[direction].take(n, boost)
        if self._cap and not (boost and boost.is_set()):
            await self._cap.take(n)

    async def fill(self, dest: memoryview, read: Callable[[int, memoryview], Awaitable[None]],
                   boost: asyncio.Event | None = None, *, background: bool = False) -> None:
        """Fill `dest` from the origin with `read(offset, view)`, counting the bytes as ours.

        Background fills go in paced pieces; once `boost` is set (a loader now waits for this
        block) the rest is read in one go.
        """
        pos, n = 0, len(dest)
        while pos < n:
            step = n - pos
            if background and self._bg and not (boost and boost.is_set()):
                step = min(step, self.cfg.piece_bytes)
                async with self._pieces["rx"]:
                    await self.background(step, boost)
                    await read(pos, dest[pos:pos + step])
            else:
                if background:
                    await self.background(step, boost)
                await read(pos, dest[pos:pos + step])
            self.own(step, "rx")  # counted as it lands, so the next sample sees it
            pos += step

    def send_piece(self, length: int) -> int:
        """The piece size a background send of `length` bytes goes out in (at most
        MAX_PIECES pieces; one piece when nothing paces background traffic)."""
        if not self._bg:
            return max(1, length)
        return max(self.cfg.piece_bytes, -(-length // MAX_PIECES))

    def send_pace(self) -> float | None:
        """Wire bytes/s one background send should go out at (None: unpaced): its share of the
        tx limit, so that pieces leave evenly instead of as line-rate bursts a newly started
        flow finds the link's queue full of."""
        if not self._bg:
            return None
        return self._bg["tx"].rate * (1 + self.cfg.framing) / self.cfg.pieces_in_flight

    async def send(self, data, write: Callable[[memoryview], Awaitable[None]], piece: int,
                   deadline: float | None = None) -> None:
        """Send `data` as background traffic with `write(view)`, in paced pieces of `piece` bytes,
        counting them as ours on tx; a write that takes longer than `deadline` raises
        TimeoutError (and frees its slot)."""
        view = memoryview(data)
        for pos in range(0, len(view), piece):
            part = view[pos:pos + piece]
            async with self._pieces["tx"] if self._bg else contextlib.nullcontext():
                await self.background(len(part), direction="tx")
                await asyncio.wait_for(write(part), deadline)
            self.own(len(part), "tx")

    def own(self, n: int, direction: str) -> None:
        """Bytes the cache itself moved ("rx" or "tx"): subtracted from that counter, so only
        other traffic squeezes the background limit."""
        self._own[direction] += n

    async def _follow_link(self) -> None:
        meters = {d: LinkMeter(self.cfg) for d in DIRECTIONS}
        while True:
            now, counters = time.monotonic(), read_counters(self.iface)
            for d, counter in zip(DIRECTIONS, counters):
                rates = meters[d].sample(now, counter, self._own[d])
                if rates is not None:
                    own, self.other_rate[d], recent = rates
                    self.set_background_limit(decide(self.cfg, self._bg[d].rate, own, self.other_rate[d], recent), d)
                    log.debug("%s: own %.0f other %.0f -> background limit %.0f B/s", d, own,
                              self.other_rate[d], self._bg[d].rate)
            await asyncio.sleep(self.cfg.interval)

    def set_background_limit(self, limit: float, direction: str = "rx") -> None:
        if self.cfg.max_rate:
            limit = min(limit, self.cfg.max_rate)
        bucket = self._bg[direction]
        bucket.rate = limit
        # The burst follows the rate: a bucket filled at a high rate must not let a burst
        # through after the limit dropped.
        bucket.burst = max(self.cfg.piece_bytes, limit * 2 * self.cfg.interval)
        bucket.clip()


class LinkMeter:
    """Own and other traffic rates over a short sliding window of counter samples."""

    def __init__(self, cfg: QosConfig) -> None:
        self.cfg = cfg
        # Rates over a window rather than one sample: pieces land whole, so a single 50 ms
        # sample would swing between "all ours" and "all someone else's".
        self._samples: deque[tuple[float, int, int]] = deque()

    def sample(self, now: float, counter: int, own_bytes: int) -> tuple[float, float, float] | None:
        """Add a sample (time, NIC byte counter, own payload bytes so far); returns (own, other,
        recent) in bytes/s once the window spans at least one interval, where `recent` is other
        traffic over the last two intervals only (is anyone else on the link right now)."""
        samples = self._samples
        samples.append((now, counter, own_bytes))
        while len(samples) > 2 and now - samples[1][0] >= self.cfg.window:
            samples.popleft()
        t0, total0, own0 = samples[0]
        dt = now - t0
        if dt < self.cfg.interval:
            return None
        own = (own_bytes - own0) / dt
        tr, cr, orr = samples[max(0, len(samples) - 3)]
        recent = 0.0
        if now > tr:
            recent = max(0.0, (counter - cr) - (own_bytes - orr) * (1 + self.cfg.framing)) / (now - tr)
        return own, max(0.0, (counter - total0) / dt - own * (1 + self.cfg.framing)), recent
