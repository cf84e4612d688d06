"""Fixtures that start real services: Azurite, a counting proxy in front of it, node processes."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest
from azure.storage.blob import BlobServiceClient

from cachenode.testing.azurite import AZURITE_ACCOUNT, Azurite, connection_string
from cachenode.testing.blobproxy import BlobProxy
from cachenode.testing.cluster import LocalCluster
from cachenode.testing.cluster import members_of as _members_of
from cachenode.testing.node import NodeProcess
from helpers import TOKEN


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    with Azurite(tmp_path_factory.mktemp("azurite")) as az:
        yield az


@pytest.fixture(scope="session")
def proxy(azurite):
    p = BlobProxy(f"http://127.0.0.1:{azurite.port}").start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def blob_service(azurite):
    with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
        yield svc


class Blobs:
    """A fresh container in Azurite, with helpers to put blobs and build their URLs."""

    def __init__(self, svc: BlobServiceClient, azurite: Azurite) -> None:
        self.svc = svc
        self.azurite = azurite
        self.container = f"t{uuid.uuid4().hex[:12]}"
        svc.create_container(self.container)

    def put(self, name: str, data: bytes) -> str:
        self.svc.get_blob_client(self.container, name).upload_blob(data, overwrite=True)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.azurite.endpoint}/{self.container}/{name}"

    def path(self, name: str) -> str:
        """The path the proxy sees for this blob."""
        return f"/{AZURITE_ACCOUNT}/{self.container}/{name}"


@pytest.fixture
def blobs(blob_service, azurite):
    return Blobs(blob_service, azurite)


class Nodes:
    """Starts node processes whose origin is Azurite behind the counting proxy."""

    def __init__(self, tmp_path, proxy: BlobProxy) -> None:
        self.tmp_path = tmp_path
        self.proxy = proxy
        self.procs: list[NodeProcess] = []
        self.clusters: list[LocalCluster] = []
        self._n = itertools.count()

    def start(self, *args: str, cache_dir=None, token: str | None = TOKEN,
              conn_str: str | None = None, port: int = 0, wrap: tuple[str, ...] = ()) -> NodeProcess:
        cache_dir = cache_dir or self.tmp_path / f"node{next(self._n)}"
        node = NodeProcess(cache_dir, token=token, wrap=wrap, port=port, args=args,
                           conn_str=connection_string(self.proxy.port) if conn_str is None else conn_str)
        self.procs.append(node)
        return node.start()

    def stop_all(self) -> None:
        for c in self.clusters:
            c.stop()
        for p in self.procs:
            p.stop()

    def cluster(self, n: int, *args: str) -> LocalCluster:
        """n nodes on loopback sharing a peers file; returns once all see each other."""
        c = LocalCluster(self.tmp_path / f"cluster{next(self._n)}", n, token=TOKEN,
                         conn_str=connection_string(self.proxy.port), args=args)
        self.clusters.append(c)
        return c.start()


def members_of(url: str) -> list[dict]:
    return _members_of(url, TOKEN)


@pytest.fixture
def nodes(tmp_path, proxy):
    """Nodes (and clusters, `nodes.cluster(n)`) of one test, stopped after it."""
    n = Nodes(tmp_path, proxy)
    yield n
    n.stop_all()


@pytest.fixture(scope="module")
def module_nodes(tmp_path_factory, proxy):
    """The same, shared by a module's tests (a cluster started once for many read-only tests)."""
    n = Nodes(tmp_path_factory.mktemp("nodes"), proxy)
    yield n
    n.stop_all()


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch):
    # Tests pass nodes, tokens and credentials explicitly; a developer's environment must not leak in.
    for key in list(os.environ):
        if key.startswith(("CACHENODE_", "AZURE_STORAGE_")):
            monkeypatch.delenv(key)
