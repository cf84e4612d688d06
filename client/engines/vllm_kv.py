"""vLLM KV connector (`kv_connector_module_path`): prefix KV chunks saved to and loaded from the cluster's objects.

Shaped like vLLM's own ExampleConnector. Scheduler side: one batch `exists` answers how many
prompt tokens the cluster can supply. Worker side: per layer, one batch `put` of the new full
blocks straight from the paged KV buffer and one batch `get` straight into it. Keys come from
cachenode.kvkeys (token ids + model/KV-layout identity), never from vLLM's seeded block hashes.

    LLM(model, kv_transfer_config=KVTransferConfig(
        kv_connector="CachenodeKVConnector",
        kv_connector_module_path="cachenode.client.engines.vllm_kv", kv_role="kv_both",
        kv_load_failure_policy="recompute",
        kv_connector_extra_config={"nodes": "http://node:8470", "token": ..., "namespace": "kv",
                                   "writer_token": ...}))
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorMetadata,
                                                                 KVConnectorRole)

from cachenode.errors import CacheError
from cachenode.kvkeys import KVLayout, chunk_hashes, chunk_keys, model_fingerprint, present_prefix

from ..iothread import LoopThread
from .kvstore import KVStoreOptions

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger("cachenode.vllm_kv")


@dataclass
class ChunkPlan:
    """Chunks of one request to move this step: their hashes and the paged blocks that hold them."""

    req_id: str
    hashes: list[str]
    block_ids: list[int]


@dataclass
class CachenodeKVMetadata(KVConnectorMetadata):
    """What the scheduler tells the workers for one step."""

    loads: list[ChunkPlan] = field(default_factory=list)
    saves: list[ChunkPlan] = field(default_factory=list)


@dataclass
class _ReqState:
    """Scheduler-side record of a running request: its full-chunk hashes, blocks, chunks saved."""

    hashes: list[str]
    block_ids: list[int]
    saved: int  # chunks [0, saved) are in the cluster (found there, loaded, or saved by us)
    prompt_len: int


class CachenodeKVConnector(KVConnectorBase_V1):
    """KV connector over cachenode objects (see the module docstring for the configuration)."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: "KVCacheConfig | None" = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.options = KVStoreOptions.resolve(self._kv_transfer_config.kv_connector_extra_config)
        self._block_size = vllm_config.cache_config.block_size
        groups = kv_cache_config.kv_cache_groups if kv_cache_config is not None else []
        # One full-attention group is what a prefix chain of whole blocks describes; hybrid
        # models (several groups) are left to recompute.
        self._enabled = len(groups) == 1 and hasattr(groups[0].kv_cache_spec, "num_kv_heads")
        self._layers: list[str] = list(groups[0].layer_names) if groups else []
        self._tp_size = vllm_config.parallel_config.tensor_parallel_size
        self._layouts = [self._layout(vllm_config, groups, r) for r in range(self._tp_size)] if self._enabled else []
        self._io = LoopThread(f"cachenode-kv-{role.name.lower()}")
        self._client = self.options.async_client()
        # Scheduler side.
        self._reqs: dict[str, _ReqState] = {}
        self._need_load: dict[str, tuple[int, int]] = {}  # req id -> (first chunk, chunks) to load
        # Worker side.
        self._kv_caches: dict[str, torch.Tensor] = {}
        # layer -> (its batch get, block ids, their sizes, staging copies to write back)
        self._loads: dict[str, tuple[Future, list[int], list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self._saves: list[Future] = []
        self._load_errors: set[int] = set()
        self._load_started = self._load_waited = 0.0
        self._tp_rank = 0
        if role == KVConnectorRole.WORKER:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
            try:
                self._tp_rank = get_tensor_model_parallel_rank()
            except AssertionError:  # no TP group (single process): rank 0
                self._tp_rank = 0
        log.info("cachenode KV connector (%s): namespace %r, %s, layout %s", role.name, self.options.namespace,
                 "read-write" if self.options.writes else "read-only",
                 self._layouts[0].identity() if self._layouts else "unsupported (recompute)")

    def _layout(self, vllm_config: "VllmConfig", groups, tp_rank: int) -> KVLayout:
        from vllm.platforms import current_platform

        mc = vllm_config.model_config
        spec = groups[0].kv_cache_spec
        model = self.options.model_id or model_fingerprint(
            mc.model, mc.hf_config.to_dict() if hasattr(mc.hf_config, "to_dict") else None, mc.revision)
        # The per-block byte layout depends on the device's attention backend: the device type and
        # the head geometry are in the identity, so a CUDA engine never reads CPU-laid blocks.
        return KVLayout(model=model, dtype=str(spec.dtype), block_size=self._block_size, tp_rank=tp_rank,
                        tp_size=self._tp_size, num_layers=len(self._layers),
                        engine=f"vllm:{current_platform.device_type}",
                        shape=(spec.num_kv_heads, self._block_size, spec.head_size))

    def _submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._io.loop)

    @staticmethod
    def _salt(request: "Request") -> bytes:
        # Equal tokens under another LoRA, cache salt or multimodal input are other KV.
        parts = [getattr(request, "cache_salt", None) or ""]
        lora = getattr(request, "lora_request", None)
        parts.append(lora.lora_name if lora is not None else "")
        parts.extend(f.identifier for f in (getattr(request, "mm_features", None) or []))
        return "\0".join(parts).encode()

    # ==============================
    # Scheduler side
    # ==============================

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        """Prompt tokens beyond `num_computed_tokens` the cluster holds: the longest run of whole
        chunks present for every layer (and TP rank), found with one batch `exists`."""
        tokens = list(request.prompt_token_ids or [])
        bs = self._block_size
        hashes = chunk_hashes(tokens, bs, salt=self._salt(request)) if self._enabled else []
        start = num_computed_tokens // bs
        self._reqs[request.request_id] = _ReqState(hashes, [], start, len(tokens))
        # vLLM computes at least the last prompt token itself: never offer it.
        usable = (len(tokens) - 1) // bs
        if not self.options.load or start >= usable:
            return 0, False
        keys = [k for h in hashes[start:usable] for lay in self._layouts for layer in self._layers
                for k in chunk_keys(lay, [h], layer)]
        try:
            found = self._submit(self._client.exists(keys)).result()
        except (CacheError, OSError) as exc:
            log.warning("cachenode KV lookup failed, recomputing: %s", exc)
            return 0, False
        n = present_prefix(found, len(self._layouts) * len(self._layers))
        self._reqs[request.request_id].saved = start + n
        if n:
            log.info("cachenode KV: %d of %d prompt tokens in the cluster", n * bs, len(tokens))
            self._need_load[request.request_id] = (start, n)
        return n * bs, False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int):
        if num_external_tokens == 0:
            self._need_load.pop(request.request_id, None)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = CachenodeKVMetadata()
        if not self._enabled:
            return meta
        steps: list[tuple[str, int]] = []  # (req id, tokens computed once this step ends)
        for new in scheduler_output.scheduled_new_reqs:
            state = self._reqs.get(new.req_id)
            if state is None:
                continue
            state.block_ids = list(new.block_ids[0])
            steps.append((new.req_id, new.num_computed_tokens + scheduler_output.num_scheduled_tokens[new.req_id]))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self._reqs.get(req_id)
            if state is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                state.block_ids = list(new_ids[0]) if new_ids else []  # after preemption: all blocks anew
            elif new_ids:
                state.block_ids.extend(new_ids[0])
            steps.append((req_id, cached.num_computed_tokens[i] + scheduler_output.num_scheduled_tokens[req_id]))
        for req_id, computed in steps:
            state = self._reqs[req_id]
            plan = self._need_load.pop(req_id, None)
            if plan is not None:
                first, n = plan
                meta.loads.append(ChunkPlan(req_id, state.hashes[first:first + n],
                                            state.block_ids[first:first + n]))
            # Whole prompt chunks whose KV exists once this step has run, not yet in the cluster.
            done = min(computed, state.prompt_len) // self._block_size
            if self.options.writes and done > state.saved:
                meta.saves.append(ChunkPlan(req_id, state.hashes[state.saved:done],
                                            state.block_ids[state.saved:done]))
                state.saved = done
        return meta

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        # Saves finish inside the step (wait_for_save), so the blocks are free to go now.
        self._reqs.pop(request.request_id, None)
        self._need_load.pop(request.request_id, None)
        return False, None

    # ==============================
    # Worker side
    # ==============================

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        self._kv_caches = dict(kv_caches)

    def _kv(self, layer: str, forward_context: "ForwardContext | None" = None) -> torch.Tensor | None:
        kv = self._kv_caches.get(layer)
        if kv is None and forward_context is not None:
            kv = getattr(forward_context.no_compile_layers.get(layer), "kv_cache", None)
        return kv

    @staticmethod
    def _block(kv: torch.Tensor, block_id: int) -> tuple[memoryview, torch.Tensor | None]:
        """Bytes of one paged block: a view of the KV buffer itself when the block is contiguous
        (the CPU layout [blocks, heads, tokens, 2*head]), else a contiguous staging copy."""
        block = kv[block_id]
        if block.is_contiguous():
            return memoryview(block.view(torch.uint8).reshape(-1).numpy()), None
        staged = block.contiguous()
        return memoryview(staged.view(torch.uint8).reshape(-1).numpy()), staged

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        """One batch get per layer, all submitted now; each lands in that layer's paged blocks."""
        meta = self._get_connector_metadata()
        assert isinstance(meta, CachenodeKVMetadata)
        if not meta.loads:
            return
        self._load_started = time.perf_counter()
        self._load_waited = 0.0
        layout = self._layouts[self._tp_rank]
        for layer in self._layers:
            kv = self._kv(layer, forward_context)
            if kv is None:
                continue
            keys, views, blocks, staged = [], [], [], []
            for plan in meta.loads:
                keys += chunk_keys(layout, plan.hashes, layer)
                for b in plan.block_ids:
                    view, stage = self._block(kv, b)
                    views.append(view)
                    blocks.append(b)
                    if stage is not None:
                        staged.append((kv[b], stage))
            # Buffer ownership: the views are the engine's KV memory; the I/O thread writes them
            # until wait_for_layer_load (or wait_for_save) has the result, before attention reads.
            self._loads[layer] = (self._submit(self._client.get(keys, into=views)), blocks,
                                  [v.nbytes for v in views], staged)

    def wait_for_layer_load(self, layer_name: str) -> None:
        entry = self._loads.pop(layer_name, None)
        if entry is None:
            return
        fut, blocks, sizes, staged = entry
        t = time.perf_counter()
        try:
            got = fut.result()
        except (CacheError, OSError) as exc:
            log.warning("cachenode KV load of %s failed: %s", layer_name, exc)
            got = [None] * len(blocks)
        for b, view, size in zip(blocks, got, sizes):
            if view is None or view.nbytes != size:
                self._load_errors.add(b)  # a miss since the lookup (or a foreign size): vLLM recomputes it
        for dst, src in staged:
            dst.copy_(src)
        self._load_waited += time.perf_counter() - t
        if not self._loads:  # the step's last layer: one line per load, for the engine's log
            # Waiting is what the load costs the step; the rest is the layers computing meanwhile.
            log.info("cachenode KV: loaded %d blocks x %d layers, last layer %.1f ms after the step began, "
                     "%.1f ms of it waiting for the cluster",
                     len(blocks), len(self._layers), (time.perf_counter() - self._load_started) * 1000,
                     self._load_waited * 1000)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        """One batch put of this layer's new chunks, sent while the next layers compute."""
        meta = self._get_connector_metadata()
        assert isinstance(meta, CachenodeKVMetadata)
        if not meta.saves:
            return
        layout = self._layouts[self._tp_rank]
        items: dict[str, memoryview] = {}
        for plan in meta.saves:
            for key, b in zip(chunk_keys(layout, plan.hashes, layer_name), plan.block_ids):
                items[key] = self._block(kv_layer, b)[0]
        # The views point into the paged buffer: those blocks stay the request's until the step
        # ends, and wait_for_save holds the step until every put has its answer.
        self._saves.append(self._submit(self._client.put(items)))

    def wait_for_save(self):
        for layer in list(self._loads):
            self.wait_for_layer_load(layer)
        saves, self._saves = self._saves, []
        for fut in saves:
            try:
                fut.result()
            except (CacheError, OSError) as exc:
                # A lost save is a future miss, never an engine failure.
                log.warning("cachenode KV save failed: %s", exc)

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self):
        try:
            self._submit(self._client.close()).result(timeout=5)
        except Exception as exc:  # shutting down: report, do not raise
            log.debug("cachenode KV client close: %s", exc)
        self._io.close()
