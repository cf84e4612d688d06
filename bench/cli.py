"""`cachebench`: load-time benchmarks of cachenode against the alternatives."""

from __future__ import annotations

import json
import os
import signal
import sys

import click

from cachenode.cli import Size

from .output import write_results


class Counts(click.ParamType):
    """Comma-separated positive whole numbers, e.g. "4,8,16"."""

    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of whole numbers", param, ctx)
        if min(out) < 1:
            self.fail(f"{value!r}: every count must be at least 1", param, ctx)
        return out


class BlockSize(Size):
    """A node block size: a human size within the node's limits, passed on as bytes."""

    def convert(self, value, param, ctx):
        from cachenode.blocks import check_block_size

        n = super().convert(value, param, ctx)
        try:
            return str(check_block_size(n))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _load_options(concurrency: str):
    """The options `compare` and `links` share: block size, blob SDK concurrencies, outputs."""
    options = [
        click.option("--block-size", default="8MiB", show_default=True, type=BlockSize(), help="Node block size."),
        click.option("--concurrency", "concurrencies", default=concurrency, show_default=True, type=Counts(),
                     help="Connection counts tried for blob_direct_sdk (the best is reported)."),
        click.option("--workdir", type=click.Path(file_okay=False), help="Keep files here instead of a temp dir."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON."),
        click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG bar chart."),
    ]

    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def _repeat_option(default: int = 3):
    return click.option("--repeat", default=default, show_default=True, type=click.IntRange(1, 50),
                        help="Rounds, contenders interleaved; figures are medians with min-max beside them.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure how long a checkpoint takes to land in memory, cache vs blob storage.

    Everything runs on this machine: Azurite, node processes and a generated checkpoint.
    """
    # SIGTERM unwinds like Ctrl-C, so every process and namespace a run created is removed.
    # Ctrl-C itself is set explicitly: a process started from a background job (a CI script,
    # nohup) inherits SIGINT ignored, and a run would then go on to the end instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)


@main.command()
@click.option("--size", default="1GiB", show_default=True, type=Size(), help="Checkpoint size.")
@click.option("--block-size", default="8MiB", show_default=True, type=BlockSize(), help="Node block size.")
@click.option("--nodes", "n_nodes", default=3, show_default=True, type=click.IntRange(1, 16),
              help="Cache nodes in the local cluster.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep files here instead of a temp dir.")
@click.option("--keep", is_flag=True, help="Keep the temp dir after the run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write results as JSON.")
def quickstart(size, block_size, n_nodes, workdir, keep, json_path) -> None:
    """Start Azurite and a local cluster, upload a generated checkpoint, load it cold then warm."""
    from .quickstart import run_quickstart, show

    rows = run_quickstart(size, block_size, workdir, keep, n_nodes)
    click.echo()
    show(rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"scenarios": rows}, f, indent=2)
    if not all(r["verified"] for r in rows):
        raise click.ClickException("a load returned bytes that differ from the checkpoint")


@main.command()
@click.option("--size", default="1GiB", show_default=True, type=Size(), help="Checkpoint size.")
@click.option("--nodes", "n_nodes", default=3, show_default=True, type=click.IntRange(1, 16),
              help="Cache nodes in the cluster.")
@click.option("--readers", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Concurrent readers in cache_cold_concurrent.")
@click.option("--transport", default="tcp", show_default=True, type=click.Choice(["tcp", "ucx"]),
              help="Wire between loaders and nodes (ucx: shared memory here, RDMA on a real cluster).")
@_load_options(concurrency="4,8,16")
@_repeat_option()
def compare(size, n_nodes, readers, transport, block_size, concurrencies, workdir, json_path, plot_path,
            repeat) -> None:
    """Cold, warm and concurrent cache loads vs the blob SDK, adlfs, Run:ai and a local file.

    Every contender runs in a fresh process, loads into torch CPU tensors in fresh memory,
    and is verified against the checkpoint. Contenders take turns round by round; figures are
    medians over the rounds with min-max beside them, and ratios are taken within each round.
    Cache loads also report where their time went (measured by the loader).
    """
    from .compare import run_compare, target_lines
    from .table import breakdown_line, cpu_line, print_table, spread_cell
    from cachenode.units import format_size

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


@main.command()
@click.option("--size", default="1GiB", show_default=True, type=Size(), help="Bytes read per pass.")
@click.option("--block-size", default="8MiB", show_default=True, type=BlockSize(), help="Node block size.")
@click.option("--workdir", type=click.Path(file_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON.")
@_repeat_option()
def transports(size, block_size, workdir, json_path, repeat) -> None:
    """Warm block-read throughput: HTTP, UCX (shared memory), UCX (tcp) vs a raw TCP socket.

    The raw baseline's sender is a separate process, as a node is to its loader (iperf3-style);
    a same-process figure (sender thread) is reported too.

    Each transport reads the same warm blocks from a node into a pre-touched buffer, in its own
    process, best of 3 passes; every wire once per round, figures are medians over the rounds
    (min-max), ratios taken within each round.
    """
    from .rounds import fmt_range
    from .transports import run_transports

    result = run_transports(size, block_size, workdir, repeat)
    r, q = result["ratios"], result["ratios_range"]

    def gb(entry: dict) -> str:
        return fmt_range(entry["gb_per_s"], *entry["range"]["gb_per_s"], unit=" GB/s")

    click.echo(f"\n{repeat} rounds: medians (min-max)")
    click.echo(f"raw TCP socket, 2 processes    {gb(result['raw_tcp'])}  (1 MiB writes)")
    click.echo(f"raw TCP socket, 1 process      {gb(result['raw_tcp_same_process'])}  "
               f"(sender thread; HTTP is {fmt_range(r['tcp_over_raw_tcp_same_process'], *q['tcp_over_raw_tcp_same_process'])}x this)")
    for name, t in result["transports"].items():
        click.echo(f"{name:<30} {gb(t)}  ({t['channel']})")
    click.echo(f"\ntargets: HTTP >= 0.7x raw TCP: {fmt_range(r['tcp_over_raw_tcp'], *q['tcp_over_raw_tcp'])} "
               f"[{'met' if r['tcp_over_raw_tcp'] >= 0.7 else 'NOT met'}]; "
               f"UCX (shm) >= 1.5x HTTP: {fmt_range(r['ucx_over_tcp'], *q['ucx_over_tcp'])} "
               f"[{'met' if r['ucx_over_tcp'] >= 1.5 else 'NOT met'}]")
    write_results(result, json_path, None, "")


@main.command()
@click.option("--size", default="1GiB", show_default=True, type=Size(), help="Checkpoint size.")
@click.option("--origin-gbit", default=1.0, show_default=True, type=click.FloatRange(0.01, 100),
              help="Emulated link between blob storage and the cluster, Gbit/s.")
@click.option("--peer-gbit", default=8.0, show_default=True, type=click.FloatRange(0.01, 100),
              help="Emulated link between the loader and its peers, Gbit/s.")
@click.option("--nodes", "n_nodes", default=3, show_default=True, type=click.IntRange(1, 16),
              help="Cache nodes in the cluster.")
@_load_options(concurrency="8,16")
@_repeat_option()
def links(size, origin_gbit, peer_gbit, n_nodes, block_size, concurrencies, workdir, json_path, plot_path,
          repeat) -> None:
    """Blob storage behind a slow link, peers behind a fast one: cold vs warm vs direct (root).

    Network namespaces + veth + tc tbf emulate the two links on this machine; the loaders run
    in fresh processes in the root namespace and every load is verified.
    """
    from .links import run_links

    if os.geteuid() != 0:
        raise click.ClickException("cachebench links creates network namespaces and needs root")
    from .rounds import fmt_range

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


@main.command()
@click.option("--link", default="100mbit", show_default=True,
              help="Rate of the emulated link (tc tbf syntax, e.g. 100mbit, 1gbit).")
@click.option("--transport", type=click.Choice(["http", "ucx"]),
              help="Measure background reads (a loader's prefetch, node to loader) over this "
                   "transport instead of warming (blob storage to node, always HTTP).")
@_repeat_option()
@click.option("--workdir", type=click.Path(file_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON.")
def qos(link, transport, repeat, workdir, json_path) -> None:
    """Background cache traffic vs a bulk TCP flow (iperf3) on a shaped link (network namespaces
    + veth + tc tbf; root).

    Without --transport the background traffic is a warm (blob storage to node); with it, a
    background read of a cached blob (node to loader, `background=True`) over HTTP or UCX, with
    the node and the loader in two namespaces. Each round measures the flow alone, the flow
    beside the cache traffic, and the cache traffic once the flow stops. Targets: the flow keeps
    >= 90% of its rate, the cache then uses >= 80% of the link.
    """
    import tempfile

    from cachenode.units import parse_rate

    from .qos import run_qos
    from .qos_read import run_qos_read

    if os.geteuid() != 0:
        raise click.ClickException("cachebench qos creates a network namespace and needs root")
    try:
        rate = parse_rate(link.lower().replace("mbit", "Mbit").replace("gbit", "Gbit"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--link") from None

    what = f"{transport} read" if transport else "warm"

    def progress(i, r):
        click.echo(f"round {i + 1}/{repeat}: flow alone {r['foreground_alone_gb_per_s'] * 1e3:5.1f} MB/s, "
                   f"during {what} {r['foreground_with_cache_gb_per_s'] * 1e3:5.1f} MB/s "
                   f"({100 * r['foreground_kept']:.0f}% kept), {what} after "
                   f"{r['cache_idle_gb_per_s'] * 1e3:5.1f} MB/s ({100 * r['cache_idle_link_share']:.0f}% of the link)")

    with tempfile.TemporaryDirectory(prefix="cachebench-qos-") as tmp:
        try:
            if transport:
                r = run_qos_read(workdir or tmp, transport=transport, link=link, link_bytes_per_s=rate,
                                 repeat=repeat, progress=progress)
            else:
                r = run_qos(workdir or tmp, link=link, link_bytes_per_s=rate, repeat=repeat, progress=progress)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    kept, share = r["ranges"]["foreground_kept"], r["ranges"]["cache_idle_link_share"]
    click.echo(f"link {r['link_gbit']:.2f} Gbit/s, {repeat} rounds (median, min-max)")
    alone = r["ranges"]["foreground_alone_gb_per_s"]
    click.echo(f"{'bulk flow alone':<30s}{r['foreground_alone_gb_per_s'] * 1e3:8.1f} MB/s "
               f"({alone[0] * 1e3:.1f}-{alone[1] * 1e3:.1f}; the link's {r['link_gbit'] * 125:.1f} less framing)")
    click.echo(f"{'bulk flow beside ' + what:<30s}{r['foreground_with_cache_gb_per_s'] * 1e3:8.1f} MB/s "
               f"({100 * r['foreground_kept']:.0f}% kept, {100 * kept[0]:.0f}-{100 * kept[1]:.0f}%; target >= 90%)")
    click.echo(f"{what + ' once the flow stops':<30s}{r['cache_idle_gb_per_s'] * 1e3:8.1f} MB/s "
               f"({100 * r['cache_idle_link_share']:.0f}% of the link, {100 * share[0]:.0f}-{100 * share[1]:.0f}%; "
               "target >= 80%)")
    write_results(r, json_path, None, "")


@main.command()
@click.option("--duration", default="10m", show_default=True,
              help="How long to run: seconds, or with a unit (90s, 10m).")
@click.option("--loaders", default=3, show_default=True, type=click.IntRange(1, 32),
              help="Loader threads reading through the cache at once.")
@click.option("--chaos-every", default=6.0, show_default=True, type=click.FloatRange(1, 600),
              help="Seconds between chaos actions (a warm, a node SIGKILL+restart, an origin outage; in turn).")
@click.option("--workdir", type=click.Path(file_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON.")
def soak(duration, loaders, chaos_every, workdir, json_path) -> None:
    """Chaos run: concurrent loaders against 3 nodes while nodes are SIGKILLed and restarted and
    the origin (Azurite) stops and starts. Fails unless every load was byte-exact or failed with
    a named error, node memory and cache dirs stayed within their budgets, and no descriptors leaked.
    """
    from .soak import check, run_soak

    seconds = _duration(duration)

    def progress(log, left):
        o = log.outcomes
        click.echo(f"{max(0, left):5.0f}s left: {o['ok']} ok, {o['named']} named errors, "
                   f"{len(log.bad)} bad; chaos {dict(log.chaos)}")

    r = run_soak(seconds, loaders=loaders, chaos_every=chaos_every, workdir=workdir, progress=progress)
    click.echo(f"{r['loads']} loads in {seconds:.0f}s: {r['outcomes']}; named errors {r['named_errors']}")
    for kind, text in r["error_examples"].items():
        click.echo(f"  e.g. {text}")
    click.echo(f"chaos {r['chaos']}; cache dir peak {r['max_cache_dir_mib']} MiB (--disk {r['disk_budget_mib']} MiB)")
    for x in r["incarnations"]:
        click.echo(f"  node {x['node']} pid {x['pid']}: idle {x['idle_rss_mib']} MiB, +{x['rss_over_idle_mib']} MiB "
                   f"peak (budget +{r['rss_budget_over_idle_mib']}), fds {x['fds_start']} -> {x['fds_end']}")
    broken = check(r)
    r["broken"] = broken
    write_results(r, json_path, None, "")
    if broken:
        raise click.ClickException("soak failed:\n  " + "\n  ".join(broken))
    click.echo("soak passed")


@main.command()
@click.option("--size", default="1GiB", show_default=True, type=Size(), help="Model size (a random Llama, bf16).")
@click.option("--nodes", "n_nodes", default=3, show_default=True, type=click.IntRange(1, 16),
              help="Cache nodes in the cluster.")
@click.option("--runai-concurrency", default=16, show_default=True, type=click.IntRange(1, 256),
              help="Run:ai streamer concurrency (--model-loader-extra-config concurrency).")
@click.option("--transport", default="tcp", show_default=True, type=click.Choice(["tcp", "ucx"]),
              help="Wire between the cachenode loader and the nodes (ucx: shared memory here).")
@_repeat_option()
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep files here instead of a temp dir.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG bar chart.")
def engine(size, n_nodes, runai_concurrency, transport, repeat, workdir, json_path, plot_path) -> None:
    """vLLM (CPU build) weight-load time and time to ready: local disk, Run:ai from Azurite,
    `--load-format cachenode` cold and warm, and vLLM over `cachenode mount`."""
    from .engine import run_engine_bench, show

    result = run_engine_bench(size, n_nodes, repeat, runai_concurrency, workdir, transport)
    click.echo(f"\n{repeat} rounds: medians (min-max); weights = time in load_weights")
    show(result)
    write_results(result, json_path, plot_path, f"cachebench engine: vLLM CPU, {result['model_bytes'] / 2**30:.2f} GiB "
                  f"model, {n_nodes} nodes, {transport} ({os.cpu_count()} CPUs); weight load")


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 90, 90s, 10m)",
                                 param_hint="--duration") from None




from .simcli import simulate  # noqa: E402  (a model, not a measurement: its own module)

main.add_command(simulate)

if __name__ == "__main__":
    main()
