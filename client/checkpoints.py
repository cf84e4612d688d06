"""Whole checkpoints: sharded safetensors / torch .bin via their index JSON, loaded concurrently."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import torch

from cachenode.errors import SourceNotFound

from .api import AsyncClient, Client
from .files import CacheFile
from .reader import run_all, wait_all
from .safetensors_header import SafetensorsError
from .tensors import StateDict, with_client, aload_safetensors

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


class _OnLoop:
    """Lets sync file code (torch.load) run in a worker thread against an async client's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


async def aload_torch(client: AsyncClient, url: str, device="cpu", on_bytes=None) -> dict:
    """torch.load of a .pt/.bin through the cache (weights_only), in a worker thread."""
    afile = await client.open(url, on_bytes=on_bytes)
    loop = _OnLoop(asyncio.get_running_loop())

    def load() -> dict:
        with CacheFile(afile, loop) as f:  # opened, used and closed off the loop thread
            return torch.load(f, map_location=torch.device(device), weights_only=True, mmap=False)

    thread = asyncio.ensure_future(asyncio.to_thread(load))
    try:
        return await asyncio.shield(thread)
    finally:
        await afile.close()
        # A thread cannot be cancelled: once the file is closed its next read fails at once,
        # so wait for it to end rather than leave torch.load running behind a failed load.
        await wait_all([thread])


async def _load_file(client: AsyncClient, url: str, device, on_bytes) -> dict:
    if url.endswith(".safetensors"):
        return await aload_safetensors(client, url, device, on_bytes)
    return await aload_torch(client, url, device, on_bytes)


async def _exists(client: AsyncClient, url: str) -> bool:
    try:
        await client.stat(url)
        return True
    except SourceNotFound:
        return False


async def aload_checkpoint(client: AsyncClient, url: str, device="cpu", on_bytes=None) -> StateDict:
    """Async twin of load_checkpoint."""
    if url.endswith("/"):
        for name in (*INDEX_NAMES, *SINGLE_NAMES):
            if await _exists(client, url + name):
                return await aload_checkpoint(client, url + name, device, on_bytes)
        raise SourceNotFound(f"{url}: no {', '.join(INDEX_NAMES + SINGLE_NAMES)} under this prefix")
    if not url.endswith(".index.json"):
        try:
            out = StateDict(await _load_file(client, url, device, on_bytes))
        except SourceNotFound as exc:
            # "az://c/dir" for the prefix "dir/": no blob has that name, so look under it.
            for name in (*INDEX_NAMES, *SINGLE_NAMES):
                if await _exists(client, f"{url}/{name}"):
                    return await aload_checkpoint(client, f"{url}/{name}", device, on_bytes)
            raise SourceNotFound(f"{exc} (nor is there a checkpoint under {url}/; a prefix needs a"
                                 f" trailing '/')") from None
        out.metadata = getattr(out, "metadata", {})
        return out
    async with await client.open(url) as f:
        raw = await f.read()
    try:
        index = json.loads(raw)
        weight_map: dict[str, str] = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise SafetensorsError(f"{url}: not a checkpoint index (needs a 'weight_map' object)") from None
    base = url.rsplit("/", 1)[0]
    shards = sorted(set(weight_map.values()))
    for s in shards:
        if "/" in s or s in ("", ".", ".."):
            raise SafetensorsError(f"{url}: shard name {s!r} must be a file beside the index")
    # run_all, not gather: a failing shard cancels the others and waits until they have stopped.
    # A shard name is a blob name, not URL text: quoted once, or "a#1.safetensors" would read
    # the blob "a" ("#" starts a fragment) and "%41" would read "A".
    loaded = await run_all([_load_file(client, f"{base}/{quote(s, safe='')}", device, on_bytes)
                            for s in shards])
    by_shard = dict(zip(shards, loaded))
    out = StateDict()
    for name, shard in weight_map.items():
        if name not in by_shard[shard]:
            raise SafetensorsError(f"{url}: index places tensor {name!r} in {shard}, which does not hold it")
        out[name] = by_shard[shard][name]
    out.metadata = index.get("metadata", {}) or {}
    return out


def load_checkpoint(url: str, device="cpu", *, client: Client | None = None, on_bytes=None,
                    **client_kwargs) -> StateDict:
    """A whole model's state dict from a prefix ending in "/", an index JSON, or one file.

    Shards listed in `model.safetensors.index.json` (or `pytorch_model.bin.index.json`) load
    concurrently, each into its own buffer.
    """
    return with_client(client, client_kwargs,
                        lambda c: c.run(aload_checkpoint(c.aclient, url, device, on_bytes)))
