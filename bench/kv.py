"""`cachebench kv`: batch put/get of KV-cache-sized objects, cachenode (HTTP, UCX) vs Redis vs Mooncake Store."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import click

from cachenode.testing.cluster import LocalCluster

from . import rounds
from .kv_services import MooncakeHolder, MooncakeMaster, RedisServer

# Llama-3-8B: 32 layers, 8 KV heads of 128 dims, bf16. One object is one layer's K and V for a
# 256-token chunk on one of 2 tensor-parallel ranks (4 KV heads): 2 x 4 x 128 x 2 B x 256 tokens.
MODEL = {"name": "Llama-3-8B", "layers": 32, "kv_heads": 8, "head_dim": 128, "dtype_bytes": 2,
         "chunk_tokens": 256, "tp": 2}
OBJECT_SIZE = 2 * (MODEL["kv_heads"] // MODEL["tp"]) * MODEL["head_dim"] * MODEL["dtype_bytes"] * MODEL["chunk_tokens"]
BATCH = 16  # objects per call for every contender (a 256-token chunk's 16 of 32 layers)
NS, WRITER = "kv", "kv-bench-writer"
SHM_TLS = "sm,cma,tcp"
# contender -> what carries its bytes here
WIRES = {"cachenode_http": "cachenode, HTTP (aiohttp, framed batch)",
         "cachenode_ucx": f"cachenode, UCX worker address (UCX_TLS={SHM_TLS}: shared memory)",
         "redis": "Redis 127.0.0.1 TCP (redis-py asyncio + hiredis, MSET/MGET)",
         "mooncake": "Mooncake Store, transfer engine over TCP (batch_put_from/batch_get_into)"}


def _probe(spec: dict, env: dict | None = None) -> dict:
    import os

    out = subprocess.run([sys.executable, "-m", "cachenode.bench.kv_probe", json.dumps(spec)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, **(env or {})})
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{spec['contender']} probe failed (exit {out.returncode}): {out.stderr[-1500:]}")


def run_kv(concurrencies: list[int], repeat: int, objects: int, get_batches: int, workdir: str | None,
           n_nodes: int) -> dict:
    skipped: dict[str, str] = {}
    with ExitStack() as stack:
        base = Path(workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="cachebench-kv-")))
        token = "kv-bench-token"
        cluster = stack.enter_context(LocalCluster(
            base / "cluster", n_nodes, token=token, conn_str=None, env={"UCX_TLS": SHM_TLS},
            args=("--ucx", "--namespace", NS, "--writer-token", f"{NS}={WRITER}", "--object-memory", "3GiB",
                  "--object-disk", "0")))
        contenders = {"cachenode_http": {"contender": "cachenode", "transport": "tcp"},
                      "cachenode_ucx": {"contender": "cachenode", "transport": "ucx"}}
        for c in contenders.values():
            c.update(nodes=cluster.urls, token=token, namespace=NS, writer=WRITER)
        why = RedisServer.available()
        if why is None:
            redis = stack.enter_context(RedisServer(base / "redis"))
            contenders["redis"] = {"contender": "redis", "redis_port": redis.port}
        else:
            skipped["redis"] = why
        why = MooncakeMaster.available()
        if why is None:
            master = stack.enter_context(MooncakeMaster(base / "mooncake"))
            stack.enter_context(MooncakeHolder(base / "mooncake", master, 4 << 30))
            contenders["mooncake"] = {"contender": "mooncake", "master": master.master, "metadata": master.metadata}
        else:
            skipped["mooncake"] = why
        for name, why in skipped.items():
            click.echo(f"{name}: skipped ({why})")
        click.echo(f"objects of {OBJECT_SIZE / 2**20:.2f} MiB ({MODEL['name']}: one layer's K+V of a "
                   f"{MODEL['chunk_tokens']}-token chunk, TP rank 1/{MODEL['tp']}), {BATCH} per call; "
                   f"{objects} put then {get_batches} batches got per probe; {repeat} rounds")
        runs: dict[tuple[str, int], list[dict]] = {}

        def one_round(i: int) -> None:
            for conc in concurrencies:
                for name, base_spec in contenders.items():
                    spec = {**base_spec, "concurrency": conc, "object_size": OBJECT_SIZE, "batch": BATCH,
                            "objects": objects, "get_batches": get_batches, "tag": f"r{i}-c{conc}-{name}"}
                    env = {"UCX_TLS": SHM_TLS} if name == "cachenode_ucx" else None
                    r = _probe(spec, env)
                    runs.setdefault((name, conc), []).append(r)
                    click.echo(f"  c={conc:<2} {name:<15} put {r['put']['gb_per_s']:.2f} GB/s, get "
                               f"{r['get']['gb_per_s']:.2f} GB/s (p99 {r['get']['p99_ms']:.1f} ms)"
                               f"{'' if r['verified'] else '  NOT VERIFIED'}")

        rounds.run_rounds(repeat, one_round, click.echo)

    rows = []
    for (name, conc), rs in runs.items():
        row = {"contender": name, "wire": WIRES[name], "concurrency": conc, "verified": all(r["verified"] for r in rs)}
        for op in ("put", "get"):
            s = rounds.summarize([r[op] for r in rs], ranged=("gb_per_s", "p50_ms", "p99_ms"))
            s.pop("runs")
            row[op] = s
        rows.append(row)
    return {"model": MODEL, "object_size": OBJECT_SIZE, "batch": BATCH, "objects": objects,
            "get_batches": get_batches, "repeat": repeat, "nodes": n_nodes, "skipped": skipped, "rows": rows,
            "targets": _targets(rows, concurrencies)}


def _targets(rows: list[dict], concurrencies: list[int]) -> list[dict]:
    """get throughput >= 2x Redis at every concurrency, >= Mooncake (TCP); best cachenode wire, medians."""
    by = {(r["contender"], r["concurrency"]): r["get"]["gb_per_s"] for r in rows}
    out = []
    for conc in concurrencies:
        ours = max((by[(n, conc)], n) for n in ("cachenode_http", "cachenode_ucx") if (n, conc) in by)
        for other, factor in (("redis", 2.0), ("mooncake", 1.0)):
            if (other, conc) in by:
                ratio = ours[0] / by[(other, conc)]
                out.append({"concurrency": conc, "target": f"get >= {factor:g}x {other}", "ours": ours[1],
                            "ratio": ratio, "met": ratio >= factor})
    return out


def command(concurrencies: list[int], repeat: int, objects: int, get_batches: int, workdir: str | None,
            n_nodes: int, json_path: str | None, plot_path: str | None) -> None:
    from .output import write_results

    result = run_kv(concurrencies, repeat, objects, get_batches, workdir, n_nodes)
    click.echo(f"\n{repeat} rounds, medians (min-max); GB/s of object bytes; latency of one {BATCH}-object call")
    click.echo(f"{'contender':<15} {'c':>2}  {'put GB/s':<18} {'get GB/s':<18} {'get p50 ms':<20} "
               f"{'get p99 ms':<20} {'put p99 ms':<10} verified  wire")
    for r in sorted(result["rows"], key=lambda r: (r["concurrency"], r["contender"])):
        g, p = r["get"], r["put"]
        click.echo(f"{r['contender']:<15} {r['concurrency']:>2}  "
                   f"{rounds.fmt_range(p['gb_per_s'], *p['range']['gb_per_s']):<18} "
                   f"{rounds.fmt_range(g['gb_per_s'], *g['range']['gb_per_s']):<18} "
                   f"{rounds.fmt_range(g['p50_ms'], *g['range']['p50_ms'], fmt='{:.1f}'):<20} "
                   f"{rounds.fmt_range(g['p99_ms'], *g['range']['p99_ms'], fmt='{:.1f}'):<20} "
                   f"{p['p99_ms']:<10.1f} {str(r['verified']):<9} {r['wire']}")
    click.echo("\ntargets (median get throughput of the faster cachenode wire):")
    for t in result["targets"]:
        click.echo(f"  c={t['concurrency']:<2} {t['target']:<18} {t['ratio']:.2f}x ({t['ours']})  "
                   f"[{'met' if t['met'] else 'NOT met'}]")
    write_results(result, json_path, None, "")
    if plot_path:
        _plot(result, plot_path)
        click.echo(f"wrote {plot_path}")


def _plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    concs = sorted({r["concurrency"] for r in rows})
    names = list(dict.fromkeys(r["contender"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        vals = [next((r["get"]["gb_per_s"] for r in rows if r["contender"] == name and r["concurrency"] == c), 0)
                for c in concs]
        ax.bar([i + k * width for i in range(len(concs))], vals, width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(concs))], [f"c={c}" for c in concs])
    ax.set_ylabel("get GB/s (median)")
    ax.set_title(f"cachebench kv: {result['object_size'] / 2**20:.2f} MiB objects, {result['batch']} per call")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
