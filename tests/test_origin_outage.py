"""A warm cluster keeps serving what it holds while the origin is unreachable for a while."""

from __future__ import annotations

import os
import time

import pytest

import cachenode
from cachenode.testing.azurite import connection_string
from cachenode.testing.blobproxy import BlobProxy
from helpers import BS, TOKEN, metric


def test_cached_checkpoint_is_served_through_an_origin_outage(blobs, nodes, azurite):
    origin = BlobProxy(f"http://127.0.0.1:{azurite.port}").start()
    data = os.urandom(5 * BS + 7)
    url = blobs.put("warm.bin", data)
    blobs.put("cold.bin", os.urandom(BS))
    try:
        node = nodes.start("--block-size", f"{BS}", "--origin-timeout", "2", "--origin-retries", "1",
                           conn_str=connection_string(origin.port))
        with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
            assert f.read() == data
    finally:
        origin.stop()  # the blob service is gone from the node's point of view
    t0 = time.monotonic()
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        assert f.read() == data  # stat from memory, blocks from the cache
    assert time.monotonic() - t0 < 15
    assert metric(node, "cachenode_stale_stats_total") >= 1
    with pytest.raises(cachenode.OriginUnavailable, match=f"127.0.0.1:{origin.port}"):
        cachenode.open(blobs.url("cold.bin"), nodes=[node.url], token=TOKEN)  # never seen: named error


def test_stale_stat_zero_turns_the_policy_off(blobs, nodes, azurite):
    origin = BlobProxy(f"http://127.0.0.1:{azurite.port}").start()
    url = blobs.put("strict.bin", os.urandom(BS))
    try:
        node = nodes.start("--block-size", f"{BS}", "--origin-timeout", "2", "--origin-retries", "1",
                           "--stale-stat", "0", conn_str=connection_string(origin.port))
        with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
            f.read()
    finally:
        origin.stop()
    with pytest.raises(cachenode.OriginUnavailable):
        cachenode.open(url, nodes=[node.url], token=TOKEN)
