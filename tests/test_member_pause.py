"""A member that fails one request is paused, then probed and used again: not dropped for a file's life."""

from __future__ import annotations

import asyncio
import os
import time

import cachenode
from cachenode.testing.relay import Relay
from cachenode.testing.ports import free_port
from cachenode.blocks import BlockRequest
from cachenode.pauses import Pauses
from cachenode.placement import rank
from helpers import BS, TOKEN, metric


class CutOnce(Relay):
    """A relay that cuts the first response longer than `at` bytes mid-body, once (a node that
    fails exactly one request mid-transfer); every other byte passes."""

    def __init__(self, *args, at: int = BS // 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.at = at
        self.cuts = 0

    async def _downstream(self, r, w, upstream_w) -> None:
        if await self._pipe(r, w, limit=None if self.cuts else self.at):
            self.cuts += 1
            upstream_w.transport.abort()


def test_a_node_that_fails_one_request_still_serves_the_rest_of_the_load(blobs, nodes):
    n = 24
    data = os.urandom(n * BS)
    url = blobs.put("pause.bin", data)
    port_b = free_port()
    with CutOnce("127.0.0.1", "127.0.0.1", port_b) as relay:
        port_a = free_port()
        peers = f"a=http://127.0.0.1:{port_a},b=http://127.0.0.1:{relay.port}"
        b = nodes.start("--block-size", f"{BS}", "--member-id", "b", "--peers", peers,
                        "--advertise-url", f"http://127.0.0.1:{relay.port}", port=port_b)
        a = nodes.start("--block-size", f"{BS}", "--member-id", "a", "--peers", peers, port=port_a)
        with cachenode.Client([a.url], TOKEN) as client:
            deadline = time.monotonic() + 30
            while sorted(m.id for m in client.members() if m.healthy) != ["a", "b"]:
                assert time.monotonic() < deadline, "the members never saw each other"
                time.sleep(0.2)
            f = client.open(url)
            ref = client.aclient.parse(url)
            owner = [rank(BlockRequest(ref, f.etag, f.size, BS, i).key, ["a", "b"])[0] for i in range(n)]
            of_b = [i for i in range(n) if owner[i] == "b"]
            assert len(of_b) >= 4
            buf = bytearray(BS)
            f.seek(of_b[0] * BS)
            assert f.readinto(buf) == BS and buf == data[of_b[0] * BS:(of_b[0] + 1) * BS]
            assert relay.cuts == 1  # that read failed at b once, and was answered through a
            assert metric(a, "cachenode_forwarded_total") == 1
            time.sleep(1.3)  # b's pause (1 s) is over: the next of its blocks probes it
            for i in of_b[1:]:  # one at a time: while the probe is out, others would go around
                f.seek(i * BS)
                assert f.readinto(buf) == BS and buf == data[i * BS:(i + 1) * BS]
            f.seek(0)
            assert f.read() == data
            f.close()
    # Every later block of b's came from b itself, none around it through a.
    assert metric(a, "cachenode_forwarded_total") == 1


def test_pauses_grow_with_failed_probes_and_end_with_a_good_one():
    now = [0.0]
    p = Pauses(clock=lambda: now[0])
    assert p.admit("x")
    p.failed("x", probe=False)
    assert not p.admit("x") and p.paused() == {"x"}
    p.failed("x", probe=False)  # a request in flight before the pause: no longer pause
    now[0] = 0.99
    assert not p.admit("x")
    now[0] = 1.0
    assert p.admit("x")  # the probe
    assert not p.admit("x")  # one probe at a time
    p.failed("x", probe=True)
    now[0] = 2.9
    assert not p.admit("x")  # 2 s now
    now[0] = 3.0
    assert p.admit("x")
    p.abandoned("x")  # cancelled: no verdict, the next request probes
    assert p.admit("x")
    for _ in range(10):
        p.failed("x", probe=True)
        now[0] += 100
        assert p.admit("x")
    assert p.pause_left("x") == 0
    p.failed("x", probe=True)
    assert p.pause_left("x") == 30.0  # never longer than 30 s
    now[0] += 30
    assert p.admit("x")
    p.succeeded("x")
    assert p.admit("x") and p.admit("x") and not p.paused()


def test_with_one_member_a_single_failure_is_waited_out_not_read_around(tmp_path):
    """The only member fails one read: the next read waits for its probe (about a second) and
    gets the block from it, instead of going to the origin."""
    import asyncio

    from cachenode.errors import PeerUnavailable
    from cachenode.routing import read_from_owners
    from cachenode.source import parse_source

    class Flaky:
        def __init__(self):
            self.calls = 0

        async def read_block(self, req, dest, **kw):
            self.calls += 1
            if self.calls == 1:
                raise PeerUnavailable("dropped mid-transfer (once)")
            dest[:] = b"k" * len(dest)
            return "memory", "d"

    async def main():
        node, pauses = Flaky(), Pauses()
        req = BlockRequest(parse_source(f"file://{tmp_path}/x"), "e", 10, 10, 0)
        dest = memoryview(bytearray(10))
        t0 = time.monotonic()
        first = await read_from_owners(req, dest, ["only"], lambda m: node, pauses)
        t1 = time.monotonic()
        second = await read_from_owners(req, dest, ["only"], lambda m: node, pauses)
        return first, second, t1 - t0, time.monotonic() - t1, node.calls

    first, second, took_first, took_second, calls = asyncio.run(main())
    assert first == ("memory", "d") and 0.9 < took_first < 2  # waited out its own failure, then probed
    assert second == ("memory", "d") and calls == 3 and took_second < 0.5


def test_the_member_list_is_reused_for_a_while_and_asked_again_after_a_failure(blobs, nodes):
    """One members request for many opens within members_ttl; at once again after a node fails."""
    from cachenode.transport.http_client import HttpNodeClient

    url = blobs.put("ttl.bin", os.urandom(2 * BS))
    node = nodes.start("--block-size", f"{BS}")
    asked = []
    real = HttpNodeClient.members

    async def counting(self):
        asked.append(self.base_url)
        return await real(self)

    HttpNodeClient.members = counting
    try:
        with cachenode.Client([node.url], TOKEN) as client:
            for _ in range(5):
                with client.open(url) as f:
                    f.read()
            assert len(asked) == 1
            client.aclient.cluster.forget_members("a member failed a read")
            with client.open(url) as f:
                f.read()
            assert len(asked) == 2
        with cachenode.Client([node.url], TOKEN, members_ttl=0) as client:
            for _ in range(3):
                with client.open(url) as f:
                    f.read()
        assert len(asked) == 5
    finally:
        HttpNodeClient.members = real
