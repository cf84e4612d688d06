"""torch.load and safetensors through the cache give exactly what loading the file locally gives."""

from __future__ import annotations

import io

import pytest
import safetensors.torch
import torch

import cachenode
from cachenode.client.tensors import load_safetensors
from helpers import BS, TOKEN


@pytest.fixture
def node(nodes):
    return nodes.start("--block-size", f"{BS}")


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(300, 257, generator=g),
        "b": torch.randn(257, generator=g).to(torch.bfloat16),
        "h": torch.randn(33, 65, generator=g).half(),
        "i": torch.randint(-5, 5, (1000,), generator=g),
        "mask": torch.rand(77, generator=g) > 0.5,
        "empty": torch.empty(0, 3),
    }


def test_torch_load_from_cachenode_open(blobs, node):
    sd = _state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    url = blobs.put("model.pt", buf.getvalue())
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        loaded = torch.load(f, weights_only=True)
    assert loaded.keys() == sd.keys()
    for k in sd:
        assert torch.equal(loaded[k], sd[k]), k


def test_safetensors_bytes_and_views_match_local_load(blobs, node, tmp_path):
    sd = _state_dict()
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(sd, str(path), metadata={"format": "pt"})
    url = blobs.put("m.safetensors", path.read_bytes())
    expected = safetensors.torch.load_file(str(path))

    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        via_bytes = safetensors.torch.load(f.read())
    tensors = load_safetensors(url, nodes=[node.url], token=TOKEN)
    meta = tensors.metadata
    assert meta == {"format": "pt"}
    for got in (via_bytes, tensors):
        assert got.keys() == expected.keys()
        for k in expected:
            assert got[k].dtype == expected[k].dtype and torch.equal(got[k], expected[k]), k


def test_load_stats_say_where_the_time_went(blobs, node, tmp_path):
    """A LoadStats passed in is filled by the loader: every phase measured, none more than the load."""
    import time

    from cachenode.client.loadstats import LoadStats

    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(_state_dict(), str(path))
    url = blobs.put("stats.safetensors", path.read_bytes())
    stats = LoadStats()
    t0 = time.perf_counter()
    load_safetensors(url, nodes=[node.url], token=TOKEN, stats=stats)
    wall = time.perf_counter() - t0
    b = stats.as_dict()
    assert b["bytes"] == path.stat().st_size - 8 - int.from_bytes(path.read_bytes()[:8], "little")
    for phase in ("stat_s", "header_s", "wait_bytes_s", "digest_s", "tensors_s"):
        assert b[phase] > 0, (phase, b)
    assert sum(v for k, v in b.items() if k.endswith("_s") and k != "first_touch_s") <= wall


def test_prefault_thread_reports_its_time():
    from cachenode.client.prefault import CHUNK, prefault

    buf = torch.empty(2 * CHUNK + 4096, dtype=torch.uint8)
    t = prefault(buf.data_ptr(), buf.numel())
    t.join()
    assert t.seconds > 0
