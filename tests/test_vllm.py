"""vLLM (the CPU build) loads a tiny random Llama through the cluster with `--load-format cachenode`,
from the mount, and from local disk, with the same greedy tokens; blob storage is read once."""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

import pytest

from cachenode.testing.engine_run import run_engine
from cachenode.testing.azurite import AZURITE_ACCOUNT
from cachenode.testing.cluster import LocalCluster
from cachenode.testing.mount import MountProcess
from helpers import BS, TOKEN, metric

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]', see bench/setup.sh)")

PROMPTS = ["the cache node reads", "a blob of weights", "tokens from storage"]
MODEL = "tiny"  # the model's folder in the container


def _files(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in root.iterdir() if p.is_file()}


def _origin_bytes(cluster: LocalCluster) -> float:
    return sum(metric(p, "cachenode_origin_bytes_total") for p in cluster.procs)


@pytest.fixture(scope="module")
def world(tmp_path_factory, blob_service, azurite):
    """The model on local disk and in Azurite (container on the nodes' allow-list), 3 nodes."""
    from cachenode.testing.tiny_llama import build

    base = tmp_path_factory.mktemp("vllm")
    local = build(base / "local" / MODEL, shard="1MB")
    files = _files(local)
    assert sum(n.endswith(".safetensors") for n in files) >= 2
    container = f"v{uuid.uuid4().hex[:12]}"
    blob_service.create_container(container)
    for name in files:
        blob_service.get_blob_client(container, f"{MODEL}/{name}").upload_blob((local / name).read_bytes())
    # Nodes read Azurite directly (not the counting proxy on a thread of this process: the
    # mount's page faults would wait on it under this process's GIL, see test_mount.py).
    with LocalCluster(base / "cluster", 3, token=TOKEN, conn_str=azurite.connection_string,
                      args=("--block-size", str(BS), "--allow", f"{AZURITE_ACCOUNT}/{container}")) as cluster:
        yield {"base": base, "local": local, "files": files, "container": container, "cluster": cluster,
               "size": sum(files.values())}


def engine_env(world, node: str, **extra) -> dict:
    """The engine host's environment: a node and the token, the account name, no blob secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHENODE_", "AZURE_STORAGE_"))}
    env.update(CACHENODE_NODES=node, CACHENODE_TOKEN=TOKEN, AZURE_STORAGE_ACCOUNT_NAME=AZURITE_ACCOUNT,
               VLLM_ASSETS_CACHE=str(world["base"] / "vllm-assets"), **extra)
    return env


def generate(world, model: str, load_format: str = "auto", env: dict | None = None, **engine) -> dict:
    # float32: tensor-parallel sums in bf16 round differently and may flip a greedy token
    spec = {"model": model, "load_format": load_format, "prompts": PROMPTS,
            "engine": {"dtype": "float32", **engine}}
    out = run_engine(spec, env=env, timeout=300)
    assert "error" not in out, f"{out}\n{out['log_tail']}"
    return out


@pytest.fixture(scope="module")
def reference(world):
    """Engine 1: vLLM's own loader from the local copy."""
    return generate(world, str(world["local"]))


@pytest.fixture(scope="module")
def first_engine(world):
    """Engine 2: `--load-format cachenode` from az://, entering the cluster at node 0 (cold)."""
    cluster = world["cluster"]
    out = generate(world, f"az://{world['container']}/{MODEL}", "cachenode", engine_env(world, cluster.urls[0]))
    out["origin_after"] = _origin_bytes(cluster)
    return out


@pytest.fixture(scope="module")
def second_engine(world, first_engine):
    """Engine 3: the same model from another engine host entering at node 2 (warm), with
    tensor parallelism 2 (the CPU build runs it: one core per rank)."""
    cluster = world["cluster"]
    out = generate(world, f"az://{world['container']}/{MODEL}", "cachenode",
                   engine_env(world, cluster.urls[2], VLLM_CPU_OMP_THREADS_BIND="0|1"),
                   tensor_parallel_size=2, distributed_executor_backend="mp")
    out["origin_after"] = _origin_bytes(cluster)
    out["ranks"] = {int(r): (float(own), float(peers)) for r, own, peers in re.findall(
        r"TP rank (\d) read ([0-9.]+) MiB of \S+ from the cluster, ([0-9.]+) MiB from its peers", out["log"])}
    return out


def test_cachenode_load_generates_what_local_disk_generates(reference, first_engine):
    assert reference["tokens"] == first_engine["tokens"]
    assert len(reference["tokens"]) == len(PROMPTS) and all(len(t) == 8 for t in reference["tokens"])
    # Our loader logs the line vLLM's default loader logs (`cachebench engine` reads it).
    assert first_engine["logged_load_s"] is not None


def test_blob_storage_is_read_once_for_two_engines(world, first_engine, second_engine):
    # Config, tokenizer and every shard came through the cluster, each byte once.
    assert first_engine["origin_after"] == world["size"]
    assert second_engine["origin_after"] == world["size"]
    assert second_engine["tokens"] == first_engine["tokens"]


def test_tensor_parallel_ranks_each_read_their_share_once(world, second_engine):
    """TP=2: each rank read about half of the weights from the cluster and got the rest from
    its peer; together they read the weights once, not twice."""
    weights = sum(v for k, v in world["files"].items() if k.endswith(".safetensors")) / 2**20
    ranks = second_engine["ranks"]
    assert set(ranks) == {0, 1}, second_engine["log_tail"]
    assert sum(own for own, _ in ranks.values()) == pytest.approx(weights, rel=0.02)
    for own, peers in ranks.values():
        assert own > 0.25 * weights and own + peers == pytest.approx(weights, rel=0.02)


def test_no_weights_written_to_disk(world, first_engine):
    """vLLM's pull folder got the config and tokenizer files only; the weights streamed."""
    pulled = [p for p in (world["base"] / "vllm-assets").rglob("*") if p.is_file()]
    names = {p.name for p in pulled}
    assert "config.json" in names and "tokenizer.json" in names
    assert not any(n.endswith(".safetensors") for n in names), names


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse: FUSE unavailable")
def test_vllm_over_the_mount_generates_the_same(world, reference, second_engine):
    """Engine 4: LLM(model=<mount path>) with vLLM's own loader over `cachenode mount`."""
    cluster, mp = world["cluster"], world["base"] / "mnt"
    with MountProcess(mp, [f"az://{world['container']}"], cluster.urls, token=TOKEN) as m:
        out = generate(world, str(mp / world["container"] / MODEL), env=engine_env(world, cluster.urls[1]))
        assert m.stop() == 0
    assert out["tokens"] == reference["tokens"]
    assert _origin_bytes(cluster) == world["size"]  # still once: the mount read the cached blocks


def test_container_outside_the_allow_list_stops_the_engine_with_forbidden(world, blob_service):
    """Through an engine: the config pull already fails, with our error naming the URL."""
    other = f"x{uuid.uuid4().hex[:12]}"
    blob_service.create_container(other)
    blob_service.get_blob_client(other, f"{MODEL}/config.json").upload_blob((world["local"] / "config.json").read_bytes())
    url = f"az://{other}/{MODEL}"
    out = run_engine({"model": url, "load_format": "cachenode", "prompts": PROMPTS},
                     env=engine_env(world, world["cluster"].urls[0]), timeout=120)
    assert (out.get("module"), out.get("error")) == ("cachenode.errors", "Forbidden"), out
    assert url in out["message"]


# --- the loader class directly: bad input stops with our named errors ----------------------------

def _loader(nodes, **options):
    from vllm.config.load import LoadConfig

    from cachenode.client.engines.vllm_loader import CachenodeModelLoader

    return CachenodeModelLoader(LoadConfig(load_format="cachenode", model_loader_extra_config={
        "nodes": list(nodes), "token": TOKEN, "account": AZURITE_ACCOUNT, **options}))


def _copy_model(world, blob_service, prefix: str) -> str:
    for name in world["files"]:
        blob_service.get_blob_client(world["container"], f"{prefix}/{name}").upload_blob(
            (world["local"] / name).read_bytes())
    return f"az://{world['container']}/{prefix}"


def _shards(world) -> list[str]:
    return sorted(n for n in world["files"] if n.endswith(".safetensors"))


def test_a_missing_shard_is_source_not_found_naming_it(world, blob_service):
    from cachenode.errors import SourceNotFound

    url = _copy_model(world, blob_service, "missing")
    gone = _shards(world)[-1]
    blob_service.get_blob_client(world["container"], f"missing/{gone}").delete_blob()
    with pytest.raises(SourceNotFound) as exc:
        _loader(world["cluster"].urls).stream(url)
    assert url in str(exc.value) and gone in str(exc.value)


def test_a_shard_replaced_mid_load_is_source_changed(world, blob_service):
    """Every shard is pinned when the load starts: the last one, replaced after the first
    tensors went to the engine, fails the load instead of mixing two versions."""
    from cachenode.errors import SourceChanged

    url = _copy_model(world, blob_service, "replaced")
    last = _shards(world)[-1]
    client, stream = _loader(world["cluster"].urls).stream(url)
    try:
        with pytest.raises(SourceChanged) as exc, stream:
            for i, _ in enumerate(stream):
                if i == 0:
                    blob = blob_service.get_blob_client(world["container"], f"replaced/{last}")
                    blob.upload_blob((world["local"] / last).read_bytes()[::-1], overwrite=True)
    finally:
        client.close()
    assert url in str(exc.value)


def test_no_node_and_no_origin_credentials_is_peer_unavailable_at_once(world):
    from cachenode.errors import PeerUnavailable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    url = f"az://{world['container']}/{MODEL}"
    with pytest.raises(PeerUnavailable) as exc:
        _loader([dead]).stream(url)
    assert url in str(exc.value) and "no origin credentials" in str(exc.value)


def test_the_stream_matches_the_files_and_holds_bounded_spans(world):
    """Tensors equal safetensors' own load of the local shards; no span is larger than the
    configured span unless a single tensor is."""
    from safetensors.torch import load_file

    expected = {}
    for shard in _shards(world):
        expected.update(load_file(world["local"] / shard))
    span = 768 << 10  # above the largest tensor (512 KiB), below a shard (~1 MB)
    client, stream = _loader(world["cluster"].urls[1:], span_mib=span / (1 << 20), depth=2).stream(
        f"az://{world['container']}/{MODEL}")
    try:
        with stream:
            got = {name: t.clone() for name, t in stream}
    finally:
        client.close()
    assert got.keys() == expected.keys()
    assert all(got[k].equal(expected[k]) for k in expected)
    assert stream.bytes_read == sum(s.hi - s.lo for s in stream.spans)
    assert len(stream.spans) > len(stream.shards)  # the span limit cut shards
    assert all(s.hi - s.lo <= span or len(s.tensors) == 1 for s in stream.spans)
    # Span buffers were reused: memory is (depth + 1) spans, not the checkpoint.
    assert stream.buffers.allocated <= 3 * span < stream.size


def test_a_buffer_the_engine_still_views_is_never_reused(world):
    """A weight loader that keeps the tensors it was given (no copy) still sees the right bytes."""
    from safetensors.torch import load_file

    expected = {}
    for shard in _shards(world):
        expected.update(load_file(world["local"] / shard))
    client, stream = _loader(world["cluster"].urls[:1], span_mib=0.25).stream(f"az://{world['container']}/{MODEL}")
    try:
        with stream:
            kept = dict(stream)  # views, never copied
    finally:
        client.close()
    assert all(kept[k].equal(expected[k]) for k in expected)


def test_vllm_hook_points_have_not_moved():
    """The hooks are written against vllm-cpu 0.32.0; a release that moves them fails here."""
    import vllm

    from cachenode.client.engines import vllm_hooks
    from cachenode.client.engines.vllm_loader import register

    assert vllm.__version__ == vllm_hooks.VLLM_VERSION
    assert vllm_hooks.check_hook_points() == []
    register()
    register()  # vLLM may load plug-ins twice: still one hook, one loader
    storage, vllm_config, _ = vllm_hooks.hook_points()
    assert hasattr(storage.pull_files, vllm_hooks.HOOKED)
    assert not hasattr(getattr(storage.pull_files, vllm_hooks.HOOKED), vllm_hooks.HOOKED)
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    assert type(get_model_loader(LoadConfig(load_format="cachenode"))).__name__ == "CachenodeModelLoader"
