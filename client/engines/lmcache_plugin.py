"""LMCache `native_plugin` L2 connector: its 7 batch methods over memoryviews, answered by cluster objects.

LMCache config (multiprocess server `--l2-adapter`, or the L2 adapters list):

    {"type": "native_plugin", "module_path": "cachenode.client.engines.lmcache_plugin",
     "class_name": "CachenodeConnector",
     "adapter_params": {"nodes": "http://node:8470", "token": ..., "namespace": "kv",
                        "writer_token": ...}}

LMCache's adapter wraps this object (NativeConnectorL2Adapter): it polls `event_fd()`, then calls
`drain_completions()` for (future id, ok, error, per-key results). Keys are LMCache's own
(`model@kv_rank@group@chunk_hash[@salt]`), passed through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any, Awaitable, Callable, Sequence

from cachenode.errors import CacheError

from ..iothread import LoopThread
from .kvstore import KVStoreOptions

log = logging.getLogger("cachenode.lmcache")
Completion = tuple[int, bool, str, list[bool] | None]


class CachenodeConnector:
    """A native-connector client for LMCache: submit_batch_* return a future id at once; the
    answer arrives later through event_fd + drain_completions. One batch call per submit."""

    def __init__(self, **adapter_params: Any) -> None:
        self.options = KVStoreOptions.resolve(adapter_params)
        self._io = LoopThread("cachenode-lmcache")
        self._client = self.options.async_client()
        # Non-blocking: drain reads it empty without waiting; LMCache polls it for POLLIN.
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._done: list[Completion] = []
        self._next_id = 0
        self._closed = False

    # -- the native-connector interface ------------------------------------------------

    def event_fd(self) -> int:
        return self._efd

    def submit_batch_get(self, keys: Sequence[str], memoryviews: Sequence[memoryview]) -> int:
        """Fill each buffer with its object; per key True when the whole object landed."""
        keys = list(keys)
        sizes = [memoryview(m).nbytes for m in memoryviews]

        async def call() -> list[bool]:
            got = await self._client.get(keys, into=list(memoryviews))
            return [v is not None and v.nbytes == n for v, n in zip(got, sizes)]

        return self._submit(call)

    def submit_batch_set(self, keys: Sequence[str], memoryviews: Sequence[memoryview]) -> int:
        """Store each buffer (first writer wins: an existing key counts as stored)."""
        keys = list(keys)

        async def call() -> list[bool]:
            if not self.options.writes:
                raise PermissionError("no writer credential for the KV namespace: read-only")
            # LMCache's buffers stay its own until the completion: put sends from them directly.
            await self._client.put(dict(zip(keys, memoryviews)))
            return [True] * len(keys)

        return self._submit(call)

    def submit_batch_exists(self, keys: Sequence[str]) -> int:
        keys = list(keys)
        return self._submit(lambda: self._client.exists(keys))

    def submit_batch_delete(self, keys: Sequence[str]) -> int:
        keys = list(keys)

        async def call() -> list[bool]:
            await self._client.delete(keys)
            return [True] * len(keys)

        return self._submit(call)

    def drain_completions(self) -> list[Completion]:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass  # nothing signalled since the last drain
        with self._lock:
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._io.run(self._client.close())
        finally:
            self._io.close()
            os.close(self._efd)

    # -- plumbing ------------------------------------------------------------------------

    def _submit(self, call: Callable[[], Awaitable[list[bool]]]) -> int:
        with self._lock:
            fid = self._next_id
            self._next_id += 1

        async def run() -> None:
            try:
                results = await call()
                done: Completion = (fid, True, "", list(results))
            except (CacheError, OSError, ValueError) as exc:
                log.warning("cachenode LMCache call %d failed: %s", fid, exc)
                done = (fid, False, str(exc), None)
            with self._lock:
                self._done.append(done)
            os.eventfd_write(self._efd, 1)

        asyncio.run_coroutine_threadsafe(run(), self._io.loop)
        return fid
