"""Single-flight, persistence across restarts and corruption handling, witnessed at the origin."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import cachenode
from helpers import BS, TOKEN, metric, metrics


def _read_all(url: str, node_url: str) -> bytes:
    with cachenode.open(url, nodes=[node_url], token=TOKEN) as f:
        return f.read()


def test_16_concurrent_readers_of_a_cold_block_cause_one_origin_read(blobs, nodes, proxy):
    node = nodes.start("--block-size", f"{BS}")
    data = os.urandom(BS // 2)  # one block
    url = blobs.put("hot.bin", data)
    barrier = threading.Barrier(16)
    results: list[bytes] = []

    def reader():
        with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
            barrier.wait()  # all files open (stat done) before any block is asked for
            results.append(f.read())

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [data] * 16
    assert proxy.reads_of(blobs.path("hot.bin")) == 1  # counted at the origin side
    m = metrics(node)
    assert m["cachenode_fills_total"] == 1
    # the other 15 either joined the flight or arrived after it and hit memory
    assert m["cachenode_fills_deduplicated_total"] + m['cachenode_hits_total{tier="memory"}'] == 15


def test_restart_keeps_disk_blocks(blobs, nodes, proxy, tmp_path):
    cache = tmp_path / "persist"
    data = os.urandom(4 * BS + 1)
    url = blobs.put("keep.bin", data)
    node = nodes.start("--block-size", f"{BS}", cache_dir=cache)
    assert _read_all(url, node.url) == data
    assert proxy.reads_of(blobs.path("keep.bin")) == 5
    assert node.stop() == 0  # SIGTERM: graceful, waits for pending disk writes

    node = nodes.start("--block-size", f"{BS}", cache_dir=cache)
    assert _read_all(url, node.url) == data
    assert proxy.reads_of(blobs.path("keep.bin")) == 5  # nothing new from the origin
    assert metric(node, 'cachenode_hits_total{tier="disk"}') == 5


def _block_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "blocks").glob("*/*") if p.parent.name != "tmp")


def test_corrupt_block_on_disk_is_detected_dropped_and_refetched(blobs, nodes, proxy, tmp_path):
    cache = tmp_path / "corrupt"
    data = os.urandom(3 * BS)
    url = blobs.put("c.bin", data)
    node = nodes.start("--block-size", f"{BS}", cache_dir=cache)
    assert _read_all(url, node.url) == data
    node.stop()
    files = _block_files(cache)
    assert len(files) == 3
    with open(files[1], "r+b") as f:  # flip bytes in the middle of one block
        f.seek(1000)
        f.write(b"\xff" * 16)

    node = nodes.start("--block-size", f"{BS}", cache_dir=cache)
    assert _read_all(url, node.url) == data
    assert metric(node, "cachenode_corrupt_blocks_total") == 1
    assert proxy.reads_of(blobs.path("c.bin")) == 4  # 3 cold + 1 refetch of the corrupt one
    deadline = time.monotonic() + 10  # the refetched block is written to disk in the background
    while len(_block_files(cache)) != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_block_files(cache)) == 3  # replaced by a good copy


def test_corruption_while_running_is_caught_end_to_end(blobs, nodes, proxy, tmp_path):
    # No memory tier: verified disk blocks go out by sendfile, so only the client's digest check
    # can notice rot after verification; it asks the node to re-verify, which drops and refetches.
    cache = tmp_path / "live"
    data = os.urandom(2 * BS)
    url = blobs.put("live.bin", data)
    node = nodes.start("--block-size", f"{BS}", "--memory", "0", cache_dir=cache)
    assert _read_all(url, node.url) == data
    deadline = time.monotonic() + 10  # blocks reach the disk in the background
    while len(_block_files(cache)) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in _block_files(cache):
        with open(p, "r+b") as f:
            f.write(b"\x00" * 8)
    assert _read_all(url, node.url) == data
    assert metric(node, "cachenode_corrupt_blocks_total") == 2
    assert proxy.reads_of(blobs.path("live.bin")) == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_disk_full_serves_without_caching(blobs, nodes, proxy, tmp_path):
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], check=True)
    try:
        data = os.urandom(8 * BS)  # 512 KiB into 200 KiB of disk
        url = blobs.put("big.bin", data)
        node = nodes.start("--block-size", f"{BS}", "--memory", "0", "--disk", "10GiB",
                           cache_dir=mnt / "cache")
        assert _read_all(url, node.url) == data
        assert _read_all(url, node.url) == data
        assert metric(node, "cachenode_disk_full_total") > 0
        node.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_killed_node_leaves_no_partial_block_behind(blobs, nodes, tmp_path):
    cache = tmp_path / "killed"
    data = os.urandom(6 * BS)
    url = blobs.put("k.bin", data)
    node = nodes.start("--block-size", f"{BS}", cache_dir=cache)
    assert _read_all(url, node.url) == data
    node.stop(signal.SIGKILL)
    (cache / "blocks" / "tmp" / "leftover").write_bytes(b"half a block")
    node = nodes.start("--block-size", f"{BS}", cache_dir=cache)
    assert not (cache / "blocks" / "tmp" / "leftover").exists()
    assert _read_all(url, node.url) == data
