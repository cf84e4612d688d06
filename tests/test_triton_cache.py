"""Triton's remote cache backend over cluster objects: its get/put contract, and Triton's own manager when Triton is here."""

from __future__ import annotations

import importlib.util

import pytest

from cachenode.client.objects import ObjectClient
from cachenode.client.triton_cache import CachenodeTritonCache
from cachenode.testing.cluster import LocalCluster
from helpers import TOKEN

NS, WRITER = "compile", "triton-writer-secret"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("tc"), 2, token=TOKEN, conn_str=None,
                      args=("--namespace", NS, "--writer-token", f"{NS}={WRITER}")) as c:
        yield c


@pytest.fixture
def env(monkeypatch, cluster):
    monkeypatch.setenv("CACHENODE_NODES", ",".join(cluster.urls))
    monkeypatch.setenv("CACHENODE_TOKEN", TOKEN)
    monkeypatch.setenv("CACHENODE_WRITER_TOKEN", WRITER)
    monkeypatch.setenv("CACHENODE_COMPILE_NAMESPACE", NS)


def test_get_returns_what_put_stored_and_only_that(env, cluster):
    # What Triton calls: backend(key); put(filename, bytes); get([filenames]) -> {filename: bytes} of hits
    a = CachenodeTritonCache("KEYA")
    a.put("k.cubin", b"\x7fELF kernel")
    a.put("k.json", b'{"name": "k"}')
    b = CachenodeTritonCache("KEYA")  # another process's backend for the same kernel key
    assert b.get(["k.cubin", "k.json", "absent.ptx"]) == {"k.cubin": b"\x7fELF kernel", "k.json": b'{"name": "k"}'}
    assert CachenodeTritonCache("KEYB").get(["k.cubin"]) == {}  # another kernel's key: a miss


def test_unsigned_or_foreign_signed_files_are_misses(env, cluster):
    with ObjectClient(cluster.urls, TOKEN, namespace=NS, writer_token=WRITER) as w:
        w.put({"triton/KEYC/k.cubin": b"\0" * 32 + b"evil"})  # stored by a writer that did not sign
        # stored through the namespace's writer, signed with another secret
        CachenodeTritonCache("KEYC", client=w, writer_token="another-secret").put("k.json", b"{}")
    assert CachenodeTritonCache("KEYC").get(["k.cubin", "k.json"]) == {}


def test_a_silent_cluster_is_a_miss(monkeypatch):
    monkeypatch.setenv("CACHENODE_NODES", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("CACHENODE_TOKEN", TOKEN)
    monkeypatch.setenv("CACHENODE_WRITER_TOKEN", WRITER)
    backend = CachenodeTritonCache("KEYD")
    assert backend.get(["k.cubin"]) == {}
    backend.put("k.cubin", b"x")  # does not raise: Triton goes on with its local file


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_tritons_own_remote_cache_manager_round_trips_through_the_cluster(env, monkeypatch, tmp_path):
    """Triton's RemoteCacheManager (what a GPU host runs) with our backend: it loads the class from
    TRITON_REMOTE_CACHE_BACKEND, checks it is a RemoteCacheBackend, puts files and groups, and a
    second manager with an empty local dir gets them back. File handling only: no GPU compiles."""
    from triton.runtime.cache import RemoteCacheManager

    monkeypatch.setenv("TRITON_REMOTE_CACHE_BACKEND", "cachenode.client.triton_cache:CachenodeTritonCache")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "one"))
    first = RemoteCacheManager("KERNELKEY")
    p1 = first.put(b"cubin bytes", "add_kernel.cubin")
    p2 = first.put('{"num_warps": 4}', "add_kernel.json", binary=False)
    first.put_group("add_kernel.json", {"add_kernel.cubin": p1, "add_kernel.json": p2})
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "two"))
    second = RemoteCacheManager("KERNELKEY")
    group = second.get_group("add_kernel.json")
    assert group is not None and set(group) == {"add_kernel.cubin", "add_kernel.json"}
    assert open(group["add_kernel.cubin"], "rb").read() == b"cubin bytes"
    assert str(tmp_path / "two") in group["add_kernel.cubin"]
