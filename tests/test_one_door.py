"""One door: every entry refuses sources that could name something the allow-list did not check."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

import cachenode
from cachenode.source import AZURE, FILE, SourceRef
from cachenode.testing.azurite import AZURITE_ACCOUNT, AZURITE_KEY
from helpers import BS, TOKEN
from helpers import http_get as _get


def _sas() -> str:
    return generate_account_sas(
        AZURITE_ACCOUNT, AZURITE_KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, list=True), expiry=datetime.now(timezone.utc) + timedelta(hours=1))


@pytest.fixture(params=["key", "sas"])
def guarded(request, blobs, blob_service, nodes, proxy):
    """A node allowed one container, with key or SAS credentials, and a secret in another container."""
    other = f"{blobs.container}x"
    blob_service.create_container(other)
    blob_service.get_blob_client(other, "secret.bin").upload_blob(b"SECRET" * 100, overwrite=True)
    allow = ("--allow", f"{AZURITE_ACCOUNT}/{blobs.container}", "--block-size", str(BS))
    if request.param == "key":
        node = nodes.start(*allow)
    else:
        node = nodes.start(*allow, "--account-name", AZURITE_ACCOUNT, "--sas-token", _sas(),
                           "--blob-endpoint", f"http://127.0.0.1:{proxy.port}/{AZURITE_ACCOUNT}", conn_str="")
    blobs.put("ok.bin", b"fine")
    return node, blobs.container, other


ESCAPES = ["../{other}/secret.bin", "%2e%2e/{other}/secret.bin", "a/./../../{other}/secret.bin",
           "x/%2E%2E/../{other}/secret.bin", "a//b.bin", "a\x00b.bin", "a\nb.bin"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_dot_segments_and_control_characters_are_refused_on_the_wire(guarded, escape):
    node, container, other = guarded
    path = escape.format(other=other)
    src = {"kind": "azure", "account": AZURITE_ACCOUNT, "container": container, "path": path}
    block = {**src, "etag": '"0x1"', "size": "600", "bs": str(BS), "index": "0"}
    for endpoint, query in (("stat", src), ("block", block), ("list", src)):
        status, body = _get(f"{node.url}/v1/{endpoint}?{urlencode(query)}")
        assert status == 400, (endpoint, status, body)
        assert body["error"] == "invalid_source", body
        assert "segment" in body["message"] or "control" in body["message"], body
        assert repr(path)[1:-1] in body["message"] or path in body["message"], body
    # the honest neighbour still works
    status, body = _get(f"{node.url}/v1/stat?{urlencode({**src, 'path': 'ok.bin'})}")
    assert status == 200, body


@pytest.mark.parametrize("escape", ["../{other}/secret.bin", "%2e%2e/{other}/secret.bin",
                                    "%252e%252e/{other}/secret.bin", "a/%2E/b.bin", "a%00b"])
def test_dot_segments_are_refused_in_urls(guarded, escape):
    node, container, other = guarded
    url = f"http://127.0.0.1:1/{AZURITE_ACCOUNT}/{container}/" + escape.format(other=other)
    with pytest.raises(cachenode.InvalidSource, match="segment|control"):
        cachenode.open(url, nodes=[node.url], token=TOKEN)


def test_blob_names_are_encoded_exactly_once(guarded, blobs):
    """Names that look encoded are names: a blob called `%41.bin` is not `A.bin`."""
    node, container, _ = guarded
    blobs.put("%41.bin", b"percent")
    blobs.put("A.bin", b"letter")
    blobs.put("sp ace#?.bin", b"odd")
    for name, data in (("%41.bin", b"percent"), ("A.bin", b"letter"), ("sp ace#?.bin", b"odd")):
        src = {"kind": "azure", "account": AZURITE_ACCOUNT, "container": container, "path": name}
        status, body = _get(f"{node.url}/v1/stat?{urlencode(src)}")
        assert status == 200 and body["size"] == len(data), (name, body)


@pytest.mark.parametrize("kind, path", [(AZURE, "a/../b"), (AZURE, "a/%2e%2e/b"), (AZURE, "a//b"),
                                        (AZURE, "a\tb"), (FILE, "/r/../etc/passwd"), (FILE, "r/x"),
                                        (FILE, "/r/./x")])
def test_a_source_cannot_even_be_constructed_non_canonical(kind, path):
    with pytest.raises(cachenode.InvalidSource):
        SourceRef(kind, AZURITE_ACCOUNT if kind == AZURE else "", "models" if kind == AZURE else "", path)
