"""Same-host hand-over (the local transport): blocks as memfd descriptors over a unix socket, through the node's one door."""

from __future__ import annotations

import asyncio
import mmap
import os
import signal

import pytest

from cachenode.blocks import BlockRequest, block_count
from cachenode.client.api import AsyncClient, Client
from cachenode.client.iothread import LoopThread
from cachenode.errors import BadRequest, Forbidden, PeerUnavailable, Unauthorized
from cachenode.node.config import NodeConfig
from cachenode.node.daemon import NodeServer
from cachenode.node.service import NodeService
from cachenode.placement import rank
from cachenode.source import parse_source
from cachenode.store import shm
from cachenode.store.host_copies import HostCopies
from cachenode.store.memory import MemoryTier
from cachenode.store.shm import ShmBuffers
from cachenode.testing.node import NodeProcess
from cachenode.testing.ports import free_port
from cachenode.transport.local_client import LocalNodeClient
from helpers import BS, TOKEN, metric


def _memfds(pid: int) -> int:
    """How many of the process's descriptors are our block memfds."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:cachenode-block")
        except OSError:
            pass
    return n


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "files"
    (root / "ok").mkdir(parents=True)
    (root / "secret").mkdir()
    data = os.urandom(5 * BS + 1234)
    (root / "ok" / "model.bin").write_bytes(data)
    (root / "secret" / "other.bin").write_bytes(os.urandom(BS))
    return root, data


@pytest.fixture
def node(tmp_path, files):
    root, _ = files
    sock = str(tmp_path / "node.sock")
    proc = NodeProcess(tmp_path / "node", token=TOKEN, conn_str=None,
                       args=("--block-size", str(BS), "--allow", f"file://{root / 'ok'}",
                             "--local-socket", sock)).start()
    yield proc, sock
    proc.stop()


def test_a_loader_reads_through_its_hosts_node_byte_exact_and_shares_one_copy(node, files):
    proc, sock = node
    root, data = files
    url = f"file://{root / 'ok' / 'model.bin'}"
    for _ in range(2):  # the second reader is served the memfds the first one's fills made
        with Client([proc.url], TOKEN, local_socket=sock) as c, c.open(url) as f:
            assert f.read() == data
    # Every block of both reads went through this node's door; the file was read from its origin once.
    blocks = block_count(len(data), BS)
    served = sum(metric(proc, f'cachenode_served_blocks_total{{tier="{t}"}}') for t in ("origin", "memory", "host"))
    assert served == 2 * blocks and metric(proc, "cachenode_fills_total") == blocks
    assert _memfds(os.getpid()) == 0  # the loader keeps no descriptor after its copy
    assert _memfds(proc.proc.pid) == block_count(len(data), BS)  # one sealed copy per block


def test_token_and_allow_list_are_enforced_on_the_socket(node, files):
    _, sock = node
    root, _ = files

    async def read(token, path, bs=BS):
        ref = parse_source(f"file://{path}")
        size = os.path.getsize(path)
        req = BlockRequest(ref, "x", size, bs, 0)
        ch = LocalNodeClient(sock, token)
        try:
            await ch.read_block(req, memoryview(bytearray(min(bs, size))))
        finally:
            ch.close()

    ok = root / "ok" / "model.bin"
    with pytest.raises(Unauthorized):
        asyncio.run(read(None, ok))
    with pytest.raises(Forbidden):
        asyncio.run(read("wrong", ok))
    with pytest.raises(Forbidden):  # outside the allow-list: refused before any copy is looked at
        asyncio.run(read(TOKEN, root / "secret" / "other.bin"))
    with pytest.raises(BadRequest):  # the block size is the node's
        asyncio.run(read(TOKEN, ok, bs=BS * 2))


def test_a_killed_node_leaves_no_shared_memory_and_loaders_fall_back(tmp_path, node, files):
    proc, sock = node
    root, data = files
    url = f"file://{root / 'ok' / 'model.bin'}"
    shm_before = set(os.listdir("/dev/shm"))
    with Client([proc.url], TOKEN, local_socket=sock) as c, c.open(url) as f:
        assert f.read() == data
    assert _memfds(proc.proc.pid) > 0
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)
    # memfds are anonymous: they died with their only holder; nothing was named in /dev/shm.
    assert set(os.listdir("/dev/shm")) == shm_before
    assert _memfds(os.getpid()) == 0

    async def read_dead():
        ref = parse_source(url)
        ch = LocalNodeClient(sock, TOKEN, timeout=2)
        try:
            await ch.read_block(BlockRequest(ref, "x", len(data), BS, 0), memoryview(bytearray(BS)))
        finally:
            ch.close()

    with pytest.raises(PeerUnavailable):
        asyncio.run(read_dead())


def test_host_copies_count_against_memory_and_go_first():
    memory = MemoryTier(4 * 100)
    copies = HostCopies(memory)
    memory.put("a", bytearray(100), "da")
    memory.put("b", bytearray(100), "db")
    for key in ("c1", "c2"):
        assert copies.keep(key, HostCopies.make(b"x" * 100), 100, "d")
    assert memory.used == 400
    memory.put("e", bytearray(100), "de")  # room is made from the copies, not the cached blocks
    assert memory.get("a") is not None and memory.get("b") is not None
    assert copies.get("c1") is None and copies.get("c2") is not None
    fd = copies.get("c2")[0]
    with pytest.raises(PermissionError):  # sealed: no holder can change bytes another reads
        os.write(fd, b"y")
    copies.close()
    assert memory.used == 300


def test_a_cached_block_is_handed_over_uncopied_sealed_and_freed_after_its_last_view():
    buffers = ShmBuffers()
    buf = buffers(BS)
    buf[:5] = b"bytes"
    fd = shm.handle(buf)  # what a loader gets: the buffer's own memfd, sealed on first hand-over
    try:
        assert os.pread(fd, 5, 0) == b"bytes"
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        with pytest.raises(PermissionError):  # no writable mapping either, nor a resize
            mmap.mmap(fd, BS)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 2 * BS)
        view = buf.toreadonly()[1:]
        del buf
        assert buffers.live == 1  # a view (a send in progress) keeps the buffer
        del view
        assert buffers.live == 0
        assert os.pread(fd, 5, 0) == b"bytes"  # the loader's descriptor keeps the bytes
    finally:
        os.close(fd)
    assert shm.handle(bytearray(BS)) is None and shm.handle(ShmBuffers()(BS)[1:]) is None


def test_the_node_hands_over_its_tiers_own_bytes_without_a_second_copy(tmp_path, files):
    root, data = files
    config = NodeConfig(port=0, cache_dir=str(tmp_path / "node"), block_size=BS, token=TOKEN,
                        memory_bytes=64 * BS, allow=(f"file://{root / 'ok'}",), local_socket="node.sock")
    io = LoopThread()
    server = NodeServer(config)
    try:
        url = io.run(server.start())
        with Client([url], TOKEN, local_socket=config.local_socket_path()) as c, \
                c.open(f"file://{root / 'ok' / 'model.bin'}") as f:
            assert f.read() == data
        # Filled into memfds and handed over as they are: no host copies beside the tier.
        assert server.parts.service.host_copies.used == 0
        assert server.parts.cache.buffers.live == block_count(len(data), BS)
        assert server.parts.memory.used == len(data)
    finally:
        io.run(server.stop())
        io.close()



class _SlowOwner(NodeService):
    """An owner whose answers take 0.3 s, so every request below arrives while the first forward
    is still on its way (a fault by subclassing: the forwarding itself is real HTTP)."""

    async def serve(self, req, **kwargs):
        await asyncio.sleep(0.3)
        return await super().serve(req, **kwargs)


def test_eight_loaders_asking_at_once_for_a_block_share_one_forward(tmp_path):
    """The 8 ranks of a host ask their node for the same block at the same moment; the node does
    not own it. One forward crosses the host's link; the other 7 wait for it and share its copy."""
    root = tmp_path / "files"
    root.mkdir()
    data = os.urandom(16 * BS)  # 16 blocks: b owns some of them (all a's: 2**-16)
    (root / "m.bin").write_bytes(data)
    ports = {"a": free_port(), "b": free_port()}
    peers = tuple(f"{m}=http://127.0.0.1:{p}" for m, p in ports.items())

    def config(member: str, **extra) -> NodeConfig:
        return NodeConfig(port=ports[member], cache_dir=str(tmp_path / member), block_size=BS, token=TOKEN,
                          allow=(f"file://{root}",), peers=peers, member_id=member, **extra)

    async def main():
        b = NodeServer(config("b"), service=_SlowOwner)
        a = NodeServer(config("a", local_socket="a.sock"))
        await b.start()
        await a.start()
        loaders = [LocalNodeClient(a.config.local_socket_path(), TOKEN) for _ in range(8)]
        try:
            ref = parse_source(f"file://{root / 'm.bin'}")
            info = await a.parts.cache.stat(ref)
            reqs = [BlockRequest(ref, info.etag, info.size, BS, i) for i in range(16)]
            req = next(r for r in reqs if rank(r.key, ["a", "b"])[0] == "b")
            bufs = [bytearray(BS) for _ in loaders]
            await asyncio.gather(*(c.read_block(req, memoryview(buf)) for c, buf in zip(loaders, bufs)))
            sample = a.parts.metrics.registry.get_sample_value
            return (req.index, bufs, sample("cachenode_forwarded_total"),
                    sample("cachenode_served_blocks_total", {"tier": "host"}),
                    b.parts.metrics.registry.get_sample_value("cachenode_served_bytes_total"))
        finally:
            for c in loaders:
                c.close()
            await a.stop()
            await b.stop()

    index, bufs, forwards, shared, owner_sent = asyncio.run(main())
    assert all(buf == data[index * BS:(index + 1) * BS] for buf in bufs)
    assert forwards == 1  # one pull from the owner for the host, not one per rank
    assert owner_sent == BS
    assert shared == 7  # the others were handed the one copy
