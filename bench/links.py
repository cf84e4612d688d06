"""`cachebench links`: the origin behind a slow link, the cache behind a fast one (namespaces + tc).

The scaled-down public demo: blob storage reaches the cluster over `origin_gbit`, the loader
reaches its peers over `peer_gbit`. Two network namespaces hang off the root namespace by veth
pairs shaped with tc tbf both ways: "origin" runs Azurite, "peers" runs the cache nodes. Loaders
run in the root namespace. The nodes reach Azurite through a relay on the root side, so their
origin traffic crosses the slow link like everyone else's, without IP forwarding on the machine.
Needs root (CI and these VMs have it).
"""

from __future__ import annotations

import secrets
from contextlib import ExitStack

import click

from .checkpoint import make_safetensors, upload
from .compare import CONTAINER, machine, reference_digest
from .netns import VethHost
from .relay import Relay
from .scenarios import Recorder
from .services import Azurite, LocalCluster, connection_string, scratch_dir
from .table import byte_bar

def _tbf(gbit: float) -> tuple[str, int]:
    """tc rate and a burst of 10 ms of traffic (at least 64 KiB, one GSO packet)."""
    return f"{round(gbit * 1000)}mbit", max(64 << 10, int(gbit * 1e9 / 8 / 100))


def run_links(size: int, origin_gbit: float, peer_gbit: float, n_nodes: int, block_size: str,
              concurrencies: tuple[int, ...], workdir: str | None) -> dict:
    with ExitStack() as stack:
        base = scratch_dir(stack, workdir, "cachebench-links-")
        origin = stack.enter_context(VethHost("org"))
        peers = stack.enter_context(VethHost("per"))
        azurite = stack.enter_context(Azurite(base / "azurite", host=origin.ns_ip, wrap=origin.exec_prefix()))
        ckpt = base / "model.safetensors"
        with byte_bar("generate checkpoint", size) as bar:
            model_bytes = make_safetensors(ckpt, size, progress=bar.update)
        # uploaded before the links are shaped: setting up is not what is measured
        with byte_bar("upload", model_bytes) as bar:
            upload(azurite.connection_string, CONTAINER, "m/model.safetensors", ckpt, progress=bar.update)
        reference = reference_digest(ckpt)
        origin.shape(*_tbf(origin_gbit), both_ways=True)
        peers.shape(*_tbf(peer_gbit), both_ways=True)
        relay = stack.enter_context(Relay(peers.root_ip, origin.ns_ip, azurite.port))
        token = secrets.token_urlsafe(24)
        cluster = stack.enter_context(LocalCluster(
            base / "cluster", n_nodes, token=token, conn_str=connection_string(relay.port, host=peers.root_ip),
            host=peers.ns_ip, wrap=peers.exec_prefix(),
            args=("--block-size", block_size, "--memory", "8GiB")))
        url = f"{azurite.endpoint}/{CONTAINER}/m/model.safetensors"

        rec = Recorder(model_bytes, reference, cluster.urls, token)
        click.echo(f"checkpoint {model_bytes / 2**30:.2f} GiB; origin link {origin_gbit:g} Gbit/s, "
                   f"peer link {peer_gbit:g} Gbit/s, {n_nodes} nodes")
        rec.blob_direct(azurite.connection_string, CONTAINER, "m/model.safetensors", concurrencies)
        cache = {"kind": "cache", "token": token, "transport": "tcp", "url": url}
        rec.run("cache_cold", [{**cache, "nodes": [cluster.urls[0]]}])
        rec.run("cache_warm", [{**cache, "nodes": [cluster.urls[1 % n_nodes]]}])
        scenarios = rec.scenarios

    cold, warm = scenarios["cache_cold"]["seconds"], scenarios["cache_warm"]["seconds"]
    link_ratio = peer_gbit / origin_gbit
    return {"origin_gbit": origin_gbit, "peer_gbit": peer_gbit, "model_bytes": model_bytes,
            "nodes": n_nodes, "block_size": block_size, "machine": machine(), "scenarios": scenarios,
            "ratios": {"link_ratio": link_ratio, "warm_speedup_over_cold": cold / warm,
                       "warm_speedup_over_link_ratio": cold / warm / link_ratio,
                       "warm_over_blob_direct": scenarios["blob_direct_sdk"]["seconds"] / warm,
                       "cold_over_blob_direct": scenarios["blob_direct_sdk"]["seconds"] / cold}}
