"""The contenders: ways to get a safetensors checkpoint from blob storage into torch tensors."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import torch
import xxhash

from cachenode.client.api import Client
from cachenode.client.safetensors_header import header_length, parse_header
from cachenode.client.tensors import load_safetensors, views


@dataclass
class LoadResult:
    seconds: float
    nbytes: int
    digest: str
    tensors: int

    @property
    def gb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds else 0.0


def data_digest(tensors) -> str:
    """xxh3-128 over every tensor's bytes in name order: what each contender must reproduce."""
    h = xxhash.xxh3_128()
    for name in sorted(tensors):
        t = tensors[name]
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def timed(load, nbytes: int) -> LoadResult:
    t0 = time.perf_counter()
    tensors = load()
    seconds = time.perf_counter() - t0
    return LoadResult(seconds, nbytes, data_digest(tensors), len(tensors))


def cache_tensors(url: str, nodes: list[str], token: str | None, on_bytes=None,
                  transport: str = "tcp", stats=None, window: int | None = None,
                  local_socket: str | None = None) -> dict:
    """cachenode: blocks in parallel from the cluster into one buffer, tensors as views.
    `stats` (a client LoadStats) is filled with where the time went; `window`: blocks in
    flight (the client's default if None); `local_socket`: this host's node's (same-host hand-over)."""
    kwargs = {"window": window} if window else {}
    if local_socket:
        kwargs["local_socket"] = local_socket
    with Client(nodes=nodes, token=token, transports=transport, **kwargs) as client:
        return load_safetensors(url, client=client, on_bytes=on_bytes, stats=stats)


def adlfs_tensors(conn_str: str, container: str, blob: str) -> dict:
    """fsspec + adlfs, the usual Python route to Azure Blob: read the file, then
    safetensors.torch.load (which builds every tensor in fresh memory from the bytes)."""
    import adlfs
    import safetensors.torch

    # skip_instance_cache: each load gets its own filesystem, as a fresh process would
    fs = adlfs.AzureBlobFileSystem(connection_string=conn_str, skip_instance_cache=True)
    with fs.open(f"{container}/{blob}", "rb") as f:
        data = f.read()
    return safetensors.torch.load(data)


def blob_sdk_tensors(conn_str: str, container: str, blob: str, concurrency: int, on_bytes=None) -> dict:
    """azure-storage-blob (aio) download of the whole blob into fresh memory, then tensor views."""
    from azure.storage.blob.aio import BlobServiceClient

    out: list[bytearray] = []

    async def run() -> None:
        async with BlobServiceClient.from_connection_string(conn_str) as svc:
            stream = await svc.get_blob_client(container, blob).download_blob(
                max_concurrency=concurrency, progress_hook=_hook(on_bytes))
            out.append(bytearray(stream.size))
            await stream.readinto(_Writer(out[0]))

    # The buffer leaves by side channel: asyncio.run reprs a task's result on some paths, and
    # the repr of a 1 GiB bytearray takes seconds.
    asyncio.run(run())
    buf = out[0]
    n = header_length(bytes(buf[:8]), len(buf), blob)
    header = parse_header(bytes(buf[8:8 + n]), len(buf), blob)
    return views(header, memoryview(buf)[header.data_offset:])


def _hook(on_bytes):
    done = [0]

    async def hook(current, total):
        if on_bytes and current is not None:
            on_bytes(current - done[0])
            done[0] = current
    return hook


class _Writer:
    """Seekable writer over a preallocated buffer (the SDK's parallel download seeks)."""

    def __init__(self, buf: bytearray) -> None:
        self._view = memoryview(buf)
        self._pos = 0

    def write(self, data) -> int:
        self._view[self._pos:self._pos + len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else self._pos + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True
