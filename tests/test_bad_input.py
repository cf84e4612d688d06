"""Bad input gets a clear error naming it, and loses nothing."""

from __future__ import annotations

import os

import pytest

import cachenode
from cachenode.client.api import BypassWarning
from cachenode.credentials import AzureCredentials
from cachenode.testing.azurite import connection_string
from cachenode.testing.ports import free_port
from helpers import BS, TOKEN, metric
from helpers import http_get as _get


@pytest.fixture
def node(nodes):
    return nodes.start("--block-size", f"{BS}")


@pytest.mark.parametrize("url, match", [
    ("", "empty"),
    ("s3://bucket/key", "unsupported URL scheme"),
    ("az://models/x.bin", "names no storage account"),
    ("http://127.0.0.1:1/devstoreaccount1/UPPER/x", "not a valid container name"),
    ("http://127.0.0.1:1/devstoreaccount1/models/", "names no blob"),
    ("https://acct.blob.core.windows.net/models", "names no blob"),
    ("file://otherhost/etc/passwd", "must be local"),
    ("file:relative/path", "absolute path"),
])
def test_malformed_urls(url, match):
    with pytest.raises(cachenode.InvalidSource, match=match):
        cachenode.open(url, nodes=[])


def test_container_outside_allow_list_is_refused_and_named(blobs, nodes):
    node = nodes.start("--allow", "devstoreaccount1/only-this-one")
    url = blobs.put("x.bin", b"data")
    with pytest.raises(cachenode.Forbidden, match=f"{blobs.container}/x.bin is not on this node's allow-list"):
        cachenode.open(url, nodes=[node.url], token=TOKEN)


def test_other_account_is_never_proxied(node):
    with pytest.raises(cachenode.Forbidden, match="otheraccount"):
        cachenode.open("https://otheraccount.blob.core.windows.net/models/m.bin", nodes=[node.url], token=TOKEN)


def test_local_files_are_refused_unless_allowed(nodes, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"do not serve")
    node = nodes.start()
    with pytest.raises(cachenode.Forbidden, match="allow-list"):
        cachenode.open(f"file://{secret}", nodes=[node.url], token=TOKEN)
    shared = tmp_path / "shared"
    shared.mkdir()
    data = os.urandom(3 * BS + 1)
    (shared / "m.bin").write_bytes(data)
    node2 = nodes.start("--block-size", f"{BS}", "--allow", f"file://{shared}")
    with cachenode.open(f"file://{shared}/m.bin", nodes=[node2.url], token=TOKEN) as f:
        assert f.read() == data
    with pytest.raises(cachenode.InvalidSource, match="'..' segment"):  # ../ never escapes the root
        cachenode.open(f"file://{shared}/../secret.bin", nodes=[node2.url], token=TOKEN)


def test_missing_and_wrong_token(blobs, node):
    url = blobs.put("t.bin", b"abc")
    with pytest.raises(cachenode.Unauthorized, match="missing cluster token"):
        cachenode.open(url, nodes=[node.url], token=None)
    with pytest.raises(cachenode.Forbidden, match="wrong cluster token"):
        cachenode.open(url, nodes=[node.url], token="nope")
    assert _get(f"{node.url}/metrics", token=None)[0] == 401
    assert _get(f"{node.url}/metrics", token="nope")[0] == 403
    assert _get(f"{node.url}/healthz", token=None)[0] == 200  # the only open endpoint


def test_blob_replaced_after_open_raises_source_changed(blobs, node, blob_service):
    url = blobs.put("swap.bin", b"A" * (3 * BS))
    # readahead off, so block 2 is certainly asked for after the swap
    with cachenode.open(url, nodes=[node.url], token=TOKEN, readahead=0) as f:
        assert f.read(10) == b"A" * 10  # version pinned
        blobs.put("swap.bin", b"B" * (3 * BS))
        f.seek(2 * BS)
        with pytest.raises(cachenode.SourceChanged, match="swap.bin"):
            f.read(BS)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:  # a new open sees the new version
        assert f.read() == b"B" * (3 * BS)


def test_block_requests_out_of_range_or_malformed(blobs, node):
    url = blobs.put("b.bin", os.urandom(2 * BS))
    info = cachenode.Client(nodes=[node.url], token=TOKEN)
    try:
        st = info.stat(url)
    finally:
        info.close()
    from urllib.parse import urlencode
    base = {"kind": "azure", "account": "devstoreaccount1", "container": blobs.container,
            "path": "b.bin", "etag": st["etag"], "size": str(st["size"]), "bs": str(BS), "index": "0"}

    def ask(**over):
        q = {**base, **over}
        q = {k: v for k, v in q.items() if v is not None}
        return _get(f"{node.url}/v1/block?{urlencode(q)}")

    assert ask()[0] == 200
    status, body = ask(index="2")
    assert status == 400 and "block index 2 out of range" in body["message"]
    status, body = ask(index="-1")
    assert status == 400 and "must not be negative" in body["message"]
    status, body = ask(index="x")
    assert status == 400 and "not an integer" in body["message"]
    status, body = ask(bs="1")
    assert status == 400 and "block size 1 out of range" in body["message"]
    status, body = ask(etag=None)
    assert status == 400 and "missing 'etag'" in body["message"]
    status, body = ask(kind="s3")
    assert status == 400 and "unknown source kind" in body["message"]
    status, body = ask(etag='"0xdeadbeef"')
    assert status == 412 and body["error"] == "source_changed"


def test_missing_blob_and_container(blobs, node):
    with pytest.raises(cachenode.SourceNotFound, match="nope.bin"):
        cachenode.open(blobs.url("nope.bin"), nodes=[node.url], token=TOKEN)
    with pytest.raises(FileNotFoundError, match="container 'no-such-container'"):
        cachenode.open(f"{blobs.azurite.endpoint}/no-such-container/x.bin", nodes=[node.url], token=TOKEN)


def test_origin_unreachable_is_named(blobs, nodes):
    dead = free_port()
    node = nodes.start("--origin-retries", "1", conn_str=connection_string(dead))
    with pytest.raises(cachenode.OriginUnavailable, match=f"127.0.0.1:{dead}"):
        cachenode.open(blobs.url("x.bin"), nodes=[node.url], token=TOKEN)


def test_origin_5xx_is_retried(blobs, node, proxy):
    data = os.urandom(2 * BS)
    url = blobs.put("flaky.bin", data)
    proxy.fail_next("flaky.bin", 2, status=503)
    with cachenode.open(url, nodes=[node.url], token=TOKEN) as f:
        assert f.read() == data
    assert metric(node, "cachenode_fills_total") == 2


def test_no_node_reachable_bypasses_to_origin_with_one_warning(blobs, azurite):
    data = os.urandom(3 * BS)
    url = blobs.put("by.bin", data)
    creds = AzureCredentials(connection_string=azurite.connection_string)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.warns(BypassWarning, match="reading the origin directly") as record:
        with cachenode.open(url, nodes=[dead], token=TOKEN, azure=creds) as f:
            assert f.via == "origin"
            assert f.read() == data
    assert len([w for w in record if issubclass(w.category, BypassWarning)]) == 1


def test_open_is_read_only(blobs, node):
    with pytest.raises(ValueError, match="read-only"):
        cachenode.open(blobs.url("x"), "wb", nodes=[node.url])


def test_a_hung_origin_fails_a_load_in_bounded_time_naming_it(blobs, nodes):
    """An origin that accepts and never answers: the load fails within the node's origin
    timeout (plus a margin), with an error that names the origin and says it timed out —
    not after every node's peer timeout, and not with a bypass error about something else."""
    import socket
    import time

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    port = hung.getsockname()[1]
    try:
        node = nodes.start("--origin-timeout", "2", conn_str=connection_string(port))
        t0 = time.monotonic()
        with pytest.raises(cachenode.OriginUnavailable, match=rf"127\.0\.0\.1:{port}.*timed out"):
            cachenode.open(blobs.url("x.bin"), nodes=[node.url], token=TOKEN)
        assert time.monotonic() - t0 < 8
    finally:
        hung.close()


def test_when_no_node_answers_the_bypass_error_says_so_and_why_the_direct_read_failed(blobs):
    """The loader's own direct read fails too (no credentials for this account here): the error
    names both failures, not only the second (which alone reads like a credentials problem)."""
    import warnings

    dead = f"http://127.0.0.1:{free_port()}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BypassWarning)
        with pytest.raises(cachenode.CacheError) as info:
            cachenode.open(blobs.url("x.bin"), nodes=[dead], token=TOKEN,
                           azure=AzureCredentials(use_default_credential=False))
    msg = str(info.value)
    assert "no cache node answered" in msg and dead in msg, msg
    assert "directly" in msg and "failed" in msg, msg


def test_a_node_that_dies_between_members_and_stat_is_skipped_not_a_bypass(blobs, node):
    """The first listed node answers the member list, then its connection resets on the stat (it
    died in between, as a SIGKILL mid-open does): the next listed node serves the open; the
    loader must not bypass the cache with "no cache node answered"."""
    import json
    import socket
    import struct
    import threading
    import warnings

    from cachenode.transport.wire import MEMBERS_PATH

    members = json.dumps(_get(f"{node.url}{MEMBERS_PATH}")[1]).encode()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(30)

    def dying_node():
        try:
            while True:
                c, _ = srv.accept()
                head = c.recv(65536)
                if MEMBERS_PATH.encode() in head.split(b"\r\n", 1)[0]:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(members), members))
                else:  # reset, as a killed process's socket does
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
        except OSError:
            return

    threading.Thread(target=dying_node, daemon=True).start()
    data = os.urandom(2 * BS)
    url = blobs.put("dies.bin", data)
    dying = f"http://127.0.0.1:{srv.getsockname()[1]}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", BypassWarning)
            with cachenode.open(url, nodes=[dying, node.url], token=TOKEN) as f:
                assert f.via == node.url
                assert f.read() == data
    finally:
        srv.close()
