"""A failed read leaves nothing running: no fetch writes into the caller's buffer after it raised."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import safetensors.torch
import torch

import cachenode
from cachenode.client.api import AsyncClient
from cachenode.client.iothread import LoopThread
from cachenode.errors import SourceChanged
from cachenode.testing.azurite import connection_string
from cachenode.testing.node import NodeProcess
from helpers import BS, TOKEN

N_BLOCKS = 96


def _stale_file(blobs, node, name: str, **client_kwargs):
    """A file pinned to a blob version whose blocks 1.. are cached and block 0 is not, after the
    blob was overwritten: reading it all, block 0 fails at once (If-Match) while the cached,
    old blocks keep coming."""
    data = os.urandom(N_BLOCKS * BS)
    url = blobs.put(name, data)
    client = cachenode.Client(nodes=[node.url], token=TOKEN, **client_kwargs)
    f = client.open(url)
    f.seek(BS)
    assert f.read() == data[BS:]  # blocks 1.. now cached under the old ETag
    blobs.put(name, os.urandom(len(data)))
    f.seek(0)
    return client, f


def test_failed_readinto_leaves_no_writer_behind(blobs, nodes):
    node = nodes.start("--block-size", str(BS))
    # window=2: block 0 fails while most of the rest are still queued behind it
    client, f = _stale_file(blobs, node, "stale.bin", window=2, transports="tcp")
    try:
        buf = bytearray(N_BLOCKS * BS)
        with pytest.raises(SourceChanged):
            f.readinto(buf)
        after_raise = bytes(buf)
        time.sleep(1.0)
        assert bytes(buf) == after_raise, "fetches went on writing into the buffer after readinto raised"
        # and nothing of that read is still scheduled on the client's loop
        pending = client.run(_other_tasks())
        assert pending == [], pending
    finally:
        f.close()
        client.close()


async def _other_tasks() -> list[str]:
    me = asyncio.current_task()
    return [repr(t) for t in asyncio.all_tasks() if t is not me]


def test_failed_async_read_cancels_its_fetches(blobs, nodes):
    node = nodes.start("--block-size", str(BS))
    data = os.urandom(N_BLOCKS * BS)
    url = blobs.put("stale-async.bin", data)
    io = LoopThread("test")

    async def scenario():
        async with AsyncClient(nodes=[node.url], token=TOKEN, window=2) as client:
            f = await client.open(url)
            assert await f.read_at(BS, memoryview(bytearray(len(data) - BS))) == len(data) - BS
            await asyncio.to_thread(blobs.put, "stale-async.bin", os.urandom(len(data)))
            buf = bytearray(len(data))
            with pytest.raises(SourceChanged):
                await f.read_at(0, memoryview(buf))
            after_raise = bytes(buf)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.sleep(1.0)
            assert bytes(buf) == after_raise
            await f.close()
            return others

    try:
        assert io.run(scenario()) == []
    finally:
        io.close()


_SHARDED_FAILURE = textwrap.dedent("""
    import sys, warnings
    from cachenode.torch import load_checkpoint
    try:
        load_checkpoint(sys.argv[1], nodes=[sys.argv[2]], token=sys.argv[3])
    except Exception as exc:
        print("FAILED", type(exc).__name__, flush=True)
""")


def test_failing_shard_stops_the_others(blobs, nodes, tmp_path):
    """A shard that fails (its blob changed under the pinned read) cancels and waits for the
    other shards: no "Task was destroyed but it is pending" / "Event loop is closed" at exit."""
    node = nodes.start("--block-size", str(BS))
    weight_map = {}
    for i in range(4):
        shard = f"model-{i}.safetensors"
        p = tmp_path / shard
        # big shards keep downloading while the small bad one fails
        safetensors.torch.save_file({f"w{i}": torch.randn(N_BLOCKS * BS // 4)}, str(p))
        blobs.put(f"ck/{shard}", p.read_bytes())
        weight_map[f"w{i}"] = shard
    blobs.put("ck/bad.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    weight_map["bad"] = "bad.safetensors"
    blobs.put("ck/model.safetensors.index.json", json.dumps({"weight_map": weight_map}).encode())
    proc = subprocess.run([sys.executable, "-c", _SHARDED_FAILURE, blobs.url("ck/"), node.url, TOKEN],
                          capture_output=True, text=True, timeout=120)
    assert "FAILED SafetensorsError" in proc.stdout, (proc.stdout, proc.stderr)
    for bad in ("Task was destroyed but it is pending", "Event loop is closed", "Traceback"):
        assert bad not in proc.stderr, proc.stderr


def _ucx_child(*args: str) -> str:
    # ucxx binds to the first event loop that uses it, for the life of the process
    child = os.path.join(os.path.dirname(__file__), "ucx_cancel_child.py")
    proc = subprocess.run([sys.executable, child, *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_failed_readinto_over_ucx_leaves_no_writer_behind(blobs, nodes, azurite):
    node = nodes.start("--block-size", str(BS), "--ucx")
    url = blobs.put("stale-ucx.bin", os.urandom(N_BLOCKS * BS))
    assert _ucx_child("readinto", node.url, TOKEN, url, azurite.connection_string, blobs.container,
                      "stale-ucx.bin") == "OK"


def test_cancelled_ucx_receive_never_lands_later(blobs, nodes, proxy):
    """A block receive cancelled mid-transfer is withdrawn from UCX before the cancellation
    completes: the node's later bytes never reach the caller's buffer."""
    big = 16 * 1024 * 1024
    node = NodeProcess(nodes.tmp_path / "ucxnode", token=TOKEN, conn_str=connection_string(proxy.port),
                       args=("--block-size", str(big), "--ucx", "--memory", "256MiB"),
                       env={"UCX_TLS": "tcp"}).start()
    nodes.procs.append(node)
    url = blobs.put("ucx-big.bin", os.urandom(2 * big))  # two blocks: one cancelled, one read beside it
    result = _ucx_child("receive", node.url, TOKEN, url)
    if result.startswith("SKIP"):
        pytest.skip(result)
    assert result == "OK"
