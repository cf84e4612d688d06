"""Fixtures that start real services: Azurite, a counting proxy in front of it, node processes."""

from __future__ import annotations

import itertools
import json
import os
import time
import urllib.request
import uuid

import pytest
from azure.storage.blob import BlobServiceClient

from blobproxy import BlobProxy
from cachenode.bench.services import AZURITE_ACCOUNT, Azurite, NodeProcess, connection_string, free_port
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
        self._n = itertools.count()

    def start(self, *args: str, cache_dir=None, token: str | None = TOKEN,
              conn_str: str | None = None, port: int = 0, wrap: tuple[str, ...] = ()) -> NodeProcess:
        cache_dir = cache_dir or self.tmp_path / f"node{next(self._n)}"
        node = NodeProcess(cache_dir, token=token, wrap=wrap, port=port, args=args,
                           conn_str=conn_str or connection_string(self.proxy.port))
        self.procs.append(node)
        return node.start()

    def stop_all(self) -> None:
        for p in self.procs:
            p.stop()

    def cluster(self, n: int, *args: str) -> "Cluster":
        """n nodes on fixed free ports sharing a peers file; returns once all see each other."""
        ports = [free_port() for _ in range(n)]
        peers = self.tmp_path / f"peers{next(self._n)}.txt"
        peers.write_text("".join(f"http://127.0.0.1:{p}\n" for p in ports))
        procs = [self.start("--peers-file", str(peers), *args, port=p) for p in ports]
        c = Cluster(procs, peers, args, self)
        c.wait_members(n)
        return c


class Cluster:
    def __init__(self, procs: list[NodeProcess], peers_file, args, nodes: "Nodes") -> None:
        self.procs = procs
        self.peers_file = peers_file
        self.args = args
        self._nodes = nodes

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.procs]

    def ids(self) -> list[str]:
        return [u.removeprefix("http://") for u in self.urls]

    def add(self) -> NodeProcess:
        port = free_port()
        proc = self._nodes.start("--peers-file", str(self.peers_file), *self.args, port=port)
        self.procs.append(proc)
        self.peers_file.write_text("".join(f"{u}\n" for u in self.urls))
        return proc

    def views(self) -> list[list[dict]]:
        return [members_of(p.url) for p in self.procs if p.proc is not None]

    def wait_members(self, n: int, healthy: int | None = None, timeout: float = 15.0) -> None:
        healthy = n if healthy is None else healthy
        deadline = time.monotonic() + timeout
        while True:
            views = self.views()
            if all(len(v) == n and sum(m["healthy"] for m in v) == healthy for v in views):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"members never settled at {n} ({healthy} healthy): {views}")
            time.sleep(0.1)


def members_of(url: str) -> list[dict]:
    req = urllib.request.Request(f"{url}/v1/members", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())["members"]


@pytest.fixture
def nodes(tmp_path, proxy):
    n = Nodes(tmp_path, proxy)
    yield n
    n.stop_all()


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch):
    # Tests pass nodes, tokens and credentials explicitly; a developer's environment must not leak in.
    for key in list(os.environ):
        if key.startswith(("CACHENODE_", "AZURE_STORAGE_")):
            monkeypatch.delenv(key)
