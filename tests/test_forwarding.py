"""Node-to-node forwarding is node traffic: a loader cannot claim it and make a non-owner fill."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from urllib.parse import urlencode

import cachenode
from cachenode.bench.services import AZURITE_ACCOUNT
from helpers import BS, TOKEN, metric


def _get(url: str, headers: dict) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def test_loader_set_forwarded_marker_does_not_make_non_owners_fill(blobs, nodes, proxy):
    c = nodes.cluster(3, "--block-size", f"{BS}")
    n = 12
    data = os.urandom(n * BS)
    url = blobs.put("fwd.bin", data)
    with cachenode.Client(nodes=[c.urls[0]], token=TOKEN) as client:
        st = client.stat(url)
    base = {"kind": "azure", "account": AZURITE_ACCOUNT, "container": blobs.container, "path": "fwd.bin",
            "etag": st["etag"], "size": str(st["size"]), "bs": str(BS)}
    for marker in ("1", TOKEN, "true"):
        for i in range(n):
            for node_url in c.urls:  # every node, so two of the three are non-owners
                status = _get(f"{node_url}/v1/block?{urlencode({**base, 'index': str(i)})}",
                              {"X-Cachenode-Forwarded": marker})
                assert status == 403
    with cachenode.open(url, nodes=[c.urls[1]], token=TOKEN) as f:
        assert f.read() == data
    for i in range(n):  # asked without the marker, non-owners forward to the owner (real node traffic)
        for node_url in c.urls:
            assert _get(f"{node_url}/v1/block?{urlencode({**base, 'index': str(i)})}", {}) == 200
    assert sum(metric(p, "cachenode_forwarded_total") for p in c.procs) == 2 * n
    assert proxy.reads_of(blobs.path("fwd.bin")) == n  # the origin saw the blob once
    assert sum(metric(p, "cachenode_fills_total") for p in c.procs) == n
