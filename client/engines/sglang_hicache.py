"""SGLang HiCache storage backend (`--hicache-storage-backend dynamic`): host-pool pages as cluster objects.

    --hicache-storage-backend dynamic --hicache-storage-backend-extra-config '{
        "backend_name": "cachenode", "module_path": "cachenode.client.engines.sglang_hicache",
        "class_name": "CachenodeHiCacheStorage",
        "nodes": "http://node:8470", "token": "...", "namespace": "kv", "writer_token": "..."}'

SGLang's page keys (prefix-chained hashes of token ids) are kept; like its own file backend,
the model, TP rank/size and page geometry are appended, here as a KVLayout identity. Every call is
one batch call to the cluster.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, PoolTransferResult

from cachenode.errors import CacheError
from cachenode.kvkeys import KVLayout

from .kvstore import KVStoreOptions

log = logging.getLogger("cachenode.sglang")
KV_POOL = "kv"


class CachenodeHiCacheStorage(HiCacheStorage):
    """HiCacheStorage over cachenode objects; SGLang constructs it as `cls(storage_config, kwargs)`."""

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None) -> None:
        self.storage_config = storage_config
        self.options = KVStoreOptions.resolve(storage_config.extra_config)
        self.client = self.options.client()
        # MLA KV is the same on every TP rank: one writer (SGLang's own rule), one identity for all.
        self.writer = storage_config.is_storage_writer
        self._ident = ""

    # -- identity: fixed once the host pool (its dtype and page geometry) is known --------

    def register_mem_pool_host(self, mem_pool_host) -> None:
        super().register_mem_pool_host(mem_pool_host)
        c = self.storage_config
        mla = c.is_mla_model
        layout = KVLayout(
            model=self.options.model_id or (c.model_name or ""), dtype=str(getattr(mem_pool_host, "dtype", "")),
            block_size=int(getattr(mem_pool_host, "page_size", 1)),
            tp_rank=0 if mla else c.tp_rank, tp_size=1 if mla else c.tp_size,
            num_layers=int(getattr(mem_pool_host, "layer_num", 0)),
            engine=f"sglang:{getattr(mem_pool_host, 'layout', '')}:pp{c.pp_rank}/{c.pp_size}:cp{c.attn_cp_rank}/"
                   f"{c.attn_cp_size}:dcp{c.dcp_rank}/{c.dcp_size}")
        self._ident = layout.identity()

    def _key(self, key: str, pool: str = KV_POOL) -> str:
        return f"{self._ident}/{pool}/{key}"

    def _pool(self, name: str = KV_POOL):
        pools = getattr(self, "registered_pools", {})
        return pools.get(name) or pools.get(str(name)) or self.mem_pool_host

    # -- page moves: one batch call each ------------------------------------------------

    def _read_pages(self, pool_name: str, keys: List[str], host_indices: torch.Tensor) -> List[bool]:
        pool = self._pool(pool_name)
        page = int(getattr(pool, "page_size", 1)) or 1
        slots = [int(host_indices[i * page]) for i in range(len(keys))]
        bufs = [pool.get_dummy_flat_data_page() for _ in keys]
        try:
            got = self.client.get([self._key(k, pool_name) for k in keys],
                                  into=[memoryview(b.view(torch.uint8).numpy()) for b in bufs])
        except (CacheError, OSError) as exc:
            log.warning("cachenode HiCache get failed: %s", exc)
            return [False] * len(keys)
        ok = []
        for slot, buf, view in zip(slots, bufs, got):
            whole = view is not None and view.nbytes == buf.numel() * buf.element_size()
            if whole:
                pool.set_from_flat_data_page(slot, buf)
            ok.append(whole)
        return ok

    def _write_pages(self, pool_name: str, keys: List[str], host_indices: torch.Tensor) -> List[bool]:
        if not (self.writer and self.options.writes):
            return [False] * len(keys)
        pool = self._pool(pool_name)
        page = int(getattr(pool, "page_size", 1)) or 1
        # A flat page is a view of the host pool (page-first layouts) or a fresh copy: either way
        # it stays alive in `pages` until the put has answered.
        pages = [pool.get_data_page(int(host_indices[i * page]), flat=True).contiguous() for i in range(len(keys))]
        try:
            self.client.put({self._key(k, pool_name): memoryview(p.view(torch.uint8).numpy())
                             for k, p in zip(keys, pages)})
        except (CacheError, OSError) as exc:
            log.warning("cachenode HiCache put failed: %s", exc)
            return [False] * len(keys)
        return [True] * len(keys)

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor, extra_info=None) -> List[bool]:
        return self._read_pages(KV_POOL, keys, host_indices)

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor, extra_info=None) -> List[bool]:
        return self._write_pages(KV_POOL, keys, host_indices)

    def batch_exists(self, keys: List[str], extra_info=None) -> int:
        """Consecutive pages present from the start (one batch exists)."""
        found = self._exists([self._key(k) for k in keys])
        return found.index(False) if False in found else len(found)

    def _exists(self, keys: List[str]) -> List[bool]:
        try:
            return self.client.exists(keys)
        except (CacheError, OSError) as exc:
            log.warning("cachenode HiCache exists failed: %s", exc)
            return [False] * len(keys)

    # -- v2: the same per pool (KV plus sidecar pools such as Mamba states) ----------------

    def batch_exists_v2(self, keys: List[str], pool_transfers=None, extra_info=None) -> PoolTransferResult:
        """Longest KV prefix present; extra pools must cover it by their own hit policy (all
        pages, or the trailing pages), else the prefix shrinks to what every pool can restore."""
        transfers = list(pool_transfers or [])
        names = [KV_POOL] + [str(t.name) for t in transfers]
        found = self._exists([self._key(k, n) for n in names for k in keys])
        per = {n: found[i * len(keys):(i + 1) * len(keys)] for i, n in enumerate(names)}
        kv = per[KV_POOL].index(False) if False in per[KV_POOL] else len(keys)
        restorable = set(range(1, kv + 1))
        hits: dict[str, int] = {KV_POOL: kv} if kv else {}
        for t in transfers:
            have = per[str(t.name)]
            if str(getattr(t.hit_policy, "value", t.hit_policy)) == "trailing_pages":
                trailing = max(1, len(t.keys or []) or 1)
                ok = {n for n in range(1, kv + 1) if all(have[max(0, n - trailing):n])}
            else:
                first_missing = have.index(False) if False in have[:kv] else kv
                ok = set(range(1, first_missing + 1))
            if ok:
                hits[str(t.name)] = max(ok)
            restorable &= ok
        ordered = sorted(restorable)
        return PoolTransferResult(ordered[-1] if ordered else 0, hits, ordered)

    def batch_get_v2(self, transfers, extra_info=None) -> dict[str, List[bool]]:
        return {str(t.name): self._read_pages(str(t.name), list(t.keys or []), t.host_indices) for t in transfers}

    def batch_set_v2(self, transfers, extra_info=None) -> dict[str, List[bool]]:
        return {str(t.name): self._write_pages(str(t.name), list(t.keys or []), t.host_indices) for t in transfers}

    # -- the older single-key and tensor-valued methods (abstract in HiCacheStorage) --------

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        return self.batch_get([key], [target_location])[0]

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None, target_sizes: Optional[Any] = None):
        targets = list(target_locations or [None] * len(keys))
        if any(t is None for t in targets):
            targets = [self.mem_pool_host.get_dummy_flat_data_page() if t is None else t for t in targets]
        try:
            got = self.client.get([self._key(k) for k in keys],
                                  into=[memoryview(t.view(torch.uint8).reshape(-1).numpy()) for t in targets])
        except (CacheError, OSError):
            return [None] * len(keys)
        return [t if v is not None else None for t, v in zip(targets, got)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        if not (self.writer and self.options.writes):
            return False
        vals = [v.contiguous() for v in values]
        try:
            self.client.put({self._key(k): memoryview(v.view(torch.uint8).reshape(-1).numpy())
                             for k, v in zip(keys, vals)})
        except (CacheError, OSError):
            return False
        return True

    def exists(self, key: str) -> bool:
        return self._exists([self._key(key)])[0]

    def clear(self) -> None:
        # Objects are immutable and shared with other engines: nothing to clear from here.
        return None

    def close(self) -> None:
        self.client.close()
