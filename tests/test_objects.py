"""Objects without origin on real nodes: placement across a cluster, permissions, bad input, immutability, budgets."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import cachenode
from cachenode.blocks import digest
from cachenode.client.objects import ObjectClient
from cachenode.errors import BadRequest, Forbidden, Unauthorized
from cachenode.objects import object_key
from cachenode.placement import rank
from cachenode.transport import object_wire as ow
from cachenode.transport.wire import OBJECTS_PATH
from helpers import BS, TOKEN, KiB, MiB, metric, metrics

NS, WRITER = "kv", "kv-writer"
OTHER, OTHER_WRITER = "other", "other-writer"
OBJECT_ARGS = ("--namespace", NS, "--namespace", OTHER, "--writer-token", f"{NS}={WRITER}",
               "--writer-token", f"{OTHER}={OTHER_WRITER}", "--max-object-size", str(1 * MiB), "--peer-timeout", "3")


def client(url: str, namespace: str = NS, writer: str | None = WRITER, **kw) -> ObjectClient:
    return ObjectClient([url], TOKEN, namespace=namespace, writer_token=writer, peer_timeout=3, transports="tcp", **kw)


def stored_at(node) -> float:
    return metric(node, f'cachenode_object_requests_total{{namespace="{NS}",op="put",result="stored"}}')


def test_round_trip_across_a_three_node_cluster(nodes):
    c = nodes.cluster(3, *OBJECT_ARGS)
    objs = {f"model-a/layer{i}/chunk-{i * 7919:x}": os.urandom(1000 + 997 * i) for i in range(40)}
    with client(c.urls[0]) as w:
        assert w.put(objs) == {k: "stored" for k in objs}
        assert w.put({k: b"again" for k in list(objs)[:3]}) == {k: "exists" for k in list(objs)[:3]}
    # each object is held by its owner by rendezvous rank: several nodes hold some
    ids = c.ids()
    expected = {i: sum(rank(object_key(NS, k), ids)[0] == i for k in objs) for i in ids}
    assert [stored_at(p) for p in c.procs] == [expected[i] for i in ids]
    assert sum(1 for n in expected.values() if n) >= 2
    # a reader entering at another node, without the writer credential, gets every object
    keys = list(objs)
    with client(c.urls[2], writer=None) as r:
        got = r.get([*keys, "absent"])
        assert [bytes(g) for g in got[:-1]] == list(objs.values()) and got[-1] is None
        bufs = [memoryview(bytearray(64 * KiB)) for _ in keys]
        got = r.get(keys, into=bufs)
        assert all(g.obj is b.obj and bytes(g) == objs[k] for g, b, k in zip(got, bufs, keys))
        assert r.exists(keys[:2] + ["absent"]) == [True, True, False]
        with pytest.raises(Forbidden, match="needs its writer credential"):
            r.delete(keys[:1])
    with client(c.urls[1]) as w:
        w.delete(keys[:5])
        assert w.exists(keys[:6]) == [False] * 5 + [True]
        assert w.get(keys[:1]) == [None]


def test_bad_input_is_refused_with_a_named_error(nodes):
    node = nodes.start(*OBJECT_ARGS)
    with client(node.url) as w:
        w.put({"ok": b"1"})
        with pytest.raises(BadRequest, match="exceeds this node's --max-object-size"):
            w.put({"huge": bytes(MiB + 1), "small": b"x"})
        assert w.exists(["huge", "small"]) == [False, False]  # the batch stored nothing
        for bad in ["", "x" * 1025, "tab\there", "nul\x00", 7]:
            with pytest.raises(BadRequest, match="object key"):
                w.get([bad])
            with pytest.raises(BadRequest, match="object key"):
                w.put({bad: b"v"})
        with pytest.raises(BadRequest, match="appears twice"):
            w.exists(["a", "a"])
    with client(node.url, namespace="nobody") as w, pytest.raises(Forbidden, match="namespace 'nobody' is not served"):
        w.get(["ok"])
    with client(node.url, writer=None) as w, pytest.raises(Forbidden, match="needs its writer credential"):
        w.put({"k": b"v"})
    with client(node.url, writer=TOKEN) as w, pytest.raises(Forbidden, match="wrong writer credential"):
        w.put({"k": b"v"})  # the cluster token is not a writer credential
    with client(node.url, writer=OTHER_WRITER) as w, pytest.raises(Forbidden, match="wrong writer credential"):
        w.put({"k": b"v"})  # nor is another namespace's
    with ObjectClient([node.url], None, namespace=NS, writer_token=WRITER, transports="tcp") as w:
        with pytest.raises(Unauthorized, match="missing cluster token"):
            w.get(["ok"])
    # a key the client would refuse, sent raw: the node refuses it too, naming the key
    status, body = _post(node.url, "get", ow.frame({"ns": NS, "keys": ["bad\x01key"]}))
    assert status == 400 and "bad\\x01key" in body["message"], body
    assert metric(node, f'cachenode_object_requests_total{{namespace="{NS}",op="put",result="too_large"}}') == 1


def _post(url: str, op: str, body: bytes, writer: str | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{url}{OBJECTS_PATH}{op}", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}", **({ow.WRITER_HEADER: writer} if writer else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_put_cut_off_mid_body_leaves_nothing_visible(nodes):
    node = nodes.start(*OBJECT_ARGS)
    first, second = os.urandom(100 * KiB), os.urandom(100 * KiB)
    head = ow.frame(ow.call_header(ow.PUT, NS, ["first", "second"], [len(first), len(second)],
                                   [digest(first), digest(second)]))
    body = head + first + second
    host, port = node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((f"POST {OBJECTS_PATH}put HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"{ow.WRITER_HEADER}: {WRITER}\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        s.sendall(body[:len(head) + len(first) + 1000])  # the first object whole, the second cut off
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while metric(node, 'cachenode_errors_total{kind="bad_request"}') + metric(node, "cachenode_client_disconnects_total") < 1:
        assert time.monotonic() < deadline, "the node never noticed the cut-off put"
        time.sleep(0.1)
    with client(node.url) as r:
        assert r.exists(["first", "second"]) == [False, False]
        assert r.get(["first", "second"]) == [None, None]
        # the same batch sent whole is stored
        assert r.put({"first": first, "second": second}) == {"first": "stored", "second": "stored"}


def test_one_namespace_never_reads_overwrites_or_deletes_anothers(nodes):
    c = nodes.cluster(2, *OBJECT_ARGS)
    with client(c.urls[0]) as kv, client(c.urls[1], OTHER, OTHER_WRITER) as other:
        assert kv.put({"shared-name": b"kv bytes"}) == {"shared-name": "stored"}
        assert other.get(["shared-name"]) == [None] and other.exists(["shared-name"]) == [False]
        assert other.put({"shared-name": b"other bytes"}) == {"shared-name": "stored"}  # its own, not "exists"
        other.delete(["shared-name"])
        assert [bytes(v) for v in kv.get(["shared-name"])] == [b"kv bytes"]
        assert other.get(["shared-name"]) == [None]
    with client(c.urls[0], OTHER, WRITER) as w, pytest.raises(Forbidden, match="wrong writer credential"):
        w.put({"x": b"kv's writer cannot write other"})


def test_concurrent_puts_of_one_key_keep_one_whole_object(nodes):
    c = nodes.cluster(3, *OBJECT_ARGS)
    values = [bytes([i]) * (256 * KiB + i) for i in range(12)]
    barrier = threading.Barrier(len(values))

    def put(i: int) -> str:
        with client(c.urls[i % 3]) as w:
            barrier.wait()
            return w.put({"contended": values[i]})["contended"]

    with ThreadPoolExecutor(len(values)) as pool:
        results = list(pool.map(put, range(len(values))))
    assert sorted(results) == ["exists"] * (len(values) - 1) + ["stored"]
    winner = values[results.index("stored")]
    for url in c.urls:
        with client(url, writer=None) as r:
            assert bytes(r.get(["contended"])[0]) == winner


def _stored_on(nodes, n: int, count: int, size: int, victim: int):
    """A cluster of n holding `count` objects: (cluster, objects, the keys node `victim` owns)."""
    c = nodes.cluster(n, *OBJECT_ARGS)
    objs = {f"k{i}": os.urandom(size) for i in range(count)}
    with client(c.urls[0]) as w:
        w.put(objs)
    ids = c.ids()
    theirs = {k for k in objs if rank(object_key(NS, k), ids)[0] == ids[victim]}
    assert theirs and len(theirs) < len(objs)
    return c, objs, theirs


def test_a_node_killed_mid_get_is_a_miss_within_the_peer_timeout(nodes):
    victim = 2
    c, objs, theirs = _stored_on(nodes, 3, 60, 64 * KiB, victim)
    with client(c.urls[0], writer=None) as r:
        c.procs[victim].proc.send_signal(signal.SIGSTOP)  # the owner hangs mid-request ...
        results: list = []
        t0 = time.monotonic()
        getter = threading.Thread(target=lambda: results.append(r.get(list(objs))))
        getter.start()
        time.sleep(0.5)
        c.procs[victim].proc.send_signal(signal.SIGKILL)  # ... and dies while the get waits for it
        getter.join(20)
        took = time.monotonic() - t0
        got = results[0]
        assert took < 3 + 2, took  # never past the peer timeout (3 s) by much
        for k, v in zip(objs, got):
            assert (v is None) if k in theirs else bytes(v) == objs[k]
        # later gets: the dead owner's keys are misses, the others still hits
        got = r.get(list(objs))
        assert [v is None for v in got] == [k in theirs for k in objs]


def test_objects_never_evict_checkpoint_blocks(blobs, nodes, proxy):
    """Fill the object budgets many times over while a checkpoint is cached: every block of the
    checkpoint is still a hit (no origin read) afterwards."""
    node = nodes.start("--block-size", str(BS), "--memory", str(40 * BS), "--disk", str(40 * BS),
                       "--object-memory", str(512 * KiB), "--object-disk", str(1 * MiB), *OBJECT_ARGS)
    data = os.urandom(32 * BS)
    url = blobs.put("ckpt.bin", data)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        assert f.read() == data
    reads = proxy.reads_of(blobs.path("ckpt.bin"))
    with client(node.url) as w:
        for round_ in range(40):  # 40 x 256 KiB = 10 MiB of objects: 20x the memory budget, 10x disk
            w.put({f"flood/{round_}/{i}": os.urandom(32 * KiB) for i in range(8)})
        assert w.get(["flood/0/0"]) == [None]  # the oldest objects were evicted ...
        assert w.get(["flood/39/7"])[0] is not None
    m = metrics(node)
    assert m["cachenode_object_memory_used_bytes"] <= 512 * KiB and m["cachenode_object_disk_used_bytes"] <= MiB
    misses = metric(node, "cachenode_misses_total")
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:  # ... and no block was
        assert f.read() == data
    assert metric(node, "cachenode_misses_total") == misses
    assert proxy.reads_of(blobs.path("ckpt.bin")) == reads


def test_a_get_from_a_silent_owner_never_blocks_past_the_peer_timeout(nodes):
    c, objs, theirs = _stored_on(nodes, 2, 30, 4 * KiB, 1)
    victim = c.procs[1].proc
    with client(c.urls[0], writer=None) as r:
        victim.send_signal(signal.SIGSTOP)  # accepts connections (the kernel does), never answers
        try:
            t0 = time.monotonic()
            got = r.get(list(objs))
            took = time.monotonic() - t0
        finally:
            victim.send_signal(signal.SIGCONT)
    assert took < 3 + 1.0, took  # one deadline for the whole call: the peer timeout (3 s)
    assert [v is None for v in got] == [k in theirs for k in objs]


@pytest.mark.parametrize("args, message", [
    (("--writer-token", "kv"), "expected NAME=TOKEN"),
    (("--namespace", "bad name"), "namespace 'bad name' is not a valid name"),
    (("--namespace", "kv", "--writer-token", "other=x"), "writer credential for other: not a --namespace"),
])
def test_serve_refuses_bad_object_options_naming_them(args, message, tmp_path):
    from click.testing import CliRunner

    from cachenode.cli import main

    r = CliRunner().invoke(main, ["serve", "--no-auth", "--cache-dir", str(tmp_path), *args])
    assert r.exit_code == 2 and message in r.output, r.output


def test_a_probe_answered_with_an_error_ends_the_pause(nodes):
    """A paused member's probe that gets an error of ours (it is alive) ends its pause: the
    next get asks it again and gets the same error, not a silent miss for good."""
    node = nodes.start("--namespace", "served")
    with ObjectClient([node.url], TOKEN, namespace="elsewhere") as c:
        with pytest.raises(Forbidden):
            c.get(["k"])
        cluster = c.aclient.cluster
        (only,) = c._io.run(cluster.require())[1]
        cluster.pauses.failed(only.id)  # as after a dropped transfer
        time.sleep(1.05)  # the first pause is over: the next get is the probe
        with pytest.raises(Forbidden):
            c.get(["k"])
        with pytest.raises(Forbidden):  # asked again, not skipped as a member still probing
            c.get(["k"])
