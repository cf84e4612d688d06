"""safetensors and torch checkpoints through the cache, straight into tensors viewing one buffer."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Iterator

import torch

from .api import AsyncClient, Client
from .config import ClientConfig
from .files import AsyncCacheFile
from .loadstats import LoadStats, Stopwatch
from .prefault import prefault
from .reader import cancel_and_wait
from .safetensors_header import Header, SafetensorsError, TensorEntry, header_length, parse_header

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
# Newer torch only, as in the reference's safe_open (F6_* has no torch dtype there either).
TORCH_DTYPES.update({k: getattr(torch, v) for k, v in
                     {"F8_E8M0": "float8_e8m0fnu", "F4": "float4_e2m1fn_x2"}.items() if hasattr(torch, v)})
INT64_MAX = 2**63 - 1


class StateDict(dict):
    """name -> tensor, plus the file's `__metadata__` as `.metadata`."""

    metadata: dict[str, str]


async def aread_header(f: AsyncCacheFile) -> Header:
    f.seek(0)
    n = header_length(await f.read(8), f.size, f.name)
    return check_torch(parse_header(await f.read(n), f.size, f.name), f.name)


def check_torch(header: Header, name: str) -> Header:
    """Refuse, before any data is read, what a valid header may hold but torch cannot: the same
    tensors the reference's safe_open refuses (no torch dtype, odd F4 rows, dims past int64)."""
    for e in header.tensors:
        where = f"{name}: tensor {e.name!r}"
        if e.dtype not in TORCH_DTYPES:
            raise SafetensorsError(f"{where}: dtype {e.dtype} has no torch equivalent in torch {torch.__version__}")
        if e.dtype == "F4" and (not e.shape or e.shape[-1] % 2):
            raise SafetensorsError(f"{where}: F4 packs two values per byte in torch; the last dim of"
                                   f" {list(e.shape)} must be even")
        if any(d > INT64_MAX for d in torch_shape(e)):
            raise SafetensorsError(f"{where}: shape {list(e.shape)} has a dim torch cannot hold (int64)")
        if e.end == e.begin:
            try:  # costs nothing without data; a shape torch still refuses is named here
                tensor_view(e, None)
            except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
                raise SafetensorsError(f"{where}: torch refuses shape {list(e.shape)} ({exc})") from None
    return header


def torch_shape(e: TensorEntry) -> tuple[int, ...]:
    """The shape torch gives `e`: float4_e2m1fn_x2 holds two F4 values per element."""
    return (*e.shape[:-1], e.shape[-1] // 2) if e.dtype == "F4" else e.shape


def alloc(nbytes: int, device: str | torch.device) -> torch.Tensor:
    """One host buffer for a whole data section; page-locked when the tensors go to a GPU, so the
    host-to-device copies can run asynchronously (non_blocking) straight out of it."""
    pin = torch.device(device).type == "cuda"
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)


def tensor_view(e: TensorEntry, data) -> torch.Tensor:
    """Tensor `e` as a view of `data` (the data section as a writable buffer); no copy."""
    dtype = TORCH_DTYPES[e.dtype]
    if e.end == e.begin:
        # Reshaped from an empty tensor like safe_open does: torch.empty(shape) refuses some
        # zero-size shapes safe_open gives ((0, 2**62, 2**62) overflows its stride computation).
        return torch.empty(0, dtype=dtype).reshape(torch_shape(e))
    # frombuffer, not slicing a uint8 tensor: safetensors offsets need not be aligned to the
    # element size, and view(dtype) on a slice refuses unaligned storage offsets.
    raw = torch.frombuffer(data, dtype=torch.uint8, count=e.end - e.begin, offset=e.begin)
    return raw.view(dtype).view(torch_shape(e))


def views(header: Header, data) -> dict[str, torch.Tensor]:
    """Every tensor as a view of `data`; they keep `data` alive through torch's buffer reference."""
    return {e.name: tensor_view(e, data) for e in header.tensors}


async def stream_tensors(f: AsyncCacheFile, header: Header, data: memoryview, *, window: int = 8
                         ) -> AsyncIterator[TensorEntry]:
    """Fill `data` block by block, several in flight; yield each tensor once all of its blocks
    have arrived, in arrival order rather than file order."""
    bs, base, size = f.block_size, header.data_offset, f.size
    spans = [e for e in header.tensors if e.end > e.begin]
    for e in header.tensors:
        if e.end == e.begin:
            yield e
    if not spans:
        return
    first, last = base // bs, (size - 1) // bs
    waiting: dict[int, list[TensorEntry]] = {}
    missing: dict[str, int] = {}
    for e in spans:
        blocks = range((base + e.begin) // bs, (base + e.end - 1) // bs + 1)
        missing[e.name] = len(blocks)
        for i in blocks:
            waiting.setdefault(i, []).append(e)
    sem = asyncio.Semaphore(window)

    async def fetch(i: int) -> int:
        lo, hi = max(i * bs, base), min((i + 1) * bs, size)
        async with sem:
            await f.read_at(lo, data[lo - base:hi - base])
        return i

    tasks = [asyncio.ensure_future(fetch(i)) for i in range(first, last + 1)]
    try:
        for done in asyncio.as_completed(tasks):
            i = await done
            for e in waiting.get(i, ()):
                missing[e.name] -= 1
                if missing[e.name] == 0:
                    yield e
    finally:
        # Waited for, not only cancelled: they write into `data`, which the caller frees or
        # reuses once we are done (a failed load must leave nothing running behind it).
        await cancel_and_wait(tasks)


async def _open_safetensors(client: AsyncClient, url: str, on_bytes=None, stats: LoadStats | None = None
                            ) -> tuple[AsyncCacheFile, Header]:
    clock = Stopwatch()
    f = await client.open(url, on_bytes=on_bytes)
    try:
        if stats is not None:
            stats.stat_s += clock.lap()
        header = await aread_header(f)
        if stats is not None:
            stats.header_s += clock.lap()
        return f, header
    except BaseException:
        await f.close()
        raise


async def _tensors(f: AsyncCacheFile, header: Header, device, window: int, client: AsyncClient,
                   stats: LoadStats | None = None) -> AsyncIterator[tuple[str, torch.Tensor]]:
    clock = Stopwatch()
    digest_before, building = client.digest_seconds(), 0.0
    buf = alloc(header.data_size, device)
    data = memoryview(buf.numpy()) if header.data_size else memoryview(bytearray())
    target = torch.device(device)
    # Not when this host's node hands the blocks over: its copies run on worker threads, each
    # faulting its own pages in parallel, and a prefault thread only competed with them
    # (interleaved, 4 rounds: 0.77x local without it, 0.74x with one, 0.77x with two).
    local = client.hands_over()
    filler = None if buf.is_pinned() or local else prefault(buf.data_ptr(), header.data_size)
    try:
        async for e in stream_tensors(f, header, data, window=window):
            t0 = time.perf_counter()
            t = tensor_view(e, data)
            # From pinned memory the copy is asynchronous; torch's caching host allocator keeps
            # the pinned buffer alive until the copy's stream is done with it.
            t = t if target.type == "cpu" else t.to(target, non_blocking=True)
            building += time.perf_counter() - t0
            yield e.name, t
        if stats is not None:
            digest = client.digest_seconds() - digest_before
            stats.digest_s += digest
            stats.tensors_s += building
            stats.wait_bytes_s += max(0.0, clock.lap() - digest - building)
            stats.bytes += header.data_size
    finally:
        if filler is not None:
            await asyncio.to_thread(filler.join)  # `buf` must outlive the prefault thread
            if stats is not None:
                stats.first_touch_tail_s += clock.lap()
                stats.first_touch_s += filler.seconds


async def aiter_safetensors(client: AsyncClient, url: str, device: str | torch.device = "cpu",
                            on_bytes=None) -> AsyncIterator[tuple[str, torch.Tensor]]:
    """Async twin of iter_safetensors."""
    f, header = await _open_safetensors(client, url, on_bytes)
    try:
        async for item in _tensors(f, header, device, client.window, client):
            yield item
    finally:
        await f.close()


async def aload_safetensors(client: AsyncClient, url: str, device: str | torch.device = "cpu",
                            on_bytes=None, stats: LoadStats | None = None) -> StateDict:
    """Async twin of load_safetensors."""
    f, header = await _open_safetensors(client, url, on_bytes, stats)
    try:
        got = {name: t async for name, t in _tensors(f, header, device, client.window, client, stats)}
    finally:
        await f.close()
    out = StateDict((e.name, got[e.name]) for e in header.tensors)  # file order, like safetensors
    out.metadata = header.metadata
    return out


def load_safetensors(url: str, device: str | torch.device = "cpu", *, client: Client | None = None,
                     on_bytes=None, stats: LoadStats | None = None, **client_kwargs) -> StateDict:
    """All tensors of a safetensors file, read in parallel into one buffer and viewed from it.

    `device="cuda"` reads into page-locked memory and copies each tensor with non_blocking=True
    as soon as its blocks are in. `.metadata` holds the file's `__metadata__`. Pass a LoadStats
    as `stats` to have it filled with where the time went.
    """
    return with_client(client, client_kwargs,
                        lambda c: c.run(aload_safetensors(c.aclient, url, device, on_bytes, stats)))


def iter_safetensors(url: str, device: str | torch.device = "cpu", *, client: Client | None = None,
                     on_bytes=None, **client_kwargs) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) as soon as the blocks holding each tensor have arrived.

    The shape fits what inference servers take as a weights iterator; network, copy and the
    device upload overlap. Bad options raise here, at the call, not at the first next().
    """
    config = client_config(client, client_kwargs)
    return _iterate(client, config, url, device, on_bytes)


def _iterate(client: Client | None, config: ClientConfig | None, url: str, device, on_bytes):
    own = client is None
    client = client or Client(config=config)  # made at the first next(): an unused iterator holds no thread
    agen = aiter_safetensors(client.aclient, url, device, on_bytes)
    try:
        while True:
            try:
                yield client.run(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        client.run(agen.aclose())
        if own:
            client.close()


def client_config(client: Client | None, kwargs: dict) -> ClientConfig | None:
    """The one check of a loader function's client options: refused beside `client=` (they
    would silently not apply: the client's own config does), else resolved (and so checked)
    into the config of the private client the function makes."""
    if client is not None:
        if kwargs:
            raise TypeError(f"{', '.join(sorted(kwargs))} configure a new client: pass them to the Client "
                            f"you give as client=, or leave client= out")
        return None
    return ClientConfig.resolve(**kwargs)


def with_client(client: Client | None, kwargs: dict, fn):
    """fn(client), with a private Client made from `kwargs` (and closed) if none is given."""
    config = client_config(client, kwargs)
    own = client is None
    client = client or Client(config=config)
    try:
        return fn(client)
    finally:
        if own:
            client.close()
