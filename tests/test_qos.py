"""Idle-bandwidth QoS: warming yields to other traffic on a shaped link, and never delays loaders."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest

from cachenode.node.config import NodeConfig
from cachenode.node import BlockRequest, Node
from cachenode.node.qos import Governor, QosConfig, TokenBucket
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
        node = Node(cfg)
        await node.start()
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
            await node.close()

    waited, length = asyncio.run(main())
    assert length == 1 << 19
    assert waited < 1.0


def test_idle_mode_names_a_missing_interface():
    g = Governor(QosConfig(link_speed=1e9, iface="nope0"))
    with pytest.raises(ValueError, match="'nope0' not found"):
        g.start()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tc"),
                    reason="network namespaces and tc need root and iproute2 (CI has both)")
def test_warm_yields_to_a_bulk_flow_on_a_shaped_link(tmp_path):
    """Through `cachebench qos`, so the command's smoke test is this measurement."""
    import json
    import subprocess
    import sys

    out = tmp_path / "q.json"
    p = subprocess.run([sys.executable, "-m", "cachenode.bench.cli", "qos", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert {"link_gbit", "foreground_alone_gb_per_s", "foreground_with_cache_gb_per_s",
            "cache_idle_gb_per_s"} <= r.keys()
    assert r["foreground_kept"] >= 0.9, r       # the other flow keeps >= 90% of its rate alone
    assert r["cache_idle_link_share"] >= 0.8, r  # and the warm takes >= 80% of the link after
