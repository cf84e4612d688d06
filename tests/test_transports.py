"""Transport conformance: the same contract over HTTP, UCX over TCP, UCX over shared memory, and in-process."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from cachenode.blocks import BlockRequest
from cachenode.blocks import block_count
from cachenode.client.api import AsyncClient
from cachenode.client.iothread import LoopThread
from cachenode.credentials import AzureCredentials
from cachenode.errors import BadRequest, BlockCorrupt, Forbidden, OriginUnavailable, PeerUnavailable, SourceNotFound
from cachenode.node.config import NodeConfig
from cachenode.node.daemon import NodeServer
from cachenode.node.service import NodeService
from cachenode.origin.file import FileOrigin
from cachenode.placement import Member
from cachenode.blocks import Block, BlockRequest
from cachenode.source import parse_source
from cachenode.testing.azurite import connection_string
from cachenode.testing.node import NodeProcess
from cachenode.transport.inproc import INPROC, InprocBackend
from cachenode.transport.registry import default_registry
from helpers import BS, TOKEN

# name -> (node flags, node environment, loader transport preference)
TRANSPORTS = {
    "http": ((), {}, "tcp"),
    "ucx-tcp": (("--ucx",), {"UCX_TLS": "tcp"}, "ucx"),
    "ucx-shm": (("--ucx",), {"UCX_TLS": "sm,cma,tcp"}, "ucx"),
    INPROC: None,  # a node in this process, its channel calling the node service directly
}
# Objects without origin: one namespace with a writer credential, a small size limit.
NS, WRITER, MAX_OBJECT = "kv", "kv-writer-secret", 2 * BS
OBJECT_FLAGS = ("--namespace", NS, "--writer-token", f"{NS}={WRITER}", "--max-object-size", str(MAX_OBJECT))
CHANNEL_CLASS = {"http": "HttpNodeClient", "ucx-tcp": "UcxNodeClient", "ucx-shm": "UcxNodeClient",
                 INPROC: "InprocChannel"}


@pytest.fixture(scope="module")
def io_loop():
    # UCX binds to one event loop per process: every UCX test here runs on this one.
    loop = LoopThread("conformance")
    yield loop
    loop.close()


class _ProcessNode:
    """`cachenode serve` in a child process; killed means SIGKILL."""

    def __init__(self, tmp_path, conn_str: str, flags, env) -> None:
        self.node = NodeProcess(tmp_path / "node", token=TOKEN, conn_str=conn_str,
                                args=("--block-size", str(BS), "--peer-timeout", "3", *OBJECT_FLAGS, *flags),
                                env=env).start()
        self.url = self.node.url
        self.registry = None  # the loader's default: HTTP and UCX

    async def kill(self) -> None:
        self.node.proc.send_signal(signal.SIGKILL)
        self.node.proc.wait(10)

    def stop(self, io_loop) -> None:
        self.node.stop()


class _InprocNode:
    """A node in the test process, also serving the in-process transport; killed means its
    listeners and parts are gone (its channels then fail like a dead node's)."""

    def __init__(self, tmp_path, conn_str: str, io_loop, **parts) -> None:
        self.registry = default_registry(InprocBackend())
        config = NodeConfig(port=0, cache_dir=str(tmp_path / "node"), block_size=BS, token=TOKEN, peer_timeout=3,
                            namespaces=(NS,), writer_tokens=(f"{NS}={WRITER}",), max_object_size=MAX_OBJECT,
                            azure=AzureCredentials(connection_string=conn_str), **parts.pop("config", {}))
        self.server = NodeServer(config, registry=self.registry, serve=(INPROC,), **parts)
        self.url = io_loop.run(self.server.start())
        self._up = True

    async def kill(self) -> None:
        self._up = False
        await self.server.stop()

    def stop(self, io_loop) -> None:
        if self._up:
            self._up = False
            io_loop.run(self.server.stop())


def _preference(name: str) -> str | tuple[str, ...]:
    return (INPROC, "tcp") if name == INPROC else TRANSPORTS[name][2]


@pytest.fixture(params=list(TRANSPORTS))
def transport(request, tmp_path, proxy, io_loop):
    conn_str = connection_string(proxy.port)
    if request.param == INPROC:
        node = _InprocNode(tmp_path, conn_str, io_loop)
    else:
        flags, env, _ = TRANSPORTS[request.param]
        node = _ProcessNode(tmp_path, conn_str, flags, env)
    pref = _preference(request.param)
    client = AsyncClient(nodes=[node.url], token=TOKEN, transports=pref, peer_timeout=3, registry=node.registry)

    others: list[AsyncClient] = []

    async def channel(token=TOKEN):
        """The loader's channel to the node, as its transport preference picks it."""
        c = client
        if token != TOKEN:
            c = AsyncClient(nodes=[node.url], token=token, transports=pref, peer_timeout=3,
                            registry=node.registry)
            others.append(c)
        me = (await client.members())[0]
        return c.cluster.channel(Member(me.id, me.url, True, me.transports))

    yield request.param, node, client, channel
    for c in [client, *others]:
        io_loop.run(c.close())
    node.stop(io_loop)


def _req(url: str, client: AsyncClient, io_loop, index: int) -> BlockRequest:
    st = io_loop.run(client.stat(url))
    return BlockRequest(parse_source(url), st["etag"], st["size"], st["block_size"], index)


def _kind(name: str, ch) -> None:
    assert type(ch).__name__ == CHANNEL_CLASS[name]


def test_byte_exact_blocks_and_short_last_block(blobs, transport, io_loop):
    name, node, client, channel = transport
    data = os.urandom(4 * BS + 1234)
    url = blobs.put("c.bin", data)
    ch = io_loop.run(channel())
    _kind(name, ch)
    out = bytearray(len(data))
    for i in range(block_count(len(data), BS)):
        req = _req(url, client, io_loop, i)
        dest = memoryview(out)[i * BS:min(len(data), (i + 1) * BS)]
        io_loop.run(ch.read_block(req, dest))
    assert bytes(out) == data
    assert len(dest) == 1234


def test_missing_block_and_missing_blob(blobs, transport, io_loop):
    name, node, client, channel = transport
    url = blobs.put("m.bin", os.urandom(2 * BS))
    ch = io_loop.run(channel())
    req = _req(url, client, io_loop, 0)
    bad = BlockRequest(req.ref, req.etag, req.size, req.block_size, 5)
    with pytest.raises(BadRequest, match="block index 5 out of range"):
        io_loop.run(ch.read_block(bad, memoryview(bytearray(BS))))
    # a blob that does not exist at the pinned ETag: not found (404), never empty bytes
    gone = BlockRequest(parse_source(blobs.url("nope.bin")), req.etag, req.size, req.block_size, 0)
    with pytest.raises(SourceNotFound, match="nope.bin"):
        io_loop.run(ch.read_block(gone, memoryview(bytearray(BS))))


def test_auth_refused(blobs, transport, io_loop):
    name, node, client, channel = transport
    url = blobs.put("a.bin", os.urandom(BS))
    req = _req(url, client, io_loop, 0)
    ch = io_loop.run(channel(token="wrong"))
    with pytest.raises(Forbidden, match="wrong cluster token"):
        io_loop.run(ch.read_block(req, memoryview(bytearray(BS))))


def _blocks(blobs, transport, io_loop, name: str, n: int):
    """A blob of n random blocks: (its bytes, the loader's channel, a request per block, a buffer)."""
    _, _, client, channel = transport
    data = os.urandom(n * BS)
    url = blobs.put(name, data)
    ch = io_loop.run(channel())
    return data, ch, [_req(url, client, io_loop, i) for i in range(n)], bytearray(len(data))


def test_many_concurrent_requests(blobs, transport, io_loop):
    data, ch, reqs, out = _blocks(blobs, transport, io_loop, "many.bin", 64)

    async def all_at_once():
        await asyncio.gather(*(ch.read_block(r, memoryview(out)[r.index * BS:(r.index + 1) * BS])
                               for r in reqs))

    io_loop.run(all_at_once())
    assert bytes(out) == data


def test_peer_dies_mid_transfer(blobs, transport, io_loop):
    node = transport[1]
    data, ch, reqs, out = _blocks(blobs, transport, io_loop, "die.bin", 32)
    done = []

    async def read_until_dead():
        for r in reqs:
            if r.index == 8:
                await node.kill()
            await ch.read_block(r, memoryview(out)[r.index * BS:(r.index + 1) * BS])
            done.append(r.index)

    with pytest.raises(PeerUnavailable):
        io_loop.run(asyncio.wait_for(read_until_dead(), 30))
    assert done == list(range(8))
    assert bytes(out[:8 * BS]) == data[:8 * BS]


def test_a_node_that_is_not_listening_is_named_unreachable_not_failing_mid_transfer():
    """The fallback log line tells an operator what happened: no transfer began."""
    import aiohttp

    from cachenode.testing.ports import free_port
    from cachenode.blocks import Block, BlockRequest
    from cachenode.source import parse_source
    from cachenode.transport.http_client import HttpNodeClient

    dead = f"http://127.0.0.1:{free_port()}"
    req = BlockRequest(parse_source("az://models/x.bin", default_account="acct"), '"e"', 10, 1 << 20, 0)

    async def main():
        async with aiohttp.ClientSession() as s:
            with pytest.raises(PeerUnavailable) as info:
                await HttpNodeClient(dead, None, s).read_block(req, memoryview(bytearray(10)))
        return str(info.value)

    msg = asyncio.run(main())
    assert f"cache node {dead} not reachable: ConnectionRefusedError" in msg and "mid-transfer" not in msg, msg


class _BrokenOrigin(FileOrigin):
    """A file origin whose reads fail as an unreachable one's do: a fault injected by subclassing."""

    async def read_into(self, ref, etag, offset, dest):
        raise OriginUnavailable("injected: the origin went away")


def _read_from_faulty_node(tmp_path, io_loop, **build):
    """Block 1 of a local file read through the loader's in-process channel from an in-process
    node built with `build` (its faults); (what the read raised, the node's metrics)."""
    root = tmp_path / "files"
    root.mkdir(exist_ok=True)
    (root / "m.bin").write_bytes(os.urandom(2 * BS))
    url = f"file://{root}/m.bin"
    node = _InprocNode(tmp_path, None, io_loop, config={"allow": (f"file://{root}",)}, **build)
    client = AsyncClient(nodes=[node.url], token=TOKEN, transports=(INPROC, "tcp"), registry=node.registry)

    async def main():
        try:
            st = await client.stat(url)
            ch = client.cluster.channel((await client.members())[0])
            _kind(INPROC, ch)
            req = BlockRequest(parse_source(url), st["etag"], st["size"], st["block_size"], 1)
            await ch.read_block(req, memoryview(bytearray(BS)))
        except Exception as exc:  # noqa: BLE001 - the test looks at what it is
            return exc
        finally:
            await client.close()
        return None

    try:
        return io_loop.run(main()), node.server.parts.metrics
    finally:
        node.stop(io_loop)


def test_a_fault_injected_by_subclassing_reaches_the_loader_as_over_the_wire(tmp_path, io_loop):
    """In-process, deterministic: the node's real service and cache over a broken origin; the loader
    gets the error the wire would give (502 origin_unavailable), counted by the node."""
    exc, metrics = _read_from_faulty_node(tmp_path, io_loop, file=_BrokenOrigin([str(tmp_path / "files")]))
    assert isinstance(exc, OriginUnavailable) and "injected" in str(exc), repr(exc)
    assert metrics.errors.labels("origin_unavailable")._value.get() == 1


class _CorruptingService(NodeService):
    """A node whose blocks leave with their first byte flipped (a bad disk or NIC, on a real node)."""

    async def serve(self, req, **kwargs):
        block = await super().serve(req, **kwargs)
        data = bytearray(block.data if block.data is not None else block.read_file())
        data[0] ^= 0xFF
        return Block(block.length, block.digest, block.tier, data=data)


def test_a_corrupt_block_from_a_subclassed_service_fails_the_channels_digest_check(tmp_path, io_loop):
    exc, _ = _read_from_faulty_node(tmp_path, io_loop, service=_CorruptingService)
    assert isinstance(exc, BlockCorrupt) and "failed its digest check" in str(exc), repr(exc)


# -- objects without origin: the same contract on every transport ------------------------------


def test_objects_round_trip_into_buffers(transport, io_loop):
    """A put sends from the caller's buffers, a get lands in them (views of the filled length),
    a miss is None, a second put of a key keeps the first object."""
    name, node, client, channel = transport
    ch = io_loop.run(channel())
    _kind(name, ch)
    objs = {f"chunk/{i}": os.urandom(n) for i, n in enumerate([1, BS // 3, BS, 2 * BS, 0])}
    keys = list(objs)
    views = [memoryview(v) for v in objs.values()]
    from cachenode.blocks import digest

    got = io_loop.run(ch.put_objects(NS, keys, views, [digest(v) for v in views], writer=WRITER))
    assert got == {k: "stored" for k in keys}
    again = io_loop.run(ch.put_objects(NS, keys[:1], [memoryview(b"x")], [digest(b"x")], writer=WRITER))
    assert again == {keys[0]: "exists"}
    bufs = [bytearray(2 * BS) for _ in keys] + [bytearray(8)]
    out = io_loop.run(ch.get_objects(NS, [*keys, "absent"], [memoryview(b) for b in bufs]))
    assert [None if v is None else bytes(v) for v in out] == [*objs.values(), None]
    assert all(v.obj is b for v, b in zip(out[:-1], bufs))  # landed in the caller's buffers
    assert io_loop.run(ch.exists_objects(NS, [keys[1], "absent"])) == [True, False]
    assert io_loop.run(ch.delete_objects(NS, keys[:2], writer=WRITER)) == 2
    assert io_loop.run(ch.exists_objects(NS, keys[:3])) == [False, False, True]


def test_objects_refused_as_over_the_wire(transport, io_loop):
    name, node, client, channel = transport
    ch = io_loop.run(channel())
    from cachenode.blocks import digest

    one = [memoryview(b"v")]
    with pytest.raises(Forbidden, match="needs its writer credential"):
        io_loop.run(ch.put_objects(NS, ["k"], one, [digest(b"v")], writer=None))
    with pytest.raises(Forbidden, match="wrong writer credential"):
        io_loop.run(ch.put_objects(NS, ["k"], one, [digest(b"v")], writer="guess"))
    with pytest.raises(Forbidden, match="namespace 'other' is not served"):
        io_loop.run(ch.get_objects("other", ["k"], [None]))
    with pytest.raises(BadRequest, match="exceeds this node's --max-object-size"):
        big = memoryview(bytes(MAX_OBJECT + 1))
        io_loop.run(ch.put_objects(NS, ["big"], [big], [digest(big)], writer=WRITER))
    with pytest.raises(BlockCorrupt, match="failed its digest check on arrival"):
        io_loop.run(ch.put_objects(NS, ["k"], one, [digest(b"w")], writer=WRITER))
    assert io_loop.run(ch.exists_objects(NS, ["k", "big"])) == [False, False]
    bad = io_loop.run(channel(token="wrong"))
    with pytest.raises(Forbidden, match="wrong cluster token"):
        io_loop.run(bad.get_objects(NS, ["k"], [None]))
