"""A sharded safetensors checkpoint as (name, tensor) in bounded spans, every shard pinned at start."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol
from urllib.parse import quote

import torch

from cachenode.errors import CacheError, SourceNotFound

from ..api import Client
from ..files import AsyncCacheFile
from ..reader import cancel_and_wait, run_all
from ..safetensors_header import Header, SafetensorsError, TensorEntry
from ..tensors import TORCH_DTYPES, aread_header, alloc, torch_shape

INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class Shard:
    """One open shard: its URL, the file pinned to the ETag it had when the load started, its header."""

    url: str
    file: AsyncCacheFile
    header: Header


@dataclass(frozen=True)
class Span:
    """Consecutive tensors of one shard read with one ranged read into one buffer."""

    shard: Shard
    lo: int  # offsets in the shard's data section
    hi: int
    tensors: tuple[TensorEntry, ...]


def prefix_url(url: str) -> str:
    return url if url.endswith("/") else url + "/"


async def _read_json(client, url: str) -> dict:
    async with await client.open(url) as f:
        raw = await f.read()
    try:
        doc = json.loads(raw)
        assert isinstance(doc.get("weight_map"), dict)
        return doc
    except (ValueError, AssertionError, AttributeError):
        raise SafetensorsError(f"{url}: not a checkpoint index (needs a 'weight_map' object)") from None


async def shard_names(client, base: str) -> list[str]:
    """The shards vLLM would load under `base`: those its index names, or else every top-level
    *.safetensors blob (vLLM's own rule: with an index, files it does not name are skipped)."""
    try:
        index = await _read_json(client, base + INDEX_NAME)
    except SourceNotFound:
        index = None
    if index is not None:
        names = sorted(set(index["weight_map"].values()))
        for s in names:
            if not isinstance(s, str) or "/" in s or s in ("", ".", ".."):
                raise SafetensorsError(f"{base}{INDEX_NAME}: shard name {s!r} must be a file beside the index")
        return names
    ref = client.parse(base, prefix=True)
    listing = await client.list(ref)
    names = sorted(r.path[len(ref.path):] for r, _ in listing
                   if r.path.startswith(ref.path) and r.path.endswith(".safetensors")
                   and "/" not in r.path[len(ref.path):])
    if not names:
        raise SourceNotFound(f"{base}: no {INDEX_NAME} and no *.safetensors blob under this prefix")
    return names


async def open_shards(client, url: str) -> list[Shard]:
    """Open every shard of the checkpoint under `url` and read its header. Each open pins the
    shard's current ETag, all of them before any tensor is read: a shard replaced later in the
    load fails it (SourceChanged) instead of mixing two versions of the model."""
    base = prefix_url(url)
    names = await shard_names(client, base)
    # A shard name is a blob name, not URL text: quoted once ("a#1" is not the blob "a").
    urls = [base + quote(n, safe="") for n in names]
    files: list[AsyncCacheFile] = []

    async def one(u: str) -> Shard:
        f = await client.open(u)
        files.append(f)
        return Shard(u, f, await aread_header(f))

    try:
        return await run_all([one(u) for u in urls])
    except BaseException:
        await _close_all(files)
        raise


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def _close_all(files: list[AsyncCacheFile]) -> None:
    await asyncio.gather(*(f.close() for f in files), return_exceptions=True)


def plan_spans(shards: list[Shard], span_bytes: int, want: Callable[[str], bool] | None = None) -> list[Span]:
    """Tensors in file order, cut into spans of at most `span_bytes` (a bigger tensor is a span
    of its own). A tensor `want` refuses is not read at all, and ends the span before it so
    that its bytes are never fetched (the hook for ranks that hold only part of a model)."""
    spans: list[Span] = []
    for shard in shards:
        run: list[TensorEntry] = []
        for e in sorted(shard.header.tensors, key=lambda e: (e.begin, e.end)):
            if want is not None and not want(e.name):
                if run:
                    spans.append(_span(shard, run))
                    run = []
                continue
            if run and (e.end - run[0].begin > span_bytes or e.begin > run[-1].end):
                spans.append(_span(shard, run))
                run = []
            run.append(e)
        if run:
            spans.append(_span(shard, run))
    return spans


def _span(shard: Shard, run: list[TensorEntry]) -> Span:
    return Span(shard, run[0].begin, max(e.end for e in run), tuple(run))


def span_views(span: Span, buf: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The span's tensors as views of `buf` (which holds bytes lo..hi of the data section)."""
    out = []
    for e in span.tensors:
        dtype = TORCH_DTYPES[e.dtype]
        if e.end == e.begin:
            out.append((e.name, torch.empty(0, dtype=dtype).reshape(torch_shape(e))))
            continue
        off, n = e.begin - span.lo, e.end - e.begin
        if off % dtype.itemsize == 0:
            # A slice of `buf` itself, not frombuffer: the view then shares the pinned
            # allocation's storage, which the CUDA caching host allocator tracks for async copies.
            raw = buf[off:off + n]
        else:  # safetensors does not promise aligned offsets; view(dtype) refuses unaligned ones
            raw = buf[off:off + n].clone()
        out.append((e.name, raw.view(dtype).view(torch_shape(e))))
    return out


def _use_count(buf: torch.Tensor) -> int:
    """References to `buf`'s storage (every view of it holds one)."""
    return torch._C._storage_Use_Count(buf.untyped_storage()._cdata)


class SpanBuffers:
    """Span-sized buffers, reused once nothing outside holds a view of them: the load's memory
    stays at (depth + 1) spans, and only those pay the first-touch page faults (0.4-2.3 GB/s on
    these VMs, DESIGN.md) instead of the whole checkpoint. A buffer the engine still references
    (a weight loader that kept a view) is never reused: a fresh one is made instead.

    Used from the consumer's thread only (the I/O loop only writes into buffers it is given).
    """

    def __init__(self, nbytes: int, device: torch.device) -> None:
        self.nbytes = nbytes
        self.device = device
        self._returned: list[tuple[torch.Tensor, int]] = []
        self._idle: dict[int, int] = {}  # buffer address -> its use count with only the pool holding it
        self._prefaults: list = []
        self.allocated = 0  # bytes ever allocated (tests: the bound holds)

    def take(self, n: int) -> torch.Tensor:
        """A buffer of at least `n` bytes (give it back whole; read into its first n)."""
        if n > self.nbytes:  # one tensor larger than a span: its own buffer, not kept
            self.allocated += n
            return alloc(n, self.device)
        for i, (buf, idle) in enumerate(self._returned):
            if _use_count(buf) <= idle:  # no view of it is left anywhere
                del self._returned[i]
                return buf
        buf = alloc(self.nbytes, self.device)
        self.allocated += self.nbytes
        if not buf.is_pinned():
            from ..prefault import prefault

            # Pages populated on another thread while the first blocks land; the buffer is
            # kept alive (in _returned or by the caller) until join() in close().
            t = prefault(buf.data_ptr(), self.nbytes)
            if t is not None:
                self._prefaults.append((t, buf))
        # Only `buf` itself refers to the storage now (the prefault list holds the same tensor
        # object, which adds no storage reference); any view made later adds one.
        self._idle[buf.data_ptr()] = _use_count(buf)
        return buf

    def give(self, buf: torch.Tensor) -> None:
        """Return a buffer from take(); it is reused once nothing but the pool refers to it."""
        if buf.numel() <= self.nbytes:
            self._returned.append((buf, self._idle[buf.data_ptr()]))

    def close(self) -> None:
        for t, _ in self._prefaults:
            t.join()
        self._prefaults.clear()
        self._returned.clear()


class Share(Protocol):
    """Ranks that load the same checkpoint together (vLLM: a tensor-parallel group): span j is
    read from the cluster by rank `j % size` only and broadcast to the others in span order."""

    rank: int
    size: int

    def broadcast(self, tensor: torch.Tensor, src: int) -> None: ...


class WeightStream:
    """Iterate a checkpoint's tensors; at most `depth` spans are being read while the engine
    copies out of the previous one, so the loader holds (depth + 1) buffers of the largest
    span's size (a tensor larger than 4 spans: one more of its size), reused from span to span.

    The buffers are page-locked when `device` is CUDA and each tensor is copied to the device
    with non_blocking=True; a span's buffer is reused only after its copies have completed.
    With `share`, each rank reads only its share of the spans from the cluster and receives the
    others from its peers (over NCCL on GPUs: device memory, no host copy on the receivers).
    """

    def __init__(self, client: Client, url: str, *, device: str | torch.device = "cpu",
                 span_bytes: int = 32 << 20, depth: int = 4,
                 want: Callable[[str], bool] | None = None, share: Share | None = None) -> None:
        self.client = client
        self.url = url
        self.device = torch.device(device)
        self.span_bytes = max(1, span_bytes)
        self.depth = max(1, depth)
        self.share = share if share is not None and share.size > 1 else None
        self.shards: list[Shard] = client.run(open_shards(client.aclient, url))
        self.spans = plan_spans(self.shards, self.span_bytes, want)
        # Pool buffers fit the largest span, a single tensor of up to 4 spans included (an MLP
        # matrix of a big model is larger than a span; pooling it keeps the first-touch cost
        # once per buffer); a larger tensor (an embedding) gets a buffer of its own.
        cap = 4 * self.span_bytes
        self.buffers = SpanBuffers(max([s.hi - s.lo for s in self.spans if s.hi - s.lo <= cap], default=1),
                                   self.device)
        self.bytes_read = 0      # from the cluster, by this process
        self.bytes_received = 0  # from peers (share)
        self.wait_s = 0.0        # the engine waited this long for bytes (the rest is its own work)
        self._pending: deque = deque()
        self._reading: set[asyncio.Task] = set()
        self._loop = client.run(_running_loop())

    @property
    def size(self) -> int:
        """Bytes of tensor data this stream reads."""
        return sum(s.hi - s.lo for s in self.spans)

    def _owner(self, j: int) -> int | None:
        return None if self.share is None else j % self.share.size

    def _start(self, j: int, span: Span) -> tuple[int, Span, torch.Tensor, Future | None]:
        buf = self.buffers.take(span.hi - span.lo)
        owner = self._owner(j)
        if owner is not None and owner != self.share.rank:
            return j, span, buf, None  # a peer reads this one
        # Submitted without waiting for the loop: a round trip per span cost ~1 s per GiB here
        # while the loop thread was busy receiving.
        return j, span, buf, asyncio.run_coroutine_threadsafe(self._read(span, buf), self._loop)

    async def _read(self, span: Span, buf: torch.Tensor) -> None:
        task = asyncio.current_task()
        self._reading.add(task)  # touched on the loop thread only: close() cancels and awaits these
        try:
            if span.hi > span.lo:
                f = span.shard.file
                await f.read_at(span.shard.header.data_offset + span.lo,
                                memoryview(buf.numpy())[:span.hi - span.lo])
        finally:
            self._reading.discard(task)

    def _arrive(self, j: int, span: Span, buf: torch.Tensor, task) -> tuple[torch.Tensor, bool]:
        """(the span's bytes, whether they are already on the device) once this rank has them."""
        n = span.hi - span.lo
        if task is not None:
            t0 = time.perf_counter()
            task.result()  # the read's error, if any, is raised here
            self.wait_s += time.perf_counter() - t0
            self.bytes_read += n
        owner = self._owner(j)
        if owner is None or n == 0:
            return buf, False
        if owner != self.share.rank:
            self.bytes_received += n
        if self.device.type == "cuda":  # NCCL moves device memory: upload once, on the reader
            dev = (buf[:n].to(self.device, non_blocking=True) if owner == self.share.rank
                   else torch.empty(n, dtype=torch.uint8, device=self.device))
            self.share.broadcast(dev, owner)
            return dev, True
        self.share.broadcast(buf[:n], owner)
        return buf, False

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        cuda = self.device.type == "cuda"
        todo = iter(enumerate(self.spans))
        prev = None  # (copies-done event or None, buffer) of the span before the current one
        try:
            for j, span in todo:
                self._pending.append(self._start(j, span))
                if len(self._pending) >= self.depth:
                    break
            while self._pending:
                j, span, buf, task = self._pending.popleft()
                data, on_device = self._arrive(j, span, buf, task)
                views = span_views(span, data)
                views.reverse()
                first = True
                while views:
                    name, t = views.pop()  # popped: the list holds no view the engine let go of
                    yield name, (t.to(self.device, non_blocking=True) if cuda and not on_device else t)
                    del t
                    if first:
                        # The engine asked for this span's second tensor: it is done with the
                        # previous span's last one, so that buffer can be reused by the next read.
                        first = False
                        if prev is not None:
                            self._release(*prev)
                            prev = None
                        nxt = next(todo, None)
                        if nxt is not None:
                            self._pending.append(self._start(*nxt))
                del data
                event = None
                if cuda:  # the buffer is reused only once the copies out of it have run
                    event = torch.cuda.Event()
                    event.record()
                prev = (event, buf)
                del buf
        except CacheError as exc:
            raise _naming(exc, self.url) from None
        finally:
            if prev is not None and prev[0] is not None:
                prev[0].synchronize()
            self._stop_reads()

    def _release(self, event, buf: torch.Tensor) -> None:
        if event is not None:
            event.synchronize()
        self.buffers.give(buf)

    def _stop_reads(self) -> None:
        self._pending.clear()
        # Waited for, not only cancelled: they write into buffers we are about to drop. A read
        # submitted but not started is a task by the time this runs (the loop runs callbacks
        # in order), so it is in the set too.
        self.client.run(self._cancel_reads())

    async def _cancel_reads(self) -> None:
        await cancel_and_wait(list(self._reading))

    def close(self) -> None:
        self._stop_reads()
        self.buffers.close()
        self.client.run(_close_all([s.file for s in self.shards]))

    def __enter__(self) -> "WeightStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _naming(exc: CacheError, url: str) -> CacheError:
    """`exc` with the checkpoint's URL in its message when it names only a shard or nothing."""
    if url in str(exc):
        return exc
    try:
        return type(exc)(f"loading {url}: {exc}")
    except TypeError:
        return exc
