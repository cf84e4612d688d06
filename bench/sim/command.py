"""The `cachebench simulate` command: the model run (or --validate), its printed tables, JSON and the plot."""

from __future__ import annotations

import math
import os

import click

from cachenode.units import format_size

from ..output import write_results


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


def command(nodes, readers, size, block_size, nic_gbit, origin_gbit, conn_mbyte, window, fail, fail_at,
            busy, reader_gbyte, stretches, validate, validate_size, validate_origin_gbit, validate_peer_gbit, validate_nodes,
            workdir, json_path, plot_path) -> None:
    """`cachebench simulate`: the model's tables (or, with `validate`, a `links` run beside its
    prediction), and the JSON and plot if asked."""
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
