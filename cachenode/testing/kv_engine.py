"""A vLLM engine in a child process with the cachenode KV connector: runs prompts by token ids, times them, writes JSON.

    python -m cachenode.testing.kv_engine SPEC.json OUT.json

SPEC: {"model": dir, "kv": {kv_connector_extra_config}, "prompts": {name: [token ids]},
"steps": [{"prompt": name, "max_tokens": n}], "max_model_len": n}. OUT: per step the generated
token ids, vLLM's own `num_cached_tokens` and the wall time of the generate call (with
max_tokens=1 that is the time to first token), the top candidates' logprobs of each generated
token, plus the time to ready.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

CONNECTOR_MODULE = "cachenode.client.engines.vllm_kv"
BLOCK = 128  # vLLM's CPU KV block size: the chunks of the prefix chain


def build_tiny_llama(folder: str | Path, *, hidden: int = 256, layers: int = 4) -> Path:
    """A tiny random Llama (by default 4 layers, hidden 256; fp32, 4,096 positions, one shard)
    whose 512 token ids all have words, so prompts can be given as ids."""
    from .tiny_llama import build

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(507)]
    return build(folder, hidden=hidden, layers=layers, intermediate=2 * hidden, vocab=len(words),
                 shard="5GB", max_positions=4096, words=words)


def run_child(workdir: Path, name: str, spec: dict, env: dict[str, str] | None = None,
              timeout: float = 600) -> dict:
    """One engine start in a child process; its result plus its log (stdout + stderr)."""
    import subprocess

    spec_path, out_path = workdir / f"{name}.json", workdir / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "cachenode.testing.kv_engine", str(spec_path), str(out_path)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    (workdir / f"{name}.log").write_text(log)
    if proc.returncode != 0:
        raise RuntimeError(f"engine {name} exited with {proc.returncode}:\n{log[-6000:]}")
    result = json.loads(out_path.read_text())
    result["log"] = log
    return result


TOP_LOGPROBS = 5  # candidates reported per generated token: a greedy flip between near-ties shows


def run(spec: dict) -> dict:
    """Start one engine, run the steps in order, return the results."""
    # The engine core in this process (vLLM would spawn one): the connector's scheduler and
    # worker sides then live here, and one start costs one model load.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], enforce_eager=True, max_model_len=spec.get("max_model_len", 4096),
              max_num_seqs=4, seed=0, enable_prefix_caching=True,
              kv_transfer_config=KVTransferConfig(
                  kv_connector="CachenodeKVConnector", kv_connector_module_path=CONNECTOR_MODULE,
                  kv_role="kv_both", kv_load_failure_policy="recompute",
                  kv_connector_extra_config=spec["kv"]))
    ready = time.perf_counter() - t0
    steps = []
    for step in spec["steps"]:
        ids = spec["prompts"][step["prompt"]]
        params = SamplingParams(temperature=0.0, max_tokens=step.get("max_tokens", 8), ignore_eos=True,
                                logprobs=TOP_LOGPROBS)
        t = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
        seconds = time.perf_counter() - t
        steps.append({"prompt": step["prompt"], "prompt_tokens": len(ids), "seconds": seconds,
                      "num_cached_tokens": out.num_cached_tokens or 0,
                      "tokens": list(out.outputs[0].token_ids),
                      # per generated position, the top candidates' logprobs {token id: logprob}
                      "logprobs": [{str(t): lp.logprob for t, lp in pos.items()}
                                   for pos in out.outputs[0].logprobs or []]})
    return {"ready_seconds": ready, "steps": steps}


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    # The connector's own lines (hits, failures) on stderr beside vLLM's.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("cachenode").addHandler(handler)
    logging.getLogger("cachenode").setLevel(logging.INFO)
    result = run(json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":  # vLLM needs the guard: it may start processes of its own
    sys.exit(main(sys.argv[1:]))
