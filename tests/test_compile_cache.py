"""Compiled kernels from the cluster: a second process compiles from the first's artifacts; bad sets are refused."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from cachenode.client.compile_artifacts import (
    chunk_key, manifest_key, sign_manifest, signing_key, split, verify_manifest,
)
from cachenode.client.compile_cache import CompileCache, compile as cached_compile
from cachenode.client.compile_dir import DirectoryCache, collect_tree, install_tree
from cachenode.client.compile_identity import compute_identity, device_description
from cachenode.client.compile_kernels import install, pack, unpack
from cachenode.client.objects import ObjectClient
from cachenode.testing.cluster import LocalCluster
from cachenode.testing.compile_child import build_model
from cachenode.testing.ports import free_port
from helpers import TOKEN

NS, WRITER = "compile", "compile-writer-secret"
WIDTH, BLOCKS = 32, 2
CHUNK = 32 * 1024  # under the nodes' --max-object-size below: a set is several objects


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Objects have no origin: no Azurite needed.
    with LocalCluster(tmp_path_factory.mktemp("cc"), 2, token=TOKEN, conn_str=None,
                      args=("--namespace", NS, "--writer-token", f"{NS}={WRITER}", "--max-object-size", "64K")) as c:
        yield c


def _child(tmp_path, name: str, spec: dict) -> dict:
    """A fresh process with fresh Inductor and Triton cache dirs."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"{name}-inductor"),
           "TRITON_CACHE_DIR": str(tmp_path / f"{name}-triton")}
    out = subprocess.run([sys.executable, "-m", "cachenode.testing.compile_child", json.dumps(spec)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT ", 1)[1])


@pytest.fixture(scope="module")
def two_processes(cluster, tmp_path_factory):
    """A enters at node 1 (one-line call), compiles cold and publishes; B enters at node 2 (context
    manager), compiles from the cluster, then a new shape, and publishes the larger set."""
    tmp = tmp_path_factory.mktemp("procs")
    base = dict(source="cluster", width=WIDTH, blocks=BLOCKS, token=TOKEN, writer_token=WRITER, namespace=NS,
                chunk_size=CHUNK)
    a = _child(tmp, "a", {**base, "api": "one_line", "nodes": [cluster.urls[0]], "shapes": [[4]]})
    b = _child(tmp, "b", {**base, "api": "context", "nodes": [cluster.urls[1]], "shapes": [[4], [3, 5]]})
    return a, b


def _cache(cluster, model, options=None, **kw) -> CompileCache:
    kw.setdefault("writer_token", WRITER)
    return CompileCache(model, options, namespace=NS, nodes=[cluster.urls[0]], token=TOKEN, chunk_size=CHUNK, **kw)


def test_the_second_process_compiles_from_the_clusters_artifacts(two_processes, cluster):
    a, b = two_processes
    assert a["load"]["version"] is None and a["counters_first"].get("fxgraph_cache_miss", 0) > 0
    assert a["publish"]["version"] == 1 and a["publish"]["chunks"] > 1  # chunked under the object limit
    # B: the published graph is a hit, nothing of it recompiled, the same output bit for bit
    assert b["load"]["version"] == 1
    assert b["counters_first"].get("fxgraph_cache_hit", 0) > 0
    assert b["counters_first"].get("fxgraph_cache_miss", 0) == 0
    assert b["out"] == a["out"] and a["eager_close"] and b["eager_close"]
    assert b["load"]["kernels"] > 0  # A's built kernel libraries came along: B's g++ builds none of them
    # Additive: B's new shape compiled and the newer set holds v1's artifacts and B's own
    assert b["publish"]["version"] == 2
    cache = _cache(cluster, build_model(WIDTH, BLOCKS))
    try:
        assert cache.newest_version() == 2
        v1, _ = cache.fetch(1)
        v2, _ = cache.fetch(2)
        assert set(v1.artifacts) < set(v2.artifacts)
    finally:
        cache.close()


def test_identity_is_computed_from_model_versions_device_and_options(cluster):
    base = compute_identity(build_model(WIDTH, BLOCKS), {})
    assert compute_identity(build_model(WIDTH, BLOCKS), {}).digest == base.digest  # weights reseeded alike
    assert compute_identity(build_model(WIDTH + 1, BLOCKS), {}).digest != base.digest
    assert compute_identity(build_model(WIDTH, BLOCKS), {"mode": "max-autotune"}).digest != base.digest
    assert compute_identity(build_model(WIDTH, BLOCKS).train(), {}).digest != base.digest
    assert compute_identity({"hidden": 8}, {}).digest != compute_identity({"hidden": 9}, {}).digest
    avx2 = device_description("cpu", "flags\t: fpu sse4_2 avx avx2 fma\n")
    avx512 = device_description("cpu", "flags\t: fpu sse4_2 avx avx2 fma avx512f avx512bw\n")
    assert avx2["isa"] != avx512["isa"] and "avx512f" in avx512["isa"]
    assert base.fields["software"]["torch"] == torch.__version__ and base.fields["device"]["kind"] == "cpu"
    # Another identity finds nothing, although a set of this model is in the cluster
    other = _cache(cluster, build_model(WIDTH, BLOCKS), {"mode": "reduce-overhead"})
    try:
        assert other.load().reason == "no set published for this identity yet"
    finally:
        other.close()


@pytest.fixture
def never_loaded(monkeypatch):
    """A refused set must never reach torch's unpickling."""
    def fail(blob):
        raise AssertionError("a refused artifact set reached torch.compiler.load_cache_artifacts")
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", fail)


def _put_set(writer: ObjectClient, identity: str, version: int, blob: bytes, key: bytes, *,
             signed_identity: str | None = None, chunks: list | None = None) -> bytes:
    chunks = split(blob, CHUNK) if chunks is None else chunks
    manifest = sign_manifest(identity=signed_identity or identity, version=version, namespace=NS, blob=blob,
                             chunks=chunks, artifacts=["inductor:x"], key=key)
    writer.put(dict(chunks))
    writer.put({manifest_key(identity, version): manifest})
    return manifest


@pytest.mark.parametrize("case", ["unsigned", "other_key", "foreign", "truncated_manifest", "altered_chunk",
                                  "missing_chunk"])
def test_truncated_foreign_or_unsigned_sets_are_refused(cluster, never_loaded, case, caplog):
    blob = os.urandom(50_000) + case.encode()  # unique per case: chunks are named by content
    cache = _cache(cluster, build_model(8, 1), {"case": case})  # an identity of its own per case
    ident, key = cache.identity.digest, signing_key(NS, WRITER)
    with ObjectClient([cluster.urls[1]], TOKEN, namespace=NS, writer_token=WRITER) as writer:
        if case == "unsigned":
            body = b'{"format":1}'
            writer.put({manifest_key(ident, 1): body})
        elif case == "other_key":
            _put_set(writer, ident, 1, blob, signing_key(NS, "someone-else"))
        elif case == "foreign":  # a genuine manifest of another identity, copied under this one's key
            _put_set(writer, ident, 1, blob, key, signed_identity=compute_identity(build_model(9, 1), {}).digest)
        elif case == "truncated_manifest":
            good = sign_manifest(identity=ident, version=1, namespace=NS, blob=blob, chunks=split(blob, CHUNK),
                                 artifacts=[], key=key)
            writer.put(dict(split(blob, CHUNK)))
            writer.put({manifest_key(ident, 1): good[:-7]})
        elif case == "altered_chunk":  # the manifest names a chunk whose object holds other bytes
            chunks = dict(split(blob, CHUNK))
            first = next(iter(chunks))
            manifest = sign_manifest(identity=ident, version=1, namespace=NS, blob=blob,
                                     chunks=list(chunks.items()), artifacts=[], key=key)
            writer.put({first: bytes(chunks[first])[:-100], **{k: v for k, v in chunks.items() if k != first}})
            writer.put({manifest_key(ident, 1): manifest})
        else:  # missing_chunk: a chunk never stored (its node died, or a cut-off publish)
            chunks = split(blob, CHUNK)
            manifest = sign_manifest(identity=ident, version=1, namespace=NS, blob=blob, chunks=chunks,
                                     artifacts=[], key=key)
            writer.put({k: v for i, (k, v) in enumerate(chunks) if i})
            writer.put({manifest_key(ident, 1): manifest})
    with caplog.at_level(logging.INFO, logger="cachenode"):
        try:
            result = cache.load()
        finally:
            cache.close()
    assert result.version is None and result.reason.startswith("refused"), result
    assert [r.levelno for r in caplog.records if r.name.startswith("cachenode")] == [logging.WARNING]


def test_a_reader_without_the_writer_credential_loads_nothing(cluster, never_loaded):
    cache = _cache(cluster, build_model(WIDTH, BLOCKS), writer_token=None)
    try:
        assert cache.load().reason == "no writer credential to verify sets with"
    finally:
        cache.close()


def test_a_verified_manifest_round_trips():
    blob = b"x" * 100_001
    chunks = split(blob, 40_000)
    assert [len(v) for _, v in chunks] == [40_000, 40_000, 20_001]  # equal chunks keep their places
    m = sign_manifest(identity="i", version=3, namespace=NS, blob=blob, chunks=chunks, artifacts=["b", "a"],
                      key=b"k")
    got = verify_manifest(m, identity="i", version=3, namespace=NS, key=b"k")
    assert got.artifacts == ("a", "b") and got.size == len(blob) and len(got.chunks) == 3
    assert chunk_key(got.chunks[0][0]) == chunks[0][0] == chunks[1][0]


def test_kernel_libraries_pack_and_install_only_at_inductor_cache_paths(tmp_path):
    lib = "ab/cabcdefghijklmnop.so"
    torch_blob, files = unpack(pack(b"torch", {lib: b"\x7fELF"}))
    assert torch_blob == b"torch" and files == {lib: b"\x7fELF"}
    assert install(tmp_path, files) == 1 and (tmp_path / lib).read_bytes() == b"\x7fELF"
    assert install(tmp_path, files) == 0  # already there: left as it is
    for bad in ("../cabcdefghijk.so", "ab/../../cabcdefghijk.so", "/etc/cabcdefghijk.so", "ab/cabcdefghijk.py"):
        with pytest.raises(ValueError):
            install(tmp_path, {bad: b"x"})
    with pytest.raises(ValueError):
        unpack(pack(b"torch", {lib: b"\x7fELF"})[:-1])  # truncated


def test_a_silent_cluster_means_a_local_compile_and_one_log_line(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    model = build_model(8, 1)
    x = torch.randn(2, 8)
    with caplog.at_level(logging.INFO, logger="cachenode"), torch.no_grad():
        compiled = cached_compile(model, nodes=[dead], token=TOKEN, writer_token=WRITER, namespace=NS)
        out = compiled(x)
        torch.testing.assert_close(out, model(x))
    ours = [r for r in caplog.records if r.name.startswith("cachenode")]
    assert len(ours) == 1 and "cluster did not answer" in ours[0].getMessage(), [r.getMessage() for r in ours]
    assert compiled.cache.offline and compiled.last_publish.reason == "cluster offline"
    compiled.cache.close()


class _FakeTorchCache:
    """Stands in for Inductor's in-process artifact record (torch.compiler save/load) so the claim
    race runs without compiling: a save is every name compiled or loaded so far."""

    def __init__(self, names):
        self.names = set(names)

    def save(self):
        names = sorted(self.names)
        return json.dumps(names).encode(), SimpleNamespace(artifacts={"inductor": names})

    def load(self, blob):
        self.names |= set(json.loads(blob))
        return SimpleNamespace(artifacts={"inductor": json.loads(blob)})


class _StaleCache(CompileCache):
    """A publisher that probed before another one claimed: its view of the newest version is old."""

    def newest_version(self) -> int:
        return 0


def test_concurrent_publishers_never_overwrite_and_end_with_the_union(cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # no kernel libraries but the fakes'
    model, options = build_model(8, 2), {"case": "race"}
    first, second = _FakeTorchCache({"a", "b"}), _FakeTorchCache({"b", "c"})
    winner = _cache(cluster, model, options)
    loser = _StaleCache(model, options, namespace=NS, nodes=[cluster.urls[1]], token=TOKEN, writer_token=WRITER,
                        chunk_size=CHUNK)
    try:
        monkeypatch.setattr(torch.compiler, "save_cache_artifacts", first.save)
        assert winner.publish().version == 1
        # The loser thinks nothing is published, claims v1, loses it, takes v1 in, claims v2 with the union
        monkeypatch.setattr(torch.compiler, "save_cache_artifacts", second.save)
        monkeypatch.setattr(torch.compiler, "load_cache_artifacts", second.load)
        result = loser.publish()
        assert result.lost_claims == [1] and result.version == 2
        v1, _ = winner.fetch(1)
        v2, _ = winner.fetch(2)
        assert set(v1.artifacts) == {"inductor:a", "inductor:b"}  # the first writer's set stands
        assert set(v2.artifacts) == {"inductor:a", "inductor:b", "inductor:c"}
        # Nothing new since: a third publish claims nothing
        assert loser.publish().version is None
    finally:
        winner.close()
        loser.close()


def test_a_publisher_without_the_namespaces_credential_is_refused_by_the_nodes(cluster, monkeypatch, tmp_path,
                                                                               caplog):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", _FakeTorchCache({"z"}).save)
    cache = _cache(cluster, build_model(8, 3), writer_token="not-the-writer-credential")
    try:
        with caplog.at_level(logging.INFO, logger="cachenode"):
            result = cache.publish()
        assert result.version is None and result.reason.startswith("refused by the nodes"), result
        assert [r.levelno for r in caplog.records if r.name.startswith("cachenode")] == [logging.WARNING]
    finally:
        cache.close()
    reader = _cache(cluster, build_model(8, 3))
    try:
        assert reader.newest_version() == 0  # nothing of it was stored
    finally:
        reader.close()


def test_an_engines_compile_dir_crosses_hosts_as_a_signed_set(cluster, tmp_path):
    """vLLM's way: the engine's own cache directory, written by one host, appears on another."""
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2}
    one, two = tmp_path / "host1", tmp_path / "host2"
    (one / "torch_aot_compile" / "910ae8" / "inductor_cache" / "ha").mkdir(parents=True)
    (one / "torch_aot_compile" / "910ae8" / "inductor_cache" / "ha" / "chau.main.so").write_bytes(b"\x7fELF lib")
    (one / "torch_aot_compile" / "910ae8" / "rank_0_0").mkdir()
    (one / "torch_aot_compile" / "910ae8" / "rank_0_0" / "model").write_bytes(b"aot pickle")
    kw = dict(namespace=NS, token=TOKEN, writer_token=WRITER, chunk_size=CHUNK, engine="vllm")
    with DirectoryCache(config, one, nodes=[cluster.urls[0]], **kw):  # loads nothing yet; publishes on exit
        pass
    second = DirectoryCache(config, two, nodes=[cluster.urls[1]], **kw)
    try:
        loaded = second.load()
    finally:
        second.close()
    assert loaded.version == 1 and loaded.kernels == 2
    assert collect_tree(two) == collect_tree(one)
    for bad in ("../x", "a/../../x", "/etc/x", ".hidden/x", "a//b"):
        with pytest.raises(ValueError):
            install_tree(tmp_path / "host3", {bad: b"x"})
