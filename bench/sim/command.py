"""The `cachebench simulate` command: options, the printed tables, JSON and the plot."""

from __future__ import annotations

import math
import os

import click

from cachenode.cli import Size
from cachenode.units import format_size

from ..output import write_results


def _block_size(ctx, param, value: int) -> int:
    from cachenode.blocks import check_block_size

    try:
        return check_block_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _scenario(r, model_bytes: int, readers: int) -> dict:
    egress = r.egress
    mean = float(egress.mean()) if len(egress) else 0.0
    return {"seconds": r.seconds, "gb_per_s": model_bytes * readers / r.seconds / 1e9,
            "origin_bytes": r.origin_bytes, "reader_seconds_min": min(r.reader_seconds),
            "egress_max_bytes": float(egress.max()) if len(egress) else 0.0, "egress_mean_bytes": mean,
            "egress_max_over_mean": float(egress.max()) / mean if mean else None,
            "steps": r.steps, **({"deaths_at_s": r.deaths_at} if r.deaths_at is not None else {})}


def run_simulation(nodes, readers, size, block_size, nic_gbit, origin_gbit, conn_mbyte, window, fail,
                   fail_at, stretches, busy, reader_gbyte=0.0) -> dict:
    from .model import LoadParams, Simulation, cluster_of

    params = LoadParams(size, block_size, window=window, fail=fail, fail_at=fail_at, stretches=stretches,
                        busy=busy, reader_rate=reader_gbyte * 1e9 if reader_gbyte else math.inf)
    sim = Simulation(cluster_of(nodes, readers, nic_gbit, origin_gbit, conn_mbyte), params)
    direct, prewarm, cold, warm = sim.blob_direct(), sim.prewarm(), sim.cold(), sim.warm()
    return {"model_bytes": size, "nodes": nodes, "readers": readers, "block_size": block_size,
            "nic_gbit": nic_gbit, "origin_gbit": origin_gbit, "origin_conn_mbyte_per_s": conn_mbyte,
            "window": window, "sdk_concurrency": params.sdk_concurrency, "setup_s": params.setup_s,
            "fail": fail, "fail_at": fail_at, "stretches": stretches, "busy": busy,
            "warm_concurrency": params.warm_concurrency, "reader_gbyte_per_s": reader_gbyte or None, "dead": sorted(sim.dead),
            "scenarios": {"blob_direct_sdk": _scenario(direct, size, readers),
                          "cache_prewarm": _scenario(prewarm, size, 1),
                          "cache_cold": _scenario(cold, size, readers), "cache_warm": _scenario(warm, size, readers)}}


def _show(result: dict) -> None:
    from ..table import print_table

    rows = [{"scenario": k, **v} for k, v in result["scenarios"].items()]
    ratio = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print_table(rows, [("scenario", "scenario", "{}"), ("seconds", "seconds", "{:.1f}"),
                       ("GB/s (all readers)", "gb_per_s", "{:.2f}"), ("origin bytes", "origin_bytes", format_size),
                       ("node egress max", "egress_max_bytes", format_size),
                       ("max/mean", "egress_max_over_mean", ratio)])


def _show_validation(v: dict) -> None:
    from ..table import print_table

    rows = [{"load": k, "measured": v["measured"][k]["seconds"], "predicted": v["predicted"][k]["seconds"],
             "error": (v["predicted"][k]["seconds"] - v["measured"][k]["seconds"]) / v["measured"][k]["seconds"]}
            for k in v["measured"]]
    click.echo(f"cachebench links: {format_size(v['model_bytes'])}, origin {v['origin_gbit']:g} Gbit/s, "
               f"peers {v['peer_gbit']:g} Gbit/s, {v['nodes']} nodes")
    print_table(rows, [("load", "load", "{}"), ("measured s", "measured", "{:.2f}"),
                       ("predicted s", "predicted", "{:.2f}"), ("error", "error", "{:+.0%}")])
    worst = max(abs(v["cold_error"]), abs(v["warm_error"]))
    click.echo(f"cold and warm within ±25%: {'yes' if worst <= 0.25 else 'NO'} (worst {worst:.0%})")


@click.command()
@click.option("--nodes", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Cache nodes, one per host (GPU server) with its own NIC.")
@click.option("--readers", default=1, show_default=True, type=click.IntRange(1, 100_000),
              help="Concurrent readers, each loading the whole model, spread round-robin over the hosts.")
@click.option("--size", default="270GB", show_default=True, type=Size(), help="Model size.")
@click.option("--block-size", default="8MiB", show_default=True, type=Size(), callback=_block_size,
              help="Node block size.")
@click.option("--nic-gbit", default=200.0, show_default=True, type=click.FloatRange(0.001, 1e6),
              help="Each host's NIC, Gbit/s each way (8x400 Gbit/s: 3200).")
@click.option("--origin-gbit", default=200.0, show_default=True, type=click.FloatRange(0.001, 1e6),
              help="The storage account's egress, Gbit/s (Azure's default for GPv2 in large regions).")
@click.option("--origin-conn-mbyte", "conn_mbyte", default=47.0, show_default=True,
              type=click.FloatRange(0.001, 1e6),
              help="MB/s of one origin connection (47: 8 connections load 270 GB in 12 min, the demo's blob time).")
@click.option("--window", default=None, type=click.IntRange(1, 1024),
              help="Blocks in flight per reader [default: the loader's, client/config.py].")
@click.option("--fail", default=0, show_default=True, type=click.IntRange(0, 4095),
              help="Nodes that die during the run (the first K member ids).")
@click.option("--fail-at", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="...when the cold load's front has read this share of the model (1: between cold and warm).")
@click.option("--busy", default=0.0, show_default=True, type=click.FloatRange(0, 0.95),
              help="Share of every NIC the GPU jobs' own traffic holds: loads get the rest; warming gets "
                   "what the node's idle-bandwidth governor (cachenode/node/qos.py) grants beside it.")
@click.option("--reader-gbyte", default=0.0, show_default=True, type=click.FloatRange(0, 1e6),
              help="GB/s one reader process can take in (copies, PCIe); 0: no limit but the links.")
@click.option("--stretches", default=128, show_default=True, type=click.IntRange(1, 4096),
              help="Events per load: the model is cut into this many stretches of blocks.")
@click.option("--validate", is_flag=True,
              help="Instead: run `cachebench links` here (root) and print it beside the model's prediction.")
@click.option("--validate-size", default="64MiB", show_default=True, type=Size(), help="Checkpoint size of --validate.")
@click.option("--validate-origin-gbit", default=0.2, show_default=True, type=click.FloatRange(0.01, 100),
              help="Origin link of --validate, Gbit/s.")
@click.option("--validate-peer-gbit", default=0.5, show_default=True, type=click.FloatRange(0.01, 100),
              help="Peer link of --validate, Gbit/s.")
@click.option("--validate-nodes", default=3, show_default=True, type=click.IntRange(1, 16),
              help="Nodes of --validate.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep --validate's files here instead of a temp dir.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG bar chart.")
def simulate(nodes, readers, size, block_size, nic_gbit, origin_gbit, conn_mbyte, window, fail, fail_at,
             busy, reader_gbyte, stretches, validate, validate_size, validate_origin_gbit, validate_peer_gbit, validate_nodes,
             workdir, json_path, plot_path) -> None:
    """Predict load times at scales this machine cannot run: a flow-level model of the cluster.

    The model places blocks with the real rendezvous hashing and block keys, fills each block
    once from the origin by its owner, routes readers to owners and, when nodes die, to the next
    member in rank; bytes flow over each host's NIC and the storage account's egress, shared
    max-min fairly per connection. It prints the load times of a direct blob download, of
    warming the cluster ahead (`cachenode warm`, background traffic), of a cold and of a warm
    load, origin bytes and how evenly the nodes serve. With --validate it instead runs a small `cachebench
    links` here and prints its measured times beside the model's prediction of that run.
    """
    from cachenode.client.config import ClientConfig

    if validate:
        from .validate import validate as run_validate

        if os.geteuid() != 0:
            raise click.ClickException("--validate runs cachebench links, which creates network namespaces "
                                       "and needs root")
        v = run_validate(validate_size, validate_nodes, validate_origin_gbit, validate_peer_gbit, block_size,
                         workdir)
        click.echo()
        _show_validation(v)
        result = {"validation": v, "scenarios": {
            f"{k} ({who})": {"seconds": v[who][k]["seconds"], "gb_per_s": v["model_bytes"] / v[who][k]["seconds"] / 1e9}
            for k in v["measured"] for who in ("measured", "predicted")}}
        title = (f"cachebench simulate --validate: links run vs model, {format_size(v['model_bytes'])}, "
                 f"origin {validate_origin_gbit:g} / peers {validate_peer_gbit:g} Gbit/s")
    else:
        if fail >= nodes:
            raise click.BadParameter(f"{fail} of {nodes} nodes cannot die: at least one must live",
                                     param_hint="--fail")
        click.echo(f"simulating {nodes} nodes x {nic_gbit:g} Gbit/s, {readers} readers, {format_size(size)} "
                   f"model, origin {origin_gbit:g} Gbit/s ({conn_mbyte:g} MB/s per connection)"
                   + (f", {fail} nodes die at {fail_at:.0%} of the cold load" if fail else ""))
        click.echo(f"placing {-(-size // block_size)} blocks on {nodes} nodes by rendezvous rank "
                   "(a hash per block and node: seconds for a thousand nodes)...")
        result = run_simulation(nodes, readers, size, block_size, nic_gbit, origin_gbit, conn_mbyte,
                                window or ClientConfig.window, fail, fail_at, stretches, busy, reader_gbyte)
        _show(result)
        title = (f"cachebench simulate: {nodes} nodes x {nic_gbit:g} Gbit/s, {readers} readers, "
                 f"{format_size(size)}")
    write_results(result, json_path, plot_path, title)
