"""Disk pressure: a node whose working set overflows --disk (and --memory 0) serves every read."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import warnings

import cachenode
from cachenode.blocks import BlockRequest
from cachenode.node.compose import build_node
from cachenode.node.config import NodeConfig
from cachenode.source import parse_source
from helpers import TOKEN, MiB, metric

BLOCK = 1 * MiB
NBLOCKS = 24
ROUNDS = int(os.environ.get("PRESSURE_ROUNDS", "250"))


def test_a_disk_tier_smaller_than_the_working_set_serves_every_read(blobs, nodes):
    # Evictions race with sends: a block handed to a transport must stay readable until it is
    # sent, however soon another fill evicts its file. Nothing may go around the node (the
    # loaders have no origin credentials: a bypass fails).
    data = {name: os.urandom(NBLOCKS * BLOCK) for name in ("a.bin", "b.bin")}
    urls = {name: blobs.put(name, d) for name, d in data.items()}
    node = nodes.start("--memory", "0", "--disk", f"{6 * BLOCK}", "--block-size", f"{BLOCK}")
    failures: list[str] = []
    reads = [0]

    def loader(seed: int) -> None:
        rnd = random.Random(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a bypass warning is a failure here
            try:
                with cachenode.Client([node.url], TOKEN) as client:
                    files = {n: client.open(u) for n, u in urls.items()}
                    buf = bytearray(BLOCK)
                    for _ in range(ROUNDS):
                        name = rnd.choice(sorted(files))
                        i = rnd.randrange(NBLOCKS)
                        f = files[name]
                        f.seek(i * BLOCK)
                        try:
                            assert f.readinto(buf) == BLOCK
                            assert buf == data[name][i * BLOCK:(i + 1) * BLOCK]
                            reads[0] += 1
                        except Exception as exc:  # noqa: BLE001 - every failure is counted
                            failures.append(f"{name}#{i}: {exc!r}")
                    for f in files.values():
                        f.close()
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))

    threads = [threading.Thread(target=loader, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not failures, f"{len(failures)} of {reads[0] + len(failures)} reads failed: {failures[:5]}"
    assert reads[0] == 6 * ROUNDS
    assert metric(node, 'cachenode_hits_total{tier="disk"}') > 0  # the disk tier did serve


def test_a_disk_block_handed_out_stays_readable_and_counted_until_closed(tmp_path):
    """The race the pressure test hunts, made certain: a disk block is looked up for a send,
    then two fills evict its file before the transport reads it. Its bytes still come out
    whole, and they count against --disk until the block is closed."""
    root = tmp_path / "src"
    root.mkdir()
    data = os.urandom(3 * 65536)
    (root / "m.bin").write_bytes(data)
    config = NodeConfig(cache_dir=str(tmp_path / "cache"), memory_bytes=0, disk_bytes=65536,
                        block_size=65536, allow=(f"file://{root}",))

    async def main():
        parts = build_node(config)
        await parts.start()
        node = parts.cache
        try:
            ref = parse_source(f"file://{root}/m.bin")
            info = await node.stat(ref)
            reqs = [BlockRequest(ref, info.etag, info.size, 65536, i) for i in range(3)]
            (await node.get_block(reqs[0])).close()
            await node.flush_disk_writes()
            held = await node.get_block(reqs[0])
            assert held.tier == "disk" and held.data is None
            for req in reqs[1:]:  # each fill's disk write evicts the previous file
                (await node.get_block(req)).close()
                await node.flush_disk_writes()
            assert node.disk.get(reqs[0].key) is None  # evicted meanwhile
            # Its bytes are still on the disk, inside the budget: no other block fits meanwhile.
            assert node.disk.held_evicted_bytes == 65536 == node.disk.used
            assert len(node.disk) == 0
            assert held.read_file() == data[:65536]
            held.close()
            assert node.disk.held_evicted_bytes == 0 == node.disk.used
            assert node.metrics.disk_evicted_while_held._value.get() == 1
        finally:
            await parts.close()

    asyncio.run(main())

