"""`cachebench links`: the origin behind a slow link, the cache behind a fast one (namespaces + tc).

The scaled-down public demo: blob storage reaches the cluster over `origin_gbit`, the loader
reaches its peers over `peer_gbit`. Two network namespaces hang off the root namespace by veth
pairs shaped with tc tbf both ways: "origin" runs Azurite, "peers" runs the cache nodes. Loaders
run in the root namespace. The nodes reach Azurite through a relay on the root side, so their
origin traffic crosses the slow link like everyone else's, without IP forwarding on the machine.
Needs root (CI and these VMs have it).
"""

from __future__ import annotations

from contextlib import ExitStack

import click

from cachenode.testing.azurite import connection_string
from cachenode.testing.netns import VethHost
from cachenode.testing.relay import Relay

from . import rounds
from .compare import copy_blob, machine, reference_digest
from .scenarios import Recorder
from .testbed import CONTAINER, testbed

def _tbf(gbit: float) -> tuple[str, int]:
    """tc rate and a burst of 10 ms of traffic (at least 64 KiB, one GSO packet)."""
    return f"{round(gbit * 1000)}mbit", max(64 << 10, int(gbit * 1e9 / 8 / 100))


def run_links(size: int, origin_gbit: float, peer_gbit: float, n_nodes: int, block_size: str,
              concurrencies: tuple[int, ...], workdir: str | None, repeat: int = 3) -> dict:
    with ExitStack() as links:
        origin = links.enter_context(VethHost("org"))
        peers = links.enter_context(VethHost("per"))
        bed = links.enter_context(testbed(workdir, "cachebench-links-", azurite_host=origin.ns_ip,
                                          azurite_wrap=origin.exec_prefix()))
        azurite, token = bed.azurite, bed.token
        # uploaded (and copied: each round's cold load needs a blob of its own) before the links
        # are shaped: setting up is not what is measured
        ckpt, model_bytes = bed.checkpoint(size, "m/model.safetensors")
        for i in range(repeat):
            copy_blob(azurite.connection_string, "m/model.safetensors", f"cold{i}/model.safetensors")
        reference = reference_digest(ckpt)
        origin.shape(*_tbf(origin_gbit), both_ways=True)
        peers.shape(*_tbf(peer_gbit), both_ways=True)
        relay = bed.stack.enter_context(Relay(peers.root_ip, origin.ns_ip, azurite.port))
        cluster = bed.cluster(n_nodes, "--block-size", block_size, "--memory", "8GiB",
                              conn_str=connection_string(relay.port, host=peers.root_ip),
                              host=peers.ns_ip, wrap=peers.exec_prefix())

        rec = Recorder(model_bytes, reference, cluster.urls, token, services=bed.service_pids(cluster))
        click.echo(f"checkpoint {model_bytes / 2**30:.2f} GiB; origin link {origin_gbit:g} Gbit/s, "
                   f"peer link {peer_gbit:g} Gbit/s, {n_nodes} nodes, {repeat} rounds")

        def one_round(i: int) -> None:
            rec.blob_direct(azurite.connection_string, CONTAINER, "m/model.safetensors", concurrencies)
            cache = {"kind": "cache", "token": token, "transport": "tcp",
                     "url": bed.url(f"cold{i}/model.safetensors")}
            rec.run("cache_cold", [{**cache, "nodes": [cluster.urls[0]]}])
            rec.run("cache_warm", [{**cache, "nodes": [cluster.urls[1 % n_nodes]]}])

        rounds.run_rounds(repeat, one_round, click.echo)
        scenarios = rec.scenarios
        medians, ranges = rounds.summarize_ratios(
            [_ratios(rec.round(i), origin_gbit, peer_gbit) for i in range(repeat)])

    return {"origin_gbit": origin_gbit, "peer_gbit": peer_gbit, "model_bytes": model_bytes,
            "nodes": n_nodes, "block_size": block_size, "repeat": repeat, "machine": machine(),
            "scenarios": scenarios, "ratios": medians, "ratios_range": ranges}


def _ratios(s: dict, origin_gbit: float, peer_gbit: float) -> dict:
    """One round's ratios."""
    cold, warm = s["cache_cold"]["seconds"], s["cache_warm"]["seconds"]
    link_ratio = peer_gbit / origin_gbit
    return {"link_ratio": link_ratio, "warm_speedup_over_cold": cold / warm,
            "warm_speedup_over_link_ratio": cold / warm / link_ratio,
            "warm_over_blob_direct": s["blob_direct_sdk"]["seconds"] / warm,
            "cold_over_blob_direct": s["blob_direct_sdk"]["seconds"] / cold}


def command(size: int, origin_gbit: float, peer_gbit: float, n_nodes: int, block_size: str,
            concurrencies: tuple[int, ...], workdir: str | None, json_path: str | None, plot_path: str | None,
            repeat: int) -> None:
    """`cachebench links` (root): the rounds, then the speedups against the link ratio and blob
    direct, and the JSON and plot if asked; fails if a load's bytes differ."""
    import os

    from .output import write_results
    from .rounds import fmt_range

    if os.geteuid() != 0:
        raise click.ClickException("cachebench links creates network namespaces and needs root")
    r = run_links(size, origin_gbit, peer_gbit, n_nodes, block_size, concurrencies, workdir, repeat)
    q, qr = r["ratios"], r["ratios_range"]
    ok = q["warm_speedup_over_cold"] >= 0.8 * q["link_ratio"]
    click.echo(f"\n{repeat} rounds, medians of per-round ratios (min-max)")
    click.echo(f"warm speedup over cold {fmt_range(q['warm_speedup_over_cold'], *qr['warm_speedup_over_cold'])}x; "
               f"link ratio {q['link_ratio']:.2f}x; target >= {0.8 * q['link_ratio']:.2f}x [{'met' if ok else 'NOT met'}]")
    click.echo(f"cache warm vs blob direct {fmt_range(q['warm_over_blob_direct'], *qr['warm_over_blob_direct'])}x, "
               f"cache cold vs blob direct {fmt_range(q['cold_over_blob_direct'], *qr['cold_over_blob_direct'])}x")
    write_results(r, json_path, plot_path, f"cachebench links: origin {origin_gbit:g} Gbit/s, peers {peer_gbit:g} Gbit/s, "
           f"{r['model_bytes'] / 2**30:.2f} GiB ({os.cpu_count()} CPUs)")
    if not all(v["verified"] for v in r["scenarios"].values()):
        raise click.ClickException("a load returned bytes that differ from the checkpoint")
