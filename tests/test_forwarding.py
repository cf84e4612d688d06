"""Node-to-node forwarding is node traffic: a loader cannot claim it and make a non-owner fill."""

from __future__ import annotations

import os
from urllib.parse import urlencode

import cachenode
from cachenode.testing.azurite import AZURITE_ACCOUNT
from helpers import BS, TOKEN, http_get, metric


def _blob_fields(blobs, c, name: str, data: bytes) -> dict:
    """Put `data` as blob `name`; the block request fields for it (stat through the cluster)."""
    url = blobs.put(name, data)
    with cachenode.Client(nodes=[c.urls[0]], token=TOKEN) as client:
        st = client.stat(url)
    return {"kind": "azure", "account": AZURITE_ACCOUNT, "container": blobs.container, "path": name,
            "etag": st["etag"], "size": str(st["size"]), "bs": str(BS)}


def test_loader_set_forwarded_marker_does_not_make_non_owners_fill(blobs, nodes, proxy):
    c = nodes.cluster(3, "--block-size", f"{BS}")
    n = 12
    data = os.urandom(n * BS)
    base = _blob_fields(blobs, c, "fwd.bin", data)
    url = blobs.url("fwd.bin")
    for marker in ("1", TOKEN, "true"):
        for i in range(n):
            for node_url in c.urls:  # every node, so two of the three are non-owners
                status, _ = http_get(f"{node_url}/v1/block?{urlencode({**base, 'index': str(i)})}",
                                     headers={"X-Cachenode-Forwarded": marker})
                assert status == 403
    with cachenode.open(url, nodes=[c.urls[1]], token=TOKEN) as f:
        assert f.read() == data
    for i in range(n):  # asked without the marker, non-owners forward to the owner (real node traffic)
        for node_url in c.urls:
            assert http_get(f"{node_url}/v1/block?{urlencode({**base, 'index': str(i)})}")[0] == 200
    assert sum(metric(p, "cachenode_forwarded_total") for p in c.procs) == 2 * n
    assert proxy.reads_of(blobs.path("fwd.bin")) == n  # the origin saw the blob once
    assert sum(metric(p, "cachenode_fills_total") for p in c.procs) == n


def test_a_separate_node_token_keeps_even_cluster_token_holders_out(blobs, nodes, proxy):
    """With --node-token, the marker a loader could derive from the cluster token is refused too,
    and the nodes still forward to each other."""
    import hashlib
    import hmac

    c = nodes.cluster(2, "--block-size", f"{BS}", "--node-token", "only-for-nodes")
    data = os.urandom(6 * BS)
    url = blobs.put("nt.bin", data)
    with cachenode.Client(nodes=[c.urls[0]], token=TOKEN) as client:
        st = client.stat(url)
    derived = hmac.new(TOKEN.encode(), b"cachenode node-to-node v1", hashlib.sha256).hexdigest()
    q = {"kind": "azure", "account": AZURITE_ACCOUNT, "container": blobs.container, "path": "nt.bin",
         "etag": st["etag"], "size": str(st["size"]), "bs": str(BS), "index": "0"}
    for node_url in c.urls:
        assert http_get(f"{node_url}/v1/block?{urlencode(q)}", headers={"X-Cachenode-Forwarded": derived})[0] == 403
    for i in range(6):
        for node_url in c.urls:
            assert http_get(f"{node_url}/v1/block?{urlencode({**q, 'index': str(i)})}")[0] == 200
    assert sum(metric(p, "cachenode_forwarded_total") for p in c.procs) == 6
    assert proxy.reads_of(blobs.path("nt.bin")) == 6


def test_a_loader_claiming_every_other_node_dead_does_not_make_a_non_owner_fill(blobs, nodes, proxy):
    """The avoid list is a client's word: a node checks it before routing around a member, so
    "everyone but you is dead" still sends each block to its live owner."""
    c = nodes.cluster(3, "--block-size", f"{BS}")
    n = 12
    base = _blob_fields(blobs, c, "avoid.bin", os.urandom(n * BS))
    with cachenode.Client(nodes=[c.urls[0]], token=TOKEN) as client:
        ids = [m.id for m in client.members()]
    for i in range(n):
        for node_url in c.urls:
            q = urlencode({**base, "index": str(i)})
            assert http_get(f"{node_url}/v1/block?{q}", headers={"X-Cachenode-Avoid": ",".join(ids)})[0] == 200
    assert proxy.reads_of(blobs.path("avoid.bin")) == n  # each block filled once, by its owner
    assert sum(metric(p, "cachenode_fills_total") for p in c.procs) == n
