"""`cachebench simulate --validate`: the model's prediction of a `cachebench links` run beside the run."""

from __future__ import annotations

import math

from .model import Cluster, Host, LoadParams, Simulation, gbit

SCENARIOS = ("cache_cold", "cache_warm", "blob_direct_sdk")


def links_cluster(nodes: int, origin_gbit: float, peer_gbit: float) -> Cluster:
    """The `links` testbed as the model sees it: every node in one namespace behind one veth
    link of `peer_gbit` (tbf both ways), the loader in the root namespace (no shaping), the
    origin behind a link of `origin_gbit`. Azurite has no per-connection limit worth the name
    at these rates (0.24-0.46 GB/s direct, DESIGN.md)."""
    peers = Host("peers", gbit(peer_gbit), gbit(peer_gbit), math.inf)
    loader = Host("loader", math.inf, math.inf, math.inf)
    return Cluster((peers, loader), ("peers",) * nodes, ("loader",), gbit(origin_gbit))


def predict_links(model_bytes: int, nodes: int, origin_gbit: float, peer_gbit: float, block_size: int,
                  sdk_concurrency: int) -> dict[str, dict]:
    """Seconds and origin bytes of `links`' three loads, one after another as it runs them."""
    sim = Simulation(links_cluster(nodes, origin_gbit, peer_gbit),
                     LoadParams(model_bytes, block_size, sdk_concurrency=sdk_concurrency))
    direct = sim.blob_direct()
    cold = sim.cold()
    warm = sim.warm()
    return {name: {"seconds": r.seconds, "origin_bytes": r.origin_bytes}
            for name, r in zip(SCENARIOS, (cold, warm, direct))}


def validate(size: int, nodes: int, origin_gbit: float, peer_gbit: float, block_size: int,
             workdir: str | None) -> dict:
    """Run `links` here (root), predict it, and give each load's relative error
    (predicted - measured) / measured."""
    from ..links import run_links

    concurrency = 8
    measured = run_links(size, origin_gbit, peer_gbit, nodes, str(block_size), (concurrency,), workdir)
    predicted = predict_links(measured["model_bytes"], nodes, origin_gbit, peer_gbit, block_size, concurrency)
    out = {"model_bytes": measured["model_bytes"], "nodes": nodes, "origin_gbit": origin_gbit,
           "peer_gbit": peer_gbit, "block_size": block_size, "measured": {}, "predicted": predicted}
    for name in SCENARIOS:
        m = measured["scenarios"][name]
        out["measured"][name] = {"seconds": m["seconds"], "origin_bytes": m["origin_bytes"],
                                 "verified": m["verified"]}
        key = {"cache_cold": "cold_error", "cache_warm": "warm_error", "blob_direct_sdk": "blob_direct_error"}[name]
        out[key] = (predicted[name]["seconds"] - m["seconds"]) / m["seconds"]
    return out
