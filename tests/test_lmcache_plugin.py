"""LMCache's own `native_plugin` L2 adapter (lmcache 0.5.6, CPU) over cachenode's connector and real nodes: chunks
stored from one LMCache are found and loaded into another's memory objects; misses and read-only stay honest."""

from __future__ import annotations

import argparse
import json
import select
import time

import pytest
import torch

from helpers import TOKEN

pytest.importorskip("lmcache", reason="lmcache not installed (pip install -c bench/constraints-vllm.txt '.[lmcache]')")

WRITER = "kv-writer-secret"
CHUNK = 256 * 1024  # a 256-token chunk of a small model's KV, in bytes


@pytest.fixture(scope="module")
def cluster(module_nodes):
    return module_nodes.cluster(3, "--namespace", "kv", "--writer-token", f"kv={WRITER}")


def _adapter(node: str, writer: str | None):
    """An L2 adapter made the way LMCache makes one from its `--l2-adapter JSON` flag."""
    from lmcache.v1.distributed.l2_adapters import create_l2_adapter
    from lmcache.v1.distributed.l2_adapters.config import add_l2_adapters_args, parse_args_to_l2_adapters_config

    spec = {"type": "native_plugin", "module_path": "cachenode.client.engines.lmcache_plugin",
            "class_name": "CachenodeConnector",
            "adapter_params": {"nodes": node, "token": TOKEN, "namespace": "kv", "writer_token": writer}}
    args = add_l2_adapters_args(argparse.ArgumentParser()).parse_args(["--l2-adapter", json.dumps(spec)])
    (config,) = parse_args_to_l2_adapters_config(args).adapters
    return create_l2_adapter(config)


def _objs(n: int, fill: bool):
    from lmcache.v1.memory_management import MemoryObjMetadata, TensorMemoryObj

    out = []
    for i in range(n):
        raw = torch.randint(0, 256, (CHUNK,), dtype=torch.uint8) if fill else torch.zeros(CHUNK, dtype=torch.uint8)
        meta = MemoryObjMetadata(shape=torch.Size([CHUNK]), dtype=torch.uint8, address=0, phy_size=CHUNK,
                                 ref_count=1)
        out.append(TensorMemoryObj(raw, meta, None))
    return out


def _keys(model: str, n: int, tag: str):
    from lmcache.v1.distributed.api import ObjectKey

    return [ObjectKey(chunk_hash=f"{tag}-{i}".encode().ljust(16, b"\0"), model_name=model, kv_rank=0)
            for i in range(n)]


def _wait(fd: int, pop, task, timeout: float = 20.0):
    """LMCache's way: poll the adapter's event fd, then ask for the task's result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([fd], [], [], 0.2)
        got = pop(task)
        if got is not None:
            return got
    raise AssertionError(f"task {task} never completed")


def _bits(bitmap, n: int) -> list[bool]:
    return [bitmap.test(i) for i in range(n)]


def test_chunks_stored_by_one_lmcache_load_into_another(cluster):
    a = _adapter(cluster.urls[0], WRITER)
    b = _adapter(cluster.urls[1], None)  # reader: no writer credential
    try:
        keys = _keys("tiny-llama", 4, f"c{time.monotonic_ns()}")
        src = _objs(4, fill=True)
        task = a.submit_store_task(keys, src)
        done = _wait(a.get_store_event_fd(), lambda t: a.pop_completed_store_tasks().get(t), task)
        assert done >= 0  # L2StoreResult: bytes stored, -1 on failure

        # The other LMCache finds the first three (and one unknown key) with one batch exists ...
        unknown = _keys("tiny-llama", 1, "never-stored")
        task = b.submit_lookup_and_lock_task(keys[:3] + unknown, {})
        found = _wait(b.get_lookup_and_lock_event_fd(), b.query_lookup_and_lock_result, task)
        assert _bits(found, 4) == [True, True, True, False]

        # ... and loads them straight into its own memory objects.
        dst = _objs(4, fill=False)
        task = b.submit_load_task(keys[:3] + unknown, dst)
        loaded = _wait(b.get_load_event_fd(), b.query_load_result, task)
        assert _bits(loaded, 4) == [True, True, True, False]
        for s, d in zip(src[:3], dst[:3]):
            assert torch.equal(s.raw_data, d.raw_data)
        assert not dst[3].raw_data.any()

        # The same chunk hashes under another model name are a miss, never these bytes.
        from lmcache.v1.distributed.api import ObjectKey

        other = [ObjectKey(chunk_hash=keys[0].chunk_hash, model_name="other-model", kv_rank=0)]
        task = b.submit_lookup_and_lock_task(other, {})
        assert _bits(_wait(b.get_lookup_and_lock_event_fd(), b.query_lookup_and_lock_result, task), 1) == [False]

        # Without the writer credential a store fails as a whole and nothing appears.
        task = b.submit_store_task(_keys("tiny-llama", 1, "from-reader"), _objs(1, fill=True))
        done = _wait(b.get_store_event_fd(), lambda t: b.pop_completed_store_tasks().get(t), task)
        assert done == -1
        task = a.submit_lookup_and_lock_task(_keys("tiny-llama", 1, "from-reader"), {})
        assert _bits(_wait(a.get_lookup_and_lock_event_fd(), a.query_lookup_and_lock_result, task), 1) == [False]
    finally:
        a.close()
        b.close()
