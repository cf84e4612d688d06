"""`cachebench compare`: cache vs blob storage vs local disk, side by side in one run."""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

import click

from cachenode.metrics import scrape

from . import runai
from .checkpoint import make_safetensors, upload
from .runner import run_together
from .services import Azurite, LocalCluster
from .table import byte_bar

CONTAINER = "models"


def reference_digest(path: Path) -> str:
    import safetensors.torch

    from .loads import data_digest

    return data_digest(safetensors.torch.load_file(str(path)))


def _copy_blob(conn_str: str, src: str, dst: str) -> None:
    """A second, independent copy (new ETag, new keys): a cold start for the cache."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(conn_str) as svc:
        source = svc.get_blob_client(CONTAINER, src)
        svc.get_blob_client(CONTAINER, dst).start_copy_from_url(source.url, requires_sync=True)


def run_compare(size: int, n_nodes: int, readers: int, transport: str, block_size: str,
                concurrencies: tuple[int, ...], workdir: str | None) -> dict:
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cachebench-"))
    with ExitStack() as stack:
        if not workdir:
            stack.callback(shutil.rmtree, base, ignore_errors=True)
        azurite = stack.enter_context(Azurite(base / "azurite"))
        ckpt = base / "model.safetensors"
        with byte_bar("generate checkpoint", size) as bar:
            model_bytes = make_safetensors(ckpt, size, progress=bar.update)
        with byte_bar("upload", model_bytes) as bar:
            upload(azurite.connection_string, CONTAINER, "a/model.safetensors", ckpt, progress=bar.update)
        _copy_blob(azurite.connection_string, "a/model.safetensors", "b/model.safetensors")
        reference = reference_digest(ckpt)
        token = secrets.token_urlsafe(24)
        cluster = stack.enter_context(LocalCluster(
            base / "cluster", n_nodes, token=token, conn_str=azurite.connection_string,
            args=("--block-size", block_size, "--memory", "8GiB", *(("--ucx",) if transport == "ucx" else ()))))
        url_a = f"{azurite.endpoint}/{CONTAINER}/a/model.safetensors"
        url_b = f"{azurite.endpoint}/{CONTAINER}/b/model.safetensors"

        def origin_bytes() -> int:
            return int(sum(scrape(u, token).get("cachenode_origin_bytes_total", 0) for u in cluster.urls))

        scenarios: dict[str, dict] = {}

        def record(name: str, results: list[dict], wall: float, origin: int, **extra) -> None:
            scenarios[name] = scenario(results, wall, model_bytes, reference, origin, **extra)
            click.echo(f"  {name:<24} {scenarios[name]['seconds']:7.2f} s  {scenarios[name]['gb_per_s']:.2f} GB/s")

        click.echo(f"checkpoint {model_bytes / 2**30:.2f} GiB, {n_nodes} nodes, transport {transport}")
        ckpt.read_bytes()  # into the page cache: local_safetensors is the single-machine ceiling
        res, wall = run_together([{"kind": "local", "path": str(ckpt)}])
        record("local_safetensors", res, wall, 0)

        best = None
        for c in concurrencies:
            res, wall = run_together([{"kind": "blob_sdk", "conn_str": azurite.connection_string,
                                       "container": CONTAINER, "blob": "a/model.safetensors",
                                       "concurrency": c}])
            if best is None or res[0]["seconds"] < best[0][0]["seconds"]:
                best = (res, wall, c)
        record("blob_direct_sdk", best[0], best[1], model_bytes, concurrency=best[2])
        reason = runai.unavailable()
        if reason:
            scenarios["runai_streamer"] = {"skipped": reason}
        else:
            with runai.HttpsAzurite(base / "azurite-https") as https:
                with byte_bar("upload (HTTPS Azurite for Run:ai)", model_bytes) as bar:
                    upload(https.connection_string, CONTAINER, "a/model.safetensors", ckpt,
                           progress=bar.update, ca_file=str(https.cert))
                res, wall = run_together([https.contender(CONTAINER, "a/model.safetensors")])
                record("runai_streamer", res, wall, model_bytes, over="https")

        cache = {"kind": "cache", "token": token, "transport": transport}
        before = origin_bytes()
        res, wall = run_together([{**cache, "url": url_a, "nodes": [cluster.urls[0]]}])
        record("cache_cold", res, wall, origin_bytes() - before)
        before = origin_bytes()
        res, wall = run_together([{**cache, "url": url_a, "nodes": [cluster.urls[1 % n_nodes]]}])
        record("cache_warm", res, wall, origin_bytes() - before)
        before = origin_bytes()
        res, wall = run_together([{**cache, "url": url_b, "nodes": [cluster.urls[i % n_nodes]]}
                                  for i in range(readers)])
        record("cache_cold_concurrent", res, wall, origin_bytes() - before)

    return {"model_bytes": model_bytes, "nodes": n_nodes, "readers": readers, "transport": transport,
            "block_size": block_size, "machine": machine(), "scenarios": scenarios,
            "ratios": ratios(scenarios, model_bytes)}


def scenario(results: list[dict], wall: float, model_bytes: int, reference: str, origin: int,
             **extra) -> dict:
    """One scenario's JSON from its contenders' results: with several readers, the wall time
    until the last one finished and the bytes all of them loaded."""
    seconds = wall if len(results) > 1 else results[0]["seconds"]
    return {"seconds": seconds, "gb_per_s": model_bytes * len(results) / seconds / 1e9,
            "origin_bytes": origin, "peak_rss_bytes": max(r["peak_rss_bytes"] for r in results),
            "baseline_rss_bytes": max(r["baseline_rss_bytes"] for r in results),
            "verified": all(r["digest"] == reference for r in results),
            **({"reader_seconds": [r["seconds"] for r in results]} if len(results) > 1 else {}), **extra}


def ratios(s: dict, model_bytes: int) -> dict:
    def speed(name):
        return s.get(name, {}).get("gb_per_s")

    out = {}
    if speed("cache_warm") and speed("blob_direct_sdk"):
        out["warm_over_blob_direct"] = speed("cache_warm") / speed("blob_direct_sdk")
    if speed("cache_warm") and speed("runai_streamer"):
        out["warm_over_runai_streamer"] = speed("cache_warm") / speed("runai_streamer")
    if speed("cache_warm") and speed("local_safetensors"):
        out["warm_over_local_safetensors"] = speed("cache_warm") / speed("local_safetensors")
    if speed("cache_cold") and speed("blob_direct_sdk"):
        out["cold_over_blob_direct"] = speed("cache_cold") / speed("blob_direct_sdk")
    if "cache_cold_concurrent" in s:
        out["cold_concurrent_origin_over_model"] = s["cache_cold_concurrent"]["origin_bytes"] / model_bytes
    if "cache_warm" in s:
        w = s["cache_warm"]
        # the loader's own memory: peak minus what importing torch costs, per checkpoint byte
        out["warm_rss_above_baseline_over_model"] = (w["peak_rss_bytes"] - w["baseline_rss_bytes"]) / model_bytes
    return out


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


TARGETS = [
    ("warm_over_blob_direct", ">=", 4.0, "cache_warm >= 4x blob_direct_sdk"),
    ("warm_over_runai_streamer", ">=", 4.0, "cache_warm >= 4x runai_streamer"),
    ("cold_over_blob_direct", ">=", 1.0, "cache_cold no slower than blob_direct_sdk"),
    ("cold_concurrent_origin_over_model", "==", 1.0, "cache_cold_concurrent origin bytes == model bytes"),
    ("warm_over_local_safetensors", ">=", 0.8, "cache_warm >= 0.8x local_safetensors"),
    ("warm_rss_above_baseline_over_model", "<=", 1.25, "warm reader peak RSS <= 1.25x model + torch baseline"),
]


def target_lines(r: dict) -> list[str]:
    lines = []
    for key, op, goal, text in TARGETS:
        if key not in r:
            continue
        v = r[key]
        ok = {">=": v >= goal, "<=": v <= goal, "==": abs(v - goal) < 1e-9}[op]
        lines.append(f"  [{'met' if ok else 'NOT met'}] {text}: {v:.3f}")
    return lines
