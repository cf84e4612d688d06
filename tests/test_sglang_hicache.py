"""SGLang HiCache backend, built by SGLang's own `dynamic` factory and run against real nodes: pages written by
one engine's host pool are found and read into another's; another model or TP rank is a miss.

SGLang does not install here with torch pinned (see tests/vendor/sglang_0_5_23/README.md): its two
interface files are loaded from the vendored copy of the 0.5.23 wheel when sglang is not installed."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from helpers import TOKEN

VENDOR = Path(__file__).parent / "vendor" / "sglang_0_5_23"
WRITER = "kv-writer-secret"
MODULE = "cachenode.client.engines.sglang_hicache"


def _load_sglang():
    """SGLang's hicache_storage and backend_factory modules: installed, or the vendored files."""
    try:
        return (importlib.import_module("sglang.srt.mem_cache.hicache_storage"),
                importlib.import_module("sglang.srt.mem_cache.storage.backend_factory"))
    except ImportError:
        pass

    class _Unset:
        def get(self):
            return None  # every SGLANG_* switch unset: no fault injection, default paths

    environ = types.ModuleType("sglang.srt.environ")
    environ.envs = types.SimpleNamespace(**{n: _Unset() for n in (
        "SGLANG_TEST_HICACHE_BACKEND_RANDOM_DELAY", "SGLANG_TEST_HICACHE_BACKEND_RANDOM_FAILURE",
        "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", "SGLANG_HICACHE_FILE_BACKEND_ENABLE_METADATA_CACHE",
        "SGLANG_HICACHE_FILE_BACKEND_METADATA_TTL")})
    for pkg in ("sglang", "sglang.srt", "sglang.srt.mem_cache", "sglang.srt.mem_cache.storage"):
        mod = types.ModuleType(pkg)
        mod.__path__ = []
        sys.modules[pkg] = mod
    sys.modules["sglang.srt.environ"] = environ
    out = []
    for name, file in (("sglang.srt.mem_cache.hicache_storage", "hicache_storage.py"),
                       ("sglang.srt.mem_cache.storage.backend_factory", "backend_factory.py")):
        spec = importlib.util.spec_from_file_location(name, VENDOR / file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        out.append(mod)
    return tuple(out)


@pytest.fixture(scope="module")
def sglang():
    saved = {k: v for k, v in sys.modules.items() if k.startswith("sglang")}
    storage, factory = _load_sglang()
    yield storage, factory
    for k in [k for k in sys.modules if k.startswith("sglang") or k == MODULE]:
        del sys.modules[k]
    sys.modules.update(saved)


class HostPool:
    """The part of SGLang's MHA host pool a storage backend uses (page-first layout, as in
    memory_pool_host.py): pages of layer_num x item_bytes elements."""

    layout = "page_first"

    def __init__(self, pages: int, page_size: int = 64, layer_num: int = 4, item: int = 256,
                 dtype=torch.bfloat16) -> None:
        self.page_size, self.layer_num, self.item_bytes, self.dtype = page_size, layer_num, item, dtype
        self.kv_buffer = torch.zeros(pages, layer_num, item, dtype=dtype)

    def get_data_page(self, index, flat=True):
        page = self.kv_buffer[int(index) // self.page_size]
        return page.flatten() if flat else page

    def get_dummy_flat_data_page(self):
        return torch.zeros((self.layer_num, self.item_bytes), dtype=self.dtype).flatten()

    def set_from_flat_data_page(self, index, data_page):
        self.kv_buffer[int(index) // self.page_size].copy_(
            data_page.view(self.dtype).reshape(self.layer_num, self.item_bytes))


@pytest.fixture(scope="module")
def cluster(module_nodes):
    return module_nodes.cluster(3, "--namespace", "kv", "--writer-token", f"kv={WRITER}")


def _backend(sglang, node: str, *, model="tiny-llama", tp_rank=0, writer=True):
    storage, factory = sglang
    config = storage.HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=2, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
        enable_storage_metrics=False, is_page_first_layout=True, model_name=model,
        extra_config={"backend_name": "cachenode", "module_path": MODULE, "class_name": "CachenodeHiCacheStorage",
                      "nodes": node, "token": TOKEN, "namespace": "kv",
                      "writer_token": WRITER if writer else None})
    backend = factory.StorageBackendFactory.create_backend("dynamic", config, None)
    return backend


def test_the_dynamic_factory_builds_a_hicache_storage(sglang, cluster):
    storage, _ = sglang
    backend = _backend(sglang, cluster.urls[0])
    try:
        assert isinstance(backend, storage.HiCacheStorage)
        assert type(backend).__name__ == "CachenodeHiCacheStorage"
    finally:
        backend.close()


def test_pages_written_by_one_engine_are_read_by_another(sglang, cluster):
    keys = [f"page{i:03d}-{id(cluster)}" for i in range(6)]
    a_pool, b_pool = HostPool(8), HostPool(8)
    a_pool.kv_buffer.normal_()
    a = _backend(sglang, cluster.urls[0])
    b = _backend(sglang, cluster.urls[1], writer=False)
    other_model = _backend(sglang, cluster.urls[2], model="another-model")
    other_rank = _backend(sglang, cluster.urls[2], tp_rank=1)
    try:
        for backend, pool in ((a, a_pool), (b, b_pool), (other_model, HostPool(8)), (other_rank, HostPool(8))):
            backend.register_mem_pool_host(pool)
        host = torch.arange(8 * 64)
        # Engine A writes pages 0..4 of its host pool (one batch put).
        assert a.batch_set_v1(keys[:5], host[:5 * 64]) == [True] * 5
        # Engine B (read-only, another node) finds the 5-page prefix and reads it into slots 3..7.
        assert b.batch_exists(keys) == 5
        assert b.batch_get_v1(keys[:5], host[3 * 64:]) == [True] * 5
        assert torch.equal(b_pool.kv_buffer[3:8], a_pool.kv_buffer[0:5])
        # A read-only engine stores nothing.
        assert b.batch_set_v1(keys[5:], host[:64]) == [False]
        # Another model or another TP rank: the same page keys are a miss, never A's bytes.
        assert other_model.batch_exists(keys) == 0 and other_rank.batch_exists(keys) == 0
        assert other_model.batch_get_v1(keys[:2], host[:128]) == [False, False]
        # v2 with the KV pool alone answers the same prefix.
        result = b.batch_exists_v2(keys)
        assert result.kv_hit_pages == 5
    finally:
        for backend in (a, b, other_model, other_rank):
            backend.close()
