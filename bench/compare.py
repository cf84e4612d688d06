"""`cachebench compare`: cache vs blob storage vs local disk, side by side in one run."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import click

from cachenode.testing.blobs import upload

from . import rounds, runai
from .scenarios import Recorder
from .table import byte_bar
from .testbed import CONTAINER, testbed


def reference_digest(path: Path) -> str:
    import safetensors.torch

    from .loads import data_digest

    return data_digest(safetensors.torch.load_file(str(path)))


def copy_blob(conn_str: str, src: str, dst: str) -> None:
    """A second, independent copy (new ETag, new keys): a cold start for the cache."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(conn_str) as svc:
        source = svc.get_blob_client(CONTAINER, src)
        svc.get_blob_client(CONTAINER, dst).start_copy_from_url(source.url, requires_sync=True)


def run_compare(size: int, n_nodes: int, readers: int, transport: str, block_size: str,
                concurrencies: tuple[int, ...], workdir: str | None, repeat: int = 3) -> dict:
    with testbed(workdir, "cachebench-") as bed:
        base, azurite, token = bed.base, bed.azurite, bed.token
        ckpt, model_bytes = bed.checkpoint(size, "a/model.safetensors")
        reference = reference_digest(ckpt)
        # Every node also serves its host's loaders by descriptor (cache_warm_local).
        cluster = bed.cluster(n_nodes, "--block-size", block_size, "--memory", "8GiB", "--local-socket", "local.sock",
                              *(("--ucx",) if transport == "ucx" else ()))

        rec = Recorder(model_bytes, reference, cluster.urls, token, services=bed.service_pids(cluster))
        click.echo(f"checkpoint {model_bytes / 2**30:.2f} GiB, {n_nodes} nodes, transport {transport}, "
                   f"{repeat} rounds")
        runai_why, https = runai.unavailable(), None
        if runai_why:
            rec.skip("runai_streamer", runai_why)
        else:
            https = bed.stack.enter_context(runai.HttpsAzurite(base / "azurite-https"))
            rec.services["azurite"].append(https.proc.pid)
            with byte_bar("upload (HTTPS Azurite for Run:ai)", model_bytes) as bar:
                upload(https.connection_string, CONTAINER, "a/model.safetensors", ckpt,
                       progress=bar.update, ca_file=str(https.cert))
        adlfs_why = adlfs_unavailable()
        if adlfs_why:
            rec.skip("adlfs", adlfs_why)
        cache = {"kind": "cache", "token": token, "transport": transport}

        def one_round(i: int) -> None:
            # each round's cold loads need blobs the cache has never seen (copied, not timed)
            for kind in ("cold", "conc"):
                copy_blob(azurite.connection_string, "a/model.safetensors", f"{kind}{i}/model.safetensors")
            # every contender once, in the same order each round (bench/rounds.py says why)
            ckpt.read_bytes()  # into the page cache: local_safetensors is the single-machine ceiling
            rec.run("local_safetensors", [{"kind": "local", "path": str(ckpt)}], origin=0)
            rec.blob_direct(azurite.connection_string, CONTAINER, "a/model.safetensors", concurrencies)
            if not adlfs_why:
                rec.run("adlfs", [{"kind": "adlfs", "conn_str": azurite.connection_string,
                                   "container": CONTAINER, "blob": "a/model.safetensors"}], origin=model_bytes)
            if https is not None:
                rec.run("runai_streamer", [https.contender(CONTAINER, "a/model.safetensors")],
                        origin=model_bytes, over="https")
            cold = bed.url(f"cold{i}/model.safetensors")
            rec.run("cache_cold", [{**cache, "url": cold, "nodes": [cluster.urls[0]]}])
            rec.run("cache_warm", [{**cache, "url": cold, "nodes": [cluster.urls[1 % n_nodes]]}])
            # The same node, now as this host's node: blocks handed over as memfds (one copy).
            local = {**cache, "url": cold, "nodes": [cluster.urls[1 % n_nodes]],
                     "local_socket": str(cluster.procs[1 % n_nodes].cache_dir / "local.sock")}
            rec.run("cache_warm_local", [local])
            # Again, now that the host's node holds every block (the host's other ranks).
            rec.run("cache_warm_local_again", [local])
            warm_mount(rec, base / f"mnt{i}", cluster.urls[1 % n_nodes], token, f"cold{i}/model.safetensors",
                       local_socket=str(cluster.procs[1 % n_nodes].cache_dir / "local.sock"))
            conc = bed.url(f"conc{i}/model.safetensors")
            rec.run("cache_cold_concurrent", [{**cache, "url": conc, "nodes": [cluster.urls[j % n_nodes]]}
                                              for j in range(readers)])

        rounds.run_rounds(repeat, one_round, click.echo)
        scenarios = rec.scenarios
        medians, ranges = rounds.summarize_ratios([ratios(rec.round(i), model_bytes) for i in range(repeat)])

    return {"model_bytes": model_bytes, "nodes": n_nodes, "readers": readers, "transport": transport,
            "block_size": block_size, "repeat": repeat, "machine": machine(), "scenarios": scenarios,
            "ratios": medians, "ratios_range": ranges}


def adlfs_unavailable() -> str | None:
    """Why the adlfs contender cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("adlfs") is None:
        return "adlfs is not installed (pip install 'cachenode[bench]')"
    return None


def mount_unavailable() -> str | None:
    """Why cache_warm_mount cannot run here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 not installed (pip install 'cachenode[mount]')"
    return None


def warm_mount(rec: Recorder, mountpoint: Path, node: str, token: str, blob: str,
               local_socket: str | None = None) -> None:
    """cache_warm_mount: safetensors.load_file from a fresh `cachenode mount` of the warm cluster,
    in a fresh process, every tensor cloned into fresh memory (as local_safetensors does). The
    mount runs beside its host's node (`local_socket`), as the DaemonSet deploys it."""
    from cachenode.testing.mount import MountProcess

    reason = mount_unavailable()
    if reason:
        rec.skip("cache_warm_mount", reason)
        return
    with MountProcess(mountpoint, [f"az://{CONTAINER}"], [node], token=token, local_socket=local_socket):
        rec.run("cache_warm_mount", [{"kind": "local", "path": str(mountpoint / CONTAINER / blob)}])


# ratio name -> (contender, over contender), by GB/s within one round
SPEED_RATIOS = [
    ("warm_over_blob_direct", "cache_warm", "blob_direct_sdk"),
    ("warm_over_runai_streamer", "cache_warm", "runai_streamer"),
    ("warm_over_local_safetensors", "cache_warm", "local_safetensors"),
    ("warm_local_over_local_safetensors", "cache_warm_local", "local_safetensors"),
    ("warm_local_again_over_local_safetensors", "cache_warm_local_again", "local_safetensors"),
    ("mount_over_warm", "cache_warm_mount", "cache_warm"),
    ("mount_over_local_safetensors", "cache_warm_mount", "local_safetensors"),
    ("warm_over_adlfs", "cache_warm", "adlfs"),
    ("cold_over_blob_direct", "cache_cold", "blob_direct_sdk"),
]


def ratios(s: dict, model_bytes: int) -> dict:
    def speed(name):
        return s.get(name, {}).get("gb_per_s")

    out = {}
    for name, over, under in SPEED_RATIOS:
        if speed(over) and speed(under):
            out[name] = speed(over) / speed(under)
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
    ("warm_local_over_local_safetensors", ">=", 0.8, "cache_warm_local (same-host hand-over) >= 0.8x local_safetensors"),
    ("warm_local_again_over_local_safetensors", ">=", 0.8,
     "cache_warm_local_again (hand-over, blocks on the host's node) >= 0.8x local_safetensors"),
    ("mount_over_warm", ">=", 0.5, "cache_warm_mount >= 0.5x cache_warm"),
    ("mount_over_local_safetensors", ">=", 0.65, "cache_warm_mount >= 0.65x local_safetensors"),
    ("warm_rss_above_baseline_over_model", "<=", 1.25, "warm reader peak RSS <= 1.25x model + torch baseline"),
]


def target_lines(r: dict, ranges: dict | None = None) -> list[str]:
    """One line per target: the median over rounds, its range, met or not (on the median)."""
    lines = []
    for key, op, goal, text in TARGETS:
        if key not in r:
            continue
        v = r[key]
        ok = {">=": v >= goal, "<=": v <= goal, "==": abs(v - goal) < 1e-9}[op]
        if op == "==" and ranges and key in ranges:  # an exact target must hold in every round
            ok = all(abs(x - goal) < 1e-9 for x in ranges[key])
        spread = f" ({ranges[key][0]:.3f}-{ranges[key][1]:.3f})" if ranges and key in ranges else ""
        lines.append(f"  [{'met' if ok else 'NOT met'}] {text}: {v:.3f}{spread}")
    return lines


def command(size: int, n_nodes: int, readers: int, transport: str, block_size: str, concurrencies: tuple[int, ...],
            workdir: str | None, json_path: str | None, plot_path: str | None, repeat: int) -> None:
    """`cachebench compare`: the rounds, then the table, where the cache loads' time went, CPU
    seconds, the targets, and the JSON and plot if asked; fails if a contender's bytes differ."""
    from cachenode.units import format_size

    from .output import write_results
    from .table import breakdown_line, cpu_line, print_table, spread_cell

    result = run_compare(size, n_nodes, readers, transport, block_size, concurrencies, workdir, repeat)
    click.echo(f"\n{repeat} rounds: medians (min-max)")
    rows = [{"scenario": k, **v} for k, v in result["scenarios"].items() if "seconds" in v]
    print_table(rows, [("scenario", "scenario", "{}"), ("seconds", None, spread_cell("{:.2f}", "seconds")),
                       ("GB/s", None, spread_cell("{:.2f}", "gb_per_s")),
                       ("origin bytes", "origin_bytes", format_size),
                       ("peak RSS", "peak_rss_bytes", format_size), ("verified", "verified", "{}")])
    for k, v in result["scenarios"].items():
        if "skipped" in v:
            click.echo(f"{k}: skipped ({v['skipped']})")
    click.echo("\nwhere the cache loads' time went (medians, seconds):")
    for k, v in result["scenarios"].items():
        if "breakdown" in v:
            click.echo(breakdown_line(k, v["breakdown"]))
    click.echo(f"\nCPU seconds during each load (medians; this machine has {os.cpu_count()} cores):")
    for k, v in result["scenarios"].items():
        if "cpu_seconds" in v:
            click.echo(cpu_line(k, v["cpu_seconds"], v["seconds"]))
    click.echo("\ntargets (medians of per-round ratios, min-max):")
    for line in target_lines(result["ratios"], result["ratios_range"]):
        click.echo(line)
    if "warm_over_adlfs" in result["ratios"]:
        lo, hi = result["ratios_range"]["warm_over_adlfs"]
        click.echo(f"  cache_warm over adlfs: {result['ratios']['warm_over_adlfs']:.3f} ({lo:.3f}-{hi:.3f})")
    write_results(result, json_path, plot_path, f"cachebench compare: {format_size(result['model_bytes'])}, "
           f"{n_nodes} nodes, {readers} concurrent readers ({os.cpu_count()} CPUs)")
    if not all(v.get("verified", True) for v in result["scenarios"].values()):
        raise click.ClickException("a contender returned bytes that differ from the checkpoint")
