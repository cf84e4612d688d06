"""`cachebench compile`: cold torch.compile vs artifacts from the cluster vs a warm local Inductor cache dir.

Each contender runs in a fresh process (cachenode.testing.compile_child) with fresh
TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR, timed from process start to its first output:
interpreter start, `import torch`, the fetch and load of the artifacts and Dynamo's tracing all
count. That is why this command does not use the probe's READY/go protocol, which times only
what comes after set-up. The warm local dir is a copy of a dir a previous process compiled into.
Reuse is proven by Inductor's own counters (FX graph cache hits > 0, misses 0), not by timing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from cachenode.testing.cluster import LocalCluster

from .output import write_results
from .rounds import run_rounds, summarize, summarize_ratios
from .table import print_table, spread_cell

NS = "compile"
CONTENDERS = ("cold", "cluster", "local")
TARGET_VS_COLD, TARGET_VS_LOCAL = 0.5, 1.2


def _run_child(spec: dict, inductor_dir: Path, triton_dir: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir), "TRITON_CACHE_DIR": str(triton_dir)}
    out = subprocess.run([sys.executable, "-m", "cachenode.testing.compile_child", json.dumps(spec)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0 or "RESULT " not in out.stdout:
        raise click.ClickException(f"compile child ({spec['source']}) failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def run_compile(workdir: str | Path, width: int = 512, blocks: int = 6, repeat: int = 3, echo=click.echo) -> dict:
    """Seed the cluster (a cold compile that publishes, entering at node 1) and a warm local dir
    (the seed's own), then `repeat` interleaved rounds of the three contenders."""
    base = Path(workdir)
    base.mkdir(parents=True, exist_ok=True)
    token, writer = secrets.token_hex(16), secrets.token_hex(16)
    fresh = iter(range(10_000))

    def dirs() -> tuple[Path, Path]:
        n = next(fresh)
        return base / f"inductor{n}", base / f"triton{n}"

    with LocalCluster(base / "cluster", 2, token=token, conn_str=None,
                      args=("--namespace", NS, "--writer-token", f"{NS}={writer}")) as cluster:
        spec = {"width": width, "blocks": blocks, "shapes": [[8]], "namespace": NS, "token": token,
                "writer_token": writer}
        echo("seeding: a cold compile that publishes to the cluster (node 1)")
        seed_inductor, seed_triton = dirs()
        seed = _run_child({**spec, "source": "cluster", "nodes": [cluster.urls[0]]}, seed_inductor, seed_triton)
        if not (seed["publish"] or {}).get("version"):
            raise click.ClickException(f"the seed published nothing: {seed['publish']} {seed['logs']}")
        runs: dict[str, list[dict]] = {c: [] for c in CONTENDERS}

        def one_round(i: int) -> None:
            order = CONTENDERS[i % 3:] + CONTENDERS[:i % 3]  # who goes first rotates
            for name in order:
                inductor, triton = dirs()
                if name == "local":
                    shutil.copytree(seed_inductor, inductor)  # the warm dir was already there: not timed
                child = {**spec, "source": name, "nodes": [cluster.urls[1]]}
                r = _run_child(child, inductor, triton)
                r["equal"] = r["out"] == seed["out"]
                r["hits"] = r["counters_first"].get("fxgraph_cache_hit", 0)
                r["misses"] = r["counters_first"].get("fxgraph_cache_miss", 0)
                del r["out"]
                runs[name].append(r)
                echo(f"  {name}: {r['seconds']:.2f} s to first output (FX graph cache hits {r['hits']}, "
                     f"misses {r['misses']})")

        run_rounds(repeat, one_round, echo)
    per_round = [{"cluster_vs_cold": runs["cluster"][i]["seconds"] / runs["cold"][i]["seconds"],
                  "cluster_vs_local": runs["cluster"][i]["seconds"] / runs["local"][i]["seconds"]}
                 for i in range(repeat)]
    ratios, ratio_ranges = summarize_ratios(per_round)
    rows = [{"contender": c, **summarize([{k: r[k] for k in ("seconds", "hits", "misses", "equal")}
                                          for r in runs[c]])} for c in CONTENDERS]
    reuse = all(r["hits"] > 0 and r["misses"] == 0 for c in ("cluster", "local") for r in runs[c])
    equal = all(r["equal"] for c in CONTENDERS for r in runs[c])
    return {"model": {"kind": "MLP", "width": width, "blocks": blocks, "batch": 8},
            "artifact_bytes": seed["publish"]["bytes"], "repeat": repeat, "rows": rows,
            "ratios": ratios, "ratio_ranges": ratio_ranges,
            "targets": {"cluster_vs_cold_max": TARGET_VS_COLD, "cluster_vs_local_max": TARGET_VS_LOCAL,
                        "cluster_vs_cold_met": ratios["cluster_vs_cold"] <= TARGET_VS_COLD,
                        "cluster_vs_local_met": ratios["cluster_vs_local"] <= TARGET_VS_LOCAL,
                        "reuse_by_counters": reuse, "outputs_equal": equal},
            "runs": runs, "seed": {k: seed[k] for k in ("seconds", "load", "publish", "counters")}}


def command(width: int, blocks: int, repeat: int, workdir: str | None, json_path: str | None) -> None:
    """Run, print the table and the targets, write JSON if asked."""
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="cachebench-compile-")
    try:
        result = run_compile(workdir or tmp.name, width=width, blocks=blocks, repeat=repeat)
    finally:
        if tmp is not None:
            tmp.cleanup()
    click.echo(f"\n{result['model']['blocks']}-block MLP (width {result['model']['width']}), artifacts "
               f"{result['artifact_bytes'] / 1024:.0f} KiB; seconds from process start to first output, "
               f"median (min-max) of {repeat} interleaved rounds")
    print_table(result["rows"], [("contender", "contender", "{}"), ("seconds", None, spread_cell("{:.2f}", "seconds")),
                                 ("FX hits", "hits", "{:g}"), ("FX misses", "misses", "{:g}"),
                                 ("output equal", "equal", "{}")])
    t, r, rr = result["targets"], result["ratios"], result["ratio_ranges"]
    for key, target, met in (("cluster_vs_cold", t["cluster_vs_cold_max"], t["cluster_vs_cold_met"]),
                             ("cluster_vs_local", t["cluster_vs_local_max"], t["cluster_vs_local_met"])):
        lo, hi = rr[key]
        click.echo(f"{key.replace('_', ' ')}: {r[key]:.2f}x ({lo:.2f}-{hi:.2f}), target <= {target}x: "
                   f"{'met' if met else 'NOT met'}")
    click.echo(f"reuse by Inductor's counters (hits > 0, misses 0, every round): {t['reuse_by_counters']}; "
               f"outputs equal: {t['outputs_equal']}")
    write_results(result, json_path, None, "compile")

