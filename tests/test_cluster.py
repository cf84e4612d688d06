"""Several node processes on loopback: fill once per cluster, warm, failover, membership changes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

import cachenode
from cachenode.blocks import block_count, block_key
from cachenode.placement import rank
from cachenode.source import parse_source
from helpers import BS, TOKEN, metric


def owners(url: str, stat: dict, ids: list[str]) -> Counter:
    ref = parse_source(url)
    n = block_count(stat["size"], stat["block_size"])
    return Counter(rank(block_key(ref, stat["etag"], stat["size"], stat["block_size"], i), ids)[0]
                   for i in range(n))


def stat(url: str, node_url: str) -> dict:
    with cachenode.Client(nodes=[node_url], token=TOKEN) as c:
        return c.stat(url)


def load(url: str, node_url: str, **kw) -> bytes:
    with cachenode.open(url, nodes=[node_url], token=TOKEN, **kw) as f:
        return f.read()


def test_concurrent_cold_readers_read_each_block_from_origin_once(blobs, nodes, proxy):
    c = nodes.cluster(3, "--block-size", f"{BS}")
    data = os.urandom(40 * BS + 123)
    url = blobs.put("m.bin", data)
    results: dict[int, bytes] = {}
    barrier = threading.Barrier(4)

    def reader(i: int) -> None:
        with cachenode.open(url, nodes=[c.urls[i % 3]], token=TOKEN) as f:
            barrier.wait()
            results[i] = f.read()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results[i] == data for i in range(4)] == [True] * 4
    ranges = proxy.ranges_of(blobs.path("m.bin"))
    assert len(ranges) == 41 and set(ranges.values()) == {1}  # every block exactly once, in total
    fills = [metric(p, "cachenode_fills_total") for p in c.procs]
    assert sum(fills) == 41
    assert all(f > 0 for f in fills)


def test_warm_then_load_takes_no_origin_bytes_and_every_owner_serves_its_share(blobs, nodes, proxy):
    c = nodes.cluster(3, "--block-size", f"{BS}")
    data = os.urandom(60 * BS)
    url = blobs.put("w.bin", data)
    summary = cachenode.warm(url, nodes=[c.urls[0]], token=TOKEN)
    assert (summary.objects, summary.blocks, summary.bytes, summary.already_cached) == (1, 60, len(data), 0)
    assert proxy.reads_of(blobs.path("w.bin")) == 60
    again = cachenode.warm(url, nodes=[c.urls[1]], token=TOKEN)
    assert again.already_cached == 60

    assert load(url, c.urls[2]) == data
    assert proxy.reads_of(blobs.path("w.bin")) == 60  # the load itself read nothing from the origin
    expected = owners(url, stat(url, c.urls[0]), c.ids())
    served = {pid: metric(p, "cachenode_served_blocks_total{tier=\"memory\"}")
              for pid, p in zip(c.ids(), c.procs)}
    assert all(v > 0 for v in served.values()), served
    assert served == {k: expected[k] for k in c.ids()}  # each block came from its owner
    assert max(expected.values()) - min(expected.values()) <= 20  # rendezvous spreads 60 blocks


def test_warm_endpoint_on_a_node_fills_a_prefix(blobs, nodes, proxy):
    import json
    import urllib.request

    c = nodes.cluster(3, "--block-size", f"{BS}")
    blobs.put("llm/a.bin", os.urandom(5 * BS))
    blobs.put("llm/b.bin", os.urandom(3 * BS + 1))
    blobs.put("other.bin", os.urandom(BS))
    body = json.dumps({"kind": "azure", "account": "devstoreaccount1", "container": blobs.container,
                       "path": "llm/"}).encode()
    req = urllib.request.Request(f"{c.urls[1]}/v1/warm", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        summary = json.loads(r.read())
    assert (summary["objects"], summary["blocks"]) == (2, 9)
    assert proxy.reads_of(blobs.path("llm/a.bin")) == 5 and proxy.reads_of(blobs.path("llm/b.bin")) == 4
    assert proxy.reads_of(blobs.path("other.bin")) == 0


def test_node_killed_mid_load_load_completes_and_membership_follows(blobs, nodes, caplog):
    """...and quietly: the loader's connections to the dead node (pooled ones too, whose last
    response filled their header buffer exactly) end without an asyncio traceback."""
    import logging

    caplog.set_level(logging.ERROR, logger="asyncio")
    c = nodes.cluster(3, "--block-size", f"{BS}")
    data = os.urandom(160 * BS)
    url = blobs.put("k.bin", data)
    victim = c.procs[1]
    victim_id = c.ids()[1]
    got = [0]
    killed = threading.Event()

    def on_bytes(n: int) -> None:
        got[0] += n
        if got[0] >= len(data) // 2 and not killed.is_set():
            killed.set()
            victim.proc.send_signal(signal.SIGKILL)

    t0 = time.monotonic()
    with cachenode.open(url, nodes=[c.urls[0]], token=TOKEN, on_bytes=on_bytes, peer_timeout=5) as f:
        assert f.read() == data
    assert killed.is_set()
    assert time.monotonic() - t0 < 30
    victim.proc.wait(10)
    assert not [r for r in caplog.records if r.name == "asyncio"], [r.getMessage() for r in caplog.records]

    survivors = [p for p in c.procs if p is not victim]
    deadline = time.monotonic() + 10
    from conftest import members_of
    while any(m["healthy"] for p in survivors for m in members_of(p.url) if m["id"] == victim_id):
        assert time.monotonic() < deadline, "dead node never dropped"
        time.sleep(0.1)
    # restart on the same address: same member id, readmitted
    victim.proc = None
    victim.port = int(victim_id.rsplit(":", 1)[1])
    victim.start()
    c.wait_members(3, healthy=3, timeout=10)
    assert load(url, c.urls[2]) == data


def test_member_list_change_moves_only_the_blocks_whose_owner_changed(blobs, nodes, proxy):
    c = nodes.cluster(3, "--block-size", f"{BS}")
    data = os.urandom(90 * BS)
    url = blobs.put("mv.bin", data)
    cachenode.warm(url, nodes=[c.urls[0]], token=TOKEN)
    st = stat(url, c.urls[0])
    ref = parse_source(url)
    before = {i: rank(block_key(ref, st["etag"], st["size"], BS, i), c.ids())[0] for i in range(90)}

    new = c.add()
    c.wait_members(4)
    after = {i: rank(block_key(ref, st["etag"], st["size"], BS, i), c.ids())[0] for i in range(90)}
    moved = [i for i in range(90) if before[i] != after[i]]
    assert all(after[i] == new.url.removeprefix("http://") for i in moved)  # only to the newcomer
    assert 0 < len(moved) < 45

    reads = proxy.reads_of(blobs.path("mv.bin"))
    assert load(url, c.urls[0]) == data
    assert proxy.reads_of(blobs.path("mv.bin")) - reads == len(moved)
    assert metric(new, "cachenode_fills_total") == len(moved)


def test_non_owner_forwards_to_owner_one_hop(blobs, nodes, proxy):
    """A loader that only knows its local node still gets fill-once: the node forwards."""
    c = nodes.cluster(3, "--block-size", f"{BS}")
    data = os.urandom(30 * BS)
    url = blobs.put("fw.bin", data)
    import aiohttp  # noqa: F401  (the raw request below goes through the node's own routing)
    from cachenode.transport.http_client import HttpNodeClient
    from cachenode.blocks import BlockRequest
    import asyncio

    st = stat(url, c.urls[0])

    async def main():
        async with aiohttp.ClientSession() as s:
            entry = HttpNodeClient(c.urls[0], TOKEN, s)
            out = bytearray(30 * BS)
            for i in range(30):
                req = BlockRequest(parse_source(url), st["etag"], st["size"], BS, i)
                await entry.read_block(req, memoryview(out)[i * BS:(i + 1) * BS])
            return bytes(out)

    assert asyncio.run(main()) == data
    expected = owners(url, st, c.ids())
    fills = {pid: metric(p, "cachenode_fills_total") for pid, p in zip(c.ids(), c.procs)}
    assert fills == {k: expected[k] for k in c.ids()}  # each filled by its owner only
    assert metric(c.procs[0], "cachenode_forwarded_total") == 30 - expected[c.ids()[0]]
    assert proxy.reads_of(blobs.path("fw.bin")) == 30


def test_status_command_reports_members(nodes, blobs):
    import json
    import subprocess
    import sys

    c = nodes.cluster(3, "--block-size", f"{BS}")
    url = blobs.put("s.bin", os.urandom(4 * BS))
    assert load(url, c.urls[0])
    r = subprocess.run([sys.executable, "-m", "cachenode", "status", "--node", c.urls[0], "--token", TOKEN,
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted(row["id"] for row in rows) == sorted(c.ids())
    assert sum(row["origin_bytes"] for row in rows) == 4 * BS
    r = subprocess.run([sys.executable, "-m", "cachenode", "status", "--node", c.urls[0], "--token", TOKEN],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(i in r.stdout for i in c.ids())


def test_a_cluster_whose_picked_port_is_taken_starts_on_another(nodes, monkeypatch):
    """free_port() hands out a port that another process may bind before the node does (CI runs
    many nodes at once): the cluster re-picks that node's port and lists the new one."""
    import socket

    import cachenode.testing.cluster as cluster_module
    from conftest import members_of

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = cluster_module.free_port
    handed = iter([taken])
    monkeypatch.setattr(cluster_module, "free_port", lambda: next(handed, None) or real())
    try:
        c = nodes.cluster(2)
        ports = sorted(p.port for p in c.procs)
        assert taken not in ports and len(set(ports)) == 2
        listed = c.peers_file.read_text().split()
        assert sorted(c.urls) == sorted(listed)
        assert all(len(members_of(u)) == 2 for u in c.urls)
    finally:
        squatter.close()


def test_a_busy_fixed_port_is_reported_not_re_picked(nodes):
    """...and the node that could not listen says so in one line and leaves nothing open."""
    import socket

    from cachenode.testing.node import PortTaken

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        with pytest.raises(PortTaken, match=str(squatter.getsockname()[1])):
            nodes.start(port=squatter.getsockname()[1])
    log = (nodes.tmp_path / "node0.log").read_text()
    assert "Error: cannot listen on 127.0.0.1:" in log
    assert "Unclosed" not in log and "Traceback" not in log, log
