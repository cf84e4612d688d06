"""The node's HTTP API under bad and random input: named 4xx, never a 5xx, and the node stays up."""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachenode.testing.azurite import AZURITE_ACCOUNT
from helpers import BS, TOKEN, http_get, metric


def raw(node_url: str, method: str, path: str, body: bytes | None = None,
        headers: dict | None = None) -> tuple[int, bytes]:
    """One request as bytes on the wire (headers may be any bytes, as an attacker's are)."""
    u = urlsplit(node_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {"Authorization": f"Bearer {TOKEN}"}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def node(module_nodes):
    return module_nodes.start("--block-size", str(BS))


@pytest.fixture(scope="module")
def blob(node, blob_service, azurite):
    container = f"api{os.getpid()}"
    blob_service.create_container(container)
    data = os.urandom(3 * BS + 100)
    blob_service.get_blob_client(container, "b.bin").upload_blob(data)
    st_ = http_get(f"{node.url}/v1/stat?" + urlencode(
        {"kind": "azure", "account": AZURITE_ACCOUNT, "container": container, "path": "b.bin"}))[1]
    return {"kind": "azure", "account": AZURITE_ACCOUNT, "container": container, "path": "b.bin",
            "etag": st_["etag"], "size": str(st_["size"]), "bs": str(BS)}


@pytest.mark.parametrize("path", ["/v1/fill", "/v1/warm"])
@pytest.mark.parametrize("body, field", [
    (b"not json", "JSON"), (b"[1, 2]", "object"), (b"null", "object"), (b'"x"', "object"),
    (b'{"kind": 1, "path": 2, "indices": [0]}', "kind"), (b'{"kind": "azure", "indices": [0]}', "path"),
    (b'{"kind": "azure", "account": [], "container": {}, "path": "x", "indices": [0]}', "account"),
])
def test_malformed_json_bodies_get_400_naming_the_field(node, path, body, field):
    status, out = raw(node.url, "POST", path, body, {"Authorization": f"Bearer {TOKEN}",
                                                     "Content-Type": "application/json"})
    assert status == 400, (status, out)
    assert field.lower() in json.loads(out)["message"].lower(), out


def test_fill_body_with_bad_indices_gets_400(node, blob):
    for indices in ("x", [1, "2"], [True], None, [-1], [10**9]):
        body = json.dumps({**blob, "indices": indices}).encode()
        status, out = raw(node.url, "POST", "/v1/fill", body, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 400, (indices, status, out)
        assert "ind" in json.loads(out)["message"].lower(), out


@pytest.mark.parametrize("header", [b"Bearer \xff\xfe", b"\xc3\x28", b"Basic abc", b"Bearer"])
def test_bad_authorization_headers_get_401_or_403(node, header):
    status, out = raw(node.url, "GET", "/v1/members", headers={"Authorization": header})
    assert status in (401, 403), (status, out)


def test_a_made_up_etag_for_a_missing_blob_is_404(node, blob):
    q = {**blob, "path": "no-such-blob.bin", "etag": '"0x8D0000000000000"', "index": "0"}
    status, out = http_get(f"{node.url}/v1/block?{urlencode(q)}")
    assert status == 404, (status, out)


@pytest.mark.parametrize("priority", ["urgent", "", "BACKGROUND", "background "])
def test_an_unknown_priority_gets_400_naming_it(node, blob, priority):
    status, out = http_get(f"{node.url}/v1/block?{urlencode({**blob, 'index': '0', 'priority': priority})}")
    assert status == 400 and "priority" in out["message"], (status, out)


def test_a_client_hanging_up_mid_response_is_not_a_node_error(node, blob):
    import socket

    before = metric(node, 'cachenode_errors_total{kind="internal"}')
    q = urlencode({**blob, "index": "0"})
    u = urlsplit(node.url)
    for _ in range(5):
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(f"GET /v1/block?{q} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        s.recv(100)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST mid-body
    assert http_get(f"{node.url}/healthz")[0] == 200
    assert metric(node, 'cachenode_errors_total{kind="internal"}') == before


FIELDS = ["kind", "account", "container", "path", "etag", "size", "bs", "index", "verify", "indices"]
junk = st.one_of(st.text(max_size=30), st.integers(-2**70, 2**70).map(str), st.sampled_from(
    ["azure", "file", "..", "%2e%2e", "/etc/passwd", "-1", "0", "1e9", "\x00", "a/../b"]))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]),
       path=st.sampled_from(["/v1/block", "/v1/stat", "/v1/list", "/v1/fill", "/v1/warm", "/v1/members",
                             "/metrics", "/healthz", "/v1/", "/v1/block/../stat", "/nope"]),
       params=st.dictionaries(st.sampled_from(FIELDS), junk, max_size=8),
       body=st.one_of(st.none(), st.binary(max_size=64),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(
                                       st.sampled_from(FIELDS), c, max_size=5), max_leaves=10)
                      .map(lambda v: json.dumps(v).encode())))
def test_random_requests_with_a_valid_token_never_get_a_5xx(node, blob, method, path, params, body):
    status, out = raw(node.url, method, f"{path}?{urlencode(params)}", body)
    assert status < 500, (method, path, params, body, status, out[:300])


def test_the_node_survived_the_fuzzing_and_counted_no_internal_error(node):
    assert http_get(f"{node.url}/healthz")[0] == 200
    assert metric(node, 'cachenode_errors_total{kind="internal"}') == 0
