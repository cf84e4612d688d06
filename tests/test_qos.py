"""Idle-bandwidth QoS: warming yields to other traffic on a shaped link, and never delays loaders."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest

from cachenode.node.config import NodeConfig
from cachenode.node import BlockRequest
from cachenode.node.compose import build_node
from cachenode.node.qos import Governor, LinkMeter, QosConfig, TokenBucket, decide
from cachenode.source import parse_source
from cachenode.units import parse_rate


def test_parse_rate():
    assert parse_rate("10Gbit") == 1.25e9
    assert parse_rate("100Mbit") == 12.5e6
    assert parse_rate("1GB/s") == 1e9
    assert parse_rate("200MiB/s") == 200 * 2**20
    with pytest.raises(ValueError, match="cannot parse rate '10G'"):
        parse_rate("10G")


def test_token_bucket_paces_and_follows_a_raised_rate():
    async def main():
        b = TokenBucket(rate=1_000_000, burst=100_000)
        t0 = time.monotonic()
        for _ in range(5):
            await b.take(100_000)
        paced = time.monotonic() - t0
        b.rate = 1e12  # the link went idle: no debt carried over
        t1 = time.monotonic()
        await b.take(100_000)
        return paced, time.monotonic() - t1

    paced, after = asyncio.run(main())
    assert 0.3 < paced < 1.5
    assert after < 0.1


def test_loader_is_never_queued_behind_a_paced_background_fill(tmp_path):
    """A warm fill crawling at 50 KB/s; a loader asking for the same block gets it at once."""
    root = tmp_path / "files"
    root.mkdir()
    (root / "m.bin").write_bytes(os.urandom(1 << 20))

    async def main():
        cfg = NodeConfig(cache_dir=str(tmp_path / "c"), block_size=1 << 19, allow=(f"file://{root}",),
                         qos=QosConfig(max_rate=50_000))
        parts = build_node(cfg)
        node = parts.cache
        await parts.start()
        try:
            ref = parse_source(f"file://{root}/m.bin")
            info = await node.stat(ref)
            first = BlockRequest(ref, info.etag, info.size, 1 << 19, 0)
            await node.warm_block(first)  # spends the burst: the next background fill must wait
            req = BlockRequest(ref, info.etag, info.size, 1 << 19, 1)
            warm = asyncio.ensure_future(node.warm_block(req))
            await asyncio.sleep(0.2)
            assert not warm.done()  # paced: 512 KiB at 50 KB/s would take 10 s
            t0 = time.monotonic()
            block = await node.get_block(req)
            waited = time.monotonic() - t0
            await asyncio.wait_for(warm, 5)
            return waited, block.length
        finally:
            await parts.close()

    waited, length = asyncio.run(main())
    assert length == 1 << 19
    assert waited < 1.0


LINK = 12.5e6  # 100 Mbit/s
CFG = QosConfig(link_speed=LINK, headroom=0.05)
# background's payload limit with the link to itself: 95% of the wire, less its own framing
USABLE, FLOOR = LINK * 0.95 / 1.05, LINK * 0.01


def replay(cfg: QosConfig, ticks, limit: float = USABLE):
    """Run counter samples through the meter and the control law, as the governor does.

    `ticks` yields (wire bytes this tick, own payload bytes landed this tick); returns the
    limit decided after each tick."""
    meter, counter, own, t, out = LinkMeter(cfg), 0, 0, 0.0, []
    for wire, landed in ticks:
        t += cfg.interval
        counter += int(wire)
        own += int(landed)
        rates = meter.sample(t, counter, own)
        if rates is not None:
            limit = decide(cfg, limit, *rates)
        out.append(limit)
    return out


def test_own_framing_and_pieces_landing_whole_are_not_other_traffic():
    """Alone at full speed: headers (~4.6%) and pieces in flight (4 fills x 125 KB, landing
    together) that are on the counter before they count as ours must not look like someone
    else, or idle mode throttles itself."""
    piece, dt = 4 * 125_000, CFG.interval

    def ticks():
        pending = 0.0
        for _ in range(200):
            pending += USABLE * dt
            landed = 0
            while pending >= piece:  # a piece is counted as ours only when all of it is in
                pending -= piece
                landed += piece
            yield USABLE * dt * 1.046, landed

    limits = replay(CFG, ticks())[20:]
    assert min(limits) >= 0.9 * USABLE, min(limits)  # never cut, at most trimmed by the noise
    assert sum(limits) / len(limits) >= 0.97 * USABLE


def test_a_competing_flow_pushes_background_to_the_floor_within_a_quarter_second():
    dt = CFG.interval
    alone = [(USABLE * dt * 1.05, USABLE * dt)] * 20
    # another flow ramps up and takes what the link has; we still land what was in flight
    shared = [(LINK * 0.96 * dt, LINK * 0.96 * dt * max(0.0, 0.5 - 0.1 * k)) for k in range(40)]
    limits = replay(CFG, alone + shared)
    assert limits[19] == pytest.approx(USABLE)
    first_low = next(i for i, v in enumerate(limits) if i >= 20 and v <= FLOOR * 1.01)
    assert (first_low - 20) * dt <= 0.25, limits[20:30]
    assert max(limits[first_low:]) <= FLOOR * 1.01  # and stays there while the flow lasts


def test_background_takes_the_link_back_once_the_other_flow_stops():
    dt = CFG.interval
    shared = [(LINK * 0.96 * dt, 0)] * 30
    after = [(FLOOR * dt * 1.05, FLOOR * dt)] * 30
    limits = replay(CFG, shared + after, limit=FLOOR)
    assert limits[29] == FLOOR
    back = next(i for i, v in enumerate(limits) if i >= 30 and v >= 0.9 * USABLE)
    assert (back - 30) * dt <= 3 * dt  # as soon as the link is seen idle, not after the window


def test_a_flow_squeezed_to_a_trickle_still_gets_background_cut():
    """A TCP flow that lost packets early can sit at a few MB/s while we fill the queue: a low
    but steady rate is someone squeezed, not a link gone idle."""
    dt = CFG.interval
    alone = [(USABLE * dt * 1.05, USABLE * dt)] * 20
    trickle = [((0.2 * LINK + 0.76 * LINK * 1.05) * dt, 0.76 * LINK * dt)] * 20
    limits = replay(CFG, alone + trickle)
    assert min(limits[20:]) <= FLOOR * 1.01, limits[20:]


def test_the_headroom_stays_free_on_the_wire_framing_included():
    """Alone on the link, background's payload plus its ~5% of framing stays within
    link x (1 - headroom): the headroom is what a flow that starts finds free."""
    limits = replay(CFG, [(0.0, 0.0)] * 20, limit=FLOOR)
    assert limits[-1] * (1 + CFG.framing) <= LINK * (1 - CFG.headroom) + 1


def test_a_flow_held_just_above_the_headroom_is_noticed_and_gets_background_cut():
    """A flow that started beside us and only got about the headroom (8% of the link; seen:
    iperf3 at 1.1 of 12 MB/s for seconds) is someone squeezed, not measurement noise, even
    though it is under the 10% noise allowance."""
    dt = CFG.interval
    alone = [(USABLE * dt * 1.05, USABLE * dt)] * 20
    squeezed = [((0.08 * LINK + 0.90 * LINK) * dt, 0.90 * LINK / 1.05 * dt)] * 20
    limits = replay(CFG, alone + squeezed)
    assert min(limits[20:]) <= FLOOR * 1.01, limits[20:]


def test_a_steady_non_tcp_flow_keeps_its_share_and_background_keeps_progressing():
    """30% of the link used by something that does not back off: background never plans past
    what is left and never stops completely."""
    dt, other = CFG.interval, 0.3 * LINK
    limits, limit = [], USABLE
    own = limit
    for _ in range(200):  # closed loop: background gets what its limit allows of what is left
        own = min(limit, LINK * 0.96 - other)
        limit = replay(CFG, [((own * 1.05 + other) * dt, own * dt)] * 12, limit)[-1]
        limits.append(limit)
    assert max(limits) <= (LINK * 0.95 - other) / 1.05 + 1  # what is left of the wire, as payload
    assert min(limits) >= FLOOR
    assert sum(limits) / len(limits) >= 0.3 * LINK  # it does use what is left, on average


def test_background_fill_is_read_in_paced_pieces(tmp_path):
    """What is on the wire when the limit drops is at most one piece per fill: the governor
    asks the origin for piece-sized ranges, each after its tokens."""
    cfg = QosConfig(max_rate=1e6, piece=64 << 10)
    reads = []

    async def main():
        g = Governor(cfg)
        buf = bytearray(256 << 10)

        async def read(pos, view):
            reads.append((pos, len(view)))
            view[:] = b"x" * len(view)

        await g.fill(memoryview(buf), read, asyncio.Event(), background=True)
        await g.fill(memoryview(bytearray(256 << 10)), read)  # foreground: one read
        return g.bytes

    counted = asyncio.run(main())
    assert reads == [(0, 65536), (65536, 65536), (131072, 65536), (196608, 65536), (0, 262144)]
    assert counted["background"] == 256 << 10


def test_background_send_goes_in_paced_pieces_counted_on_tx():
    """A background read leaves in pieces, each after its tokens, counted as background and as
    the cache's own tx (never as someone else's traffic on the link)."""
    cfg = QosConfig(max_rate=1e6, piece=64 << 10)
    sent = []

    async def main():
        g = Governor(cfg)
        data = bytes(range(256)) * 1024  # 256 KiB
        piece = g.send_piece(len(data))

        async def write(view):
            sent.append((time.monotonic(), bytes(view)))

        t0 = time.monotonic()
        await g.send(data, write, piece)
        return g, data, piece, time.monotonic() - t0

    g, data, piece, seconds = asyncio.run(main())
    assert piece == 64 << 10 and [len(b) for _, b in sent] == [piece] * 4
    assert b"".join(b for _, b in sent) == data
    assert g.bytes == {"foreground": 0, "background": 256 << 10}
    assert g._own == {"rx": 0, "tx": 256 << 10}
    assert seconds >= 0.1  # 256 KiB at 1 MB/s with a 100 KB burst: paced, not in one go


def test_each_direction_has_its_own_background_budget():
    """Other traffic on rx (say a job's inbound flow) squeezes warm fills, not background reads
    going out on tx, and the other way round."""
    g = Governor(QosConfig(link_speed=LINK, headroom=0.05))
    g.set_background_limit(FLOOR, "rx")
    assert g.background_limit == {"rx": FLOOR, "tx": pytest.approx(USABLE)}
    assert g.send_piece(8 << 20) == QosConfig(link_speed=LINK).piece_bytes


def test_idle_mode_names_a_missing_interface():
    g = Governor(QosConfig(link_speed=1e9, iface="nope0"))
    with pytest.raises(ValueError, match="'nope0' not found"):
        g.start()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tc"),
                    reason="network namespaces and tc need root and iproute2 (CI has both)")
@pytest.mark.parametrize("transport", [None, "http", "ucx"])
def test_background_traffic_yields_to_a_bulk_flow_on_a_shaped_link(tmp_path, transport):
    """Through `cachebench qos`, so the command's smoke test is this measurement: a warm (no
    transport: blob storage to node), or a background read node to loader over HTTP or UCX.

    The targets (>= 90% of the flow kept, >= 80% of the link used after) are `cachebench qos`'s,
    checked over rounds in the README. One round on a shared 2-core machine swings: over 45
    rounds of the warm while other test suites ran beside it, kept was 83-98% and the idle
    share 69-97% (CPU-starved node, not the governor: its limit stayed at the link's). The
    bounds here sit below that spread and far above what a broken governor gives (no pacing:
    ~50% kept, background reads over HTTP without it: 2-7%; stuck throttled: a few % of the
    link); the control law itself is tested on samples above.
    """
    import json
    import subprocess
    import sys

    out = tmp_path / "q.json"
    args = ["--transport", transport] if transport else []
    p = subprocess.run([sys.executable, "-m", "cachenode.bench.cli", "qos", "--repeat", "1", *args,
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert {"link_gbit", "foreground_alone_gb_per_s", "foreground_with_cache_gb_per_s",
            "cache_idle_gb_per_s", "runs", "ranges"} <= r.keys()
    assert r["foreground_alone_gb_per_s"] >= 0.7 * 12.5e6 / 1e9, r  # iperf3 alone: 10.3-12.0 MB/s seen
    assert r["foreground_kept"] >= 0.7, r
    assert r["cache_idle_link_share"] >= 0.55, r
    if transport == "ucx":
        assert r["ucx_requests"] >= 128, r  # the 128 MiB read went over UCX, 1 MiB a block
    if transport:
        assert r["background_bytes"] >= 2 * (128 << 20), r  # the warm before, and the read
