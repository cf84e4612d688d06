"""Pure pieces: URL parsing, block geometry and keys, the LRU tiers, single-flight, in-process nodes."""

from __future__ import annotations

import asyncio
import os

import pytest

from cachenode.blocks import block_count, block_key, block_span
from cachenode.node.config import NodeConfig
from cachenode.errors import BadRequest, InvalidSource
from cachenode.node.singleflight import SingleFlight
from cachenode.source import AZURE, FILE, parse_source
from cachenode.store.disk import DiskTier
from cachenode.store.memory import MemoryTier


def test_parse_source_forms():
    r = parse_source("https://acct01.blob.core.windows.net/models/llama/model-00001.safetensors")
    assert (r.kind, r.account, r.container, r.path) == (AZURE, "acct01", "models", "llama/model-00001.safetensors")
    r = parse_source("http://127.0.0.1:10000/devstoreaccount1/models/a%20b.bin")
    assert (r.account, r.container, r.path) == ("devstoreaccount1", "models", "a b.bin")
    assert r.endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    r = parse_source("az://models/x/y.pt", default_account="acct01")
    assert (r.account, r.container, r.path) == ("acct01", "models", "x/y.pt")
    r = parse_source("file:///data/m.bin")
    assert (r.kind, r.path) == (FILE, "/data/m.bin")
    with pytest.raises(InvalidSource, match="'..' segment"):  # refused, not normalised (one door)
        parse_source("file:///data/../data/m.bin")


def test_block_geometry():
    assert block_count(0, 10) == 0
    assert block_count(10, 10) == 1
    assert block_count(11, 10) == 2
    assert block_span(25, 10, 2) == (20, 5)
    with pytest.raises(BadRequest, match="block index 3 out of range"):
        block_span(25, 10, 3)
    with pytest.raises(BadRequest):
        block_span(0, 10, 0)


def test_block_key_changes_with_every_field():
    ref = parse_source("az://models/m.bin", default_account="acct01")
    base = block_key(ref, '"e1"', 100, 8, 0)
    assert base == block_key(ref, '"e1"', 100, 8, 0)
    others = [block_key(ref, '"e2"', 100, 8, 0), block_key(ref, '"e1"', 101, 8, 0),
              block_key(ref, '"e1"', 100, 16, 0), block_key(ref, '"e1"', 100, 8, 1),
              block_key(parse_source("az://models/m.bin2", default_account="acct01"), '"e1"', 100, 8, 0)]
    assert len({base, *others}) == 6


def test_memory_tier_is_byte_bounded_lru():
    m = MemoryTier(100)
    m.put("a", b"x" * 40, "da")
    m.put("b", b"x" * 40, "db")
    assert m.get("a")  # a is now most recent
    m.put("c", b"x" * 40, "dc")  # evicts b
    assert m.get("b") is None and m.get("a") and m.get("c")
    assert m.used == 80
    assert not m.put("huge", b"x" * 101, "dh")


async def _write_blocks(d: DiskTier, n: int) -> None:
    """Blocks 0..n-1 of 100 bytes each, block i all bytes i."""
    from cachenode.blocks import digest

    for i in range(n):
        data = bytes([i]) * 100
        await d.write(f"{i:032x}", data, digest(data))


def test_disk_tier_evicts_and_rebuilds(tmp_path):
    async def main():
        d = DiskTier(str(tmp_path), 250)
        d.rebuild()
        await _write_blocks(d, 3)
        assert len(d) == 2 and d.used == 200  # the oldest went to make room
        again = DiskTier(str(tmp_path), 250)
        assert again.rebuild() == 2
        assert await again.read_verified(f"{2:032x}") == bytes([2]) * 100
    asyncio.run(main())


def _thread_nice_values() -> dict[int, int]:
    """thread id -> nice value, for every thread of this process (from /proc, as top shows them)."""
    import os

    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                out[int(tid)] = int(f.read().rsplit(")", 1)[1].split()[16])  # field 19: nice
        except (OSError, IndexError, ValueError):
            pass
    return out


def test_disk_tier_writes_on_a_lowest_priority_thread(tmp_path):
    """Block files are written by a thread at nice 19, so a cold load's fills, the loader and the
    origin get the CPU first (README, Benchmarks: cold loads 0.87x -> 1.15x blob direct)."""
    import os
    import threading

    before = _thread_nice_values()

    async def main():
        d = DiskTier(str(tmp_path), 1000)
        d.rebuild()
        await _write_blocks(d, 1)
        return d

    d = asyncio.run(main())
    try:
        new = {t: n for t, n in _thread_nice_values().items() if t not in before}
        assert 19 in new.values(), new
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0  # only the writer
    finally:
        d.close()


def _disk_bytes(root) -> int:
    """Bytes of the files under root; a file renamed or evicted between the listing and its
    stat (other writer threads run on) counts as gone, not as an error."""
    import os

    total = 0
    for d, _, fs in os.walk(root):
        for f in fs:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except FileNotFoundError:
                pass
    return total


def test_disk_tier_never_holds_more_than_its_capacity_while_writing(tmp_path, monkeypatch):
    """Temp files being written count: 20 concurrent writes into room for 2 blocks never put
    more than the capacity on disk, at any moment (sampled inside every write)."""
    import cachenode.store.disk as disk_mod
    from cachenode.blocks import digest

    seen = []
    real_write = disk_mod._write_file

    def write_and_look(path, data):
        real_write(path, data)
        seen.append(_disk_bytes(tmp_path))

    monkeypatch.setattr(disk_mod, "_write_file", write_and_look)

    async def main():
        d = DiskTier(str(tmp_path), 250)
        d.rebuild()
        blocks = [bytes([i]) * 100 for i in range(20)]
        await asyncio.gather(*(d.write(f"{i:032x}", b, digest(b)) for i, b in enumerate(blocks)))
        return d

    d = asyncio.run(main())
    assert seen and max(seen) <= 250, seen
    assert _disk_bytes(tmp_path) == d.used <= 250


def test_a_truncated_block_file_is_dropped_at_start(tmp_path):
    async def main():
        d = DiskTier(str(tmp_path), 1000)
        d.rebuild()
        await _write_blocks(d, 3)
        return d

    d = asyncio.run(main())
    victim = d.get(f"{1:032x}").path
    with open(victim, "r+b") as f:
        f.truncate(40)
    again = DiskTier(str(tmp_path), 1000)
    assert again.rebuild() == 2
    assert again.get(f"{1:032x}") is None and again.dropped == 1 and again.used == 200


def test_singleflight_shares_one_fill_and_survives_first_caller_cancel():
    async def main():
        sf: SingleFlight[int] = SingleFlight()
        calls = 0
        gate = asyncio.Event()

        async def fill():
            nonlocal calls
            calls += 1
            await gate.wait()
            return 42

        first = asyncio.ensure_future(sf.do("k", fill))
        await asyncio.sleep(0)
        others = [asyncio.ensure_future(sf.do("k", fill)) for _ in range(5)]
        await asyncio.sleep(0)
        first.cancel()
        gate.set()
        results = await asyncio.gather(*others)
        assert calls == 1
        assert results == [(42, True)] * 5
        assert sf.in_flight() == 0
    asyncio.run(main())


def test_several_nodes_in_one_process(tmp_path):
    """No module-level state: two in-process nodes keep separate stores and counters."""
    import cachenode
    from cachenode.node.daemon import NodeServer

    shared = tmp_path / "shared"
    shared.mkdir()
    data = os.urandom(200_000)
    (shared / "m.bin").write_bytes(data)

    async def main():
        cfgs = [NodeConfig(port=0, cache_dir=str(tmp_path / f"n{i}"), block_size=65536, token="t",
                           allow=(f"file://{shared}",)) for i in range(2)]
        async with NodeServer(cfgs[0]) as a, NodeServer(cfgs[1]) as b:
            async with cachenode.AsyncClient(nodes=[a.url], token="t") as c:
                f = await c.open(f"file://{shared}/m.bin")
                assert await f.read() == data
            assert a.parts.metrics.fills._value.get() == 4
            assert b.parts.metrics.fills._value.get() == 0
            assert len(b.parts.memory) == 0
    asyncio.run(main())


def test_rendezvous_spreads_and_moves_minimally():
    from collections import Counter

    from cachenode.placement import owner

    ids = ["10.0.0.1:8470", "10.0.0.2:8470", "10.0.0.3:8470"]
    keys = [f"{i:032x}" for i in range(3000)]
    before = {k: owner(k, ids) for k in keys}
    share = Counter(before.values())
    assert all(800 < n < 1200 for n in share.values()), share
    after = {k: owner(k, ids + ["10.0.0.4:8470"]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "10.0.0.4:8470" for k in moved)
    assert 600 < len(moved) < 900  # about a quarter
    removed = {k: owner(k, ids[:2]) for k in keys}
    assert all(removed[k] == before[k] for k in keys if before[k] != ids[2])


def test_member_parsing_and_sources(tmp_path):
    from cachenode.node.membership import Membership, parse_member, resolve_dns_members

    assert parse_member("http://10.1.2.3:8470/").id == "10.1.2.3:8470"
    m = parse_member("gpu-7=http://10.1.2.3:8470")
    assert (m.id, m.url) == ("gpu-7", "http://10.1.2.3:8470")
    with pytest.raises(ValueError, match="needs a host and a port"):
        parse_member("http://10.1.2.3")
    with pytest.raises(ValueError, match="expected http"):
        parse_member("10.1.2.3:8470")

    peers = tmp_path / "peers"
    peers.write_text("# members\nhttp://127.0.0.1:1\n\nb=http://127.0.0.1:2  # second\n")

    async def main():
        ms = Membership(peers_file=str(peers), peers=("http://127.0.0.1:3",))
        await ms.refresh()
        assert sorted(x.id for x in ms.members()) == ["127.0.0.1:1", "127.0.0.1:3", "b"]
        peers.write_text("http://127.0.0.1:1\n")
        os.utime(peers, ns=(1, 1))  # a different mtime even within one clock tick
        await ms.refresh()
        assert sorted(x.id for x in ms.members()) == ["127.0.0.1:1", "127.0.0.1:3"]
        ms.mark_down("127.0.0.1:1")
        assert ms.healthy_ids() == ["127.0.0.1:3"]
        dns = await resolve_dns_members("localhost:8470")
        assert "127.0.0.1:8470" in [d.id for d in dns]
    asyncio.run(main())


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("False", False), ("0", False),
                                             ("", False), (True, True), (False, False), (None, False)])
def test_fsspec_boolean_options_read_strings_as_fsspec_config_gives_them(value, expected):
    from cachenode.client.fsspec_fs import _flag

    assert _flag(value, "background") is expected


def test_fsspec_boolean_option_that_is_not_one_is_named():
    from cachenode.client.fsspec_fs import _flag

    with pytest.raises(ValueError, match="background='maybe'"):
        _flag("maybe", "background")


def test_client_options_beside_a_given_client_are_refused_not_ignored():
    from cachenode.client.tensors import with_client

    with pytest.raises(TypeError, match="background configure a new client"):
        with_client(object(), {"background": True}, lambda c: None)


@pytest.mark.parametrize("call", ["load_safetensors", "iter_safetensors", "load_checkpoint"])
def test_every_loader_function_checks_its_client_options_when_called(call):
    """One check for all three: options beside client= are refused, unknown ones too, and the
    generator says so at the call, not at its first next()."""
    import cachenode.torch as ct
    from cachenode.client.api import Client

    fn = getattr(ct, call)
    with Client(nodes=["http://127.0.0.1:9"], token="t") as c:
        with pytest.raises(TypeError, match="background configure a new client"):
            fn("az://models/m.safetensors", client=c, background=True)
    with pytest.raises(TypeError, match="no_such_option"):
        fn("az://models/m.safetensors", no_such_option=1)
