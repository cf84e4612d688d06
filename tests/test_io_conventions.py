"""io conventions, table-driven against io.BytesIO: read(None), readall, readline(s), iteration on every file we hand out."""

from __future__ import annotations

import asyncio
import io

import fsspec
import pytest

import cachenode
from cachenode.testing.azurite import AZURITE_ACCOUNT
from helpers import BS, TOKEN

DATA = b"first line\n\nthird\n" + b"x" * (2 * BS + 123) + b"\n\nlast, without a newline"

# Each case: calls made in turn on one fresh file; ("iter",) is list(f) / [l async for l in f].
CASES = {
    "read(None)": [("read", None)],
    "read(-1)": [("read", -1)],
    "read()": [("read",)],
    "read(0), read(5), read(None)": [("read", 0), ("read", 5), ("read", None)],
    "readall": [("readall",)],
    "readline x6": [("readline",)] * 6,
    "readline sizes": [("readline", None), ("readline", -1), ("readline", 3), ("readline", 3), ("readline", 0)],
    "readlines": [("readlines",)],
    "readlines(hint)": [("readlines", 12)],
    "iteration": [("iter",)],
    "seek, readline, iteration": [("seek", 11), ("readline",), ("iter",)],
    "at EOF": [("seek", 0, 2), ("readline",), ("read", None), ("readlines",), ("iter",)],
    "read then readlines": [("read", 3), ("readlines",)],
}


def _reference(calls) -> list:
    f = io.BytesIO(DATA)
    out = []
    for name, *args in calls:
        if name == "iter":
            out.append(list(f))
        else:
            out.append(getattr(f, "read" if name == "readall" else name)(*args))
    return out


def _sync(f, calls) -> list:
    return [list(f) if name == "iter" else getattr(f, name)(*args) for name, *args in calls]


async def _async(f, calls) -> list:
    out = []
    for name, *args in calls:
        if name == "iter":
            out.append([line async for line in f])
        elif name == "seek":
            out.append(f.seek(*args))
        else:
            out.append(await getattr(f, name)(*args))
    return out


@pytest.fixture(scope="module")
def served(module_nodes, blob_service, azurite):
    container = "ioconv"
    blob_service.create_container(container)
    blob_service.get_blob_client(container, "lines.txt").upload_blob(DATA)
    node = module_nodes.start("--block-size", f"{BS}")
    return node, f"{azurite.endpoint}/{container}/lines.txt", f"cachenode://{container}/lines.txt"


@pytest.mark.parametrize("case", list(CASES))
def test_every_file_follows_io(served, case):
    node, url, fs_url = served
    calls = CASES[case]
    want = _reference(calls)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        assert _sync(f, calls) == want, "cachenode.open"
    with fsspec.open(fs_url, "rb", nodes=[node.url], token=TOKEN, account_name=AZURITE_ACCOUNT,
                     skip_instance_cache=True) as f:
        assert _sync(f, calls) == want, "fsspec"

    async def async_file():
        async with cachenode.AsyncClient(nodes=[node.url], token=TOKEN) as client:
            async with await cachenode.aopen(url, client=client) as f:
                return await _async(f, calls)

    assert asyncio.run(async_file()) == want, "aopen"
